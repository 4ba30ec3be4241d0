//! The network configuration a runtime writes on stdin (spec 1.1, section 1), as this plugin
//! reads it: the single-plugin object, possibly carrying `prevResult` (conflists) and, for GC,
//! `cni.dev/valid-attachments`.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;
use weft_api::Attachment;

use crate::error::{CniError, code};

/// Spec versions this plugin speaks, oldest first (VERSION reports them).
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The version used for errors when the input does not say which one it speaks.
pub const DEFAULT_VERSION: &str = "1.1.0";

/// A spec version, comparable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('.').map(|p| p.parse::<u32>().ok());
        let version = Self(parts.next()??, parts.next()??, parts.next()??);
        parts.next().is_none().then_some(version)
    }
}

#[derive(Clone, Debug, Deserialize)]
struct Raw {
    #[serde(rename = "cniVersion", default)]
    cni_version: String,
    #[serde(default)]
    name: String,
    #[serde(rename = "type", default)]
    plugin_type: String,
    #[serde(rename = "agentSocket")]
    agent_socket: Option<String>,
    #[serde(default)]
    ipam: Option<Value>,
    #[serde(rename = "prevResult")]
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<ValidAttachment>>,
}

#[derive(Clone, Debug, Deserialize)]
struct ValidAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// A validated network configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    /// The version string exactly as given (echoed in results).
    pub cni_version: String,
    pub version: Version,
    pub name: String,
    pub agent_socket: PathBuf,
    /// The result of the previous plugin in a chain, or of the last ADD (CHECK, DEL).
    pub prev_result: Option<serde_json::Map<String, Value>>,
    /// GC only: the attachments the runtime still knows.
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// The `cniVersion` of the input when it can be read at all, to answer errors in that version.
pub fn sniff_version(stdin: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(stdin).ok()?;
    let version = value.get("cniVersion")?.as_str()?;
    Version::parse(version).map(|_| version.to_string())
}

/// Decodes and validates the configuration.
pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
    let raw: Raw = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            "cannot decode the network configuration on stdin",
            format!("expected a JSON network configuration object: {e}"),
        )
    })?;
    let version = check_version(&raw.cni_version)?;
    validate_name(&raw.name)?;
    check_unsupported(&raw)?;
    Ok(NetConf {
        version,
        name: raw.name,
        agent_socket: agent_socket(raw.agent_socket)?,
        prev_result: prev_result(raw.prev_result)?,
        valid_attachments: raw.valid_attachments.map(|list| {
            list.into_iter()
                .map(|a| Attachment {
                    container_id: a.container_id,
                    ifname: a.ifname,
                })
                .collect()
        }),
        cni_version: raw.cni_version,
    })
}

fn check_version(text: &str) -> Result<Version, CniError> {
    match Version::parse(text) {
        Some(v) if SUPPORTED_VERSIONS.contains(&text) => Ok(v),
        _ => Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            format!(
                "config is {:?}, plugin supports [{}]",
                text,
                SUPPORTED_VERSIONS.join(", ")
            ),
        )),
    }
}

fn validate_name(name: &str) -> Result<(), CniError> {
    if name.is_empty() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "missing network name",
            "the network configuration needs a \"name\"",
        ));
    }
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        Ok(())
    } else {
        Err(CniError::new(
            code::INVALID_CONFIG,
            format!("invalid network name {name:?}"),
            "a network name starts with a letter or digit, followed by letters, digits, '_', '.' or '-'",
        ))
    }
}

/// `ipam` is the agent's job here: a config that asks for an IPAM plugin would be silently
/// ignored, so it is refused (code 2 names the field and its value).
fn check_unsupported(raw: &Raw) -> Result<(), CniError> {
    let ipam_given = match &raw.ipam {
        None | Some(Value::Null) => false,
        Some(Value::Object(map)) => !map.is_empty(),
        Some(_) => true,
    };
    if ipam_given {
        let value = raw.ipam.as_ref().map(Value::to_string).unwrap_or_default();
        return Err(CniError::new(
            code::UNSUPPORTED_FIELD,
            format!("unsupported field ipam={value}"),
            "weft-cni gets addresses from the Weft agent; remove \"ipam\" from the configuration",
        ));
    }
    if !raw.plugin_type.is_empty() && raw.plugin_type != "weft-cni" {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("configuration is for plugin type {:?}", raw.plugin_type),
            "this is weft-cni; set \"type\": \"weft-cni\"",
        ));
    }
    Ok(())
}

fn agent_socket(given: Option<String>) -> Result<PathBuf, CniError> {
    let path = PathBuf::from(given.unwrap_or_else(|| weft_api::DEFAULT_SOCKET.to_string()));
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(CniError::new(
            code::INVALID_CONFIG,
            format!("agentSocket {:?} is not an absolute path", path.display()),
            format!(
                "set \"agentSocket\" to the agent's unix socket, e.g. {:?}, or leave it out",
                weft_api::DEFAULT_SOCKET
            ),
        ))
    }
}

fn prev_result(value: Option<Value>) -> Result<Option<serde_json::Map<String, Value>>, CniError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(other) => Err(CniError::new(
            code::DECODE_FAILURE,
            "cannot decode prevResult",
            format!("prevResult must be a result object, got {other}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order() {
        assert!(Version::parse("0.4.0") < Version::parse("1.0.0"));
        assert_eq!(Version::parse("1.1"), None);
        assert_eq!(Version::parse("1.1.0.0"), None);
        assert_eq!(Version::parse("x.1.0"), None);
    }

    #[test]
    fn a_minimal_config_gets_the_default_socket() {
        let conf = parse(br#"{"cniVersion":"1.1.0","name":"weft","type":"weft-cni"}"#).unwrap();
        assert_eq!(conf.agent_socket, PathBuf::from(weft_api::DEFAULT_SOCKET));
        assert_eq!(conf.version, Version(1, 1, 0));
        assert!(conf.prev_result.is_none());
    }

    #[test]
    fn a_relative_socket_and_a_foreign_type_are_invalid() {
        let err =
            parse(br#"{"cniVersion":"1.0.0","name":"n","agentSocket":"agent.sock"}"#).unwrap_err();
        assert_eq!(err.code, code::INVALID_CONFIG);
        let err = parse(br#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#).unwrap_err();
        assert_eq!(err.code, code::INVALID_CONFIG);
    }

    #[test]
    fn an_ipam_section_is_an_unsupported_field() {
        let err = parse(br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local"}}"#)
            .unwrap_err();
        assert_eq!(err.code, code::UNSUPPORTED_FIELD);
        assert!(err.msg.contains("ipam="), "{}", err.msg);
    }
}
