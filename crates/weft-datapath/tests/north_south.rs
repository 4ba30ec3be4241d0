//! L2: the north-south service path in tc through BPF_PROG_TEST_RUN — NodePort SNAT to a local
//! and to a remote backend and the replies translated back (from the local pod, from Geneve),
//! DSR Geneve encapsulation with its option on the packet that opens the flow only, the
//! backend's node recording the DSR flow and its pod's reply leaving from the frontend,
//! `externalTrafficPolicy: Local`, named drops, hairpin. Exact output bytes throughout. Needs
//! root; skipped with a visible message otherwise.
//!
//! BPF_PROG_TEST_RUN runs tc programs on the loopback device, so the pod that sends in a
//! fixture is registered on ifindex 1. `bpf_redirect_neigh` leaves the Ethernet header to the
//! kernel's neighbour lookup: a packet redirected that way keeps the one it had.

mod common;

use common::{assert_lifetime, ct_entry, ct_key};

use std::net::Ipv4Addr;

use weft_common::{
    EndpointInfo, EndpointKey, EventKind, Hook, IpcacheEntry, Lb4Backend, Lb4Key, Lb4RevNat,
    Lb4Service, MetricsKey, NatEntry4, NatKey4, NodeConfig, Reason,
    ct::{
        CT_FLAG_LOOPBACK, CT_FLAG_NORTH_SOUTH, CT_FLAG_ONE_WAY, CT_FLAG_SEEN_NON_SYN, CT_KIND_DSR,
        CT_KIND_REPLY, CT_KIND_SERVICE, CT_LIFETIME_TCP_CLOSE_S, CT_LIFETIME_TCP_ESTABLISHED_S,
        CT_LIFETIME_TCP_SYN_S,
    },
    geneve::{
        ETH_P_TEB, GENEVE_OPT_CLASS, GENEVE_OPT_TYPE_IDENTITY, GENEVE_PORT, GENEVE_VNI,
        GeneveOptDsr,
    },
    ipcache::identity,
    lb::{
        LB_ALG_MAGLEV, LB_LOOPBACK_ADDR, LB_SCOPE_EXTERNAL, LB_SCOPE_INTERNAL, SVC_FLAG_DSR,
        SVC_FLAG_EXT_LOCAL, SVC_FLAG_EXTERNAL_IP, SVC_FLAG_NODEPORT, SVC_FLAG_TWO_SCOPES,
        flow_hash,
    },
    nat::{NAT_DIR_EGRESS, NAT_DIR_INGRESS},
    net::{IPPROTO_TCP, IPPROTO_UDP, TC_ACT_OK, TC_ACT_SHOT},
    node::NODE_MASQUERADE_FLAG,
    programs::{
        FROM_CONTAINER, FROM_NETDEV, SOCK_CONNECT4, SOCK_SENDMSG4, TO_CONTAINER, TO_NETDEV,
        XDP_ENTRY,
    },
};
use weft_datapath::{
    running_as_root,
    testrun::{TestHarness, assert_every_fixture},
};
use weft_model::Ipv4Cidr;
use weft_packet::{PacketBuilder, TCP_ACK, TCP_FIN, TCP_SYN, checksum::internet_checksum};

const TC_ACT_REDIRECT: i32 = 7;

/// This node (the frontend node, or the backend node in the DSR backend fixtures).
const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const PEER_NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 4);
const CLIENT_PORT: u16 = 40000;
const LOCAL_POD: Ipv4Addr = Ipv4Addr::new(10, 42, 1, 11);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 42, 2, 10);
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 10);
const NODE_PORT: u16 = 30080;
const TARGET_PORT: u16 = 8080;
/// The SNAT range is one port wide, so the translated port is known.
const SNAT_PORT: u16 = 50000;
const SERVICE_ID: u16 = 9;

const POD_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x0b];
const POD_HOST_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x0c];
const UNDERLAY_MAC: [u8; 6] = [0x0e, 0, 0, 0, 0, 0x01];
const ROUTER_MAC: [u8; 6] = [0x0e, 0, 0, 0, 0, 0xfe];
const POD_IDENTITY: u32 = 3000;
const EXTERNAL_IFINDEX: u32 = 5;
const LOCAL_BACKEND: u32 = 1;
const REMOTE_BACKEND: u32 = 2;

fn cidr(text: &str) -> Ipv4Cidr {
    text.parse().expect("cidr")
}

/// A node with the local pod (ifindex 1) and a remote pod CIDR behind the peer node; backends 1
/// (local pod) and 2 (remote pod) known.
fn configured_node() -> TestHarness {
    let mut h = TestHarness::load().expect("loads");
    h.maps
        .set_node(NodeConfig {
            ipv4: NODE_IP.octets(),
            external_ifindex: EXTERNAL_IFINDEX,
            vni: GENEVE_VNI,
            snat_port_min: SNAT_PORT,
            snat_port_max: SNAT_PORT,
            flags: NODE_MASQUERADE_FLAG,
            _pad: 0,
            netns_cookie: 0,
        })
        .expect("node");
    h.maps
        .put_endpoint(
            EndpointKey {
                addr: LOCAL_POD.octets(),
            },
            EndpointInfo {
                ifindex: 1,
                identity: POD_IDENTITY,
                mac: POD_MAC,
                host_mac: POD_HOST_MAC,
                _pad: 0,
            },
        )
        .expect("endpoint");
    h.maps
        .put_ipcache(
            cidr("10.42.2.0/24"),
            IpcacheEntry {
                identity: identity::UNMANAGED,
                tunnel_endpoint: PEER_NODE_IP.octets(),
            },
        )
        .expect("ipcache pods");
    h.maps
        .put_ipcache(
            cidr("198.51.100.2/32"),
            IpcacheEntry {
                identity: identity::REMOTE_NODE,
                tunnel_endpoint: [0; 4],
            },
        )
        .expect("ipcache node");
    for (id, addr) in [(LOCAL_BACKEND, LOCAL_POD), (REMOTE_BACKEND, REMOTE_POD)] {
        h.lb.put_backend(
            id,
            Lb4Backend {
                address: addr.octets(),
                port: TARGET_PORT,
                proto: IPPROTO_TCP,
                flags: 0,
            },
        )
        .expect("backend");
    }
    h
}

fn frontend_key(address: Ipv4Addr, port: u16, scope: u8, slot: u16) -> Lb4Key {
    Lb4Key {
        address: address.octets(),
        port,
        proto: IPPROTO_TCP,
        scope,
        slot,
        _pad: [0; 2],
    }
}

/// Writes the frontend (`address`, `port`) at `scope` with `flags` and backends `ids`.
fn put_frontend(
    h: &mut TestHarness,
    address: Ipv4Addr,
    port: u16,
    scope: u8,
    flags: u16,
    ids: &[u32],
) {
    let svc = Lb4Service {
        count: ids.len() as u16,
        rev_nat_index: SERVICE_ID,
        flags,
        ..Lb4Service::default()
    };
    h.lb.put_service(frontend_key(address, port, scope, 0), svc)
        .expect("service");
    for (slot, &id) in (1u16..).zip(ids) {
        let entry = Lb4Service {
            backend_id: id,
            rev_nat_index: SERVICE_ID,
            ..Lb4Service::default()
        };
        h.lb.put_service(frontend_key(address, port, scope, slot), entry)
            .expect("slot");
    }
    // The service's revnat names its ClusterIP: north-south replies must not take it.
    h.lb.set_revnat(
        SERVICE_ID,
        Lb4RevNat {
            address: CLUSTER_IP.octets(),
            port: 80,
            _pad: 0,
        },
    )
    .expect("revnat");
}

/// The NodePort on this node's address.
fn put_node_port(h: &mut TestHarness, flags: u16, ids: &[u32]) {
    put_frontend(
        h,
        NODE_IP,
        NODE_PORT,
        LB_SCOPE_EXTERNAL,
        SVC_FLAG_NODEPORT | flags,
        ids,
    );
}

/// A packet from the client, as the router delivers it to this node.
fn from_client(dst: Ipv4Addr, dport: u16, flags: u8) -> PacketBuilder {
    PacketBuilder::new()
        .eth(ROUTER_MAC, UNDERLAY_MAC)
        .ipv4(CLIENT, dst)
        .tcp(CLIENT_PORT, dport, flags)
}

/// A packet the local pod sends.
fn from_pod(dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> PacketBuilder {
    PacketBuilder::new()
        .eth(POD_MAC, POD_HOST_MAC)
        .ipv4(LOCAL_POD, dst)
        .tcp(sport, dport, flags)
}

/// What the local pod receives.
fn to_pod(src: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> PacketBuilder {
    PacketBuilder::new()
        .eth(POD_HOST_MAC, POD_MAC)
        .ipv4(src, LOCAL_POD)
        .ttl(63)
        .tcp(sport, dport, flags)
}

/// A reply as it leaves for the client through the external device: L2 is still the one the
/// packet came with (the neighbour lookup fills it when the redirect happens).
fn to_client(eth: ([u8; 6], [u8; 6]), src: Ipv4Addr, sport: u16, flags: u8) -> Vec<u8> {
    PacketBuilder::new()
        .eth(eth.0, eth.1)
        .ipv4(src, CLIENT)
        .ttl(63)
        .tcp(sport, CLIENT_PORT, flags)
        .build()
}

/// Geneve options as Weft writes them: the identity option, then optionally the DSR option.
fn geneve_options(identity: u32, dsr: Option<(Ipv4Addr, u16)>) -> Vec<u8> {
    let mut opts = GENEVE_OPT_CLASS.to_be_bytes().to_vec();
    opts.extend_from_slice(&[GENEVE_OPT_TYPE_IDENTITY, 0x01]);
    opts.extend_from_slice(&identity.to_be_bytes());
    if let Some((address, port)) = dsr {
        opts.extend_from_slice(&GeneveOptDsr::new(address.octets(), port).to_bytes());
    }
    opts
}

/// A Geneve frame (outer IPv4 TTL 64, id 0, no DF; UDP without checksum; VNI 2) around
/// `inner`, a whole Ethernet frame; `eth` is the outer Ethernet header.
fn geneve_frame(
    eth: ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    options: &[u8],
    inner: &[u8],
) -> Vec<u8> {
    let mut geneve = vec![(options.len() / 4) as u8, 0x00];
    geneve.extend_from_slice(&ETH_P_TEB.to_be_bytes());
    geneve.extend_from_slice(&(GENEVE_VNI << 8).to_be_bytes());
    geneve.extend_from_slice(options);
    geneve.extend_from_slice(inner);
    let udp_len = (8 + geneve.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&(20 + udp_len).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0, 0, 64, IPPROTO_UDP, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let check = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    let mut frame = eth.1.to_vec();
    frame.extend_from_slice(&eth.0);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&sport.to_be_bytes());
    frame.extend_from_slice(&GENEVE_PORT.to_be_bytes());
    frame.extend_from_slice(&udp_len.to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(&geneve);
    frame
}

/// The UDP source port Weft chose for an encapsulated frame (entropy from the flow hash).
fn tunnel_sport(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[34], frame[35]])
}

fn snat_rows(h: &TestHarness) -> Vec<(NatKey4, [u8; 4], u16)> {
    let mut rows: Vec<_> = h
        .maps
        .snat()
        .expect("snat")
        .into_iter()
        .map(|(k, v): (NatKey4, NatEntry4)| (k, v.addr, v.port))
        .collect();
    rows.sort_by_key(|(k, _, _)| *k);
    rows
}

fn nat_key(saddr: Ipv4Addr, daddr: Ipv4Addr, sport: u16, dport: u16, direction: u8) -> NatKey4 {
    NatKey4 {
        saddr: saddr.octets(),
        daddr: daddr.octets(),
        sport,
        dport,
        proto: IPPROTO_TCP,
        direction,
        _pad: [0; 2],
    }
}

/// The SNAT entries of the client's flow translated to `backend`:`TARGET_PORT` from
/// `NODE_IP`:`SNAT_PORT`.
fn snat_of_flow(backend: Ipv4Addr) -> Vec<(NatKey4, [u8; 4], u16)> {
    let mut rows = vec![
        (
            nat_key(CLIENT, backend, CLIENT_PORT, TARGET_PORT, NAT_DIR_EGRESS),
            NODE_IP.octets(),
            SNAT_PORT,
        ),
        (
            nat_key(backend, NODE_IP, TARGET_PORT, SNAT_PORT, NAT_DIR_INGRESS),
            CLIENT.octets(),
            CLIENT_PORT,
        ),
    ];
    rows.sort_by_key(|(k, _, _)| *k);
    rows
}

fn run(h: &mut TestHarness, program: &str, packet: &[u8]) -> (i32, Vec<u8>) {
    let out = h.run(program, packet).expect("runs");
    (out.verdict, out.packet)
}

/// The only drop event of the run names `reason`, and so does the metrics map.
fn assert_dropped(h: &mut TestHarness, hook: Hook, reason: Reason) {
    let events = h.maps.drain_events();
    assert!(
        events.len() == 1
            && events[0].kind == EventKind::Drop as u8
            && events[0].reason == reason as u8,
        "want one drop event {reason:?}, got {events:?}"
    );
    let metrics = h.maps.metrics().expect("metrics");
    assert_eq!(
        metrics.get(&MetricsKey { hook, reason }).map(|v| v.packets),
        Some(1),
        "{metrics:?}"
    );
}

#[test]
fn nodeport_snat_to_a_local_backend_and_the_pods_reply_back_to_the_client() {
    if !running_as_root("nodeport_snat_to_a_local_backend_and_the_pods_reply_back_to_the_client") {
        return;
    }
    let mut h = configured_node();
    put_node_port(&mut h, 0, &[LOCAL_BACKEND]);

    // SNAT mode, but the backend is local: its reply passes this node anyway, so the client
    // keeps its address (as in Cilium) and no masquerade entry is made.
    let syn = from_client(NODE_IP, NODE_PORT, TCP_SYN).build();
    let (verdict, out) = run(&mut h, FROM_NETDEV, &syn);
    assert_eq!(verdict, TC_ACT_REDIRECT, "redirected into the pod");
    assert_eq!(
        out,
        to_pod(CLIENT, CLIENT_PORT, TARGET_PORT, TCP_SYN).build(),
        "DNAT to the backend, the client's address kept"
    );
    assert!(snat_rows(&h).is_empty(), "no SNAT for a local backend");
    let service = ct_key(CLIENT, NODE_IP, CLIENT_PORT, NODE_PORT, CT_KIND_SERVICE);
    let entry = ct_entry(&h, &service).expect("service entry");
    assert_eq!(entry.backend_id, LOCAL_BACKEND);
    assert_eq!(entry.flags & CT_FLAG_NORTH_SOUTH, CT_FLAG_NORTH_SOUTH);
    assert_eq!(
        (entry.nat_address, entry.nat_port),
        (NODE_IP.octets(), NODE_PORT)
    );
    let reply = ct_key(LOCAL_POD, CLIENT, TARGET_PORT, CLIENT_PORT, CT_KIND_REPLY);
    assert!(ct_entry(&h, &reply).is_some(), "reply entry");

    // The pod answers the client: it leaves from the NodePort.
    let syn_ack = from_pod(CLIENT, TARGET_PORT, CLIENT_PORT, TCP_SYN | TCP_ACK).build();
    let (verdict, out) = run(&mut h, FROM_CONTAINER, &syn_ack);
    assert_eq!(verdict, TC_ACT_REDIRECT, "out of the external device");
    assert_eq!(
        out,
        to_client(
            (POD_MAC, POD_HOST_MAC),
            NODE_IP,
            NODE_PORT,
            TCP_SYN | TCP_ACK
        )
    );
    let entry = ct_entry(&h, &service).expect("service entry");
    assert_eq!(
        (entry.packets_forward, entry.packets_reply),
        (1, 1),
        "the reply advanced the flow"
    );

    // The client's ACK reuses the flow's backend.
    let ack = from_client(NODE_IP, NODE_PORT, TCP_ACK).build();
    let (_, out) = run(&mut h, FROM_NETDEV, &ack);
    assert_eq!(
        out,
        to_pod(CLIENT, CLIENT_PORT, TARGET_PORT, TCP_ACK).build()
    );
    assert!(snat_rows(&h).is_empty());
}

#[test]
fn nodeport_snat_to_a_remote_backend_and_its_reply_through_geneve_back_to_the_client() {
    if !running_as_root(
        "nodeport_snat_to_a_remote_backend_and_its_reply_through_geneve_back_to_the_client",
    ) {
        return;
    }
    let mut h = configured_node();
    put_node_port(&mut h, 0, &[REMOTE_BACKEND]);

    let syn = from_client(NODE_IP, NODE_PORT, TCP_SYN).build();
    let (verdict, out) = run(&mut h, FROM_NETDEV, &syn);
    assert_eq!(
        verdict, TC_ACT_REDIRECT,
        "to the neighbour on the external device"
    );
    let inner = PacketBuilder::new()
        .eth(ROUTER_MAC, UNDERLAY_MAC)
        .ipv4(NODE_IP, REMOTE_POD)
        .ttl(63)
        .tcp(SNAT_PORT, TARGET_PORT, TCP_SYN)
        .build();
    let want = geneve_frame(
        (ROUTER_MAC, UNDERLAY_MAC),
        NODE_IP,
        PEER_NODE_IP,
        tunnel_sport(&out),
        &geneve_options(identity::HOST, None),
        &inner,
    );
    assert!(tunnel_sport(&out) >= 0xc000);
    assert_eq!(
        out, want,
        "Geneve to the backend's node; inner DNAT + SNAT; identity option: this node"
    );
    assert_eq!(snat_rows(&h), snat_of_flow(REMOTE_POD));

    // The backend's reply to the node address comes back through the tunnel.
    let reply_inner = PacketBuilder::new()
        .eth(POD_MAC, POD_HOST_MAC)
        .ipv4(REMOTE_POD, NODE_IP)
        .ttl(63)
        .tcp(TARGET_PORT, SNAT_PORT, TCP_SYN | TCP_ACK)
        .build();
    let outer_eth = (ROUTER_MAC, UNDERLAY_MAC);
    let reply = geneve_frame(
        outer_eth,
        PEER_NODE_IP,
        NODE_IP,
        0xd001,
        &geneve_options(POD_IDENTITY, None),
        &reply_inner,
    );
    let (verdict, out) = run(&mut h, FROM_NETDEV, &reply);
    assert_eq!(
        verdict, TC_ACT_REDIRECT,
        "not up the stack: out to the client"
    );
    let want = PacketBuilder::new()
        .eth(ROUTER_MAC, UNDERLAY_MAC)
        .ipv4(NODE_IP, CLIENT)
        .ttl(62)
        .tcp(NODE_PORT, CLIENT_PORT, TCP_SYN | TCP_ACK)
        .build();
    assert_eq!(
        out, want,
        "decapsulated, reverse SNAT + reverse DNAT, TTL decremented"
    );
}

/// A backend on this node: the client's address is kept with DSR and with
/// `externalTrafficPolicy: Local` (no SNAT), and the pod's reply leaves from the frontend.
struct LocalFixture {
    name: &'static str,
    flags: u16,
}

#[test]
fn a_local_backend_keeps_the_client_address_with_dsr_and_external_policy_local() {
    if !running_as_root(
        "a_local_backend_keeps_the_client_address_with_dsr_and_external_policy_local",
    ) {
        return;
    }
    let table = [
        LocalFixture {
            name: "DSR",
            flags: SVC_FLAG_DSR,
        },
        LocalFixture {
            name: "SNAT mode, externalTrafficPolicy Local",
            flags: SVC_FLAG_EXT_LOCAL,
        },
        LocalFixture {
            name: "DSR, externalTrafficPolicy Local",
            flags: SVC_FLAG_DSR | SVC_FLAG_EXT_LOCAL,
        },
    ];
    assert_every_fixture(table, |f| f.name, check_local);
}

fn check_local(f: &LocalFixture) -> anyhow::Result<()> {
    let mut h = configured_node();
    // An externalIP frontend: the reply must come from it, not from the node or the ClusterIP.
    put_frontend(
        &mut h,
        EXTERNAL_IP,
        443,
        LB_SCOPE_EXTERNAL,
        SVC_FLAG_EXTERNAL_IP | f.flags,
        &[LOCAL_BACKEND],
    );
    let (verdict, out) = run(
        &mut h,
        FROM_NETDEV,
        &from_client(EXTERNAL_IP, 443, TCP_SYN).build(),
    );
    anyhow::ensure!(verdict == TC_ACT_REDIRECT, "forward verdict {verdict}");
    let want = to_pod(CLIENT, CLIENT_PORT, TARGET_PORT, TCP_SYN).build();
    anyhow::ensure!(out == want, "forward:\n got  {out:02x?}\n want {want:02x?}");
    anyhow::ensure!(snat_rows(&h).is_empty(), "no SNAT");
    let reply = PacketBuilder::new()
        .eth(POD_MAC, POD_HOST_MAC)
        .ipv4(LOCAL_POD, CLIENT)
        .tcp(TARGET_PORT, CLIENT_PORT, TCP_SYN | TCP_ACK)
        .build();
    let (verdict, out) = run(&mut h, FROM_CONTAINER, &reply);
    anyhow::ensure!(verdict == TC_ACT_REDIRECT, "reply verdict {verdict}");
    let want = to_client((POD_MAC, POD_HOST_MAC), EXTERNAL_IP, 443, TCP_SYN | TCP_ACK);
    anyhow::ensure!(out == want, "reply:\n got  {out:02x?}\n want {want:02x?}");
    Ok(())
}

#[test]
fn dsr_to_a_remote_backend_carries_the_frontend_option_on_the_syn_only() {
    if !running_as_root("dsr_to_a_remote_backend_carries_the_frontend_option_on_the_syn_only") {
        return;
    }
    let mut h = configured_node();
    put_node_port(&mut h, SVC_FLAG_DSR, &[REMOTE_BACKEND]);
    let inner = |flags| {
        PacketBuilder::new()
            .eth(ROUTER_MAC, UNDERLAY_MAC)
            .ipv4(CLIENT, REMOTE_POD)
            .ttl(63)
            .tcp(CLIENT_PORT, TARGET_PORT, flags)
            .build()
    };

    let syn = from_client(NODE_IP, NODE_PORT, TCP_SYN).build();
    let (verdict, out) = run(&mut h, FROM_NETDEV, &syn);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let options = geneve_options(identity::WORLD, Some((NODE_IP, NODE_PORT)));
    assert_eq!(
        options[8..],
        [
            0x01, 0x4b, 0x02, 0x02, 198, 51, 100, 1, 0x75, 0x80, 0x00, 0x00
        ],
        "DSR option: class 0x014B, type 2, 2 words, frontend 198.51.100.1:30080, 2 zero bytes"
    );
    let want = geneve_frame(
        (ROUTER_MAC, UNDERLAY_MAC),
        NODE_IP,
        PEER_NODE_IP,
        tunnel_sport(&out),
        &options,
        &inner(TCP_SYN),
    );
    assert_eq!(out.len(), syn.len() + 70, "SYN + 70 bytes of encapsulation");
    assert_eq!(
        &out[42..50],
        &[0x05, 0x00, 0x65, 0x58, 0, 0, 0x02, 0][..],
        "5 option words"
    );
    assert_eq!(out, want, "DNAT only: the client's address is kept");
    assert!(snat_rows(&h).is_empty(), "no SNAT");
    let service = ct_key(CLIENT, NODE_IP, CLIENT_PORT, NODE_PORT, CT_KIND_SERVICE);
    assert_eq!(
        ct_entry(&h, &service).map(|e| e.backend_id),
        Some(REMOTE_BACKEND)
    );
    let reply = ct_key(REMOTE_POD, CLIENT, TARGET_PORT, CLIENT_PORT, CT_KIND_REPLY);
    assert_eq!(ct_entry(&h, &reply), None, "replies do not pass this node");

    let (_, out) = run(
        &mut h,
        FROM_NETDEV,
        &from_client(NODE_IP, NODE_PORT, TCP_ACK).build(),
    );
    let want = geneve_frame(
        (ROUTER_MAC, UNDERLAY_MAC),
        NODE_IP,
        PEER_NODE_IP,
        tunnel_sport(&out),
        &geneve_options(identity::WORLD, None),
        &inner(TCP_ACK),
    );
    assert_eq!(out.len(), syn.len() + 58, "ACK + 58 bytes of encapsulation");
    assert_eq!(out, want, "the ACK goes without the DSR option");

    // This node never sees the backend's FIN: the client's closes the flow.
    let entry = ct_entry(&h, &service).expect("service entry");
    assert_eq!(entry.flags & CT_FLAG_ONE_WAY, CT_FLAG_ONE_WAY);
    run(
        &mut h,
        FROM_NETDEV,
        &from_client(NODE_IP, NODE_PORT, TCP_ACK | TCP_FIN).build(),
    );
    let entry = ct_entry(&h, &service).expect("service entry");
    let now_s = u32::try_from(weft_datapath::monotonic_ns().expect("clock") / 1_000_000_000)
        .expect("seconds");
    assert!(
        entry.expires_s <= now_s + CT_LIFETIME_TCP_CLOSE_S,
        "the client's FIN gives the close lifetime: expires {} now {now_s}",
        entry.expires_s
    );
}

#[test]
fn dsr_over_udp_carries_the_option_on_the_flows_first_datagram_only() {
    if !running_as_root("dsr_over_udp_carries_the_option_on_the_flows_first_datagram_only") {
        return;
    }
    let mut h = configured_node();
    let key = |slot| Lb4Key {
        proto: IPPROTO_UDP,
        ..frontend_key(NODE_IP, NODE_PORT, LB_SCOPE_EXTERNAL, slot)
    };
    let svc = Lb4Service {
        count: 1,
        rev_nat_index: SERVICE_ID,
        flags: SVC_FLAG_NODEPORT | SVC_FLAG_DSR,
        ..Lb4Service::default()
    };
    h.lb.put_service(key(0), svc).expect("service");
    let slot = Lb4Service {
        backend_id: REMOTE_BACKEND,
        ..Lb4Service::default()
    };
    h.lb.put_service(key(1), slot).expect("slot");
    let datagram = PacketBuilder::new()
        .eth(ROUTER_MAC, UNDERLAY_MAC)
        .ipv4(CLIENT, NODE_IP)
        .udp(CLIENT_PORT, NODE_PORT)
        .payload(b"query")
        .build();
    let inner = PacketBuilder::new()
        .eth(ROUTER_MAC, UNDERLAY_MAC)
        .ipv4(CLIENT, REMOTE_POD)
        .ttl(63)
        .udp(CLIENT_PORT, TARGET_PORT)
        .payload(b"query")
        .build();
    for (n, dsr) in [(1, Some((NODE_IP, NODE_PORT))), (2, None)] {
        let (verdict, out) = run(&mut h, FROM_NETDEV, &datagram);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let want = geneve_frame(
            (ROUTER_MAC, UNDERLAY_MAC),
            NODE_IP,
            PEER_NODE_IP,
            tunnel_sport(&out),
            &geneve_options(identity::WORLD, dsr),
            &inner,
        );
        assert_eq!(out, want, "datagram {n}");
    }
}

#[test]
fn dsr_on_the_backend_node_records_the_flow_and_the_reply_leaves_from_the_frontend() {
    if !running_as_root(
        "dsr_on_the_backend_node_records_the_flow_and_the_reply_leaves_from_the_frontend",
    ) {
        return;
    }
    // This node hosts the backend; the peer node balanced the flow to it. Every node has the
    // externalIP frontend, with DSR.
    let mut h = configured_node();
    put_dsr_external_ip(&mut h);
    let inner = |flags| {
        PacketBuilder::new()
            .eth(ROUTER_MAC, UNDERLAY_MAC)
            .ipv4(CLIENT, LOCAL_POD)
            .ttl(63)
            .tcp(CLIENT_PORT, TARGET_PORT, flags)
            .build()
    };
    let syn = geneve_frame(
        (ROUTER_MAC, UNDERLAY_MAC),
        PEER_NODE_IP,
        NODE_IP,
        0xc444,
        &geneve_options(identity::WORLD, Some((EXTERNAL_IP, 443))),
        &inner(TCP_SYN),
    );
    let (verdict, out) = run(&mut h, FROM_NETDEV, &syn);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        out,
        PacketBuilder::new()
            .eth(POD_HOST_MAC, POD_MAC)
            .ipv4(CLIENT, LOCAL_POD)
            .ttl(63)
            .tcp(CLIENT_PORT, TARGET_PORT, TCP_SYN)
            .build(),
        "decapsulated and delivered: the pod sees the client's address"
    );
    let dsr = ct_key(LOCAL_POD, CLIENT, TARGET_PORT, CLIENT_PORT, CT_KIND_DSR);
    let entry = ct_entry(&h, &dsr).expect("DSR entry");
    assert_eq!(
        (entry.nat_address, entry.nat_port),
        (EXTERNAL_IP.octets(), 443)
    );
    assert_eq!((entry.backend_id, entry.rev_nat_index), (0, 0));
    assert_eq!(entry.flags & CT_FLAG_NORTH_SOUTH, CT_FLAG_NORTH_SOUTH);

    // The pod's reply: from the frontend, straight out of the external device.
    let syn_ack = PacketBuilder::new()
        .eth(POD_MAC, POD_HOST_MAC)
        .ipv4(LOCAL_POD, CLIENT)
        .tcp(TARGET_PORT, CLIENT_PORT, TCP_SYN | TCP_ACK)
        .build();
    let (verdict, out) = run(&mut h, FROM_CONTAINER, &syn_ack);
    assert_eq!(
        verdict, TC_ACT_REDIRECT,
        "redirected, not handed to the stack"
    );
    assert_eq!(
        out,
        to_client((POD_MAC, POD_HOST_MAC), EXTERNAL_IP, 443, TCP_SYN | TCP_ACK)
    );
    assert!(snat_rows(&h).is_empty(), "never masqueraded");

    // A later packet without the option advances the recorded flow.
    let ack = geneve_frame(
        (ROUTER_MAC, UNDERLAY_MAC),
        PEER_NODE_IP,
        NODE_IP,
        0xc444,
        &geneve_options(identity::WORLD, None),
        &inner(TCP_ACK),
    );
    let (verdict, _) = run(&mut h, FROM_NETDEV, &ack);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let entry = ct_entry(&h, &dsr).expect("DSR entry");
    assert_eq!((entry.packets_forward, entry.packets_reply), (2, 1));

    // The same pod's traffic to the world outside a DSR flow still goes to the stack.
    let other = PacketBuilder::new()
        .eth(POD_MAC, POD_HOST_MAC)
        .ipv4(LOCAL_POD, CLIENT)
        .tcp(TARGET_PORT, 41000, TCP_ACK)
        .build();
    let (verdict, out) = run(&mut h, FROM_CONTAINER, &other);
    assert_eq!((verdict, out), (TC_ACT_OK, other));
}

/// The frontend the DSR fixtures of the backend's node name: an externalIP with DSR, in this
/// node's service map as in every node's.
fn put_dsr_external_ip(h: &mut TestHarness) {
    put_frontend(
        h,
        EXTERNAL_IP,
        443,
        LB_SCOPE_EXTERNAL,
        SVC_FLAG_EXTERNAL_IP | SVC_FLAG_DSR,
        &[LOCAL_BACKEND],
    );
}

/// The client's TCP segment to the local pod, as the entry node tunnels it after DNAT.
fn client_to_local_pod(flags: u8) -> Vec<u8> {
    PacketBuilder::new()
        .eth(ROUTER_MAC, UNDERLAY_MAC)
        .ipv4(CLIENT, LOCAL_POD)
        .ttl(63)
        .tcp(CLIENT_PORT, TARGET_PORT, flags)
        .build()
}

/// A Geneve packet from `src` carrying the client's `flags` segment and a DSR option naming
/// `frontend`.
fn dsr_geneve(src: Ipv4Addr, frontend: Option<(Ipv4Addr, u16)>, flags: u8) -> Vec<u8> {
    geneve_frame(
        (ROUTER_MAC, UNDERLAY_MAC),
        src,
        NODE_IP,
        0xc444,
        &geneve_options(identity::WORLD, frontend),
        &client_to_local_pod(flags),
    )
}

/// What the backend's node does with a DSR option.
struct DsrOption {
    name: &'static str,
    /// The outer source.
    sender: Ipv4Addr,
    /// The frontend the option names.
    frontend: (Ipv4Addr, u16),
    /// A frontend of this node: address, port, flags.
    this_node: (Ipv4Addr, u16, u16),
    /// `None`: honoured (delivered, flow recorded with the option's frontend).
    reason: Option<Reason>,
}

#[test]
fn the_backend_node_honours_a_dsr_option_only_from_a_node_for_its_own_dsr_frontend() {
    if !running_as_root(
        "the_backend_node_honours_a_dsr_option_only_from_a_node_for_its_own_dsr_frontend",
    ) {
        return;
    }
    let dsr_ip = SVC_FLAG_EXTERNAL_IP | SVC_FLAG_DSR;
    let dsr_node_port = SVC_FLAG_NODEPORT | SVC_FLAG_DSR;
    let table = [
        DsrOption {
            name: "from the other node, for a DSR externalIP of this node: honoured",
            sender: PEER_NODE_IP,
            frontend: (EXTERNAL_IP, 443),
            this_node: (EXTERNAL_IP, 443, dsr_ip),
            reason: None,
        },
        DsrOption {
            name: "from the other node, for its own NodePort, DSR here too: honoured",
            sender: PEER_NODE_IP,
            frontend: (PEER_NODE_IP, NODE_PORT),
            this_node: (NODE_IP, NODE_PORT, dsr_node_port),
            reason: None,
        },
        DsrOption {
            name: "from the client (no node): not decapsulated at all",
            sender: CLIENT,
            frontend: (EXTERNAL_IP, 443),
            this_node: (EXTERNAL_IP, 443, dsr_ip),
            reason: Some(Reason::TunnelFromUnknownSource),
        },
        DsrOption {
            name: "from the other node, for an address that is no frontend (198.51.100.77:53)",
            sender: PEER_NODE_IP,
            frontend: (Ipv4Addr::new(198, 51, 100, 77), 53),
            this_node: (EXTERNAL_IP, 443, dsr_ip),
            reason: Some(Reason::DsrUnknownFrontend),
        },
        DsrOption {
            name: "from the other node, for a frontend in SNAT mode",
            sender: PEER_NODE_IP,
            frontend: (EXTERNAL_IP, 443),
            this_node: (EXTERNAL_IP, 443, SVC_FLAG_EXTERNAL_IP),
            reason: Some(Reason::DsrUnknownFrontend),
        },
        DsrOption {
            name: "from the other node, for a ClusterIP",
            sender: PEER_NODE_IP,
            frontend: (CLUSTER_IP, 80),
            this_node: (CLUSTER_IP, 80, 0),
            reason: Some(Reason::DsrUnknownFrontend),
        },
        DsrOption {
            name: "from the other node, for its own NodePort in SNAT mode here",
            sender: PEER_NODE_IP,
            frontend: (PEER_NODE_IP, NODE_PORT),
            this_node: (NODE_IP, NODE_PORT, SVC_FLAG_NODEPORT),
            reason: Some(Reason::DsrUnknownFrontend),
        },
        DsrOption {
            name: "from the other node, for a third node's NodePort (only the sender's own)",
            sender: PEER_NODE_IP,
            frontend: (Ipv4Addr::new(198, 51, 100, 3), NODE_PORT),
            this_node: (NODE_IP, NODE_PORT, dsr_node_port),
            reason: Some(Reason::DsrUnknownFrontend),
        },
    ];
    assert_every_fixture(table, |f| f.name, check_dsr_option);
}

fn check_dsr_option(f: &DsrOption) -> anyhow::Result<()> {
    let mut h = configured_node();
    let (address, port, flags) = f.this_node;
    put_frontend(
        &mut h,
        address,
        port,
        LB_SCOPE_EXTERNAL,
        flags,
        &[LOCAL_BACKEND],
    );
    let syn = dsr_geneve(f.sender, Some(f.frontend), TCP_SYN);
    let (verdict, out) = run(&mut h, FROM_NETDEV, &syn);
    let dsr = ct_key(LOCAL_POD, CLIENT, TARGET_PORT, CLIENT_PORT, CT_KIND_DSR);
    match f.reason {
        None => {
            anyhow::ensure!(verdict == TC_ACT_REDIRECT, "verdict {verdict}");
            let want = PacketBuilder::new()
                .eth(POD_HOST_MAC, POD_MAC)
                .ipv4(CLIENT, LOCAL_POD)
                .ttl(63)
                .tcp(CLIENT_PORT, TARGET_PORT, TCP_SYN)
                .build();
            anyhow::ensure!(out == want, "delivered to the pod: {out:02x?}");
            let entry = ct_entry(&h, &dsr).ok_or_else(|| anyhow::anyhow!("no DSR entry"))?;
            anyhow::ensure!(
                (entry.nat_address, entry.nat_port) == (f.frontend.0.octets(), f.frontend.1),
                "{entry:?}"
            );
        }
        Some(reason) => {
            anyhow::ensure!(verdict == TC_ACT_SHOT, "verdict {verdict}");
            assert_dropped(&mut h, Hook::FromNetdev, reason);
            let ct = h.lb.ct()?;
            anyhow::ensure!(ct.is_empty(), "nothing recorded: {ct:?}");
        }
    }
    Ok(())
}

#[test]
fn a_dsr_flow_keeps_the_syn_lifetime_until_the_clients_ack() {
    if !running_as_root("a_dsr_flow_keeps_the_syn_lifetime_until_the_clients_ack") {
        return;
    }
    let mut h = configured_node();
    put_dsr_external_ip(&mut h);
    let dsr = ct_key(LOCAL_POD, CLIENT, TARGET_PORT, CLIENT_PORT, CT_KIND_DSR);
    let syn = dsr_geneve(PEER_NODE_IP, Some((EXTERNAL_IP, 443)), TCP_SYN);
    assert_eq!(run(&mut h, FROM_NETDEV, &syn).0, TC_ACT_REDIRECT);
    let entry = ct_entry(&h, &dsr).expect("DSR entry");
    assert_lifetime(&entry, CT_LIFETIME_TCP_SYN_S, "after the SYN");

    // The pod's SYN-ACK: anyone who can send a SYN gets one, so it establishes nothing.
    let syn_ack = PacketBuilder::new()
        .eth(POD_MAC, POD_HOST_MAC)
        .ipv4(LOCAL_POD, CLIENT)
        .tcp(TARGET_PORT, CLIENT_PORT, TCP_SYN | TCP_ACK)
        .build();
    assert_eq!(run(&mut h, FROM_CONTAINER, &syn_ack).0, TC_ACT_REDIRECT);
    let entry = ct_entry(&h, &dsr).expect("DSR entry");
    assert_eq!(entry.flags & CT_FLAG_SEEN_NON_SYN, 0, "{entry:?}");
    assert_lifetime(&entry, CT_LIFETIME_TCP_SYN_S, "after the pod's SYN-ACK");

    // The client's ACK (no option) establishes it.
    let ack = dsr_geneve(PEER_NODE_IP, None, TCP_ACK);
    assert_eq!(run(&mut h, FROM_NETDEV, &ack).0, TC_ACT_REDIRECT);
    let entry = ct_entry(&h, &dsr).expect("DSR entry");
    assert_eq!(entry.flags & CT_FLAG_SEEN_NON_SYN, CT_FLAG_SEEN_NON_SYN);
    assert_lifetime(
        &entry,
        CT_LIFETIME_TCP_ESTABLISHED_S,
        "after the client's ACK",
    );
}

/// What a packet from outside to a frontend must do when it is refused or ignored.
struct Refusal {
    name: &'static str,
    flags: u16,
    ids: &'static [u32],
    /// `None`: passed on unchanged.
    reason: Option<Reason>,
}

#[test]
fn refused_and_ignored_packets_from_outside() {
    if !running_as_root("refused_and_ignored_packets_from_outside") {
        return;
    }
    let table = [
        Refusal {
            name: "externalTrafficPolicy Local without a local backend: dropped",
            flags: SVC_FLAG_NODEPORT | SVC_FLAG_EXT_LOCAL,
            ids: &[],
            reason: Some(Reason::NoLocalBackend),
        },
        Refusal {
            name: "a NodePort without backends: dropped",
            flags: SVC_FLAG_NODEPORT,
            ids: &[],
            reason: Some(Reason::NoServiceBackend),
        },
        Refusal {
            name: "a backend neither local nor behind a tunnel: dropped",
            flags: SVC_FLAG_NODEPORT,
            ids: &[3],
            reason: Some(Reason::BackendUnreachable),
        },
        Refusal {
            name: "a ClusterIP-only frontend is not reachable from outside: to the stack",
            flags: 0,
            ids: &[LOCAL_BACKEND],
            reason: None,
        },
    ];
    assert_every_fixture(table, |f| f.name, check_refusal);
}

fn check_refusal(f: &Refusal) -> anyhow::Result<()> {
    let mut h = configured_node();
    h.lb.put_backend(
        3,
        Lb4Backend {
            address: [192, 0, 2, 99],
            port: TARGET_PORT,
            proto: IPPROTO_TCP,
            flags: 0,
        },
    )?;
    put_frontend(
        &mut h,
        NODE_IP,
        NODE_PORT,
        LB_SCOPE_EXTERNAL,
        f.flags,
        f.ids,
    );
    let syn = from_client(NODE_IP, NODE_PORT, TCP_SYN).build();
    let (verdict, out) = run(&mut h, FROM_NETDEV, &syn);
    anyhow::ensure!(out == syn, "the packet is left as it was");
    match f.reason {
        Some(reason) => {
            anyhow::ensure!(verdict == TC_ACT_SHOT, "verdict {verdict}");
            assert_dropped(&mut h, Hook::FromNetdev, reason);
            anyhow::ensure!(h.lb.ct()?.is_empty(), "no flow recorded");
        }
        None => anyhow::ensure!(verdict == TC_ACT_OK, "verdict {verdict}"),
    }
    Ok(())
}

#[test]
fn hairpin_a_pod_given_itself_through_a_nodeport_sees_the_loopback_address() {
    if !running_as_root("hairpin_a_pod_given_itself_through_a_nodeport_sees_the_loopback_address") {
        return;
    }
    let mut h = configured_node();
    // From outside only the remote backend (eTP Local is not set here: the external scope
    // holds the remote one); from inside the cluster the scope-1 entry: the pod itself.
    put_node_port(&mut h, SVC_FLAG_TWO_SCOPES, &[REMOTE_BACKEND]);
    put_frontend(
        &mut h,
        NODE_IP,
        NODE_PORT,
        LB_SCOPE_INTERNAL,
        SVC_FLAG_NODEPORT | SVC_FLAG_TWO_SCOPES,
        &[LOCAL_BACKEND],
    );
    let syn = from_pod(NODE_IP, CLIENT_PORT, NODE_PORT, TCP_SYN).build();
    let (verdict, out) = run(&mut h, FROM_CONTAINER, &syn);
    assert_eq!(verdict, TC_ACT_REDIRECT, "back into the pod");
    let loopback = Ipv4Addr::from(LB_LOOPBACK_ADDR);
    assert_eq!(
        out,
        to_pod(loopback, CLIENT_PORT, TARGET_PORT, TCP_SYN).build(),
        "internal scope's backend (the pod itself), source the loopback address"
    );
    let reply = ct_key(LOCAL_POD, loopback, TARGET_PORT, CLIENT_PORT, CT_KIND_REPLY);
    let entry = ct_entry(&h, &reply).expect("reply entry keyed by the loopback address");
    assert_eq!(entry.flags & CT_FLAG_LOOPBACK, CT_FLAG_LOOPBACK);
    assert_eq!(entry.flags & CT_FLAG_NORTH_SOUTH, 0, "not from outside");

    // Its reply to the loopback address comes back from the NodePort to its own address.
    let syn_ack = from_pod(loopback, TARGET_PORT, CLIENT_PORT, TCP_SYN | TCP_ACK).build();
    let (verdict, out) = run(&mut h, FROM_CONTAINER, &syn_ack);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        out,
        to_pod(NODE_IP, NODE_PORT, CLIENT_PORT, TCP_SYN | TCP_ACK).build()
    );
    // The next packet of the flow keeps its backend and its loopback source.
    let ack = from_pod(NODE_IP, CLIENT_PORT, NODE_PORT, TCP_ACK).build();
    let (_, out) = run(&mut h, FROM_CONTAINER, &ack);
    assert_eq!(
        out,
        to_pod(loopback, CLIENT_PORT, TARGET_PORT, TCP_ACK).build()
    );
    let service = ct_key(LOCAL_POD, NODE_IP, CLIENT_PORT, NODE_PORT, CT_KIND_SERVICE);
    let entry = ct_entry(&h, &service).expect("service entry");
    assert_eq!((entry.packets_forward, entry.packets_reply), (2, 1));
}

#[test]
fn a_pod_reaching_a_nodeport_gets_a_remote_backend_without_loopback() {
    if !running_as_root("a_pod_reaching_a_nodeport_gets_a_remote_backend_without_loopback") {
        return;
    }
    let mut h = configured_node();
    put_node_port(&mut h, SVC_FLAG_DSR, &[REMOTE_BACKEND]);
    let syn = from_pod(NODE_IP, CLIENT_PORT, NODE_PORT, TCP_SYN).build();
    let (verdict, out) = run(&mut h, FROM_CONTAINER, &syn);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let inner = PacketBuilder::new()
        .eth(POD_MAC, POD_HOST_MAC)
        .ipv4(LOCAL_POD, REMOTE_POD)
        .ttl(63)
        .tcp(CLIENT_PORT, TARGET_PORT, TCP_SYN)
        .build();
    let want = geneve_frame(
        (POD_MAC, POD_HOST_MAC),
        NODE_IP,
        PEER_NODE_IP,
        tunnel_sport(&out),
        &geneve_options(POD_IDENTITY, None),
        &inner,
    );
    assert_eq!(
        out, want,
        "east-west: DNAT and the tunnel, the pod's own address"
    );
}

#[test]
fn maglev_from_outside_picks_the_slot_of_the_clients_flow_hash() {
    if !running_as_root("maglev_from_outside_picks_the_slot_of_the_clients_flow_hash") {
        return;
    }
    let mut h = configured_node();
    const M: u32 = 251;
    put_node_port(&mut h, SVC_FLAG_DSR, &[LOCAL_BACKEND, REMOTE_BACKEND]);
    let svc = Lb4Service {
        count: 2,
        rev_nat_index: SERVICE_ID,
        flags: SVC_FLAG_NODEPORT | SVC_FLAG_DSR,
        algorithm: LB_ALG_MAGLEV,
        maglev_size: M,
        ..Lb4Service::default()
    };
    h.lb.put_service(frontend_key(NODE_IP, NODE_PORT, LB_SCOPE_EXTERNAL, 0), svc)
        .expect("service");
    let table: Vec<u32> = (0..M)
        .map(|i| {
            if i % 3 == 0 {
                REMOTE_BACKEND
            } else {
                LOCAL_BACKEND
            }
        })
        .collect();
    h.lb.put_maglev(SERVICE_ID, &table).expect("maglev");
    for sport in 45000..45020u16 {
        let syn = PacketBuilder::new()
            .eth(ROUTER_MAC, UNDERLAY_MAC)
            .ipv4(CLIENT, NODE_IP)
            .tcp(sport, NODE_PORT, TCP_SYN)
            .build();
        let (verdict, out) = run(&mut h, FROM_NETDEV, &syn);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let slot = flow_hash(
            CLIENT.octets(),
            NODE_IP.octets(),
            sport,
            NODE_PORT,
            IPPROTO_TCP,
        ) % M;
        let tunneled = out.len() > syn.len();
        assert_eq!(
            tunneled,
            table[slot as usize] == REMOTE_BACKEND,
            "port {sport}, slot {slot}"
        );
    }
}

#[test]
fn replies_delivered_by_the_stack_and_sent_by_the_node_are_left_alone() {
    if !running_as_root("replies_delivered_by_the_stack_and_sent_by_the_node_are_left_alone") {
        return;
    }
    let mut h = configured_node();
    put_node_port(&mut h, SVC_FLAG_DSR, &[LOCAL_BACKEND]);
    run(
        &mut h,
        FROM_NETDEV,
        &from_client(NODE_IP, NODE_PORT, TCP_SYN).build(),
    );
    // A reply leaving through the external device from the frontend is not masqueraded.
    let leaving = to_client((ROUTER_MAC, UNDERLAY_MAC), NODE_IP, NODE_PORT, TCP_ACK);
    let (verdict, out) = run(&mut h, TO_NETDEV, &leaving);
    assert_eq!((verdict, out), (TC_ACT_OK, leaving));
    // to_container of a packet the stack delivers that matches nothing: unchanged.
    let unrelated = to_pod(CLIENT, 1234, TARGET_PORT, TCP_SYN).build();
    let (verdict, out) = run(&mut h, TO_CONTAINER, &unrelated);
    assert_eq!((verdict, out), (TC_ACT_OK, unrelated));
}

/// Not an assertion: what the verifier processed for each tc/XDP program, for the report.
#[test]
fn verifier_stats_of_the_hook_programs() {
    if !running_as_root("verifier_stats_of_the_hook_programs") {
        return;
    }
    let h = TestHarness::load().expect("loads");
    for program in [
        FROM_CONTAINER,
        TO_CONTAINER,
        FROM_NETDEV,
        TO_NETDEV,
        SOCK_CONNECT4,
        SOCK_SENDMSG4,
        XDP_ENTRY,
    ] {
        let (verified, insns) = h.verifier_stats(program).expect("stats");
        eprintln!("{program}: {verified} instructions verified, {insns} instructions");
        assert!(verified < 1_000_000, "{program} near the verifier's limit");
    }
}

// ---- The north-south path in XDP ----
//
// `xdp_entry` resolves the tunnel's next hop with `bpf_fib_lookup` in the namespace of the
// device the frame arrived on. Each fixture runs on a thread of its own in a private network
// namespace (`unshare`, gone with the thread: nothing to clean up): a veth `wxdp0` with this
// node's address and MAC, and, where the fixture wants the XDP_TX path, a permanent neighbour
// entry for the peer node. Without one the lookup answers NO_NEIGH and the packet goes to tc.

const XDP_TX: i32 = 3;
const XDP_PASS: i32 = weft_common::net::XDP_PASS as i32;
const XDP_DROP: i32 = weft_common::net::XDP_DROP as i32;
const PEER_MAC: [u8; 6] = [0x0e, 0, 0, 0, 0, 0x02];
const XDP_DEV: &str = "wxdp0";

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

fn ip(args: &str) {
    let status = std::process::Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .expect("ip runs");
    assert!(status.success(), "ip {args}");
}

/// Runs `test` on a thread in a fresh network namespace holding `wxdp0` (this node's underlay
/// device, forwarding on) and, with `neighbour`, the peer node's MAC; `test` gets the device's
/// ifindex.
fn in_underlay_netns(neighbour: bool, test: impl FnOnce(u32) + Send + 'static) {
    std::thread::spawn(move || {
        // SAFETY: unshare on the calling thread only; the namespace dies with the thread.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
        ip(&format!(
            "link add {XDP_DEV} address {} type veth peer name wxdp1",
            mac_text(UNDERLAY_MAC)
        ));
        ip(&format!("link set {XDP_DEV} up"));
        ip("link set wxdp1 up");
        ip(&format!("addr add {NODE_IP}/24 dev {XDP_DEV}"));
        std::fs::write(format!("/proc/sys/net/ipv4/conf/{XDP_DEV}/forwarding"), "1")
            .expect("forwarding");
        if neighbour {
            add_peer_neighbour();
        }
        let name = std::ffi::CString::new(XDP_DEV).expect("name");
        // SAFETY: a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(ifindex, 0);
        test(ifindex);
    })
    .join()
    .expect("the fixture's thread");
}

fn add_peer_neighbour() {
    ip(&format!(
        "neigh replace {PEER_NODE_IP} lladdr {} dev {XDP_DEV} nud permanent",
        mac_text(PEER_MAC)
    ));
}

fn run_xdp(h: &mut TestHarness, ifindex: u32, packet: &[u8]) -> (i32, Vec<u8>) {
    let out = h.run_xdp_on(XDP_ENTRY, packet, ifindex).expect("runs");
    (out.verdict, out.packet)
}

/// The outer UDP source port XDP picks: the flow hash of the translated inner tuple.
fn xdp_tunnel_sport(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> u16 {
    0xC000 | (flow_hash(src.octets(), dst.octets(), sport, dport, IPPROTO_TCP) as u16 & 0x3FFF)
}

fn xdp_count(h: &TestHarness, reason: Reason) -> u64 {
    let metrics = h.maps.metrics().expect("metrics");
    (metrics.get(&MetricsKey {
        hook: Hook::Xdp,
        reason,
    }))
    .map_or(0, |v| v.packets)
}

#[test]
fn xdp_nodeport_snat_to_a_remote_backend_leaves_by_xdp_tx() {
    if !running_as_root("xdp_nodeport_snat_to_a_remote_backend_leaves_by_xdp_tx") {
        return;
    }
    in_underlay_netns(true, |ifindex| {
        let mut h = configured_node();
        put_node_port(&mut h, 0, &[REMOTE_BACKEND]);
        let inner = |flags| {
            PacketBuilder::new()
                .eth(ROUTER_MAC, UNDERLAY_MAC)
                .ipv4(NODE_IP, REMOTE_POD)
                .ttl(63)
                .tcp(SNAT_PORT, TARGET_PORT, flags)
                .build()
        };
        let sport = xdp_tunnel_sport(NODE_IP, SNAT_PORT, REMOTE_POD, TARGET_PORT);
        for (n, flags) in [(1, TCP_SYN), (2, TCP_ACK)] {
            let packet = from_client(NODE_IP, NODE_PORT, flags).build();
            let (verdict, out) = run_xdp(&mut h, ifindex, &packet);
            assert_eq!(verdict, XDP_TX, "packet {n}: back out of the device");
            let want = geneve_frame(
                (UNDERLAY_MAC, PEER_MAC),
                NODE_IP,
                PEER_NODE_IP,
                sport,
                &geneve_options(identity::HOST, None),
                &inner(flags),
            );
            assert_eq!(
                out, want,
                "packet {n}: outer L2 from the neighbour table, DNAT + SNAT + TTL inside, \
                 the node's identity"
            );
        }
        assert_eq!(snat_rows(&h), snat_of_flow(REMOTE_POD), "the SNAT entries");
        let service = ct_key(CLIENT, NODE_IP, CLIENT_PORT, NODE_PORT, CT_KIND_SERVICE);
        let entry = ct_entry(&h, &service).expect("service entry");
        assert_eq!(
            (entry.backend_id, entry.packets_forward),
            (REMOTE_BACKEND, 2)
        );
        let reply = ct_key(REMOTE_POD, CLIENT, TARGET_PORT, CLIENT_PORT, CT_KIND_REPLY);
        assert!(
            ct_entry(&h, &reply).is_some(),
            "SNAT: replies pass this node"
        );
        assert_eq!(xdp_count(&h, Reason::Transmitted), 2);
        assert_eq!(xdp_count(&h, Reason::Forwarded), 0);
    });
}

#[test]
fn xdp_dsr_carries_the_option_on_the_syn_only() {
    if !running_as_root("xdp_dsr_carries_the_option_on_the_syn_only") {
        return;
    }
    in_underlay_netns(true, |ifindex| {
        let mut h = configured_node();
        put_node_port(&mut h, SVC_FLAG_DSR, &[REMOTE_BACKEND]);
        let sport = xdp_tunnel_sport(CLIENT, CLIENT_PORT, REMOTE_POD, TARGET_PORT);
        for (flags, dsr, grows) in [
            (TCP_SYN, Some((NODE_IP, NODE_PORT)), 70),
            (TCP_ACK, None, 58),
        ] {
            let packet = from_client(NODE_IP, NODE_PORT, flags).build();
            let (verdict, out) = run_xdp(&mut h, ifindex, &packet);
            assert_eq!(verdict, XDP_TX);
            let inner = PacketBuilder::new()
                .eth(ROUTER_MAC, UNDERLAY_MAC)
                .ipv4(CLIENT, REMOTE_POD)
                .ttl(63)
                .tcp(CLIENT_PORT, TARGET_PORT, flags)
                .build();
            let want = geneve_frame(
                (UNDERLAY_MAC, PEER_MAC),
                NODE_IP,
                PEER_NODE_IP,
                sport,
                &geneve_options(identity::WORLD, dsr),
                &inner,
            );
            assert_eq!(out.len(), packet.len() + grows);
            assert_eq!(
                out, want,
                "flags {flags:#x}: DNAT only, the client's address kept"
            );
        }
        let syn = from_client(NODE_IP, NODE_PORT, TCP_SYN).build();
        let (_, out) = run_xdp(&mut h, ifindex, &syn);
        assert_eq!(
            &out[58..70],
            &[0x01, 0x4b, 0x02, 0x02, 198, 51, 100, 1, 0x75, 0x80, 0, 0][..],
            "a retransmitted SYN carries the option again: class 0x014B, type 2, 2 words, \
             frontend 198.51.100.1:30080"
        );
        assert!(snat_rows(&h).is_empty(), "no SNAT");
        let reply = ct_key(REMOTE_POD, CLIENT, TARGET_PORT, CLIENT_PORT, CT_KIND_REPLY);
        assert_eq!(ct_entry(&h, &reply), None, "replies do not pass this node");
    });
}

#[test]
fn xdp_without_a_neighbour_leaves_the_flow_to_tc_which_records_it_once() {
    if !running_as_root("xdp_without_a_neighbour_leaves_the_flow_to_tc_which_records_it_once") {
        return;
    }
    in_underlay_netns(false, |ifindex| {
        let mut h = configured_node();
        put_node_port(&mut h, 0, &[REMOTE_BACKEND]);
        let syn = from_client(NODE_IP, NODE_PORT, TCP_SYN).build();
        let (verdict, out) = run_xdp(&mut h, ifindex, &syn);
        assert_eq!(
            (verdict, &out),
            (XDP_PASS, &syn),
            "NO_NEIGH: to tc unchanged"
        );
        assert!(h.lb.ct().expect("ct").is_empty(), "XDP recorded nothing");
        assert!(snat_rows(&h).is_empty(), "XDP claimed no port");

        // tc gets the same packet: it decides, with redirect_neigh.
        let (verdict, _) = run(&mut h, FROM_NETDEV, &syn);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let service = ct_key(CLIENT, NODE_IP, CLIENT_PORT, NODE_PORT, CT_KIND_SERVICE);
        let entry = ct_entry(&h, &service).expect("service entry");
        assert_eq!(
            (entry.backend_id, entry.packets_forward),
            (REMOTE_BACKEND, 1)
        );

        // Once the neighbour is known, XDP carries the flow tc opened: same entry, same port.
        add_peer_neighbour();
        let ack = from_client(NODE_IP, NODE_PORT, TCP_ACK).build();
        let (verdict, out) = run_xdp(&mut h, ifindex, &ack);
        assert_eq!(verdict, XDP_TX);
        assert_eq!(&out[0..12], &[PEER_MAC, UNDERLAY_MAC].concat()[..]);
        let entry = ct_entry(&h, &service).expect("service entry");
        assert_eq!(
            (entry.backend_id, entry.packets_forward),
            (REMOTE_BACKEND, 2)
        );
        assert_eq!(
            snat_rows(&h),
            snat_of_flow(REMOTE_POD),
            "tc's SNAT port, reused"
        );
        assert_eq!(
            h.lb.ct().expect("ct").len(),
            2,
            "one flow: service and reply entry"
        );
    });
}

#[test]
fn xdp_passes_a_local_backend_to_tc_which_finds_the_same_conntrack_entry() {
    if !running_as_root("xdp_passes_a_local_backend_to_tc_which_finds_the_same_conntrack_entry") {
        return;
    }
    in_underlay_netns(true, |ifindex| {
        let mut h = configured_node();
        put_node_port(&mut h, 0, &[LOCAL_BACKEND]);
        let service = ct_key(CLIENT, NODE_IP, CLIENT_PORT, NODE_PORT, CT_KIND_SERVICE);
        for (n, flags) in [(1, TCP_SYN), (2, TCP_ACK)] {
            let packet = from_client(NODE_IP, NODE_PORT, flags).build();
            let (verdict, out) = run_xdp(&mut h, ifindex, &packet);
            assert_eq!((verdict, &out), (XDP_PASS, &packet), "packet {n}: to tc");
            let before = ct_entry(&h, &service).map(|e| e.packets_forward);
            assert_eq!(before, (n > 1).then_some(n - 1), "XDP counted nothing");
            let (verdict, out) = run(&mut h, FROM_NETDEV, &out);
            assert_eq!(verdict, TC_ACT_REDIRECT, "packet {n}: into the pod");
            assert_eq!(
                out,
                to_pod(CLIENT, CLIENT_PORT, TARGET_PORT, flags).build(),
                "packet {n}: the client's address kept for a local backend"
            );
            let entry = ct_entry(&h, &service).expect("service entry");
            assert_eq!(
                (entry.backend_id, entry.packets_forward),
                (LOCAL_BACKEND, n)
            );
        }
        assert!(snat_rows(&h).is_empty(), "no SNAT for a local backend");
        assert_eq!(
            xdp_count(&h, Reason::Forwarded),
            2,
            "passed, counted as forwarded"
        );
    });
}

#[test]
fn the_prefilter_drops_in_xdp_and_in_tc() {
    if !running_as_root("the_prefilter_drops_in_xdp_and_in_tc") {
        return;
    }
    let mut h = configured_node();
    put_node_port(&mut h, 0, &[LOCAL_BACKEND]);
    h.maps
        .put_prefilter(cidr("203.0.113.0/24"))
        .expect("prefilter");
    assert_eq!(
        h.maps.prefilter().expect("read back"),
        [cidr("203.0.113.0/24")].into()
    );
    let syn = from_client(NODE_IP, NODE_PORT, TCP_SYN).build();
    let (verdict, out) = run(&mut h, XDP_ENTRY, &syn);
    assert_eq!((verdict, &out), (XDP_DROP, &syn));
    assert_dropped(&mut h, Hook::Xdp, Reason::Prefiltered);
    // Without acceleration tc applies the same list.
    let (verdict, _) = run(&mut h, FROM_NETDEV, &syn);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_dropped(&mut h, Hook::FromNetdev, Reason::Prefiltered);
    assert!(h.lb.ct().expect("ct").is_empty(), "no flow opened");
    // Another source is not filtered (the NodePort's local backend: XDP passes it to tc).
    let other = PacketBuilder::new()
        .eth(ROUTER_MAC, UNDERLAY_MAC)
        .ipv4(Ipv4Addr::new(198, 18, 0, 1), NODE_IP)
        .tcp(CLIENT_PORT, NODE_PORT, TCP_SYN)
        .build();
    let (verdict, _) = run(&mut h, XDP_ENTRY, &other);
    assert_eq!(verdict, XDP_PASS);
    h.maps
        .delete_prefilter(cidr("203.0.113.0/24"))
        .expect("delete");
    let (verdict, _) = run(&mut h, XDP_ENTRY, &syn);
    assert_eq!(
        verdict, XDP_PASS,
        "the prefix removed, the client passes again"
    );
}
