//! The agent, seen from the plugin: one request, one response, over the agent's unix socket.

use std::path::Path;

use weft_api::{ClientError, Request, Response};

/// Why the agent could not be asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// Nobody listens on the socket (agent down, wrong path).
    #[error("{0}")]
    Unreachable(String),
    /// The connection broke or timed out mid-request.
    #[error("{0}")]
    Failed(String),
    /// The agent answered something that does not parse.
    #[error("{0}")]
    BadReply(String),
}

pub trait Agent {
    fn call(&self, socket: &Path, request: &Request) -> Result<Response, AgentError>;
}

/// The real agent, through [`weft_api::call`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SocketAgent;

impl Agent for SocketAgent {
    fn call(&self, socket: &Path, request: &Request) -> Result<Response, AgentError> {
        weft_api::call(socket, request).map_err(|e| match e {
            ClientError::Unreachable { .. } => AgentError::Unreachable(e.to_string()),
            ClientError::Io { .. } => AgentError::Failed(e.to_string()),
            ClientError::BadReply { .. } => AgentError::BadReply(e.to_string()),
        })
    }
}
