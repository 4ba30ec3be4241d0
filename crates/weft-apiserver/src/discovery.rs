//! Legacy (unaggregated) discovery: `/api`, `/api/v1`, `/apis`, `/apis/<group>`,
//! `/apis/<group>/<version>`. Clients asking for aggregated discovery get these too, with
//! `Content-Type: application/json`, and fall back to reading them (kubectl and kube-rs do).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIGroup, APIGroupList, APIResource, APIResourceList, APIVersions, GroupVersionForDiscovery,
    ServerAddressByClientCIDR,
};

use crate::registry::{KindRules, Registry, ResourceDef};

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

pub(crate) fn api_versions(address: Option<std::net::SocketAddr>) -> APIVersions {
    APIVersions {
        server_address_by_client_cidrs: address
            .map(|a| {
                vec![ServerAddressByClientCIDR {
                    client_cidr: "0.0.0.0/0".to_string(),
                    server_address: a.to_string(),
                }]
            })
            .unwrap_or_default(),
        versions: vec!["v1".to_string()],
    }
}

fn group(name: &str, versions: &[String]) -> APIGroup {
    let gv = |v: &String| GroupVersionForDiscovery {
        group_version: format!("{name}/{v}"),
        version: v.clone(),
    };
    APIGroup {
        name: name.to_string(),
        preferred_version: versions.first().map(gv),
        server_address_by_client_cidrs: None,
        versions: versions.iter().map(gv).collect(),
    }
}

pub(crate) fn group_list(registry: &Registry) -> APIGroupList {
    APIGroupList {
        groups: registry
            .groups()
            .into_iter()
            .filter(|(name, _)| !name.is_empty())
            .map(|(name, versions)| group(&name, &versions))
            .collect(),
    }
}

pub(crate) fn api_group(registry: &Registry, name: &str) -> Option<APIGroup> {
    registry
        .groups()
        .into_iter()
        .find(|(g, _)| g == name && !g.is_empty())
        .map(|(g, versions)| group(&g, &versions))
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn resources_of(def: &ResourceDef, version: &str) -> Vec<APIResource> {
    let main = APIResource {
        categories: (!def.categories.is_empty()).then(|| def.categories.clone()),
        group: None,
        kind: def.kind.clone(),
        name: def.plural.clone(),
        namespaced: def.namespaced,
        short_names: (!def.short_names.is_empty()).then(|| def.short_names.clone()),
        singular_name: def.singular.clone(),
        storage_version_hash: None,
        verbs: strings(VERBS),
        version: None,
    };
    let sub = |name: &str, kind: &str, verbs: &[&str]| APIResource {
        categories: None,
        group: None,
        kind: kind.to_string(),
        name: format!("{}/{name}", def.plural),
        namespaced: def.namespaced,
        short_names: None,
        singular_name: String::new(),
        storage_version_hash: None,
        verbs: strings(verbs),
        version: None,
    };
    let mut out = vec![main];
    if def.rules == KindRules::Pod {
        out.push(sub("binding", "Binding", &["create"]));
    }
    if def.has_status(version) {
        out.push(sub("status", &def.kind, &["get", "patch", "update"]));
    }
    out
}

pub(crate) fn resource_list(
    registry: &Registry,
    group: &str,
    version: &str,
) -> Option<APIResourceList> {
    let defs = registry.in_group(group);
    let resources: Vec<APIResource> = defs
        .iter()
        .filter(|def| def.version(version).is_some())
        .flat_map(|def| resources_of(def, version))
        .collect();
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(APIResourceList {
        group_version,
        resources,
    })
}

/// `/openapi/v3`: where each group-version's document is.
pub(crate) fn openapi_v3_index(registry: &Registry) -> serde_json::Value {
    let mut paths = serde_json::Map::new();
    for (group, versions) in registry.groups() {
        for version in versions {
            let path = if group.is_empty() {
                format!("api/{version}")
            } else {
                format!("apis/{group}/{version}")
            };
            paths.insert(
                path.clone(),
                serde_json::json!({"serverRelativeURL": format!("/openapi/v3/{path}")}),
            );
        }
    }
    serde_json::json!({"paths": paths})
}

/// A group-version's OpenAPI v3 document, reduced to what clients probe: one PATCH operation
/// per resource, tagged with its group/version/kind and declaring the `fieldValidation`
/// parameter (kubectl then validates on the server instead of downloading schemas). No
/// schemas: kubectl computes strategic merge patches of built-ins from its own types.
pub(crate) fn openapi_v3_document(
    registry: &Registry,
    group: &str,
    version: &str,
) -> Option<serde_json::Value> {
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let mut paths = serde_json::Map::new();
    for def in registry
        .in_group(group)
        .iter()
        .filter(|d| d.version(version).is_some())
    {
        let item = if def.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", def.plural)
        } else {
            format!("{prefix}/{}/{{name}}", def.plural)
        };
        let patch = serde_json::json!({
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": def.kind},
            "parameters": [
                {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                {"name": "force", "in": "query", "schema": {"type": "boolean"}}
            ],
            "responses": {"200": {"description": "OK"}}
        });
        paths.insert(item, serde_json::json!({"patch": patch}));
    }
    if paths.is_empty() {
        return None;
    }
    Some(serde_json::json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.34.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}
