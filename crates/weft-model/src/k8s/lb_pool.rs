//! `CiliumLoadBalancerIPPool` (cilium.io/v2alpha1, also v2): the addresses LoadBalancer
//! Services are given, as Cilium's LB-IPAM reads them. A pool is a list of blocks (a CIDR, or a
//! `start`..=`stop` range) and an optional `serviceSelector.matchLabels`; without a selector it
//! serves every Service. Cluster-scoped.

use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::{Deserialize, Serialize};

use super::{ObjectMeta, Service};
use crate::Ipv4Cidr;

pub const LB_POOL_KIND: &str = "CiliumLoadBalancerIPPool";
/// The API versions Cilium has served the pool under.
pub const LB_POOL_API_VERSIONS: &[&str] = &["cilium.io/v2alpha1", "cilium.io/v2"];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancerIpPool {
    pub metadata: ObjectMeta,
    pub spec: LbPoolSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LbPoolSpec {
    #[serde(default)]
    pub blocks: Vec<LbPoolBlock>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<LabelSelector>,
    /// A disabled pool gives no new address (those given stay).
    #[serde(default)]
    pub disabled: bool,
}

/// `{cidr: 192.0.2.0/28}` or `{start: 192.0.2.10, stop: 192.0.2.20}` (inclusive).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, try_from = "RawBlock")]
pub enum LbPoolBlock {
    Cidr { cidr: Ipv4Cidr },
    Range { start: Ipv4Addr, stop: Ipv4Addr },
}

/// A block as written, before it is known to be one of the two forms.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBlock {
    cidr: Option<String>,
    start: Option<String>,
    stop: Option<String>,
}

impl TryFrom<RawBlock> for LbPoolBlock {
    type Error = String;

    fn try_from(raw: RawBlock) -> Result<Self, String> {
        let address = |text: &str| {
            text.parse::<Ipv4Addr>()
                .map_err(|_| format!("block address `{text}` is not an IPv4 address"))
        };
        match (raw.cidr, raw.start, raw.stop) {
            (Some(cidr), None, None) => cidr
                .parse()
                .map(|cidr| LbPoolBlock::Cidr { cidr })
                .map_err(|e| format!("block cidr `{cidr}`: {e}")),
            (None, Some(start), Some(stop)) => {
                let (start, stop) = (address(&start)?, address(&stop)?);
                if start > stop {
                    return Err(format!("block start {start} is after stop {stop}"));
                }
                Ok(LbPoolBlock::Range { start, stop })
            }
            _ => Err("a block is either {cidr} or {start, stop}".to_string()),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

impl LbPoolBlock {
    /// First and last address, inclusive.
    pub fn bounds(&self) -> (Ipv4Addr, Ipv4Addr) {
        match self {
            LbPoolBlock::Cidr { cidr } => {
                let first = u32::from(cidr.network());
                let last = first.saturating_add(u32::try_from(cidr.size() - 1).unwrap_or(u32::MAX));
                (cidr.network(), Ipv4Addr::from(last))
            }
            LbPoolBlock::Range { start, stop } => (*start, *stop),
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let (first, last) = self.bounds();
        (first..=last).contains(&ip)
    }

    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> {
        let (first, last) = self.bounds();
        (u32::from(first)..=u32::from(last)).map(Ipv4Addr::from)
    }
}

impl LoadBalancerIpPool {
    /// Whether the pool gives addresses to `svc`: its selector's labels are all on the Service.
    pub fn selects(&self, svc: &Service) -> bool {
        let Some(selector) = &self.spec.service_selector else {
            return true;
        };
        selector
            .match_labels
            .iter()
            .all(|(k, v)| svc.metadata.labels.get(k) == Some(v))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.spec.blocks.iter().any(|b| b.contains(ip))
    }

    /// Every address of the pool, block by block.
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.spec.blocks.iter().flat_map(LbPoolBlock::addresses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::{Object, parse_manifest};

    const POOL: &str = "apiVersion: cilium.io/v2alpha1\nkind: CiliumLoadBalancerIPPool\n\
        metadata: {name: public}\n\
        spec:\n  blocks:\n  - cidr: 192.0.2.0/30\n  - {start: 192.0.2.10, stop: 192.0.2.11}\n  \
        serviceSelector: {matchLabels: {expose: public}}\n";

    fn pool(text: &str) -> LoadBalancerIpPool {
        match parse_manifest("p.yaml", text).unwrap().pop() {
            Some(Object::LoadBalancerIpPool(p)) => p,
            other => panic!("{other:?}"),
        }
    }

    fn service(labels: &str) -> Service {
        let text =
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s, labels: {labels}}}\n");
        match parse_manifest("s.yaml", &text).unwrap().pop() {
            Some(Object::Service(s)) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_pool_of_cidr_and_range_blocks_lists_its_addresses_in_order() {
        let p = pool(POOL);
        let all: Vec<String> = p.addresses().map(|a| a.to_string()).collect();
        assert_eq!(
            all,
            [
                "192.0.2.0",
                "192.0.2.1",
                "192.0.2.2",
                "192.0.2.3",
                "192.0.2.10",
                "192.0.2.11"
            ]
        );
        assert!(p.contains("192.0.2.11".parse().unwrap()));
        assert!(!p.contains("192.0.2.4".parse().unwrap()));
        assert!(!p.spec.disabled);
        let v2 = POOL.replace("v2alpha1", "v2");
        assert_eq!(pool(&v2), p);
    }

    #[test]
    fn the_selector_picks_services_by_label_and_none_selects_all() {
        let p = pool(POOL);
        assert!(p.selects(&service("{expose: public, app: web}")));
        assert!(!p.selects(&service("{expose: private}")));
        assert!(!p.selects(&service("{}")));
        let open = pool(&POOL.replace("  serviceSelector: {matchLabels: {expose: public}}\n", ""));
        assert!(open.selects(&service("{}")));
    }

    #[test]
    fn bad_blocks_are_refused() {
        for (bad, says) in [
            (
                "{start: 192.0.2.9, stop: 192.0.2.1}",
                "start 192.0.2.9 is after stop",
            ),
            ("{cidr: 192.0.2.1/30}", "block cidr `192.0.2.1/30`"),
            ("{start: 192.0.2.1}", "either {cidr} or {start, stop}"),
            ("{start: 192.0.2.1, stop: x}", "`x` is not an IPv4 address"),
            ("{cidr: 192.0.2.0/30, stop: 192.0.2.9}", "either"),
            ("{cidr: 192.0.2.0/30, size: 4}", "size"),
        ] {
            let text = format!(
                "apiVersion: cilium.io/v2alpha1\nkind: CiliumLoadBalancerIPPool\n\
                 metadata: {{name: p}}\nspec: {{blocks: [{bad}]}}\n"
            );
            let err = parse_manifest("p.yaml", &text).unwrap_err().to_string();
            assert!(
                err.contains("invalid CiliumLoadBalancerIPPool") && err.contains(says),
                "{bad}: {err}"
            );
        }
    }
}
