//! The baseline Weft is measured against: no Weft datapath, pods routed by the kernel, and
//! Services implemented by the rules kube-proxy would write for the same Service and
//! EndpointSlice objects, in one of its three flavours ([`ProxyMode`]).
//!
//! [`iptables`] and [`nftables`] are pure generators: Service ports in, the exact text kube-proxy
//! hands to `iptables-restore` or `nft -f` out. [`NodeProxy`] applies that text inside a node's
//! network namespace and times it: a full sync (what kube-proxy's sync loop does at start and
//! after a failure) or a partial one (what it does after a Service or EndpointSlice changed:
//! only the changed services' chains are written, see [`Scope`]).
//!
//! What is modelled is what the benchmarks use: ClusterIP and NodePort Services with the
//! Cluster traffic policies, ready endpoints, `--cluster-cidr` as the local-traffic detector,
//! the default masquerade bit (14) and the default `--nodeport-addresses` of each proxier.
//! Session affinity, `Local` traffic policies, externalIPs and load-balancer ingress are not.

pub mod iptables;
pub mod nftables;
mod node;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
    str::FromStr,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use weft_model::{
    ClusterConfig, Store,
    k8s::Protocol,
    lb::{FrontendKind, ServiceName, lb_state},
};

pub use node::{NodeProxy, SyncReport, apply_rules, setup_node, setup_nodes};

/// kube-proxy's `--cluster-cidr` in the lab (the cluster pool of pod addresses).
pub const CLUSTER_CIDR: &str = "10.42.0.0/16";
/// The Service CIDR (kube-proxy's nftables mode drops traffic to its unallocated addresses).
pub const SERVICE_CIDR: &str = "10.43.0.0/16";
/// `1 << --iptables-masquerade-bit` (14), formatted as kube-proxy formats it (`%#08x`).
pub const MASQUERADE_MARK: &str = "0x004000";

/// Which kube-proxy a baseline lab runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProxyMode {
    /// The iptables proxier through the nft backend of iptables (`iptables-nft-restore`).
    Iptables,
    /// The iptables proxier through the legacy backend (`iptables-legacy-restore`).
    IptablesLegacy,
    /// The nftables proxier (`nft -f`).
    Nftables,
}

impl ProxyMode {
    pub const ALL: [ProxyMode; 3] = [
        ProxyMode::Iptables,
        ProxyMode::IptablesLegacy,
        ProxyMode::Nftables,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Iptables => "iptables",
            ProxyMode::IptablesLegacy => "iptables-legacy",
            ProxyMode::Nftables => "nftables",
        }
    }
}

impl fmt::Display for ProxyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProxyMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProxyMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                format!("unknown kube-proxy mode `{s}` (iptables, iptables-legacy, nftables)")
            })
    }
}

/// One port of a Service, as kube-proxy's proxiers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub service: ServiceName,
    /// `""` when the port has no name.
    pub port_name: String,
    pub protocol: Protocol,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub node_port: Option<u16>,
    /// Ready endpoints, in the order their rules are written.
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.ip, self.port)
    }
}

impl ServicePort {
    /// `ServicePortName.String()`: `namespace/name:port`, or `namespace/name` for an unnamed
    /// port.
    pub fn name_string(&self) -> String {
        if self.port_name.is_empty() {
            self.service.to_string()
        } else {
            format!("{}:{}", self.service, self.port_name)
        }
    }

    /// The protocol as kube-proxy writes it in rules and hashes: lower case.
    pub fn proto(&self) -> &'static str {
        match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// Which services' own chains a sync writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Every service's: kube-proxy's full sync, at start and after a failed one.
    Full,
    /// Only these services' (changed since the previous sync); the others' chains stay as they
    /// are in the kernel. The top-level chains (`KUBE-SERVICES`, ...) are still rewritten whole
    /// in iptables mode, as kube-proxy's partial sync does.
    Changed(&'a BTreeSet<ServiceName>),
}

impl Scope<'_> {
    pub fn writes(&self, service: &ServiceName) -> bool {
        match self {
            Scope::Full => true,
            Scope::Changed(changed) => changed.contains(service),
        }
    }

    pub fn is_full(&self) -> bool {
        matches!(self, Scope::Full)
    }
}

/// The services whose ports or endpoints differ between two syncs' inputs (added and removed
/// ones included): what kube-proxy's change trackers report to a partial sync.
pub fn changed_services(before: &[ServicePort], after: &[ServicePort]) -> BTreeSet<ServiceName> {
    fn by_service(ports: &[ServicePort]) -> BTreeMap<&ServiceName, Vec<&ServicePort>> {
        let mut out: BTreeMap<&ServiceName, Vec<&ServicePort>> = BTreeMap::new();
        for port in ports {
            out.entry(&port.service).or_default().push(port);
        }
        out
    }
    let (before, after) = (by_service(before), by_service(after));
    before
        .keys()
        .chain(after.keys())
        .filter(|svc| before.get(*svc) != after.get(*svc))
        .map(|svc| (*svc).clone())
        .collect()
}

/// The Service ports of `store` as node `node`'s kube-proxy sees them, sorted by name: every
/// port of a Service with a clusterIP, with its ready endpoints.
pub fn service_ports(store: &Store, node: &str) -> Vec<ServicePort> {
    let state = lb_state(store, node, &ClusterConfig::default());
    let mut ports: Vec<ServicePort> = state
        .frontends
        .iter()
        .filter(|(_, lb)| lb.kind == FrontendKind::ClusterIp)
        .map(|(frontend, lb)| ServicePort {
            node_port: node_port(store, &lb.service, &lb.port_name, frontend.proto),
            service: lb.service.clone(),
            port_name: lb.port_name.clone(),
            protocol: frontend.proto,
            cluster_ip: frontend.ip,
            port: frontend.port,
            endpoints: lb
                .backends_active
                .iter()
                .map(|b| Endpoint {
                    ip: b.ip,
                    port: b.port,
                })
                .collect(),
        })
        .collect();
    ports.sort_by(|a, b| {
        (&a.service, &a.port_name, a.proto()).cmp(&(&b.service, &b.port_name, b.proto()))
    });
    ports
}

fn node_port(store: &Store, svc: &ServiceName, port_name: &str, proto: Protocol) -> Option<u16> {
    let spec = &store.service(&svc.namespace, &svc.name)?.spec;
    if !spec.has_node_ports() {
        return None;
    }
    spec.ports
        .iter()
        .find(|p| p.name() == port_name && p.protocol == proto)?
        .node_port
}

/// The first `chars` characters of the standard base32 (RFC 4648) text of SHA-256(`input`),
/// as Go's `base32.StdEncoding.EncodeToString(sha256.Sum256(input))[:chars]`.
pub(crate) fn hash_prefix(input: &str, chars: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(input.as_bytes());
    let mut out = String::with_capacity(chars);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in digest.iter() {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 0x1f) as usize]));
            if out.len() == chars {
                return out;
            }
        }
        buffer &= (1 << bits) - 1;
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The objects of the golden tests: a two-endpoint ClusterIP Service, a NodePort Service
    /// with one endpoint and one without any.
    pub(crate) const OBJECTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.43.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.42.1.10]
  conditions: {ready: true}
  nodeName: vps1
- addresses: [10.42.2.10]
  conditions: {ready: true}
  nodeName: vps2
---
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: kube-system}
spec:
  type: NodePort
  clusterIP: 10.43.0.53
  ports: [{name: dns, port: 53, protocol: UDP, nodePort: 30053}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dns-1
  namespace: kube-system
  labels: {kubernetes.io/service-name: dns}
addressType: IPv4
ports: [{name: dns, port: 5353, protocol: UDP}]
endpoints:
- addresses: [10.42.1.11]
  conditions: {ready: true}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: shop}
spec:
  clusterIP: 10.43.0.20
  ports: [{port: 443}]
"#;

    pub(crate) fn store(text: &str) -> Store {
        Store::from_manifests([("objects.yaml", text)]).expect("objects load")
    }

    /// The golden objects after an endpoint change: web's 10.42.2.10 is replaced by 10.42.2.11.
    pub(crate) fn changed() -> String {
        OBJECTS.replace("[10.42.2.10]", "[10.42.2.11]")
    }

    #[test]
    fn chain_hashes_match_kube_proxys_own_test_vectors() {
        // Chain names from kube-proxy's proxier tests (ns1/svc1, port p80, endpoint
        // 10.180.0.1:80).
        assert_eq!(hash_prefix("ns1/svc1:p80tcp", 16), "XPGD46QRK7WJZT7O");
        assert_eq!(
            hash_prefix("ns1/svc1:p80tcp10.180.0.1:80", 16),
            "SXIVWICOYRO3J4NJ"
        );
        assert_eq!(hash_prefix("ns1/svc1/tcp/p80", 8), "ULMVA6XW");
        assert_eq!(
            hash_prefix("ns1/svc1/tcp/p80__10.180.0.1/80", 8),
            "5OJB2KTY"
        );
    }

    #[test]
    fn service_ports_come_sorted_with_ready_endpoints_and_node_ports() {
        let ports = service_ports(&store(OBJECTS), "vps1");
        let names: Vec<String> = ports.iter().map(ServicePort::name_string).collect();
        assert_eq!(
            names,
            ["kube-system/dns:dns", "shop/empty", "shop/web:http"]
        );
        assert_eq!(ports[0].node_port, Some(30053));
        assert_eq!(ports[0].proto(), "udp");
        assert!(ports[1].endpoints.is_empty());
        let web: Vec<String> = ports[2].endpoints.iter().map(|e| e.to_string()).collect();
        assert_eq!(web, ["10.42.1.10:8080", "10.42.2.10:8080"]);
        assert_eq!(ports[2].node_port, None);
    }

    #[test]
    fn modes_parse_and_print() {
        for mode in ProxyMode::ALL {
            assert_eq!(mode.as_str().parse::<ProxyMode>(), Ok(mode));
        }
        assert!("ipvs".parse::<ProxyMode>().is_err());
        assert_eq!(
            serde_json::to_string(&ProxyMode::IptablesLegacy).expect("json"),
            "\"iptables-legacy\""
        );
    }
}
