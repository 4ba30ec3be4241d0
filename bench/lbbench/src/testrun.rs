//! Nanoseconds per packet of `from_container` under BPF_PROG_TEST_RUN, with 1 to 100,000+
//! services in the maps: a pod-to-pod packet (no service, the baseline), the first packet of a
//! flow to a ClusterIP (service lookup, backend selection, two CT entries opened, DNAT) and a
//! packet of an established flow to it (CT hit, DNAT).
//!
//! Each packet is one BPF_PROG_TEST_RUN with `repeat` 1 and the kernel's own duration is kept:
//! with `repeat` > 1 the kernel runs the program again on the packet the previous run left
//! (already DNATed, TTL decremented), so only the first run would measure the path asked for.

use std::net::Ipv4Addr;

use anyhow::{Context as _, ensure};
use weft_common::{
    EndpointInfo, EndpointKey, Lb4Backend, Lb4Key, Lb4RevNat, Lb4Service, NodeConfig,
    geneve::GENEVE_VNI,
    lb::{LB_SCOPE_EXTERNAL, LB4_BACKENDS_MAX, LB4_SERVICES_MAX},
    net::IPPROTO_TCP,
    node::NODE_MASQUERADE_FLAG,
    programs::FROM_CONTAINER,
};
use weft_datapath::testrun::TestHarness;
use weft_packet::{PacketBuilder, TCP_ACK, TCP_SYN};

use crate::stats::Summary;

const TC_ACT_REDIRECT: i32 = 7;
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 42, 1, 10);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 42, 1, 11);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 10);
const SERVICE_PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
const SERVICE_ID: u16 = 1;
const BACKEND_ID: u32 = 1;
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const CLIENT_HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// Fillers' addresses: 10.80.0.0 on (ClusterIPs), 10.90.0.0 on (backends).
const FILLER_IPS: u32 = u32::from_be_bytes([10, 80, 0, 0]);
const FILLER_BACKENDS: u32 = u32::from_be_bytes([10, 90, 0, 0]);

/// The packets measured, in the order they take turns.
pub const KINDS: [&str; 3] = ["direct", "service_first", "service_established"];

/// A harness with the bench's node, pods, its service (CLUSTER_IP:80 -> BACKEND:8080) and
/// `services - 1` filler services of one backend each.
pub fn harness(services: u32) -> anyhow::Result<TestHarness> {
    let entries = (2 * services + 16).max(LB4_SERVICES_MAX);
    let backends = (services + 16).max(LB4_BACKENDS_MAX);
    let mut h = TestHarness::load_with_max_entries(&[
        ("weft_lb4_services", entries),
        ("weft_lb4_backends", backends),
    ])?;
    h.maps.set_node(NodeConfig {
        ipv4: [198, 51, 100, 1],
        external_ifindex: 5,
        vni: GENEVE_VNI,
        snat_port_min: 32768,
        snat_port_max: 65535,
        flags: NODE_MASQUERADE_FLAG,
        _pad: 0,
        netns_cookie: 0,
    })?;
    // BPF_PROG_TEST_RUN runs tc programs on the loopback device: the sender is ifindex 1.
    put_endpoint(&mut h, CLIENT, 1, CLIENT_MAC, CLIENT_HOST_MAC)?;
    put_endpoint(
        &mut h,
        BACKEND,
        21,
        [0x0a, 0, 0, 0, 0, 0x0b],
        [0x0a, 0, 0, 0, 0, 0x0c],
    )?;
    put_service(&mut h, CLUSTER_IP, SERVICE_ID, BACKEND_ID, BACKEND)?;
    for i in 0..services.saturating_sub(1) {
        let ip = Ipv4Addr::from(FILLER_IPS + i);
        let backend = Ipv4Addr::from(FILLER_BACKENDS + i);
        // Service ids are u16: past 65,535 fillers share ids (only replies read them).
        let id = (i % 65_000) as u16 + 2;
        put_service(&mut h, ip, id, i + 2, backend)
            .with_context(|| format!("filler service {i}"))?;
    }
    Ok(h)
}

fn put_endpoint(
    h: &mut TestHarness,
    addr: Ipv4Addr,
    ifindex: u32,
    mac: [u8; 6],
    host_mac: [u8; 6],
) -> anyhow::Result<()> {
    let info = EndpointInfo {
        ifindex,
        identity: 1000 + ifindex,
        mac,
        host_mac,
        _pad: 0,
    };
    h.maps.put_endpoint(
        EndpointKey {
            addr: addr.octets(),
        },
        info,
    )
}

/// A service of one backend (random selection), as the agent writes it.
fn put_service(
    h: &mut TestHarness,
    ip: Ipv4Addr,
    id: u16,
    backend_id: u32,
    backend: Ipv4Addr,
) -> anyhow::Result<()> {
    let key = |slot| Lb4Key {
        address: ip.octets(),
        port: SERVICE_PORT,
        proto: IPPROTO_TCP,
        scope: LB_SCOPE_EXTERNAL,
        slot,
        _pad: [0; 2],
    };
    h.lb.put_backend(
        backend_id,
        Lb4Backend {
            address: backend.octets(),
            port: TARGET_PORT,
            proto: IPPROTO_TCP,
            flags: 0,
        },
    )?;
    h.lb.set_revnat(
        id,
        Lb4RevNat {
            address: ip.octets(),
            port: SERVICE_PORT,
            _pad: 0,
        },
    )?;
    let slot = Lb4Service {
        backend_id,
        rev_nat_index: id,
        ..Lb4Service::default()
    };
    h.lb.put_service(key(1), slot)?;
    let entry = Lb4Service {
        count: 1,
        rev_nat_index: id,
        ..Lb4Service::default()
    };
    h.lb.put_service(key(0), entry)
}

fn packet(dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    PacketBuilder::new()
        .eth(CLIENT_MAC, CLIENT_HOST_MAC)
        .ipv4(CLIENT, dst)
        .tcp(sport, dport, flags)
        .build()
}

/// The `n`-th packet of a kind. First packets of flows use a new source port each (a new flow,
/// so a new CT entry); the established flow (source port 1000) was opened by [`open_flow`].
fn nth_packet(kind: &str, n: u32) -> Vec<u8> {
    let sport = 1024 + (n % 64_000) as u16;
    match kind {
        "direct" => packet(BACKEND, sport, TARGET_PORT, TCP_ACK),
        "service_first" => packet(CLUSTER_IP, sport, SERVICE_PORT, TCP_SYN),
        _ => packet(CLUSTER_IP, 1000, SERVICE_PORT, TCP_ACK),
    }
}

fn open_flow(h: &mut TestHarness) -> anyhow::Result<()> {
    run_ns(h, &packet(CLUSTER_IP, 1000, SERVICE_PORT, TCP_SYN)).map(drop)
}

/// One run of `from_container`: its duration in ns; the packet must be redirected to a pod.
fn run_ns(h: &mut TestHarness, packet: &[u8]) -> anyhow::Result<f64> {
    let (outcome, duration) = h.run_timed(FROM_CONTAINER, packet)?;
    ensure!(
        outcome.verdict == TC_ACT_REDIRECT,
        "from_container returned {} instead of redirecting to the pod",
        outcome.verdict
    );
    Ok(duration.as_nanos() as f64)
}

/// `samples` packets of every kind, the kinds taking turns in rounds of `batch`.
pub fn measure(
    h: &mut TestHarness,
    samples: u32,
    batch: u32,
) -> anyhow::Result<Vec<(&'static str, Summary)>> {
    open_flow(h)?;
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); KINDS.len()];
    let mut n = 0;
    while n < samples {
        for (kind, out) in KINDS.iter().zip(ns.iter_mut()) {
            for i in n..(n + batch).min(samples) {
                out.push(run_ns(h, &nth_packet(kind, i))?);
            }
        }
        n += batch;
    }
    KINDS
        .iter()
        .zip(ns)
        .map(|(kind, s)| Ok((*kind, Summary::of(&s).context("no samples")?)))
        .collect()
}
