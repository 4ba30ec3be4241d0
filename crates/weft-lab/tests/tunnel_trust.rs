//! L3: a node's Geneve port belongs to the other nodes (issue 13). Real UDP datagrams carrying
//! forged Geneve, sent to a node's 6081 from the lab's client and from another node, on 2-node
//! labs run by Weft: nothing from outside the cluster is decapsulated (not to a pod, not to the
//! node itself) and every such packet is counted and reported as `tunnel from unknown source`;
//! a DSR option naming no DSR frontend gets no reply from the named address and records no flow,
//! from the client or from a node, while a DSR NodePort flow through the other node works.
//! Needs root.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use weft_common::{
    Hook, MetricsKey, MetricsValue, Reason,
    ct::CT_KIND_DSR,
    geneve::{
        GENEVE_OPT_CLASS, GENEVE_OPT_TYPE_DSR, GENEVE_OPT_TYPE_IDENTITY, GENEVE_PORT, GENEVE_VNI,
        GeneveOptDsr,
    },
    ipcache::identity,
};
use weft_datapath::LbMaps;
use weft_lab::{
    NodeSpec,
    capture::Capture,
    datapath::{drain_events, inspect, metrics_delta},
    leftovers,
    netns::run_in,
    runtime::locate_binary,
    seed,
    testing::{TestCluster, pod_address, running_as_root},
    topology::ETH0,
};
use weft_packet::{GeneveBuilder, L3, PacketBuilder, TCP_SYN, decode};

/// How often each forged datagram is sent.
const COPIES: u64 = 3;
/// Generous: the drops are counted as the datagrams arrive.
const DEADLINE: Duration = Duration::from_secs(20);
/// What the forged DSR option named.
const FORGED_FRONTEND: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 51, 100, 77), 53);
const SOME_POD_IDENTITY: u32 = 4242;

fn take_down(cluster: TestCluster) {
    let name = cluster.lab.name.clone();
    drop(cluster);
    assert_eq!(leftovers(&name), Vec::<String>::new());
}

/// A Geneve payload as a node writes it (VNI, identity option, optionally the DSR option)
/// around `inner`, a whole Ethernet frame.
fn geneve(identity: u32, dsr: Option<(Ipv4Addr, u16)>, inner: &[u8]) -> Vec<u8> {
    let mut g = GeneveBuilder::new(GENEVE_VNI).option(
        GENEVE_OPT_CLASS,
        GENEVE_OPT_TYPE_IDENTITY,
        &identity.to_be_bytes(),
    );
    if let Some((address, port)) = dsr {
        let option = GeneveOptDsr::new(address.octets(), port).to_bytes();
        g = g.option(GENEVE_OPT_CLASS, GENEVE_OPT_TYPE_DSR, &option[4..]);
    }
    g.build(inner)
}

/// Sends `payload` [`COPIES`] times from a UDP socket bound to `from` in `netns` to `node`'s
/// Geneve port: a real datagram, whose outer headers the sender's stack writes.
fn send_to_geneve_port(netns: &str, from: SocketAddrV4, node: &NodeSpec, payload: &[u8]) {
    let socket = run_in(netns, || UdpSocket::bind(from))
        .expect("netns")
        .expect("bind the sender");
    let to = SocketAddrV4::new(node.underlay_ip, GENEVE_PORT);
    for _ in 0..COPIES {
        socket.send_to(payload, to).expect("send the datagram");
    }
}

fn from_netdev(reason: Reason) -> MetricsKey {
    MetricsKey {
        hook: Hook::FromNetdev,
        reason,
    }
}

/// Waits until `node` has counted `want` packets at `from_netdev` under each reason since
/// `before`, or the deadline passes; returns what it counted.
fn wait_for_drops(
    node: &NodeSpec,
    before: &BTreeMap<MetricsKey, MetricsValue>,
    want: &[(Reason, u64)],
) -> Vec<(Reason, u64)> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let delta = metrics_delta(before, &inspect(node).expect("inspect").metrics);
        let counted: Vec<(Reason, u64)> = want
            .iter()
            .map(|&(reason, _)| {
                let n = delta.get(&from_netdev(reason)).map_or(0, |v| v.packets);
                (reason, n)
            })
            .collect();
        if counted == want || Instant::now() >= deadline {
            return counted;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// What `socket` received within a second: (payload, sender).
fn received(socket: &UdpSocket) -> Vec<(Vec<u8>, std::net::SocketAddr)> {
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok((n, peer)) = socket.recv_from(&mut buf) {
        got.push((buf[..n].to_vec(), peer));
    }
    got
}

/// `node`'s pending drop events, as `weft observe` shows them: (reason, hook, source,
/// destination).
fn drop_events(node: &NodeSpec) -> Vec<(String, String, Option<String>, Option<String>)> {
    drain_events(node)
        .expect("events")
        .into_iter()
        .filter(|e| e.kind == "drop")
        .map(|e| (e.reason, e.hook, e.source, e.destination))
        .collect()
}

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
  name: c
spec:
  nodeName: vps2
  containers:
    - name: main
      command: [sleep, '3600']
";

#[test]
fn geneve_from_outside_the_cluster_reaches_neither_a_pod_nor_the_node() {
    if !running_as_root("geneve_from_outside_the_cluster_reaches_neither_a_pod_nor_the_node") {
        return;
    }
    let cluster = TestCluster::up("tunsrc", 2, None);
    cluster.apply_text("pods.yaml", PODS).expect("apply");
    let lab = &cluster.lab;
    let (a, c) = (cluster.pod("a"), cluster.pod("c"));
    let (ip_a, ip_c) = (pod_address(&a), pod_address(&c));
    let vps1 = lab.node("vps1").expect("vps1");

    // A listener in pod a, one on vps1's own address.
    let at_pod = SocketAddrV4::new(ip_a, 7000);
    let at_node = SocketAddrV4::new(vps1.underlay_ip, 7002);
    let pod_socket = run_in(&a.netns, || UdpSocket::bind(at_pod))
        .expect("netns")
        .expect("listen in pod a");
    let node_socket = run_in(&vps1.netns, || UdpSocket::bind(at_node))
        .expect("netns")
        .expect("listen on vps1");

    // The client plays pod c's node: well-formed Geneve, VNI 2, the identity option.
    let inner = |dst: SocketAddrV4, text: &[u8]| {
        PacketBuilder::new()
            .ipv4(ip_c, *dst.ip())
            .udp(5000, dst.port())
            .payload(text)
            .build()
    };
    drain_events(vps1).expect("events");
    let before = inspect(vps1).expect("inspect").metrics;
    let client = SocketAddrV4::new(lab.client.ip, 40000);
    for (dst, identity) in [
        (at_pod, SOME_POD_IDENTITY),
        (at_node, identity::REMOTE_NODE),
    ] {
        let payload = geneve(identity, None, &inner(dst, b"forged"));
        send_to_geneve_port(&lab.client.netns, client, vps1, &payload);
    }
    let counted = wait_for_drops(
        vps1,
        &before,
        &[(Reason::TunnelFromUnknownSource, 2 * COPIES)],
    );

    let (to_pod, to_node) = (received(&pod_socket), received(&node_socket));
    assert_eq!(
        (to_pod, to_node),
        (vec![], vec![]),
        "forged Geneve received by (pod a, vps1)"
    );
    assert_eq!(counted, vec![(Reason::TunnelFromUnknownSource, 2 * COPIES)]);
    // `weft observe` names the reason and the outer source.
    let outer = (
        Reason::TunnelFromUnknownSource.name().to_string(),
        Hook::FromNetdev.name().to_string(),
        Some(client.to_string()),
        Some(SocketAddrV4::new(vps1.underlay_ip, GENEVE_PORT).to_string()),
    );
    let events: Vec<_> = drop_events(vps1)
        .into_iter()
        .filter(|e| e.0 == outer.0)
        .collect();
    assert_eq!(events, vec![outer; 2 * COPIES as usize]);

    // The same listener gets what pod c sends through the tunnel from its node.
    let sender = run_in(&c.netns, || UdpSocket::bind(SocketAddrV4::new(ip_c, 0)))
        .expect("netns")
        .expect("bind in pod c");
    sender.send_to(b"real", at_pod).expect("send");
    let got = received(&pod_socket);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, b"real");
    assert_eq!(got[0].1.ip(), std::net::IpAddr::V4(ip_c));
    take_down(cluster);
}

/// A `whoami` backend on vps2 behind a DSR NodePort.
fn dsr_objects() -> String {
    let netbench = locate_binary("WEFT_NETBENCH", "weft-netbench").expect("weft-netbench is built");
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {{app: web}}
spec:
  nodeName: vps2
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
  ports:
    - {{port: 80, targetPort: 8080, nodePort: 30080, protocol: TCP}}
",
        netbench = netbench.display()
    )
}

#[test]
fn a_forged_dsr_option_gets_no_reply_from_the_named_address_and_records_no_flow() {
    if !running_as_root(
        "a_forged_dsr_option_gets_no_reply_from_the_named_address_and_records_no_flow",
    ) {
        return;
    }
    let cluster = TestCluster::up("tundsr", 2, Some("loadBalancer: {mode: dsr}\n"));
    cluster
        .apply_text("web.yaml", &dsr_objects())
        .expect("apply");
    let lab = &cluster.lab;
    let (vps1, vps2) = (
        lab.node("vps1").expect("vps1"),
        lab.node("vps2").expect("vps2"),
    );
    let web = SocketAddrV4::new(pod_address(&cluster.pod("web")), 8080);

    // A real DSR flow: through vps1's NodePort to the backend on vps2, which honours vps1's
    // option (its own NodePort there) and answers the client itself.
    let via_vps1 = SocketAddrV4::new(vps1.underlay_ip, 30080);
    seed::wait_for_service(lab, via_vps1).expect("the NodePort answers through vps1");
    assert_eq!(
        seed::fetch(lab, via_vps1).expect("via vps1").ip(),
        lab.client.ip,
        "DSR keeps the client's address"
    );

    // The packet: the client's SYN to the backend with a DSR option naming
    // 198.51.100.77:53, sent by the client itself and by vps1 (a node, whose option names no
    // DSR frontend of vps2).
    let capture = Capture::start(&lab.client.netns, ETH0).expect("capture at the client");
    drain_events(vps2).expect("events");
    let before = inspect(vps2).expect("inspect").metrics;
    let syn_from_client = |sport: u16| {
        let inner = PacketBuilder::new()
            .ipv4(lab.client.ip, *web.ip())
            .tcp(sport, web.port(), TCP_SYN)
            .build();
        geneve(identity::WORLD, Some(FORGED_FRONTEND), &inner)
    };
    let (by_client, by_node) = (41001, 41002);
    send_to_geneve_port(
        &lab.client.netns,
        SocketAddrV4::new(lab.client.ip, 40000),
        vps2,
        &syn_from_client(by_client),
    );
    send_to_geneve_port(
        &vps1.netns,
        SocketAddrV4::new(vps1.underlay_ip, 40000),
        vps2,
        &syn_from_client(by_node),
    );
    let want = [
        (Reason::TunnelFromUnknownSource, COPIES),
        (Reason::DsrUnknownFrontend, COPIES),
    ];
    let counted = wait_for_drops(vps2, &before, &want);
    // A SYN-ACK would follow the SYN at once; give it time to cross the router anyway.
    thread::sleep(Duration::from_millis(500));

    let from_forged: Vec<_> = capture
        .drain()
        .iter()
        .filter_map(|f| decode(f).ok())
        .filter(|d| matches!(d.l3, L3::Ipv4 { src, .. } if src == FORGED_FRONTEND.0))
        .map(|d| d.summary())
        .collect();
    assert_eq!(
        from_forged,
        Vec::<String>::new(),
        "the client got packets from {}",
        FORGED_FRONTEND.0
    );
    let forged_flows: Vec<_> = LbMaps::from_pins(&vps2.pin_dir)
        .expect("vps2's maps")
        .ct()
        .expect("conntrack")
        .into_iter()
        .filter(|(k, e)| {
            k.kind == CT_KIND_DSR
                && (e.nat_address == FORGED_FRONTEND.0.octets()
                    || [by_client, by_node].contains(&k.dport))
        })
        .collect();
    assert_eq!(forged_flows, vec![], "DSR flows recorded on vps2");
    assert_eq!(counted, want);
    let events = drop_events(vps2);
    for (reason, n) in want {
        let named = events.iter().filter(|e| e.0 == reason.name()).count();
        assert_eq!(named, n as usize, "drop events {reason:?}: {events:?}");
    }
    take_down(cluster);
}
