//! L3: traffic from outside the cluster (the lab's client, 203.0.113.4) to services, on labs
//! run by Weft's agents: the seed's flow (DSR over Geneve, native acceleration) and its
//! contrast in SNAT mode, with captures on the router proving which node replied;
//! `externalTrafficPolicy: Local` (client address kept, nodes without a local backend drop,
//! health-check ports); a pod reaching its own service through a node address. Needs root.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, SocketAddrV4, TcpStream},
    time::Duration,
};

use weft_common::{Hook, MetricsKey, Reason};
use weft_lab::{
    leftovers,
    netns::run_in,
    runtime::locate_binary,
    seed::{self, SEED_VALUES, SERVICE_PORT},
    testing::{TestCluster, running_as_root},
};

fn netbench() -> std::path::PathBuf {
    locate_binary("WEFT_NETBENCH", "weft-netbench").expect("weft-netbench is built")
}

fn take_down(cluster: TestCluster) {
    let name = cluster.lab.name.clone();
    drop(cluster);
    assert_eq!(leftovers(&name), Vec::<String>::new());
}

/// The seed's objects on a 3-node cluster with `values`.
fn seed_cluster(tag: &str, values: &str) -> TestCluster {
    let cluster = TestCluster::up(tag, 3, Some(values));
    seed::apply_objects(&cluster.lab, &cluster.bins, &netbench(), &cluster.dir)
        .expect("apply the seed's objects");
    cluster
}

#[test]
fn the_seed_flow_keeps_the_client_address_and_the_backend_node_replies() {
    if !running_as_root("the_seed_flow_keeps_the_client_address_and_the_backend_node_replies") {
        return;
    }
    let cluster = seed_cluster("seed", SEED_VALUES);
    let checks = seed::run(&cluster.lab).expect("the seed scenario runs");
    assert_eq!(checks.len(), 3);
    for check in &checks {
        assert!(check.passed(cluster.lab.client.ip), "{check:?}");
    }
    take_down(cluster);
}

/// What a request from the client through vps2 to the backend on vps1 looks like in `mode`
/// with `acceleration`: in SNAT the backend sees vps2 and the reply goes back through it; in
/// DSR (and hybrid, for TCP) the backend sees the client and vps1 replies itself.
fn check_mode(tag: &str, mode: &str, acceleration: &str) {
    let values = SEED_VALUES
        .replace("mode: dsr", &format!("mode: {mode}"))
        .replace(
            "acceleration: native",
            &format!("acceleration: {acceleration}"),
        );
    let cluster = seed_cluster(tag, &values);
    let lab = &cluster.lab;
    let (vps1, vps2) = (
        lab.node("vps1").expect("vps1"),
        lab.node("vps2").expect("vps2"),
    );
    let entry = SocketAddrV4::new(vps2.underlay_ip, SERVICE_PORT);
    seed::wait_for_service(lab, entry).expect("the service answers");
    let check = seed::check(lab, mode, entry, vps1, vps2).expect("check");
    let what = format!("{mode}, acceleration {acceleration}: {check:?}");
    if mode == "snat" {
        assert_eq!(check.seen.ip(), vps2.underlay_ip, "{what}");
        assert!(check.replies_from_entry_node > 0, "{what}");
        assert_eq!(check.replies_from_backend_node, 0, "{what}");
    } else {
        assert!(check.passed(lab.client.ip), "{what}");
    }
    // Through the backend's own node: a local backend.
    let local = SocketAddrV4::new(vps1.underlay_ip, SERVICE_PORT);
    let seen = seed::fetch(lab, local).expect("via vps1");
    assert_eq!(
        seen.ip(),
        lab.client.ip,
        "{what}: a local backend keeps the client"
    );
    take_down(cluster);
}

#[test]
fn snat_dsr_and_hybrid_with_and_without_acceleration() {
    if !running_as_root("snat_dsr_and_hybrid_with_and_without_acceleration") {
        return;
    }
    for (tag, mode, acceleration) in [
        ("snatd", "snat", "disabled"),
        ("snatn", "snat", "native"),
        ("dsrd", "dsr", "disabled"),
        ("hybd", "hybrid", "disabled"),
        ("hybn", "hybrid", "native"),
    ] {
        check_mode(tag, mode, acceleration);
    }
}

fn http_get(netns: &str, to: SocketAddrV4) -> String {
    let mut stream = run_in(netns, || {
        TcpStream::connect_timeout(&to.into(), Duration::from_secs(5))
    })
    .expect("netns")
    .expect("connect to the health port");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .expect("request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("response");
    text
}

#[test]
fn external_traffic_policy_local_keeps_the_client_and_only_backend_nodes_answer() {
    if !running_as_root(
        "external_traffic_policy_local_keeps_the_client_and_only_backend_nodes_answer",
    ) {
        return;
    }
    for (tag, acceleration) in [("etpld", "disabled"), ("etpln", "native")] {
        check_external_local(tag, acceleration);
    }
}

/// A NodePort with `externalTrafficPolicy: Local` and its backend on vps1, in SNAT mode with
/// `acceleration`: the client is kept, vps2 drops, the health ports say which node has a
/// backend, and the backend reaches its own service through its node's address (hairpin).
fn check_external_local(tag: &str, acceleration: &str) {
    let values = format!("loadBalancer: {{mode: snat, acceleration: {acceleration}}}\n");
    let cluster = TestCluster::up(tag, 2, Some(&values));
    let netbench = netbench();
    let objects = format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {{app: web}}
spec:
  nodeName: vps1
  containers:
    - name: web
      command: [{netbench}, whoami, --listen, '0.0.0.0:8080']
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  type: NodePort
  selector: {{app: web}}
  externalTrafficPolicy: Local
  healthCheckNodePort: 32001
  ports:
    - {{port: 80, targetPort: 8080, nodePort: 30080, protocol: TCP}}
",
        netbench = netbench.display()
    );
    cluster.apply_text("web.yaml", &objects).expect("apply");
    let lab = &cluster.lab;
    let (vps1, vps2) = (
        lab.node("vps1").expect("vps1"),
        lab.node("vps2").expect("vps2"),
    );
    let via_vps1 = SocketAddrV4::new(vps1.underlay_ip, 30080);
    seed::wait_for_service(lab, via_vps1).expect("the NodePort answers on vps1");
    // The backend sees the client itself (no SNAT with a Local policy, even in snat mode).
    assert_eq!(
        seed::fetch(lab, via_vps1).expect("via vps1").ip(),
        lab.client.ip
    );
    // vps2 has no local backend: its NodePort drops.
    let via_vps2 = SocketAddrV4::new(vps2.underlay_ip, 30080);
    assert!(
        seed::fetch(lab, via_vps2).is_err(),
        "vps2 has no local backend"
    );
    // The health-check ports say which node has one.
    let health = |node: &weft_lab::NodeSpec| {
        http_get(
            &lab.client.netns,
            SocketAddrV4::new(node.underlay_ip, 32001),
        )
    };
    let on_vps1 = health(vps1);
    assert!(on_vps1.starts_with("HTTP/1.1 200"), "{on_vps1}");
    assert!(on_vps1.contains("\"localEndpoints\":1"), "{on_vps1}");
    let on_vps2 = health(vps2);
    assert!(on_vps2.starts_with("HTTP/1.1 503"), "{on_vps2}");

    // Hairpin: the backend pod reaches its own service through its node's address.
    let web = cluster.pod("web");
    let mut stream = run_in(&web.netns, || {
        TcpStream::connect_timeout(&via_vps1.into(), Duration::from_secs(5))
    })
    .expect("netns")
    .expect("the pod reaches its own NodePort");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut seen = String::new();
    stream.read_to_string(&mut seen).expect("answer");
    let seen: SocketAddr = seen.trim().parse().expect("an address");
    assert_eq!(stream.peer_addr().expect("peer"), SocketAddr::V4(via_vps1));
    assert_eq!(seen.ip().to_string(), "169.254.42.1", "hairpin source");
    take_down(cluster);
}

/// Packets of `node`'s XDP hook counted under `reason`.
fn xdp_packets(node: &weft_lab::NodeSpec, reason: Reason) -> u64 {
    let view = weft_lab::datapath::inspect(node).expect("inspect the datapath");
    view.metrics
        .get(&MetricsKey {
            hook: Hook::Xdp,
            reason,
        })
        .map_or(0, |v| v.packets)
}

#[test]
fn with_native_acceleration_xdp_carries_the_flow_to_a_remote_backend() {
    if !running_as_root("with_native_acceleration_xdp_carries_the_flow_to_a_remote_backend") {
        return;
    }
    let cluster = seed_cluster("xdptx", SEED_VALUES);
    let lab = &cluster.lab;
    let (vps1, vps2) = (
        lab.node("vps1").expect("vps1"),
        lab.node("vps2").expect("vps2"),
    );
    // vps2 has no backend: its XDP program wraps the client's packets for vps1.
    let entry = SocketAddrV4::new(vps2.underlay_ip, SERVICE_PORT);
    seed::wait_for_service(lab, entry).expect("the service answers");
    let before = xdp_packets(vps2, Reason::Transmitted);
    for _ in 0..5 {
        assert_eq!(
            seed::fetch(lab, entry).expect("via vps2").ip(),
            lab.client.ip,
            "DSR: the backend sees the client"
        );
    }
    let after = xdp_packets(vps2, Reason::Transmitted);
    assert!(
        after >= before + 5 * 3,
        "vps2's XDP_TX counter: {before} -> {after} (each request sends at least 3 packets)"
    );
    // The reply still comes straight from vps1.
    let check = seed::check(lab, "xdp", entry, vps1, vps2).expect("check");
    assert!(check.passed(lab.client.ip), "{check:?}");
    take_down(cluster);
}

#[test]
fn the_prefilter_drops_the_clients_packets_and_counts_them() {
    if !running_as_root("the_prefilter_drops_the_clients_packets_and_counts_them") {
        return;
    }
    let values = format!("{SEED_VALUES}prefilter:\n  cidrs: [203.0.113.0/24]\n");
    let cluster = seed_cluster("prefl", &values);
    let lab = &cluster.lab;
    let vps2 = lab.node("vps2").expect("vps2");
    let entry = SocketAddrV4::new(vps2.underlay_ip, SERVICE_PORT);
    assert!(
        seed::fetch(lab, entry).is_err(),
        "the client is inside a prefiltered prefix"
    );
    let dropped = xdp_packets(vps2, Reason::Prefiltered);
    assert!(dropped > 0, "vps2 counted the client's SYNs as prefiltered");
    assert_eq!(xdp_packets(vps2, Reason::Transmitted), 0);
    take_down(cluster);
}
