//! The desired contents of the datapath's per-node maps — `weft_ipcache4` from the cluster
//! store, `weft_endpoints` from the node's registered pods — and the minimal change from what
//! a map holds now.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use weft_common::{
    EndpointInfo, EndpointKey, IpcacheEntry,
    ipcache::identity::{HOST, REMOTE_NODE, UNMANAGED},
};

use crate::{Ipv4Cidr, Store};

const NO_TUNNEL: [u8; 4] = [0; 4];

fn host_route(addr: Ipv4Addr) -> Ipv4Cidr {
    // A /32 never has host bits set.
    Ipv4Cidr::new(addr, 32).unwrap_or_else(|_| unreachable!("/32 is always canonical"))
}

/// The ipcache of node `this_node`:
/// - every node's underlay IP /32: `HOST` for this node, `REMOTE_NODE` for the others, no
///   tunnel;
/// - every other node's pod CIDR: `UNMANAGED` (a pod not yet known by identity), tunnel to that
///   node's underlay IP; this node's own pod CIDR is not a tunnel route and is absent;
/// - every `WeftEndpoint` /32: its identity, tunnel to its node's underlay IP unless it is on
///   this node. An endpoint of a node without a `WeftNode` cannot be reached and is left out.
pub fn desired_ipcache(store: &Store, this_node: &str) -> BTreeMap<Ipv4Cidr, IpcacheEntry> {
    let mut out = BTreeMap::new();
    let underlay: BTreeMap<&str, Ipv4Addr> = store
        .weft_nodes
        .values()
        .map(|n| (n.metadata.name.as_str(), n.spec.underlay_ip))
        .collect();
    for node in store.weft_nodes.values() {
        let local = node.metadata.name == this_node;
        let identity = if local { HOST } else { REMOTE_NODE };
        out.insert(
            host_route(node.spec.underlay_ip),
            IpcacheEntry {
                identity,
                tunnel_endpoint: NO_TUNNEL,
            },
        );
        if !local {
            out.insert(
                node.spec.pod_cidr,
                IpcacheEntry {
                    identity: UNMANAGED,
                    tunnel_endpoint: node.spec.underlay_ip.octets(),
                },
            );
        }
    }
    for ep in store.weft_endpoints.values() {
        let tunnel_endpoint = if ep.spec.node == this_node {
            NO_TUNNEL
        } else {
            match underlay.get(ep.spec.node.as_str()) {
                Some(ip) => ip.octets(),
                None => continue,
            }
        };
        out.insert(
            host_route(ep.spec.ipv4),
            IpcacheEntry {
                identity: ep.spec.identity,
                tunnel_endpoint,
            },
        );
    }
    out
}

/// A pod interface of this node as the `weft_endpoints` map needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub address: Ipv4Addr,
    /// ifindex of the host-side veth.
    pub ifindex: u32,
    pub identity: u32,
    pub mac: [u8; 6],
    pub host_mac: [u8; 6],
}

pub fn desired_endpoints(endpoints: &[LocalEndpoint]) -> BTreeMap<EndpointKey, EndpointInfo> {
    endpoints
        .iter()
        .map(|ep| {
            (
                EndpointKey {
                    addr: ep.address.octets(),
                },
                EndpointInfo {
                    ifindex: ep.ifindex,
                    identity: ep.identity,
                    mac: ep.mac,
                    host_mac: ep.host_mac,
                    _pad: 0,
                },
            )
        })
        .collect()
}

/// What to write and delete to go from a map's current contents to the desired ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapChanges<K, V> {
    pub put: Vec<(K, V)>,
    pub delete: Vec<K>,
}

impl<K, V> MapChanges<K, V> {
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.delete.is_empty()
    }
}

/// Entries that are missing or differ are put; keys no longer desired are deleted; equal
/// entries are not touched.
pub fn map_changes<K: Ord + Clone, V: PartialEq + Clone>(
    desired: &BTreeMap<K, V>,
    current: &BTreeMap<K, V>,
) -> MapChanges<K, V> {
    let put = desired
        .iter()
        .filter(|(k, v)| current.get(k) != Some(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let desired_keys: BTreeSet<&K> = desired.keys().collect();
    let delete = current
        .keys()
        .filter(|k| !desired_keys.contains(k))
        .cloned()
        .collect();
    MapChanges { put, delete }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    const MANIFESTS: &str = r#"
apiVersion: weft.io/v1alpha1
kind: WeftNode
metadata: {name: vps1}
spec: {podCIDR: 10.42.0.0/24, underlayIP: 198.51.100.1}
---
apiVersion: weft.io/v1alpha1
kind: WeftNode
metadata: {name: vps2}
spec: {podCIDR: 10.42.1.0/24, underlayIP: 198.51.100.2}
---
apiVersion: weft.io/v1alpha1
kind: WeftEndpoint
metadata: {name: vps1-aaa, namespace: web}
spec: {node: vps1, podName: a, containerID: aaa, interface: eth0, ipv4: 10.42.0.10, identity: 1000}
---
apiVersion: weft.io/v1alpha1
kind: WeftEndpoint
metadata: {name: vps2-bbb, namespace: web}
spec: {node: vps2, podName: b, containerID: bbb, interface: eth0, ipv4: 10.42.1.10, identity: 2000}
---
apiVersion: weft.io/v1alpha1
kind: WeftEndpoint
metadata: {name: vps9-ccc}
spec: {node: vps9, podName: c, containerID: ccc, interface: eth0, ipv4: 10.42.9.10, identity: 3000}
"#;

    fn entry(identity: u32, tunnel: [u8; 4]) -> IpcacheEntry {
        IpcacheEntry {
            identity,
            tunnel_endpoint: tunnel,
        }
    }

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn the_ipcache_holds_nodes_remote_pod_cidrs_and_endpoints() {
        let store = Store::from_manifests([("m.yaml", MANIFESTS)]).unwrap();
        let got = desired_ipcache(&store, "vps1");
        let want = BTreeMap::from([
            (cidr("198.51.100.1/32"), entry(HOST, [0; 4])),
            (cidr("198.51.100.2/32"), entry(REMOTE_NODE, [0; 4])),
            (cidr("10.42.1.0/24"), entry(UNMANAGED, [198, 51, 100, 2])),
            (cidr("10.42.0.10/32"), entry(1000, [0; 4])),
            (cidr("10.42.1.10/32"), entry(2000, [198, 51, 100, 2])),
        ]);
        assert_eq!(got, want);
        let from_vps2 = desired_ipcache(&store, "vps2");
        assert_eq!(from_vps2[&cidr("198.51.100.2/32")], entry(HOST, [0; 4]));
        assert_eq!(
            from_vps2[&cidr("10.42.0.10/32")],
            entry(1000, [198, 51, 100, 1])
        );
        assert!(!from_vps2.contains_key(&cidr("10.42.1.0/24")));
    }

    #[test]
    fn changes_put_what_differs_and_delete_what_is_gone() {
        let current = BTreeMap::from([
            (cidr("10.0.0.1/32"), entry(1, [0; 4])),
            (cidr("10.0.0.2/32"), entry(2, [0; 4])),
            (cidr("10.0.0.3/32"), entry(3, [0; 4])),
        ]);
        let desired = BTreeMap::from([
            (cidr("10.0.0.1/32"), entry(1, [0; 4])),
            (cidr("10.0.0.2/32"), entry(20, [0; 4])),
            (cidr("10.0.0.4/32"), entry(4, [0; 4])),
        ]);
        let changes = map_changes(&desired, &current);
        assert_eq!(
            changes.put,
            [
                (cidr("10.0.0.2/32"), entry(20, [0; 4])),
                (cidr("10.0.0.4/32"), entry(4, [0; 4]))
            ]
        );
        assert_eq!(changes.delete, [cidr("10.0.0.3/32")]);
        assert!(map_changes(&desired, &desired).is_empty());
    }

    #[test]
    fn endpoints_map_entries_carry_ifindex_identity_and_both_macs() {
        let ep = LocalEndpoint {
            address: Ipv4Addr::new(10, 42, 0, 10),
            ifindex: 9,
            identity: 777,
            mac: [2, 0, 0, 0, 0, 1],
            host_mac: [2, 0, 0, 0, 0, 2],
        };
        let map = desired_endpoints(&[ep]);
        let info = map[&EndpointKey {
            addr: [10, 42, 0, 10],
        }];
        assert_eq!(
            (info.ifindex, info.identity, info.mac, info.host_mac),
            (9, 777, ep.mac, ep.host_mac)
        );
    }
}
