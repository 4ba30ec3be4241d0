//! What the apiserver does for particular kinds: Service allocation and validation, Pod
//! immutability, binding and graceful deletion, Namespace deletion, admission hooks.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use weft_apiserver::{ApiError, FieldError, Ipv4Cidr, Operation, ServerConfig};

use common::{client, server, server_with};

fn status(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("{other:?}"),
    }
}

fn service(name: &str, spec: Value) -> Service {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

fn pod(name: &str, spec: Value) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

fn small_ranges() -> ServerConfig {
    ServerConfig {
        service_cidr: "10.43.0.0/29".parse::<Ipv4Cidr>().unwrap(),
        node_port_range: 30000..=30004,
        ..ServerConfig::default()
    }
}

#[tokio::test]
async fn services_get_defaults_a_cluster_ip_and_node_ports() {
    let server = server();
    let svcs: Api<Service> = Api::default_namespaced(client(&server));
    let created = svcs
        .create(&PostParams::default(), &service("web", json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}, {"name": "dns", "port": 53, "protocol": "UDP"}]})))
        .await
        .unwrap();
    let spec = created.spec.unwrap();
    let ip: std::net::Ipv4Addr = spec.cluster_ip.clone().unwrap().parse().unwrap();
    assert!(ServerConfig::default().service_cidr.contains(ip), "{ip}");
    assert_eq!(spec.cluster_ips, Some(vec![ip.to_string()]));
    assert_eq!(spec.session_affinity.as_deref(), Some("None"));
    assert_eq!(spec.internal_traffic_policy.as_deref(), Some("Cluster"));
    assert_eq!(spec.ip_families, Some(vec!["IPv4".to_string()]));
    assert_eq!(spec.ip_family_policy.as_deref(), Some("SingleStack"));
    let ports = spec.ports.unwrap();
    assert_eq!(ports[1].protocol.as_deref(), Some("UDP"));
    assert_eq!(
        ports[1].target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(53))
    );
    let node_ports: Vec<i32> = ports.iter().map(|p| p.node_port.unwrap()).collect();
    assert!(
        node_ports.iter().all(|p| (30000..=32767).contains(p)) && node_ports[0] != node_ports[1],
        "{node_ports:?}"
    );
    let health = spec.health_check_node_port.unwrap();
    assert!(!node_ports.contains(&health));

    // a ClusterIP service gets no node port and no external policy
    let plain = svcs
        .create(
            &PostParams::default(),
            &service("plain", json!({"ports": [{"port": 80}]})),
        )
        .await
        .unwrap();
    let plain_spec = plain.spec.unwrap();
    assert_eq!(plain_spec.type_.as_deref(), Some("ClusterIP"));
    assert!(plain_spec.ports.unwrap()[0].node_port.is_none());
    assert!(plain_spec.external_traffic_policy.is_none());
    // headless
    let headless = svcs
        .create(
            &PostParams::default(),
            &service(
                "headless",
                json!({"clusterIP": "None", "ports": [{"port": 80}]}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(headless.spec.unwrap().cluster_ip.as_deref(), Some("None"));
}

#[tokio::test]
async fn explicit_and_duplicate_values_are_checked_and_released_on_delete() {
    let server = server_with(small_ranges());
    let svcs: Api<Service> = Api::default_namespaced(client(&server));
    svcs.create(&PostParams::default(), &service("a", json!({"clusterIP": "10.43.0.3", "type": "NodePort", "ports": [{"port": 80, "nodePort": 30001}]})))
        .await
        .unwrap();
    let cases = [
        (
            json!({"clusterIP": "10.43.0.3", "ports": [{"port": 80}]}),
            "spec.clusterIPs",
            "already allocated",
        ),
        (
            json!({"clusterIP": "10.99.0.3", "ports": [{"port": 80}]}),
            "spec.clusterIPs",
            "not in the valid range",
        ),
        (
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30001}]}),
            "spec.ports[0].nodePort",
            "already allocated",
        ),
        (
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 31000}]}),
            "spec.ports[0].nodePort",
            "valid range",
        ),
        (
            json!({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}),
            "spec.ports[1]",
            "Duplicate value",
        ),
        (
            json!({"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]}),
            "spec.ports[1].name",
            "Duplicate value",
        ),
        (
            json!({"ports": [{"port": 80}, {"port": 81}]}),
            "spec.ports[0].name",
            "Required value",
        ),
        (json!({"ports": []}), "spec.ports", "Required value"),
        (
            json!({"type": "Weird", "ports": [{"port": 80}]}),
            "spec.type",
            "Unsupported value",
        ),
        (
            json!({"ipFamilies": ["IPv6"], "ports": [{"port": 80}]}),
            "spec.ipFamilies[0]",
            "not configured",
        ),
        (
            json!({"externalTrafficPolicy": "Local", "ports": [{"port": 80}]}),
            "spec.externalTrafficPolicy",
            "externally-accessible",
        ),
    ];
    for (spec, field, message) in cases {
        let err = status(
            svcs.create(&PostParams::default(), &service("b", spec.clone()))
                .await
                .unwrap_err(),
        );
        assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"), "{spec}");
        let cause = &err.details.as_ref().unwrap().causes[0];
        assert_eq!(cause.field, field, "{spec}: {}", err.message);
        assert!(cause.message.contains(message), "{spec}: {}", err.message);
    }
    // the range fills (a /29 has 6 addresses, one taken), and a delete releases
    for i in 0..5 {
        svcs.create(
            &PostParams::default(),
            &service(&format!("fill{i}"), json!({"ports": [{"port": 80}]})),
        )
        .await
        .unwrap();
    }
    let full = status(
        svcs.create(
            &PostParams::default(),
            &service("more", json!({"ports": [{"port": 80}]})),
        )
        .await
        .unwrap_err(),
    );
    assert!(full.message.contains("range is full"), "{}", full.message);
    svcs.delete("a", &DeleteParams::default()).await.unwrap();
    let reused = svcs.create(&PostParams::default(), &service("again", json!({"clusterIP": "10.43.0.3", "type": "NodePort", "ports": [{"port": 80, "nodePort": 30001}]}))).await.unwrap();
    assert_eq!(
        reused.spec.unwrap().cluster_ip.as_deref(),
        Some("10.43.0.3")
    );
}

#[tokio::test]
async fn updates_keep_allocations_and_cluster_ip_is_immutable() {
    let server = server();
    let svcs: Api<Service> = Api::default_namespaced(client(&server));
    let created = svcs
        .create(
            &PostParams::default(),
            &service(
                "web",
                json!({"type": "NodePort", "ports": [{"name": "http", "port": 80}]}),
            ),
        )
        .await
        .unwrap();
    let spec = created.spec.clone().unwrap();
    // a manifest without the allocated values (what kubectl apply and PUT of a file send)
    let mut manifest = service(
        "web",
        json!({"type": "NodePort", "ports": [{"name": "http", "port": 80}], "selector": {"app": "web"}}),
    );
    manifest.metadata.resource_version = created.resource_version();
    let updated = svcs
        .replace("web", &PostParams::default(), &manifest)
        .await
        .unwrap();
    let new_spec = updated.spec.unwrap();
    assert_eq!(new_spec.cluster_ip, spec.cluster_ip);
    assert_eq!(
        new_spec.ports.unwrap()[0].node_port,
        spec.ports.unwrap()[0].node_port
    );
    let err = status(
        svcs.patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"clusterIP": "10.43.9.9", "clusterIPs": ["10.43.9.9"]}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    assert!(err.message.contains("immutable"), "{}", err.message);
    // turning it into a ClusterIP service drops its node port
    let plain = svcs
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "ClusterIP", "externalTrafficPolicy": null}})),
        )
        .await
        .unwrap();
    assert!(plain.spec.unwrap().ports.unwrap()[0].node_port.is_none());
    // status (the LB-IPAM controller's job) goes through /status only
    let lb = svcs
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        lb.status.unwrap().load_balancer.unwrap().ingress.unwrap()[0]
            .ip
            .as_deref(),
        Some("203.0.113.10")
    );
}

#[tokio::test]
async fn pod_spec_is_immutable_and_binding_sets_the_node_once() {
    let server = server();
    let pods: Api<Pod> = Api::default_namespaced(client(&server));
    pods.create(
        &PostParams::default(),
        &pod("p", json!({"containers": [{"name": "c", "image": "x:1"}]})),
    )
    .await
    .unwrap();
    let err = status(
        pods.patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"nodeName": "n1"}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    assert!(
        err.message
            .contains("spec: Forbidden: pod updates may not change fields"),
        "{}",
        err.message
    );
    let image = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"containers": [{"name": "c", "image": "x:2"}]}})),
        )
        .await
        .unwrap();
    assert_eq!(
        image.spec.unwrap().containers[0].image.as_deref(),
        Some("x:2")
    );
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node", "name": "n1"}});
    let request = http::Request::post("/api/v1/namespaces/default/pods/p/binding")
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(&binding).unwrap())
        .unwrap();
    let bound: Value = client(&server).request(request).await.unwrap();
    assert_eq!(bound["status"], "Success");
    let p = pods.get("p").await.unwrap();
    assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
    assert!(
        p.status
            .unwrap()
            .conditions
            .unwrap()
            .iter()
            .any(|c| c.type_ == "PodScheduled" && c.status == "True")
    );
    let again = http::Request::post("/api/v1/namespaces/default/pods/p/binding")
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(&binding).unwrap())
        .unwrap();
    let err = client(&server).request::<Value>(again).await.unwrap_err();
    assert_eq!(status(err).code, 409);
}

#[tokio::test]
async fn graceful_pod_delete_keeps_the_pod_until_grace_zero_or_expiry() {
    let server = server();
    let pods: Api<Pod> = Api::default_namespaced(client(&server));
    let on_node = json!({"nodeName": "n1", "containers": [{"name": "c", "image": "x"}]});
    pods.create(&PostParams::default(), &pod("graceful", on_node.clone()))
        .await
        .unwrap();
    let pending = pods
        .delete("graceful", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .expect("kept while terminating");
    assert_eq!(pending.metadata.deletion_grace_period_seconds, Some(30));
    assert!(pending.metadata.deletion_timestamp.is_some());
    // what the kubelet does once the containers stopped
    let uid = pending.uid().unwrap();
    let done = pods
        .delete(
            "graceful",
            &DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(kube::api::Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(done.is_left() || done.is_right());
    assert_eq!(status(pods.get("graceful").await.unwrap_err()).code, 404);

    // an unscheduled pod goes at once
    pods.create(
        &PostParams::default(),
        &pod(
            "unscheduled",
            json!({"containers": [{"name": "c", "image": "x"}]}),
        ),
    )
    .await
    .unwrap();
    pods.delete("unscheduled", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(status(pods.get("unscheduled").await.unwrap_err()).code, 404);

    // a short grace period ends by itself
    pods.create(&PostParams::default(), &pod("short", on_node))
        .await
        .unwrap();
    pods.delete("short", &DeleteParams::default().grace_period(1))
        .await
        .unwrap();
    assert!(
        pods.get("short")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match pods.get("short").await {
            Err(kube::Error::Api(s)) if s.code == 404 => break,
            _ => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the grace period should have ended"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test]
async fn deleting_a_namespace_empties_it_first() {
    let server = server();
    let c = client(&server);
    let namespaces: Api<Namespace> = Api::all(c.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap(),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(c.clone(), "team");
    let maps: Api<ConfigMap> = Api::namespaced(c.clone(), "team");
    pods.create(
        &PostParams::default(),
        &pod(
            "running",
            json!({"nodeName": "n1", "containers": [{"name": "c", "image": "x"}]}),
        ),
    )
    .await
    .unwrap();
    maps.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "cm"}})).unwrap(),
    )
    .await
    .unwrap();
    namespaces
        .delete("team", &DeleteParams::default())
        .await
        .unwrap();
    let ns = namespaces.get("team").await.unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Terminating"));
    assert!(
        maps.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        pods.get("running")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    let err = status(
        maps.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "late"}})).unwrap(),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 403);
    // the kubelet finishes the pod: the namespace goes
    pods.delete("running", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    assert_eq!(status(namespaces.get("team").await.unwrap_err()).code, 404);
}

#[tokio::test]
async fn admission_hooks_can_mutate_and_refuse() {
    let server = server();
    server.add_admission_hook(|request: &mut weft_apiserver::AdmissionRequest<'_>| {
        if request.resource.resource != "services" || request.operation == Operation::Delete {
            return Ok(());
        }
        let Some(object) = request.object.as_deref_mut() else {
            return Ok(());
        };
        if let Some(ips) = object
            .pointer("/spec/externalIPs")
            .and_then(Value::as_array)
        {
            let outside: Vec<&Value> = ips
                .iter()
                .filter(|ip| !ip.as_str().unwrap_or("").starts_with("203.0.113."))
                .collect();
            if let Some(ip) = outside.first() {
                return Err(ApiError::invalid(
                    "Service",
                    "",
                    request.name,
                    vec![FieldError::invalid(
                        "spec.externalIPs[0]",
                        ip,
                        "not in the lab's external range",
                    )],
                ));
            }
        }
        // the hook sees the other stored objects
        let others = request
            .store
            .list("", "services", Some(request.namespace))
            .len();
        object["metadata"]["annotations"] = json!({"weft.io/seen-services": others.to_string()});
        Ok(())
    });
    let svcs: Api<Service> = Api::default_namespaced(client(&server));
    let ok = svcs
        .create(
            &PostParams::default(),
            &service(
                "ok",
                json!({"externalIPs": ["203.0.113.7"], "ports": [{"port": 80}]}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(ok.annotations()["weft.io/seen-services"], "0");
    let err = status(
        svcs.create(
            &PostParams::default(),
            &service(
                "bad",
                json!({"externalIPs": ["8.8.8.8"], "ports": [{"port": 80}]}),
            ),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    assert!(
        err.message.contains("lab's external range"),
        "{}",
        err.message
    );
    let second = svcs
        .create(
            &PostParams::default(),
            &service("second", json!({"ports": [{"port": 80}]})),
        )
        .await
        .unwrap();
    assert_eq!(second.annotations()["weft.io/seen-services"], "1");
}
