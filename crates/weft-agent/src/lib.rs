//! Weft's node agent: watches the cluster state (a [`source::Source`]), keeps the node's
//! datapath maps and program attachments equal to what `weft-model` computes from it, hands
//! out pod addresses from the node's pod CIDR and answers the CNI plugin on a unix socket.
//!
//! The logic ([`agent::Agent`]) goes through the `Datapath` seam and the [`net::NetInfo`]
//! seam, so it is tested against `FakeDatapath` without root.

pub mod agent;
pub mod claim;
pub mod files;
pub mod gc;
pub mod health;
pub mod net;
pub mod server;
pub mod services;
pub mod socket_lb;
pub mod source;
pub mod state;

/// One line on stderr per action.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        eprintln!("weft-agent: {}", format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests;
