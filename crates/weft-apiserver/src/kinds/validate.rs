//! Required fields the apiserver checks that decoding cannot (k8s-openapi fills a missing
//! required string with ""): containers, names, images, an EndpointSlice's address type.

use std::collections::HashSet;

use serde_json::Value;

use crate::{error::FieldError, meta, registry::KindRules};

pub(crate) fn check(rules: KindRules, kind: &str, object: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match (rules, kind) {
        (KindRules::Pod, _) => pod_spec(object.get("spec"), "spec", &mut errors),
        (_, "DaemonSet") => pod_spec(
            meta::get(object, "spec.template.spec"),
            "spec.template.spec",
            &mut errors,
        ),
        (KindRules::EndpointSlice, _) => endpoint_slice(object, &mut errors),
        _ => {}
    }
    errors
}

fn pod_spec(spec: Option<&Value>, path: &str, errors: &mut Vec<FieldError>) {
    let containers = spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array);
    let Some(containers) = containers.filter(|c| !c.is_empty()) else {
        errors.push(FieldError::required(format!("{path}.containers"), ""));
        return;
    };
    let mut names = HashSet::new();
    let init = spec
        .and_then(|s| s.get("initContainers"))
        .and_then(Value::as_array);
    let lists = [("containers", Some(containers)), ("initContainers", init)];
    for (list, items) in lists {
        for (i, container) in items.into_iter().flatten().enumerate() {
            let field = format!("{path}.{list}[{i}]");
            let name = container.get("name").and_then(Value::as_str).unwrap_or("");
            if name.is_empty() {
                errors.push(FieldError::required(format!("{field}.name"), ""));
            } else if !meta::is_dns_label(name) {
                errors.push(FieldError::invalid(format!("{field}.name"), format!("\"{name}\""), "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'"));
            } else if !names.insert(name.to_string()) {
                errors.push(FieldError::duplicate(
                    format!("{field}.name"),
                    format!("\"{name}\""),
                ));
            }
            if container
                .get("image")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
            {
                errors.push(FieldError::required(format!("{field}.image"), ""));
            }
        }
    }
}

fn endpoint_slice(slice: &Value, errors: &mut Vec<FieldError>) {
    let address_type = slice
        .get("addressType")
        .and_then(Value::as_str)
        .unwrap_or("");
    const TYPES: &[&str] = &["IPv4", "IPv6", "FQDN"];
    if !TYPES.contains(&address_type) {
        errors.push(FieldError::not_supported(
            "addressType",
            format!("\"{address_type}\""),
            TYPES,
        ));
    }
    for (i, endpoint) in slice
        .get("endpoints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let addresses = endpoint
            .get("addresses")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        if addresses == 0 {
            errors.push(FieldError::required(
                format!("endpoints[{i}].addresses"),
                "must contain at least 1 address",
            ));
        }
        if address_type == "IPv4" {
            for (j, address) in endpoint
                .get("addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let text = address.as_str().unwrap_or("");
                if text.parse::<std::net::Ipv4Addr>().is_err() {
                    errors.push(FieldError::invalid(
                        format!("endpoints[{i}].addresses[{j}]"),
                        format!("\"{text}\""),
                        "must be a valid IPv4 address",
                    ));
                }
            }
        }
    }
}
