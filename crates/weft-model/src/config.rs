//! Cluster-wide settings, named after Cilium's Helm values so a `values.yaml` reads the same.
//! Only the keys Weft implements are accepted; an unknown key is an error, not silently ignored.

use serde::Deserialize;

use crate::{Ipv4Cidr, maglev::MAGLEV_TABLE_SIZES};

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub ipam: IpamConfig,
    pub bpf: BpfConfig,
    pub load_balancer: LoadBalancerConfig,
    pub maglev: MaglevConfig,
    #[serde(rename = "socketLB")]
    pub socket_lb: SocketLbConfig,
    /// ClusterIP range (K3s default).
    #[serde(rename = "serviceCIDR")]
    pub service_cidr: Ipv4Cidr,
    pub node_port: NodePortConfig,
    /// Weft always load-balances services itself; `false` (kube-proxy beside Weft) is refused.
    pub kube_proxy_replacement: KubeProxyReplacement,
    pub routing_mode: RoutingMode,
    pub tunnel_protocol: TunnelProtocol,
    pub prefilter: PrefilterConfig,
    #[serde(rename = "externalIPs")]
    pub external_ips: ExternalIpsConfig,
}

/// `kubeProxyReplacement`: `true` (also the string `"true"`, as Helm often quotes it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "serde_norway::Value")]
pub struct KubeProxyReplacement;

impl TryFrom<serde_norway::Value> for KubeProxyReplacement {
    type Error = String;

    fn try_from(value: serde_norway::Value) -> Result<Self, String> {
        let yes = value.as_bool() == Some(true) || value.as_str() == Some("true");
        if yes {
            return Ok(KubeProxyReplacement);
        }
        Err(format!(
            "kubeProxyReplacement {value:?}: Weft always replaces kube-proxy (services are load-balanced in BPF); only `true` is accepted"
        ))
    }
}

/// How pod traffic crosses nodes (`routingMode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum RoutingMode {
    /// Encapsulated between nodes ([`TunnelProtocol`]).
    #[default]
    Tunnel,
}

impl TryFrom<String> for RoutingMode {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "tunnel" => Ok(RoutingMode::Tunnel),
            "native" => Err(
                "routingMode native is not supported yet: Weft carries pod traffic \
                             between nodes in a tunnel (routingMode: tunnel)"
                    .to_string(),
            ),
            other => Err(format!(
                "routingMode `{other}` is not one of tunnel, native"
            )),
        }
    }
}

/// The encapsulation of `routingMode: tunnel` (`tunnelProtocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum TunnelProtocol {
    #[default]
    Geneve,
}

impl TryFrom<String> for TunnelProtocol {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "geneve" => Ok(TunnelProtocol::Geneve),
            "vxlan" => Err(
                "tunnelProtocol vxlan is not supported yet: Weft's tunnel is \
                            Geneve (tunnelProtocol: geneve)"
                    .to_string(),
            ),
            other => Err(format!(
                "tunnelProtocol `{other}` is not one of geneve, vxlan"
            )),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NodePortConfig {
    pub range: NodePortRange,
}

/// The ports NodePorts are allocated from (`nodePort.range`): `"30000,32767"` as Cilium writes
/// it, or `"30000-32767"` as kube-apiserver's `--service-node-port-range` does. Inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct NodePortRange {
    first: u16,
    last: u16,
}

impl NodePortRange {
    pub fn new(first: u16, last: u16) -> Result<NodePortRange, String> {
        if first == 0 || first > last {
            return Err(format!(
                "nodePort.range {first}-{last} is not a range of ports (1 <= first <= last <= 65535)"
            ));
        }
        Ok(NodePortRange { first, last })
    }

    pub fn first(self) -> u16 {
        self.first
    }

    pub fn last(self) -> u16 {
        self.last
    }

    pub fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    pub fn ports(self) -> std::ops::RangeInclusive<u16> {
        self.first..=self.last
    }
}

impl Default for NodePortRange {
    fn default() -> Self {
        NodePortRange {
            first: 30_000,
            last: 32_767,
        }
    }
}

impl std::fmt::Display for NodePortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl TryFrom<String> for NodePortRange {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let bad = || format!("nodePort.range `{text}` is not `FIRST,LAST` or `FIRST-LAST`");
        let (first, last) = text
            .split_once(',')
            .or_else(|| text.split_once('-'))
            .ok_or_else(bad)?;
        let port = |p: &str| p.trim().parse::<u16>().map_err(|_| bad());
        NodePortRange::new(port(first)?, port(last)?)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct BpfConfig {
    /// Masquerade pod traffic leaving the cluster with BPF SNAT (`bpf.masquerade`).
    pub masquerade: bool,
    /// Entries of the service load-balancer maps (`bpf.lbMapMax`).
    pub lb_map_max: LbMapMax,
}

impl Default for BpfConfig {
    fn default() -> Self {
        BpfConfig {
            masquerade: true,
            lb_map_max: LbMapMax::default(),
        }
    }
}

/// `bpf.lbMapMax` (Cilium's key, 65536 by default as in Cilium): how many entries the service
/// load-balancer maps are created with — services (a frontend's entry and one per backend
/// slot), backends, affinity; the reverse-NAT array and the Maglev outer map, indexed by
/// service id (16 bits), take at most 65,536 of them. Maps keep the size they were created
/// with while they are pinned (README.md, "Capacity").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u64")]
pub struct LbMapMax(u32);

impl LbMapMax {
    /// The smallest size accepted: room for a few services, as tests use.
    pub const MIN: u32 = 16;
    /// The largest: 16 Mi entries, about 1 GiB of kernel memory for the services map alone.
    pub const MAX: u32 = 1 << 24;

    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for LbMapMax {
    fn default() -> Self {
        LbMapMax(65_536)
    }
}

impl TryFrom<u64> for LbMapMax {
    type Error = String;

    fn try_from(size: u64) -> Result<Self, String> {
        u32::try_from(size)
            .ok()
            .filter(|s| (LbMapMax::MIN..=LbMapMax::MAX).contains(s))
            .map(LbMapMax)
            .ok_or_else(|| {
                format!(
                    "bpf.lbMapMax {size} is not between {} and {}",
                    LbMapMax::MIN,
                    LbMapMax::MAX
                )
            })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LoadBalancerConfig {
    pub acceleration: Acceleration,
    pub algorithm: LbAlgorithm,
    pub mode: LbMode,
    pub dsr_dispatch: DsrDispatch,
}

impl LoadBalancerConfig {
    /// How north-south traffic reaches a backend on another node, in words, for `weft status`.
    /// Every flow between nodes rides the Geneve tunnel (the only routing mode), so DSR's
    /// service address is carried in a Geneve option whatever `dsrDispatch` says: `opt` and
    /// `ipip` name how it would travel with native routing.
    pub fn north_south_summary(&self) -> String {
        let carrier = match self.dsr_dispatch {
            DsrDispatch::Geneve => {
                "in a Geneve option (class 0x014B), as dsrDispatch asks".to_string()
            }
            other => format!(
                "in a Geneve option (class 0x014B): routing is tunnel, so dsrDispatch {} \
                 (for native routing) does not apply",
                match other {
                    DsrDispatch::Opt => "opt",
                    _ => "ipip",
                }
            ),
        };
        match self.mode {
            LbMode::Snat => {
                "SNAT: replies return through the node that received the request".into()
            }
            LbMode::Dsr => format!(
                "DSR: the backend's node replies itself; the service address travels {carrier}"
            ),
            LbMode::Hybrid => {
                format!("hybrid: DSR for TCP (the service address travels {carrier}), SNAT for UDP")
            }
        }
    }
}

/// How north-south flows reach a backend on another node (`loadBalancer.mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LbMode {
    /// DNAT and SNAT to the node: replies come back through it (Cilium's default).
    #[default]
    Snat,
    /// DNAT only: the backend's node answers the client itself.
    Dsr,
    /// DSR for TCP, SNAT for everything else.
    Hybrid,
}

impl LbMode {
    /// Whether north-south flows of `proto` are forwarded with DSR.
    pub fn dsr_for(self, proto: crate::k8s::Protocol) -> bool {
        match self {
            LbMode::Snat => false,
            LbMode::Dsr => true,
            LbMode::Hybrid => proto == crate::k8s::Protocol::Tcp,
        }
    }
}

/// How a DSR packet carries the service address to the backend's node
/// (`loadBalancer.dsrDispatch`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DsrDispatch {
    /// An IPv4 option (or, inside the tunnel, a Geneve option).
    #[default]
    Opt,
    /// A Geneve option of class 0x014B.
    Geneve,
    /// IP-in-IP to the backend's node.
    Ipip,
}

/// How a service picks the backend of a new flow (`loadBalancer.algorithm`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LbAlgorithm {
    /// A random active backend per new flow (Cilium's default).
    #[default]
    Random,
    /// The service's Maglev table, indexed by the flow's hash: every node picks the same
    /// backend for the same flow, and a backend change moves few flows.
    Maglev,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MaglevConfig {
    /// Slots of each service's Maglev table (`maglev.tableSize`).
    pub table_size: MaglevTableSize,
    /// Seed of every Maglev hash (`maglev.hashSeed`): the same on every node, so that every
    /// node builds the same tables.
    pub hash_seed: String,
}

/// Seed of the Maglev hashes when `values.yaml` names none.
pub const DEFAULT_MAGLEV_HASH_SEED: &str = "weft-maglev-seed";

impl Default for MaglevConfig {
    fn default() -> Self {
        MaglevConfig {
            table_size: MaglevTableSize::default(),
            hash_seed: DEFAULT_MAGLEV_HASH_SEED.to_string(),
        }
    }
}

/// A Maglev table size: one of [`MAGLEV_TABLE_SIZES`] (primes, as the permutation needs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "u64")]
pub struct MaglevTableSize(u32);

impl MaglevTableSize {
    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for MaglevTableSize {
    fn default() -> Self {
        MaglevTableSize(16_381)
    }
}

impl TryFrom<u64> for MaglevTableSize {
    type Error = String;

    fn try_from(size: u64) -> Result<Self, String> {
        MAGLEV_TABLE_SIZES
            .iter()
            .find(|&&m| u64::from(m) == size)
            .map(|&m| MaglevTableSize(m))
            .ok_or_else(|| format!("maglev.tableSize {size} is not one of {MAGLEV_TABLE_SIZES:?}"))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SocketLbConfig {
    /// Translate ClusterIP connections at `connect()`/`sendmsg()` (`socketLB.enabled`).
    pub enabled: bool,
    /// Only for the host's own sockets, not pods' (`socketLB.hostNamespaceOnly`).
    pub host_namespace_only: bool,
}

impl Default for SocketLbConfig {
    fn default() -> Self {
        SocketLbConfig {
            enabled: true,
            host_namespace_only: false,
        }
    }
}

/// Whether `xdp_entry` runs on the external device (`loadBalancer.acceleration`). Off by
/// default, as in Cilium: a native XDP program on a veth takes segmentation offload away from
/// its peer, so every packet crosses the device one MTU at a time (bench/README.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Acceleration {
    #[default]
    Disabled,
    /// Native XDP; the node is not ready without it.
    Native,
    /// Native XDP where the device takes it; the node runs without it where it does not.
    BestEffort,
}

impl Acceleration {
    pub fn wants_xdp(self) -> bool {
        self != Acceleration::Disabled
    }

    pub fn requires_xdp(self) -> bool {
        self == Acceleration::Native
    }
}

impl ClusterConfig {
    /// Reads a Helm-style `values.yaml`; an empty document gives the defaults.
    pub fn from_yaml(text: &str) -> Result<ClusterConfig, serde_norway::Error> {
        if text.trim().is_empty() {
            return Ok(ClusterConfig::default());
        }
        serde_norway::from_str(text)
    }
}

/// `prefilter`: source prefixes every node's external device drops before anything else (in
/// XDP with `loadBalancer.acceleration`, in tc otherwise), counted as `prefiltered`. A Weft key:
/// Cilium fills its prefilter with a CLI (`cilium prefilter update`), not a Helm value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawPrefilter")]
pub struct PrefilterConfig {
    pub cidrs: std::collections::BTreeSet<Ipv4Cidr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrefilter {
    #[serde(default)]
    cidrs: Vec<Ipv4Cidr>,
}

impl TryFrom<RawPrefilter> for PrefilterConfig {
    type Error = String;

    fn try_from(raw: RawPrefilter) -> Result<Self, String> {
        let mut cidrs = std::collections::BTreeSet::new();
        for cidr in raw.cidrs {
            if cidr.prefix_len() == 0 {
                return Err(format!(
                    "prefilter.cidrs: {cidr} would drop everything the node receives"
                ));
            }
            if !cidrs.insert(cidr) {
                return Err(format!("prefilter.cidrs: {cidr} is listed twice"));
            }
        }
        let max = weft_common::prefilter::PREFILTER_MAX as usize;
        if cidrs.len() > max {
            return Err(format!(
                "prefilter.cidrs: {} prefixes, the datapath holds {max}",
                cidrs.len()
            ));
        }
        Ok(PrefilterConfig { cidrs })
    }
}

/// `externalIPs`: whether Services' `externalIPs` are load-balanced (`enabled`, Cilium's key,
/// on by default with kube-proxy replacement) and which prefixes external addresses may come
/// from (`allowedCIDRs`, a Weft key; empty: any address outside the cluster's own ranges).
/// See `external_address` for the rules.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ExternalIpsConfig {
    pub enabled: bool,
    #[serde(rename = "allowedCIDRs")]
    pub allowed_cidrs: Vec<Ipv4Cidr>,
}

impl Default for ExternalIpsConfig {
    fn default() -> Self {
        ExternalIpsConfig {
            enabled: true,
            allowed_cidrs: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct IpamConfig {
    pub mode: IpamMode,
    pub operator: IpamOperatorConfig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum IpamMode {
    #[default]
    ClusterPool,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct IpamOperatorConfig {
    #[serde(rename = "clusterPoolIPv4PodCIDRList")]
    pub cluster_pool_ipv4_pod_cidr_list: Vec<Ipv4Cidr>,
    #[serde(rename = "clusterPoolIPv4MaskSize")]
    pub cluster_pool_ipv4_mask_size: u8,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            ipam: IpamConfig::default(),
            bpf: BpfConfig::default(),
            load_balancer: LoadBalancerConfig::default(),
            maglev: MaglevConfig::default(),
            socket_lb: SocketLbConfig::default(),
            service_cidr: Ipv4Cidr::new([10, 43, 0, 0].into(), 16).expect("valid constant"),
            node_port: NodePortConfig::default(),
            kube_proxy_replacement: KubeProxyReplacement,
            routing_mode: RoutingMode::default(),
            tunnel_protocol: TunnelProtocol::default(),
            prefilter: PrefilterConfig::default(),
            external_ips: ExternalIpsConfig::default(),
        }
    }
}

impl Default for IpamConfig {
    fn default() -> Self {
        IpamConfig {
            mode: IpamMode::ClusterPool,
            operator: IpamOperatorConfig::default(),
        }
    }
}

impl Default for IpamOperatorConfig {
    fn default() -> Self {
        IpamOperatorConfig {
            cluster_pool_ipv4_pod_cidr_list: vec![
                Ipv4Cidr::new([10, 42, 0, 0].into(), 16).expect("valid constant"),
            ],
            cluster_pool_ipv4_mask_size: 24,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefilter_cidrs_are_read_and_refused_when_they_cannot_be_meant() {
        let c = ClusterConfig::from_yaml("").unwrap();
        assert!(
            c.prefilter.cidrs.is_empty(),
            "nothing is prefiltered by default"
        );
        let c = ClusterConfig::from_yaml(
            "prefilter:\n  cidrs: [203.0.113.0/24, 198.18.0.0/15, 192.0.2.7/32]\n",
        )
        .unwrap();
        let got: Vec<String> = c.prefilter.cidrs.iter().map(|c| c.to_string()).collect();
        assert_eq!(got, ["192.0.2.7/32", "198.18.0.0/15", "203.0.113.0/24"]);
        let empty = ClusterConfig::from_yaml("prefilter: {}").unwrap();
        assert!(empty.prefilter.cidrs.is_empty());
        for (bad, why) in [
            ("prefilter: {cidrs: [203.0.113.4/24]}", "host bits"),
            ("prefilter: {cidrs: [0.0.0.0/0]}", "drop everything"),
            ("prefilter: {cidrs: [10.0.0.0/8, 10.0.0.0/8]}", "twice"),
            ("prefilter: {cidr: [10.0.0.0/8]}", "unknown field"),
            ("prefilter: {cidrs: [not-a-cidr]}", "not-a-cidr"),
        ] {
            let err = ClusterConfig::from_yaml(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    use super::*;

    #[test]
    fn external_ips_are_on_by_default_and_their_allowed_prefixes_read() {
        let c = ClusterConfig::from_yaml("").unwrap();
        assert!(c.external_ips.enabled);
        assert!(c.external_ips.allowed_cidrs.is_empty());
        let c = ClusterConfig::from_yaml(
            "externalIPs:\n  enabled: false\n  allowedCIDRs: [192.0.2.0/24, 198.51.100.0/24]\n",
        )
        .unwrap();
        assert!(!c.external_ips.enabled);
        let got: Vec<String> = c
            .external_ips
            .allowed_cidrs
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(got, ["192.0.2.0/24", "198.51.100.0/24"]);
        for (bad, why) in [
            ("externalIPs: {allowedCIDRs: [192.0.2.1/24]}", "host bits"),
            (
                "externalIPs: {allowedCidrs: [192.0.2.0/24]}",
                "unknown field",
            ),
        ] {
            let err = ClusterConfig::from_yaml(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn the_north_south_summary_says_how_dsr_is_carried() {
        let seed =
            ClusterConfig::from_yaml("loadBalancer: {mode: dsr, dsrDispatch: opt}\n").unwrap();
        let text = seed.load_balancer.north_south_summary();
        assert!(text.starts_with("DSR"), "{text}");
        assert!(
            text.contains("Geneve option") && text.contains("dsrDispatch opt"),
            "{text}"
        );
        let snat = ClusterConfig::default().load_balancer.north_south_summary();
        assert!(snat.starts_with("SNAT"), "{snat}");
        let hybrid =
            ClusterConfig::from_yaml("loadBalancer: {mode: hybrid, dsrDispatch: geneve}\n")
                .unwrap()
                .load_balancer
                .north_south_summary();
        assert!(
            hybrid.starts_with("hybrid: DSR for TCP") && hybrid.contains("as dsrDispatch asks"),
            "{hybrid}"
        );
    }

    #[test]
    fn empty_values_give_the_k3s_defaults() {
        let c: ClusterConfig = serde_json::from_str("{}").expect("parses");
        assert_eq!(c, ClusterConfig::default());
        assert_eq!(
            c.ipam.operator.cluster_pool_ipv4_pod_cidr_list[0].to_string(),
            "10.42.0.0/16"
        );
        assert_eq!(c.service_cidr.to_string(), "10.43.0.0/16");
    }

    #[test]
    fn helm_style_keys_are_read() {
        let c: ClusterConfig = serde_json::from_str(
            r#"{"ipam":{"mode":"cluster-pool","operator":{
                "clusterPoolIPv4PodCIDRList":["10.80.0.0/14"],"clusterPoolIPv4MaskSize":26}}}"#,
        )
        .expect("parses");
        assert_eq!(c.ipam.operator.cluster_pool_ipv4_mask_size, 26);
        assert_eq!(
            c.ipam.operator.cluster_pool_ipv4_pod_cidr_list[0].to_string(),
            "10.80.0.0/14"
        );
    }

    #[test]
    fn values_yaml_is_read_and_masquerade_defaults_on() {
        assert!(ClusterConfig::from_yaml("").unwrap().bpf.masquerade);
        let c = ClusterConfig::from_yaml(
            "bpf:\n  masquerade: false\nipam:\n  operator:\n    clusterPoolIPv4MaskSize: 25\n",
        )
        .unwrap();
        assert!(!c.bpf.masquerade);
        assert_eq!(c.ipam.operator.cluster_pool_ipv4_mask_size, 25);
        let err = ClusterConfig::from_yaml("bpf: {masquerad: true}\n").unwrap_err();
        assert!(err.to_string().contains("masquerad"), "{err}");
    }

    #[test]
    fn lb_map_max_defaults_as_in_cilium_and_is_bounded() {
        let c = ClusterConfig::from_yaml("").unwrap();
        assert_eq!(c.bpf.lb_map_max.get(), 65_536);
        let c = ClusterConfig::from_yaml("bpf: {lbMapMax: 300}").unwrap();
        assert_eq!(c.bpf.lb_map_max.get(), 300);
        assert!(c.bpf.masquerade, "the other bpf keys keep their defaults");
        for bad in ["15", "0", "16777217", "4294967296"] {
            let err = ClusterConfig::from_yaml(&format!("bpf: {{lbMapMax: {bad}}}"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!(
                    "bpf.lbMapMax {bad} is not between 16 and 16777216"
                )),
                "{bad}: {err}"
            );
        }
        for bad in ["-1", "many", "1.5"] {
            let err = ClusterConfig::from_yaml(&format!("bpf: {{lbMapMax: {bad}}}"));
            assert!(err.is_err(), "{bad}");
        }
    }

    #[test]
    fn acceleration_is_off_unless_asked_for() {
        let c = ClusterConfig::from_yaml("").unwrap();
        assert_eq!(c.load_balancer.acceleration, Acceleration::Disabled);
        assert!(!c.load_balancer.acceleration.wants_xdp());
        let native = ClusterConfig::from_yaml("loadBalancer:\n  acceleration: native\n").unwrap();
        assert!(native.load_balancer.acceleration.requires_xdp());
        let best = ClusterConfig::from_yaml("loadBalancer: {acceleration: best-effort}").unwrap();
        assert!(best.load_balancer.acceleration.wants_xdp());
        assert!(!best.load_balancer.acceleration.requires_xdp());
        let err = ClusterConfig::from_yaml("loadBalancer: {acceleration: turbo}").unwrap_err();
        assert!(err.to_string().contains("turbo"), "{err}");
    }

    #[test]
    fn load_balancing_keys_default_as_in_cilium() {
        let c = ClusterConfig::from_yaml("").unwrap();
        assert_eq!(c.load_balancer.algorithm, LbAlgorithm::Random);
        assert_eq!(c.maglev.table_size.get(), 16_381);
        assert_eq!(c.maglev.hash_seed, DEFAULT_MAGLEV_HASH_SEED);
        assert!(c.socket_lb.enabled);
        assert!(!c.socket_lb.host_namespace_only);
    }

    #[test]
    fn load_balancing_keys_are_read() {
        let c = ClusterConfig::from_yaml(
            "loadBalancer: {algorithm: maglev, acceleration: native}
\
             maglev: {tableSize: 65521, hashSeed: JLfvgnHc2kaSUFaI}
\
             socketLB: {enabled: false, hostNamespaceOnly: true}
",
        )
        .unwrap();
        assert_eq!(c.load_balancer.algorithm, LbAlgorithm::Maglev);
        assert_eq!(c.load_balancer.acceleration, Acceleration::Native);
        assert_eq!(c.maglev.table_size.get(), 65_521);
        assert_eq!(c.maglev.hash_seed, "JLfvgnHc2kaSUFaI");
        assert!(!c.socket_lb.enabled);
        assert!(c.socket_lb.host_namespace_only);
        for size in MAGLEV_TABLE_SIZES {
            let c = ClusterConfig::from_yaml(&format!("maglev: {{tableSize: {size}}}")).unwrap();
            assert_eq!(c.maglev.table_size.get(), size);
        }
    }

    #[test]
    fn only_the_listed_primes_are_table_sizes() {
        for bad in ["16383", "16380", "0", "-1", "131072", "65537"] {
            let err = ClusterConfig::from_yaml(&format!("maglev: {{tableSize: {bad}}}"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("tableSize") || err.contains(bad),
                "{bad}: {err}"
            );
        }
        let err = ClusterConfig::from_yaml("maglev: {tableSize: 16383}").unwrap_err();
        assert!(
            err.to_string()
                .contains("maglev.tableSize 16383 is not one of [251, 509,"),
            "{err}"
        );
        let err = ClusterConfig::from_yaml("loadBalancer: {algorithm: round-robin}").unwrap_err();
        assert!(err.to_string().contains("round-robin"), "{err}");
        let err = ClusterConfig::from_yaml("socketLB: {enable: true}").unwrap_err();
        assert!(err.to_string().contains("enable"), "{err}");
    }

    #[test]
    fn north_south_keys_default_as_in_cilium() {
        let c = ClusterConfig::from_yaml("").unwrap();
        assert_eq!(c.load_balancer.mode, LbMode::Snat);
        assert_eq!(c.load_balancer.dsr_dispatch, DsrDispatch::Opt);
        assert_eq!(
            c.node_port.range,
            NodePortRange::new(30_000, 32_767).unwrap()
        );
        assert_eq!(
            (c.routing_mode, c.tunnel_protocol),
            (RoutingMode::Tunnel, TunnelProtocol::Geneve)
        );
    }

    #[test]
    fn the_seeds_values_are_read() {
        let c = ClusterConfig::from_yaml(
            "kubeProxyReplacement: true\nroutingMode: tunnel\ntunnelProtocol: geneve\n\
             loadBalancer: {mode: dsr, dsrDispatch: opt, algorithm: maglev, acceleration: native}\n\
             nodePort: {range: \"30000,32767\"}\n",
        )
        .unwrap();
        assert_eq!(c.load_balancer.mode, LbMode::Dsr);
        assert_eq!(c.load_balancer.dsr_dispatch, DsrDispatch::Opt);
        assert_eq!(c.node_port.range.to_string(), "30000-32767");
        let quoted = ClusterConfig::from_yaml("kubeProxyReplacement: \"true\"\n").unwrap();
        assert_eq!(quoted.kube_proxy_replacement, KubeProxyReplacement);
        for (mode, dispatch) in [("hybrid", "geneve"), ("snat", "ipip")] {
            let text = format!("loadBalancer: {{mode: {mode}, dsrDispatch: {dispatch}}}");
            ClusterConfig::from_yaml(&text).unwrap();
        }
    }

    #[test]
    fn hybrid_mode_is_dsr_for_tcp_only() {
        use crate::k8s::Protocol::{Sctp, Tcp, Udp};
        assert!(LbMode::Hybrid.dsr_for(Tcp));
        assert!(!LbMode::Hybrid.dsr_for(Udp) && !LbMode::Hybrid.dsr_for(Sctp));
        assert!(LbMode::Dsr.dsr_for(Udp));
        assert!(!LbMode::Snat.dsr_for(Tcp));
    }

    #[test]
    fn node_port_ranges_take_both_spellings_and_refuse_nonsense() {
        let range = |text: &str| {
            ClusterConfig::from_yaml(&format!("nodePort: {{range: \"{text}\"}}"))
                .map(|c| c.node_port.range)
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            range("31000-31010").unwrap(),
            NodePortRange::new(31_000, 31_010).unwrap()
        );
        assert_eq!(
            range(" 80 , 80 ").unwrap(),
            NodePortRange::new(80, 80).unwrap()
        );
        assert!(range("30000,32767").unwrap().contains(32_767));
        assert!(!range("30000,32767").unwrap().contains(29_999));
        for bad in ["32767,30000", "0-10", "30000", "a-b", "30000-70000"] {
            let err = range(bad).unwrap_err();
            assert!(err.contains("nodePort.range"), "{bad}: {err}");
        }
    }

    #[test]
    fn unsupported_north_south_values_are_refused_clearly() {
        let err = |text: &str| ClusterConfig::from_yaml(text).unwrap_err().to_string();
        assert!(err("routingMode: native").contains("routingMode native is not supported yet"));
        assert!(err("routingMode: bgp").contains("`bgp` is not one of tunnel, native"));
        assert!(err("tunnelProtocol: vxlan").contains("tunnelProtocol vxlan is not supported yet"));
        assert!(err("tunnelProtocol: gre").contains("`gre`"));
        assert!(err("kubeProxyReplacement: false").contains("Weft always replaces kube-proxy"));
        assert!(err("kubeProxyReplacement: partial").contains("only `true`"));
        assert!(err("loadBalancer: {mode: maglev}").contains("maglev"));
        assert!(err("loadBalancer: {dsrDispatch: gre}").contains("gre"));
        assert!(err("nodePort: {ranges: \"1-2\"}").contains("ranges"));
    }

    #[test]
    fn unknown_keys_and_bad_cidrs_are_refused() {
        let unknown = serde_json::from_str::<ClusterConfig>(r#"{"ipam":{"modee":"x"}}"#);
        assert!(unknown.unwrap_err().to_string().contains("modee"));
        let bad = serde_json::from_str::<ClusterConfig>(r#"{"serviceCIDR":"10.43.0.1/16"}"#);
        assert!(bad.unwrap_err().to_string().contains("host bits"));
    }
}
