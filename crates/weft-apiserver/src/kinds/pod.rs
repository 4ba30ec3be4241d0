//! Pods as the apiserver treats them: defaults and a Pending status on create, a spec that
//! only a few fields of may change, the binding subresource, graceful deletion.

use serde_json::{Value, json};

use crate::{error::FieldError, meta};

const DEFAULT_GRACE_SECONDS: i64 = 30;

/// Defaults of a new Pod and the status the apiserver starts every Pod with.
pub(crate) fn prepare_create(pod: &mut Value) {
    default_spec(pod);
    let qos = qos_class(pod);
    meta::set(pod, "status", json!({"phase": "Pending", "qosClass": qos}));
}

/// The spec defaults kubectl shows and clients read; applied on every write, as the apiserver
/// defaults every decoded object.
pub(crate) fn default_spec(pod: &mut Value) {
    let spec = meta::object_at(pod, "spec");
    spec.entry("restartPolicy").or_insert(json!("Always"));
    spec.entry("dnsPolicy").or_insert(json!("ClusterFirst"));
    spec.entry("schedulerName")
        .or_insert(json!("default-scheduler"));
    spec.entry("terminationGracePeriodSeconds")
        .or_insert(json!(DEFAULT_GRACE_SECONDS));
    spec.entry("securityContext").or_insert(json!({}));
    spec.entry("enableServiceLinks").or_insert(json!(true));
    spec.entry("priority").or_insert(json!(0));
    for list in ["containers", "initContainers"] {
        if let Some(Value::Array(containers)) = spec.get_mut(list) {
            containers.iter_mut().for_each(default_container);
        }
    }
}

fn default_container(container: &mut Value) {
    let Some(map) = container.as_object_mut() else {
        return;
    };
    let image = map
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let tag = image
        .rsplit('/')
        .next()
        .and_then(|last| last.split_once(':'))
        .map(|(_, tag)| tag);
    let pull = if image.contains('@') || tag.is_some_and(|t| t != "latest") {
        "IfNotPresent"
    } else {
        "Always"
    };
    map.entry("imagePullPolicy").or_insert(json!(pull));
    map.entry("terminationMessagePath")
        .or_insert(json!("/dev/termination-log"));
    map.entry("terminationMessagePolicy")
        .or_insert(json!("File"));
    if let Some(Value::Array(ports)) = map.get_mut("ports") {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            port.entry("protocol").or_insert(json!("TCP"));
        }
    }
}

/// Guaranteed when every container sets equal cpu and memory requests and limits, BestEffort
/// when none sets any, Burstable otherwise.
fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["spec.containers", "spec.initContainers"]
        .iter()
        .filter_map(|path| meta::get(pod, path).and_then(Value::as_array))
        .flatten()
        .collect();
    let resources = |c: &Value, kind: &str| c.get("resources").and_then(|r| r.get(kind)).cloned();
    let any = containers.iter().any(|c| {
        [resources(c, "requests"), resources(c, "limits")]
            .iter()
            .flatten()
            .any(|r| r.as_object().is_some_and(|m| !m.is_empty()))
    });
    if !any {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        let limits = resources(c, "limits");
        let requests = resources(c, "requests");
        ["cpu", "memory"].iter().all(|r| {
            let limit = limits.as_ref().and_then(|l| l.get(r));
            let request = requests.as_ref().and_then(|q| q.get(r)).or(limit);
            limit.is_some() && limit == request
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Pod updates may change only container images, activeDeadlineSeconds, tolerations (added)
/// and scheduling gates (removed); the rest of the spec, nodeName included, is fixed.
pub(crate) fn check_update(old: &Value, new: &Value) -> Result<(), Vec<FieldError>> {
    let (Some(old_spec), Some(new_spec)) = (old.get("spec"), new.get("spec")) else {
        return Ok(());
    };
    let mut masked = new_spec.clone();
    for list in ["containers", "initContainers"] {
        let old_images: Vec<Value> = old_spec
            .get(list)
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .map(|c| c.get("image").cloned().unwrap_or(Value::Null))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(Value::Array(containers)) = masked.get_mut(list) {
            for (container, image) in containers.iter_mut().zip(old_images) {
                if let Some(map) = container.as_object_mut() {
                    map.insert("image".to_string(), image);
                }
            }
        }
    }
    let Some(masked_map) = masked.as_object_mut() else {
        return Ok(());
    };
    for field in ["activeDeadlineSeconds", "tolerations", "schedulingGates"] {
        match old_spec.get(field) {
            Some(value) => masked_map.insert(field.to_string(), value.clone()),
            None => masked_map.remove(field),
        };
    }
    if let Some(old_tolerations) = old_spec.get("tolerations").and_then(Value::as_array) {
        let new_tolerations = new_spec.get("tolerations").and_then(Value::as_array);
        if old_tolerations
            .iter()
            .any(|t| !new_tolerations.is_some_and(|n| n.contains(t)))
        {
            return Err(vec![FieldError::forbidden(
                "spec.tolerations",
                "existing toleration can not be modified except its tolerationSeconds",
            )]);
        }
    }
    if masked == *old_spec {
        return Ok(());
    }
    let node_changed = old_spec.get("nodeName") != new_spec.get("nodeName");
    let detail = if node_changed {
        "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative); spec.nodeName may only be set once, by binding"
    } else {
        "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"
    };
    Err(vec![FieldError::forbidden("spec", detail)])
}

/// The grace period of a delete: what was asked, else the Pod's own, else 30 s; 0 for a Pod
/// no node runs (unscheduled or finished), as the apiserver deletes those at once.
pub(crate) fn grace_period(pod: &Value, requested: Option<i64>) -> i64 {
    let unscheduled = meta::get_str(pod, "spec.nodeName").unwrap_or("").is_empty();
    let finished = matches!(
        meta::get_str(pod, "status.phase"),
        Some("Succeeded" | "Failed")
    );
    if unscheduled || finished {
        return 0;
    }
    let own = meta::get(pod, "spec.terminationGracePeriodSeconds").and_then(Value::as_i64);
    requested.or(own).unwrap_or(DEFAULT_GRACE_SECONDS).max(0)
}

/// Sets `spec.nodeName` through the binding subresource, with the PodScheduled condition the
/// scheduler's binding records. A Pod already bound or being deleted is a conflict.
pub(crate) fn bind(pod: &mut Value, node: &str) -> Result<(), String> {
    if let Some(current) = meta::get_str(pod, "spec.nodeName").filter(|n| !n.is_empty()) {
        return Err(format!(
            "pod {} is already assigned to node \"{current}\"",
            meta::name(pod)
        ));
    }
    if meta::is_deleting(pod) {
        return Err(format!(
            "pod {} is being deleted, cannot be assigned to a host",
            meta::name(pod)
        ));
    }
    meta::set(pod, "spec.nodeName", json!(node));
    let status = meta::object_at(pod, "status");
    let conditions = status.entry("conditions").or_insert(json!([]));
    if let Some(list) = conditions.as_array_mut() {
        list.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
        list.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": meta::now()}));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": spec})
    }

    #[test]
    fn only_images_and_a_few_fields_may_change() {
        let old = pod(json!({"containers": [{"name": "c", "image": "a:1"}], "nodeName": "n1"}));
        let image = pod(
            json!({"containers": [{"name": "c", "image": "a:2"}], "nodeName": "n1", "activeDeadlineSeconds": 5}),
        );
        assert!(check_update(&old, &image).is_ok());
        let node = pod(json!({"containers": [{"name": "c", "image": "a:1"}], "nodeName": "n2"}));
        let err = check_update(&old, &node).unwrap_err();
        assert_eq!(err[0].field, "spec");
        assert!(
            err[0]
                .message
                .contains("spec.nodeName may only be set once"),
            "{}",
            err[0].message
        );
        let name = pod(json!({"containers": [{"name": "d", "image": "a:1"}], "nodeName": "n1"}));
        assert!(check_update(&old, &name).is_err());
    }

    #[test]
    fn grace_periods() {
        let running = pod(json!({"nodeName": "n1", "terminationGracePeriodSeconds": 10}));
        assert_eq!(grace_period(&running, None), 10);
        assert_eq!(grace_period(&running, Some(0)), 0);
        assert_eq!(grace_period(&running, Some(3)), 3);
        assert_eq!(grace_period(&pod(json!({})), Some(30)), 0);
    }

    #[test]
    fn qos_classes() {
        let best = pod(json!({"containers": [{"name": "c"}]}));
        assert_eq!(qos_class(&best), "BestEffort");
        let guaranteed = pod(
            json!({"containers": [{"name": "c", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}),
        );
        assert_eq!(qos_class(&guaranteed), "Guaranteed");
        let burstable =
            pod(json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]}));
        assert_eq!(qos_class(&burstable), "Burstable");
    }
}
