//! The `ip` commands and sysctls that build a [`Topology`], computed without I/O so they can be
//! read and tested; the executor only runs them.

use crate::topology::{
    CLIENT_GATEWAY_IP, CLIENT_LINK, CLIENT_PREFIX_LEN, ETH0, NODE_HOST_DEV, NODE_NET_DEV, NodeSpec,
    POD_MTU, PodSpec, Topology, UNDERLAY_BRIDGE, UNDERLAY_PREFIX_LEN, UNDERLAY_ROUTER_IP,
    format_mac,
};

/// Commands for one `ip -n <netns> -batch -` run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpBatch {
    pub netns: String,
    pub commands: Vec<String>,
}

/// A sysctl written from inside a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl {
    pub netns: String,
    /// Dotted name, e.g. `net.ipv4.ip_forward`.
    pub key: &'static str,
    pub value: &'static str,
    /// Skipped when the kernel does not have it (IPv6 compiled out or disabled).
    pub optional: bool,
}

impl Sysctl {
    pub fn path(&self) -> String {
        format!("/proc/sys/{}", self.key.replace('.', "/"))
    }
}

/// The batches in the order they must run: the router (which creates the underlay and client
/// veths and moves their peers into the node and client namespaces), the client, each node
/// (which creates its pods' veths), then each pod.
pub fn ip_batches(topology: &Topology) -> Vec<IpBatch> {
    let mut batches = vec![router_batch(topology), client_batch(topology)];
    batches.extend(topology.nodes.iter().map(|n| node_batch(topology, n)));
    batches.extend(topology.pods().map(|(n, p)| pod_batch(n, p)));
    batches
}

fn router_batch(t: &Topology) -> IpBatch {
    let mut c = vec![
        "link set lo up".to_string(),
        format!("link add {UNDERLAY_BRIDGE} type bridge"),
        format!("addr add {UNDERLAY_ROUTER_IP}/{UNDERLAY_PREFIX_LEN} dev {UNDERLAY_BRIDGE}"),
        format!("link set {UNDERLAY_BRIDGE} up"),
        format!(
            "link add {CLIENT_LINK} type veth peer name {ETH0} netns {}",
            t.client.netns
        ),
        format!("addr add {CLIENT_GATEWAY_IP}/{CLIENT_PREFIX_LEN} dev {CLIENT_LINK}"),
        format!("link set {CLIENT_LINK} up"),
    ];
    for node in &t.nodes {
        let port = &node.name;
        c.push(format!(
            "link add {port} type veth peer name {ETH0} netns {}",
            node.netns
        ));
        c.push(format!("link set {port} master {UNDERLAY_BRIDGE}"));
        c.push(format!("link set {port} up"));
    }
    IpBatch {
        netns: t.router_netns.clone(),
        commands: c,
    }
}

fn client_batch(t: &Topology) -> IpBatch {
    IpBatch {
        netns: t.client.netns.clone(),
        commands: vec![
            "link set lo up".to_string(),
            format!("addr add {}/{CLIENT_PREFIX_LEN} dev {ETH0}", t.client.ip),
            format!("link set {ETH0} up"),
            format!("route add default via {CLIENT_GATEWAY_IP}"),
        ],
    }
}

fn node_batch(t: &Topology, node: &NodeSpec) -> IpBatch {
    let mut c = vec![
        "link set lo up".to_string(),
        format!(
            "addr add {}/{UNDERLAY_PREFIX_LEN} dev {ETH0}",
            node.underlay_ip
        ),
        format!("link set {ETH0} up"),
        format!("route add default via {UNDERLAY_ROUTER_IP}"),
    ];
    if node.pods.is_empty() {
        // Pods come from the CNI plugin and are routed by the datapath: no hand wiring.
        return IpBatch {
            netns: node.netns.clone(),
            commands: c,
        };
    }
    c.extend([
        format!("link add {NODE_HOST_DEV} type veth peer name {NODE_NET_DEV}"),
        format!("addr add {}/32 dev {NODE_HOST_DEV}", node.gateway),
        format!("link set {NODE_NET_DEV} up"),
        format!("link set {NODE_HOST_DEV} up"),
    ]);
    for (cidr, via) in t.peer_routes(node) {
        c.push(format!("route add {cidr} via {via} dev {ETH0}"));
    }
    for pod in &node.pods {
        let host = &pod.host_ifname;
        c.push(format!(
            "link add {host} address {} mtu {POD_MTU} type veth peer name {ETH0} address {} \
             mtu {POD_MTU} netns {}",
            format_mac(&pod.host_mac),
            format_mac(&pod.mac),
            pod.netns
        ));
        c.push(format!("link set {host} up"));
        c.push(format!("route add {}/32 dev {host}", pod.ip));
    }
    IpBatch {
        netns: node.netns.clone(),
        commands: c,
    }
}

fn pod_batch(node: &NodeSpec, pod: &PodSpec) -> IpBatch {
    let gw = node.gateway;
    IpBatch {
        netns: pod.netns.clone(),
        commands: vec![
            "link set lo up".to_string(),
            format!("addr add {}/32 dev {ETH0}", pod.ip),
            format!("link set {ETH0} up"),
            format!("route add {gw} dev {ETH0} scope link"),
            format!("route add default via {gw} dev {ETH0}"),
        ],
    }
}

/// Sysctls of every namespace. IPv6 is off in the whole lab (the datapath is IPv4; this keeps
/// router solicitations and DAD out of captures). IPv4 `conf` settings of a new netns are
/// inherited from the host's, so the nodes' forwarding behaviour is pinned here rather than left
/// to whatever the host has.
pub fn sysctls(topology: &Topology) -> Vec<Sysctl> {
    let mut all = Vec::new();
    let mut set = |netns: &str, key, value, optional| {
        all.push(Sysctl {
            netns: netns.to_string(),
            key,
            value,
            optional,
        });
    };
    for netns in topology.all_netns() {
        set(&netns, "net.ipv6.conf.all.disable_ipv6", "1", true);
        set(&netns, "net.ipv6.conf.default.disable_ipv6", "1", true);
    }
    set(&topology.router_netns, "net.ipv4.ip_forward", "1", false);
    for node in &topology.nodes {
        let ns = &node.netns;
        set(ns, "net.ipv4.ip_forward", "1", false);
        for key in [
            "net.ipv4.conf.all.rp_filter",
            "net.ipv4.conf.default.rp_filter",
            "net.ipv4.conf.all.arp_ignore",
            "net.ipv4.conf.default.arp_ignore",
        ] {
            set(ns, key, "0", false);
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{plan, spec::LabSpec};

    fn topo() -> Topology {
        plan(&LabSpec::new("demo")).expect("valid spec")
    }

    fn batch<'a>(batches: &'a [IpBatch], netns: &str) -> &'a [String] {
        &batches
            .iter()
            .find(|b| b.netns == netns)
            .unwrap_or_else(|| panic!("no batch for {netns}"))
            .commands
    }

    fn has(commands: &[String], line: &str) -> bool {
        commands.iter().any(|c| c == line)
    }

    #[test]
    fn one_batch_per_namespace_router_first_pods_last() {
        let t = topo();
        let order: Vec<String> = ip_batches(&t).into_iter().map(|b| b.netns).collect();
        assert_eq!(order, t.all_netns());
    }

    #[test]
    fn router_has_the_underlay_bridge_and_the_client_link() {
        let b = ip_batches(&topo());
        let r = batch(&b, "demo-inet");
        for line in [
            "link add ul0 type bridge",
            "addr add 198.51.100.254/24 dev ul0",
            "link add cl0 type veth peer name eth0 netns demo-client",
            "addr add 203.0.113.1/24 dev cl0",
            "link add vps2 type veth peer name eth0 netns demo-vps2",
            "link set vps2 master ul0",
        ] {
            assert!(has(r, line), "{line}");
        }
        let c = batch(&b, "demo-client");
        assert!(has(c, "addr add 203.0.113.4/24 dev eth0"));
        assert!(has(c, "route add default via 203.0.113.1"));
    }

    #[test]
    fn node_routes_its_pods_and_the_other_nodes_pod_cidrs() {
        let t = topo();
        let b = ip_batches(&t);
        let n = batch(&b, "demo-vps2");
        let pod = &t.nodes[1].pods[0];
        let veth = format!(
            "link add lxcpod1 address {} mtu 1500 type veth peer name eth0 address {} mtu 1500 \
             netns demo-vps2-pod1",
            format_mac(&pod.host_mac),
            format_mac(&pod.mac)
        );
        for line in [
            "addr add 198.51.100.2/24 dev eth0",
            "route add default via 198.51.100.254",
            "link add weft_host type veth peer name weft_net",
            "addr add 10.42.2.1/32 dev weft_host",
            "route add 10.42.1.0/24 via 198.51.100.1 dev eth0",
            "route add 10.42.3.0/24 via 198.51.100.3 dev eth0",
            &veth,
            "link set lxcpod1 up",
            "route add 10.42.2.10/32 dev lxcpod1",
            "route add 10.42.2.11/32 dev lxcpod2",
        ] {
            assert!(has(n, line), "{line}");
        }
        assert!(!n.iter().any(|c| c.contains("10.42.2.0/24 via")));
    }

    #[test]
    fn pod_has_a_host_address_and_routes_via_its_gateway() {
        let b = ip_batches(&topo());
        assert_eq!(
            batch(&b, "demo-vps3-pod2"),
            [
                "link set lo up",
                "addr add 10.42.3.11/32 dev eth0",
                "link set eth0 up",
                "route add 10.42.3.1 dev eth0 scope link",
                "route add default via 10.42.3.1 dev eth0",
            ]
        );
    }

    #[test]
    fn a_node_without_hand_wired_pods_leaves_its_pods_to_weft() {
        let plain = plan(&LabSpec::with_size("plain", 2, 0)).expect("valid");
        let n = batch(&ip_batches(&plain), "plain-vps1").to_vec();
        assert!(!has(&n, "addr add 10.42.1.1/32 dev weft_host"));
        assert!(!n.iter().any(|c| c.contains("10.42.2.0/24 via")));
    }

    #[test]
    fn router_and_nodes_forward_and_ipv6_is_off() {
        let t = topo();
        let s = sysctls(&t);
        let forwarding: Vec<&str> = s
            .iter()
            .filter(|s| s.key == "net.ipv4.ip_forward" && s.value == "1")
            .map(|s| s.netns.as_str())
            .collect();
        assert_eq!(
            forwarding,
            ["demo-inet", "demo-vps1", "demo-vps2", "demo-vps3"]
        );
        for netns in t.all_netns() {
            assert!(
                s.iter()
                    .any(|s| s.netns == netns && s.key == "net.ipv6.conf.all.disable_ipv6")
            );
        }
        assert_eq!(s[0].path(), "/proc/sys/net/ipv6/conf/all/disable_ipv6");
    }
}
