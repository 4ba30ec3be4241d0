//! The REST surface: paths, query parameters and content negotiation, mapped onto the
//! state's verbs.

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    discovery,
    error::{ApiError, success_status},
    patch::PatchType,
    selector::{FieldSelector, LabelSelector},
    server::{Body, Inner},
    state::{
        DeleteOptions, Deleted, FieldValidation, ListOptions, ListPage, State, Target,
        WatchOptions, WriteOptions, render,
    },
    store::StoredObject,
    table::{IncludeObject, TableRenderer},
    watch::{self, EventFormat, WatchParams},
};

type Query = HashMap<String, String>;

fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

fn respond(code: u16, content_type: &str, bytes: Bytes) -> Response<Body> {
    let mut response = Response::new(full(bytes));
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

fn json_bytes(code: u16, bytes: Bytes) -> Response<Body> {
    respond(code, "application/json", bytes)
}

fn typed<T: Serialize>(code: u16, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => json_bytes(code, Bytes::from(bytes)),
        Err(e) => error_response(&ApiError::internal(e.to_string())),
    }
}

pub(crate) fn error_response(error: &ApiError) -> Response<Body> {
    typed(error.code, &error.to_status())
}

/// What the client wants back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Json,
    Table(IncludeObject),
    Metadata,
}

fn want(headers: &HeaderMap, query: &Query) -> Want {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // The first acceptable media type wins; kubectl lists Table first, plain JSON last.
    for media in accept.split(',') {
        let params: Vec<&str> = media.split(';').map(str::trim).collect();
        let as_ = params.iter().find_map(|p| p.strip_prefix("as="));
        match as_ {
            Some("Table") => {
                return Want::Table(IncludeObject::parse(
                    query.get("includeObject").map(String::as_str),
                ));
            }
            Some("PartialObjectMetadata" | "PartialObjectMetadataList") => return Want::Metadata,
            Some(_) => continue,
            None => return Want::Json,
        }
    }
    Want::Json
}

/// A request for objects, parsed from its path.
struct ResourcePath {
    namespace: Option<String>,
    plural: String,
    name: Option<String>,
    subresource: Option<String>,
}

pub(crate) async fn handle(
    inner: Arc<Inner>,
    method: Method,
    uri: http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let query: Query = uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let path = uri.path().trim_matches('/');
    let segments: Vec<&str> = if path.is_empty() {
        Vec::new()
    } else {
        path.split('/').collect()
    };
    tracing::debug!(%method, %uri, "request");
    let result = match segments.as_slice() {
        [] => Ok(typed(
            200,
            &json!({"paths": ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/readyz", "/version"]}),
        )),
        ["version"] => Ok(typed(200, &version_info(&inner))),
        ["healthz" | "readyz" | "livez", ..] => Ok(respond(
            200,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"ok"),
        )),
        ["api"] => Ok(typed(
            200,
            &discovery::api_versions(inner.config.advertise_address),
        )),
        ["apis"] => Ok(typed(200, &discovery::group_list(&inner.lock().registry))),
        ["openapi", "v3"] => Ok(typed(
            200,
            &discovery::openapi_v3_index(&inner.lock().registry),
        )),
        ["openapi", "v3", "api", version] => openapi_document(&inner, "", version),
        ["openapi", "v3", "apis", group, version] => openapi_document(&inner, group, version),
        ["api", version] => resource_list(&inner, "", version),
        ["apis", group] => discovery::api_group(&inner.lock().registry, group)
            .map(|g| typed(200, &g))
            .ok_or_else(ApiError::not_found_path),
        ["apis", group, version] => resource_list(&inner, group, version),
        ["api", version, rest @ ..] => {
            resource_request(&inner, "", version, rest, method, &headers, &query, body).await
        }
        ["apis", group, version, rest @ ..] => {
            resource_request(&inner, group, version, rest, method, &headers, &query, body).await
        }
        _ => Err(ApiError::not_found_path()),
    };
    result.unwrap_or_else(|e| error_response(&e))
}

fn version_info(inner: &Inner) -> Value {
    json!({
        "major": "1",
        "minor": "34",
        "gitVersion": inner.config.git_version,
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "weft",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

fn openapi_document(inner: &Inner, group: &str, version: &str) -> Result<Response<Body>, ApiError> {
    let state = inner.lock();
    discovery::openapi_v3_document(&state.registry, group, version)
        .map(|doc| typed(200, &doc))
        .ok_or_else(ApiError::not_found_path)
}

fn resource_list(inner: &Inner, group: &str, version: &str) -> Result<Response<Body>, ApiError> {
    let state = inner.lock();
    discovery::resource_list(&state.registry, group, version)
        .map(|list| typed(200, &list))
        .ok_or_else(ApiError::not_found_path)
}

fn parse_resource_path(
    inner: &Inner,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Result<ResourcePath, ApiError> {
    let owned = |s: &&str| s.to_string();
    let namespaced_request = match rest {
        ["namespaces", _, plural, ..] => {
            inner
                .lock()
                .registry
                .lookup(group, version, plural)
                .is_some_and(|def| def.namespaced)
                || (group.is_empty() && *plural == "bindings")
        }
        _ => false,
    };
    let (namespace, tail) = if namespaced_request {
        (rest.get(1).map(owned), &rest[2..])
    } else {
        (None, rest)
    };
    match tail {
        [plural] => Ok(ResourcePath {
            namespace,
            plural: plural.to_string(),
            name: None,
            subresource: None,
        }),
        [plural, name] => Ok(ResourcePath {
            namespace,
            plural: plural.to_string(),
            name: Some(name.to_string()),
            subresource: None,
        }),
        [plural, name, sub] => Ok(ResourcePath {
            namespace,
            plural: plural.to_string(),
            name: Some(name.to_string()),
            subresource: Some(sub.to_string()),
        }),
        _ => Err(ApiError::not_found_path()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn resource_request(
    inner: &Arc<Inner>,
    group: &str,
    version: &str,
    rest: &[&str],
    method: Method,
    headers: &HeaderMap,
    query: &Query,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let path = parse_resource_path(inner, group, version, rest)?;
    if group.is_empty()
        && path.plural == "bindings"
        && method == Method::POST
        && path.name.is_none()
    {
        let binding = decode_body(headers, &body)?;
        let pod = binding
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        return bind(
            inner,
            version,
            path.namespace.as_deref().unwrap_or(""),
            &pod,
            &binding,
            query,
        );
    }
    let target = inner.lock().target(
        group,
        version,
        &path.plural,
        path.namespace.as_deref().unwrap_or(""),
    )?;
    if target.def.namespaced && path.namespace.is_none() && path.name.is_some() {
        return Err(ApiError::not_found_path());
    }
    match path.subresource.as_deref() {
        None => {}
        Some("status") if target.def.has_status(version) => {}
        Some("binding")
            if target.def.rules == crate::registry::KindRules::Pod && method == Method::POST =>
        {
            let binding = decode_body(headers, &body)?;
            let name = path.name.clone().unwrap_or_default();
            return bind(inner, version, &target.namespace, &name, &binding, query);
        }
        Some(_) => return Err(ApiError::not_found_path()),
    }
    let want = want(headers, query);
    let write = write_options(query, path.subresource.clone());
    match (method, path.name.as_deref()) {
        (Method::GET, None) if is_watch(query) => {
            watch(inner, &target, path.namespace, query, want)
        }
        (Method::GET, None) => list(inner, &target, path.namespace.as_deref(), query, want),
        (Method::GET, Some(name)) => {
            let object = inner.lock().get(&target, name)?;
            Ok(object_response(200, &target, &object, want))
        }
        (Method::POST, None) => {
            let value = decode_body(headers, &body)?;
            let (object, warnings) =
                inner.mutate(|state| warned(state, |s| s.create(&target, value, &write)));
            Ok(with_warnings(
                object_response(201, &target, object?.as_ref(), want),
                warnings,
            ))
        }
        (Method::PUT, Some(name)) => {
            let value = decode_body(headers, &body)?;
            let (object, warnings) =
                inner.mutate(|state| warned(state, |s| s.update(&target, name, value, &write)));
            Ok(with_warnings(
                object_response(200, &target, object?.as_ref(), want),
                warnings,
            ))
        }
        (Method::PATCH, Some(name)) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let type_ = PatchType::from_content_type(content_type)
                .ok_or_else(|| ApiError::unsupported_media_type(content_type))?;
            let (object, created) =
                inner.mutate(|state| state.patch(&target, name, type_, &body, &write))?;
            Ok(object_response(
                if created { 201 } else { 200 },
                &target,
                &object,
                want,
            ))
        }
        (Method::DELETE, Some(name)) => {
            let options = delete_options(query, headers, &body)?;
            let deleted = inner.mutate(|state| state.delete(&target, name, &options))?;
            Ok(delete_response(&target, deleted, want))
        }
        (Method::DELETE, None) => delete_collection(
            inner,
            &target,
            path.namespace.as_deref(),
            query,
            headers,
            &body,
        ),
        (method, _) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method})"
        ))),
    }
}

fn bind(
    inner: &Arc<Inner>,
    version: &str,
    namespace: &str,
    name: &str,
    binding: &Value,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let target = inner.lock().target("", version, "pods", namespace)?;
    let dry_run = query.get("dryRun").is_some_and(|v| v == "All");
    inner.mutate(|state| state.bind(&target, name, binding, dry_run))?;
    Ok(typed(201, &success_status("", "pods", name, None)))
}

/// Runs a write and collects the warnings it raised.
fn warned<R>(state: &mut State, write: impl FnOnce(&mut State) -> R) -> (R, Vec<String>) {
    state.take_warnings();
    let result = write(state);
    (result, state.take_warnings())
}

/// `Warning: 299 - "..."` headers, as the apiserver sends them (kubectl prints them).
fn with_warnings(mut response: Response<Body>, warnings: Vec<String>) -> Response<Body> {
    for warning in warnings {
        let text = format!("299 - {warning:?}");
        if let Ok(value) = http::HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

fn is_watch(query: &Query) -> bool {
    query.get("watch").is_some_and(|v| v == "true" || v == "1")
}

fn write_options(query: &Query, subresource: Option<String>) -> WriteOptions {
    WriteOptions {
        dry_run: query.get("dryRun").is_some_and(|v| v == "All"),
        field_validation: match query.get("fieldValidation").map(String::as_str) {
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            _ => FieldValidation::Warn,
        },
        field_manager: query.get("fieldManager").cloned(),
        force: query.get("force").is_some_and(|v| v == "true" || v == "1"),
        subresource,
    }
}

/// JSON, or YAML for `application/yaml` bodies.
fn decode_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let media = content_type.split(';').next().unwrap_or("").trim();
    match media {
        "application/json" | "" | "*/*" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON body: {e}"))),
        "application/yaml" | "application/x-yaml" | "text/yaml" => serde_norway::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML body: {e}"))),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

fn list_options(target: &Target, query: &Query) -> Result<ListOptions, ApiError> {
    Ok(ListOptions {
        labels: LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))?,
        fields: FieldSelector::parse(
            query.get("fieldSelector").map(String::as_str).unwrap_or(""),
            target.def.field_keys,
        )?,
        resource_version: query.get("resourceVersion").cloned(),
        resource_version_match: query
            .get("resourceVersionMatch")
            .cloned()
            .filter(|m| !m.is_empty()),
        limit: match query.get("limit") {
            Some(limit) => Some(
                limit
                    .parse()
                    .map_err(|_| ApiError::bad_request(format!("invalid limit {limit:?}")))?,
            ),
            None => None,
        },
        continue_token: query.get("continue").cloned().filter(|c| !c.is_empty()),
    })
}

fn list(
    inner: &Arc<Inner>,
    target: &Target,
    namespace: Option<&str>,
    query: &Query,
    want: Want,
) -> Result<Response<Body>, ApiError> {
    let options = list_options(target, query)?;
    if let Some(m) = options.resource_version_match.as_deref()
        && !["Exact", "NotOlderThan"].contains(&m)
    {
        return Err(ApiError::bad_request(format!(
            "unsupported resourceVersionMatch {m:?}"
        )));
    }
    let page = inner.lock().list(target, namespace, &options)?;
    Ok(match want {
        Want::Table(include) => {
            let renderer = TableRenderer {
                def: target.def.clone(),
                version: target.version.clone(),
                include,
            };
            json_bytes(
                200,
                renderer.render_objects(
                    page.items.iter().map(Arc::as_ref),
                    page.resource_version,
                    page.continue_token.as_deref(),
                ),
            )
        }
        Want::Metadata => json_bytes(
            200,
            list_body(
                "PartialObjectMetadataList",
                "meta.k8s.io/v1",
                &page,
                metadata_object,
            ),
        ),
        Want::Json => {
            let api_version = target.def.api_version(&target.version);
            json_bytes(
                200,
                list_body(&target.def.list_kind, &api_version, &page, |o| {
                    render(&target.def, &target.version, o)
                }),
            )
        }
    })
}

/// A list response written around the stored objects' bytes, without parsing them.
fn list_body(
    kind: &str,
    api_version: &str,
    page: &ListPage,
    item: impl Fn(&StoredObject) -> Bytes,
) -> Bytes {
    let mut metadata = json!({"resourceVersion": page.resource_version.to_string()});
    if let Some(token) = &page.continue_token {
        metadata["continue"] = json!(token);
    }
    if let Some(remaining) = page.remaining {
        metadata["remainingItemCount"] = json!(remaining);
    }
    let head = json!({"kind": kind, "apiVersion": api_version, "metadata": metadata}).to_string();
    let size: usize = page.items.iter().map(|o| o.json.len() + 1).sum();
    let mut out = BytesMut::with_capacity(head.len() + size + 16);
    out.put_slice(&head.as_bytes()[..head.len() - 1]);
    out.put_slice(b",\"items\":[");
    for (i, object) in page.items.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(&item(object));
    }
    out.put_slice(b"]}");
    out.freeze()
}

pub(crate) fn metadata_object(object: &StoredObject) -> Bytes {
    let metadata = object
        .value()
        .ok()
        .and_then(|v| v.get("metadata").cloned())
        .unwrap_or(json!({}));
    Bytes::from(json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": metadata}).to_string())
}

fn object_response(
    code: u16,
    target: &Target,
    object: &StoredObject,
    want: Want,
) -> Response<Body> {
    match want {
        Want::Table(include) => {
            let renderer = TableRenderer {
                def: target.def.clone(),
                version: target.version.clone(),
                include,
            };
            json_bytes(code, renderer.render_objects([object], object.rv, None))
        }
        Want::Metadata => json_bytes(code, metadata_object(object)),
        Want::Json => json_bytes(code, render(&target.def, &target.version, object)),
    }
}

fn delete_response(target: &Target, deleted: Deleted, want: Want) -> Response<Body> {
    match deleted {
        Deleted::Pending(object) => object_response(202, target, &object, want),
        Deleted::Gone(object) if target.def.rules == crate::registry::KindRules::Pod => {
            object_response(200, target, &object, want)
        }
        Deleted::Gone(object) => {
            let uid = object
                .value()
                .ok()
                .map(|v| crate::meta::uid(&v).to_string());
            typed(
                200,
                &success_status(&target.def.group, &target.def.plural, &object.name, uid),
            )
        }
    }
}

fn delete_options(
    query: &Query,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<DeleteOptions, ApiError> {
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        decode_body(headers, body)?
    };
    let grace_period = match query.get("gracePeriodSeconds") {
        Some(g) => Some(
            g.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}")))?,
        ),
        None => body.get("gracePeriodSeconds").and_then(Value::as_i64),
    };
    let dry_run = query.get("dryRun").is_some_and(|v| v == "All")
        || body
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|v| v == "All"));
    let preconditions = body.get("preconditions");
    Ok(DeleteOptions {
        grace_period,
        uid: preconditions
            .and_then(|p| p.get("uid"))
            .and_then(Value::as_str)
            .map(str::to_string),
        resource_version: preconditions
            .and_then(|p| p.get("resourceVersion"))
            .and_then(Value::as_str)
            .map(str::to_string),
        dry_run,
    })
}

fn delete_collection(
    inner: &Arc<Inner>,
    target: &Target,
    namespace: Option<&str>,
    query: &Query,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let mut options = list_options(target, query)?;
    options.limit = None;
    options.continue_token = None;
    let delete = delete_options(query, headers, body)?;
    let deleted = inner.mutate(|state| -> Result<Vec<Arc<StoredObject>>, ApiError> {
        let page = state.list(target, namespace, &options)?;
        let mut deleted = Vec::new();
        for object in page.items {
            let scoped = Target {
                namespace: object.namespace.clone(),
                ..target.clone()
            };
            match state.delete(&scoped, &object.name, &delete) {
                Ok(Deleted::Gone(o) | Deleted::Pending(o)) => deleted.push(o),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    })?;
    let rv = inner.lock().rv;
    let page = ListPage {
        items: deleted,
        resource_version: rv,
        continue_token: None,
        remaining: None,
    };
    let api_version = target.def.api_version(&target.version);
    Ok(json_bytes(
        200,
        list_body(&target.def.list_kind, &api_version, &page, |o| {
            render(&target.def, &target.version, o)
        }),
    ))
}

fn watch(
    inner: &Arc<Inner>,
    target: &Target,
    namespace: Option<String>,
    query: &Query,
    want: Want,
) -> Result<Response<Body>, ApiError> {
    let filter = list_options(target, query)?;
    let options = WatchOptions {
        resource_version: query.get("resourceVersion").cloned(),
        send_initial_events: query.get("sendInitialEvents").is_some_and(|v| v == "true"),
    };
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    if options.send_initial_events
        && (!bookmarks || filter.resource_version_match.as_deref() != Some("NotOlderThan"))
    {
        return Err(ApiError::invalid(
            "ListOptions",
            "meta.k8s.io",
            "",
            vec![crate::error::FieldError::forbidden(
                "sendInitialEvents",
                "sendInitialEvents is forbidden unless allowWatchBookmarks=true and resourceVersionMatch=NotOlderThan",
            )],
        ));
    }
    let timeout = match query.get("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
        ),
        None => inner.config.default_watch_timeout,
    };
    let start = inner
        .lock()
        .watch(target, namespace.as_deref(), &options, &filter);
    let start = match start {
        Ok(start) => start,
        Err(e) if e.code == 410 || e.code == 504 => {
            return Ok(respond(200, "application/json", watch::error_stream(&e)));
        }
        Err(e) => return Err(e),
    };
    let format = match want {
        Want::Table(include) => EventFormat::Table(TableRenderer {
            def: target.def.clone(),
            version: target.version.clone(),
            include,
        }),
        Want::Metadata => EventFormat::Metadata,
        Want::Json => EventFormat::Object,
    };
    let params = WatchParams {
        def: target.def.clone(),
        version: target.version.clone(),
        namespace,
        filter,
        bookmarks,
        timeout,
        format,
    };
    let body = StreamBody::new(watch::stream(inner.clone(), params, start));
    let mut response = Response::new(BodyExt::boxed_unsync(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache, private"),
    );
    Ok(response)
}
