//! L2: the routing stages through BPF_PROG_TEST_RUN on a configured node, as a table of
//! fixtures (input packet, expected verdict, expected output bytes, expected reason) plus the
//! sequences that need map state (masquerade and its reverse). Needs root; skipped with a
//! visible message otherwise.
//!
//! BPF_PROG_TEST_RUN runs tc programs on the loopback device, so the pod sending in these
//! fixtures is registered on ifindex 1.

use std::net::Ipv4Addr;

use weft_common::{
    CONFIG_TRACE_FLAG, DatapathConfig, EndpointInfo, EndpointKey, EventKind, Hook, IpcacheEntry,
    MetricsKey, NatEntry4, NatKey4, NodeConfig, Reason,
    geneve::{ETH_P_TEB, GENEVE_OPT_CLASS, GENEVE_OPT_TYPE_IDENTITY, GENEVE_PORT, GENEVE_VNI},
    ipcache::identity,
    nat::{NAT_DIR_EGRESS, NAT_DIR_INGRESS},
    net::{IPPROTO_TCP, IPPROTO_UDP, TC_ACT_OK, TC_ACT_SHOT},
    node::NODE_MASQUERADE_FLAG,
    programs::{FROM_CONTAINER, FROM_NETDEV, TO_NETDEV},
};
use weft_datapath::{
    monotonic_ns, running_as_root,
    testrun::{TestHarness, assert_every_fixture},
};
use weft_model::Ipv4Cidr;
use weft_packet::{PacketBuilder, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, checksum::internet_checksum};

const TC_ACT_REDIRECT: i32 = 7;

const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const PEER_NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 4);
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 42, 1, 10);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 42, 1, 11);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 42, 2, 10);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 42, 1, 1);

const A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const A_HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const B_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x0b];
const B_HOST_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x0c];
const UNDERLAY_MAC: [u8; 6] = [0x0e, 0, 0, 0, 0, 0x01];
const ROUTER_MAC: [u8; 6] = [0x0e, 0, 0, 0, 0, 0xfe];

const A_IDENTITY: u32 = 1000;
const B_IDENTITY: u32 = 2000;
const B_IFINDEX: u32 = 77;
const EXTERNAL_IFINDEX: u32 = 5;

fn node(snat_port_min: u16, snat_port_max: u16) -> NodeConfig {
    NodeConfig {
        ipv4: NODE_IP.octets(),
        external_ifindex: EXTERNAL_IFINDEX,
        vni: GENEVE_VNI,
        snat_port_min,
        snat_port_max,
        flags: NODE_MASQUERADE_FLAG,
        _pad: 0,
        netns_cookie: 0,
    }
}

/// A node with pods A (ifindex 1, the test-run device) and B, and one remote node.
fn configured_node(snat_port_min: u16, snat_port_max: u16) -> TestHarness {
    let mut h = TestHarness::load().expect("loads");
    h.maps
        .set_node(node(snat_port_min, snat_port_max))
        .expect("node");
    let ep = |ifindex, identity, mac, host_mac| EndpointInfo {
        ifindex,
        identity,
        mac,
        host_mac,
        _pad: 0,
    };
    h.maps
        .put_endpoint(
            EndpointKey {
                addr: POD_A.octets(),
            },
            ep(1, A_IDENTITY, A_MAC, A_HOST_MAC),
        )
        .expect("endpoint a");
    h.maps
        .put_endpoint(
            EndpointKey {
                addr: POD_B.octets(),
            },
            ep(B_IFINDEX, B_IDENTITY, B_MAC, B_HOST_MAC),
        )
        .expect("endpoint b");
    let remote_pods = IpcacheEntry {
        identity: identity::UNMANAGED,
        tunnel_endpoint: PEER_NODE_IP.octets(),
    };
    h.maps
        .put_ipcache(cidr("10.42.2.0/24"), remote_pods)
        .expect("ipcache pods");
    let remote_node = IpcacheEntry {
        identity: identity::REMOTE_NODE,
        tunnel_endpoint: [0; 4],
    };
    h.maps
        .put_ipcache(cidr("198.51.100.2/32"), remote_node)
        .expect("ipcache node");
    let this_node = IpcacheEntry {
        identity: identity::HOST,
        tunnel_endpoint: [0; 4],
    };
    h.maps
        .put_ipcache(cidr("198.51.100.1/32"), this_node)
        .expect("ipcache this node");
    h
}

fn cidr(text: &str) -> Ipv4Cidr {
    text.parse().expect("cidr")
}

/// An SNAT entry without its timestamp: (key, translated address, translated port).
type SnatRow = (NatKey4, [u8; 4], u16);

fn from_a() -> PacketBuilder {
    PacketBuilder::new().eth(A_MAC, A_HOST_MAC)
}

/// What one packet must do on a configured node.
struct Fixture {
    name: &'static str,
    program: &'static str,
    hook: Hook,
    packet: Vec<u8>,
    verdict: i32,
    reason: Reason,
    /// The packet as the program must leave it; `None`: unchanged.
    output: Option<Vec<u8>>,
}

fn fixtures() -> Vec<Fixture> {
    let fx = |name, program, hook, packet, verdict, reason, output| Fixture {
        name,
        program,
        hook,
        packet,
        verdict,
        reason,
        output,
    };
    let drop = |name, program, hook, packet, reason| {
        fx(name, program, hook, packet, TC_ACT_SHOT, reason, None)
    };
    let a_to_b = |ttl| {
        PacketBuilder::new()
            .eth(A_MAC, A_HOST_MAC)
            .ipv4(POD_A, POD_B)
            .ttl(ttl)
            .tcp(40000, 80, TCP_SYN)
    };
    let delivered_to_b = |ttl| {
        PacketBuilder::new()
            .eth(B_HOST_MAC, B_MAC)
            .ipv4(POD_A, POD_B)
            .ttl(ttl)
            .tcp(40000, 80, TCP_SYN)
    };
    let geneve_to_a = |vni: u32, proto: u16, inner: &[u8]| {
        geneve_frame(PEER_NODE_IP, NODE_IP, 0xc123, vni, proto, 3000, inner)
    };
    // Well-formed Geneve with any identity, from an outer source that is no other node.
    let geneve_from = |src: Ipv4Addr, identity: u32, inner: &[u8]| {
        geneve_frame(src, NODE_IP, 0xc123, GENEVE_VNI, ETH_P_TEB, identity, inner)
    };
    let inner_to_node = PacketBuilder::new()
        .eth(B_MAC, B_HOST_MAC)
        .ipv4(REMOTE_POD, NODE_IP)
        .ttl(63)
        .udp(5000, 22)
        .build();
    let inner_to_a = PacketBuilder::new()
        .eth(B_MAC, B_HOST_MAC)
        .ipv4(REMOTE_POD, POD_A)
        .ttl(63)
        .udp(5000, 53)
        .payload(b"query")
        .build();
    let inner_delivered = {
        let mut p = inner_to_a.clone();
        p[..6].copy_from_slice(&A_MAC);
        p[6..12].copy_from_slice(&A_HOST_MAC);
        p
    };
    let outer_eth = |mut frame: Vec<u8>| {
        frame[..6].copy_from_slice(&UNDERLAY_MAC);
        frame[6..12].copy_from_slice(&ROUTER_MAC);
        frame
    };
    let inner_to_nobody = PacketBuilder::new()
        .ipv4(REMOTE_POD, Ipv4Addr::new(10, 42, 1, 99))
        .udp(5000, 53)
        .build();
    vec![
        fx(
            "pod to pod on the node: TTL decremented, MACs of B's veth, redirected to B's peer",
            FROM_CONTAINER,
            Hook::FromContainer,
            a_to_b(64).build(),
            TC_ACT_REDIRECT,
            Reason::Forwarded,
            Some(delivered_to_b(63).build()),
        ),
        drop(
            "pod to pod with TTL 1 is not forwarded",
            FROM_CONTAINER,
            Hook::FromContainer,
            a_to_b(1).build(),
            Reason::TtlExceeded,
        ),
        drop(
            "spoofed source address",
            FROM_CONTAINER,
            Hook::FromContainer,
            from_a()
                .ipv4(Ipv4Addr::new(10, 42, 1, 99), POD_B)
                .udp(1, 2)
                .build(),
            Reason::InvalidSource,
        ),
        drop(
            "spoofed source MAC",
            FROM_CONTAINER,
            Hook::FromContainer,
            PacketBuilder::new()
                .eth([0x02, 0, 0, 0, 0, 0x99], A_HOST_MAC)
                .ipv4(POD_A, POD_B)
                .udp(1, 2)
                .build(),
            Reason::InvalidSource,
        ),
        drop(
            "another pod's address and MAC from this veth",
            FROM_CONTAINER,
            Hook::FromContainer,
            PacketBuilder::new()
                .eth(B_MAC, B_HOST_MAC)
                .ipv4(POD_B, POD_A)
                .udp(1, 2)
                .build(),
            Reason::InvalidSource,
        ),
        drop(
            "IPv6 from a pod (pods are IPv4-only)",
            FROM_CONTAINER,
            Hook::FromContainer,
            from_a()
                .ipv6(
                    "fd00::1".parse().expect("v6"),
                    "fd00::2".parse().expect("v6"),
                )
                .udp(1, 2)
                .build(),
            Reason::UnsupportedL3,
        ),
        fx(
            "ARP request for the gateway is answered with the veth's MAC, back into the pod",
            FROM_CONTAINER,
            Hook::FromContainer,
            PacketBuilder::new()
                .arp_request(A_MAC, POD_A, GATEWAY)
                .build(),
            TC_ACT_REDIRECT,
            Reason::Forwarded,
            Some(
                PacketBuilder::new()
                    .eth(A_HOST_MAC, A_MAC)
                    .arp_reply(A_HOST_MAC, GATEWAY, A_MAC, POD_A)
                    .build(),
            ),
        ),
        drop(
            "ARP from a spoofed sender address",
            FROM_CONTAINER,
            Hook::FromContainer,
            PacketBuilder::new()
                .arp_request(A_MAC, Ipv4Addr::new(10, 42, 1, 99), GATEWAY)
                .build(),
            Reason::InvalidSource,
        ),
        fx(
            "pod to the node's address goes to the stack untouched",
            FROM_CONTAINER,
            Hook::FromContainer,
            from_a()
                .ipv4(POD_A, NODE_IP)
                .tcp(40000, 22, TCP_SYN)
                .build(),
            TC_ACT_OK,
            Reason::Forwarded,
            None,
        ),
        fx(
            "Geneve to a local pod: decapsulated, MACs of A's veth, redirected to A's peer",
            FROM_NETDEV,
            Hook::FromNetdev,
            outer_eth(geneve_to_a(GENEVE_VNI, ETH_P_TEB, &inner_to_a)),
            TC_ACT_REDIRECT,
            Reason::Forwarded,
            Some({
                let mut p = inner_delivered.clone();
                p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
                p
            }),
        ),
        fx(
            "Geneve from the other node for this node's own address: decapsulated, to the stack",
            FROM_NETDEV,
            Hook::FromNetdev,
            outer_eth(geneve_to_a(GENEVE_VNI, ETH_P_TEB, &inner_to_node)),
            TC_ACT_OK,
            Reason::Forwarded,
            Some({
                let mut p = outer_eth(vec![0; 12]);
                p.extend_from_slice(&0x0800u16.to_be_bytes());
                p.extend_from_slice(&inner_to_node[14..]);
                p
            }),
        ),
        drop(
            "Geneve with a foreign VNI",
            FROM_NETDEV,
            Hook::FromNetdev,
            outer_eth(geneve_to_a(GENEVE_VNI + 1, ETH_P_TEB, &inner_to_a)),
            Reason::UnknownVni,
        ),
        drop(
            "Geneve carrying something other than Ethernet",
            FROM_NETDEV,
            Hook::FromNetdev,
            outer_eth(geneve_to_a(GENEVE_VNI, 0x0800, &inner_to_a)),
            Reason::MalformedGeneve,
        ),
        drop(
            "Geneve from an address that is no node (the client, claiming a pod's identity)",
            FROM_NETDEV,
            Hook::FromNetdev,
            outer_eth(geneve_from(CLIENT, 3000, &inner_to_a)),
            Reason::TunnelFromUnknownSource,
        ),
        drop(
            "Geneve from an address that is no node, for the node's own address",
            FROM_NETDEV,
            Hook::FromNetdev,
            outer_eth(geneve_from(CLIENT, identity::REMOTE_NODE, &inner_to_node)),
            Reason::TunnelFromUnknownSource,
        ),
        drop(
            "Geneve from a remote pod's address (in the ipcache, behind a tunnel, no node)",
            FROM_NETDEV,
            Hook::FromNetdev,
            outer_eth(geneve_from(REMOTE_POD, 3000, &inner_to_a)),
            Reason::TunnelFromUnknownSource,
        ),
        drop(
            "Geneve from this node's own address (a node never tunnels to itself)",
            FROM_NETDEV,
            Hook::FromNetdev,
            outer_eth(geneve_from(NODE_IP, identity::HOST, &inner_to_a)),
            Reason::TunnelFromUnknownSource,
        ),
        drop(
            "Geneve for an address that is no pod of this node",
            FROM_NETDEV,
            Hook::FromNetdev,
            outer_eth(geneve_to_a(GENEVE_VNI, ETH_P_TEB, &inner_to_nobody)),
            Reason::UnknownEndpoint,
        ),
        fx(
            "the node's own traffic leaves unchanged",
            TO_NETDEV,
            Hook::ToNetdev,
            PacketBuilder::new()
                .ipv4(NODE_IP, CLIENT)
                .tcp(50000, 80, TCP_SYN)
                .build(),
            TC_ACT_OK,
            Reason::Forwarded,
            None,
        ),
        fx(
            "a packet for the node from the world that belongs to no translation goes to the stack",
            FROM_NETDEV,
            Hook::FromNetdev,
            PacketBuilder::new()
                .ipv4(CLIENT, NODE_IP)
                .tcp(80, 41000, TCP_ACK)
                .build(),
            TC_ACT_OK,
            Reason::Forwarded,
            None,
        ),
    ]
}

/// A Geneve frame as Weft writes it: outer IPv4 (TTL 64, no DF, id 0), UDP without checksum,
/// Geneve with one identity option, then `inner` (a whole Ethernet frame).
fn geneve_frame(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    vni: u32,
    proto: u16,
    identity: u32,
    inner: &[u8],
) -> Vec<u8> {
    let mut geneve = vec![0x02, 0x00];
    geneve.extend_from_slice(&proto.to_be_bytes());
    geneve.extend_from_slice(&(vni << 8).to_be_bytes());
    geneve.extend_from_slice(&GENEVE_OPT_CLASS.to_be_bytes());
    geneve.extend_from_slice(&[GENEVE_OPT_TYPE_IDENTITY, 0x01]);
    geneve.extend_from_slice(&identity.to_be_bytes());
    geneve.extend_from_slice(inner);
    let udp_len = (8 + geneve.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&(20 + udp_len).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0, 0, 64, IPPROTO_UDP, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let check = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    let mut frame = vec![0; 12];
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&sport.to_be_bytes());
    frame.extend_from_slice(&GENEVE_PORT.to_be_bytes());
    frame.extend_from_slice(&udp_len.to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(&geneve);
    frame
}

#[test]
fn routing_fixture_table() {
    if !running_as_root("routing_fixture_table") {
        return;
    }
    assert_every_fixture(fixtures(), |f| f.name, check);
}

fn check(fixture: &Fixture) -> anyhow::Result<()> {
    let mut h = configured_node(32768, 65535);
    let out = h.run(fixture.program, &fixture.packet)?;
    anyhow::ensure!(
        out.verdict == fixture.verdict,
        "verdict {} != {}",
        out.verdict,
        fixture.verdict
    );
    let want = fixture.output.as_ref().unwrap_or(&fixture.packet);
    anyhow::ensure!(
        &out.packet == want,
        "output differs:\n got  {:02x?}\n want {:02x?}",
        out.packet,
        want
    );
    let metrics = h.maps.metrics()?;
    let key = MetricsKey {
        hook: fixture.hook,
        reason: fixture.reason,
    };
    anyhow::ensure!(
        metrics.get(&key).map(|v| v.packets) == Some(1) && metrics.len() == 1,
        "metrics: want one packet in {key:?}, got {metrics:?}"
    );
    let events = h.maps.drain_events();
    if fixture.reason.is_drop() {
        anyhow::ensure!(
            events.len() == 1
                && events[0].kind == EventKind::Drop as u8
                && events[0].reason == fixture.reason as u8,
            "want one drop event {:?}, got {events:?}",
            fixture.reason
        );
    }
    Ok(())
}

/// Splits an encapsulated frame into (outer Ethernet, outer IPv4, UDP, Geneve + option, inner).
/// (outer Ethernet, outer IPv4, UDP, Geneve + option, inner frame).
type GeneveParts<'a> = (&'a [u8], &'a [u8], &'a [u8], &'a [u8], &'a [u8]);

fn split_geneve(frame: &[u8]) -> GeneveParts<'_> {
    (
        &frame[..14],
        &frame[14..34],
        &frame[34..42],
        &frame[42..58],
        &frame[58..],
    )
}

#[test]
fn pod_to_remote_pod_is_encapsulated_with_identity() {
    if !running_as_root("pod_to_remote_pod_is_encapsulated_with_identity") {
        return;
    }
    let mut h = configured_node(32768, 65535);
    let original = from_a()
        .ipv4(POD_A, REMOTE_POD)
        .tcp(40000, 8080, TCP_SYN)
        .payload(&[9; 100])
        .build();
    let out = h.run(FROM_CONTAINER, &original).expect("runs");
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_eq!(out.packet.len(), original.len() + 58);
    let (eth, ip, udp, geneve, inner) = split_geneve(&out.packet);
    assert_eq!(
        eth,
        &original[..14],
        "outer L2 is left to the neighbour lookup"
    );

    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    assert!(
        sport >= 0xc000,
        "source port {sport:#x} in the entropy range"
    );
    let inner_after_ttl = from_a()
        .ipv4(POD_A, REMOTE_POD)
        .ttl(63)
        .tcp(40000, 8080, TCP_SYN)
        .payload(&[9; 100])
        .build();
    let want = geneve_frame(
        NODE_IP,
        PEER_NODE_IP,
        sport,
        GENEVE_VNI,
        ETH_P_TEB,
        A_IDENTITY,
        &inner_after_ttl,
    );
    let (_, want_ip, want_udp, want_geneve, want_inner) = split_geneve(&want);
    assert_eq!(ip, want_ip, "outer IPv4");
    assert_eq!(udp, want_udp, "UDP");
    assert_eq!(
        geneve,
        [
            0x02, 0x00, 0x65, 0x58, 0x00, 0x00, 0x02, 0x00, 0x01, 0x4b, 0x01, 0x01, 0x00, 0x00,
            0x03, 0xe8
        ],
        "Geneve header, VNI 2, option class 0x014B type 1 carrying identity 1000"
    );
    assert_eq!(geneve, want_geneve);
    assert_eq!(inner, want_inner, "inner frame with TTL decremented");
}

#[test]
fn decapsulation_reports_the_identity_from_the_option() {
    if !running_as_root("decapsulation_reports_the_identity_from_the_option") {
        return;
    }
    let mut h = configured_node(32768, 65535);
    h.maps
        .set_config(DatapathConfig {
            flags: CONFIG_TRACE_FLAG,
            _pad: 0,
        })
        .expect("config");
    let inner = PacketBuilder::new()
        .ipv4(REMOTE_POD, POD_A)
        .tcp(33000, 80, TCP_SYN)
        .build();
    let frame = geneve_frame(
        PEER_NODE_IP,
        NODE_IP,
        0xd000,
        GENEVE_VNI,
        ETH_P_TEB,
        4242,
        &inner,
    );
    let out = h.run(FROM_NETDEV, &frame).expect("runs");
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let events = h.maps.drain_events();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e.kind, EventKind::Trace as u8);
    assert_eq!(e.src_identity, 4242);
    assert_eq!(
        e.src_addr[..4],
        REMOTE_POD.octets(),
        "the event shows the inner flow"
    );
    assert_eq!((e.src_port, e.dst_port), (33000, 80));
}

fn snat_key(
    saddr: Ipv4Addr,
    daddr: Ipv4Addr,
    sport: u16,
    dport: u16,
    proto: u8,
    dir: u8,
) -> NatKey4 {
    NatKey4 {
        saddr: saddr.octets(),
        daddr: daddr.octets(),
        sport,
        dport,
        proto,
        direction: dir,
        _pad: [0; 2],
    }
}

/// (key, translated address, translated port) of every entry, timestamps left out.
fn snat_state(h: &mut TestHarness) -> Vec<SnatRow> {
    let mut entries = h.maps.snat().expect("snat entries");
    entries.sort_by_key(|(k, _)| *k);
    entries
        .into_iter()
        .map(|(k, v)| (k, v.addr, v.port))
        .collect()
}

#[test]
fn masquerade_and_its_reverse_tcp() {
    if !running_as_root("masquerade_and_its_reverse_tcp") {
        return;
    }
    let mut h = configured_node(32768, 65535);
    let out_pkt = PacketBuilder::new()
        .eth(UNDERLAY_MAC, ROUTER_MAC)
        .ipv4(POD_A, CLIENT)
        .tcp(40000, 80, TCP_SYN)
        .build();
    let out = h.run(TO_NETDEV, &out_pkt).expect("runs");
    assert_eq!(out.verdict, TC_ACT_OK);
    let masqueraded = PacketBuilder::new()
        .eth(UNDERLAY_MAC, ROUTER_MAC)
        .ipv4(NODE_IP, CLIENT)
        .tcp(40000, 80, TCP_SYN)
        .build();
    assert_eq!(
        out.packet, masqueraded,
        "source is the node, the port is kept"
    );
    let mut want = vec![
        (
            snat_key(POD_A, CLIENT, 40000, 80, IPPROTO_TCP, NAT_DIR_EGRESS),
            NODE_IP.octets(),
            40000,
        ),
        (
            snat_key(CLIENT, NODE_IP, 80, 40000, IPPROTO_TCP, NAT_DIR_INGRESS),
            POD_A.octets(),
            40000,
        ),
    ];
    want.sort_by_key(|(k, _, _)| *k);
    assert_eq!(snat_state(&mut h), want);

    // The same flow again reuses its translation.
    let again = h.run(TO_NETDEV, &out_pkt).expect("runs");
    assert_eq!(again.packet, masqueraded);
    assert_eq!(snat_state(&mut h).len(), 2);

    let reply = PacketBuilder::new()
        .eth(ROUTER_MAC, UNDERLAY_MAC)
        .ipv4(CLIENT, NODE_IP)
        .tcp(80, 40000, TCP_SYN | TCP_ACK)
        .build();
    let back = h.run(FROM_NETDEV, &reply).expect("runs");
    assert_eq!(back.verdict, TC_ACT_REDIRECT);
    let delivered = PacketBuilder::new()
        .eth(A_HOST_MAC, A_MAC)
        .ipv4(CLIENT, POD_A)
        .tcp(80, 40000, TCP_SYN | TCP_ACK)
        .build();
    assert_eq!(
        back.packet, delivered,
        "reverse-translated and delivered to the pod"
    );
}

#[test]
fn masquerade_moves_a_port_outside_the_range_and_translates_udp_and_icmp() {
    if !running_as_root("masquerade_moves_a_port_outside_the_range_and_translates_udp_and_icmp") {
        return;
    }
    let mut h = configured_node(40000, 40009);
    let udp = PacketBuilder::new()
        .ipv4(POD_A, CLIENT)
        .udp(5353, 53)
        .payload(b"dns?")
        .build();
    let out = h.run(TO_NETDEV, &udp).expect("runs");
    assert_eq!(out.verdict, TC_ACT_OK);
    let port = u16::from_be_bytes([out.packet[34], out.packet[35]]);
    assert!((40000..=40009).contains(&port), "port {port}");
    let want = PacketBuilder::new()
        .ipv4(NODE_IP, CLIENT)
        .udp(port, 53)
        .payload(b"dns?")
        .build();
    assert_eq!(out.packet, want);

    let reply = PacketBuilder::new()
        .ipv4(CLIENT, NODE_IP)
        .udp(53, port)
        .payload(b"answer")
        .build();
    let back = h.run(FROM_NETDEV, &reply).expect("runs");
    assert_eq!(back.verdict, TC_ACT_REDIRECT);
    let want = PacketBuilder::new()
        .eth(A_HOST_MAC, A_MAC)
        .ipv4(CLIENT, POD_A)
        .udp(53, 5353)
        .payload(b"answer")
        .build();
    assert_eq!(back.packet, want);

    let ping = PacketBuilder::new()
        .ipv4(POD_A, CLIENT)
        .icmp_echo_request(7, 1)
        .build();
    let out = h.run(TO_NETDEV, &ping).expect("runs");
    assert_eq!(out.verdict, TC_ACT_OK);
    let id = u16::from_be_bytes([out.packet[38], out.packet[39]]);
    assert!((40000..=40009).contains(&id), "echo id {id}");
    assert_eq!(
        out.packet,
        PacketBuilder::new()
            .ipv4(NODE_IP, CLIENT)
            .icmp_echo_request(id, 1)
            .build()
    );
    let pong = PacketBuilder::new()
        .ipv4(CLIENT, NODE_IP)
        .icmp_echo_reply(id, 1)
        .build();
    let back = h.run(FROM_NETDEV, &pong).expect("runs");
    assert_eq!(back.verdict, TC_ACT_REDIRECT);
    assert_eq!(
        back.packet,
        PacketBuilder::new()
            .eth(A_HOST_MAC, A_MAC)
            .ipv4(CLIENT, POD_A)
            .icmp_echo_reply(7, 1)
            .build()
    );
}

#[test]
fn masquerade_without_a_free_port_drops_with_its_reason() {
    if !running_as_root("masquerade_without_a_free_port_drops_with_its_reason") {
        return;
    }
    let mut h = configured_node(40000, 40000);
    // Another flow to the same peer holds the only port.
    h.maps
        .put_snat(
            snat_key(CLIENT, NODE_IP, 80, 40000, IPPROTO_TCP, NAT_DIR_INGRESS),
            NatEntry4 {
                addr: POD_B.octets(),
                port: 41000,
                expires_s: u32::MAX,
                ..NatEntry4::default()
            },
        )
        .expect("occupy");
    let syn = PacketBuilder::new()
        .ipv4(POD_A, CLIENT)
        .tcp(40000, 80, TCP_SYN)
        .build();
    let out = h.run(TO_NETDEV, &syn).expect("runs");
    assert_eq!(out.verdict, TC_ACT_SHOT);
    let metrics = h.maps.metrics().expect("metrics");
    let key = MetricsKey {
        hook: Hook::ToNetdev,
        reason: Reason::SnatNoPort,
    };
    assert_eq!(metrics.get(&key).map(|v| v.packets), Some(1), "{metrics:?}");
    let events = h.maps.drain_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].reason, Reason::SnatNoPort as u8);
    // A different peer port is a different reply tuple: the port is free for it.
    let other = PacketBuilder::new()
        .ipv4(POD_A, CLIENT)
        .tcp(40001, 81, TCP_SYN)
        .build();
    assert_eq!(h.run(TO_NETDEV, &other).expect("runs").verdict, TC_ACT_OK);
}

#[test]
fn cluster_destinations_are_not_masqueraded_and_stack_routed_traffic_to_remote_pods_is_tunneled() {
    if !running_as_root("cluster_destinations_are_not_masqueraded") {
        return;
    }
    let mut h = configured_node(32768, 65535);
    let node_to_remote_pod = PacketBuilder::new()
        .ipv4(NODE_IP, REMOTE_POD)
        .icmp_echo_request(1, 1)
        .build();
    let out = h.run(TO_NETDEV, &node_to_remote_pod).expect("runs");
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let (_, _, udp, geneve, inner) = split_geneve(&out.packet);
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), GENEVE_PORT);
    assert_eq!(
        u32::from_be_bytes([geneve[12], geneve[13], geneve[14], geneve[15]]),
        identity::HOST
    );
    assert_eq!(inner, &node_to_remote_pod[..]);
    assert!(h.maps.snat().expect("snat").is_empty());

    let pod_to_peer_node = PacketBuilder::new()
        .ipv4(POD_A, PEER_NODE_IP)
        .udp(1000, 2000)
        .build();
    let out = h.run(TO_NETDEV, &pod_to_peer_node).expect("runs");
    assert_eq!(out.verdict, TC_ACT_OK);
    assert_eq!(
        &out.packet[26..30],
        &NODE_IP.octets(),
        "a node is not a pod: pod traffic to it is masqueraded"
    );
}

// ---- Masquerade entries follow their flow's TCP state ----

/// Monotonic seconds, the clock of `expires_s`.
fn now_s() -> u32 {
    (monotonic_ns().expect("clock") / 1_000_000_000) as u32
}

fn snat_entry(h: &TestHarness, key: &NatKey4) -> Option<NatEntry4> {
    h.maps
        .snat()
        .expect("snat entries")
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, e)| e)
}

/// The two keys of pod A's flow `sport` -> client:80 translated to `port`.
fn flow_keys(sport: u16, port: u16) -> (NatKey4, NatKey4) {
    (
        snat_key(POD_A, CLIENT, sport, 80, IPPROTO_TCP, NAT_DIR_EGRESS),
        snat_key(CLIENT, NODE_IP, 80, port, IPPROTO_TCP, NAT_DIR_INGRESS),
    )
}

/// A packet of pod A's flow 40000 -> client:80: from the pod (`out`, to_netdev) or the
/// client's reply (from_netdev), as it reaches the node.
fn flow_packet(out: bool, flags: u8) -> (&'static str, Vec<u8>) {
    if out {
        let p = PacketBuilder::new()
            .ipv4(POD_A, CLIENT)
            .tcp(40000, 80, flags)
            .build();
        (TO_NETDEV, p)
    } else {
        let p = PacketBuilder::new()
            .ipv4(CLIENT, NODE_IP)
            .tcp(80, 40000, flags)
            .build();
        (FROM_NETDEV, p)
    }
}

/// One step of a flow: the packet, and the lifetime both entries must have after it where the
/// flow's state is settled (`None`: as the state machine has it, whichever way it counts a
/// SYN-ACK).
struct FlowStep {
    what: &'static str,
    out: bool,
    flags: u8,
    lifetime_s: Option<u32>,
}

#[test]
fn masquerade_entries_follow_the_tcp_state_both_ways() {
    if !running_as_root("masquerade_entries_follow_the_tcp_state_both_ways") {
        return;
    }
    use weft_common::ct::{
        CT_LIFETIME_TCP_CLOSE_S as CLOSE, CT_LIFETIME_TCP_ESTABLISHED_S as ESTABLISHED,
        CT_LIFETIME_TCP_SYN_S as SYN, CtDirection, ct_update,
    };
    let step = |what, out, flags, lifetime_s| FlowStep {
        what,
        out,
        flags,
        lifetime_s,
    };
    let handshake = [
        step("SYN from the pod", true, TCP_SYN, Some(SYN)),
        step("SYN-ACK back", false, TCP_SYN | TCP_ACK, None),
        step("ACK from the pod", true, TCP_ACK, Some(ESTABLISHED)),
    ];
    let fins = [
        step(
            "FIN from the pod",
            true,
            TCP_FIN | TCP_ACK,
            Some(ESTABLISHED),
        ),
        step("FIN back", false, TCP_FIN | TCP_ACK, Some(CLOSE)),
        step("last ACK", true, TCP_ACK, Some(CLOSE)),
        step("the pod reuses the 4-tuple", true, TCP_SYN, Some(SYN)),
    ];
    let resets = [
        step("RST back", false, TCP_RST | TCP_ACK, Some(CLOSE)),
        step("a new SYN after the RST", true, TCP_SYN, Some(SYN)),
    ];
    for (name, tail) in [("FINs", &fins[..]), ("RST", &resets[..])] {
        let mut h = configured_node(32768, 65535);
        let (egress, ingress) = flow_keys(40000, 40000);
        let mut flags = 0;
        for s in handshake.iter().chain(tail) {
            let direction = if s.out {
                CtDirection::Forward
            } else {
                CtDirection::Reply
            };
            let up = ct_update(flags, true, s.flags, direction);
            flags = up.flags;
            let lifetime = s.lifetime_s.unwrap_or(up.lifetime_s);
            assert_eq!(lifetime, up.lifetime_s, "{name}: {}: the fixture", s.what);
            let (program, packet) = flow_packet(s.out, s.flags);
            let before = now_s();
            let out = h.run(program, &packet).expect("runs");
            let after = now_s();
            let want = if s.out { TC_ACT_OK } else { TC_ACT_REDIRECT };
            assert_eq!(out.verdict, want, "{name}: {}", s.what);
            for key in [egress, ingress] {
                let e = snat_entry(&h, &key)
                    .unwrap_or_else(|| panic!("{name}: {}: no entry {key:?}", s.what));
                assert_eq!(e.flags, flags, "{name}: {}: state of {key:?}", s.what);
                assert!(
                    (before + lifetime..=after + lifetime).contains(&e.expires_s),
                    "{name}: {}: expiry {} for a lifetime of {lifetime} s at {before}",
                    s.what,
                    e.expires_s,
                );
                assert_eq!(e.port, 40000, "{name}: {}: the flow keeps its port", s.what);
            }
        }
        assert_eq!(h.maps.snat().expect("snat").len(), 2, "{name}");
    }
}

/// `n` live (or, with `expires_s` in the past, expired) flows of pod B to client:80 holding
/// SNAT ports `ports`, both entries each.
fn occupy(h: &mut TestHarness, ports: impl IntoIterator<Item = u16>, expires_s: u32) {
    for port in ports {
        let egress = snat_key(POD_B, CLIENT, port, 80, IPPROTO_TCP, NAT_DIR_EGRESS);
        let ingress = snat_key(CLIENT, NODE_IP, 80, port, IPPROTO_TCP, NAT_DIR_INGRESS);
        let entry = |addr: Ipv4Addr| NatEntry4 {
            addr: addr.octets(),
            port,
            flags: weft_common::ct::CT_FLAG_SEEN_NON_SYN,
            expires_s,
            ..NatEntry4::default()
        };
        h.maps.put_snat(egress, entry(NODE_IP)).expect("egress");
        h.maps.put_snat(ingress, entry(POD_B)).expect("ingress");
    }
}

#[test]
fn an_expired_translation_gives_its_port_to_a_new_flow_at_once_and_is_no_reply_path() {
    if !running_as_root("an_expired_translation_gives_its_port_to_a_new_flow_at_once") {
        return;
    }
    let mut h = configured_node(40000, 40000);
    occupy(&mut h, [40000], now_s() - 1);
    // A late reply to the expired flow is no masqueraded traffic: it goes to the node's stack.
    let late = PacketBuilder::new()
        .ipv4(CLIENT, NODE_IP)
        .tcp(80, 40000, TCP_ACK)
        .build();
    let out = h.run(FROM_NETDEV, &late).expect("runs");
    assert_eq!((out.verdict, out.packet), (TC_ACT_OK, late));
    // Pod A takes the only port: the old flow's two entries go, the new flow's come.
    let syn = PacketBuilder::new()
        .ipv4(POD_A, CLIENT)
        .tcp(40000, 80, TCP_SYN)
        .build();
    let out = h.run(TO_NETDEV, &syn).expect("runs");
    assert_eq!(out.verdict, TC_ACT_OK);
    let (egress, ingress) = flow_keys(40000, 40000);
    let mut want = vec![
        (egress, NODE_IP.octets(), 40000),
        (ingress, POD_A.octets(), 40000),
    ];
    want.sort_by_key(|(k, _, _)| *k);
    assert_eq!(snat_state(&mut h), want);
    // Its reply reaches pod A.
    let reply = PacketBuilder::new()
        .ipv4(CLIENT, NODE_IP)
        .tcp(80, 40000, TCP_SYN | TCP_ACK)
        .build();
    let back = h.run(FROM_NETDEV, &reply).expect("runs");
    assert_eq!(back.verdict, TC_ACT_REDIRECT);
    assert_eq!(&back.packet[30..34], &POD_A.octets());
}

#[test]
fn probing_finds_the_one_free_port_of_a_nearly_full_range() {
    if !running_as_root("probing_finds_the_one_free_port_of_a_nearly_full_range") {
        return;
    }
    const MIN: u16 = 40000;
    const PORTS: u16 = weft_common::nat::SNAT_PORT_PROBES as u16;
    let mut h = configured_node(MIN, MIN + PORTS - 1);
    let live = now_s() + 1000;
    // Each round leaves one port free (a different one each time) for a new flow of pod A from
    // a source port outside the range; a few random probes would miss it.
    for (round, free) in [3, 127, 64, 0, 90, 17, 111, 42].into_iter().enumerate() {
        h.maps
            .snat()
            .expect("snat")
            .into_iter()
            .for_each(|(k, _)| h.maps.delete_snat(k).expect("delete"));
        occupy(
            &mut h,
            (MIN..MIN + PORTS).filter(|p| *p != MIN + free),
            live,
        );
        let sport = 5000 + round as u16;
        let syn = PacketBuilder::new()
            .ipv4(POD_A, CLIENT)
            .tcp(sport, 80, TCP_SYN)
            .build();
        let out = h.run(TO_NETDEV, &syn).expect("runs");
        assert_eq!(out.verdict, TC_ACT_OK, "round {round}");
        let port = u16::from_be_bytes([out.packet[34], out.packet[35]]);
        assert_eq!(port, MIN + free, "round {round}");
    }
    // Now every port is held: the drop keeps its name.
    let syn = PacketBuilder::new()
        .ipv4(POD_A, CLIENT)
        .tcp(6000, 80, TCP_SYN)
        .build();
    assert_eq!(h.run(TO_NETDEV, &syn).expect("runs").verdict, TC_ACT_SHOT);
    let events = h.maps.drain_events();
    assert_eq!(
        events.last().map(|e| e.reason),
        Some(Reason::SnatNoPort as u8)
    );
}
