//! Which addresses a Service may claim as `externalIPs` or as a LoadBalancer address.
//!
//! A Service's external address becomes a frontend on every node, and pods' traffic to that
//! address is load-balanced too. An address that belongs to something else therefore diverts
//! that something's traffic to the Service's backends: a pod's address, a ClusterIP, a host
//! outside the cluster (the CVE-2020-8554 class). The rules:
//! - never inside the pod CIDRs (`ipam.operator.clusterPoolIPv4PodCIDRList`) or the service
//!   CIDR (`serviceCIDR`);
//! - never an address with a meaning of its own: unspecified, loopback, link-local (the
//!   hairpin source 169.254.42.1 lives there), multicast, broadcast;
//! - a node's address only as an `externalIPs` entry, which a user writes on purpose (the
//!   seed's Traefik Service lists every node address); a LoadBalancer address equal to a node's
//!   comes from a pool that overlaps the nodes, which is an accident, so it is refused;
//! - when `externalIPs.allowedCIDRs` is set, only inside those prefixes (node addresses
//!   included); when it is empty, anything the rules above let through.
//!
//! `weft lab apply` (standing in for the API server's admission) refuses such a Service whole;
//! the agent, which on a real cluster has no say over what is stored, leaves the refused
//! frontend out of the datapath and says why (`lb::RefusedFrontend`).

use std::{collections::BTreeSet, fmt, net::Ipv4Addr};

use crate::{ClusterConfig, Ipv4Cidr, Store};

/// How a Service claims an external address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExternalKind {
    /// `spec.externalIPs`.
    ExternalIp,
    /// `spec.loadBalancerIP` or an address handed out by a `CiliumLoadBalancerIPPool`.
    LoadBalancer,
}

impl fmt::Display for ExternalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExternalKind::ExternalIp => "externalIPs",
            ExternalKind::LoadBalancer => "LoadBalancer address",
        })
    }
}

/// Why an external address is refused.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
pub enum AddressRefusal {
    #[error("{address} is inside the pod CIDR {cidr}: it would divert traffic meant for a pod")]
    PodCidr { address: Ipv4Addr, cidr: Ipv4Cidr },
    #[error(
        "{address} is inside the service CIDR {cidr}: it would divert traffic meant for a ClusterIP"
    )]
    ServiceCidr { address: Ipv4Addr, cidr: Ipv4Cidr },
    #[error("{address} is {what}, not an address a Service can own")]
    Special {
        address: Ipv4Addr,
        what: &'static str,
    },
    #[error(
        "{address} is a node's address: a LoadBalancer pool must not overlap the nodes (list node addresses under externalIPs to expose a Service on them)"
    )]
    NodeAddress { address: Ipv4Addr },
    #[error("{address} is outside externalIPs.allowedCIDRs ({allowed})")]
    NotAllowed { address: Ipv4Addr, allowed: String },
}

/// The rules of one cluster: its own ranges, its nodes' addresses and the allowed prefixes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExternalAddressRules {
    pod_cidrs: Vec<Ipv4Cidr>,
    service_cidr: Option<Ipv4Cidr>,
    node_addresses: BTreeSet<Ipv4Addr>,
    allowed: Vec<Ipv4Cidr>,
}

impl ExternalAddressRules {
    pub fn new(config: &ClusterConfig, node_addresses: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        ExternalAddressRules {
            pod_cidrs: config.ipam.operator.cluster_pool_ipv4_pod_cidr_list.clone(),
            service_cidr: Some(config.service_cidr),
            node_addresses: node_addresses.into_iter().collect(),
            allowed: config.external_ips.allowed_cidrs.clone(),
        }
    }

    /// The rules with the node addresses the store knows (every `WeftNode`'s underlay address).
    pub fn of_store(config: &ClusterConfig, store: &Store) -> Self {
        Self::new(
            config,
            store.weft_nodes.values().map(|n| n.spec.underlay_ip),
        )
    }

    /// Whether a Service may claim `address` as `kind`.
    pub fn check(&self, address: Ipv4Addr, kind: ExternalKind) -> Result<(), AddressRefusal> {
        if let Some(what) = special_use(address) {
            return Err(AddressRefusal::Special { address, what });
        }
        if let Some(&cidr) = self.pod_cidrs.iter().find(|c| c.contains(address)) {
            return Err(AddressRefusal::PodCidr { address, cidr });
        }
        if let Some(cidr) = self.service_cidr.filter(|c| c.contains(address)) {
            return Err(AddressRefusal::ServiceCidr { address, cidr });
        }
        if kind == ExternalKind::LoadBalancer && self.node_addresses.contains(&address) {
            return Err(AddressRefusal::NodeAddress { address });
        }
        if !self.allowed.is_empty() && !self.allowed.iter().any(|c| c.contains(address)) {
            let allowed = self
                .allowed
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(AddressRefusal::NotAllowed { address, allowed });
        }
        Ok(())
    }
}

fn special_use(address: Ipv4Addr) -> Option<&'static str> {
    if address.is_unspecified() {
        Some("the unspecified address")
    } else if address.is_loopback() {
        Some("a loopback address")
    } else if address.is_link_local() {
        Some("a link-local address")
    } else if address.is_multicast() {
        Some("a multicast address")
    } else if address.is_broadcast() {
        Some("the broadcast address")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allowed: &[&str]) -> ExternalAddressRules {
        let mut config = ClusterConfig::default();
        config.external_ips.allowed_cidrs = allowed.iter().map(|c| c.parse().unwrap()).collect();
        ExternalAddressRules::new(
            &config,
            ["198.51.100.1", "198.51.100.2"].map(|a| a.parse().unwrap()),
        )
    }

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    #[test]
    fn cluster_ranges_and_special_addresses_are_refused_for_both_kinds() {
        let r = rules(&[]);
        for kind in [ExternalKind::ExternalIp, ExternalKind::LoadBalancer] {
            assert!(matches!(
                r.check(ip("10.42.1.10"), kind),
                Err(AddressRefusal::PodCidr { .. })
            ));
            assert!(matches!(
                r.check(ip("10.43.0.10"), kind),
                Err(AddressRefusal::ServiceCidr { .. })
            ));
            for special in [
                "0.0.0.0",
                "127.0.0.1",
                "169.254.42.1",
                "224.0.0.1",
                "255.255.255.255",
            ] {
                assert!(
                    matches!(
                        r.check(ip(special), kind),
                        Err(AddressRefusal::Special { .. })
                    ),
                    "{special}"
                );
            }
            assert_eq!(r.check(ip("192.0.2.10"), kind), Ok(()));
        }
    }

    #[test]
    fn node_addresses_are_external_ips_on_purpose_and_load_balancer_addresses_by_accident() {
        let r = rules(&[]);
        assert_eq!(
            r.check(ip("198.51.100.1"), ExternalKind::ExternalIp),
            Ok(())
        );
        let refused = r.check(ip("198.51.100.2"), ExternalKind::LoadBalancer);
        assert!(matches!(refused, Err(AddressRefusal::NodeAddress { .. })));
    }

    #[test]
    fn allowed_cidrs_admit_only_their_prefixes_node_addresses_included() {
        let r = rules(&["192.0.2.0/24"]);
        assert_eq!(r.check(ip("192.0.2.77"), ExternalKind::ExternalIp), Ok(()));
        let outside = r.check(ip("203.0.113.4"), ExternalKind::ExternalIp);
        assert_eq!(
            outside.unwrap_err().to_string(),
            "203.0.113.4 is outside externalIPs.allowedCIDRs (192.0.2.0/24)"
        );
        assert!(matches!(
            r.check(ip("198.51.100.1"), ExternalKind::ExternalIp),
            Err(AddressRefusal::NotAllowed { .. })
        ));
        // The cluster's own ranges stay refused even when a prefix covers them.
        let wide = rules(&["10.0.0.0/8"]);
        assert!(matches!(
            wide.check(ip("10.42.0.20"), ExternalKind::ExternalIp),
            Err(AddressRefusal::PodCidr { .. })
        ));
    }

    #[test]
    fn refusals_name_the_address_and_what_it_would_divert() {
        let r = rules(&[]);
        let text = r
            .check(ip("10.42.1.10"), ExternalKind::ExternalIp)
            .unwrap_err()
            .to_string();
        assert_eq!(
            text,
            "10.42.1.10 is inside the pod CIDR 10.42.0.0/16: it would divert traffic meant for a pod"
        );
    }
}
