//! A CRD's structural `openAPIV3Schema`: validation, pruning of unknown fields and defaulting,
//! for the subset structural schemas use (type, properties, required, items, enum,
//! additionalProperties, nullable, default, x-kubernetes-preserve-unknown-fields,
//! x-kubernetes-int-or-string, x-kubernetes-embedded-resource, format ipv4/cidr, min/max and
//! lengths). Hand-written: no maintained Rust crate implements Kubernetes' structural-schema
//! pruning, which differs from plain JSON Schema validation.

use std::{collections::BTreeMap, net::Ipv4Addr};

use serde_json::{Map, Value};

use crate::error::FieldError;

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Schema {
    type_: Option<String>,
    properties: BTreeMap<String, Schema>,
    required: Vec<String>,
    items: Option<Box<Schema>>,
    enum_values: Option<Vec<Value>>,
    additional: Additional,
    nullable: bool,
    preserve_unknown: bool,
    int_or_string: bool,
    embedded_resource: bool,
    format: Option<String>,
    default: Option<Value>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    min_items: Option<u64>,
    max_items: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
enum Additional {
    /// Unknown properties are pruned.
    #[default]
    Prune,
    /// `additionalProperties: true`: kept as they are.
    Any,
    /// `additionalProperties: {schema}`: a map whose values follow the schema.
    Schema(Box<Schema>),
}

impl Schema {
    /// Reads a `JSONSchemaProps` object. Anything not understood is ignored (it only narrows
    /// what would be accepted), except a malformed shape, which is an error for the CRD.
    pub fn from_value(value: &Value, path: &str) -> Result<Schema, FieldError> {
        let Some(map) = value.as_object() else {
            return Err(FieldError::invalid(path, "", "must be an object"));
        };
        let mut schema = Schema {
            type_: map.get("type").and_then(Value::as_str).map(str::to_string),
            required: string_list(map.get("required")),
            enum_values: map.get("enum").and_then(Value::as_array).cloned(),
            nullable: flag(map, "nullable"),
            preserve_unknown: flag(map, "x-kubernetes-preserve-unknown-fields"),
            int_or_string: flag(map, "x-kubernetes-int-or-string"),
            embedded_resource: flag(map, "x-kubernetes-embedded-resource"),
            format: map
                .get("format")
                .and_then(Value::as_str)
                .map(str::to_string),
            default: map.get("default").cloned(),
            minimum: map.get("minimum").and_then(Value::as_f64),
            maximum: map.get("maximum").and_then(Value::as_f64),
            min_length: map.get("minLength").and_then(Value::as_u64),
            max_length: map.get("maxLength").and_then(Value::as_u64),
            min_items: map.get("minItems").and_then(Value::as_u64),
            max_items: map.get("maxItems").and_then(Value::as_u64),
            ..Schema::default()
        };
        if let Some(props) = map.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                let child = Schema::from_value(prop, &format!("{path}.properties[{name}]"))?;
                schema.properties.insert(name.clone(), child);
            }
        }
        if let Some(items) = map.get("items") {
            schema.items = Some(Box::new(Schema::from_value(
                items,
                &format!("{path}.items"),
            )?));
        }
        schema.additional = match map.get("additionalProperties") {
            Some(Value::Bool(true)) => Additional::Any,
            Some(props @ Value::Object(_)) => Additional::Schema(Box::new(Schema::from_value(
                props,
                &format!("{path}.additionalProperties"),
            )?)),
            _ => Additional::Prune,
        };
        // The apiserver rejects non-structural schemas; the one rule that matters for pruning
        // is that properties and additionalProperties exclude each other.
        if !schema.properties.is_empty() && matches!(schema.additional, Additional::Schema(_)) {
            return Err(FieldError::forbidden(
                format!("{path}.additionalProperties"),
                "additionalProperties and properties are mutual exclusive",
            ));
        }
        Ok(schema)
    }

    /// Checks a custom object's `spec`, `status` and other root fields: unknown fields are
    /// removed, defaults filled in, violations returned. `apiVersion`, `kind` and `metadata`
    /// are the caller's.
    pub fn apply_root(&self, object: &mut Map<String, Value>, errors: &mut Vec<FieldError>) {
        let reserved = ["apiVersion", "kind", "metadata"];
        let keys: Vec<String> = object
            .keys()
            .filter(|k| !reserved.contains(&k.as_str()))
            .cloned()
            .collect();
        for key in keys {
            self.apply_property(object, &key, &key, errors);
        }
        self.fill_defaults(object, "", errors);
        self.check_required(object, "", errors);
    }

    fn apply_property(
        &self,
        map: &mut Map<String, Value>,
        key: &str,
        path: &str,
        errors: &mut Vec<FieldError>,
    ) {
        let child = match self.properties.get(key) {
            Some(child) => Some(child),
            None => match &self.additional {
                Additional::Schema(child) => Some(child.as_ref()),
                Additional::Any => return,
                Additional::Prune if self.preserve_unknown => return,
                Additional::Prune => None,
            },
        };
        let Some(child) = child else {
            map.remove(key);
            return;
        };
        if map.get(key).is_some_and(Value::is_null) && !child.nullable {
            // Structural schemas prune nulls of non-nullable fields (and default them after).
            map.remove(key);
            return;
        }
        if let Some(value) = map.get_mut(key) {
            child.apply(value, path, errors);
        }
    }

    fn apply(&self, value: &mut Value, path: &str, errors: &mut Vec<FieldError>) {
        if value.is_null() {
            if !self.nullable {
                errors.push(FieldError::invalid(
                    path,
                    "\"null\"",
                    &format!(
                        "{path} in body must be of type {}: \"null\"",
                        self.type_name()
                    ),
                ));
            }
            return;
        }
        if !self.type_matches(value) {
            let actual = json_type(value);
            errors.push(FieldError::invalid(
                path,
                format!("\"{actual}\""),
                &format!(
                    "{path} in body must be of type {}: \"{actual}\"",
                    self.type_name()
                ),
            ));
            return;
        }
        self.check_enum(value, path, errors);
        match value {
            Value::Object(map) => self.apply_object(map, path, errors),
            Value::Array(list) => {
                self.check_count(list.len(), path, errors);
                if let Some(items) = &self.items {
                    for (i, item) in list.iter_mut().enumerate() {
                        items.apply(item, &format!("{path}[{i}]"), errors);
                    }
                }
            }
            Value::String(s) => self.check_string(s, path, errors),
            Value::Number(n) => self.check_number(n.as_f64().unwrap_or(0.0), path, errors),
            Value::Bool(_) | Value::Null => {}
        }
    }

    fn apply_object(&self, map: &mut Map<String, Value>, path: &str, errors: &mut Vec<FieldError>) {
        let keys: Vec<String> = map.keys().cloned().collect();
        for key in keys {
            // An embedded resource keeps apiVersion, kind and metadata whatever its schema says.
            if self.embedded_resource && ["apiVersion", "kind", "metadata"].contains(&key.as_str())
            {
                continue;
            }
            self.apply_property(map, &key, &format!("{path}.{key}"), errors);
        }
        self.fill_defaults(map, path, errors);
        self.check_required(map, path, errors);
    }

    fn fill_defaults(
        &self,
        map: &mut Map<String, Value>,
        path: &str,
        errors: &mut Vec<FieldError>,
    ) {
        for (name, child) in &self.properties {
            if map.contains_key(name) {
                continue;
            }
            if let Some(default) = &child.default {
                let mut value = default.clone();
                child.apply(&mut value, &join(path, name), errors);
                map.insert(name.clone(), value);
            }
        }
    }

    fn check_required(&self, map: &Map<String, Value>, path: &str, errors: &mut Vec<FieldError>) {
        for name in &self.required {
            if !map.contains_key(name) {
                errors.push(FieldError::required(join(path, name), ""));
            }
        }
    }

    fn type_matches(&self, value: &Value) -> bool {
        if self.int_or_string {
            return value.is_string() || value.as_i64().is_some() || value.as_u64().is_some();
        }
        match self.type_.as_deref() {
            None => true,
            Some("object") => value.is_object(),
            Some("array") => value.is_array(),
            Some("string") => value.is_string(),
            Some("boolean") => value.is_boolean(),
            Some("number") => value.is_number(),
            Some("integer") => value.is_i64() || value.is_u64(),
            Some(_) => true,
        }
    }

    fn type_name(&self) -> &str {
        if self.int_or_string {
            "integer or string"
        } else {
            self.type_.as_deref().unwrap_or("any")
        }
    }

    fn check_enum(&self, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
        let Some(allowed) = &self.enum_values else {
            return;
        };
        if allowed.contains(value) {
            return;
        }
        let names: Vec<String> = allowed.iter().map(|v| v.to_string()).collect();
        let names: Vec<&str> = names.iter().map(|s| s.trim_matches('"')).collect();
        errors.push(FieldError::not_supported(path, value, &names));
    }

    fn check_count(&self, len: usize, path: &str, errors: &mut Vec<FieldError>) {
        let len = len as u64;
        if self.min_items.is_some_and(|min| len < min) {
            errors.push(FieldError::invalid(
                path,
                len,
                &format!(
                    "{path} in body should have at least {} items",
                    self.min_items.unwrap_or(0)
                ),
            ));
        }
        if self.max_items.is_some_and(|max| len > max) {
            errors.push(FieldError::invalid(
                path,
                len,
                &format!(
                    "{path} in body should have at most {} items",
                    self.max_items.unwrap_or(0)
                ),
            ));
        }
    }

    fn check_string(&self, s: &str, path: &str, errors: &mut Vec<FieldError>) {
        let len = s.chars().count() as u64;
        if let Some(min) = self.min_length.filter(|min| len < *min) {
            errors.push(FieldError::invalid(
                path,
                format!("\"{s}\""),
                &format!("{path} in body should be at least {min} chars long"),
            ));
        }
        if let Some(max) = self.max_length.filter(|max| len > *max) {
            errors.push(FieldError::invalid(
                path,
                format!("\"{s}\""),
                &format!("{path} in body should be at most {max} chars long"),
            ));
        }
        let format_ok = match self.format.as_deref() {
            Some("ipv4") => s.parse::<Ipv4Addr>().is_ok(),
            Some("cidr") => is_cidr(s),
            _ => true,
        };
        if !format_ok {
            let format = self.format.as_deref().unwrap_or_default();
            errors.push(FieldError::invalid(
                path,
                format!("\"{s}\""),
                &format!("{path} in body must be of type {format}: \"{s}\""),
            ));
        }
    }

    fn check_number(&self, n: f64, path: &str, errors: &mut Vec<FieldError>) {
        if let Some(min) = self.minimum.filter(|min| n < *min) {
            errors.push(FieldError::invalid(
                path,
                n,
                &format!("{path} in body should be greater than or equal to {min}"),
            ));
        }
        if let Some(max) = self.maximum.filter(|max| n > *max) {
            errors.push(FieldError::invalid(
                path,
                n,
                &format!("{path} in body should be less than or equal to {max}"),
            ));
        }
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn flag(map: &Map<String, Value>, key: &str) -> bool {
    map.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn string_list(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// An IPv4 or IPv6 CIDR (`format: cidr`).
fn is_cidr(s: &str) -> bool {
    let Some((address, prefix)) = s.split_once('/') else {
        return false;
    };
    let Ok(prefix) = prefix.parse::<u8>() else {
        return false;
    };
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => prefix <= 32,
        Ok(std::net::IpAddr::V6(_)) => prefix <= 128,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn weft_node_schema() -> Schema {
        Schema::from_value(
            &json!({
                "type": "object",
                "properties": {
                    "spec": {
                        "type": "object",
                        "required": ["podCIDR"],
                        "properties": {
                            "podCIDR": {"type": "string", "format": "cidr"},
                            "underlayIP": {"type": "string", "format": "ipv4"},
                            "mode": {"type": "string", "enum": ["tunnel", "native"], "default": "tunnel"},
                            "port": {"x-kubernetes-int-or-string": true},
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                            "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                            "note": {"type": "string", "nullable": true}
                        }
                    },
                    "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
                }
            }),
            "openAPIV3Schema",
        )
        .unwrap()
    }

    fn run(object: Value) -> (Value, Vec<FieldError>) {
        let mut object = object;
        let mut errors = Vec::new();
        weft_node_schema().apply_root(object.as_object_mut().unwrap(), &mut errors);
        (object, errors)
    }

    #[test]
    fn prunes_unknown_fields_defaults_and_keeps_preserved_ones() {
        let (object, errors) = run(json!({
            "apiVersion": "weft.io/v1alpha1", "kind": "WeftNode", "metadata": {"name": "n1"},
            "spec": {"podCIDR": "10.0.1.0/24", "bogus": 1, "labels": {"a": "b"},
                     "extra": {"anything": [1, 2]}, "note": null, "port": "http"},
            "unknownRoot": true
        }));
        assert_eq!(errors, vec![]);
        assert_eq!(
            object,
            json!({
                "apiVersion": "weft.io/v1alpha1", "kind": "WeftNode", "metadata": {"name": "n1"},
                "spec": {"podCIDR": "10.0.1.0/24", "labels": {"a": "b"}, "mode": "tunnel",
                         "extra": {"anything": [1, 2]}, "note": null, "port": "http"}
            })
        );
    }

    #[test]
    fn reports_types_required_enum_and_formats() {
        let (_, errors) = run(json!({
            "spec": {"underlayIP": "300.1.1.1", "mode": "fast", "labels": {"a": 1}, "port": 1.5}
        }));
        let fields: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| (e.field.as_str(), e.reason))
            .collect();
        assert_eq!(
            fields,
            vec![
                ("spec.labels.a", "FieldValueInvalid"),
                ("spec.mode", "FieldValueNotSupported"),
                ("spec.port", "FieldValueInvalid"),
                ("spec.underlayIP", "FieldValueInvalid"),
                ("spec.podCIDR", "FieldValueRequired"),
            ]
        );
        assert!(
            errors[0].message.contains("must be of type string"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn properties_beside_additional_properties_is_refused() {
        let bad = json!({"type": "object", "properties": {"a": {}}, "additionalProperties": {"type": "string"}});
        assert!(Schema::from_value(&bad, "s").is_err());
    }
}
