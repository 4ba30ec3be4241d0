//! The resources the server serves: built-ins described by k8s-openapi's `Resource` constants
//! and checked by deserializing into its types, and custom resources registered by CRDs.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::{
    ClusterResourceScope, ListableResource, NamespaceResourceScope, Resource,
    api::{apps, coordination, core::v1 as core, discovery, networking, rbac, scheduling},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::schema::Schema;

/// `(group, plural)`: one stored collection, whatever version it is served as.
pub(crate) type ResourceId = (String, String);

/// Rules beyond generic storage that Kubernetes' apiserver applies to some kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KindRules {
    Generic,
    Namespace,
    Node,
    Pod,
    Service,
    EndpointSlice,
    Crd,
    /// An object of a CRD-defined resource.
    Custom,
}

/// Deserializes into the k8s-openapi type and serializes back: type errors are found and
/// unknown fields dropped, as the apiserver's decoding does.
pub(crate) type Normalize = fn(Value) -> Result<Value, serde_json::Error>;

fn normalize<T: DeserializeOwned + Serialize>(value: Value) -> Result<Value, serde_json::Error> {
    let typed: T = serde_json::from_value(value)?;
    serde_json::to_value(typed)
}

/// One additional printer column of a CRD version (`kubectl get` shows them).
#[derive(Debug, Clone)]
pub(crate) struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub json_path: String,
    pub description: String,
    pub priority: i32,
}

#[derive(Debug, Clone)]
pub(crate) struct VersionDef {
    pub name: String,
    pub status_subresource: bool,
    pub schema: Option<Arc<Schema>>,
    pub printer_columns: Vec<PrinterColumn>,
}

#[derive(Debug, Clone)]
pub(crate) struct ResourceDef {
    pub group: String,
    pub kind: String,
    pub list_kind: String,
    pub plural: String,
    pub singular: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub namespaced: bool,
    /// Served versions; the storage version is the one objects are kept as.
    pub versions: Vec<VersionDef>,
    pub storage_version: String,
    pub rules: KindRules,
    pub normalize: Option<Normalize>,
    /// Whether `metadata.generation` is kept and bumped on spec changes.
    pub tracks_generation: bool,
    /// Field selector keys beyond `metadata.name` and `metadata.namespace`.
    pub field_keys: &'static [&'static str],
}

impl ResourceDef {
    pub fn id(&self) -> ResourceId {
        (self.group.clone(), self.plural.clone())
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    pub fn version(&self, version: &str) -> Option<&VersionDef> {
        self.versions.iter().find(|v| v.name == version)
    }

    pub fn has_status(&self, version: &str) -> bool {
        self.version(version).is_some_and(|v| v.status_subresource)
    }
}

trait Scope {
    const NAMESPACED: bool;
}

impl Scope for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}

impl Scope for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

struct Builtin {
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    status: bool,
    rules: KindRules,
    tracks_generation: bool,
    field_keys: &'static [&'static str],
}

const PLAIN: Builtin = Builtin {
    short_names: &[],
    categories: &[],
    status: false,
    rules: KindRules::Generic,
    tracks_generation: false,
    field_keys: &[],
};

fn builtin<T>(b: Builtin) -> ResourceDef
where
    T: Resource + ListableResource + DeserializeOwned + Serialize,
    T::Scope: Scope,
{
    ResourceDef {
        group: T::GROUP.to_string(),
        kind: T::KIND.to_string(),
        list_kind: T::LIST_KIND.to_string(),
        plural: T::URL_PATH_SEGMENT.to_string(),
        singular: T::KIND.to_ascii_lowercase(),
        short_names: b.short_names.iter().map(|s| s.to_string()).collect(),
        categories: b.categories.iter().map(|s| s.to_string()).collect(),
        namespaced: <T::Scope as Scope>::NAMESPACED,
        versions: vec![VersionDef {
            name: T::VERSION.to_string(),
            status_subresource: b.status,
            schema: None,
            printer_columns: Vec::new(),
        }],
        storage_version: T::VERSION.to_string(),
        rules: b.rules,
        normalize: Some(normalize::<T>),
        tracks_generation: b.tracks_generation,
        field_keys: b.field_keys,
    }
}

pub(crate) const POD_FIELDS: &[&str] = &[
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];

const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

fn builtins() -> Vec<ResourceDef> {
    vec![
        builtin::<core::Namespace>(Builtin {
            short_names: &["ns"],
            status: true,
            rules: KindRules::Namespace,
            field_keys: &["status.phase"],
            ..PLAIN
        }),
        builtin::<core::Node>(Builtin {
            short_names: &["no"],
            status: true,
            rules: KindRules::Node,
            field_keys: &["spec.unschedulable"],
            ..PLAIN
        }),
        builtin::<core::Pod>(Builtin {
            short_names: &["po"],
            categories: &["all"],
            status: true,
            rules: KindRules::Pod,
            tracks_generation: true,
            field_keys: POD_FIELDS,
        }),
        builtin::<core::Service>(Builtin {
            short_names: &["svc"],
            categories: &["all"],
            status: true,
            rules: KindRules::Service,
            field_keys: &["spec.clusterIP", "spec.type"],
            ..PLAIN
        }),
        builtin::<core::ConfigMap>(Builtin {
            short_names: &["cm"],
            ..PLAIN
        }),
        builtin::<core::Endpoints>(Builtin {
            short_names: &["ep"],
            ..PLAIN
        }),
        builtin::<core::Secret>(Builtin {
            field_keys: &["type"],
            ..PLAIN
        }),
        builtin::<core::ServiceAccount>(Builtin {
            short_names: &["sa"],
            ..PLAIN
        }),
        builtin::<core::Event>(Builtin {
            short_names: &["ev"],
            field_keys: EVENT_FIELDS,
            ..PLAIN
        }),
        builtin::<discovery::v1::EndpointSlice>(Builtin {
            rules: KindRules::EndpointSlice,
            field_keys: &["addressType"],
            ..PLAIN
        }),
        builtin::<networking::v1::NetworkPolicy>(Builtin {
            short_names: &["netpol"],
            tracks_generation: true,
            ..PLAIN
        }),
        builtin::<apps::v1::DaemonSet>(Builtin {
            short_names: &["ds"],
            categories: &["all"],
            status: true,
            tracks_generation: true,
            ..PLAIN
        }),
        builtin::<rbac::v1::ClusterRole>(PLAIN),
        builtin::<rbac::v1::ClusterRoleBinding>(PLAIN),
        builtin::<rbac::v1::Role>(PLAIN),
        builtin::<rbac::v1::RoleBinding>(PLAIN),
        builtin::<scheduling::v1::PriorityClass>(Builtin {
            short_names: &["pc"],
            ..PLAIN
        }),
        builtin::<coordination::v1::Lease>(PLAIN),
        builtin::<CustomResourceDefinition>(Builtin {
            short_names: &["crd", "crds"],
            status: true,
            rules: KindRules::Crd,
            tracks_generation: true,
            ..PLAIN
        }),
    ]
}

/// The served resources, in registration order per group (discovery lists them so).
#[derive(Debug, Clone)]
pub(crate) struct Registry {
    defs: BTreeMap<ResourceId, Arc<ResourceDef>>,
    /// Groups in the order they first appeared; "" is the legacy core group.
    group_order: Vec<String>,
    /// Plurals per group in registration order.
    order: BTreeMap<String, Vec<String>>,
}

impl Registry {
    pub fn with_builtins() -> Self {
        let mut registry = Registry {
            defs: BTreeMap::new(),
            group_order: Vec::new(),
            order: BTreeMap::new(),
        };
        for def in builtins() {
            registry.insert(def);
        }
        registry
    }

    pub fn insert(&mut self, def: ResourceDef) {
        let id = def.id();
        if !self.group_order.contains(&def.group) {
            self.group_order.push(def.group.clone());
        }
        let plurals = self.order.entry(def.group.clone()).or_default();
        if !plurals.contains(&def.plural) {
            plurals.push(def.plural.clone());
        }
        self.defs.insert(id, Arc::new(def));
    }

    pub fn remove(&mut self, id: &ResourceId) -> Option<Arc<ResourceDef>> {
        let removed = self.defs.remove(id)?;
        if let Some(plurals) = self.order.get_mut(&id.0) {
            plurals.retain(|p| p != &id.1);
            if plurals.is_empty() {
                self.order.remove(&id.0);
                self.group_order.retain(|g| g != &id.0);
            }
        }
        Some(removed)
    }

    pub fn get(&self, id: &ResourceId) -> Option<&Arc<ResourceDef>> {
        self.defs.get(id)
    }

    /// The resource served at `group/version/plural`.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.defs
            .get(&(group.to_string(), plural.to_string()))
            .filter(|def| def.version(version).is_some())
            .cloned()
    }

    /// Each group with its served versions, the preferred (storage-version-first) one first.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        self.group_order
            .iter()
            .map(|group| {
                let mut versions: Vec<String> = Vec::new();
                for def in self.in_group(group) {
                    for v in &def.versions {
                        if !versions.contains(&v.name) {
                            versions.push(v.name.clone());
                        }
                    }
                }
                versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
                (group.clone(), versions)
            })
            .collect()
    }

    pub fn in_group(&self, group: &str) -> Vec<Arc<ResourceDef>> {
        self.order
            .get(group)
            .into_iter()
            .flatten()
            .filter_map(|plural| self.defs.get(&(group.to_string(), plural.clone())).cloned())
            .collect()
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<ResourceDef>> {
        self.defs.values()
    }
}

/// Kubernetes' version ordering: GA before beta before alpha, higher numbers first.
pub(crate) fn version_priority(version: &str) -> (u8, u32, u32) {
    let Some(rest) = version.strip_prefix('v') else {
        return (0, 0, 0);
    };
    let digits_end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let Ok(major) = rest[..digits_end].parse::<u32>() else {
        return (0, 0, 0);
    };
    let suffix = &rest[digits_end..];
    let (stage, minor) = if suffix.is_empty() {
        (3, 0)
    } else if let Some(n) = suffix.strip_prefix("beta") {
        (2, n.parse().unwrap_or(0))
    } else if let Some(n) = suffix.strip_prefix("alpha") {
        (1, n.parse().unwrap_or(0))
    } else {
        (0, 0)
    };
    (stage, major, minor)
}
