//! A container's `env` and what it becomes when the pod runs: literal values, fields of the pod
//! through `valueFrom.fieldRef`, and `$(VAR)` references expanded as the kubelet expands them
//! (in values, `command` and `args`).
//!
//! Of the `valueFrom` sources only `fieldRef` of [`SUPPORTED_FIELD_PATHS`] resolves here; the
//! others (`secretKeyRef`, `configMapKeyRef`, ...) are parsed and named, so whoever runs the
//! pod can refuse it with a clear error instead of running it without the variable.

use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::{Deserialize, de::IgnoredAny};

/// One entry of a container's `env`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub value_from: Option<EnvVarSource>,
}

/// `valueFrom`: exactly one source.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawEnvVarSource")]
pub enum EnvVarSource {
    /// `fieldRef.fieldPath`.
    Field(String),
    /// Any other source, by its key (`secretKeyRef`, `configMapKeyRef`, `resourceFieldRef`).
    Other(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEnvVarSource {
    #[serde(default)]
    field_ref: Option<FieldRef>,
    #[serde(flatten)]
    others: BTreeMap<String, IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FieldRef {
    field_path: String,
}

impl TryFrom<RawEnvVarSource> for EnvVarSource {
    type Error = String;

    fn try_from(raw: RawEnvVarSource) -> Result<Self, String> {
        let mut others = raw.others.into_keys();
        match (raw.field_ref, others.next(), others.next()) {
            (Some(field), None, _) => Ok(EnvVarSource::Field(field.field_path)),
            (None, Some(other), None) => Ok(EnvVarSource::Other(other)),
            _ => Err("valueFrom names exactly one source".to_string()),
        }
    }
}

/// The `fieldRef` paths that resolve when the pod runs.
pub const SUPPORTED_FIELD_PATHS: [&str; 4] = [
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "status.podIP",
];

/// What a supported `fieldRef` may name: the pod's own fields once it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFields {
    pub name: String,
    pub namespace: String,
    pub node_name: String,
    pub pod_ip: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error(
        "env {name}: valueFrom.{key} is not supported (only valueFrom.fieldRef of {})",
        SUPPORTED_FIELD_PATHS.join(", ")
    )]
    UnsupportedSource { name: String, key: String },
    #[error(
        "env {name}: fieldRef `{path}` is not supported (only {})",
        SUPPORTED_FIELD_PATHS.join(", ")
    )]
    UnsupportedField { name: String, path: String },
}

impl EnvVar {
    /// What Kubernetes' validation refuses: an empty name or one with `=`, and a value next
    /// to a `valueFrom`.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.name.is_empty() || self.name.contains('=') {
            return Err(format!(
                "env name `{}` must be non-empty and hold no `=`",
                self.name
            ));
        }
        if self.value_from.is_some() && self.value.as_deref().is_some_and(|v| !v.is_empty()) {
            return Err(format!(
                "env {}: `value` may not be given together with `valueFrom`",
                self.name
            ));
        }
        Ok(())
    }

    /// Its value, before `$(VAR)` expansion; an error when it comes from a source that does
    /// not resolve here.
    fn raw_value(&self, pod: &PodFields) -> Result<String, EnvError> {
        match &self.value_from {
            None => Ok(self.value.clone().unwrap_or_default()),
            Some(EnvVarSource::Field(path)) => field_value(&self.name, path, pod),
            Some(EnvVarSource::Other(source)) => Err(EnvError::UnsupportedSource {
                name: self.name.clone(),
                key: source.clone(),
            }),
        }
    }

    /// Whether the variable resolves once the pod runs (what can be checked before it runs).
    pub fn check_supported(&self) -> Result<(), EnvError> {
        let pod = PodFields {
            name: String::new(),
            namespace: String::new(),
            node_name: String::new(),
            pod_ip: Ipv4Addr::UNSPECIFIED,
        };
        self.raw_value(&pod).map(drop)
    }
}

fn field_value(name: &str, path: &str, pod: &PodFields) -> Result<String, EnvError> {
    match path {
        "metadata.name" => Ok(pod.name.clone()),
        "metadata.namespace" => Ok(pod.namespace.clone()),
        "spec.nodeName" => Ok(pod.node_name.clone()),
        "status.podIP" => Ok(pod.pod_ip.to_string()),
        _ => Err(EnvError::UnsupportedField {
            name: name.to_string(),
            path: path.to_string(),
        }),
    }
}

/// The environment of a container of `pod`, in order: each value with the `$(VAR)` references
/// to variables defined before it expanded, as the kubelet does. A name given twice keeps the
/// last value.
pub fn resolve_env(env: &[EnvVar], pod: &PodFields) -> Result<Vec<(String, String)>, EnvError> {
    let mut defined: BTreeMap<&str, String> = BTreeMap::new();
    let mut out: Vec<(String, String)> = Vec::new();
    for var in env {
        let value = expand(&var.raw_value(pod)?, |name| {
            defined.get(name).map(String::as_str)
        });
        defined.insert(&var.name, value.clone());
        out.retain(|(name, _)| name != &var.name);
        out.push((var.name.clone(), value));
    }
    Ok(out)
}

/// A container's `command` followed by its `args`, with `$(VAR)` references to `env`
/// expanded.
pub fn expand_argv(command: &[String], args: &[String], env: &[(String, String)]) -> Vec<String> {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    command
        .iter()
        .chain(args)
        .map(|word| expand(word, lookup))
        .collect()
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced by its value, an undefined
/// one is left as written, `$$` is a literal `$`, and any other `$` stays as it is.
// Hand-written: the rules are Kubernetes' own (third_party/forked/golang/expansion), which no
// Rust crate implements; shell-style crates expand `$VAR` and `${VAR}` instead.
pub fn expand<'a>(input: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(reference) = after.strip_prefix('(')
            && let Some(close) = reference.find(')')
        {
            let name = &reference[..close];
            match lookup(name) {
                Some(value) => out.push_str(value),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &reference[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodFields {
        PodFields {
            name: "web".into(),
            namespace: "shop".into(),
            node_name: "vps2".into(),
            pod_ip: Ipv4Addr::new(10, 42, 1, 10),
        }
    }

    fn env(yaml: &str) -> Vec<EnvVar> {
        serde_norway::from_str(yaml).expect("env parses")
    }

    fn vars(env: &[(String, String)]) -> Vec<(&str, &str)> {
        env.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect()
    }

    #[test]
    fn values_and_the_pods_fields_resolve_in_order_with_references_expanded() {
        let env = env("
- {name: GREETING, value: hello}
- {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
- {name: POD_NAMESPACE, valueFrom: {fieldRef: {apiVersion: v1, fieldPath: metadata.namespace}}}
- {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
- {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
- {name: URL, value: 'http://$(POD_IP):80/$(LATER)/$$(POD_IP)'}
- {name: LATER, value: x}
- {name: GREETING, value: '$(GREETING) again'}
- {name: EMPTY}
");
        let resolved = resolve_env(&env, &pod()).expect("resolves");
        assert_eq!(
            vars(&resolved),
            [
                ("POD_NAME", "web"),
                ("POD_NAMESPACE", "shop"),
                ("POD_IP", "10.42.1.10"),
                ("NODE", "vps2"),
                ("URL", "http://10.42.1.10:80/$(LATER)/$(POD_IP)"),
                ("LATER", "x"),
                ("GREETING", "hello again"),
                ("EMPTY", ""),
            ]
        );
        assert_eq!(
            expand_argv(
                &["sh".into(), "-c".into()],
                &["echo $(POD_IP) $(LATER) $HOME $(NOPE)".into()],
                &resolved
            ),
            ["sh", "-c", "echo 10.42.1.10 x $HOME $(NOPE)"]
        );
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let lookup = |name: &str| (name == "A").then_some("1");
        for (input, expanded) in [
            ("$(A)", "1"),
            ("x$(A)y$(A)", "x1y1"),
            ("$(B)", "$(B)"),
            ("$$(A)", "$(A)"),
            ("$$", "$"),
            ("$$$(A)", "$1"),
            ("$A", "$A"),
            ("$(A", "$(A"),
            ("a$", "a$"),
            ("", ""),
            ("é$(A)é", "é1é"),
        ] {
            assert_eq!(expand(input, lookup), expanded, "{input}");
        }
    }

    #[test]
    fn other_sources_and_fields_are_named_in_the_error() {
        let env = env("
- {name: TOKEN, valueFrom: {secretKeyRef: {name: s, key: k}}}
- {name: UID, valueFrom: {fieldRef: {fieldPath: metadata.uid}}}
");
        let err = env[0].check_supported().unwrap_err();
        assert_eq!(
            err.to_string(),
            "env TOKEN: valueFrom.secretKeyRef is not supported (only valueFrom.fieldRef of \
             metadata.name, metadata.namespace, spec.nodeName, status.podIP)"
        );
        let err = env[1].check_supported().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("env UID: fieldRef `metadata.uid` is not supported"),
            "{err}"
        );
        assert!(resolve_env(&env, &pod()).is_err());
    }

    #[test]
    fn what_kubernetes_refuses_is_refused() {
        let two: Result<Vec<EnvVar>, _> = serde_norway::from_str(
            "[{name: A, valueFrom: {fieldRef: {fieldPath: metadata.name}, secretKeyRef: {key: k}}}]",
        );
        assert!(
            two.unwrap_err().to_string().contains("exactly one source"),
            "two sources"
        );
        let none: Result<Vec<EnvVar>, _> = serde_norway::from_str("[{name: A, valueFrom: {}}]");
        assert!(none.is_err(), "no source");
        for (yaml, says) in [
            (
                "{name: A, value: x, valueFrom: {fieldRef: {fieldPath: metadata.name}}}",
                "may not be given together",
            ),
            ("{name: 'A=B', value: x}", "hold no `=`"),
            ("{name: '', value: x}", "non-empty"),
        ] {
            let var: EnvVar = serde_norway::from_str(yaml).expect("parses");
            let err = var.check().unwrap_err();
            assert!(err.contains(says), "{yaml}: {err}");
        }
    }
}
