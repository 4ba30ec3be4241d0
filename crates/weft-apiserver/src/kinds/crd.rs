//! CustomResourceDefinitions: checking one, the resource it defines, and its status.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::{
    error::FieldError,
    meta,
    registry::{KindRules, PrinterColumn, ResourceDef, VersionDef},
    schema::Schema,
};

/// The resource a CRD defines, or what is wrong with it.
pub(crate) fn resource_def(crd: &Value) -> Result<ResourceDef, Vec<FieldError>> {
    let mut errors = Vec::new();
    let group = meta::get_str(crd, "spec.group").unwrap_or("").to_string();
    let kind = meta::get_str(crd, "spec.names.kind")
        .unwrap_or("")
        .to_string();
    let plural = meta::get_str(crd, "spec.names.plural")
        .unwrap_or("")
        .to_string();
    let scope = meta::get_str(crd, "spec.scope").unwrap_or("");
    if group.is_empty() || !group.contains('.') || !meta::is_dns_subdomain(&group) {
        errors.push(FieldError::invalid(
            "spec.group",
            format!("\"{group}\""),
            "should be a domain with at least one dot",
        ));
    }
    if !meta::is_dns_label(&plural) {
        errors.push(FieldError::invalid(
            "spec.names.plural",
            format!("\"{plural}\""),
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'",
        ));
    }
    if kind.is_empty() {
        errors.push(FieldError::required("spec.names.kind", ""));
    }
    if meta::name(crd) != format!("{plural}.{group}") {
        errors.push(FieldError::invalid(
            "metadata.name",
            format!("\"{}\"", meta::name(crd)),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if !["Namespaced", "Cluster"].contains(&scope) {
        errors.push(FieldError::not_supported(
            "spec.scope",
            format!("\"{scope}\""),
            &["Cluster", "Namespaced"],
        ));
    }
    let versions = meta::get(crd, "spec.versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        errors.push(FieldError::required(
            "spec.versions",
            "must have exactly one version marked as storage version",
        ));
    }
    let storage: Vec<&Value> = versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .collect();
    if !versions.is_empty() && storage.len() != 1 {
        errors.push(FieldError::invalid(
            "spec.versions",
            format!("{}", storage.len()),
            "must have exactly one version marked as storage version",
        ));
    }
    let mut served = Vec::new();
    for (i, version) in versions.iter().enumerate() {
        match version_def(version, i) {
            Ok(Some(def)) => served.push(def),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let names = meta::get(crd, "spec.names").cloned().unwrap_or(json!({}));
    let strings = |key: &str| -> Vec<String> {
        names
            .get(key)
            .and_then(Value::as_array)
            .map(|l| {
                l.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let singular = names
        .get("singular")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_ascii_lowercase());
    let list_kind = names
        .get("listKind")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{kind}List"));
    let storage_version = storage
        .first()
        .and_then(|v| v.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    Ok(ResourceDef {
        group,
        kind,
        list_kind,
        plural,
        singular,
        short_names: strings("shortNames"),
        categories: strings("categories"),
        namespaced: scope == "Namespaced",
        versions: served,
        storage_version,
        rules: KindRules::Custom,
        normalize: None,
        tracks_generation: true,
        field_keys: &[],
    })
}

fn version_def(version: &Value, i: usize) -> Result<Option<VersionDef>, FieldError> {
    let name = version.get("name").and_then(Value::as_str).unwrap_or("");
    if name.is_empty() || !meta::is_dns_label(name) {
        return Err(FieldError::invalid(
            format!("spec.versions[{i}].name"),
            format!("\"{name}\""),
            "must be a DNS-1035 label",
        ));
    }
    if version.get("served").and_then(Value::as_bool) != Some(true) {
        return Ok(None);
    }
    let path = format!("spec.versions[{i}].schema.openAPIV3Schema");
    let schema = match version.get("schema").and_then(|s| s.get("openAPIV3Schema")) {
        Some(schema) => Some(Arc::new(Schema::from_value(schema, &path)?)),
        None => return Err(FieldError::required(path, "schemas are required")),
    };
    let status_subresource = version
        .get("subresources")
        .and_then(|s| s.get("status"))
        .is_some();
    let printer_columns = version
        .get("additionalPrinterColumns")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| {
            Some(PrinterColumn {
                name: c.get("name")?.as_str()?.to_string(),
                type_: c
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("string")
                    .to_string(),
                json_path: c.get("jsonPath")?.as_str()?.to_string(),
                description: c
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0) as i32,
            })
        })
        .collect();
    Ok(Some(VersionDef {
        name: name.to_string(),
        status_subresource,
        schema,
        printer_columns,
    }))
}

/// The status the apiextensions apiserver reports for an accepted CRD.
pub(crate) fn set_status(crd: &mut Value, storage_version: &str) {
    let now = meta::now();
    let names = meta::get(crd, "spec.names").cloned().unwrap_or(json!({}));
    let mut accepted = names;
    if let Some(map) = accepted.as_object_mut() {
        let kind = map
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_ascii_lowercase();
        map.entry("singular").or_insert(json!(kind));
        let list_kind = format!(
            "{}List",
            map.get("kind").and_then(Value::as_str).unwrap_or("")
        );
        map.entry("listKind").or_insert(json!(list_kind));
    }
    let mut stored: Vec<Value> = meta::get(crd, "status.storedVersions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !stored.contains(&json!(storage_version)) {
        stored.push(json!(storage_version));
    }
    meta::set(
        crd,
        "status",
        json!({
            "acceptedNames": accepted,
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now}
            ],
            "storedVersions": stored,
        }),
    );
}
