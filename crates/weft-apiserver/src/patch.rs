//! PATCH bodies: JSON patch (RFC 6902) and merge patch (RFC 7386) with the `json-patch` crate;
//! strategic merge patch and server-side apply in the simplified forms the README describes.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use crate::{error::ApiError, meta, registry::KindRules};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(content_type: &str) -> Option<PatchType> {
        let media = content_type.split(';').next().unwrap_or("").trim();
        match media {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml"
            | "application/apply-patch+json"
            | "application/apply-patch+cbor" => Some(PatchType::Apply),
            _ => None,
        }
    }
}

pub(crate) fn json_patch(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let operations: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    json_patch::patch(target, &operations.0).map_err(|e| {
        ApiError::new(
            422,
            "Invalid",
            format!("the server rejected our request due to an error in our request: {e}"),
        )
    })
}

pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// How a list field merges in a strategic merge patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListRule {
    /// Elements are matched by this key and merged.
    MergeKey(&'static str),
    /// A list of scalars whose patch adds to it (`finalizers`).
    Union,
    /// Replaced as a whole.
    Replace,
}

/// The `patchMergeKey`s of the kinds this server knows, by the field's path (names only, list
/// indices left out). Kubernetes reads them from struct tags; k8s-openapi does not carry them.
fn list_rule(path: &[String], rules: KindRules) -> ListRule {
    let last = path.last().map(String::as_str).unwrap_or("");
    let parent = path
        .len()
        .checked_sub(2)
        .and_then(|i| path.get(i))
        .map(String::as_str)
        .unwrap_or("");
    match (parent, last) {
        ("metadata", "finalizers") => ListRule::Union,
        ("metadata", "ownerReferences") => ListRule::MergeKey("uid"),
        ("containers" | "initContainers" | "ephemeralContainers", "ports") => {
            ListRule::MergeKey("containerPort")
        }
        ("containers" | "initContainers" | "ephemeralContainers", "env") => {
            ListRule::MergeKey("name")
        }
        ("containers" | "initContainers" | "ephemeralContainers", "volumeMounts") => {
            ListRule::MergeKey("mountPath")
        }
        ("containers" | "initContainers" | "ephemeralContainers", "volumeDevices") => {
            ListRule::MergeKey("devicePath")
        }
        (
            _,
            "containers"
            | "initContainers"
            | "ephemeralContainers"
            | "volumes"
            | "imagePullSecrets",
        ) => ListRule::MergeKey("name"),
        ("spec", "ports") if rules == KindRules::Service => ListRule::MergeKey("port"),
        ("spec", "hostAliases") => ListRule::MergeKey("ip"),
        ("status", "conditions") => ListRule::MergeKey("type"),
        ("status", "addresses") if rules == KindRules::Node => ListRule::MergeKey("type"),
        ("status", "podIPs" | "hostIPs") => ListRule::MergeKey("ip"),
        _ => ListRule::Replace,
    }
}

/// A strategic merge patch: a merge patch where lists with a merge key merge element by
/// element, `$patch: delete|replace`, `$retainKeys` and `$deleteFromPrimitiveList/<field>`
/// directives are honoured and `$setElementOrder/<field>` is accepted without reordering.
pub(crate) fn strategic_merge(
    target: &mut Value,
    patch: &Value,
    rules: KindRules,
) -> Result<(), ApiError> {
    if rules == KindRules::Custom {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            "strategic merge patch is not supported for custom resources: use a merge patch or server-side apply",
        ));
    }
    merge_map_value(target, patch, &mut Vec::new(), rules);
    Ok(())
}

fn merge_map_value(target: &mut Value, patch: &Value, path: &mut Vec<String>, rules: KindRules) {
    let Some(patch_map) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    match patch_map.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *target = strip_directives(patch);
            return;
        }
        Some("delete") => {
            *target = Value::Object(Map::new());
            return;
        }
        _ => {}
    }
    let target_map = meta::ensure_object(target);
    for (key, value) in patch_map {
        if key == "$patch" || key == "$retainKeys" || key.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(remove)) =
                (target_map.get_mut(field), value.as_array())
            {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        path.push(key.clone());
        match value {
            Value::Null => {
                target_map.remove(key);
            }
            Value::Object(_) => {
                let is_delete = value.get("$patch").and_then(Value::as_str) == Some("delete");
                if is_delete {
                    target_map.remove(key);
                } else {
                    let slot = target_map.entry(key.clone()).or_insert(Value::Null);
                    if slot.is_object() {
                        merge_map_value(slot, value, path, rules);
                    } else {
                        *slot = strip_directives(value);
                    }
                }
            }
            Value::Array(items) => {
                let merged = merge_list(target_map.get(key), items, path, rules);
                target_map.insert(key.clone(), merged);
            }
            scalar => {
                target_map.insert(key.clone(), scalar.clone());
            }
        }
        path.pop();
    }
    if let Some(Value::Array(keep)) = patch_map.get("$retainKeys") {
        let keep: BTreeSet<&str> = keep.iter().filter_map(Value::as_str).collect();
        target_map.retain(|k, _| keep.contains(k.as_str()));
    }
}

fn merge_list(
    current: Option<&Value>,
    patch: &[Value],
    path: &mut Vec<String>,
    rules: KindRules,
) -> Value {
    let replace_all = patch
        .iter()
        .any(|item| item.get("$patch").and_then(Value::as_str) == Some("replace"));
    let items: Vec<&Value> = patch
        .iter()
        .filter(|item| item.get("$patch").and_then(Value::as_str) != Some("replace"))
        .collect();
    let current = current
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if replace_all {
        return Value::Array(items.into_iter().map(strip_directives).collect());
    }
    match list_rule(path, rules) {
        ListRule::Replace => Value::Array(items.into_iter().map(strip_directives).collect()),
        ListRule::Union => {
            let mut merged = current;
            for item in items {
                if !merged.contains(item) {
                    merged.push(item.clone());
                }
            }
            Value::Array(merged)
        }
        ListRule::MergeKey(key) => {
            let mut merged = current;
            for item in items {
                let id = item.get(key);
                let position = id.and_then(|id| merged.iter().position(|m| m.get(key) == Some(id)));
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match (position, delete) {
                    (Some(i), true) => {
                        merged.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => merge_map_value(&mut merged[i], item, path, rules),
                    (None, false) => merged.push(strip_directives(item)),
                }
            }
            Value::Array(merged)
        }
    }
}

fn strip_directives(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// A field path in an applied configuration: map keys from the root.
type FieldPath = Vec<String>;

/// The fields an applied configuration names: its leaves (scalars, lists, empty maps), with
/// `apiVersion`, `kind`, `metadata.name` and `metadata.namespace` left out.
fn applied_fields(config: &Value) -> BTreeSet<FieldPath> {
    let mut fields = BTreeSet::new();
    collect_leaves(config, &mut Vec::new(), &mut fields);
    fields.retain(|path| {
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        !matches!(
            p.as_slice(),
            ["apiVersion"]
                | ["kind"]
                | ["metadata", "name"]
                | ["metadata", "namespace"]
                | ["metadata", "resourceVersion"]
                | ["metadata", "managedFields", ..]
        )
    });
    fields
}

fn collect_leaves(value: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                path.push(key.clone());
                collect_leaves(child, path, out);
                path.pop();
            }
        }
        _ => {
            if !path.is_empty() {
                out.insert(path.clone());
            }
        }
    }
}

/// `{"f:spec":{"f:replicas":{}}}`, the FieldsV1 form of a set of paths.
fn to_fields_v1(fields: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for path in fields {
        let mut node = &mut root;
        for key in path {
            node = meta::ensure_object(node.entry(format!("f:{key}")).or_insert(json!({})));
        }
    }
    Value::Object(root)
}

fn from_fields_v1(value: &Value) -> BTreeSet<FieldPath> {
    fn walk(value: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
        let children: Vec<(&String, &Value)> = value
            .as_object()
            .map(|m| m.iter().filter(|(k, _)| k.starts_with("f:")).collect())
            .unwrap_or_default();
        if children.is_empty() {
            if !path.is_empty() {
                out.insert(path.clone());
            }
            return;
        }
        for (key, child) in children {
            path.push(key[2..].to_string());
            walk(child, path, out);
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(value, &mut Vec::new(), &mut out);
    out
}

/// The Apply managers' field sets, from `metadata.managedFields`.
fn apply_managers(object: &Value) -> BTreeMap<String, BTreeSet<FieldPath>> {
    meta::get(object, "metadata.managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|entry| entry.get("operation").and_then(Value::as_str) == Some("Apply"))
        .filter_map(|entry| {
            let manager = entry.get("manager")?.as_str()?.to_string();
            let fields = entry
                .get("fieldsV1")
                .map(from_fields_v1)
                .unwrap_or_default();
            Some((manager, fields))
        })
        .collect()
}

fn value_at<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter()
        .try_fold(value, |v, key| v.as_object()?.get(key))
}

fn remove_at(value: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = value;
    for key in parents {
        match node.as_object_mut().and_then(|m| m.get_mut(key)) {
            Some(child) => node = child,
            None => return,
        }
    }
    if let Some(map) = node.as_object_mut() {
        map.remove(last);
    }
}

fn set_at(value: &mut Value, path: &[String], new: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = value;
    for key in parents {
        node = meta::ensure_object(node)
            .entry(key.clone())
            .or_insert(json!({}));
    }
    meta::ensure_object(node).insert(last.clone(), new);
}

/// Server-side apply, simplified: the applied configuration's fields are set (lists as a
/// whole); fields this manager applied before and names no longer are removed unless another
/// Apply manager also owns them; a field another Apply manager owns with a different value is
/// a conflict unless `force`, which moves it to this manager. Only Apply operations are
/// recorded in `managedFields`.
pub(crate) fn server_side_apply(
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
) -> Result<Value, ApiError> {
    let applied = applied_fields(config);
    let mut result = live.cloned().unwrap_or_else(|| json!({}));
    let mut managers = live.map(apply_managers).unwrap_or_default();
    let previous = managers.remove(manager).unwrap_or_default();

    let mut conflicts: Vec<(String, FieldPath)> = Vec::new();
    for (other, owned) in managers.iter_mut() {
        let clashing: Vec<FieldPath> = owned
            .iter()
            .filter(|path| {
                applied.contains(*path) && value_at(&result, path) != value_at(config, path)
            })
            .cloned()
            .collect();
        if force {
            for path in &clashing {
                owned.remove(path);
            }
        } else {
            conflicts.extend(clashing.into_iter().map(|p| (other.clone(), p)));
        }
    }
    if !conflicts.is_empty() {
        return Err(apply_conflict(&conflicts));
    }

    for path in previous.difference(&applied) {
        if !managers.values().any(|owned| owned.contains(path)) {
            remove_at(&mut result, path);
        }
    }
    for path in &applied {
        match value_at(config, path) {
            Some(Value::Null) | None => remove_at(&mut result, path),
            Some(value) => set_at(&mut result, path, value.clone()),
        }
    }
    for key in ["apiVersion", "kind"] {
        if let Some(value) = config.get(key) {
            meta::ensure_object(&mut result).insert(key.to_string(), value.clone());
        }
    }
    for key in ["name", "namespace"] {
        if let Some(value) = meta::get(config, &format!("metadata.{key}")) {
            meta::metadata(&mut result).insert(key.to_string(), value.clone());
        }
    }

    managers.insert(manager.to_string(), applied);
    let kept_updates: Vec<Value> = live
        .and_then(|l| meta::get(l, "metadata.managedFields"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| e.get("operation").and_then(Value::as_str) != Some("Apply"))
        .cloned()
        .collect();
    let previous_times: BTreeMap<String, Value> = live
        .and_then(|l| meta::get(l, "metadata.managedFields"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e.get("manager")?.as_str()?.to_string(),
                e.get("time")?.clone(),
            ))
        })
        .collect();
    let mut entries = kept_updates;
    for (name, fields) in &managers {
        if fields.is_empty() {
            continue;
        }
        let time = if name == manager {
            json!(meta::now())
        } else {
            previous_times
                .get(name)
                .cloned()
                .unwrap_or_else(|| json!(meta::now()))
        };
        entries.push(json!({
            "manager": name,
            "operation": "Apply",
            "apiVersion": api_version,
            "time": time,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(fields),
        }));
    }
    meta::metadata(&mut result).insert("managedFields".to_string(), Value::Array(entries));
    Ok(result)
}

fn apply_conflict(conflicts: &[(String, FieldPath)]) -> ApiError {
    let describe =
        |(manager, path): &(String, FieldPath)| (manager.clone(), format!(".{}", path.join(".")));
    let lines: Vec<String> = conflicts
        .iter()
        .map(describe)
        .map(|(manager, field)| format!("conflict with \"{manager}\": {field}"))
        .collect();
    let mut error = ApiError::new(
        409,
        "Conflict",
        format!(
            "Apply failed with {} conflict{}: {}",
            conflicts.len(),
            if conflicts.len() == 1 { "" } else { "s" },
            lines.join("\n")
        ),
    );
    error.details = Some(Box::new(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::StatusDetails {
            causes: Some(
                conflicts
                    .iter()
                    .map(describe)
                    .map(|(manager, field)| {
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::StatusCause {
                            reason: Some("FieldManagerConflict".to_string()),
                            message: Some(format!("conflict with \"{manager}\"")),
                            field: Some(field),
                        }
                    })
                    .collect(),
            ),
            ..Default::default()
        },
    ));
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategic_merge_merges_containers_by_name_and_ports_by_port() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "b:1"}
        ]}});
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [
                {"name": "a", "image": "a:2", "ports": [{"containerPort": 81}]},
                {"name": "b", "$patch": "delete"},
                {"name": "c", "image": "c:1"}
            ]
        }});
        strategic_merge(&mut pod, &patch, KindRules::Pod).unwrap();
        assert_eq!(
            pod,
            json!({"spec": {"containers": [
                {"name": "a", "image": "a:2", "ports": [{"containerPort": 80}, {"containerPort": 81}]},
                {"name": "c", "image": "c:1"}
            ]}})
        );
        let mut svc = json!({"spec": {"ports": [{"port": 80, "nodePort": 30001}, {"port": 443}]}});
        strategic_merge(
            &mut svc,
            &json!({"spec": {"ports": [{"port": 80, "name": "http"}]}}),
            KindRules::Service,
        )
        .unwrap();
        assert_eq!(
            svc,
            json!({"spec": {"ports": [{"port": 80, "nodePort": 30001, "name": "http"}, {"port": 443}]}})
        );
        let mut fin = json!({"metadata": {"finalizers": ["a"]}});
        strategic_merge(&mut fin, &json!({"metadata": {"finalizers": ["b"], "$deleteFromPrimitiveList/finalizers": ["a"]}}), KindRules::Generic).unwrap();
        assert_eq!(fin, json!({"metadata": {"finalizers": ["b"]}}));
        assert_eq!(
            strategic_merge(&mut fin, &json!({}), KindRules::Custom)
                .unwrap_err()
                .code,
            415
        );
    }

    #[test]
    fn apply_sets_removes_and_detects_conflicts() {
        let first = server_side_apply(None, &json!({"metadata": {"name": "x", "labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 1}}), "one", false, "v1").unwrap();
        assert_eq!(meta::get(&first, "spec.replicas"), Some(&json!(1)));
        // "one" stops naming label b: it goes
        let second = server_side_apply(
            Some(&first),
            &json!({"metadata": {"name": "x", "labels": {"a": "1"}}, "spec": {"replicas": 1}}),
            "one",
            false,
            "v1",
        )
        .unwrap();
        assert_eq!(
            meta::get(&second, "metadata.labels"),
            Some(&json!({"a": "1"}))
        );
        // "two" wants another replicas: conflict, then forced
        let config = json!({"metadata": {"name": "x"}, "spec": {"replicas": 3}});
        let err = server_side_apply(Some(&second), &config, "two", false, "v1").unwrap_err();
        assert_eq!(err.code, 409);
        assert!(
            err.message
                .contains("conflict with \"one\": .spec.replicas"),
            "{}",
            err.message
        );
        let forced = server_side_apply(Some(&second), &config, "two", true, "v1").unwrap();
        assert_eq!(meta::get(&forced, "spec.replicas"), Some(&json!(3)));
        let managers = apply_managers(&forced);
        assert!(!managers["one"].contains(&vec!["spec".to_string(), "replicas".to_string()]));
        assert!(managers["two"].contains(&vec!["spec".to_string(), "replicas".to_string()]));
        // "one" drops replicas: "two" still owns it, so it stays
        let kept = server_side_apply(
            Some(&forced),
            &json!({"metadata": {"name": "x", "labels": {"a": "1"}}}),
            "one",
            false,
            "v1",
        )
        .unwrap();
        assert_eq!(meta::get(&kept, "spec.replicas"), Some(&json!(3)));
    }
}
