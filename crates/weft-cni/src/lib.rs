//! Weft CNI plugin (CNI spec 1.1): gets a pod's address from the node's Weft agent, wires the
//! pod with a veth pair (Cilium's layout: `<ip>/32` in the pod, routes via the gateway on
//! `eth0`, host side `lxc<hash>` with a `/32` route), and registers the endpoint with the agent.
//!
//! [`run`] is the whole plugin as a function of the environment and stdin; the system and the
//! agent are behind [`Host`] and [`Agent`] so that it is tested without root.

pub mod agent;
pub mod config;
pub mod env;
pub mod error;
pub mod host;
mod plugin;
pub mod sha256;

pub use agent::{Agent, AgentError, SocketAgent};
pub use error::{CniError, code};
pub use host::{Host, HostError, IpRoute, Link, NetnsState, Route};
pub use plugin::{Outcome, host_ifname, run};
