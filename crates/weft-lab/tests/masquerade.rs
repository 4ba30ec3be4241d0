//! L3: masquerade that survives churn (issue 13, item 5), on a lab run by Weft with real
//! sockets. Pods on one node masquerade to one outside address (a TCP server in the client's
//! namespace): their translations must follow TCP, so that closed and half-open flows give
//! their ports back.
//!
//! - A flood of 40,000 crafted SYNs from a pod takes every SNAT port towards one destination;
//!   new connections to it must work again once the half-open translations expire (60 s).
//! - Three pods make 20,000 connections each (connect, close) to another destination, then a
//!   fourth pod makes 200: none may fail.
//! - A garbage-collection pass then deletes what expired.
//!
//! The flood goes first so that its translations age while the churn runs. The scenario runs
//! to the end and prints its figures before it asserts anything. Needs root.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use weft_api::{Request, Response};
use weft_common::{
    EndpointKey, NatKey4,
    nat::{NAT_DIR_EGRESS, SNAT_PORT_MAX, SNAT_PORT_MIN, nat_alive},
};
use weft_datapath::{DatapathMaps, monotonic_ns};
use weft_lab::{
    NodeSpec, runtime,
    testing::{TestCluster, pod_address, running_as_root},
    traffic::{self, ConnectReport, TcpSink},
};
use weft_packet::{PacketBuilder, TCP_SYN};

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 4);
const CHURN_PORT: u16 = 7100;
const FLOOD_PORT: u16 = 7200;
const CHURN_PODS: [&str; 3] = ["m1", "m2", "m3"];
const LATE_POD: &str = "m4";
const CONNECTS_PER_POD: u32 = 20_000;
const LATE_CONNECTS: u32 = 200;
const FLOOD_SYNS: u16 = 40_000;
/// One SYN and one retransmission (after 1 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Far beyond the 60 s a half-open translation lives.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(150);

const PODS: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: m1
spec:
  nodeName: vps1
  containers:
    - name: main
      command: [sleep, '3600']
---
apiVersion: v1
kind: Pod
metadata:
  name: m2
spec:
  nodeName: vps1
  containers:
    - name: main
      command: [sleep, '3600']
---
apiVersion: v1
kind: Pod
metadata:
  name: m3
spec:
  nodeName: vps1
  containers:
    - name: main
      command: [sleep, '3600']
---
apiVersion: v1
kind: Pod
metadata:
  name: m4
spec:
  nodeName: vps1
  containers:
    - name: main
      command: [sleep, '3600']
";

/// Ports in the node's SNAT range (the default one).
const SNAT_PORTS: usize = (SNAT_PORT_MAX - SNAT_PORT_MIN) as usize + 1;

/// Masquerade entries of flows to the client's `port`, both directions: all of them, and those
/// whose translation still holds.
fn entries_towards(node: &NodeSpec, port: u16) -> (usize, usize) {
    let entries = DatapathMaps::from_pins(&node.pin_dir)
        .and_then(|maps| maps.snat())
        .expect("reading weft_snat4");
    let now_s = monotonic_ns().map_or(0, |ns| (ns / 1_000_000_000) as u32);
    let towards: Vec<_> = entries
        .iter()
        .filter(|(key, _)| to_client_port(key, port))
        .collect();
    let live = towards.iter().filter(|(_, e)| nat_alive(e, now_s)).count();
    (towards.len(), live)
}

fn to_client_port(key: &NatKey4, port: u16) -> bool {
    let client = CLIENT_IP.octets();
    if key.direction == NAT_DIR_EGRESS {
        key.daddr == client && key.dport == port
    } else {
        key.saddr == client && key.sport == port
    }
}

/// `count` SYNs from `pod` (its own address and MAC, through its veth) to the client's
/// `port`, each from another source port. TTL 2: the node forwards them, the router lets
/// them expire, so nothing answers them (the target of a flood that drops it) and their
/// translations stay half-open.
fn flood(node: &NodeSpec, pod: &runtime::PodRecord, port: u16, count: u16) {
    let pod_ip = pod_address(pod);
    let endpoints = DatapathMaps::from_pins(&node.pin_dir)
        .and_then(|maps| maps.endpoints())
        .expect("reading weft_endpoints");
    let ep = endpoints
        .get(&EndpointKey {
            addr: pod_ip.octets(),
        })
        .unwrap_or_else(|| panic!("no endpoint for {pod_ip}"));
    let frames: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            PacketBuilder::new()
                .eth(ep.mac, ep.host_mac)
                .ipv4(pod_ip, CLIENT_IP)
                .ttl(2)
                .tcp(1024 + i, port, TCP_SYN)
                .tcp_seq(u32::from(i).wrapping_mul(7919))
                .build()
        })
        .collect();
    traffic::send_raw_frames(&pod.netns, "eth0", &frames, 200, Duration::from_millis(5))
        .expect("sending the flood");
}

/// `total` connects from `pod` to `server` on `threads` threads at once.
fn connect_in_parallel(
    pod: &runtime::PodRecord,
    server: SocketAddrV4,
    total: u32,
    threads: u32,
) -> ConnectReport {
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    traffic::connect_and_close(
                        &pod.netns,
                        server,
                        total / threads,
                        CONNECT_TIMEOUT,
                        u32::MAX,
                    )
                    .expect("netns")
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("connect thread"))
            .fold(ConnectReport::default(), sum)
    })
}

fn sum(a: ConnectReport, b: ConnectReport) -> ConnectReport {
    ConnectReport {
        attempted: a.attempted + b.attempted,
        failed: a.failed + b.failed,
        first_error: a.first_error.or(b.first_error),
    }
}

/// Connects from `pod` to `server` until one succeeds; the time from `since` it took.
fn first_success(pod: &runtime::PodRecord, server: SocketAddrV4, since: Instant) -> Option<u64> {
    while since.elapsed() < RECOVERY_DEADLINE {
        let report = traffic::connect_and_close(&pod.netns, server, 1, Duration::from_secs(2), 1)
            .expect("netns");
        if report.failed == 0 {
            return Some(since.elapsed().as_secs());
        }
    }
    None
}

/// A conntrack garbage-collection pass by the node's agent: the masquerade entries it deleted.
fn collect_garbage(lab: &str, node: &str) -> usize {
    let socket = runtime::agent_socket(lab, node);
    match weft_api::call(&socket, &Request::ConntrackGc).expect("asking the agent") {
        Response::ConntrackCollected(summary) => summary.snat_deleted,
        other => panic!("the agent answered {other:?}"),
    }
}

#[test]
fn masquerade_survives_connection_churn_and_a_syn_flood() {
    if !running_as_root("masquerade_survives_connection_churn_and_a_syn_flood") {
        return;
    }
    let cluster = TestCluster::up("snat", 1, None);
    cluster.apply_text("pods.yaml", PODS).expect("apply");
    let node = cluster.lab.node("vps1").expect("vps1").clone();
    let client_netns = cluster.lab.client.netns.clone();
    let churn_server = SocketAddrV4::new(CLIENT_IP, CHURN_PORT);
    let flood_server = SocketAddrV4::new(CLIENT_IP, FLOOD_PORT);
    let churn_sink = TcpSink::start(&client_netns, churn_server, 2).expect("churn server");
    let flood_sink = TcpSink::start(&client_netns, flood_server, 1).expect("flood server");
    let late = cluster.pod(LATE_POD);

    // The flood.
    flood(&node, &cluster.pod("m1"), FLOOD_PORT, FLOOD_SYNS);
    let flood_end = Instant::now();
    let (flooded, _) = entries_towards(&node, FLOOD_PORT);
    let refused_after_flood =
        traffic::connect_and_close(&late.netns, flood_server, 1, CONNECT_TIMEOUT, 1)
            .expect("netns")
            .failed;

    // The churn, then the fourth pod.
    let churn_start = Instant::now();
    let churn = std::thread::scope(|scope| {
        let workers: Vec<_> = CHURN_PODS
            .iter()
            .map(|name| {
                let pod = cluster.pod(name);
                scope.spawn(move || {
                    traffic::connect_and_close(
                        &pod.netns,
                        churn_server,
                        CONNECTS_PER_POD,
                        CONNECT_TIMEOUT,
                        20,
                    )
                    .expect("netns")
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("churn thread"))
            .collect::<Vec<_>>()
    });
    let churn_secs = churn_start.elapsed().as_secs_f64();
    let (left_after_churn, live_after_churn) = entries_towards(&node, CHURN_PORT);
    let late_report = connect_in_parallel(&late, churn_server, LATE_CONNECTS, 10);
    let late_end = Instant::now();

    // Recovery from the flood, then a collector pass once every flooded flow (60 s) and every
    // closed one (10 s) has expired.
    let recovered_after = first_success(&late, flood_server, flood_end);
    let all_expired = (flood_end + Duration::from_secs(62)).max(late_end + Duration::from_secs(12));
    std::thread::sleep(all_expired.saturating_duration_since(Instant::now()));
    let collected = collect_garbage(&cluster.lab.name, &node.name);
    let (flood_left_after_gc, _) = entries_towards(&node, FLOOD_PORT);
    let (churn_left_after_gc, _) = entries_towards(&node, CHURN_PORT);

    let churn_total = churn.iter().cloned().fold(ConnectReport::default(), sum);
    eprintln!(
        "flood: {FLOOD_SYNS} SYNs left {flooded} masquerade entries towards {flood_server} \
         (range: {SNAT_PORTS} ports); a connect right after it failed: {}; a connect \
         worked again after {recovered_after:?} s",
        refused_after_flood == 1
    );
    eprintln!(
        "churn: {} connects from {} pods in {churn_secs:.1} s, {} failed ({:?}); {} \
         entries left towards {churn_server}, {} of them live",
        churn_total.attempted,
        CHURN_PODS.len(),
        churn_total.failed,
        churn_total.first_error,
        left_after_churn,
        live_after_churn
    );
    eprintln!(
        "fourth pod: {} of {} connects failed ({:?})",
        late_report.failed, late_report.attempted, late_report.first_error
    );
    eprintln!(
        "gc pass: {collected} masquerade entries deleted; left towards the flood's \
         destination {flood_left_after_gc}, the churn's {churn_left_after_gc}; accepted by \
         the servers: {} and {}",
        churn_sink.accepted(),
        flood_sink.accepted()
    );

    assert!(
        flooded >= 2 * SNAT_PORTS * 99 / 100,
        "the flood took {flooded} entries, not (nearly) every port of the range"
    );
    for (name, report) in CHURN_PODS.iter().zip(&churn) {
        assert_eq!(
            (report.attempted, report.failed),
            (CONNECTS_PER_POD, 0),
            "pod {name}: {:?}",
            report.first_error
        );
    }
    assert_eq!(
        (late_report.attempted, late_report.failed),
        (LATE_CONNECTS, 0),
        "the fourth pod: {:?}",
        late_report.first_error
    );
    assert!(
        recovered_after.is_some(),
        "no connection to {flood_server} worked within {RECOVERY_DEADLINE:?} of the flood"
    );
    assert!(
        collected >= 2 * SNAT_PORTS * 9 / 10,
        "the collector deleted {collected} entries"
    );
    assert!(
        flood_left_after_gc <= 4 && churn_left_after_gc <= 4,
        "entries left after the pass: {flood_left_after_gc} and {churn_left_after_gc}"
    );
}
