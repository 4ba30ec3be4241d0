//! CustomResourceDefinitions: registering serves the resource, objects are validated against
//! the schema and pruned, the status subresource works, deleting the CRD removes it all.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use futures_util::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, ResourceExt,
    api::{
        ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
        PostParams, WatchEvent, WatchParams,
    },
};
use serde_json::{Value, json};

use common::{client, server};

/// Weft's node CRD as the lab will install it (group weft.io).
fn weft_node_crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "weftnodes.weft.io"},
        "spec": {
            "group": "weft.io",
            "scope": "Cluster",
            "names": {"plural": "weftnodes", "singular": "weftnode", "kind": "WeftNode", "shortNames": ["wn"]},
            "versions": [{
                "name": "v1alpha1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [{"name": "Pod CIDR", "type": "string", "jsonPath": ".spec.podCIDR"}],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "required": ["podCIDR", "underlayIP"],
                            "properties": {
                                "podCIDR": {"type": "string", "format": "cidr"},
                                "underlayIP": {"type": "string", "format": "ipv4"},
                                "wireguardPublicKey": {"type": "string"}
                            }
                        },
                        "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
                    }
                }}
            }]
        }
    }))
    .unwrap()
}

fn weft_endpoint_crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "weftendpoints.weft.io"},
        "spec": {
            "group": "weft.io",
            "scope": "Namespaced",
            "names": {"plural": "weftendpoints", "kind": "WeftEndpoint"},
            "versions": [{
                "name": "v1alpha1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "properties": {
                                "address": {"type": "string", "format": "ipv4"},
                                "node": {"type": "string"},
                                "identity": {"type": "integer", "minimum": 1},
                                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                            }
                        }
                    }
                }}
            }]
        }
    }))
    .unwrap()
}

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("weft.io", "v1alpha1", kind), plural)
}

fn object(kind: &str, name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({"apiVersion": "weft.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec})).unwrap()
}

fn status(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn crd_registration_serves_validates_and_prunes_custom_objects() {
    let server = server();
    let c = client(&server);
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    let nodes: Api<DynamicObject> = Api::all_with(c.clone(), &resource("WeftNode", "weftnodes"));
    // not served before the CRD exists
    assert_eq!(
        status(nodes.list(&ListParams::default()).await.unwrap_err()).code,
        404
    );
    let created = crds
        .create(&PostParams::default(), &weft_node_crd())
        .await
        .unwrap();
    let conditions = created.status.unwrap().conditions.unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );
    crds.create(&PostParams::default(), &weft_endpoint_crd())
        .await
        .unwrap();

    // discovery shows it
    let discovery = kube::Discovery::new(c.clone()).run().await.unwrap();
    let (ar, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("weft.io", "v1alpha1", "WeftNode"))
        .unwrap();
    assert_eq!(ar.plural, "weftnodes");
    assert_eq!(caps.scope, kube::discovery::Scope::Cluster);
    assert!(caps.subresources.iter().any(|(s, _)| s.plural == "status"));

    let node = object(
        "WeftNode",
        "vps2",
        json!({"podCIDR": "10.0.2.0/24", "underlayIP": "198.51.100.2", "unknown": "dropped"}),
    );
    let stored = nodes.create(&PostParams::default(), &node).await.unwrap();
    assert_eq!(
        stored.data["spec"],
        json!({"podCIDR": "10.0.2.0/24", "underlayIP": "198.51.100.2"})
    );
    assert_eq!(stored.metadata.generation, Some(1));

    let bad = object(
        "WeftNode",
        "bad",
        json!({"podCIDR": 5, "underlayIP": "300.0.0.1"}),
    );
    let err = status(
        nodes
            .create(&PostParams::default(), &bad)
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert!(
        err.message.contains("spec.podCIDR") && err.message.contains("spec.underlayIP"),
        "{}",
        err.message
    );
    let missing = object("WeftNode", "missing", json!({"podCIDR": "10.0.3.0/24"}));
    let err = status(
        nodes
            .create(&PostParams::default(), &missing)
            .await
            .unwrap_err(),
    );
    assert!(
        err.message.contains("spec.underlayIP: Required value"),
        "{}",
        err.message
    );

    // status subresource: status only through /status, and spec changes bump generation
    let with_status = nodes
        .patch_status(
            "vps2",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"podCIDR": "10.9.9.0/24"}, "status": {"ready": true, "bogus": 1}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(with_status.data["status"], json!({"ready": true}));
    assert_eq!(with_status.data["spec"]["podCIDR"], "10.0.2.0/24");
    assert_eq!(with_status.metadata.generation, Some(1));
    let changed = nodes
        .patch(
            "vps2",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"wireguardPublicKey": "k"}, "status": {"ready": false}})),
        )
        .await
        .unwrap();
    assert_eq!(
        changed.data["status"]["ready"], true,
        "main writes leave status alone"
    );
    assert_eq!(changed.metadata.generation, Some(2));

    // namespaced custom objects, with preserved unknown fields and typed maps
    let endpoints: Api<DynamicObject> = Api::namespaced_with(
        c.clone(),
        "default",
        &resource("WeftEndpoint", "weftendpoints"),
    );
    let ep = object(
        "WeftEndpoint",
        "web-1",
        json!({"address": "10.0.2.5", "node": "vps2", "identity": 4096, "labels": {"app": "web"}, "extra": {"free": [1, {"form": true}]}}),
    );
    let stored = endpoints.create(&PostParams::default(), &ep).await.unwrap();
    assert_eq!(
        stored.data["spec"]["extra"],
        json!({"free": [1, {"form": true}]})
    );
    let bad = object(
        "WeftEndpoint",
        "web-2",
        json!({"identity": 0, "labels": {"app": 1}}),
    );
    let err = status(
        endpoints
            .create(&PostParams::default(), &bad)
            .await
            .unwrap_err(),
    );
    assert!(
        err.message.contains("spec.identity") && err.message.contains("spec.labels.app"),
        "{}",
        err.message
    );
    // strategic merge is not for custom resources, as in Kubernetes
    let smp = endpoints
        .patch(
            "web-1",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"node": "x"}})),
        )
        .await
        .unwrap_err();
    assert_eq!(status(smp).code, 415);
    // server-side apply works
    let applied = endpoints
        .patch("web-1", &PatchParams::apply("weft-agent"), &Patch::Apply(json!({"apiVersion": "weft.io/v1alpha1", "kind": "WeftEndpoint", "metadata": {"name": "web-1"}, "spec": {"node": "vps3"}})))
        .await
        .unwrap();
    assert_eq!(applied.data["spec"]["node"], "vps3");
    assert_eq!(applied.data["spec"]["address"], "10.0.2.5");
}

#[tokio::test]
async fn deleting_a_crd_removes_its_objects_and_ends_its_watches() {
    let server = server();
    let c = client(&server);
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    crds.create(&PostParams::default(), &weft_node_crd())
        .await
        .unwrap();
    let nodes: Api<DynamicObject> = Api::all_with(c.clone(), &resource("WeftNode", "weftnodes"));
    nodes
        .create(
            &PostParams::default(),
            &object(
                "WeftNode",
                "a",
                json!({"podCIDR": "10.0.1.0/24", "underlayIP": "198.51.100.1"}),
            ),
        )
        .await
        .unwrap();
    let rv = nodes
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut watch = nodes
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    crds.delete("weftnodes.weft.io", &DeleteParams::default())
        .await
        .unwrap();
    match watch.next().await {
        Some(Ok(WatchEvent::Deleted(o))) => assert_eq!(o.name_any(), "a"),
        other => panic!("{other:?}"),
    }
    assert!(
        watch.next().await.is_none(),
        "the watch ends with the resource"
    );
    assert_eq!(
        status(nodes.list(&ListParams::default()).await.unwrap_err()).code,
        404
    );
    // registering again starts empty
    crds.create(&PostParams::default(), &weft_node_crd())
        .await
        .unwrap();
    assert!(
        nodes
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn invalid_crds_are_refused() {
    let server = server();
    let crds: Api<CustomResourceDefinition> = Api::all(client(&server));
    let mut wrong_name = weft_node_crd();
    wrong_name.metadata.name = Some("nodes.weft.io".to_string());
    let err = status(
        crds.create(&PostParams::default(), &wrong_name)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    assert!(err.message.contains("metadata.name"), "{}", err.message);
    let mut builtin = weft_node_crd();
    builtin.spec.group = "apps".to_string();
    let err = status(
        crds.create(&PostParams::default(), &builtin)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422);
}
