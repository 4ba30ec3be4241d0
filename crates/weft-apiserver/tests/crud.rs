//! Create, read, update, patch and delete through kube-rs, in process: every built-in
//! resource, the status subresource, conflicts, selectors, paging, Tables.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use std::fmt::Debug;

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    coordination::v1::Lease,
    core::v1::{
        ConfigMap, Endpoints, Event, Namespace, Node, Pod, Secret, Service, ServiceAccount,
    },
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    scheduling::v1::PriorityClass,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

use common::{client, server};

fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(status) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Create, get, list, replace (labels), merge patch (annotations), delete, then 404.
async fn round_trip<K>(api: Api<K>, manifest: Value)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
{
    let kind = K::kind(&()).to_string();
    let object: K = serde_json::from_value(manifest).unwrap();
    let name = object.name_any();
    let created = api
        .create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("{kind}: {e}"));
    let uid = created.uid().unwrap();
    assert!(!uid.is_empty());
    assert!(created.meta().creation_timestamp.is_some(), "{kind}");
    let rv: u64 = created.resource_version().unwrap().parse().unwrap();

    let dup = api
        .create(&PostParams::default(), &object)
        .await
        .unwrap_err();
    let status = api_error(dup);
    assert_eq!(
        (status.code, status.reason.as_str()),
        (409, "AlreadyExists"),
        "{kind}"
    );

    let got = api.get(&name).await.unwrap();
    assert_eq!(got.uid().as_deref(), Some(uid.as_str()));
    let listed = api.list(&ListParams::default()).await.unwrap();
    assert!(
        listed.items.iter().any(|o| o.name_any() == name),
        "{kind} listed"
    );

    let mut changed = got.clone();
    changed
        .labels_mut()
        .insert("round".to_string(), "trip".to_string());
    let replaced = api
        .replace(&name, &PostParams::default(), &changed)
        .await
        .unwrap_or_else(|e| panic!("{kind} replace: {e}"));
    let replaced_rv: u64 = replaced.resource_version().unwrap().parse().unwrap();
    assert!(replaced_rv > rv, "{kind}: {replaced_rv} > {rv}");
    assert_eq!(
        replaced.labels().get("round").map(String::as_str),
        Some("trip")
    );

    // A replace based on the old version conflicts.
    let stale = api
        .replace(&name, &PostParams::default(), &got)
        .await
        .unwrap_err();
    assert_eq!(api_error(stale).code, 409, "{kind}");

    let patched = api
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"a": "b"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        patched.annotations().get("a").map(String::as_str),
        Some("b")
    );
    assert_eq!(
        patched.labels().get("round").map(String::as_str),
        Some("trip")
    );
    assert_eq!(patched.uid(), created.uid());

    api.delete(&name, &DeleteParams::default()).await.unwrap();
    let gone = api.get(&name).await.unwrap_err();
    let status = api_error(gone);
    assert_eq!(
        (status.code, status.reason.as_str()),
        (404, "NotFound"),
        "{kind}"
    );
}

#[tokio::test]
async fn every_builtin_resource_round_trips() {
    let server = server();
    let c = client(&server);
    round_trip(
        Api::<Namespace>::all(c.clone()),
        json!({"metadata": {"name": "team"}}),
    )
    .await;
    round_trip(
        Api::<Node>::all(c.clone()),
        json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.0.1.0/24"}}),
    )
    .await;
    round_trip(
        Api::<Pod>::default_namespaced(c.clone()),
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
    )
    .await;
    round_trip(
        Api::<Service>::default_namespaced(c.clone()),
        json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}}),
    )
    .await;
    round_trip(
        Api::<ConfigMap>::default_namespaced(c.clone()),
        json!({"metadata": {"name": "cm"}, "data": {"k": "v"}}),
    )
    .await;
    round_trip(
        Api::<Endpoints>::default_namespaced(c.clone()),
        json!({"metadata": {"name": "ep"}, "subsets": [{"addresses": [{"ip": "10.0.1.5"}], "ports": [{"port": 80}]}]}),
    )
    .await;
    round_trip(
        Api::<Secret>::default_namespaced(c.clone()),
        json!({"metadata": {"name": "sec"}, "stringData": {"k": "v"}}),
    )
    .await;
    round_trip(
        Api::<ServiceAccount>::default_namespaced(c.clone()),
        json!({"metadata": {"name": "sa"}}),
    )
    .await;
    round_trip(
        Api::<Event>::default_namespaced(c.clone()),
        json!({"metadata": {"name": "ev"}, "involvedObject": {"kind": "Pod", "name": "p"}, "reason": "Test"}),
    )
    .await;
    round_trip(
        Api::<EndpointSlice>::default_namespaced(c.clone()),
        json!({"metadata": {"name": "s-1", "labels": {"kubernetes.io/service-name": "s"}}, "addressType": "IPv4",
               "endpoints": [{"addresses": ["10.0.1.5"]}], "ports": [{"port": 80}]}),
    )
    .await;
    round_trip(
        Api::<NetworkPolicy>::default_namespaced(c.clone()),
        json!({"metadata": {"name": "np"}, "spec": {"podSelector": {}}}),
    )
    .await;
    round_trip(
        Api::<DaemonSet>::default_namespaced(c.clone()),
        json!({"metadata": {"name": "ds"}, "spec": {"selector": {"matchLabels": {"a": "b"}},
               "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}}),
    )
    .await;
    round_trip(
        Api::<ClusterRole>::all(c.clone()),
        json!({"metadata": {"name": "system:weft"}, "rules": []}),
    )
    .await;
    round_trip(
        Api::<ClusterRoleBinding>::all(c.clone()),
        json!({"metadata": {"name": "weft"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "x"}}),
    )
    .await;
    round_trip(
        Api::<Role>::default_namespaced(c.clone()),
        json!({"metadata": {"name": "r"}, "rules": []}),
    )
    .await;
    round_trip(
        Api::<RoleBinding>::default_namespaced(c.clone()),
        json!({"metadata": {"name": "rb"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"}}),
    )
    .await;
    round_trip(
        Api::<PriorityClass>::all(c.clone()),
        json!({"metadata": {"name": "high"}, "value": 1000}),
    )
    .await;
    round_trip(
        Api::<Lease>::default_namespaced(c.clone()),
        json!({"metadata": {"name": "lease"}, "spec": {"holderIdentity": "me"}}),
    )
    .await;
}

#[tokio::test]
async fn system_namespaces_exist_and_creating_into_a_missing_namespace_is_404() {
    let server = server();
    let c = client(&server);
    let names: Vec<String> = Api::<Namespace>::all(c.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .iter()
        .map(|n| n.name_any())
        .collect();
    assert_eq!(
        names,
        ["default", "kube-node-lease", "kube-public", "kube-system"]
    );
    let default = Api::<Namespace>::all(c.clone())
        .get("default")
        .await
        .unwrap();
    assert_eq!(default.status.unwrap().phase.as_deref(), Some("Active"));
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
    let err = Api::<ConfigMap>::namespaced(c.clone(), "nowhere")
        .create(&PostParams::default(), &cm)
        .await
        .unwrap_err();
    let status = api_error(err);
    assert_eq!(
        (status.code, status.message.as_str()),
        (404, "namespaces \"nowhere\" not found")
    );
    let err = Api::<Namespace>::all(c.clone())
        .delete("kube-system", &DeleteParams::default())
        .await
        .unwrap_err();
    assert_eq!(api_error(err).code, 403);
}

#[tokio::test]
async fn malformed_objects_get_a_status_with_the_right_code() {
    let server = server();
    let c = client(&server);
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        c.clone(),
        "default",
        &kube::api::ApiResource::erase::<Pod>(&()),
    );
    // containers must be a list: a type error is 400
    let bad_type: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": "oops"}
    }))
    .unwrap();
    let status = api_error(
        raw.create(&PostParams::default(), &bad_type)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (status.code, status.reason.as_str()),
        (400, "BadRequest"),
        "{}",
        status.message
    );
    // a container without a name is 422 Invalid
    let missing: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"image": "x"}]}
    }))
    .unwrap();
    let status = api_error(
        raw.create(&PostParams::default(), &missing)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (status.code, status.reason.as_str()),
        (422, "Invalid"),
        "{}",
        status.message
    );
    // a bad name is 422 too
    let bad_name: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "Not_Valid"}, "spec": {"containers": [{"name": "c"}]}
    }))
    .unwrap();
    let status = api_error(
        raw.create(&PostParams::default(), &bad_name)
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code, 422, "{}", status.message);
    // unknown fields are dropped, as the apiserver decodes
    let extra: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ok"},
        "spec": {"containers": [{"name": "c", "image": "x", "bogus": 1}], "alsoBogus": true}
    }))
    .unwrap();
    let created = raw.create(&PostParams::default(), &extra).await.unwrap();
    let spec = created.data["spec"].clone();
    assert!(
        spec.get("alsoBogus").is_none() && spec["containers"][0].get("bogus").is_none(),
        "{spec}"
    );
}

#[tokio::test]
async fn generate_name_and_server_set_metadata() {
    let server = server();
    let pods: Api<Pod> = Api::default_namespaced(client(&server));
    let pod: Pod = serde_json::from_value(json!({"metadata": {"generateName": "web-"}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}})).unwrap();
    let a = pods.create(&PostParams::default(), &pod).await.unwrap();
    let b = pods.create(&PostParams::default(), &pod).await.unwrap();
    assert!(
        a.name_any().starts_with("web-") && a.name_any().len() == 9,
        "{}",
        a.name_any()
    );
    assert_ne!(a.name_any(), b.name_any());
    assert_eq!(a.metadata.generation, Some(1));
    assert_eq!(a.namespace().as_deref(), Some("default"));
    let spec = a.spec.clone().unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        spec.containers[0].image_pull_policy.as_deref(),
        Some("IfNotPresent")
    );
    assert_eq!(a.status.clone().unwrap().phase.as_deref(), Some("Pending"));
    // an image change bumps generation; a label change does not
    let mut image = a.clone();
    image.spec.as_mut().unwrap().containers[0].image = Some("x:2".to_string());
    let image = pods
        .replace(&a.name_any(), &PostParams::default(), &image)
        .await
        .unwrap();
    assert_eq!(image.metadata.generation, Some(2));
    let labelled = pods
        .patch(
            &a.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(labelled.metadata.generation, Some(2));
    // a write that changes nothing keeps the resourceVersion
    let same = pods
        .replace(&a.name_any(), &PostParams::default(), &labelled)
        .await
        .unwrap();
    assert_eq!(same.resource_version(), labelled.resource_version());
}

#[tokio::test]
async fn status_subresource_changes_only_status_and_main_writes_keep_status() {
    let server = server();
    let pods: Api<Pod> = Api::default_namespaced(client(&server));
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x:1"}]}})).unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let status_patch = json!({"metadata": {"labels": {"ignored": "yes"}}, "status": {"phase": "Running", "podIP": "10.0.1.7"}});
    let after = pods
        .patch_status("p", &PatchParams::default(), &Patch::Merge(status_patch))
        .await
        .unwrap();
    assert_eq!(
        after.status.as_ref().unwrap().pod_ip.as_deref(),
        Some("10.0.1.7")
    );
    assert!(
        after.labels().get("ignored").is_none(),
        "a status write changes only status"
    );
    let mut main = after.clone();
    main.status.as_mut().unwrap().phase = Some("Failed".to_string());
    main.labels_mut()
        .insert("kept".to_string(), "yes".to_string());
    let replaced = pods
        .replace("p", &PostParams::default(), &main)
        .await
        .unwrap();
    assert_eq!(
        replaced.status.as_ref().unwrap().phase.as_deref(),
        Some("Running"),
        "main writes leave status"
    );
    assert_eq!(
        replaced.labels().get("kept").map(String::as_str),
        Some("yes")
    );
    let mut status = replaced.clone();
    status.status.as_mut().unwrap().phase = Some("Succeeded".to_string());
    let replaced = pods
        .replace_status("p", &PostParams::default(), &status)
        .await
        .unwrap();
    assert_eq!(replaced.status.unwrap().phase.as_deref(), Some("Succeeded"));
    // a stale status write conflicts
    let stale = pods
        .replace_status("p", &PostParams::default(), &status)
        .await
        .unwrap_err();
    assert_eq!(api_error(stale).code, 409);
}

#[tokio::test]
async fn label_and_field_selectors() {
    let server = server();
    let pods: Api<Pod> = Api::default_namespaced(client(&server));
    for (name, app, node) in [
        ("a", "web", "n1"),
        ("b", "web", "n2"),
        ("c", "db", "n1"),
        ("d", "", "n2"),
    ] {
        let mut labels = json!({});
        if !app.is_empty() {
            labels["app"] = json!(app);
        }
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]}}))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let names = |list: kube::core::ObjectList<Pod>| {
        list.items.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    };
    let cases = [
        ("app=web", "", vec!["a", "b"]),
        ("app!=web", "", vec!["c", "d"]),
        ("app in (web,db)", "", vec!["a", "b", "c"]),
        ("app notin (web)", "", vec!["c", "d"]),
        ("app", "", vec!["a", "b", "c"]),
        ("!app", "", vec!["d"]),
        ("", "spec.nodeName=n1", vec!["a", "c"]),
        ("app=web", "spec.nodeName=n2", vec!["b"]),
        ("", "metadata.name=c", vec!["c"]),
        (
            "",
            "metadata.namespace=default,spec.nodeName!=n1",
            vec!["b", "d"],
        ),
    ];
    for (labels, fields, want) in cases {
        let lp = ListParams::default().labels(labels).fields(fields);
        assert_eq!(
            names(pods.list(&lp).await.unwrap()),
            want,
            "{labels} / {fields}"
        );
    }
    let err = pods
        .list(&ListParams::default().fields("spec.bogus=1"))
        .await
        .unwrap_err();
    assert_eq!(api_error(err).code, 400);
    let all: Api<Pod> = Api::all(client(&server));
    assert_eq!(
        all.list(&ListParams::default().labels("app=db"))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

#[tokio::test]
async fn paging_with_limit_and_continue_is_consistent() {
    let server = server();
    let c = client(&server);
    let maps: Api<ConfigMap> = Api::default_namespaced(c.clone());
    for i in 0..25 {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("cm-{i:02}")}})).unwrap();
        maps.create(&PostParams::default(), &cm).await.unwrap();
    }
    let first = maps.list(&ListParams::default().limit(10)).await.unwrap();
    assert_eq!(first.items.len(), 10);
    let token = first.metadata.continue_.clone().unwrap();
    let list_rv = first.metadata.resource_version.clone().unwrap();
    // Changes after the first page do not show in the later pages: they are at the list's RV.
    maps.delete("cm-15", &DeleteParams::default())
        .await
        .unwrap();
    let extra: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "cm-99"}})).unwrap();
    maps.create(&PostParams::default(), &extra).await.unwrap();
    let mut names: Vec<String> = first.items.iter().map(|c| c.name_any()).collect();
    let mut token = Some(token);
    while let Some(t) = token {
        let page = maps
            .list(&ListParams::default().limit(10).continue_token(&t))
            .await
            .unwrap();
        assert_eq!(
            page.metadata.resource_version.as_deref(),
            Some(list_rv.as_str())
        );
        names.extend(page.items.iter().map(|c| c.name_any()));
        token = page.metadata.continue_.clone().filter(|t| !t.is_empty());
    }
    let want: Vec<String> = (0..25).map(|i| format!("cm-{i:02}")).collect();
    assert_eq!(names, want);
    // A fresh list sees the changes.
    let now: Vec<String> = maps
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    assert!(now.contains(&"cm-99".to_string()) && !now.contains(&"cm-15".to_string()));
    // A list at an exact older resourceVersion shows the state then.
    let exact = maps
        .list(
            &ListParams::default()
                .at(&list_rv)
                .matching(kube::api::VersionMatch::Exact),
        )
        .await
        .unwrap();
    assert_eq!(exact.items.len(), 25);
    assert!(exact.items.iter().any(|c| c.name_any() == "cm-15"));
    // A resourceVersion from the future is refused.
    let future = maps
        .list(
            &ListParams::default()
                .at("999999")
                .matching(kube::api::VersionMatch::NotOlderThan),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(future).code, 504);
}

#[tokio::test]
async fn delete_preconditions_and_finalizers() {
    let server = server();
    let maps: Api<ConfigMap> = Api::default_namespaced(client(&server));
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "f", "finalizers": ["weft.io/hold"]}}))
            .unwrap();
    let created = maps.create(&PostParams::default(), &cm).await.unwrap();
    let wrong_uid = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("nope".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    assert_eq!(
        api_error(maps.delete("f", &wrong_uid).await.unwrap_err()).code,
        409
    );
    let pending = maps.delete("f", &DeleteParams::default()).await.unwrap();
    let kept = pending.left().expect("still there: it has a finalizer");
    assert!(kept.metadata.deletion_timestamp.is_some());
    // no new finalizer may be added now
    let add = maps
        .patch(
            "f",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["weft.io/hold", "weft.io/more"]}})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(add).code, 422);
    // removing the last finalizer removes the object
    maps.patch(
        "f",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(api_error(maps.get("f").await.unwrap_err()).code, 404);
    assert!(created.metadata.deletion_timestamp.is_none());
}

#[tokio::test]
async fn json_patch_strategic_merge_and_server_side_apply() {
    let server = server();
    let c = client(&server);
    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    let pod: Pod = serde_json::from_value(
        json!({"metadata": {"name": "p", "labels": {"a": "1"}}, "spec": {"containers": [
        {"name": "one", "image": "x:1"}, {"name": "two", "image": "y:1"}]}}),
    )
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/labels/a", "value": "1"},
        {"op": "replace", "path": "/metadata/labels/a", "value": "2"}
    ]))
    .unwrap();
    let patched = pods
        .patch("p", &PatchParams::default(), &Patch::<()>::Json(ops))
        .await
        .unwrap();
    assert_eq!(patched.labels()["a"], "2");
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/metadata/labels/a", "value": "1"}]))
            .unwrap();
    assert_eq!(
        api_error(
            pods.patch("p", &PatchParams::default(), &Patch::<()>::Json(failing))
                .await
                .unwrap_err()
        )
        .code,
        422
    );
    // strategic merge: containers merge by name
    let smp = json!({"spec": {"containers": [{"name": "two", "image": "y:2"}]}});
    let patched = pods
        .patch("p", &PatchParams::default(), &Patch::Strategic(smp))
        .await
        .unwrap();
    let images: Vec<_> = patched
        .spec
        .unwrap()
        .containers
        .iter()
        .map(|c| c.image.clone().unwrap())
        .collect();
    assert_eq!(images, ["x:1", "y:2"]);

    // server-side apply creates, then updates; another manager conflicts unless forced
    let maps: Api<ConfigMap> = Api::default_namespaced(c.clone());
    let applied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"a": "1", "b": "2"}});
    let pp = PatchParams::apply("weft-test");
    let cm = maps
        .patch("cfg", &pp, &Patch::Apply(&applied))
        .await
        .unwrap();
    assert_eq!(cm.data.clone().unwrap().len(), 2);
    assert_eq!(
        cm.metadata.managed_fields.as_ref().unwrap()[0]
            .manager
            .as_deref(),
        Some("weft-test")
    );
    let fewer = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"a": "1"}});
    let cm = maps.patch("cfg", &pp, &Patch::Apply(&fewer)).await.unwrap();
    assert_eq!(cm.data.unwrap().keys().collect::<Vec<_>>(), ["a"]);
    let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"a": "other"}});
    let conflict = maps
        .patch(
            "cfg",
            &PatchParams::apply("someone-else"),
            &Patch::Apply(&other),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(conflict).code, 409);
    let forced = maps
        .patch(
            "cfg",
            &PatchParams::apply("someone-else").force(),
            &Patch::Apply(&other),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.unwrap()["a"], "other");
    let missing_manager = maps
        .patch("cfg", &PatchParams::default(), &Patch::Apply(&other))
        .await
        .unwrap_err();
    assert_eq!(api_error(missing_manager).code, 422);
}

#[tokio::test]
async fn pods_table_for_kubectl() {
    let server = server();
    let c = client(&server);
    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"nodeName": "vps2", "containers": [{"name": "c", "image": "x"}]}})).unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    pods.patch_status("web", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "10.0.2.5",
        "containerStatuses": [{"name": "c", "image": "x", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}]}})))
        .await
        .unwrap();
    let request = http::Request::get("/api/v1/namespaces/default/pods?limit=500")
        .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json")
        .body(Vec::new())
        .unwrap();
    let table: Value = c.request(request).await.unwrap();
    assert_eq!(table["kind"], "Table");
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        [
            "Name",
            "Ready",
            "Status",
            "Restarts",
            "Age",
            "IP",
            "Node",
            "Nominated Node",
            "Readiness Gates"
        ]
    );
    let cells = &table["rows"][0]["cells"];
    assert_eq!(cells[0], "web");
    assert_eq!(cells[1], "1/1");
    assert_eq!(cells[2], "Running");
    assert_eq!(cells[5], "10.0.2.5");
    assert_eq!(cells[6], "vps2");
    assert_eq!(table["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(
        table["rows"][0]["object"]["metadata"]["namespace"],
        "default"
    );
}

#[tokio::test]
async fn discovery_lists_resources_with_verbs_and_subresources() {
    let server = server();
    let c = client(&server);
    let core = c.list_core_api_resources("v1").await.unwrap();
    let pods = core.resources.iter().find(|r| r.name == "pods").unwrap();
    assert!(pods.namespaced);
    assert_eq!(pods.short_names.as_deref(), Some(&["po".to_string()][..]));
    assert!(pods.verbs.contains(&"watch".to_string()));
    assert!(core.resources.iter().any(|r| r.name == "pods/status"));
    assert!(core.resources.iter().any(|r| r.name == "services/status"));
    let groups = c.list_api_groups().await.unwrap();
    let names: Vec<&str> = groups.groups.iter().map(|g| g.name.as_str()).collect();
    for group in [
        "discovery.k8s.io",
        "networking.k8s.io",
        "apps",
        "rbac.authorization.k8s.io",
        "scheduling.k8s.io",
        "apiextensions.k8s.io",
    ] {
        assert!(names.contains(&group), "{group} in {names:?}");
    }
    let discovery = kube::Discovery::new(c.clone()).run().await.unwrap();
    let (slice, caps) = discovery
        .resolve_gvk(&kube::api::GroupVersionKind::gvk(
            "discovery.k8s.io",
            "v1",
            "EndpointSlice",
        ))
        .unwrap();
    assert_eq!(slice.plural, "endpointslices");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    let version = c.apiserver_version().await.unwrap();
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "34")
    );
}

#[tokio::test]
async fn delete_collection_with_a_selector() {
    let server = server();
    let maps: Api<ConfigMap> = Api::default_namespaced(client(&server));
    for (name, app) in [("a", "x"), ("b", "x"), ("c", "y")] {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": app}}}))
                .unwrap();
        maps.create(&PostParams::default(), &cm).await.unwrap();
    }
    let deleted = maps
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("app=x"),
        )
        .await
        .unwrap();
    let names: Vec<String> = deleted
        .left()
        .unwrap()
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let left: Vec<String> = maps
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    assert_eq!(left, ["c"]);
}
