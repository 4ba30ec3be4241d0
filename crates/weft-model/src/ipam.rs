//! Cluster-pool address plan: which pod CIDR a node owns and which address a pod gets.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use crate::{ClusterConfig, Ipv4Cidr, cidr::CidrError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("ipam.operator.clusterPoolIPv4PodCIDRList is empty")]
    EmptyPool,
    #[error("the cluster pool has no room for node number {0}")]
    PoolExhausted(u32),
    #[error("every /{mask_size} of the cluster pool is taken by another node")]
    NoFreeNodeCidr { mask_size: u8 },
    #[error("no free pod address left in {0}")]
    PodCidrExhausted(Ipv4Cidr),
    #[error(transparent)]
    Cidr(#[from] CidrError),
}

/// Every node-sized subnet of the cluster pools, in order (pools in list order, subnets by
/// address).
pub fn node_cidrs(config: &ClusterConfig) -> impl Iterator<Item = Ipv4Cidr> + '_ {
    let mask_size = config.ipam.operator.cluster_pool_ipv4_mask_size;
    config
        .ipam
        .operator
        .cluster_pool_ipv4_pod_cidr_list
        .iter()
        .flat_map(move |pool| {
            let count = subnet_count(pool, mask_size).min(u64::from(u32::MAX));
            (0..count).filter_map(move |i| {
                let index = u32::try_from(i).ok()?;
                pool.subnet(mask_size, index).ok()
            })
        })
}

/// The pod CIDR node `node` should claim: its own from before (a `WeftNode` that names it),
/// so that the CIDR is stable across restarts, else the first subnet of the pools that no
/// other node holds (`taken`: the CIDRs of every `WeftNode` and every claim). Claiming it
/// conflict-free among agents that run at the same time is the caller's part (an exclusive
/// create per CIDR), after which a refused candidate is added to `taken` and this is asked
/// again.
pub fn node_cidr_candidate(
    config: &ClusterConfig,
    node: &str,
    pod_cidr_of_node: &BTreeMap<String, Ipv4Cidr>,
    taken: &BTreeSet<Ipv4Cidr>,
) -> Result<Ipv4Cidr, IpamError> {
    if let Some(cidr) = pod_cidr_of_node.get(node) {
        return Ok(*cidr);
    }
    if config
        .ipam
        .operator
        .cluster_pool_ipv4_pod_cidr_list
        .is_empty()
    {
        return Err(IpamError::EmptyPool);
    }
    let held: BTreeSet<Ipv4Cidr> = pod_cidr_of_node.values().copied().collect();
    node_cidrs(config)
        .find(|c| !taken.contains(c) && !held.contains(c))
        .ok_or(IpamError::NoFreeNodeCidr {
            mask_size: config.ipam.operator.cluster_pool_ipv4_mask_size,
        })
}

/// Host number of the first pod address in a node CIDR (`.10`: the low addresses are the
/// node's; `.1` is the gateway).
pub const FIRST_POD_HOST: u32 = 10;

/// The pod addresses of one node: which attachment holds which address. Pure: no I/O, the
/// caller persists [`PodIpam::allocations`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIpam<K: Ord + Clone> {
    cidr: Ipv4Cidr,
    by_owner: BTreeMap<K, Ipv4Addr>,
}

impl<K: Ord + Clone> PodIpam<K> {
    pub fn new(cidr: Ipv4Cidr) -> PodIpam<K> {
        PodIpam {
            cidr,
            by_owner: BTreeMap::new(),
        }
    }

    /// Restores allocations; those outside the CIDR or on an address already restored are
    /// returned, not kept.
    pub fn restore(
        cidr: Ipv4Cidr,
        allocations: impl IntoIterator<Item = (K, Ipv4Addr)>,
    ) -> (PodIpam<K>, Vec<(K, Ipv4Addr)>) {
        let mut ipam = PodIpam::new(cidr);
        let mut refused = Vec::new();
        for (owner, addr) in allocations {
            if ipam.is_usable(addr) && !ipam.in_use().contains(&addr) {
                ipam.by_owner.insert(owner, addr);
            } else {
                refused.push((owner, addr));
            }
        }
        (ipam, refused)
    }

    pub fn cidr(&self) -> Ipv4Cidr {
        self.cidr
    }

    pub fn gateway(&self) -> Result<Ipv4Addr, IpamError> {
        node_gateway(&self.cidr)
    }

    pub fn get(&self, owner: &K) -> Option<Ipv4Addr> {
        self.by_owner.get(owner).copied()
    }

    /// The owner's address: the one it holds, else the lowest free one.
    pub fn allocate(&mut self, owner: &K) -> Result<Ipv4Addr, IpamError> {
        if let Some(addr) = self.get(owner) {
            return Ok(addr);
        }
        let used = self.in_use();
        let addr = (FIRST_POD_HOST..)
            .map_while(|i| self.cidr.host(i).ok())
            .find(|a| !used.contains(a) && !self.is_broadcast(*a))
            .ok_or(IpamError::PodCidrExhausted(self.cidr))?;
        self.by_owner.insert(owner.clone(), addr);
        Ok(addr)
    }

    /// Frees the owner's address; `None` when it held none.
    pub fn release(&mut self, owner: &K) -> Option<Ipv4Addr> {
        self.by_owner.remove(owner)
    }

    pub fn allocations(&self) -> &BTreeMap<K, Ipv4Addr> {
        &self.by_owner
    }

    fn in_use(&self) -> BTreeSet<Ipv4Addr> {
        self.by_owner.values().copied().collect()
    }

    fn is_usable(&self, addr: Ipv4Addr) -> bool {
        let host = u32::from(addr).wrapping_sub(u32::from(self.cidr.network()));
        self.cidr.contains(addr) && host >= FIRST_POD_HOST && !self.is_broadcast(addr)
    }

    fn is_broadcast(&self, addr: Ipv4Addr) -> bool {
        self.cidr.prefix_len() < 31
            && u64::from(u32::from(addr).wrapping_sub(u32::from(self.cidr.network())))
                == self.cidr.size() - 1
    }
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

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().expect("cidr")
    }

    #[test]
    fn a_node_keeps_its_cidr_and_a_new_one_gets_the_first_free() {
        let c = ClusterConfig::default();
        let mut owners = BTreeMap::new();
        owners.insert("vps1".to_string(), cidr("10.42.0.0/24"));
        owners.insert("vps3".to_string(), cidr("10.42.2.0/24"));
        let none = BTreeSet::new();
        assert_eq!(
            node_cidr_candidate(&c, "vps3", &owners, &none),
            Ok(cidr("10.42.2.0/24"))
        );
        assert_eq!(
            node_cidr_candidate(&c, "vps2", &owners, &none),
            Ok(cidr("10.42.1.0/24"))
        );
        let claimed_meanwhile = BTreeSet::from([cidr("10.42.1.0/24")]);
        assert_eq!(
            node_cidr_candidate(&c, "vps2", &owners, &claimed_meanwhile),
            Ok(cidr("10.42.3.0/24"))
        );
    }

    #[test]
    fn node_cidrs_run_out_with_an_error() {
        let mut c = ClusterConfig::default();
        c.ipam.operator.cluster_pool_ipv4_pod_cidr_list = vec![cidr("10.0.0.0/23")];
        assert_eq!(node_cidrs(&c).count(), 2);
        let taken = BTreeSet::from([cidr("10.0.0.0/24"), cidr("10.0.1.0/24")]);
        assert_eq!(
            node_cidr_candidate(&c, "n", &BTreeMap::new(), &taken),
            Err(IpamError::NoFreeNodeCidr { mask_size: 24 })
        );
        c.ipam.operator.cluster_pool_ipv4_pod_cidr_list.clear();
        assert_eq!(
            node_cidr_candidate(&c, "n", &BTreeMap::new(), &BTreeSet::new()),
            Err(IpamError::EmptyPool)
        );
    }

    #[test]
    fn pod_addresses_are_stable_reused_after_release_and_run_out() {
        let mut ipam = PodIpam::new(cidr("10.42.1.0/28"));
        assert_eq!(ipam.gateway(), Ok(Ipv4Addr::new(10, 42, 1, 1)));
        let a = ipam.allocate(&"a").unwrap();
        let b = ipam.allocate(&"b").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 42, 1, 10));
        assert_eq!(b, Ipv4Addr::new(10, 42, 1, 11));
        assert_eq!(ipam.allocate(&"a").unwrap(), a, "asking again");
        assert_eq!(ipam.release(&"a"), Some(a));
        assert_eq!(ipam.release(&"a"), None);
        assert_eq!(ipam.allocate(&"c").unwrap(), a, "a freed address is reused");
        // .12 .. .14 are left; .15 is the broadcast address.
        for owner in ["d", "e", "f"] {
            ipam.allocate(&owner).unwrap();
        }
        assert_eq!(
            ipam.allocate(&"g"),
            Err(IpamError::PodCidrExhausted(cidr("10.42.1.0/28")))
        );
    }

    #[test]
    fn restoring_keeps_valid_allocations_and_returns_the_rest() {
        let (ipam, refused) = PodIpam::restore(
            cidr("10.42.1.0/24"),
            [
                ("a", Ipv4Addr::new(10, 42, 1, 20)),
                ("b", Ipv4Addr::new(10, 42, 2, 20)),
                ("c", Ipv4Addr::new(10, 42, 1, 20)),
                ("d", Ipv4Addr::new(10, 42, 1, 1)),
            ],
        );
        assert_eq!(ipam.get(&"a"), Some(Ipv4Addr::new(10, 42, 1, 20)));
        assert_eq!(
            refused.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            ["b", "c", "d"]
        );
        let mut ipam = ipam;
        assert_eq!(ipam.allocate(&"e"), Ok(Ipv4Addr::new(10, 42, 1, 10)));
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
