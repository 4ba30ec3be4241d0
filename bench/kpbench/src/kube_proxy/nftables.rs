//! kube-proxy's nftables proxier, as the `nft -f` transaction of one sync: table
//! `ip kube-proxy`, its base and jump chains, the `service-ips` / `service-nodeports` verdict
//! maps, a chain per service port choosing an endpoint with `numgen random mod N vmap`, a chain
//! per endpoint that DNATs, and masquerading by mark. Written in the order and shape the
//! proxier's `setupNFTables` and `syncProxyRules` give knftables. A full sync recreates the
//! base chains and refills every set and map; a partial one writes the changed services'
//! chains and only the map elements that differ from what the previous sync left.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::Ipv4Addr,
};

use super::{
    CLUSTER_CIDR, Endpoint, MASQUERADE_MARK, SERVICE_CIDR, Scope, ServicePort, hash_prefix,
};

/// Every object is `<kind> ip kube-proxy <name>`.
const TABLE: &str = "ip kube-proxy";

/// (name, type, hook, priority) of the base chains. The priorities are kube-proxy's
/// `dstnat-10`, `dstnat+10`, `dstnat` and `srcnat` as numbers: nft accepts the names only on
/// some hooks.
const BASE_CHAINS: [(&str, &str, &str, &str); 8] = [
    ("filter-prerouting", "filter", "prerouting", "-110"),
    ("filter-input", "filter", "input", "-110"),
    ("filter-forward", "filter", "forward", "-110"),
    ("filter-output", "filter", "output", "-110"),
    ("filter-output-post-dnat", "filter", "output", "-90"),
    ("nat-prerouting", "nat", "prerouting", "-100"),
    ("nat-output", "nat", "output", "-100"),
    ("nat-postrouting", "nat", "postrouting", "100"),
];

/// (chain jumped to, from, extra match) of the jumps from the base chains.
const JUMPS: [(&str, &str, &str); 11] = [
    ("nodeport-endpoints-check", "filter-input", "ct state new "),
    ("service-endpoints-check", "filter-input", "ct state new "),
    ("service-endpoints-check", "filter-forward", "ct state new "),
    ("service-endpoints-check", "filter-output", "ct state new "),
    ("firewall-check", "filter-prerouting", "ct state new "),
    ("firewall-check", "filter-output", "ct state new "),
    ("services", "nat-output", ""),
    ("services", "nat-prerouting", ""),
    ("masquerading", "nat-postrouting", ""),
    ("cluster-ips-check", "filter-forward", "ct state new "),
    (
        "cluster-ips-check",
        "filter-output-post-dnat",
        "ct state new ",
    ),
];

/// The sets and maps a full sync empties before refilling them.
const CONTAINERS: [(&str, &str); 6] = [
    ("set", "cluster-ips"),
    ("map", "service-ips"),
    ("map", "firewall-ips"),
    ("map", "no-endpoint-services"),
    ("map", "no-endpoint-nodeports"),
    ("map", "service-nodeports"),
];

/// The state a sync needs from the ones before it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NftState {
    /// False until the first sync, which also recreates the base chains.
    pub flushed: bool,
    /// The per-service chains the last sync wrote.
    pub service_chains: BTreeSet<String>,
    /// Chains flushed by the last sync because no service used them any more: deleted by the
    /// next one, once no map element can refer to them.
    pub stale_chains: BTreeSet<String>,
    /// The elements of the sets and maps: (container, key) -> value (`""` in a set).
    pub elements: BTreeMap<(String, String), String>,
}

/// One sync: the stale chains to delete first (a transaction of its own, as kube-proxy runs
/// it), the main transaction, and the state it leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftSync {
    pub delete_stale: Option<String>,
    pub text: String,
    pub state: NftState,
    pub rules: usize,
}

/// `service-<hash>-<ns>/<name>/<proto>/<port>`.
pub fn service_chain(port: &ServicePort) -> String {
    format!("service-{}", chain_name_base(port))
}

/// `external-<hash>-<ns>/<name>/<proto>/<port>`.
pub fn external_chain(port: &ServicePort) -> String {
    format!("external-{}", chain_name_base(port))
}

/// `endpoint-<hash>-<ns>/<name>/<proto>/<port>__<ip>/<port>`.
pub fn endpoint_chain(port: &ServicePort, endpoint: &Endpoint) -> String {
    let name = format!("{}__{}/{}", plain_name(port), endpoint.ip, endpoint.port);
    format!("endpoint-{}-{name}", hash_prefix(&name, 8))
}

fn plain_name(port: &ServicePort) -> String {
    format!(
        "{}/{}/{}/{}",
        port.service.namespace,
        port.service.name,
        port.proto(),
        port.port_name
    )
}

fn chain_name_base(port: &ServicePort) -> String {
    let name = plain_name(port);
    format!("{}-{name}", hash_prefix(&name, 8))
}

/// The transaction being written, and the chains it made sure of.
struct Tx<'a> {
    text: String,
    chains: BTreeSet<String>,
    rules: usize,
    /// Writing the chains of the service at hand (else only noting their names).
    writing: bool,
    /// A partial sync: the elements the kernel holds now; only differences are written.
    present: Option<&'a BTreeMap<(String, String), String>>,
    /// Every element the sync wants.
    elements: BTreeMap<(String, String), String>,
}

impl Tx<'_> {
    fn line(&mut self, line: std::fmt::Arguments) {
        let _ = self.text.write_fmt(line);
        self.text.push('\n');
    }

    /// `ensureChain`: add and flush a regular chain, once per transaction (or only note it,
    /// for a service a partial sync leaves alone).
    fn ensure_chain(&mut self, chain: &str) {
        if self.chains.insert(chain.to_string()) && self.writing {
            self.line(format_args!("add chain {TABLE} {chain}"));
            self.line(format_args!("flush chain {TABLE} {chain}"));
        }
    }

    fn rule(&mut self, chain: &str, rule: &str) {
        if !self.writing {
            return;
        }
        self.rules += 1;
        self.line(format_args!("add rule {TABLE} {chain} {rule}"));
    }

    /// `ensureElem`: a full sync adds every element (the containers were flushed); a partial
    /// one adds the missing ones and replaces those whose value changed.
    fn element(&mut self, container: &str, key: &str, comment: Option<&str>, value: &str) {
        let id = (container.to_string(), key.to_string());
        let known = self
            .elements
            .get(&id)
            .or_else(|| self.present.and_then(|p| p.get(&id)))
            .cloned();
        self.elements.insert(id, value.to_string());
        match known {
            Some(v) if v == value => return,
            Some(_) => self.line(format_args!(
                "delete element {TABLE} {container} {{ {key} }}"
            )),
            None => {}
        }
        let comment = comment
            .map(|c| format!(" comment \"{c}\""))
            .unwrap_or_default();
        let value = if value.is_empty() {
            String::new()
        } else {
            format!(" : {value}")
        };
        self.line(format_args!(
            "add element {TABLE} {container} {{ {key}{comment}{value} }}"
        ));
    }

    /// A partial sync deletes the elements no service wants any more.
    fn delete_leftover_elements(&mut self) {
        let Some(present) = self.present else {
            return;
        };
        let leftovers: Vec<&(String, String)> = present
            .keys()
            .filter(|id| !self.elements.contains_key(*id))
            .collect();
        for (container, key) in leftovers {
            self.line(format_args!(
                "delete element {TABLE} {container} {{ {key} }}"
            ));
        }
    }
}

/// One sync of `ports` on a node whose NodePort address is `node_ip`, after `previous`; the
/// first sync is always full.
pub fn sync_rules(
    ports: &[ServicePort],
    node_ip: Ipv4Addr,
    previous: &NftState,
    scope: Scope,
) -> NftSync {
    let full = scope.is_full() || !previous.flushed;
    let mut tx = Tx {
        text: String::new(),
        chains: BTreeSet::new(),
        rules: 0,
        writing: true,
        present: (!full).then_some(&previous.elements),
        elements: BTreeMap::new(),
    };
    if full {
        setup(&mut tx, node_ip, previous.flushed);
    }
    let top_level = tx.chains.clone();
    for port in ports {
        tx.writing = full || scope.writes(&port.service);
        service(&mut tx, port);
    }
    tx.writing = true;
    tx.delete_leftover_elements();
    let active: BTreeSet<String> = tx.chains.difference(&top_level).cloned().collect();
    let stale: BTreeSet<String> = previous
        .service_chains
        .iter()
        .chain(&previous.stale_chains)
        .filter(|c| !active.contains(*c))
        .cloned()
        .collect();
    let newly_stale: BTreeSet<String> = stale
        .iter()
        .filter(|c| !previous.stale_chains.contains(*c))
        .cloned()
        .collect();
    for chain in &newly_stale {
        tx.line(format_args!("flush chain {TABLE} {chain}"));
    }
    let delete_stale = delete_text(previous.stale_chains.difference(&active));
    NftSync {
        delete_stale,
        text: tx.text,
        state: NftState {
            flushed: true,
            service_chains: active,
            stale_chains: newly_stale,
            elements: tx.elements,
        },
        rules: tx.rules,
    }
}

fn delete_text<'a>(chains: impl Iterator<Item = &'a String>) -> Option<String> {
    let text: String = chains
        .map(|c| format!("delete chain {TABLE} {c}\n"))
        .collect();
    (!text.is_empty()).then_some(text)
}

fn setup(tx: &mut Tx, node_ip: Ipv4Addr, flushed: bool) {
    tx.line(format_args!(
        "add table {TABLE} {{ comment \"rules for kube-proxy\" ; }}"
    ));
    if !flushed {
        for (name, ..) in BASE_CHAINS {
            tx.line(format_args!("add chain {TABLE} {name}"));
            tx.line(format_args!("delete chain {TABLE} {name}"));
        }
    }
    for (name, kind, hook, priority) in BASE_CHAINS {
        tx.line(format_args!(
            "add chain {TABLE} {name} {{ type {kind} hook {hook} priority {priority} ; }}"
        ));
        tx.line(format_args!("flush chain {TABLE} {name}"));
    }
    for (to, from, extra) in JUMPS {
        tx.ensure_chain(to);
        tx.rule(from, &format!("{extra}jump {to}"));
    }
    for chain in [
        "services",
        "cluster-ips-check",
        "masquerading",
        "mark-for-masquerade",
    ] {
        tx.ensure_chain(chain);
    }
    masquerading(tx);
    cluster_ips_check(tx);
    node_port_ips(tx, node_ip);
    no_endpoints(tx);
    firewall(tx);
    dispatch(tx);
    for (kind, name) in CONTAINERS {
        tx.line(format_args!("flush {kind} {TABLE} {name}"));
    }
}

fn masquerading(tx: &mut Tx) {
    let m = MASQUERADE_MARK;
    tx.rule("mark-for-masquerade", &format!("mark set mark or {m}"));
    tx.rule("masquerading", &format!("mark and {m} == 0 return"));
    tx.rule("masquerading", &format!("mark set mark xor {m}"));
    tx.rule("masquerading", "masquerade fully-random");
}

fn cluster_ips_check(tx: &mut Tx) {
    tx.line(format_args!(
        "add set {TABLE} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}"
    ));
    tx.rule(
        "cluster-ips-check",
        "ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"",
    );
    tx.rule(
        "cluster-ips-check",
        &format!(
            "ip daddr {{ {SERVICE_CIDR} }} drop comment \"Drop traffic to unallocated ClusterIPs\""
        ),
    );
}

/// The nftables proxier's `--nodeport-addresses` default is the node's primary address.
fn node_port_ips(tx: &mut Tx, node_ip: Ipv4Addr) {
    tx.line(format_args!(
        "add set {TABLE} nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort \
         traffic\" ; }}"
    ));
    tx.line(format_args!("flush set {TABLE} nodeport-ips"));
    tx.line(format_args!(
        "add element {TABLE} nodeport-ips {{ {node_ip} }}"
    ));
}

fn no_endpoints(tx: &mut Tx) {
    tx.line(format_args!(
        "add map {TABLE} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : \
         verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}"
    ));
    tx.line(format_args!(
        "add map {TABLE} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; \
         comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}"
    ));
    tx.line(format_args!(
        "add chain {TABLE} reject-chain {{ comment \"helper for @no-endpoint-services / \
         @no-endpoint-nodeports\" ; }}"
    ));
    tx.line(format_args!("flush chain {TABLE} reject-chain"));
    tx.rule("reject-chain", "reject");
    tx.rule(
        "service-endpoints-check",
        "ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
    );
    tx.rule(
        "nodeport-endpoints-check",
        "ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports",
    );
}

fn firewall(tx: &mut Tx) {
    tx.line(format_args!(
        "add map {TABLE} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; \
         comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }}"
    ));
    tx.ensure_chain("firewall-check");
    tx.rule(
        "firewall-check",
        "ip daddr . meta l4proto . th dport vmap @firewall-ips",
    );
}

fn dispatch(tx: &mut Tx) {
    tx.line(format_args!(
        "add map {TABLE} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; \
         comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}"
    ));
    tx.line(format_args!(
        "add map {TABLE} service-nodeports {{ type inet_proto . inet_service : verdict ; \
         comment \"NodePort traffic\" ; }}"
    ));
    tx.rule(
        "services",
        "ip daddr . meta l4proto . th dport vmap @service-ips",
    );
    tx.rule(
        "services",
        "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
    );
}

fn service(tx: &mut Tx, port: &ServicePort) {
    let has_endpoints = !port.endpoints.is_empty();
    for endpoint in &port.endpoints {
        tx.ensure_chain(&endpoint_chain(port, endpoint));
    }
    let svc_chain = service_chain(port);
    let ext_chain = external_chain(port);
    if has_endpoints {
        tx.ensure_chain(&svc_chain);
        if port.node_port.is_some() {
            tx.ensure_chain(&ext_chain);
        }
    }
    elements(tx, port, &svc_chain, &ext_chain);
    if !has_endpoints {
        return;
    }
    let proto = port.proto();
    tx.rule(
        &svc_chain,
        &format!(
            "ip daddr {} {proto} dport {} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade",
            port.cluster_ip, port.port
        ),
    );
    if port.node_port.is_some() {
        tx.rule(&ext_chain, "jump mark-for-masquerade");
        tx.rule(&ext_chain, &format!("goto {svc_chain}"));
    }
    let choices: Vec<String> = port
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{i} : goto {}", endpoint_chain(port, e)))
        .collect();
    tx.rule(
        &svc_chain,
        &format!(
            "numgen random mod {} vmap {{ {} }}",
            choices.len(),
            choices.join(" , ")
        ),
    );
    for endpoint in &port.endpoints {
        let chain = endpoint_chain(port, endpoint);
        tx.rule(
            &chain,
            &format!("ip saddr {} jump mark-for-masquerade", endpoint.ip),
        );
        tx.rule(&chain, &format!("meta l4proto {proto} dnat to {endpoint}"));
    }
}

/// The service's entries in the sets and verdict maps.
fn elements(tx: &mut Tx, port: &ServicePort, svc_chain: &str, ext_chain: &str) {
    let proto = port.proto();
    let name = port.name_string();
    tx.element_in_set("cluster-ips", port.cluster_ip);
    let key = format!("{} . {proto} . {}", port.cluster_ip, port.port);
    if port.endpoints.is_empty() {
        tx.element(
            "no-endpoint-services",
            &key,
            Some(&name),
            "goto reject-chain",
        );
    } else {
        tx.element("service-ips", &key, None, &format!("goto {svc_chain}"));
    }
    let Some(node_port) = port.node_port else {
        return;
    };
    let key = format!("{proto} . {node_port}");
    if port.endpoints.is_empty() {
        tx.element(
            "no-endpoint-nodeports",
            &key,
            Some(&name),
            "goto reject-chain",
        );
    } else {
        tx.element(
            "service-nodeports",
            &key,
            None,
            &format!("goto {ext_chain}"),
        );
    }
}

impl Tx<'_> {
    fn element_in_set(&mut self, set: &str, ip: Ipv4Addr) {
        self.element(set, &ip.to_string(), None, "");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube_proxy::{
        changed_services, service_ports,
        tests::{OBJECTS, changed, store},
    };

    const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    const GOLDEN: &str = include_str!("testdata/nftables.golden");
    const GOLDEN_CHANGED: &str = include_str!("testdata/nftables-changed.golden");

    fn sync(objects: &str, previous: &NftState) -> NftSync {
        sync_rules(
            &service_ports(&store(objects), "vps1"),
            NODE_IP,
            previous,
            Scope::Full,
        )
    }

    #[test]
    fn chain_names_follow_kube_proxys_scheme() {
        let ports = service_ports(&store(OBJECTS), "vps1");
        let web = &ports[2];
        assert!(service_chain(web).ends_with("-shop/web/tcp/http"));
        assert_eq!(
            endpoint_chain(web, &web.endpoints[0]),
            format!(
                "endpoint-{}-shop/web/tcp/http__10.42.1.10/8080",
                hash_prefix("shop/web/tcp/http__10.42.1.10/8080", 8)
            )
        );
        assert!(service_chain(&ports[1]).ends_with("-shop/empty/tcp/"));
    }

    #[test]
    fn the_first_sync_is_written_as_kube_proxy_writes_it() {
        let first = sync(OBJECTS, &NftState::default());
        assert_eq!(first.text, GOLDEN, "got:\n{}", first.text);
        assert_eq!(first.delete_stale, None);
        assert!(first.state.flushed);
        // web: two endpoints and its service chain; dns: one endpoint, service and external.
        assert_eq!(first.state.service_chains.len(), (2 + 1) + (1 + 1 + 1));
    }

    fn partial(objects: &str, previous: &NftSync) -> NftSync {
        let before = service_ports(&store(OBJECTS), "vps1");
        let after = service_ports(&store(objects), "vps1");
        let changed = changed_services(&before, &after);
        sync_rules(&after, NODE_IP, &previous.state, Scope::Changed(&changed))
    }

    #[test]
    fn a_partial_sync_rewrites_the_changed_services_chains_and_no_unchanged_element() {
        let first = sync(OBJECTS, &NftState::default());
        let second = partial(&changed(), &first);
        let web = &service_ports(&store(&changed()), "vps1")[2];
        let new_endpoint = endpoint_chain(web, &web.endpoints[1]);
        let svc = service_chain(web);
        let expected = format!(
            "add chain ip kube-proxy {kept}\n\
             flush chain ip kube-proxy {kept}\n\
             add chain ip kube-proxy {new_endpoint}\n\
             flush chain ip kube-proxy {new_endpoint}\n\
             add chain ip kube-proxy {svc}\n\
             flush chain ip kube-proxy {svc}\n\
             add rule ip kube-proxy {svc} ip daddr 10.43.0.10 tcp dport 80 ip saddr != \
             10.42.0.0/16 jump mark-for-masquerade\n\
             add rule ip kube-proxy {svc} numgen random mod 2 vmap {{ 0 : goto {kept} , 1 : \
             goto {new_endpoint} }}\n\
             add rule ip kube-proxy {kept} ip saddr 10.42.1.10 jump mark-for-masquerade\n\
             add rule ip kube-proxy {kept} meta l4proto tcp dnat to 10.42.1.10:8080\n\
             add rule ip kube-proxy {new_endpoint} ip saddr 10.42.2.11 jump mark-for-masquerade\n\
             add rule ip kube-proxy {new_endpoint} meta l4proto tcp dnat to 10.42.2.11:8080\n\
             flush chain ip kube-proxy {gone}\n",
            kept = endpoint_chain(web, &web.endpoints[0]),
            gone = first
                .state
                .service_chains
                .iter()
                .find(|c| c.ends_with("__10.42.2.10/8080"))
                .expect("the old endpoint's chain"),
        );
        assert_eq!(second.text, expected, "got:\n{}", second.text);
        assert_eq!(second.state.elements, first.state.elements);
        assert_eq!(
            second.state.service_chains,
            sync(&changed(), &first.state).state.service_chains
        );
    }

    #[test]
    fn a_partial_sync_replaces_changed_elements_and_deletes_leftovers() {
        let first = sync(OBJECTS, &NftState::default());
        // web loses its endpoints: its verdict moves to no-endpoint-services.
        let emptied = OBJECTS.replace(
            "conditions: {ready: true}\n  nodeName: vps",
            "conditions: {ready: false}\n  nodeName: vps",
        );
        assert_ne!(emptied, OBJECTS);
        let second = partial(&emptied, &first);
        assert!(second.text.contains(
            "add element ip kube-proxy no-endpoint-services { 10.43.0.10 . tcp . 80 comment \
             \"shop/web:http\" : goto reject-chain }\n"
        ));
        assert!(
            second
                .text
                .contains("delete element ip kube-proxy service-ips { 10.43.0.10 . tcp . 80 }\n")
        );
        assert!(!second.text.contains("cluster-ips"), "{}", second.text);
        assert!(!second.text.contains("add table"));
        let back = sync_rules(
            &service_ports(&store(OBJECTS), "vps1"),
            NODE_IP,
            &second.state,
            Scope::Changed(&changed_services(
                &service_ports(&store(&emptied), "vps1"),
                &service_ports(&store(OBJECTS), "vps1"),
            )),
        );
        assert_eq!(back.state.elements, first.state.elements);
    }

    #[test]
    fn an_endpoint_change_flushes_the_old_chain_then_deletes_it() {
        let first = sync(OBJECTS, &NftState::default());
        let second = sync(&changed(), &first.state);
        assert_eq!(second.text, GOLDEN_CHANGED, "got:\n{}", second.text);
        assert_eq!(second.delete_stale, None);
        let stale: Vec<&String> = second.state.stale_chains.iter().collect();
        assert_eq!(stale.len(), 1);
        assert!(stale[0].ends_with("__10.42.2.10/8080"), "{stale:?}");

        let third = sync(&changed(), &second.state);
        assert_eq!(
            third.delete_stale,
            Some(format!("delete chain ip kube-proxy {}\n", stale[0]))
        );
        assert!(third.state.stale_chains.is_empty());
        assert!(
            !third
                .text
                .contains("add chain ip kube-proxy filter-input\n")
        );
    }
}
