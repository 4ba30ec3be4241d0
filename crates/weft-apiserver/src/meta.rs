//! Reading and writing `metadata` and other paths of objects kept as JSON values.

use serde_json::{Map, Value};

/// The value at a dotted path (`spec.nodeName`), if every step is an object.
pub(crate) fn get<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(value, |v, key| v.as_object()?.get(key))
}

pub(crate) fn get_str<'a>(value: &'a Value, path: &str) -> Option<&'a str> {
    get(value, path).and_then(Value::as_str)
}

/// The object at `path`, created (with objects for every missing step) if absent. A non-object
/// on the way is replaced.
pub(crate) fn object_at<'a>(value: &'a mut Value, path: &str) -> &'a mut Map<String, Value> {
    let mut current = value;
    for key in path.split('.').filter(|k| !k.is_empty()) {
        current = ensure_object(current)
            .entry(key.to_string())
            .or_insert(Value::Null);
    }
    ensure_object(current)
}

/// `value` as an object, replacing whatever else it was by an empty one.
pub(crate) fn ensure_object(value: &mut Value) -> &mut Map<String, Value> {
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    match value {
        Value::Object(map) => map,
        _ => unreachable!("replaced by an object above"),
    }
}

pub(crate) fn metadata(value: &mut Value) -> &mut Map<String, Value> {
    object_at(value, "metadata")
}

pub(crate) fn set(value: &mut Value, path: &str, new: Value) {
    let (parent, key) = match path.rsplit_once('.') {
        Some((parent, key)) => (object_at(value, parent), key),
        None => (object_at(value, ""), path),
    };
    parent.insert(key.to_string(), new);
}

pub(crate) fn remove(value: &mut Value, path: &str) -> Option<Value> {
    let (parent, key) = match path.rsplit_once('.') {
        Some((parent, key)) => (parent, key),
        None => ("", path),
    };
    let parent = if parent.is_empty() {
        Some(&mut *value)
    } else {
        get_mut(value, parent)
    };
    parent?.as_object_mut()?.remove(key)
}

pub(crate) fn get_mut<'a>(value: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    path.split('.')
        .try_fold(value, |v, key| v.as_object_mut()?.get_mut(key))
}

pub(crate) fn name(value: &Value) -> &str {
    get_str(value, "metadata.name").unwrap_or("")
}

pub(crate) fn namespace(value: &Value) -> &str {
    get_str(value, "metadata.namespace").unwrap_or("")
}

pub(crate) fn uid(value: &Value) -> &str {
    get_str(value, "metadata.uid").unwrap_or("")
}

pub(crate) fn finalizers(value: &Value) -> Vec<String> {
    get(value, "metadata.finalizers")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn is_deleting(value: &Value) -> bool {
    get(value, "metadata.deletionTimestamp").is_some_and(|v| !v.is_null())
}

/// Labels sorted by key, for selector matching.
pub(crate) fn labels(value: &Value) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = get(value, "metadata.labels")
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    labels.sort();
    labels
}

/// A field selector value: strings as they are, booleans and numbers printed, absent as "".
pub(crate) fn field_value(value: &Value, path: &str) -> String {
    match get(value, path) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// Now, as the apiserver writes timestamps (RFC 3339, whole seconds, UTC).
pub(crate) fn now() -> String {
    timestamp_in(0)
}

/// Now plus `seconds`, in the same form.
pub(crate) fn timestamp_in(seconds: i64) -> String {
    let now = jiff::Timestamp::now();
    let whole =
        jiff::Timestamp::from_second(now.as_second().saturating_add(seconds)).unwrap_or(now);
    whole.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Seconds since an RFC 3339 timestamp (negative if it is in the future).
pub(crate) fn seconds_since(timestamp: &str) -> Option<i64> {
    let then: jiff::Timestamp = timestamp.parse().ok()?;
    Some(jiff::Timestamp::now().as_second() - then.as_second())
}

pub(crate) fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The 5 characters the apiserver appends to `generateName` (its alphabet has no vowels and no
/// easily confused characters).
pub(crate) fn generated_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes[..5]
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// A DNS-1123 subdomain (most object names): lowercase alphanumerics, '-' and '.', at most 253.
pub(crate) fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// A DNS-1123 label (namespace and service names): like a subdomain part, at most 63.
pub(crate) fn is_dns_label(name: &str) -> bool {
    name.len() <= 63 && !name.contains('.') && is_dns_subdomain(name)
}

/// Path segment names (RBAC objects may contain ':' and uppercase): anything but '/' and '%',
/// and not "." or "..".
pub(crate) fn is_path_segment_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('%')
}
