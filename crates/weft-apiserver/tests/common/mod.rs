//! Shared by the L1 tests: a server and a kube-rs client talking to it in process.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report
#![allow(dead_code)]

use std::time::Duration;

use weft_apiserver::{ApiServer, ServerConfig};

pub fn server() -> ApiServer {
    server_with(ServerConfig::default())
}

pub fn server_with(config: ServerConfig) -> ApiServer {
    ApiServer::new(config).expect("valid config")
}

pub fn client(server: &ApiServer) -> kube::Client {
    kube::Client::new(server.router(), "default")
}

/// Waits (generously) until `check` holds, polling.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut check: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
