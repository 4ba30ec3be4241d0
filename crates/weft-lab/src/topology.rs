//! The lab's topology, computed without any I/O from a [`LabSpec`]: every namespace, address,
//! MAC, pin directory and cgroup the executor creates is decided here.

use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use weft_model::{ClusterConfig, Ipv4Cidr, ipam};

use crate::spec::LabSpec;

/// The underlay ("the internet" between the nodes): a bridge in the router's netns.
pub const UNDERLAY_BRIDGE: &str = "ul0";
pub const UNDERLAY_PREFIX_LEN: u8 = 24;
pub const UNDERLAY_ROUTER_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
/// The router's veth towards the client.
pub const CLIENT_LINK: &str = "cl0";
pub const CLIENT_PREFIX_LEN: u8 = 24;
pub const CLIENT_GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 4);
/// The node's device that carries the pods' gateway address: one end of a veth pair whose other
/// end is [`NODE_NET_DEV`], like Cilium's `cilium_host`/`cilium_net` (a veth rather than a dummy
/// device, which not every kernel has).
pub const NODE_HOST_DEV: &str = "weft_host";
pub const NODE_NET_DEV: &str = "weft_net";
/// Name of the node's and the pods' interface (the node's one is on the underlay).
pub const ETH0: &str = "eth0";
/// MTU of the pod veths (no encapsulation yet).
pub const POD_MTU: u32 = 1500;
/// Where the lab's bpffs pin directories live (`<root>/<lab>/<node>`).
pub const PIN_ROOT: &str = "/sys/fs/bpf/weft";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Topology {
    pub name: String,
    pub router_netns: String,
    pub client: Host,
    pub nodes: Vec<NodeSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Host {
    pub netns: String,
    pub ip: Ipv4Addr,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeSpec {
    /// `vps<index>`; also the name of the router-side veth of the node's `eth0`.
    pub name: String,
    /// 1-based.
    pub index: u32,
    pub netns: String,
    pub underlay_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Cidr,
    /// The pods' gateway, carried by the node's `weft_host` device.
    pub gateway: Ipv4Addr,
    pub pin_dir: PathBuf,
    /// Relative to the cgroup2 root, e.g. `weft-<lab>/vps1`.
    pub cgroup: PathBuf,
    pub pods: Vec<PodSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PodSpec {
    /// `pod<k>`, unique within its node.
    pub name: String,
    /// Name of the node it runs on.
    pub node: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// MAC of the pod's `eth0`.
    pub mac: [u8; 6],
    /// The node-side veth, `lxcpod<k>`.
    pub host_ifname: String,
    pub host_mac: [u8; 6],
}

/// Where a command of `weft lab exec` runs: a netns and a cgroup (relative to the cgroup2 root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub netns: String,
    pub cgroup: PathBuf,
}

/// The whole lab for `spec`, without touching the machine.
pub fn plan(spec: &LabSpec) -> anyhow::Result<Topology> {
    spec.validate()?;
    let name = &spec.name;
    let nodes = (1..=spec.nodes)
        .map(|index| plan_node(name, index, spec.pods_per_node))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Topology {
        name: name.clone(),
        router_netns: format!("{name}-inet"),
        client: Host {
            netns: format!("{name}-client"),
            ip: CLIENT_IP,
        },
        nodes,
    })
}

fn plan_node(lab: &str, index: u32, pods: u32) -> anyhow::Result<NodeSpec> {
    let name = format!("vps{index}");
    let netns = format!("{lab}-{name}");
    let pod_cidr = ipam::node_pod_cidr(&ClusterConfig::default(), index)
        .with_context(|| format!("pod CIDR of node {name}"))?;
    let gateway =
        ipam::node_gateway(&pod_cidr).with_context(|| format!("gateway of node {name}"))?;
    let host_byte = u8::try_from(index).context("node index")?;
    let pods = (1..=pods)
        .map(|k| plan_pod(lab, &name, index, &netns, &pod_cidr, k))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(NodeSpec {
        index,
        netns,
        underlay_ip: Ipv4Addr::new(198, 51, 100, host_byte),
        pod_cidr,
        gateway,
        pin_dir: PathBuf::from(PIN_ROOT).join(lab).join(&name),
        cgroup: PathBuf::from(cgroup_dir_name(lab)).join(&name),
        pods,
        name,
    })
}

fn plan_pod(
    lab: &str,
    node: &str,
    node_index: u32,
    node_netns: &str,
    pod_cidr: &Ipv4Cidr,
    k: u32,
) -> anyhow::Result<PodSpec> {
    let name = format!("pod{k}");
    let ip = ipam::pod_address(pod_cidr, k - 1)
        .with_context(|| format!("address of pod {name} of node {node}"))?;
    let (node_byte, pod_byte) = (
        u8::try_from(node_index).context("node index")?,
        u8::try_from(k).context("pod index")?,
    );
    let mac = |last| [0x02, lab_hash(lab), node_byte, pod_byte, 0x00, last];
    Ok(PodSpec {
        netns: format!("{node_netns}-{name}"),
        node: node.to_string(),
        ip,
        mac: mac(0x02),
        host_ifname: format!("lxc{name}"),
        host_mac: mac(0x01),
        name,
    })
}

/// The cgroup directory of lab `lab`, directly under the cgroup2 root.
pub fn cgroup_dir_name(lab: &str) -> String {
    format!("weft-{lab}")
}

/// One byte of FNV-1a of the lab name, so two labs' MACs differ (`02:<hash>:<node>:<pod>:00:xx`).
fn lab_hash(lab: &str) -> u8 {
    let hash = lab.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    hash.to_le_bytes()[0]
}

/// `02:ab:01:01:00:02` (see [`weft_common::Mac`]).
pub fn format_mac(mac: &[u8; 6]) -> String {
    weft_common::Mac(*mac).to_string()
}

impl Topology {
    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// A pod named `vps1/pod1` or `vps1-pod1`.
    pub fn find_pod(&self, target: &str) -> Option<(&NodeSpec, &PodSpec)> {
        let (node, pod) = target.split_once('/').or_else(|| target.split_once('-'))?;
        let node = self.node(node)?;
        let pod = node.pods.iter().find(|p| p.name == pod)?;
        Some((node, pod))
    }

    /// Every namespace of the lab: router, client, nodes, then pods.
    pub fn all_netns(&self) -> Vec<String> {
        let mut all = vec![self.router_netns.clone(), self.client.netns.clone()];
        all.extend(self.nodes.iter().map(|n| n.netns.clone()));
        all.extend(self.pods().map(|(_, p)| p.netns.clone()));
        all
    }

    /// Every pod with its node, node by node.
    pub fn pods(&self) -> impl Iterator<Item = (&NodeSpec, &PodSpec)> {
        self.nodes
            .iter()
            .flat_map(|n| n.pods.iter().map(move |p| (n, p)))
    }

    /// The lab's cgroup directory, relative to the cgroup2 root (`weft-<lab>`).
    pub fn cgroup_root(&self) -> PathBuf {
        PathBuf::from(cgroup_dir_name(&self.name))
    }

    /// The cgroups created under [`Self::cgroup_root`]: one per node, plus `inet` and `client`
    /// so that whatever runs there is also removed by `down`.
    pub fn cgroups(&self) -> Vec<PathBuf> {
        let root = self.cgroup_root();
        let mut all = vec![root.join("inet"), root.join("client")];
        all.extend(self.nodes.iter().map(|n| n.cgroup.clone()));
        all
    }

    /// The lab's bpffs directory (`/sys/fs/bpf/weft/<lab>`).
    pub fn pin_root(&self) -> PathBuf {
        PathBuf::from(PIN_ROOT).join(&self.name)
    }

    /// Static routes of `node` towards every other node's pod CIDR: (CIDR, next hop on the
    /// underlay). Hand wiring until the datapath takes over.
    pub fn peer_routes(&self, node: &NodeSpec) -> Vec<(Ipv4Cidr, Ipv4Addr)> {
        self.nodes
            .iter()
            .filter(|other| other.index != node.index)
            .map(|other| (other.pod_cidr, other.underlay_ip))
            .collect()
    }

    /// Resolves a `weft lab exec` target: `vps1` (node), `vps1/pod1` or `vps1-pod1` (pod, in
    /// its node's cgroup), `client` or `inet`.
    pub fn target(&self, target: &str) -> Option<Target> {
        let root = self.cgroup_root();
        match target {
            "client" => Some(Target {
                netns: self.client.netns.clone(),
                cgroup: root.join("client"),
            }),
            "inet" => Some(Target {
                netns: self.router_netns.clone(),
                cgroup: root.join("inet"),
            }),
            _ => {
                if let Some(node) = self.node(target) {
                    return Some(Target {
                        netns: node.netns.clone(),
                        cgroup: node.cgroup.clone(),
                    });
                }
                let (node, pod) = self.find_pod(target)?;
                Some(Target {
                    netns: pod.netns.clone(),
                    cgroup: node.cgroup.clone(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo() -> Topology {
        plan(&LabSpec::new("demo")).expect("valid spec")
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    #[test]
    fn router_and_client() {
        let t = topo();
        assert_eq!(t.name, "demo");
        assert_eq!(t.router_netns, "demo-inet");
        assert_eq!(
            t.client,
            Host {
                netns: "demo-client".into(),
                ip: ip("203.0.113.4")
            }
        );
    }

    #[test]
    fn three_nodes_with_their_addresses_pin_dirs_and_cgroups() {
        let t = topo();
        assert_eq!(t.nodes.len(), 3);
        for (i, node) in (1..).zip(&t.nodes) {
            assert_eq!(node.index, i);
            assert_eq!(node.name, format!("vps{i}"));
            assert_eq!(node.netns, format!("demo-vps{i}"));
            assert_eq!(node.underlay_ip, ip(&format!("198.51.100.{i}")));
            assert_eq!(node.pod_cidr.to_string(), format!("10.42.{i}.0/24"));
            assert_eq!(node.gateway, ip(&format!("10.42.{i}.1")));
            assert_eq!(
                node.pin_dir,
                PathBuf::from(format!("/sys/fs/bpf/weft/demo/vps{i}"))
            );
            assert_eq!(node.cgroup, PathBuf::from(format!("weft-demo/vps{i}")));
        }
    }

    #[test]
    fn two_pods_per_node_with_addresses_names_and_macs() {
        let t = topo();
        let h = lab_hash("demo");
        for node in &t.nodes {
            let i = node.index;
            assert_eq!(node.pods.len(), 2);
            for (k, pod) in (1..).zip(&node.pods) {
                assert_eq!(pod.name, format!("pod{k}"));
                assert_eq!(pod.node, node.name);
                assert_eq!(pod.netns, format!("demo-vps{i}-pod{k}"));
                assert_eq!(pod.ip, ip(&format!("10.42.{i}.{}", 9 + k)));
                assert_eq!(pod.host_ifname, format!("lxcpod{k}"));
                let (ib, kb) = (i as u8, k as u8);
                assert_eq!(pod.mac, [0x02, h, ib, kb, 0, 2]);
                assert_eq!(pod.host_mac, [0x02, h, ib, kb, 0, 1]);
            }
        }
    }

    #[test]
    fn macs_are_unique_local_unicast_and_differ_between_labs() {
        let t = topo();
        let mut macs: Vec<[u8; 6]> = t.pods().flat_map(|(_, p)| [p.mac, p.host_mac]).collect();
        assert!(macs.iter().all(|m| m[0] & 0b11 == 0b10), "local unicast");
        let n = macs.len();
        macs.sort_unstable();
        macs.dedup();
        assert_eq!(macs.len(), n);
        assert_ne!(lab_hash("demo"), lab_hash("demo2"));
        assert_eq!(
            format_mac(&[0x02, 0xab, 1, 2, 0, 0xff]),
            "02:ab:01:02:00:ff"
        );
    }

    #[test]
    fn peer_routes_go_to_every_other_node_over_the_underlay() {
        let t = topo();
        let routes: Vec<(String, Ipv4Addr)> = t
            .peer_routes(&t.nodes[1])
            .into_iter()
            .map(|(c, via)| (c.to_string(), via))
            .collect();
        assert_eq!(
            routes,
            [
                ("10.42.1.0/24".to_string(), ip("198.51.100.1")),
                ("10.42.3.0/24".to_string(), ip("198.51.100.3"))
            ]
        );
    }

    #[test]
    fn all_netns_lists_every_namespace_once() {
        assert_eq!(
            topo().all_netns(),
            [
                "demo-inet",
                "demo-client",
                "demo-vps1",
                "demo-vps2",
                "demo-vps3",
                "demo-vps1-pod1",
                "demo-vps1-pod2",
                "demo-vps2-pod1",
                "demo-vps2-pod2",
                "demo-vps3-pod1",
                "demo-vps3-pod2",
            ]
        );
    }

    #[test]
    fn lookups_of_nodes_and_pods() {
        let t = topo();
        assert_eq!(t.node("vps2").map(|n| n.index), Some(2));
        assert!(t.node("vps4").is_none());
        let (node, pod) = t.find_pod("vps2/pod1").expect("pod");
        assert_eq!((node.name.as_str(), pod.ip), ("vps2", ip("10.42.2.10")));
        let (_, pod) = t.find_pod("vps3-pod2").expect("pod");
        assert_eq!(pod.netns, "demo-vps3-pod2");
        for missing in ["pod1", "vps1", "vps1/pod3", "vps9/pod1", "vps1/", ""] {
            assert!(t.find_pod(missing).is_none(), "{missing}");
        }
    }

    #[test]
    fn exec_targets() {
        let t = topo();
        let target = |s| t.target(s).map(|t| (t.netns, t.cgroup));
        let cg = |s: &str| PathBuf::from(s);
        assert_eq!(
            target("vps1"),
            Some(("demo-vps1".into(), cg("weft-demo/vps1")))
        );
        assert_eq!(
            target("vps2/pod2"),
            Some(("demo-vps2-pod2".into(), cg("weft-demo/vps2")))
        );
        assert_eq!(
            target("client"),
            Some(("demo-client".into(), cg("weft-demo/client")))
        );
        assert_eq!(
            target("inet"),
            Some(("demo-inet".into(), cg("weft-demo/inet")))
        );
        assert_eq!(target("nope"), None);
        assert_eq!(
            t.cgroups(),
            ["inet", "client", "vps1", "vps2", "vps3"].map(|c| cg("weft-demo").join(c))
        );
    }

    #[test]
    fn sizes_at_the_limits() {
        let t = plan(&LabSpec::with_size("big", 9, 20)).expect("valid");
        let last = t.nodes.last().expect("nodes");
        assert_eq!(last.pod_cidr.to_string(), "10.42.9.0/24");
        assert_eq!(last.pods.last().expect("pods").ip, ip("10.42.9.29"));
        assert!(last.pods.iter().all(|p| p.host_ifname.len() <= 15));
        assert!(plan(&LabSpec::with_size("big", 10, 1)).is_err());
    }

    #[test]
    fn serializes_to_json_and_back() {
        let t = topo();
        let json = serde_json::to_string(&t).expect("serializes");
        assert!(json.contains("\"10.42.1.0/24\""));
        let back: Topology = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, t);
    }
}
