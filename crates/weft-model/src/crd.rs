//! Weft's custom resources, and the Cilium resource Weft reads as Cilium defines it, as
//! `kube::CustomResource` types: the only place their shape is written down. The
//! CustomResourceDefinitions under `deploy/crds/` are generated from these types
//! ([`definitions`]); a test checks the committed files equal what the types generate.
//!
//! - `WeftNode` (cluster-scoped, `weft.io/v1alpha1`): a node as Weft knows it, written by that
//!   node's agent: the pod CIDR it claimed and its underlay address (the tunnel endpoint).
//! - `WeftEndpoint` (namespaced, `weft.io/v1alpha1`): one pod interface, written by the agent
//!   of the pod's node: address, identity, interface. Other nodes build their ipcache from it.
//! - `CiliumLoadBalancerIPPool` (cluster-scoped, `cilium.io/v2alpha1` and `v2`): LB-IPAM's
//!   address pools, the fields Weft implements (blocks, serviceSelector.matchLabels, disabled).

// kube's `printcolumn(name = .., type_ = ..)` form repeats keys clippy takes for duplicated
// attributes.
#![allow(clippy::duplicated_attributes)]

use std::net::Ipv4Addr;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube_core::CustomResourceExt as _;
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Ipv4Cidr;

/// API group of Weft's resources.
pub const WEFT_GROUP: &str = "weft.io";

/// A node's claim on the cluster: its pod CIDR (unique among WeftNodes) and the address other
/// nodes send its tunnel traffic to. The object's name is the node's name.
#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "weft.io",
    version = "v1alpha1",
    kind = "WeftNode",
    shortname = "wnode",
    category = "weft",
    derive = "PartialEq",
    printcolumn(name = "PodCIDR", type_ = "string", json_path = ".spec.podCIDR"),
    printcolumn(name = "UnderlayIP", type_ = "string", json_path = ".spec.underlayIP"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(deny_unknown_fields)]
pub struct WeftNodeSpec {
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Ipv4Cidr,
    #[serde(rename = "underlayIP")]
    pub underlay_ip: Ipv4Addr,
}

/// One registered pod interface. The object's namespace is the pod's.
#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "weft.io",
    version = "v1alpha1",
    kind = "WeftEndpoint",
    namespaced,
    shortname = "wep",
    category = "weft",
    derive = "PartialEq",
    printcolumn(name = "Pod", type_ = "string", json_path = ".spec.podName"),
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"),
    printcolumn(name = "IPv4", type_ = "string", json_path = ".spec.ipv4"),
    printcolumn(name = "Identity", type_ = "integer", json_path = ".spec.identity")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeftEndpointSpec {
    pub node: String,
    pub pod_name: String,
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub interface: String,
    pub ipv4: Ipv4Addr,
    pub identity: u32,
}

/// Cilium's LB-IPAM pool as Weft reads it (the same object a Cilium cluster holds).
#[derive(
    CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "cilium.io",
    version = "v2",
    kind = "CiliumLoadBalancerIPPool",
    plural = "ciliumloadbalancerippools",
    shortname = "ippools",
    shortname = "ippool",
    shortname = "lbippool",
    shortname = "lbippools",
    category = "cilium",
    derive = "PartialEq",
    derive = "Default",
    printcolumn(name = "Disabled", type_ = "boolean", json_path = ".spec.disabled"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct CiliumLoadBalancerIPPoolSpec {
    #[serde(default)]
    pub blocks: Vec<PoolBlock>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<PoolServiceSelector>,
    #[serde(default)]
    pub disabled: bool,
}

/// `{cidr}` or `{start, stop}`, as Cilium writes a block (checked when converted to the model).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolBlock {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<String>,
}

/// The part of a label selector Weft implements: `matchLabels`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolServiceSelector {
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub match_labels: std::collections::BTreeMap<String, String>,
}

/// Cilium served the pool as `v2alpha1` before `v2`; both name the same objects.
const POOL_OLDER_VERSION: &str = "v2alpha1";

/// Every CustomResourceDefinition Weft needs, as (file name under `deploy/crds/`, definition).
pub fn definitions() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("weftnodes.weft.io.yaml", WeftNode::crd()),
        ("weftendpoints.weft.io.yaml", WeftEndpoint::crd()),
        (
            "ciliumloadbalancerippools.cilium.io.yaml",
            pool_definition_with_both_versions(),
        ),
    ]
}

/// The pool's definition served as `v2` (stored) and as `v2alpha1`, with the same schema.
fn pool_definition_with_both_versions() -> CustomResourceDefinition {
    let mut crd = CiliumLoadBalancerIPPool::crd();
    if let Some(stored) = crd.spec.versions.first().cloned() {
        let mut older = stored;
        older.name = POOL_OLDER_VERSION.to_string();
        older.storage = false;
        crd.spec.versions.push(older);
    }
    crd
}

/// One definition as the YAML committed under `deploy/crds/`.
pub fn definition_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_norway::Error> {
    let body = serde_norway::to_string(crd)?;
    Ok(format!(
        "# Generated from crates/weft-model/src/crd.rs; do not edit (regenerate: \
         WEFT_WRITE_CRDS=1 cargo test -p weft-model --test crds).\n{body}"
    ))
}

impl JsonSchema for Ipv4Cidr {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Ipv4Cidr".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": "cidr",
            "description": "An IPv4 prefix, such as 10.42.0.0/24."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_scopes_are_the_ones_clients_use() {
        let names: Vec<String> = definitions()
            .iter()
            .map(|(_, crd)| crd.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            names,
            [
                "weftnodes.weft.io",
                "weftendpoints.weft.io",
                "ciliumloadbalancerippools.cilium.io"
            ]
        );
        assert_eq!(WeftNode::crd().spec.scope, "Cluster");
        assert_eq!(WeftEndpoint::crd().spec.scope, "Namespaced");
        let pool = pool_definition_with_both_versions();
        let versions: Vec<(&str, bool)> = pool
            .spec
            .versions
            .iter()
            .map(|v| (v.name.as_str(), v.storage))
            .collect();
        assert_eq!(versions, [("v2", true), ("v2alpha1", false)]);
    }

    #[test]
    fn a_weft_node_reads_and_writes_its_wire_names() {
        let json = serde_json::json!({
            "apiVersion": "weft.io/v1alpha1", "kind": "WeftNode",
            "metadata": {"name": "vps1"},
            "spec": {"podCIDR": "10.42.0.0/24", "underlayIP": "198.51.100.1"}
        });
        let node: WeftNode = serde_json::from_value(json.clone()).expect("parses");
        assert_eq!(node.spec.pod_cidr.to_string(), "10.42.0.0/24");
        assert_eq!(serde_json::to_value(&node).expect("writes"), json);
        let bad = serde_json::json!({
            "apiVersion": "weft.io/v1alpha1", "kind": "WeftNode", "metadata": {"name": "x"},
            "spec": {"podCIDR": "10.42.0.0/33", "underlayIP": "198.51.100.1"}
        });
        assert!(serde_json::from_value::<WeftNode>(bad).is_err());
    }
}
