//! The invocation parameters a runtime passes in environment variables (spec 1.1, section 2).

use std::collections::BTreeMap;

use weft_api::{Attachment, PodRef};

use crate::error::{CniError, code};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn from_env(vars: &BTreeMap<String, String>) -> Result<Self, CniError> {
        let value = vars.get("CNI_COMMAND").map(String::as_str).unwrap_or("");
        match value {
            "ADD" => Ok(Self::Add),
            "DEL" => Ok(Self::Del),
            "CHECK" => Ok(Self::Check),
            "STATUS" => Ok(Self::Status),
            "GC" => Ok(Self::Gc),
            "VERSION" => Ok(Self::Version),
            "" => Err(missing(&["CNI_COMMAND"])),
            other => Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_COMMAND has an unknown value {other:?}"),
                "CNI_COMMAND must be one of ADD, DEL, CHECK, STATUS, GC, VERSION",
            )),
        }
    }

    /// The variables the spec requires for this command (besides CNI_COMMAND).
    fn required(self) -> &'static [&'static str] {
        match self {
            Self::Add | Self::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
            Self::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
            Self::Gc => &["CNI_PATH"],
            Self::Status | Self::Version => &[],
        }
    }
}

/// The parameters of one attachment command (ADD, DEL, CHECK), validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub container_id: String,
    /// Empty when the runtime did not say (allowed for DEL only).
    pub netns: String,
    pub ifname: String,
    pub pod: Option<PodRef>,
}

impl Params {
    pub fn attachment(&self) -> Attachment {
        Attachment {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

/// Checks that every variable the command requires is present, naming all that are missing.
pub fn require(vars: &BTreeMap<String, String>, command: Command) -> Result<(), CniError> {
    let absent: Vec<&str> = command
        .required()
        .iter()
        .copied()
        .filter(|name| vars.get(*name).is_none_or(|v| v.is_empty()))
        .collect();
    if absent.is_empty() {
        Ok(())
    } else {
        Err(missing(&absent))
    }
}

/// Reads and validates the parameters of ADD, DEL or CHECK (call [`require`] first).
pub fn params(vars: &BTreeMap<String, String>) -> Result<Params, CniError> {
    let get = |name: &str| vars.get(name).cloned().unwrap_or_default();
    let container_id = get("CNI_CONTAINERID");
    validate_container_id(&container_id)?;
    let ifname = get("CNI_IFNAME");
    validate_ifname(&ifname)?;
    Ok(Params {
        container_id,
        netns: get("CNI_NETNS"),
        ifname,
        pod: pod_ref(vars.get("CNI_ARGS").map(String::as_str).unwrap_or(""))?,
    })
}

fn missing(names: &[&str]) -> CniError {
    CniError::new(
        code::INVALID_ENV,
        format!(
            "required environment variables [{}] missing",
            names.join(",")
        ),
        "the container runtime must set them (CNI spec 1.1, section 2 \"Parameters\")",
    )
}

fn validate_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_CONTAINERID {id:?} is not a valid container ID"),
            "it must start with a letter or digit, followed by letters, digits, '_', '.' or '-'",
        ))
    }
}

fn validate_ifname(name: &str) -> Result<(), CniError> {
    let bad_char = name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if name.len() > 15 || name == "." || name == ".." || bad_char {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_IFNAME {name:?} is not a valid interface name"),
            "an interface name has 1 to 15 characters, is not '.' or '..', and has no '/', ':' or whitespace",
        ));
    }
    Ok(())
}

/// Parses CNI_ARGS (`K=V;K=V`), returning the Kubernetes pod when both of its keys are there.
/// Unknown keys are ignored; a pair without `=` or with an empty key is refused.
pub fn pod_ref(cni_args: &str) -> Result<Option<PodRef>, CniError> {
    let mut namespace = None;
    let mut name = None;
    for pair in cni_args.split(';').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| {
                CniError::new(
                    code::INVALID_ENV,
                    format!("CNI_ARGS is malformed at {pair:?}"),
                    "CNI_ARGS must be KEY=VALUE pairs separated by ';', e.g. K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
                )
            })?;
        match key {
            "K8S_POD_NAMESPACE" => namespace = Some(value.to_string()),
            "K8S_POD_NAME" => name = Some(value.to_string()),
            _ => {}
        }
    }
    Ok(match (namespace, name) {
        (Some(namespace), Some(name)) if !namespace.is_empty() && !name.is_empty() => {
            Some(PodRef { namespace, name })
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args_yield_the_pod_and_ignore_other_keys() {
        let pod =
            pod_ref("IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=front-0;K8S_POD_UID=x")
                .unwrap();
        assert_eq!(
            pod,
            Some(PodRef {
                namespace: "web".into(),
                name: "front-0".into()
            })
        );
        assert_eq!(pod_ref("").unwrap(), None);
        assert_eq!(pod_ref("K8S_POD_NAME=only-name").unwrap(), None);
    }

    #[test]
    fn malformed_cni_args_are_refused() {
        for bad in ["K8S_POD_NAME", "=x", "A=1;junk"] {
            let err = pod_ref(bad).unwrap_err();
            assert_eq!(err.code, code::INVALID_ENV, "{bad}");
            assert!(err.msg.contains("CNI_ARGS"), "{}", err.msg);
        }
    }

    #[test]
    fn container_ids_and_ifnames_are_validated() {
        assert!(validate_container_id("abc-1_2.3").is_ok());
        assert!(validate_container_id("-abc").is_err());
        assert!(validate_container_id("a b").is_err());
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("a-very-long-name0").is_err());
        assert!(validate_ifname("et/h0").is_err());
        assert!(validate_ifname("..").is_err());
    }
}
