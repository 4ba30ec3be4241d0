//! Cluster-wide settings, named after Cilium's Helm values so a `values.yaml` reads the same.
//! Only the keys Weft implements are accepted; an unknown key is an error, not silently ignored.

use serde::Deserialize;

use crate::Ipv4Cidr;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub ipam: IpamConfig,
    pub bpf: BpfConfig,
    pub load_balancer: LoadBalancerConfig,
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
    fn unknown_keys_and_bad_cidrs_are_refused() {
        let unknown = serde_json::from_str::<ClusterConfig>(r#"{"ipam":{"modee":"x"}}"#);
        assert!(unknown.unwrap_err().to_string().contains("modee"));
        let bad = serde_json::from_str::<ClusterConfig>(r#"{"serviceCIDR":"10.43.0.1/16"}"#);
        assert!(bad.unwrap_err().to_string().contains("host bits"));
    }
}
