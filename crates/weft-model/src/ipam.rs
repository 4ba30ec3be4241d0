//! Cluster-pool address plan: which pod CIDR a node owns and which address a pod gets.

use std::net::Ipv4Addr;

use crate::{ClusterConfig, Ipv4Cidr, cidr::CidrError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("ipam.operator.clusterPoolIPv4PodCIDRList is empty")]
    EmptyPool,
    #[error("the cluster pool has no room for node number {0}")]
    PoolExhausted(u32),
    #[error(transparent)]
    Cidr(#[from] CidrError),
}

/// The pod CIDR of the node with the given index: the pools are carved in order into subnets of
/// `clusterPoolIPv4MaskSize`, and node `i` owns subnet `i` of that sequence.
pub fn node_pod_cidr(config: &ClusterConfig, node_index: u32) -> Result<Ipv4Cidr, IpamError> {
    let op = &config.ipam.operator;
    if op.cluster_pool_ipv4_pod_cidr_list.is_empty() {
        return Err(IpamError::EmptyPool);
    }
    let mut remaining = u64::from(node_index);
    for pool in &op.cluster_pool_ipv4_pod_cidr_list {
        let subnets = subnet_count(pool, op.cluster_pool_ipv4_mask_size);
        if remaining < subnets {
            let index =
                u32::try_from(remaining).map_err(|_| IpamError::PoolExhausted(node_index))?;
            return Ok(pool.subnet(op.cluster_pool_ipv4_mask_size, index)?);
        }
        remaining -= subnets;
    }
    Err(IpamError::PoolExhausted(node_index))
}

fn subnet_count(pool: &Ipv4Cidr, mask_size: u8) -> u64 {
    if mask_size < pool.prefix_len() || mask_size > 32 {
        0
    } else {
        1u64 << (mask_size - pool.prefix_len())
    }
}

/// The address of the node's side of its pod network (the pods' gateway): the first host.
pub fn node_gateway(pod_cidr: &Ipv4Cidr) -> Result<Ipv4Addr, IpamError> {
    Ok(pod_cidr.host(1)?)
}

/// The address of the pod with ordinal `ordinal` (0-based) on a node: hosts from .10 upwards,
/// leaving the low addresses to the node.
pub fn pod_address(pod_cidr: &Ipv4Cidr, ordinal: u32) -> Result<Ipv4Addr, IpamError> {
    let index = ordinal.checked_add(10).ok_or(CidrError::NoSuchHost {
        cidr: *pod_cidr,
        index: ordinal,
    })?;
    Ok(pod_cidr.host(index)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_get_consecutive_non_overlapping_slash24s() {
        let c = ClusterConfig::default();
        let cidrs: Vec<_> = (1..=3)
            .map(|i| node_pod_cidr(&c, i).expect("room"))
            .collect();
        assert_eq!(
            cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["10.42.1.0/24", "10.42.2.0/24", "10.42.3.0/24"]
        );
    }

    #[test]
    fn a_second_pool_is_used_after_the_first_is_full() {
        let mut c = ClusterConfig::default();
        c.ipam.operator.cluster_pool_ipv4_pod_cidr_list = vec![
            "10.0.0.0/23".parse().expect("cidr"),
            "10.9.0.0/24".parse().expect("cidr"),
        ];
        assert_eq!(
            node_pod_cidr(&c, 1).expect("room").to_string(),
            "10.0.1.0/24"
        );
        assert_eq!(
            node_pod_cidr(&c, 2).expect("room").to_string(),
            "10.9.0.0/24"
        );
        assert_eq!(node_pod_cidr(&c, 3), Err(IpamError::PoolExhausted(3)));
    }

    #[test]
    fn empty_pool_is_an_error() {
        let mut c = ClusterConfig::default();
        c.ipam.operator.cluster_pool_ipv4_pod_cidr_list.clear();
        assert_eq!(node_pod_cidr(&c, 0), Err(IpamError::EmptyPool));
    }

    #[test]
    fn pods_and_gateway_addresses() {
        let cidr: Ipv4Cidr = "10.42.2.0/24".parse().expect("cidr");
        assert_eq!(node_gateway(&cidr), Ok(Ipv4Addr::new(10, 42, 2, 1)));
        assert_eq!(pod_address(&cidr, 0), Ok(Ipv4Addr::new(10, 42, 2, 10)));
        assert_eq!(pod_address(&cidr, 1), Ok(Ipv4Addr::new(10, 42, 2, 11)));
        assert!(pod_address(&cidr, 245).is_err());
    }
}
