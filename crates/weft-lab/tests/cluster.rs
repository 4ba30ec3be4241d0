//! L3: the lab run by Weft — an agent per node, pods applied as manifests and networked by the
//! CNI plugin, routed by the datapath. Real sockets: the connectivity matrix, masquerade to
//! the client, isolation of pod addresses, anti-spoofing, full-size transfers through the
//! tunnel, and an agent restart under an open connection. Needs root.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    time::Duration,
};

use weft_common::{Hook, MetricsKey, MetricsValue, Reason};
use weft_lab::{
    apply::delete,
    datapath::{inspect, metrics_delta},
    leftovers,
    netns::run_in,
    runtime::{self, PodRecord},
    supervise,
    testing::{TestCluster, pod_address, running_as_root},
    traffic,
};
use weft_packet::PacketBuilder;

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 4);

const PODS: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: a
spec:
  nodeName: vps1
  containers:
    - name: main
      command: [sleep, '3600']
---
apiVersion: v1
kind: Pod
metadata:
  name: b
spec:
  nodeName: vps1
  containers:
    - name: main
      command: [sleep, '3600']
---
apiVersion: v1
kind: Pod
metadata:
  name: c
  labels:
    app: c
spec:
  nodeName: vps2
  containers:
    - name: main
      command: [sleep, '3600']
";

type Cluster = TestCluster;

fn addr(record: &PodRecord) -> Ipv4Addr {
    pod_address(record)
}

fn peer_ip(peer: SocketAddr) -> std::net::IpAddr {
    peer.ip()
}

/// TCP from `pod` to the client, which sees the node's address `node_ip`.
fn assert_masqueraded(cluster: &Cluster, pod: &PodRecord, node_ip: Ipv4Addr, port: u16) {
    let client = SocketAddrV4::new(CLIENT_IP, port);
    let peer = traffic::tcp_echo(
        &pod.netns,
        &cluster.lab.client.netns,
        client,
        b"to the world",
    )
    .unwrap_or_else(|e| panic!("{} -> client: {e:#}", pod.name));
    assert_eq!(peer_ip(peer), std::net::IpAddr::V4(node_ip));
}

/// Whether packets were counted at `hook` under `reason` between two readings.
fn counted(
    before: &BTreeMap<MetricsKey, MetricsValue>,
    after: &BTreeMap<MetricsKey, MetricsValue>,
    hook: Hook,
    reason: Reason,
) -> bool {
    metrics_delta(before, after).contains_key(&MetricsKey { hook, reason })
}

#[test]
fn pods_get_networked_by_the_cni_plugin_and_routed_by_the_datapath() {
    if !running_as_root("pods_get_networked_by_the_cni_plugin_and_routed_by_the_datapath") {
        return;
    }
    let cluster = Cluster::up("cni", 2, None);
    let report = cluster.apply_text("pods.yaml", PODS).expect("apply");
    assert_eq!(report.started.len(), 3, "{report:?}");
    let (a, b, c) = (cluster.pod("a"), cluster.pod("b"), cluster.pod("c"));
    let (ip_a, ip_b, ip_c) = (addr(&a), addr(&b), addr(&c));

    // Same node and across nodes, TCP, UDP and ICMP; the server sees the client pod's address.
    for (from, to, to_ip) in [(&a, &b, ip_b), (&a, &c, ip_c), (&c, &a, ip_a)] {
        let server = SocketAddrV4::new(to_ip, 8080);
        let peer = traffic::tcp_echo(&from.netns, &to.netns, server, b"hello over tcp")
            .unwrap_or_else(|e| panic!("tcp {} -> {}: {e:#}", from.name, to.name));
        assert_eq!(peer_ip(peer), std::net::IpAddr::V4(addr(from)));
        let peer = traffic::udp_echo(
            &from.netns,
            &to.netns,
            SocketAddrV4::new(to_ip, 5353),
            b"udp",
        )
        .unwrap_or_else(|e| panic!("udp {} -> {}: {e:#}", from.name, to.name));
        assert_eq!(peer_ip(peer), std::net::IpAddr::V4(addr(from)));
        traffic::icmp_echo(&from.netns, to_ip, 7, 1)
            .unwrap_or_else(|e| panic!("icmp {} -> {}: {e:#}", from.name, to.name));
    }

    // A node and a pod of another node, both ways, through the tunnel, without masquerade.
    let node2 = cluster.lab.node("vps2").expect("vps2");
    let peer = traffic::tcp_echo(
        &node2.netns,
        &a.netns,
        SocketAddrV4::new(ip_a, 8083),
        b"node",
    )
    .expect("node vps2 -> pod a");
    assert_eq!(peer_ip(peer), std::net::IpAddr::V4(node2.underlay_ip));
    let node2_server = SocketAddrV4::new(node2.underlay_ip, 8084);
    let peer = traffic::tcp_echo(&a.netns, &node2.netns, node2_server, b"pod")
        .expect("pod a -> node vps2");
    assert_eq!(peer_ip(peer), std::net::IpAddr::V4(ip_a));

    // `weft lab exec` finds pods the lab runs by name.
    let argv = ["ip", "-o", "-4", "addr", "show", "dev", "eth0"].map(String::from);
    let out = weft_lab::exec::command_in(&cluster.lab, "default/a", &argv)
        .expect("exec target")
        .output()
        .expect("ip runs in pod a");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains(&format!("{ip_a}/32")), "{shown}");

    // To the world: masqueraded to the node's address.
    let node1 = cluster.lab.node("vps1").expect("vps1");
    assert_masqueraded(&cluster, &a, node1.underlay_ip, 8081);
    traffic::icmp_echo(&a.netns, CLIENT_IP, 9, 1).expect("ping the client");
    traffic::udp_echo(
        &a.netns,
        &cluster.lab.client.netns,
        SocketAddrV4::new(CLIENT_IP, 5300),
        b"dns?",
    )
    .expect("udp to the client");

    // The client cannot reach pod addresses.
    let unreachable = traffic::tcp_echo(
        &cluster.lab.client.netns,
        &a.netns,
        SocketAddrV4::new(ip_a, 8082),
        b"x",
    );
    assert!(unreachable.is_err(), "the client reached a pod address");

    // A spoofed source is dropped and reported.
    let before = inspect(node1).expect("inspect").metrics;
    let spoofed = PacketBuilder::new()
        .ipv4(Ipv4Addr::new(10, 42, 77, 7), ip_b)
        .udp(1, 2)
        .build();
    traffic::send_raw_frame(&a.netns, "eth0", &spoofed).expect("send spoofed frame");
    std::thread::sleep(Duration::from_millis(200));
    let after = inspect(node1).expect("inspect").metrics;
    assert!(
        counted(&before, &after, Hook::FromContainer, Reason::InvalidSource),
        "spoofed frame not counted as invalid source"
    );

    // Deleting a pod stops it and frees its network.
    let del = cluster.dir.join("b.yaml");
    std::fs::write(
        &del,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: b\nspec:\n  containers:\n    - name: main\n      command: [sleep, '1']\n",
    )
    .expect("write");
    let report = delete(&cluster.lab, &cluster.bins, &[del]).expect("delete");
    assert_eq!(report.stopped.len(), 1, "{report:?}");
    assert!(!weft_lab::netns::netns_path(&b.netns).exists());

    let name = cluster.lab.name.clone();
    drop(cluster);
    assert_eq!(leftovers(&name), Vec::<String>::new());
}

#[test]
fn a_bad_manifest_changes_nothing() {
    if !running_as_root("a_bad_manifest_changes_nothing") {
        return;
    }
    let cluster = Cluster::up("bad", 1, None);
    let err = cluster
        .apply_text(
            "bad.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: ok\nspec:\n  containers:\n    - name: m\n      command: [sleep, '60']\n---\nkind: Pod\nmetadata: [not, a, map]\n",
        )
        .expect_err("a malformed document is refused");
    assert!(format!("{err:#}").contains("bad.yaml"), "{err:#}");
    assert!(
        runtime::running_pods(&cluster.lab.name)
            .expect("records")
            .is_empty()
    );
    let err = cluster
        .apply_text(
            "nocmd.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\nspec:\n  containers:\n    - name: m\n",
        )
        .expect_err("a container without a command is refused");
    assert!(format!("{err:#}").contains("no command"), "{err:#}");
    assert!(
        runtime::running_pods(&cluster.lab.name)
            .expect("records")
            .is_empty()
    );
}

#[test]
fn full_size_transfers_cross_the_tunnel_and_survive_an_agent_restart() {
    if !running_as_root("full_size_transfers_cross_the_tunnel_and_survive_an_agent_restart") {
        return;
    }
    let cluster = Cluster::up("mtu", 2, None);
    cluster.apply_text("pods.yaml", PODS).expect("apply");
    let (a, c) = (cluster.pod("a"), cluster.pod("c"));
    let server = SocketAddrV4::new(addr(&c), 9000);
    let listener = run_in(&c.netns, || TcpListener::bind(server))
        .expect("netns")
        .expect("listen");
    let mut stream = run_in(&a.netns, || {
        TcpStream::connect_timeout(&server.into(), Duration::from_secs(5))
    })
    .expect("netns")
    .expect("connect across nodes");
    let (mut conn, _) = listener.accept().expect("accept");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");

    let block: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let send_and_check = |stream: &mut TcpStream, conn: &mut TcpStream| {
        let writer = {
            let mut s = stream.try_clone().expect("clone");
            let data = block.clone();
            std::thread::spawn(move || s.write_all(&data))
        };
        let mut got = vec![0u8; block.len()];
        conn.read_exact(&mut got).expect("the whole block arrives");
        writer.join().expect("writer").expect("write");
        assert!(got == block, "the block arrived altered");
    };
    send_and_check(&mut stream, &mut conn);

    // Restart vps1's agent: the pinned datapath keeps the connection.
    supervise::stop_agent(&cluster.lab.name, "vps1").expect("stop agent");
    send_and_check(&mut stream, &mut conn);
    let status = supervise::start_agent(&cluster.lab.name, "vps1").expect("agent restarts");
    send_and_check(&mut stream, &mut conn);
    // The restarted agent still knows pods a and b.
    assert_eq!(status.endpoints, 2, "{status:?}");
}

#[test]
fn with_xdp_acceleration_tunnel_and_masquerade_replies_pass_xdp_entry() {
    if !running_as_root("with_xdp_acceleration_tunnel_and_masquerade_replies_pass_xdp_entry") {
        return;
    }
    let values = "loadBalancer:\n  acceleration: native\n";
    let cluster = Cluster::up("xdp", 2, Some(values));
    cluster.apply_text("pods.yaml", PODS).expect("apply");
    let (a, c) = (cluster.pod("a"), cluster.pod("c"));
    let node2 = cluster.lab.node("vps2").expect("vps2");
    let view = inspect(node2).expect("inspect");
    assert!(
        view.attachments
            .iter()
            .any(|at| at.ifname == "eth0" && at.hook == Hook::Xdp.name()),
        "xdp_entry is not on vps2's eth0: {:?}",
        view.attachments
    );
    let before = view.metrics;

    for (from, to) in [(&a, &c), (&c, &a)] {
        let server = SocketAddrV4::new(addr(to), 8090);
        let peer = traffic::tcp_echo(&from.netns, &to.netns, server, b"through xdp")
            .unwrap_or_else(|e| panic!("tcp {} -> {}: {e:#}", from.name, to.name));
        assert_eq!(peer_ip(peer), std::net::IpAddr::V4(addr(from)));
    }
    assert_masqueraded(&cluster, &c, node2.underlay_ip, 8091);

    let after = inspect(node2).expect("inspect").metrics;
    assert!(
        counted(&before, &after, Hook::Xdp, Reason::Forwarded),
        "no packet passed xdp_entry on vps2"
    );
}
