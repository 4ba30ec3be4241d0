//! L2: service load balancing and conntrack through BPF_PROG_TEST_RUN: DNAT to the flow's
//! backend with exact output bytes, reverse NAT of replies (same node and after Geneve decap),
//! the conntrack state machine in the map, flows staying on their backend when the backend set
//! changes, reselection when the backend is gone, no-backend drops, affinity, Maglev. Needs
//! root; skipped with a visible message otherwise.
//!
//! BPF_PROG_TEST_RUN runs tc programs on the loopback device, so whichever pod sends in a
//! sequence is registered on ifindex 1.

mod common;

use common::{assert_lifetime, ct_entry, ct_key};

use std::net::Ipv4Addr;

use weft_common::{
    EndpointInfo, EndpointKey, Lb4Backend, Lb4Key, Lb4RevNat, Lb4Service, NodeConfig, Reason,
    ct::{
        CT_FLAG_FORWARD_CLOSING, CT_FLAG_REPLY_CLOSING, CT_FLAG_SEEN_NON_SYN, CT_KIND_REPLY,
        CT_KIND_SERVICE, CT_LIFETIME_TCP_CLOSE_S, CT_LIFETIME_TCP_ESTABLISHED_S,
        CT_LIFETIME_TCP_SYN_S,
    },
    geneve::GENEVE_VNI,
    lb::{
        BACKEND_FLAG_TERMINATING, LB_ALG_MAGLEV, LB_SCOPE_EXTERNAL, SVC_FLAG_AFFINITY, flow_hash,
    },
    net::{IPPROTO_TCP, IPPROTO_UDP},
    node::NODE_MASQUERADE_FLAG,
    programs::{FROM_CONTAINER, TO_CONTAINER},
};
use weft_datapath::{running_as_root, testrun::TestHarness};
use weft_packet::{PacketBuilder, TCP_ACK, TCP_FIN, TCP_SYN, checksum::internet_checksum};

const TC_ACT_REDIRECT: i32 = 7;
const TC_ACT_SHOT: i32 = weft_common::net::TC_ACT_SHOT;

const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 42, 1, 10);
const BACKEND_1: Ipv4Addr = Ipv4Addr::new(10, 42, 1, 11);
const BACKEND_2: Ipv4Addr = Ipv4Addr::new(10, 42, 1, 12);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 10);
const SERVICE_PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
const SERVICE_ID: u16 = 7;

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const CLIENT_HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const BACKEND_1_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x0b];
const BACKEND_1_HOST_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x0c];
const BACKEND_2_MAC: [u8; 6] = [0x0c, 0, 0, 0, 0, 0x0b];
const BACKEND_2_HOST_MAC: [u8; 6] = [0x0c, 0, 0, 0, 0, 0x0c];

/// Endpoints: which pod sends decides which one sits on ifindex 1.
#[derive(Clone, Copy)]
enum Sender {
    Client,
    Backend1,
}

fn endpoint(ifindex: u32, mac: [u8; 6], host_mac: [u8; 6]) -> EndpointInfo {
    EndpointInfo {
        ifindex,
        identity: 1000 + ifindex,
        mac,
        host_mac,
        _pad: 0,
    }
}

fn place(h: &mut TestHarness, sender: Sender) {
    let (client_if, backend_if) = match sender {
        Sender::Client => (1, 21),
        Sender::Backend1 => (20, 1),
    };
    let put = |h: &mut TestHarness, addr: Ipv4Addr, info| {
        h.maps
            .put_endpoint(
                EndpointKey {
                    addr: addr.octets(),
                },
                info,
            )
            .expect("endpoint");
    };
    put(h, CLIENT, endpoint(client_if, CLIENT_MAC, CLIENT_HOST_MAC));
    put(
        h,
        BACKEND_1,
        endpoint(backend_if, BACKEND_1_MAC, BACKEND_1_HOST_MAC),
    );
    put(
        h,
        BACKEND_2,
        endpoint(22, BACKEND_2_MAC, BACKEND_2_HOST_MAC),
    );
}

fn frontend_key(proto: u8, slot: u16) -> Lb4Key {
    Lb4Key {
        address: CLUSTER_IP.octets(),
        port: SERVICE_PORT,
        proto,
        scope: LB_SCOPE_EXTERNAL,
        slot,
        _pad: [0; 2],
    }
}

fn backend(addr: Ipv4Addr, proto: u8, flags: u8) -> Lb4Backend {
    Lb4Backend {
        address: addr.octets(),
        port: TARGET_PORT,
        proto,
        flags,
    }
}

/// Writes a service with `ids` as its active backends (slots 1..).
fn put_service(h: &mut TestHarness, proto: u8, ids: &[u32], tweak: impl Fn(&mut Lb4Service)) {
    let mut svc = Lb4Service {
        count: ids.len() as u16,
        rev_nat_index: SERVICE_ID,
        ..Lb4Service::default()
    };
    tweak(&mut svc);
    h.lb.put_service(frontend_key(proto, 0), svc)
        .expect("service");
    for (slot, &id) in (1u16..).zip(ids) {
        let entry = Lb4Service {
            backend_id: id,
            rev_nat_index: SERVICE_ID,
            ..Lb4Service::default()
        };
        h.lb.put_service(frontend_key(proto, slot), entry)
            .expect("slot");
    }
    h.lb.set_revnat(
        SERVICE_ID,
        Lb4RevNat {
            address: CLUSTER_IP.octets(),
            port: SERVICE_PORT,
            _pad: 0,
        },
    )
    .expect("revnat");
}

/// A configured node whose service has backends 1 (id 1) and 2 (id 2) known, and `active` of
/// them in its slots.
fn node_with_service(proto: u8, active: &[u32]) -> TestHarness {
    let mut h = TestHarness::load().expect("loads");
    h.maps
        .set_node(NodeConfig {
            ipv4: NODE_IP.octets(),
            external_ifindex: 5,
            vni: GENEVE_VNI,
            snat_port_min: 32768,
            snat_port_max: 65535,
            flags: NODE_MASQUERADE_FLAG,
            _pad: 0,
            netns_cookie: 0,
        })
        .expect("node");
    place(&mut h, Sender::Client);
    h.lb.put_backend(1, backend(BACKEND_1, proto, 0))
        .expect("backend 1");
    h.lb.put_backend(2, backend(BACKEND_2, proto, 0))
        .expect("backend 2");
    put_service(&mut h, proto, active, |_| {});
    h
}

fn to_service(sport: u16, flags: u8) -> PacketBuilder {
    PacketBuilder::new()
        .eth(CLIENT_MAC, CLIENT_HOST_MAC)
        .ipv4(CLIENT, CLUSTER_IP)
        .tcp(sport, SERVICE_PORT, flags)
}

fn delivered_to_backend(
    addr: Ipv4Addr,
    mac: [u8; 6],
    host_mac: [u8; 6],
    sport: u16,
    flags: u8,
) -> Vec<u8> {
    PacketBuilder::new()
        .eth(host_mac, mac)
        .ipv4(CLIENT, addr)
        .ttl(63)
        .tcp(sport, TARGET_PORT, flags)
        .build()
}

fn reply_from_backend_1(sport: u16, flags: u8) -> PacketBuilder {
    PacketBuilder::new()
        .eth(BACKEND_1_MAC, BACKEND_1_HOST_MAC)
        .ipv4(BACKEND_1, CLIENT)
        .tcp(TARGET_PORT, sport, flags)
}

#[test]
fn dnat_to_the_backend_then_reverse_nat_and_conntrack_through_the_tcp_lifecycle() {
    if !running_as_root(
        "dnat_to_the_backend_then_reverse_nat_and_conntrack_through_the_tcp_lifecycle",
    ) {
        return;
    }
    let mut h = node_with_service(IPPROTO_TCP, &[1]);
    let sport = 40000;

    let out = h
        .run(FROM_CONTAINER, &to_service(sport, TCP_SYN).build())
        .expect("run");
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_eq!(
        out.packet,
        delivered_to_backend(BACKEND_1, BACKEND_1_MAC, BACKEND_1_HOST_MAC, sport, TCP_SYN),
        "SYN translated to backend 1, checksums fixed, MACs of its veth"
    );
    let service = ct_key(CLIENT, CLUSTER_IP, sport, SERVICE_PORT, CT_KIND_SERVICE);
    let reply = ct_key(BACKEND_1, CLIENT, TARGET_PORT, sport, CT_KIND_REPLY);
    let entry = ct_entry(&h, &service).expect("service entry");
    assert_eq!((entry.backend_id, entry.rev_nat_index), (1, SERVICE_ID));
    assert_lifetime(&entry, CT_LIFETIME_TCP_SYN_S, "after SYN");
    assert!(ct_entry(&h, &reply).is_some(), "reply entry");

    // The SYN-ACK from the backend: source back to the ClusterIP, delivered to the client.
    place(&mut h, Sender::Backend1);
    let out = h
        .run(
            FROM_CONTAINER,
            &reply_from_backend_1(sport, TCP_SYN | TCP_ACK).build(),
        )
        .expect("run");
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let expected = PacketBuilder::new()
        .eth(CLIENT_HOST_MAC, CLIENT_MAC)
        .ipv4(CLUSTER_IP, CLIENT)
        .ttl(63)
        .tcp(SERVICE_PORT, sport, TCP_SYN | TCP_ACK)
        .build();
    assert_eq!(out.packet, expected, "reply comes from the ClusterIP");
    // The backend's answer does not establish the flow (anyone can provoke one with a SYN from
    // a forged source): the client's ACK does.
    let entry = ct_entry(&h, &service).expect("service entry");
    assert_eq!(entry.flags, 0);
    assert_lifetime(&entry, CT_LIFETIME_TCP_SYN_S, "after SYN-ACK");
    place(&mut h, Sender::Client);
    h.run(FROM_CONTAINER, &to_service(sport, TCP_ACK).build())
        .expect("run");
    for key in [service, reply] {
        let e = ct_entry(&h, &key).expect("entry");
        assert_eq!(e.flags, CT_FLAG_SEEN_NON_SYN);
        assert_lifetime(&e, CT_LIFETIME_TCP_ESTABLISHED_S, "after the client's ACK");
    }

    // FIN from both sides closes the flow.
    h.run(
        FROM_CONTAINER,
        &to_service(sport, TCP_FIN | TCP_ACK).build(),
    )
    .expect("run");
    let half = ct_entry(&h, &service).expect("service entry");
    assert_lifetime(&half, CT_LIFETIME_TCP_ESTABLISHED_S, "half closed");
    place(&mut h, Sender::Backend1);
    h.run(
        FROM_CONTAINER,
        &reply_from_backend_1(sport, TCP_FIN | TCP_ACK).build(),
    )
    .expect("run");
    for key in [service, reply] {
        let e = ct_entry(&h, &key).expect("entry");
        assert_eq!(
            e.flags & (CT_FLAG_FORWARD_CLOSING | CT_FLAG_REPLY_CLOSING),
            CT_FLAG_FORWARD_CLOSING | CT_FLAG_REPLY_CLOSING
        );
        assert_lifetime(&e, CT_LIFETIME_TCP_CLOSE_S, "closed");
    }
    assert_eq!(
        ct_entry(&h, &service).map(|e| (e.packets_forward, e.packets_reply)),
        Some((3, 2))
    );
}

#[test]
fn the_reply_path_through_the_stack_is_reverse_translated_in_to_container() {
    if !running_as_root("the_reply_path_through_the_stack_is_reverse_translated_in_to_container") {
        return;
    }
    let mut h = node_with_service(IPPROTO_TCP, &[1]);
    h.run(FROM_CONTAINER, &to_service(40001, TCP_SYN).build())
        .expect("run");
    let out = h
        .run(
            TO_CONTAINER,
            &reply_from_backend_1(40001, TCP_SYN | TCP_ACK).build(),
        )
        .expect("run");
    assert_eq!(out.verdict, 0, "passed on to the pod");
    let expected = PacketBuilder::new()
        .eth(BACKEND_1_MAC, BACKEND_1_HOST_MAC)
        .ipv4(CLUSTER_IP, CLIENT)
        .tcp(SERVICE_PORT, 40001, TCP_SYN | TCP_ACK)
        .build();
    assert_eq!(out.packet, expected);
}

#[test]
fn a_direct_connection_reusing_a_closed_flows_tuple_is_not_reverse_translated() {
    if !running_as_root(
        "a_direct_connection_reusing_a_closed_flows_tuple_is_not_reverse_translated",
    ) {
        return;
    }
    let mut h = node_with_service(IPPROTO_TCP, &[1]);
    h.run(FROM_CONTAINER, &to_service(40009, TCP_SYN).build())
        .expect("run");
    let reply = ct_key(BACKEND_1, CLIENT, TARGET_PORT, 40009, CT_KIND_REPLY);
    assert!(ct_entry(&h, &reply).is_some());
    // The client, from the same port, now connects to the backend's address itself.
    let direct = PacketBuilder::new()
        .eth(CLIENT_MAC, CLIENT_HOST_MAC)
        .ipv4(CLIENT, BACKEND_1)
        .tcp(40009, TARGET_PORT, TCP_SYN)
        .build();
    h.run(FROM_CONTAINER, &direct).expect("run");
    assert_eq!(
        ct_entry(&h, &reply),
        None,
        "the old flow's reply entry is gone"
    );
    let syn_ack = reply_from_backend_1(40009, TCP_SYN | TCP_ACK).build();
    let out = h.run(TO_CONTAINER, &syn_ack).expect("run");
    assert_eq!(
        out.packet, syn_ack,
        "the backend's answer reaches the client unchanged"
    );
}

#[test]
fn an_established_flow_keeps_its_backend_and_a_vanished_backend_is_replaced() {
    if !running_as_root("an_established_flow_keeps_its_backend_and_a_vanished_backend_is_replaced")
    {
        return;
    }
    let mut h = node_with_service(IPPROTO_TCP, &[1]);
    h.run(FROM_CONTAINER, &to_service(40002, TCP_SYN).build())
        .expect("run");
    // Backend 1 leaves the service's slots; backend 2 is the only active one.
    put_service(&mut h, IPPROTO_TCP, &[2], |_| {});
    h.lb.delete_service(frontend_key(IPPROTO_TCP, 2))
        .expect("no slot 2");
    let out = h
        .run(FROM_CONTAINER, &to_service(40002, TCP_ACK).build())
        .expect("run");
    assert_eq!(
        out.packet,
        delivered_to_backend(BACKEND_1, BACKEND_1_MAC, BACKEND_1_HOST_MAC, 40002, TCP_ACK),
        "the established flow stays on backend 1"
    );
    let out = h
        .run(FROM_CONTAINER, &to_service(40003, TCP_SYN).build())
        .expect("run");
    assert_eq!(
        out.packet,
        delivered_to_backend(BACKEND_2, BACKEND_2_MAC, BACKEND_2_HOST_MAC, 40003, TCP_SYN),
        "a new flow goes to backend 2"
    );
    // Backend 1 is deleted: its flow is given backend 2.
    h.lb.delete_backend(1).expect("delete backend 1");
    let out = h
        .run(FROM_CONTAINER, &to_service(40002, TCP_ACK).build())
        .expect("run");
    assert_eq!(
        out.packet,
        delivered_to_backend(BACKEND_2, BACKEND_2_MAC, BACKEND_2_HOST_MAC, 40002, TCP_ACK)
    );
    let service = ct_key(CLIENT, CLUSTER_IP, 40002, SERVICE_PORT, CT_KIND_SERVICE);
    assert_eq!(ct_entry(&h, &service).map(|e| e.backend_id), Some(2));
}

/// The ICMP port unreachable the ClusterIP "sends" for `offending` (an Ethernet frame): it
/// quotes the whole IP packet.
fn port_unreachable_for(offending: &[u8]) -> Vec<u8> {
    let quote = &offending[14..];
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(quote);
    let sum = internet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let total = u16::try_from(20 + icmp.len()).expect("small");
    let [hi, lo] = total.to_be_bytes();
    let mut ip = vec![0x45, 0, hi, lo, 0, 0, 0, 0, 64, 1, 0, 0];
    ip.extend_from_slice(&CLUSTER_IP.octets());
    ip.extend_from_slice(&CLIENT.octets());
    let sum = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut frame = CLIENT_MAC.to_vec();
    frame.extend_from_slice(&CLIENT_HOST_MAC);
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend(ip);
    frame.extend(icmp);
    frame
}

#[test]
fn a_service_without_backends_is_refused_with_port_unreachable() {
    if !running_as_root("a_service_without_backends_is_refused_with_port_unreachable") {
        return;
    }
    let mut h = node_with_service(IPPROTO_TCP, &[]);
    let syn = to_service(40004, TCP_SYN)
        .payload(b"data beyond the quote")
        .build();
    let out = h.run(FROM_CONTAINER, &syn).expect("run");
    assert_eq!(out.verdict, TC_ACT_REDIRECT, "sent back to the pod");
    assert_eq!(out.packet, port_unreachable_for(&syn));
    let events = h.maps.drain_events();
    assert!(
        events
            .iter()
            .any(|e| Reason::from_u8(e.reason) == Some(Reason::NoServiceBackend)),
        "no event named 'no service backend'"
    );
    assert!(h.lb.ct().expect("ct").is_empty(), "no flow recorded");

    // A packet too long to quote whole is only dropped, under the same reason.
    let big = to_service(40005, TCP_ACK).payload(&[7u8; 600]).build();
    let out = h.run(FROM_CONTAINER, &big).expect("run");
    assert_eq!(out.verdict, TC_ACT_SHOT);
    assert!(
        h.maps
            .drain_events()
            .iter()
            .any(|e| Reason::from_u8(e.reason) == Some(Reason::NoServiceBackend))
    );
}

#[test]
fn affinity_keeps_a_client_on_one_backend_but_not_on_a_terminating_one() {
    if !running_as_root("affinity_keeps_a_client_on_one_backend_but_not_on_a_terminating_one") {
        return;
    }
    let mut h = node_with_service(IPPROTO_TCP, &[1, 2]);
    put_service(&mut h, IPPROTO_TCP, &[1, 2], |s| {
        s.flags = SVC_FLAG_AFFINITY;
        s.affinity_timeout_s = 600;
    });
    let backend_of = |h: &TestHarness, sport| {
        ct_entry(
            h,
            &ct_key(CLIENT, CLUSTER_IP, sport, SERVICE_PORT, CT_KIND_SERVICE),
        )
        .map(|e| e.backend_id)
    };
    h.run(FROM_CONTAINER, &to_service(41000, TCP_SYN).build())
        .expect("run");
    let first = backend_of(&h, 41000).expect("first flow");
    for sport in 41001..41020 {
        h.run(FROM_CONTAINER, &to_service(sport, TCP_SYN).build())
            .expect("run");
        assert_eq!(backend_of(&h, sport), Some(first), "flow from port {sport}");
    }
    let affinity = h.lb.affinity().expect("affinity");
    assert_eq!(affinity.len(), 1);
    assert_eq!(affinity[0].1.backend_id, first);

    // The chosen backend starts terminating and leaves the slots: new flows move.
    let other = 3 - first;
    let addr = if first == 1 { BACKEND_1 } else { BACKEND_2 };
    h.lb.put_backend(first, backend(addr, IPPROTO_TCP, BACKEND_FLAG_TERMINATING))
        .expect("terminating");
    put_service(&mut h, IPPROTO_TCP, &[other], |s| {
        s.flags = SVC_FLAG_AFFINITY;
        s.affinity_timeout_s = 600;
    });
    h.lb.delete_service(frontend_key(IPPROTO_TCP, 2))
        .expect("no slot 2");
    h.run(FROM_CONTAINER, &to_service(41100, TCP_SYN).build())
        .expect("run");
    assert_eq!(backend_of(&h, 41100), Some(other));
}

#[test]
fn maglev_picks_the_slot_of_the_flow_hash() {
    if !running_as_root("maglev_picks_the_slot_of_the_flow_hash") {
        return;
    }
    let mut h = node_with_service(IPPROTO_UDP, &[1, 2]);
    const M: u32 = 251;
    put_service(&mut h, IPPROTO_UDP, &[1, 2], |s| {
        s.algorithm = LB_ALG_MAGLEV;
        s.maglev_size = M;
    });
    // A table that is not the slots' order: backend 2 owns a third of it.
    let table: Vec<u32> = (0..M).map(|i| if i % 3 == 0 { 2 } else { 1 }).collect();
    h.lb.put_maglev(SERVICE_ID, &table).expect("maglev");
    assert_eq!(h.lb.maglev(SERVICE_ID).expect("read"), Some(table.clone()));
    for sport in 50000..50030u16 {
        let packet = PacketBuilder::new()
            .eth(CLIENT_MAC, CLIENT_HOST_MAC)
            .ipv4(CLIENT, CLUSTER_IP)
            .udp(sport, SERVICE_PORT)
            .payload(b"q")
            .build();
        let out = h.run(FROM_CONTAINER, &packet).expect("run");
        assert_eq!(out.verdict, TC_ACT_REDIRECT);
        let slot = flow_hash(
            CLIENT.octets(),
            CLUSTER_IP.octets(),
            sport,
            SERVICE_PORT,
            IPPROTO_UDP,
        ) % M;
        let expected = if table[slot as usize] == 1 {
            BACKEND_1
        } else {
            BACKEND_2
        };
        assert_eq!(
            &out.packet[30..34],
            &expected.octets(),
            "port {sport}, slot {slot}"
        );
    }
}
