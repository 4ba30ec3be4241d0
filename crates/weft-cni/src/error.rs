//! CNI error results (spec 1.1, section 5 "Error") and the codes this plugin uses.

use serde_json::{Value, json};

/// Well-known CNI error codes, and this plugin's own (100 and up).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const NOT_AVAILABLE_DEGRADED: u32 = 51;
    /// ADD could not create or configure the interfaces (everything was rolled back).
    pub const SETUP_FAILED: u32 = 100;
    /// CHECK found the attachment not as expected.
    pub const CHECK_FAILED: u32 = 101;
    /// DEL or GC could not remove an interface.
    pub const TEARDOWN_FAILED: u32 = 102;
    /// The agent answered something this plugin does not understand.
    pub const AGENT_PROTOCOL: u32 = 103;
}

/// A CNI error: code, short message, longer details.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// Adds a sentence to the details (e.g. what a rollback could not undo).
    pub fn with_note(mut self, note: &str) -> Self {
        if !self.details.is_empty() {
            self.details.push_str("; ");
        }
        self.details.push_str(note);
        self
    }

    /// The error result object, in the version the runtime spoke.
    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CNI error {}: {} ({})",
            self.code, self.msg, self.details
        )
    }
}

impl std::error::Error for CniError {}
