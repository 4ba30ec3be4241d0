//! Runs the API server on an address until Ctrl-C, and writes a kubeconfig for it:
//! `cargo run -p weft-apiserver --example serve -- 127.0.0.1:6443 /tmp/weft-kubeconfig`
//! then `KUBECONFIG=/tmp/weft-kubeconfig kubectl get ns`.

use std::{error::Error, net::SocketAddr};

use weft_apiserver::{ApiServer, ServerConfig, kubeconfig_yaml};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let address: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:6443".to_string())
        .parse()?;
    let kubeconfig = args.next().unwrap_or_else(|| "weft-kubeconfig".to_string());
    let server = ApiServer::new(ServerConfig {
        advertise_address: Some(address),
        ..ServerConfig::default()
    })?;
    let listener = tokio::net::TcpListener::bind(address).await?;
    std::fs::write(
        &kubeconfig,
        kubeconfig_yaml(&format!("http://{address}"), "weft-lab", "weft-lab"),
    )?;
    println!("serving on http://{address}, kubeconfig in {kubeconfig}");
    server
        .serve(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
