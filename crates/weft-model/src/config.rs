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
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct BpfConfig {
    /// Masquerade pod traffic leaving the cluster with BPF SNAT (`bpf.masquerade`).
    pub masquerade: bool,
}

impl Default for BpfConfig {
    fn default() -> Self {
        BpfConfig { masquerade: true }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LoadBalancerConfig {
    pub acceleration: Acceleration,
    pub algorithm: LbAlgorithm,
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
    use super::*;

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
    fn unknown_keys_and_bad_cidrs_are_refused() {
        let unknown = serde_json::from_str::<ClusterConfig>(r#"{"ipam":{"modee":"x"}}"#);
        assert!(unknown.unwrap_err().to_string().contains("modee"));
        let bad = serde_json::from_str::<ClusterConfig>(r#"{"serviceCIDR":"10.43.0.1/16"}"#);
        assert!(bad.unwrap_err().to_string().contains("host bits"));
    }
}
