//! Figures at the agent bench's scale: 10,000 Services and 10,000 EndpointSlices stored in
//! process; memory, list time, and how long one change takes to reach every watcher.
//! `cargo run -p weft-apiserver --example scale [--release] -- [services] [watchers]`

use std::{error::Error, time::Instant};

use futures_util::StreamExt;
use http_body_util::BodyExt;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
};
use serde_json::json;
use tower::ServiceExt;
use weft_apiserver::{ApiServer, Ipv4Cidr, ServerConfig};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// One request straight to the router: the server's own time, no client decoding.
async fn raw_get(server: &ApiServer, path: &str) -> Result<usize, Box<dyn Error>> {
    let request = http::Request::get(path).body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let response = server.router().oneshot(request).await?;
    Ok(response.into_body().collect().await?.to_bytes().len())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let count: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10_000);
    let watcher_count: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(10);
    let config = ServerConfig {
        service_cidr: "10.96.0.0/12".parse::<Ipv4Cidr>()?,
        ..ServerConfig::default()
    };
    let server = ApiServer::new(config)?;
    let client = kube::Client::new(server.router(), "default");
    let services: Api<Service> = Api::default_namespaced(client.clone());
    let slices: Api<EndpointSlice> = Api::default_namespaced(client.clone());
    let before = rss_kib();

    let started = Instant::now();
    for i in 0..count {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": format!("svc-{i}"), "labels": {"app": format!("app-{}", i % 100)}},
            "spec": {"selector": {"app": format!("app-{i}")}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }))?;
        services.create(&PostParams::default(), &svc).await?;
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": format!("svc-{i}-abcde"), "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": [format!("10.0.{}.{}", (i / 250) % 250, i % 250 + 1)], "conditions": {"ready": true}, "nodeName": "vps2"},
                {"addresses": [format!("10.1.{}.{}", (i / 250) % 250, i % 250 + 1)], "conditions": {"ready": true}, "nodeName": "vps3"}
            ],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))?;
        slices.create(&PostParams::default(), &slice).await?;
    }
    let created = started.elapsed();
    let after = rss_kib();
    println!(
        "objects: {} services + {} endpointslices created in {:.2} s ({:.0} objects/s)",
        count,
        count,
        created.as_secs_f64(),
        (2 * count) as f64 / created.as_secs_f64()
    );
    println!(
        "rss: {} KiB before, {} KiB after: {} KiB for {} objects ({:.0} bytes/object)",
        before,
        after,
        after - before,
        server.object_count(),
        (after - before) as f64 * 1024.0 / (2 * count) as f64
    );

    for (label, path) in [
        ("services", "/api/v1/services"),
        ("endpointslices", "/apis/discovery.k8s.io/v1/endpointslices"),
    ] {
        let started = Instant::now();
        let bytes = raw_get(&server, path).await?;
        println!(
            "list {label} (server only, unpaged): {:.1} ms, {} KiB",
            started.elapsed().as_secs_f64() * 1e3,
            bytes / 1024
        );
    }
    let started = Instant::now();
    let mut listed = 0;
    for (label, path) in [
        ("services", "/api/v1/services"),
        ("endpointslices", "/apis/discovery.k8s.io/v1/endpointslices"),
    ] {
        let mut token: Option<String> = None;
        loop {
            let url = match &token {
                Some(t) => format!("{path}?limit=500&continue={t}"),
                None => format!("{path}?limit=500"),
            };
            let request =
                http::Request::get(url).body(http_body_util::Empty::<bytes::Bytes>::new())?;
            let body = server
                .router()
                .oneshot(request)
                .await?
                .into_body()
                .collect()
                .await?
                .to_bytes();
            let page: serde_json::Value = serde_json::from_slice(&body)?;
            listed += page["items"].as_array().map_or(0, Vec::len);
            token = page["metadata"]["continue"].as_str().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        let _ = label;
    }
    println!(
        "list all {} objects in pages of 500 (server + JSON parse): {:.1} ms",
        listed,
        started.elapsed().as_secs_f64() * 1e3
    );
    let started = Instant::now();
    let typed = services.list(&ListParams::default().limit(500)).await?;
    println!(
        "kube-rs typed list of the first 500 services: {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    drop(typed);

    // Fan-out: watchers on Services, one change, time until each has it.
    let rv = server.resource_version().to_string();
    let mut streams = Vec::new();
    for _ in 0..watcher_count {
        streams.push(services.watch(&WatchParams::default(), &rv).await?.boxed());
    }
    let mut latencies = Vec::new();
    let rounds = 200;
    for round in 0..rounds {
        let patch =
            Patch::Merge(json!({"metadata": {"annotations": {"round": round.to_string()}}}));
        let started = Instant::now();
        services
            .patch(
                &format!("svc-{}", round % count),
                &PatchParams::default(),
                &patch,
            )
            .await?;
        let written = started.elapsed();
        for stream in streams.iter_mut() {
            match stream.next().await {
                Some(Ok(WatchEvent::Modified(_))) => {}
                other => return Err(format!("unexpected watch item {other:?}").into()),
            }
            latencies.push((
                started.elapsed().as_secs_f64() * 1e3,
                written.as_secs_f64() * 1e3,
            ));
        }
    }
    let mut all: Vec<f64> = latencies.iter().map(|(l, _)| *l).collect();
    all.sort_by(f64::total_cmp);
    let mut writes: Vec<f64> = latencies.iter().map(|(_, w)| *w).collect();
    writes.sort_by(f64::total_cmp);
    println!(
        "fan-out to {watcher_count} watchers over {rounds} updates, update sent -> event decoded by each watcher (kube-rs): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; the PATCH itself: p50 {:.3} ms",
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all.last().copied().unwrap_or(0.0),
        percentile(&writes, 0.5)
    );
    Ok(())
}
