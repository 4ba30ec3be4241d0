//! The whole cluster state behind one lock, and the verbs on it: get, list, create, update,
//! patch, delete, the start of a watch. One cluster-wide resourceVersion counts every change.

use std::{collections::HashMap, ops::ControlFlow, sync::Arc, time::Duration};

use base64::Engine as _;
use bytes::Bytes;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::{
    admission::{AdmissionHook, AdmissionRequest, Operation, ResourceRef, StoreView},
    config::ServerConfig,
    error::{ApiError, FieldError, Subject},
    kinds::{crd, pod, service::Allocator, validate},
    meta,
    patch::{self, PatchType},
    registry::{KindRules, Registry, ResourceDef, ResourceId},
    selector::{FieldSelector, LabelSelector},
    store::{Collection, Event, EventType, ObjKey, Overlay, StoredObject},
};

/// Namespaces that exist from the start; the first three may not be deleted.
pub(crate) const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// The resource a request addresses, at the version it was asked in.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub def: Arc<ResourceDef>,
    pub version: String,
    /// "" for cluster-scoped resources.
    pub namespace: String,
}

impl Target {
    fn subject<'a>(&'a self, name: &'a str) -> Subject<'a> {
        Subject {
            group: &self.def.group,
            plural: &self.def.plural,
            name,
        }
    }
}

/// `fieldValidation`: what happens to fields the kind does not have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    Ignore,
    /// The apiserver's default: dropped, with a `Warning` header.
    #[default]
    Warn,
    /// Refused with 400 (kubectl apply's default).
    Strict,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct WriteOptions {
    pub dry_run: bool,
    pub field_validation: FieldValidation,
    pub field_manager: Option<String>,
    pub force: bool,
    pub subresource: Option<String>,
}

impl WriteOptions {
    fn is_status(&self) -> bool {
        self.subresource.as_deref() == Some("status")
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct DeleteOptions {
    pub grace_period: Option<i64>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub dry_run: bool,
}

/// What a delete did: the object is gone, or it remains until its grace period or finalizers.
#[derive(Debug)]
pub(crate) enum Deleted {
    Gone(Arc<StoredObject>),
    Pending(Arc<StoredObject>),
}

#[derive(Debug, Clone, Default)]
pub(crate) struct ListOptions {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
}

#[derive(Debug)]
pub(crate) struct ListPage {
    pub items: Vec<Arc<StoredObject>>,
    pub resource_version: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct WatchOptions {
    pub resource_version: Option<String>,
    pub send_initial_events: bool,
}

/// A watch's beginning: the events to send first, and the queue of what comes after.
pub(crate) struct WatchStart {
    pub initial: Vec<Arc<Event>>,
    /// With `sendInitialEvents`: the resourceVersion of the bookmark that ends them.
    pub initial_end: Option<u64>,
    pub events: mpsc::Receiver<Arc<Event>>,
}

/// A Pod deleted gracefully, to be removed when its grace period ends.
#[derive(Debug, Clone)]
pub(crate) struct GraceTimer {
    pub id: ResourceId,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub after: Duration,
}

pub(crate) struct State {
    pub rv: u64,
    pub registry: Registry,
    collections: HashMap<ResourceId, Collection>,
    allocator: Allocator,
    hooks: Vec<Arc<dyn AdmissionHook>>,
    config: Arc<ServerConfig>,
    /// Filled by graceful deletes; the server's async side turns them into timers.
    pub timers: Vec<GraceTimer>,
    /// Warnings for the current request (unknown fields), sent as `Warning` headers.
    pub warnings: Vec<String>,
}

fn parse_rv(text: &str) -> Result<u64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {text:?}")))
}

impl State {
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, ApiError> {
        let registry = Registry::with_builtins();
        let collections = registry
            .all()
            .map(|def| (def.id(), Collection::default()))
            .collect();
        let mut state = State {
            rv: 0,
            registry,
            collections,
            allocator: Allocator::new(config.service_cidr, config.node_port_range.clone()),
            hooks: Vec::new(),
            config,
            timers: Vec::new(),
            warnings: Vec::new(),
        };
        let target = state.target("", "v1", "namespaces", "")?;
        for name in SYSTEM_NAMESPACES {
            state.create(
                &target,
                json!({"metadata": {"name": name}}),
                &WriteOptions::default(),
            )?;
        }
        Ok(state)
    }

    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    pub fn add_hook(&mut self, hook: Arc<dyn AdmissionHook>) {
        self.hooks.push(hook);
    }

    /// The request's resource, 404 if it is not served.
    pub fn target(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        namespace: &str,
    ) -> Result<Target, ApiError> {
        let def = self
            .registry
            .lookup(group, version, plural)
            .ok_or_else(ApiError::not_found_path)?;
        let namespace = if def.namespaced {
            namespace.to_string()
        } else {
            String::new()
        };
        Ok(Target {
            def,
            version: version.to_string(),
            namespace,
        })
    }

    fn collection(&self, id: &ResourceId) -> Option<&Collection> {
        self.collections.get(id)
    }

    pub fn watcher_count(&self, group: &str, plural: &str) -> usize {
        self.collection(&(group.to_string(), plural.to_string()))
            .map_or(0, Collection::watcher_count)
    }

    pub fn object_count(&self) -> usize {
        self.collections.values().map(|c| c.objects.len()).sum()
    }

    // ---- reads ----

    pub fn get(&self, t: &Target, name: &str) -> Result<Arc<StoredObject>, ApiError> {
        self.collection(&t.def.id())
            .and_then(|c| c.get(&t.namespace, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(t.subject(name)))
    }

    pub fn list(
        &self,
        t: &Target,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ListPage, ApiError> {
        let empty = Collection::default();
        let collection = self.collection(&t.def.id()).unwrap_or(&empty);
        let (snapshot_rv, after) = match &opts.continue_token {
            Some(token) => {
                let (rv, key) = decode_continue(token)?;
                (Some(rv), Some(key))
            }
            None => {
                let asked = opts
                    .resource_version
                    .as_deref()
                    .filter(|rv| !rv.is_empty())
                    .map(parse_rv)
                    .transpose()?;
                if let Some(asked) = asked
                    && asked > self.rv
                {
                    return Err(ApiError::too_large_resource_version(asked, self.rv));
                }
                let exact = opts.resource_version_match.as_deref() == Some("Exact")
                    || (opts.resource_version_match.is_none()
                        && opts.limit.is_some()
                        && asked.is_some_and(|rv| rv != 0));
                (asked.filter(|_| exact), None)
            }
        };
        let overlay: Option<Overlay> = match snapshot_rv {
            Some(rv) => collection.overlay_at(rv, self.rv).map_err(|e| {
                if opts.continue_token.is_some() {
                    ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results.")
                } else {
                    e
                }
            })?,
            None => None,
        };
        let list_rv = snapshot_rv.unwrap_or(self.rv);
        let limit = opts.limit.filter(|l| *l > 0);
        let mut items = Vec::new();
        let mut more = false;
        let pinned = opts.fields.pinned_name();
        collection.scan(namespace, after.as_ref(), overlay.as_ref(), |object| {
            if pinned.is_some_and(|name| name != object.name) {
                return ControlFlow::Continue(());
            }
            if !matches(object, opts) {
                return ControlFlow::Continue(());
            }
            if limit.is_some_and(|l| items.len() >= l) {
                more = true;
                return ControlFlow::Break(());
            }
            items.push(object.clone());
            ControlFlow::Continue(())
        });
        let continue_token = match (more, items.last()) {
            (true, Some(last)) => Some(encode_continue(list_rv, &last.key())),
            _ => None,
        };
        Ok(ListPage {
            items,
            resource_version: list_rv,
            continue_token,
            remaining: None,
        })
    }

    pub fn watch(
        &mut self,
        t: &Target,
        namespace: Option<&str>,
        opts: &WatchOptions,
        filter: &ListOptions,
    ) -> Result<WatchStart, ApiError> {
        let current = self.rv;
        let asked = opts
            .resource_version
            .as_deref()
            .filter(|rv| !rv.is_empty() && *rv != "0")
            .map(parse_rv)
            .transpose()?;
        if let Some(asked) = asked
            && asked > current
        {
            return Err(ApiError::too_large_resource_version(asked, current));
        }
        let id = t.def.id();
        let collection = self.collections.entry(id).or_default();
        let (initial, initial_end) = match asked {
            Some(rv) if !opts.send_initial_events => (collection.events_after(rv, current)?, None),
            _ => {
                let mut initial = Vec::new();
                collection.scan(namespace, None, None, |object| {
                    if matches(object, filter) {
                        initial.push(Arc::new(Event {
                            rv: object.rv,
                            type_: EventType::Added,
                            object: object.clone(),
                            old: None,
                        }));
                    }
                    ControlFlow::Continue(())
                });
                (initial, opts.send_initial_events.then_some(current))
            }
        };
        let events =
            collection.subscribe(namespace.map(str::to_string), self.config.watch_queue_limit);
        Ok(WatchStart {
            initial,
            initial_end,
            events,
        })
    }

    // ---- writes ----

    /// The body as the stored kind: apiVersion and kind checked, types checked by the
    /// k8s-openapi type (unknown fields dropped) or by the CRD's schema (unknown fields pruned).
    fn decode(&self, t: &Target, body: Value) -> Result<Value, ApiError> {
        let def = &t.def;
        let Value::Object(mut map) = body else {
            return Err(ApiError::bad_request(
                "the body of the request must be a JSON object",
            ));
        };
        let expected = def.api_version(&t.version);
        match map.get("apiVersion").and_then(Value::as_str) {
            Some(v) if v != expected => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({expected})"
                )));
            }
            _ => map.insert("apiVersion".to_string(), json!(expected)),
        };
        match map.get("kind").and_then(Value::as_str) {
            Some(k) if k != def.kind => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    def.kind
                )));
            }
            _ => map.insert("kind".to_string(), json!(def.kind)),
        };
        let name = map
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut value = match def.normalize {
            Some(normalize) => normalize(Value::Object(map))
                .map_err(|e| decode_error(def, &t.version, &name, &e))?,
            None => self.decode_custom(t, map, &name)?,
        };
        meta::ensure_object(&mut value).insert(
            "apiVersion".to_string(),
            json!(def.api_version(&def.storage_version)),
        );
        Ok(value)
    }

    /// [`Self::decode`], with fields the kind does not have reported as `fieldValidation` asks.
    fn decode_checked(
        &mut self,
        t: &Target,
        body: Value,
        validation: FieldValidation,
    ) -> Result<Value, ApiError> {
        if validation == FieldValidation::Ignore {
            return self.decode(t, body);
        }
        let decoded = self.decode(t, body.clone())?;
        let mut unknown = Vec::new();
        dropped_fields(&body, &decoded, "", &mut unknown);
        match (validation, unknown.is_empty()) {
            (_, true) | (FieldValidation::Ignore, _) => {}
            (FieldValidation::Strict, false) => {
                let fields: Vec<String> = unknown
                    .iter()
                    .map(|f| format!("unknown field \"{f}\""))
                    .collect();
                return Err(ApiError::bad_request(format!(
                    "strict decoding error: {}",
                    fields.join(", ")
                )));
            }
            (FieldValidation::Warn, false) => {
                self.warnings
                    .extend(unknown.iter().map(|f| format!("unknown field \"{f}\"")));
            }
        }
        Ok(decoded)
    }

    fn decode_custom(
        &self,
        t: &Target,
        mut map: serde_json::Map<String, Value>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let def = &t.def;
        let metadata = map.remove("metadata").unwrap_or(json!({}));
        let metadata: ObjectMeta = serde_json::from_value(metadata)
            .map_err(|e| decode_error(def, &t.version, name, &e))?;
        let metadata =
            serde_json::to_value(metadata).map_err(|e| ApiError::internal(e.to_string()))?;
        map.insert("metadata".to_string(), metadata);
        let mut errors = Vec::new();
        if let Some(schema) = def.version(&t.version).and_then(|v| v.schema.clone()) {
            schema.apply_root(&mut map, &mut errors);
        }
        if !errors.is_empty() {
            return Err(ApiError::invalid(&def.kind, &def.group, name, errors));
        }
        Ok(Value::Object(map))
    }

    fn invalid(&self, t: &Target, name: &str, errors: Vec<FieldError>) -> ApiError {
        ApiError::invalid(&t.def.kind, &t.def.group, name, errors)
    }

    fn admit(
        &self,
        t: &Target,
        operation: Operation,
        name: &str,
        old: Option<&Value>,
        object: Option<&mut Value>,
        opts: &WriteOptions,
    ) -> Result<(), ApiError> {
        if self.hooks.is_empty() {
            return Ok(());
        }
        let mut object = object;
        for hook in &self.hooks {
            let mut request = AdmissionRequest {
                operation,
                resource: ResourceRef {
                    group: &t.def.group,
                    version: &t.version,
                    resource: &t.def.plural,
                    kind: &t.def.kind,
                    subresource: opts.subresource.as_deref(),
                },
                namespace: &t.namespace,
                name,
                old_object: old,
                object: object.as_deref_mut(),
                dry_run: opts.dry_run,
                store: self,
            };
            hook.admit(&mut request)?;
        }
        Ok(())
    }

    fn check_namespace_open(&self, namespace: &str) -> Result<(), ApiError> {
        let id = (String::new(), "namespaces".to_string());
        let Some(ns) = self.collection(&id).and_then(|c| c.get("", namespace)) else {
            return Err(ApiError::not_found(Subject {
                group: "",
                plural: "namespaces",
                name: namespace,
            }));
        };
        if ns
            .fields
            .first()
            .is_some_and(|phase| phase == "Terminating")
        {
            return Err(ApiError::forbidden(format!(
                "unable to create new content in namespace {namespace} because it is being terminated"
            )));
        }
        Ok(())
    }

    fn name_errors(def: &ResourceDef, name: &str) -> Option<FieldError> {
        let ok = match def.rules {
            KindRules::Namespace | KindRules::Service => meta::is_dns_label(name),
            _ if def.group == "rbac.authorization.k8s.io" => meta::is_path_segment_name(name),
            _ => meta::is_dns_subdomain(name),
        };
        (!ok).then(|| {
            FieldError::invalid(
                "metadata.name",
                format!("\"{name}\""),
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            )
        })
    }

    pub fn create(
        &mut self,
        t: &Target,
        body: Value,
        opts: &WriteOptions,
    ) -> Result<Arc<StoredObject>, ApiError> {
        let value = self.decode_checked(t, body, opts.field_validation)?;
        self.create_decoded(t, value, opts, false)
    }

    fn create_decoded(
        &mut self,
        t: &Target,
        mut value: Value,
        opts: &WriteOptions,
        keep_managed_fields: bool,
    ) -> Result<Arc<StoredObject>, ApiError> {
        let def = t.def.clone();
        let body_namespace = meta::namespace(&value).to_string();
        if def.namespaced {
            if !body_namespace.is_empty() && body_namespace != t.namespace {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            if t.namespace.is_empty() {
                return Err(ApiError::not_found_path());
            }
            meta::metadata(&mut value).insert("namespace".to_string(), json!(t.namespace));
            self.check_namespace_open(&t.namespace)?;
        } else {
            meta::metadata(&mut value).remove("namespace");
        }
        let name = self.choose_name(t, &mut value)?;
        if let Some(error) = Self::name_errors(&def, &name) {
            return Err(self.invalid(t, &name, vec![error]));
        }
        if self
            .collection(&def.id())
            .and_then(|c| c.get(&t.namespace, &name))
            .is_some()
        {
            return Err(ApiError::already_exists(t.subject(&name)));
        }
        if meta::get_str(&value, "metadata.resourceVersion").is_some_and(|rv| !rv.is_empty()) {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let md = meta::metadata(&mut value);
        md.insert("uid".to_string(), json!(meta::new_uid()));
        md.insert("creationTimestamp".to_string(), json!(meta::now()));
        md.remove("deletionTimestamp");
        md.remove("deletionGracePeriodSeconds");
        md.remove("selfLink");
        if !keep_managed_fields {
            md.remove("managedFields");
        }
        if def.tracks_generation {
            md.insert("generation".to_string(), json!(1));
        } else {
            md.remove("generation");
        }
        self.prepare_create(t, &name, &mut value)?;
        self.admit(t, Operation::Create, &name, None, Some(&mut value), opts)?;
        if def.normalize.is_some() {
            value = self.decode(
                &Target {
                    version: def.storage_version.clone(),
                    ..t.clone()
                },
                value,
            )?;
        }
        if opts.dry_run {
            return Ok(Arc::new(StoredObject::new(&def, &value, 0)?));
        }
        self.commit(&def, None, Some(value))
    }

    fn choose_name(&self, t: &Target, value: &mut Value) -> Result<String, ApiError> {
        let name = meta::name(value).to_string();
        if !name.is_empty() {
            return Ok(name);
        }
        let prefix = meta::get_str(value, "metadata.generateName")
            .unwrap_or("")
            .to_string();
        if prefix.is_empty() {
            return Err(self.invalid(
                t,
                "",
                vec![FieldError::required(
                    "metadata.name",
                    "name or generateName is required",
                )],
            ));
        }
        let collection = self.collection(&t.def.id());
        for _ in 0..8 {
            let candidate = format!("{prefix}{}", meta::generated_suffix());
            if collection
                .and_then(|c| c.get(&t.namespace, &candidate))
                .is_none()
            {
                meta::metadata(value).insert("name".to_string(), json!(candidate));
                return Ok(candidate);
            }
        }
        Err(ApiError::new(
            500,
            "ServerTimeout",
            "could not generate a unique name; try again",
        ))
    }

    fn prepare_create(
        &mut self,
        t: &Target,
        name: &str,
        value: &mut Value,
    ) -> Result<(), ApiError> {
        let errors = validate::check(t.def.rules, &t.def.kind, value);
        if !errors.is_empty() {
            return Err(self.invalid(t, name, errors));
        }
        match t.def.rules {
            KindRules::Pod => pod::prepare_create(value),
            KindRules::Service => {
                meta::set(value, "status", json!({"loadBalancer": {}}));
                self.allocator
                    .prepare(value, None)
                    .map_err(|e| self.invalid(t, name, e))?;
            }
            KindRules::Namespace => {
                meta::set(value, "spec", json!({"finalizers": ["kubernetes"]}));
                meta::set(value, "status", json!({"phase": "Active"}));
                let labels = meta::object_at(value, "metadata.labels");
                labels.insert("kubernetes.io/metadata.name".to_string(), json!(name));
            }
            KindRules::Crd => {
                let def = crd::resource_def(value).map_err(|e| self.invalid(t, name, e))?;
                self.check_crd_names(t, name, &def)?;
                crd::set_status(value, &def.storage_version);
            }
            KindRules::Custom => {
                if t.def.has_status(&t.version) {
                    meta::remove(value, "status");
                }
            }
            KindRules::Generic | KindRules::Node | KindRules::EndpointSlice => {}
        }
        Ok(())
    }

    fn check_crd_names(&self, t: &Target, name: &str, def: &ResourceDef) -> Result<(), ApiError> {
        if let Some(existing) = self.registry.get(&def.id())
            && existing.rules != KindRules::Custom
        {
            return Err(self.invalid(
                t,
                name,
                vec![FieldError::invalid(
                    "spec.names.plural",
                    format!("\"{}\"", def.plural),
                    "is already served by a built-in resource",
                )],
            ));
        }
        Ok(())
    }

    pub fn update(
        &mut self,
        t: &Target,
        name: &str,
        body: Value,
        opts: &WriteOptions,
    ) -> Result<Arc<StoredObject>, ApiError> {
        let old = self.get(t, name)?;
        let old_value = old.value()?;
        let new = self.decode_checked(t, body, opts.field_validation)?;
        let body_name = meta::name(&new);
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let body_namespace = meta::namespace(&new);
        if t.def.namespaced && !body_namespace.is_empty() && body_namespace != t.namespace {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        self.update_decoded(t, name, &old, &old_value, new, opts, false)
    }

    #[allow(clippy::too_many_arguments)]
    fn update_decoded(
        &mut self,
        t: &Target,
        name: &str,
        old: &Arc<StoredObject>,
        old_value: &Value,
        mut new: Value,
        opts: &WriteOptions,
        keep_managed_fields: bool,
    ) -> Result<Arc<StoredObject>, ApiError> {
        let def = t.def.clone();
        if let Some(rv) =
            meta::get_str(&new, "metadata.resourceVersion").filter(|rv| !rv.is_empty())
            && rv != old.rv.to_string()
        {
            return Err(ApiError::modified(t.subject(name)));
        }
        if opts.is_status() {
            let status = meta::get(&new, "status").cloned();
            let managed = meta::get(&new, "metadata.managedFields").cloned();
            new = old_value.clone();
            match status {
                Some(status) => meta::set(&mut new, "status", status),
                None => {
                    meta::remove(&mut new, "status");
                }
            }
            if keep_managed_fields && let Some(managed) = managed {
                meta::metadata(&mut new).insert("managedFields".to_string(), managed);
            }
        } else if def.has_status(&def.storage_version) {
            match meta::get(old_value, "status").cloned() {
                Some(status) => meta::set(&mut new, "status", status),
                None => {
                    meta::remove(&mut new, "status");
                }
            }
        }
        carry_server_metadata(old_value, &mut new, keep_managed_fields);
        if meta::is_deleting(old_value) {
            let before = meta::finalizers(old_value);
            if meta::finalizers(&new).iter().any(|f| !before.contains(f)) {
                return Err(self.invalid(
                    t,
                    name,
                    vec![FieldError::forbidden(
                        "metadata.finalizers",
                        "no new finalizers can be added if the object is being deleted",
                    )],
                ));
            }
        }
        self.prepare_update(t, name, old_value, &mut new, opts)?;
        self.admit(
            t,
            Operation::Update,
            name,
            Some(old_value),
            Some(&mut new),
            opts,
        )?;
        if def.normalize.is_some() {
            new = self.decode(
                &Target {
                    version: def.storage_version.clone(),
                    ..t.clone()
                },
                new,
            )?;
        }
        if def.tracks_generation && spec_changed(&def, old_value, &new) {
            let generation = meta::get(old_value, "metadata.generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta::metadata(&mut new).insert("generation".to_string(), json!(generation + 1));
        }
        if same_ignoring_rv(old_value, &new) {
            return Ok(old.clone());
        }
        if opts.dry_run {
            return Ok(Arc::new(StoredObject::new(&def, &new, old.rv)?));
        }
        let finished = meta::is_deleting(&new)
            && meta::finalizers(&new).is_empty()
            && meta::get(&new, "metadata.deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                == 0;
        if finished {
            return self.commit_removal(&def, old, new);
        }
        self.commit(&def, Some((old, old_value)), Some(new))
    }

    fn prepare_update(
        &mut self,
        t: &Target,
        name: &str,
        old: &Value,
        new: &mut Value,
        opts: &WriteOptions,
    ) -> Result<(), ApiError> {
        if opts.is_status() {
            return Ok(());
        }
        let errors = validate::check(t.def.rules, &t.def.kind, new);
        if !errors.is_empty() {
            return Err(self.invalid(t, name, errors));
        }
        match t.def.rules {
            KindRules::Pod => {
                pod::default_spec(new);
                pod::check_update(old, new).map_err(|e| self.invalid(t, name, e))?
            }
            KindRules::Service => self
                .allocator
                .prepare(new, Some(old))
                .map_err(|e| self.invalid(t, name, e))?,
            KindRules::Namespace => match meta::get(old, "spec").cloned() {
                Some(spec) => meta::set(new, "spec", spec),
                None => {
                    meta::remove(new, "spec");
                }
            },
            KindRules::Crd => {
                let def = crd::resource_def(new).map_err(|e| self.invalid(t, name, e))?;
                if meta::get(old, "spec.scope") != meta::get(new, "spec.scope") {
                    return Err(self.invalid(
                        t,
                        name,
                        vec![FieldError::invalid(
                            "spec.scope",
                            meta::get(new, "spec.scope").cloned().unwrap_or(Value::Null),
                            "field is immutable",
                        )],
                    ));
                }
                if meta::get(old, "spec.group") != meta::get(new, "spec.group")
                    || meta::get(old, "spec.names.plural") != meta::get(new, "spec.names.plural")
                {
                    return Err(self.invalid(
                        t,
                        name,
                        vec![FieldError::invalid(
                            "spec.names.plural",
                            "",
                            "field is immutable",
                        )],
                    ));
                }
                meta::set(
                    new,
                    "status",
                    meta::get(old, "status").cloned().unwrap_or(json!({})),
                );
                crd::set_status(new, &def.storage_version);
            }
            KindRules::Generic | KindRules::Node | KindRules::EndpointSlice | KindRules::Custom => {
            }
        }
        Ok(())
    }

    pub fn patch(
        &mut self,
        t: &Target,
        name: &str,
        type_: PatchType,
        body: &[u8],
        opts: &WriteOptions,
    ) -> Result<(Arc<StoredObject>, bool), ApiError> {
        let patch_value = parse_patch_body(type_, body)?;
        if type_ == PatchType::Apply {
            return self.apply(t, name, &patch_value, opts);
        }
        let old = self.get(t, name)?;
        let old_value = old.value()?;
        let mut patched = old_value.clone();
        match type_ {
            PatchType::Json => patch::json_patch(&mut patched, &patch_value)?,
            PatchType::Merge => patch::merge_patch(&mut patched, &patch_value),
            PatchType::Strategic => {
                patch::strategic_merge(&mut patched, &patch_value, t.def.rules)?
            }
            PatchType::Apply => {}
        }
        if meta::name(&patched) != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta::name(&patched)
            )));
        }
        let storage = Target {
            version: t.def.storage_version.clone(),
            ..t.clone()
        };
        let new = self.decode_checked(&storage, patched, opts.field_validation)?;
        Ok((
            self.update_decoded(t, name, &old, &old_value, new, opts, false)?,
            false,
        ))
    }

    fn apply(
        &mut self,
        t: &Target,
        name: &str,
        config: &Value,
        opts: &WriteOptions,
    ) -> Result<(Arc<StoredObject>, bool), ApiError> {
        let Some(manager) = opts.field_manager.as_deref().filter(|m| !m.is_empty()) else {
            return Err(ApiError::invalid(
                "PatchOptions",
                "meta.k8s.io",
                "",
                vec![FieldError::required(
                    "fieldManager",
                    "is required for apply patch",
                )],
            ));
        };
        let config_name = meta::name(config);
        if config_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({config_name}) does not match the name on the URL ({name})"
            )));
        }
        let existing = self
            .collection(&t.def.id())
            .and_then(|c| c.get(&t.namespace, name))
            .cloned();
        let api_version = t.def.api_version(&t.version);
        match existing {
            None => {
                if opts.is_status() {
                    return Err(ApiError::not_found(t.subject(name)));
                }
                let applied =
                    patch::server_side_apply(None, config, manager, opts.force, &api_version)?;
                let value = self.decode_checked(t, applied, opts.field_validation)?;
                Ok((self.create_decoded(t, value, opts, true)?, true))
            }
            Some(old) => {
                let old_value = old.value()?;
                let mut live = old_value.clone();
                meta::ensure_object(&mut live).insert("apiVersion".to_string(), json!(api_version));
                let applied = patch::server_side_apply(
                    Some(&live),
                    config,
                    manager,
                    opts.force,
                    &api_version,
                )?;
                let new = self.decode_checked(t, applied, opts.field_validation)?;
                Ok((
                    self.update_decoded(t, name, &old, &old_value, new, opts, true)?,
                    false,
                ))
            }
        }
    }

    /// `pods/<name>/binding`: sets the node once.
    pub fn bind(
        &mut self,
        t: &Target,
        name: &str,
        binding: &Value,
        dry_run: bool,
    ) -> Result<(), ApiError> {
        let node = meta::get_str(binding, "target.name")
            .unwrap_or("")
            .to_string();
        if node.is_empty() {
            return Err(ApiError::invalid(
                "Binding",
                "",
                name,
                vec![FieldError::required("target.name", "")],
            ));
        }
        let old = self.get(t, name)?;
        let old_value = old.value()?;
        if let Some(uid) = meta::get_str(binding, "metadata.uid").filter(|u| !u.is_empty())
            && uid != meta::uid(&old_value)
        {
            return Err(ApiError::conflict(
                t.subject(name),
                "Precondition failed: UID in precondition does not match",
            ));
        }
        let mut new = old_value.clone();
        pod::bind(&mut new, &node)
            .map_err(|message| ApiError::conflict(t.subject(name), &message))?;
        let opts = WriteOptions {
            dry_run,
            subresource: Some("binding".to_string()),
            ..WriteOptions::default()
        };
        self.admit(
            t,
            Operation::Update,
            name,
            Some(&old_value),
            Some(&mut new),
            &opts,
        )?;
        if !dry_run {
            self.commit(&t.def.clone(), Some((&old, &old_value)), Some(new))?;
        }
        Ok(())
    }

    pub fn delete(
        &mut self,
        t: &Target,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Deleted, ApiError> {
        let old = self.get(t, name)?;
        let old_value = old.value()?;
        if let Some(uid) = opts.uid.as_deref()
            && uid != meta::uid(&old_value)
        {
            return Err(ApiError::conflict(
                t.subject(name),
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta::uid(&old_value)
                ),
            ));
        }
        if let Some(rv) = opts.resource_version.as_deref()
            && rv != old.rv.to_string()
        {
            return Err(ApiError::conflict(
                t.subject(name),
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    old.rv
                ),
            ));
        }
        if t.def.rules == KindRules::Namespace && SYSTEM_NAMESPACES[..3].contains(&name) {
            return Err(ApiError::forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        let write = WriteOptions {
            dry_run: opts.dry_run,
            ..WriteOptions::default()
        };
        self.admit(t, Operation::Delete, name, Some(&old_value), None, &write)?;
        if opts.dry_run {
            return Ok(Deleted::Gone(old));
        }
        self.delete_object(&t.def.clone(), &old, old_value, opts.grace_period)
    }

    /// Deletes with the kind's semantics: a Pod on a node gets its grace period, an object with
    /// finalizers is marked and kept, a Namespace empties itself first, the rest goes at once.
    fn delete_object(
        &mut self,
        def: &Arc<ResourceDef>,
        old: &Arc<StoredObject>,
        old_value: Value,
        requested_grace: Option<i64>,
    ) -> Result<Deleted, ApiError> {
        if def.rules == KindRules::Namespace {
            return self.delete_namespace(def, old, old_value);
        }
        let grace = if def.rules == KindRules::Pod {
            pod::grace_period(&old_value, requested_grace)
        } else {
            0
        };
        let current_grace =
            meta::get(&old_value, "metadata.deletionGracePeriodSeconds").and_then(Value::as_i64);
        let deleting = meta::is_deleting(&old_value);
        if grace > 0 {
            if deleting && current_grace.is_some_and(|g| g <= grace) {
                return Ok(Deleted::Pending(old.clone()));
            }
            let mut new = old_value.clone();
            let md = meta::metadata(&mut new);
            md.insert(
                "deletionTimestamp".to_string(),
                json!(meta::timestamp_in(grace)),
            );
            md.insert("deletionGracePeriodSeconds".to_string(), json!(grace));
            let object = self.commit(def, Some((old, &old_value)), Some(new))?;
            self.timers.push(GraceTimer {
                id: def.id(),
                namespace: old.namespace.clone(),
                name: old.name.clone(),
                uid: meta::uid(&old_value).to_string(),
                after: Duration::from_secs(grace.unsigned_abs()),
            });
            return Ok(Deleted::Pending(object));
        }
        if !meta::finalizers(&old_value).is_empty() {
            if deleting && current_grace == Some(0) {
                return Ok(Deleted::Pending(old.clone()));
            }
            let mut new = old_value.clone();
            let md = meta::metadata(&mut new);
            if !deleting {
                md.insert("deletionTimestamp".to_string(), json!(meta::now()));
            }
            md.insert("deletionGracePeriodSeconds".to_string(), json!(0));
            return Ok(Deleted::Pending(self.commit(
                def,
                Some((old, &old_value)),
                Some(new),
            )?));
        }
        Ok(Deleted::Gone(self.commit_removal(def, old, old_value)?))
    }

    /// The namespace controller's part, done here: the Namespace turns Terminating, everything
    /// in it is deleted (Pods gracefully), and it goes once it is empty.
    fn delete_namespace(
        &mut self,
        def: &Arc<ResourceDef>,
        old: &Arc<StoredObject>,
        old_value: Value,
    ) -> Result<Deleted, ApiError> {
        let name = old.name.clone();
        let mut current = old.clone();
        if !meta::is_deleting(&old_value) {
            let mut new = old_value.clone();
            let md = meta::metadata(&mut new);
            md.insert("deletionTimestamp".to_string(), json!(meta::now()));
            md.insert("deletionGracePeriodSeconds".to_string(), json!(0));
            meta::set(&mut new, "status.phase", json!("Terminating"));
            current = self.commit(def, Some((old, &old_value)), Some(new))?;
        }
        let namespaced: Vec<Arc<ResourceDef>> = self
            .registry
            .all()
            .filter(|d| d.namespaced)
            .cloned()
            .collect();
        for content_def in namespaced {
            let objects: Vec<Arc<StoredObject>> = self
                .collection(&content_def.id())
                .map(|c| {
                    let mut found = Vec::new();
                    c.scan(Some(&name), None, None, |o| {
                        found.push(o.clone());
                        ControlFlow::Continue(())
                    });
                    found
                })
                .unwrap_or_default();
            for object in objects {
                let value = object.value()?;
                self.delete_object(&content_def, &object, value, None)?;
            }
        }
        self.finalize_namespace_if_empty(&name)?;
        match self.collection(&def.id()).and_then(|c| c.get("", &name)) {
            Some(still) => Ok(Deleted::Pending(still.clone())),
            None => Ok(Deleted::Gone(current)),
        }
    }

    fn namespace_is_empty(&self, namespace: &str) -> bool {
        self.registry.all().filter(|d| d.namespaced).all(|def| {
            let mut empty = true;
            if let Some(c) = self.collection(&def.id()) {
                c.scan(Some(namespace), None, None, |_| {
                    empty = false;
                    ControlFlow::Break(())
                });
            }
            empty
        })
    }

    fn finalize_namespace_if_empty(&mut self, namespace: &str) -> Result<(), ApiError> {
        let id = (String::new(), "namespaces".to_string());
        let Some(def) = self.registry.get(&id).cloned() else {
            return Ok(());
        };
        let Some(ns) = self
            .collection(&id)
            .and_then(|c| c.get("", namespace))
            .cloned()
        else {
            return Ok(());
        };
        let value = ns.value()?;
        if !meta::is_deleting(&value) || !self.namespace_is_empty(namespace) {
            return Ok(());
        }
        let mut new = value.clone();
        meta::remove(&mut new, "spec.finalizers");
        if meta::finalizers(&new).is_empty() {
            self.commit_removal(&def, &ns, new)?;
        } else if new != value {
            self.commit(&def, Some((&ns, &value)), Some(new))?;
        }
        Ok(())
    }

    /// A grace period ended: the Pod goes if it is still the one deleted then.
    pub fn expire_grace(&mut self, timer: &GraceTimer) -> Result<(), ApiError> {
        let Some(def) = self.registry.get(&timer.id).cloned() else {
            return Ok(());
        };
        let Some(object) = self
            .collection(&timer.id)
            .and_then(|c| c.get(&timer.namespace, &timer.name))
            .cloned()
        else {
            return Ok(());
        };
        let value = object.value()?;
        let due = meta::get_str(&value, "metadata.deletionTimestamp")
            .and_then(meta::seconds_since)
            .is_some_and(|s| s >= 0);
        if meta::uid(&value) != timer.uid || !due {
            return Ok(());
        }
        self.delete_object(&def, &object, value, Some(0))
            .map(|_| ())
    }

    // ---- storing ----

    fn commit_removal(
        &mut self,
        def: &Arc<ResourceDef>,
        old: &Arc<StoredObject>,
        last: Value,
    ) -> Result<Arc<StoredObject>, ApiError> {
        let old_value = old.value()?;
        self.store_event(def, Some((old, &old_value)), last, EventType::Deleted)
    }

    fn commit(
        &mut self,
        def: &Arc<ResourceDef>,
        old: Option<(&Arc<StoredObject>, &Value)>,
        new: Option<Value>,
    ) -> Result<Arc<StoredObject>, ApiError> {
        match (old, new) {
            (None, Some(new)) => self.store_event(def, None, new, EventType::Added),
            (Some(old), Some(new)) => self.store_event(def, Some(old), new, EventType::Modified),
            (Some(old), None) => {
                self.store_event(def, Some(old), old.1.clone(), EventType::Deleted)
            }
            (None, None) => Err(ApiError::internal("nothing to store")),
        }
    }

    fn store_event(
        &mut self,
        def: &Arc<ResourceDef>,
        old: Option<(&Arc<StoredObject>, &Value)>,
        mut value: Value,
        type_: EventType,
    ) -> Result<Arc<StoredObject>, ApiError> {
        let rv = self.rv + 1;
        meta::metadata(&mut value).insert("resourceVersion".to_string(), json!(rv.to_string()));
        let object = Arc::new(StoredObject::new(def, &value, rv)?);
        self.rv = rv;
        if def.rules == KindRules::Service {
            let new = (type_ != EventType::Deleted).then_some(&value);
            self.allocator.on_commit(old.map(|o| o.1), new);
        }
        let history_size = self.config.history_size;
        let event = Event {
            rv,
            type_,
            object: object.clone(),
            old: old.map(|o| o.0.clone()),
        };
        self.collections
            .entry(def.id())
            .or_default()
            .record(event, history_size);
        self.after_commit(def, type_, &value)?;
        Ok(object)
    }

    fn after_commit(
        &mut self,
        def: &Arc<ResourceDef>,
        type_: EventType,
        value: &Value,
    ) -> Result<(), ApiError> {
        match (def.rules, type_) {
            (KindRules::Crd, EventType::Added | EventType::Modified) => {
                if let Ok(custom) = crd::resource_def(value) {
                    self.collections.entry(custom.id()).or_default();
                    self.registry.insert(custom);
                }
            }
            (KindRules::Crd, EventType::Deleted) => {
                if let Ok(custom) = crd::resource_def(value) {
                    self.remove_custom_resource(&custom.id())?;
                }
            }
            (_, EventType::Deleted) if def.namespaced => {
                let namespace = meta::namespace(value).to_string();
                self.finalize_namespace_if_empty(&namespace)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// A CRD went: its objects are deleted (watchers see each go), then its watches end.
    fn remove_custom_resource(&mut self, id: &ResourceId) -> Result<(), ApiError> {
        let Some(def) = self.registry.get(id).cloned() else {
            return Ok(());
        };
        let objects: Vec<Arc<StoredObject>> = self
            .collection(id)
            .map(|c| c.objects.values().cloned().collect())
            .unwrap_or_default();
        for object in objects {
            let value = object.value()?;
            self.commit_removal(&def, &object, value)?;
        }
        self.collections.remove(id);
        self.registry.remove(id);
        Ok(())
    }
}

impl StoreView for State {
    fn get(&self, group: &str, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.collection(&(group.to_string(), resource.to_string()))?
            .get(namespace, name)?
            .value()
            .ok()
    }

    fn list(&self, group: &str, resource: &str, namespace: Option<&str>) -> Vec<Value> {
        let mut out = Vec::new();
        if let Some(c) = self.collection(&(group.to_string(), resource.to_string())) {
            c.scan(namespace, None, None, |o| {
                if let Ok(v) = o.value() {
                    out.push(v);
                }
                ControlFlow::Continue(())
            });
        }
        out
    }
}

/// The object as served at `version` (CRD versions share storage; only apiVersion differs).
pub(crate) fn render(def: &ResourceDef, version: &str, object: &StoredObject) -> Bytes {
    if version == def.storage_version {
        return object.json.clone();
    }
    match object.value() {
        Ok(mut value) => {
            meta::ensure_object(&mut value)
                .insert("apiVersion".to_string(), json!(def.api_version(version)));
            serde_json::to_vec(&value)
                .map(Bytes::from)
                .unwrap_or_else(|_| object.json.clone())
        }
        Err(_) => object.json.clone(),
    }
}

/// Paths present (and not null) in `before` that decoding dropped.
fn dropped_fields(before: &Value, after: &Value, path: &str, out: &mut Vec<String>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            for (key, value) in b {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match a.get(key) {
                    None if !value.is_null() => out.push(child),
                    Some(after) => dropped_fields(value, after, &child, out),
                    None => {}
                }
            }
        }
        (Value::Array(b), Value::Array(a)) => {
            for (i, (value, after)) in b.iter().zip(a).enumerate() {
                dropped_fields(value, after, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

pub(crate) fn matches(object: &StoredObject, opts: &ListOptions) -> bool {
    opts.labels.matches(&object.labels)
        && opts
            .fields
            .matches(&object.namespace, &object.name, &object.fields)
}

fn decode_error(
    def: &ResourceDef,
    version: &str,
    name: &str,
    error: &serde_json::Error,
) -> ApiError {
    let message = error.to_string();
    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or("");
        return ApiError::invalid(
            &def.kind,
            &def.group,
            name,
            vec![FieldError::required(field, "")],
        );
    }
    ApiError::bad_request(format!(
        "{} in version \"{version}\" cannot be handled as a {}: {message}",
        def.kind, def.kind
    ))
}

/// The fields a client cannot set: kept from the stored object.
fn carry_server_metadata(old: &Value, new: &mut Value, keep_new_managed_fields: bool) {
    let mut keys = vec![
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "generateName",
    ];
    if !keep_new_managed_fields {
        keys.push("managedFields");
    }
    let old_md = old
        .get("metadata")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let new_md = meta::metadata(new);
    for key in keys {
        match old_md.get(key) {
            Some(v) => new_md.insert(key.to_string(), v.clone()),
            None => new_md.remove(key),
        };
    }
    for key in ["name", "namespace"] {
        match old_md.get(key) {
            Some(v) => new_md.insert(key.to_string(), v.clone()),
            None => new_md.remove(key),
        };
    }
}

/// Whether a change counts for `metadata.generation`: the spec for built-ins, everything but
/// metadata and status for custom resources.
fn spec_changed(def: &ResourceDef, old: &Value, new: &Value) -> bool {
    if def.rules == KindRules::Custom {
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(map) = v.as_object_mut() {
                map.remove("metadata");
                map.remove("status");
                map.remove("apiVersion");
            }
            v
        };
        return strip(old) != strip(new);
    }
    old.get("spec") != new.get("spec")
}

fn same_ignoring_rv(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        meta::remove(&mut v, "metadata.resourceVersion");
        v
    };
    strip(old) == strip(new)
}

fn parse_patch_body(type_: PatchType, body: &[u8]) -> Result<Value, ApiError> {
    let parsed = match serde_json::from_slice::<Value>(body) {
        Ok(v) => Ok(v),
        Err(json_error) if type_ == PatchType::Apply => serde_norway::from_slice::<Value>(body)
            .map_err(|e| format!("{json_error}; as YAML: {e}")),
        Err(e) => Err(e.to_string()),
    };
    parsed.map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: u64,
    namespace: String,
    name: String,
}

fn encode_continue(rv: u64, key: &ObjKey) -> String {
    let token = ContinueToken {
        rv,
        namespace: key.0.clone(),
        name: key.1.clone(),
    };
    let json = serde_json::to_vec(&token).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

fn decode_continue(token: &str) -> Result<(u64, ObjKey), ApiError> {
    let bad = || ApiError::bad_request(format!("invalid continue token {token:?}"));
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let token: ContinueToken = serde_json::from_slice(&json).map_err(|_| bad())?;
    Ok((token.rv, (token.namespace, token.name)))
}
