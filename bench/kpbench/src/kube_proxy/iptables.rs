//! kube-proxy's iptables proxier, as text for `iptables-restore --noflush`: the jump rules it
//! ensures once ([`jump_rules`]) and the filter and nat tables of one sync ([`sync_rules`]),
//! full or partial, line for line in the shape `syncProxyRules` writes them.

use std::collections::BTreeSet;

use super::{CLUSTER_CIDR, Endpoint, MASQUERADE_MARK, Scope, ServicePort, hash_prefix};

const KUBE_SERVICES: &str = "KUBE-SERVICES";
const KUBE_EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
const KUBE_FORWARD: &str = "KUBE-FORWARD";
const KUBE_NODEPORTS: &str = "KUBE-NODEPORTS";
const KUBE_PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";
const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
const KUBE_FIREWALL: &str = "KUBE-FIREWALL";

/// Prefixes of the per-service chains: the only nat chains a sync deletes when unused.
const SERVICE_CHAIN_PREFIXES: [&str; 5] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-SEP-",
    "KUBE-FW-",
    "KUBE-EXT-",
];

/// Above this many endpoints kube-proxy leaves the comments out of the per-service chains
/// ("large cluster mode").
const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// The masquerade of pod traffic leaving the cluster, as a CNI plugin (flannel, kindnet) adds
/// it in the node; not kube-proxy's, but part of the baseline's pod networking.
pub const POD_MASQUERADE_COMMENT: &str = "\"lab: pod traffic to the world\"";

/// One sync's input for `iptables-restore --noflush --counters`, and the nat chains it leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptablesSync {
    pub text: String,
    /// The per-service nat chains this sync writes: the next sync deletes those it no longer
    /// writes.
    pub service_chains: BTreeSet<String>,
    pub rules: usize,
}

/// `KUBE-SVC-<hash>`.
pub fn service_chain(port: &ServicePort) -> String {
    format!("KUBE-SVC-{}", port_proto_hash(port))
}

/// `KUBE-EXT-<hash>`.
pub fn external_chain(port: &ServicePort) -> String {
    format!("KUBE-EXT-{}", port_proto_hash(port))
}

/// `KUBE-SEP-<hash>` of one endpoint of `port`.
pub fn endpoint_chain(port: &ServicePort, endpoint: &Endpoint) -> String {
    let input = format!("{}{}{endpoint}", port.name_string(), port.proto());
    format!("KUBE-SEP-{}", hash_prefix(&input, 16))
}

fn port_proto_hash(port: &ServicePort) -> String {
    hash_prefix(&format!("{}{}", port.name_string(), port.proto()), 16)
}

/// `fmt.Sprintf("%0.10f", 1.0/float64(n))`.
fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

/// The jump rules from the built-in chains that kube-proxy (and kubelet, for KUBE-FIREWALL)
/// ensure at start, each prepended, plus the pod masquerade of the CNI; for
/// `iptables-restore --noflush`, once per node.
pub fn jump_rules() -> String {
    let new = "-m conntrack --ctstate NEW ";
    let filter = [
        (
            "INPUT",
            KUBE_EXTERNAL_SERVICES,
            new,
            Some("kubernetes externally-visible service portals"),
        ),
        (
            "FORWARD",
            KUBE_EXTERNAL_SERVICES,
            new,
            Some("kubernetes externally-visible service portals"),
        ),
        (
            "INPUT",
            KUBE_NODEPORTS,
            "",
            Some("kubernetes health check service ports"),
        ),
        (
            "FORWARD",
            KUBE_SERVICES,
            new,
            Some("kubernetes service portals"),
        ),
        (
            "OUTPUT",
            KUBE_SERVICES,
            new,
            Some("kubernetes service portals"),
        ),
        (
            "FORWARD",
            KUBE_FORWARD,
            "",
            Some("kubernetes forwarding rules"),
        ),
        (
            "INPUT",
            KUBE_PROXY_FIREWALL,
            new,
            Some("kubernetes load balancer firewall"),
        ),
        (
            "OUTPUT",
            KUBE_PROXY_FIREWALL,
            new,
            Some("kubernetes load balancer firewall"),
        ),
        (
            "FORWARD",
            KUBE_PROXY_FIREWALL,
            new,
            Some("kubernetes load balancer firewall"),
        ),
        ("INPUT", KUBE_FIREWALL, "", None),
        ("OUTPUT", KUBE_FIREWALL, "", None),
    ];
    let nat = [
        (
            "OUTPUT",
            KUBE_SERVICES,
            "",
            Some("kubernetes service portals"),
        ),
        (
            "PREROUTING",
            KUBE_SERVICES,
            "",
            Some("kubernetes service portals"),
        ),
        (
            "POSTROUTING",
            KUBE_POSTROUTING,
            "",
            Some("kubernetes postrouting rules"),
        ),
    ];
    let mut text = String::from("*filter\n");
    push_jumps(&mut text, &filter);
    text.push_str("COMMIT\n*nat\n");
    push_jumps(&mut text, &nat);
    text.push_str(&format!(
        "-A POSTROUTING -s {CLUSTER_CIDR} ! -d {CLUSTER_CIDR} -m comment --comment \
         {POD_MASQUERADE_COMMENT} -j MASQUERADE\nCOMMIT\n"
    ));
    text
}

type Jump<'a> = (&'a str, &'a str, &'a str, Option<&'a str>);

fn push_jumps(text: &mut String, jumps: &[Jump]) {
    let targets: BTreeSet<&str> = jumps.iter().map(|j| j.1).collect();
    for chain in targets {
        text.push_str(&chain_line(chain));
    }
    for (from, to, extra, comment) in jumps {
        let comment = comment
            .map(|c| format!("-m comment --comment \"{c}\" "))
            .unwrap_or_default();
        text.push_str(&format!("-I {from} {extra}{comment}-j {to}\n"));
    }
}

fn chain_line(chain: &str) -> String {
    format!(":{chain} - [0:0]\n")
}

/// The text buffers of one sync, as the proxier keeps them.
#[derive(Default)]
struct Buffers {
    filter_chains: Vec<String>,
    filter_rules: Vec<String>,
    nat_chains: Vec<String>,
    nat_rules: Vec<String>,
    service_chains: BTreeSet<String>,
    large_cluster: bool,
}

impl Buffers {
    fn nat_chain(&mut self, chain: String) {
        self.nat_chains.push(chain_line(&chain));
        self.service_chains.insert(chain);
    }

    /// `-m comment --comment C ` unless in large cluster mode.
    fn service_comment(&self, comment: &str) -> String {
        if self.large_cluster {
            String::new()
        } else {
            format!("-m comment --comment {comment} ")
        }
    }
}

/// One sync of `ports` after the one that wrote the per-service chains `previous`: every
/// top-level chain whole, and the per-service chains of the services `scope` names; chains no
/// longer wanted are flushed and deleted (`-X`). kube-proxy defers that deletion in large
/// clusters (over 1,000 endpoints) to one sync per sync period; here it happens every time.
pub fn sync_rules(
    ports: &[ServicePort],
    previous: &BTreeSet<String>,
    scope: Scope,
) -> IptablesSync {
    let endpoints: usize = ports.iter().map(|p| p.endpoints.len()).sum();
    let mut b = Buffers {
        large_cluster: endpoints > LARGE_CLUSTER_ENDPOINTS,
        ..Buffers::default()
    };
    top_level(&mut b);
    for port in ports {
        service(&mut b, port, scope.writes(&port.service));
    }
    for stale in previous.difference(&b.service_chains.clone()) {
        if SERVICE_CHAIN_PREFIXES.iter().any(|p| stale.starts_with(p)) {
            b.nat_chains.push(chain_line(stale));
            b.nat_rules.push(format!("-X {stale}\n"));
        }
    }
    tail(&mut b);
    let rules = b.filter_rules.len() + b.nat_rules.len();
    let mut text = String::from("*filter\n");
    text.extend(b.filter_chains.into_iter().chain(b.filter_rules));
    text.push_str("COMMIT\n*nat\n");
    text.extend(b.nat_chains.into_iter().chain(b.nat_rules));
    text.push_str("COMMIT\n");
    IptablesSync {
        text,
        service_chains: b.service_chains,
        rules,
    }
}

fn top_level(b: &mut Buffers) {
    for chain in [
        KUBE_SERVICES,
        KUBE_EXTERNAL_SERVICES,
        KUBE_FORWARD,
        KUBE_NODEPORTS,
        KUBE_PROXY_FIREWALL,
    ] {
        b.filter_chains.push(chain_line(chain));
    }
    for chain in [
        KUBE_SERVICES,
        KUBE_NODEPORTS,
        KUBE_POSTROUTING,
        KUBE_MARK_MASQ,
    ] {
        b.nat_chains.push(chain_line(chain));
    }
    let m = MASQUERADE_MARK;
    b.nat_rules.extend([
        format!("-A {KUBE_POSTROUTING} -m mark ! --mark {m}/{m} -j RETURN\n"),
        format!("-A {KUBE_POSTROUTING} -j MARK --xor-mark {m}\n"),
        format!(
            "-A {KUBE_POSTROUTING} -m comment --comment \"kubernetes service traffic requiring \
             SNAT\" -j MASQUERADE --random-fully\n"
        ),
        format!("-A {KUBE_MARK_MASQ} -j MARK --or-mark {m}\n"),
    ]);
    // --iptables-localhost-nodeports defaults to true.
    b.filter_chains.push(chain_line(KUBE_FIREWALL));
    b.filter_rules.push(format!(
        "-A {KUBE_FIREWALL} -m comment --comment \"block incoming localnet connections\" -d \
         127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n"
    ));
}

/// The service's rules in the top-level chains, and its own chains when `write_chains` (else
/// only their names, which stay in use).
fn service(b: &mut Buffers, port: &ServicePort, write_chains: bool) {
    let name = port.name_string();
    let proto = port.proto();
    let matches = format!(
        "-m {proto} -p {proto} -d {} --dport {}",
        port.cluster_ip, port.port
    );
    let svc_chain = service_chain(port);
    let ext_chain = external_chain(port);
    let has_endpoints = !port.endpoints.is_empty();
    if has_endpoints {
        b.nat_rules.push(format!(
            "-A {KUBE_SERVICES} -m comment --comment \"{name} cluster IP\" {matches} -j {svc_chain}\n"
        ));
    } else {
        b.filter_rules.push(format!(
            "-A {KUBE_SERVICES} -m comment --comment \"{name} has no endpoints\" {matches} -j REJECT\n"
        ));
    }
    if let Some(node_port) = port.node_port {
        node_port_rules(b, port, node_port, &ext_chain);
    }
    if !has_endpoints {
        return;
    }
    if !write_chains {
        b.service_chains.insert(svc_chain);
        if port.node_port.is_some() {
            b.service_chains.insert(ext_chain);
        }
        let endpoints = port.endpoints.iter().map(|e| endpoint_chain(port, e));
        b.service_chains.extend(endpoints);
        return;
    }
    b.nat_rules.push(format!(
        "-A {svc_chain} -m comment --comment \"{name} cluster IP\" {matches} ! -s {CLUSTER_CIDR} \
         -j {KUBE_MARK_MASQ}\n"
    ));
    if port.node_port.is_some() {
        b.nat_chain(ext_chain.clone());
        b.nat_rules.extend([
            format!(
                "-A {ext_chain} -m comment --comment \"masquerade traffic for {name} external \
                 destinations\" -j {KUBE_MARK_MASQ}\n"
            ),
            format!("-A {ext_chain} -j {svc_chain}\n"),
        ]);
    }
    b.nat_chain(svc_chain.clone());
    service_to_endpoints(b, port, &svc_chain);
    for endpoint in &port.endpoints {
        endpoint_rules(b, port, endpoint);
    }
}

fn node_port_rules(b: &mut Buffers, port: &ServicePort, node_port: u16, ext_chain: &str) {
    let (name, proto) = (port.name_string(), port.proto());
    if port.endpoints.is_empty() {
        b.filter_rules.push(format!(
            "-A {KUBE_EXTERNAL_SERVICES} -m comment --comment \"{name} has no endpoints\" -m \
             addrtype --dst-type LOCAL -m {proto} -p {proto} --dport {node_port} -j REJECT\n"
        ));
    } else {
        b.nat_rules.push(format!(
            "-A {KUBE_NODEPORTS} -m comment --comment {name} -m {proto} -p {proto} --dport \
             {node_port} -j {ext_chain}\n"
        ));
    }
}

/// The random choice among the endpoints: rule i of n matches with probability 1/(n-i), the
/// last one always.
fn service_to_endpoints(b: &mut Buffers, port: &ServicePort, svc_chain: &str) {
    let name = port.name_string();
    let n = port.endpoints.len();
    for (i, endpoint) in port.endpoints.iter().enumerate() {
        let comment = b.service_comment(&format!("\"{name} -> {endpoint}\""));
        let statistic = if i + 1 < n {
            format!(
                "-m statistic --mode random --probability {} ",
                probability(n - i)
            )
        } else {
            String::new()
        };
        b.nat_rules.push(format!(
            "-A {svc_chain} {comment}{statistic}-j {}\n",
            endpoint_chain(port, endpoint)
        ));
    }
}

fn endpoint_rules(b: &mut Buffers, port: &ServicePort, endpoint: &Endpoint) {
    let chain = endpoint_chain(port, endpoint);
    let comment = b.service_comment(&port.name_string());
    let proto = port.proto();
    b.nat_chain(chain.clone());
    b.nat_rules.extend([
        format!(
            "-A {chain} {comment}-s {} -j {KUBE_MARK_MASQ}\n",
            endpoint.ip
        ),
        format!("-A {chain} {comment}-m {proto} -p {proto} -j DNAT --to-destination {endpoint}\n"),
    ]);
}

/// The rules written after every service: the NodePort tail call and the forwarding rules.
fn tail(b: &mut Buffers) {
    b.nat_rules.push(format!(
        "-A {KUBE_SERVICES} -m comment --comment \"kubernetes service nodeports; NOTE: this must \
         be the last rule in this chain\" -m addrtype --dst-type LOCAL -j {KUBE_NODEPORTS}\n"
    ));
    let m = MASQUERADE_MARK;
    b.filter_rules.extend([
        format!("-A {KUBE_FORWARD} -m conntrack --ctstate INVALID -j DROP\n"),
        format!(
            "-A {KUBE_FORWARD} -m comment --comment \"kubernetes forwarding rules\" -m mark \
             --mark {m}/{m} -j ACCEPT\n"
        ),
        format!(
            "-A {KUBE_FORWARD} -m comment --comment \"kubernetes forwarding conntrack rule\" -m \
             conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
        ),
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube_proxy::{
        changed_services, service_ports,
        tests::{OBJECTS, changed, store},
    };

    fn golden(objects: &str) -> IptablesSync {
        sync_rules(
            &service_ports(&store(objects), "vps1"),
            &BTreeSet::new(),
            Scope::Full,
        )
    }

    const GOLDEN: &str = include_str!("testdata/iptables.golden");
    const GOLDEN_CHANGED: &str = include_str!("testdata/iptables-changed.golden");

    #[test]
    fn a_full_sync_is_written_as_kube_proxy_writes_it() {
        let sync = golden(OBJECTS);
        assert_eq!(sync.text, GOLDEN, "got:\n{}", sync.text);
        assert_eq!(
            sync.rules,
            GOLDEN.lines().filter(|l| l.starts_with('-')).count()
        );
    }

    #[test]
    fn an_endpoint_change_rewrites_its_chains_and_deletes_the_old_one() {
        let first = golden(OBJECTS);
        let ports = service_ports(&store(&changed()), "vps1");
        let second = sync_rules(&ports, &first.service_chains, Scope::Full);
        assert_eq!(second.text, GOLDEN_CHANGED, "got:\n{}", second.text);
        let gone: Vec<&String> = first
            .service_chains
            .difference(&second.service_chains)
            .collect();
        assert_eq!(gone.len(), 1, "{gone:?}");
        assert!(second.text.contains(&format!("-X {}\n", gone[0])));
    }

    #[test]
    fn a_partial_sync_writes_the_top_level_chains_whole_and_only_the_changed_services_chains() {
        let first = golden(OBJECTS);
        let before = service_ports(&store(OBJECTS), "vps1");
        let after = service_ports(&store(&changed()), "vps1");
        let changed = changed_services(&before, &after);
        let names: Vec<String> = changed.iter().map(|s| s.to_string()).collect();
        assert_eq!(names, ["shop/web"]);
        let partial = sync_rules(&after, &first.service_chains, Scope::Changed(&changed));
        let full = sync_rules(&after, &first.service_chains, Scope::Full);
        assert_eq!(partial.service_chains, full.service_chains);

        let dns = &after[0];
        let untouched = [service_chain(dns), external_chain(dns)];
        for chain in &untouched {
            assert!(
                !partial.text.contains(&format!(":{chain} ")),
                "{chain} was written"
            );
            assert!(
                !partial.text.contains(&format!("-A {chain} ")),
                "{chain} was written"
            );
            // Still reached from the top level, whose chains are rewritten whole.
            assert!(
                partial.text.contains(&format!("-j {chain}\n")),
                "{chain} lost its jump"
            );
        }
        // Every line of the partial sync is a line of the full one, in the same order.
        let mut full_lines = full.text.lines();
        for line in partial.text.lines() {
            assert!(
                full_lines.any(|l| l == line),
                "{line:?} is not in the full sync"
            );
        }
        let web = &after[2];
        assert!(
            partial
                .text
                .contains(&format!(":{} - [0:0]\n", service_chain(web)))
        );
        assert!(partial.text.contains("--to-destination 10.42.2.11:8080\n"));
        let gone = endpoint_chain(&before[2], &before[2].endpoints[1]);
        assert!(partial.text.contains(&format!("-X {gone}\n")));
        assert!(partial.rules < full.rules);
    }

    #[test]
    fn probabilities_are_one_over_the_endpoints_left() {
        assert_eq!(probability(2), "0.5000000000");
        assert_eq!(probability(3), "0.3333333333");
        assert_eq!(probability(1), "1.0000000000");
    }

    #[test]
    fn large_clusters_lose_the_per_service_comments() {
        let mut ports = service_ports(&store(OBJECTS), "vps1");
        let web = ports.pop().expect("web");
        let many: Vec<Endpoint> = (0..1001u16)
            .map(|i| Endpoint {
                ip: std::net::Ipv4Addr::new(10, 42, 3, 1),
                port: 1000 + i,
            })
            .collect();
        let big = ServicePort {
            endpoints: many,
            ..web
        };
        let text = sync_rules(&[big], &BTreeSet::new(), Scope::Full).text;
        assert!(!text.contains("\"shop/web:http -> "));
        assert!(text.contains("\"shop/web:http cluster IP\""));
        assert!(
            text.contains("-m statistic --mode random --probability 0.0009990010 -j KUBE-SEP-")
        );
    }

    #[test]
    fn jump_rules_create_their_targets_and_masquerade_pods() {
        let text = jump_rules();
        assert!(text.starts_with("*filter\n:KUBE-EXTERNAL-SERVICES - [0:0]\n"));
        assert!(text.contains(
            "-I PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"
        ));
        assert!(text.contains(
            "-A POSTROUTING -s 10.42.0.0/16 ! -d 10.42.0.0/16 -m comment --comment \
             \"lab: pod traffic to the world\" -j MASQUERADE\n"
        ));
        assert_eq!(text.matches("COMMIT\n").count(), 2);
    }
}
