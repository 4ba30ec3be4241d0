//! Build -> decode roundtrips for every L3/L4 combination, and golden bytes checked against an
//! independent computation.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, Ipv6Addr};

use weft_packet::*;

const MAC_A: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x0b, 0, 0, 0, 0, 0x0b];
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 42, 1, 11);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 42, 1, 12);
const V6_A: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const V6_B: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

fn v4() -> PacketBuilder {
    PacketBuilder::new().ipv4(POD_A, POD_B)
}

fn v6() -> PacketBuilder {
    PacketBuilder::new().ipv6(V6_A, V6_B)
}

fn decoded(builder: PacketBuilder) -> Decoded {
    decode(&builder.build()).unwrap()
}

// Expected L4 headers; a built packet's checksums must always verify.

fn tcp(sport: u16, dport: u16, flags: u8, seq: u32, ack: u32) -> L4 {
    let checksum_ok = true;
    L4::Tcp {
        sport,
        dport,
        flags,
        seq,
        ack,
        checksum_ok,
    }
}

fn udp(sport: u16, dport: u16, len: u16) -> L4 {
    L4::Udp {
        sport,
        dport,
        len,
        checksum_ok: true,
    }
}

fn icmp(ty: u8, id: u16, seq: u16) -> L4 {
    L4::Icmp {
        ty,
        code: 0,
        id,
        seq,
        checksum_ok: true,
    }
}

#[test]
fn ipv4_udp_matches_golden_bytes() {
    // Computed independently (Python struct + RFC 1071 sum).
    let golden = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x45,
        0x00, 0x00, 0x1e, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x14, 0x99, 0x0a, 0x00, 0x00, 0x01,
        0x0a, 0x00, 0x00, 0x02, 0x04, 0xd2, 0x00, 0x35, 0x00, 0x0a, 0x7e, 0x67, 0x68, 0x69,
    ];
    let (src, dst) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
    let builder = PacketBuilder::new().ipv4(src, dst).ipv4_id(0x1234);
    assert_eq!(builder.udp(1234, 53).payload(b"hi").build(), golden);
}

#[test]
fn built_ipv4_header_and_tcp_segment_recheck_to_zero() {
    let frame = v4()
        .tcp(40000, 8080, TCP_SYN)
        .tcp_seq(1)
        .payload(b"hello")
        .build();
    let (header, segment) = frame[ETH_HEADER_LEN..].split_at(IPV4_HEADER_LEN);
    assert_eq!(internet_checksum(header), 0);
    assert_eq!(ipv4_pseudo_checksum(POD_A, POD_B, IPPROTO_TCP, segment), 0);

    // Golden TCP checksum of the same SYN without payload, computed independently.
    let syn = v4().tcp(40000, 8080, TCP_SYN).tcp_seq(1).build();
    let checksum_at = ETH_HEADER_LEN + IPV4_HEADER_LEN + 16;
    assert_eq!(syn[checksum_at..checksum_at + 2], [0xdd, 0xa6]);
}

#[test]
fn ipv6_icmpv6_checksum_matches_golden_value() {
    let frame = v6().icmpv6_echo_request(1, 2).payload(b"ab").build();
    let checksum_at = ETH_HEADER_LEN + IPV6_HEADER_LEN + 2;
    assert_eq!(frame[checksum_at..checksum_at + 2], [0x24, 0x51]);
    assert_eq!(
        ipv6_pseudo_checksum(V6_A, V6_B, IPPROTO_ICMPV6, &frame[checksum_at - 2..]),
        0
    );
}

#[test]
fn ipv4_tcp_roundtrip() {
    let flags = TCP_PSH | TCP_ACK;
    let builder = v4().eth(MAC_A, MAC_B).tcp(40000, 8080, flags);
    let d = decoded(
        builder
            .tcp_seq(1 << 31)
            .tcp_ack(7)
            .ttl(3)
            .ipv4_id(99)
            .payload(b"GET /"),
    );
    assert_eq!((d.eth_src, d.eth_dst), (MAC_A, MAC_B));
    assert_eq!(d.ethertype, ETHERTYPE_IPV4);
    let ipv4 = L3::Ipv4 {
        src: POD_A,
        dst: POD_B,
        proto: IPPROTO_TCP,
        ttl: 3,
        ihl: 5,
        total_len: 45,
        id: 99,
        checksum_ok: true,
    };
    assert_eq!(d.l3, ipv4);
    assert_eq!(d.l4, tcp(40000, 8080, flags, 1 << 31, 7));
    assert_eq!(d.payload, b"GET /");
}

#[test]
fn ipv4_udp_and_icmp_roundtrip() {
    let d = decoded(v4().udp(5353, 53).payload(b"q"));
    assert_eq!((d.l4, d.payload), (udp(5353, 53, 9), b"q".to_vec()));

    let d = decoded(v4().icmp_echo_request(1, 2).payload(b"abc"));
    assert_eq!(
        (d.l4, d.payload),
        (icmp(ICMP_ECHO_REQUEST, 1, 2), b"abc".to_vec())
    );

    let d = decoded(v4().icmp_echo_reply(3, 4));
    assert_eq!(d.l4, icmp(ICMP_ECHO_REPLY, 3, 4));
}

#[test]
fn ipv6_tcp_udp_icmpv6_roundtrip() {
    let d = decoded(v6().tcp(1, 2, TCP_FIN).tcp_seq(5).ttl(9).payload(b"xyz"));
    let ipv6 = L3::Ipv6 {
        src: V6_A,
        dst: V6_B,
        next_header: IPPROTO_TCP,
        hop_limit: 9,
        payload_len: 23,
    };
    assert_eq!((d.ethertype, d.l3), (ETHERTYPE_IPV6, ipv6));
    assert_eq!(
        (d.l4, d.payload),
        (tcp(1, 2, TCP_FIN, 5, 0), b"xyz".to_vec())
    );

    let d = decoded(v6().udp(546, 547).payload(&[7; 33]));
    assert_eq!((d.l4, d.payload), (udp(546, 547, 41), vec![7; 33]));

    let d = decoded(v6().icmpv6_echo_request(1, 2).payload(b"ab"));
    let echo_request = L4::Icmpv6 {
        ty: ICMPV6_ECHO_REQUEST,
        code: 0,
        checksum_ok: true,
    };
    assert_eq!((d.l4, d.payload), (echo_request, b"ab".to_vec()));
}

#[test]
fn arp_roundtrip_with_derived_ethernet_addresses() {
    let arp = |op, target_mac| L3::Arp {
        op,
        sender_mac: MAC_A,
        sender_ip: POD_A,
        target_mac,
        target_ip: POD_B,
    };
    let request = decoded(PacketBuilder::new().arp_request(MAC_A, POD_A, POD_B));
    assert_eq!((request.eth_src, request.eth_dst), (MAC_A, [0xff; 6]));
    assert_eq!(request.l3, arp(ARP_REQUEST, [0; 6]));
    assert_eq!((request.l4, request.payload), (L4::None, vec![]));

    let reply = decoded(PacketBuilder::new().arp_reply(MAC_A, POD_A, MAC_B, POD_B));
    assert_eq!((reply.eth_src, reply.eth_dst), (MAC_A, MAC_B));
    assert_eq!(reply.l3, arp(ARP_REPLY, MAC_B));
}

#[test]
fn raw_ethertype_carries_payload_as_given() {
    let frame = PacketBuilder::new()
        .ethertype(0x88b5)
        .payload(b"raw")
        .build();
    assert_eq!(frame.len(), ETH_HEADER_LEN + 3);
    let d = decode(&frame).unwrap();
    assert_eq!((d.ethertype, d.l3, d.l4), (0x88b5, L3::Other, L4::None));
    let default_macs = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    assert_eq!((d.eth_src, d.eth_dst), default_macs);
    assert_eq!(d.payload, b"raw");
}

#[test]
fn ethernet_padding_is_not_payload() {
    let mut frame = v4().udp(1, 2).payload(b"x").build();
    frame.resize(60, 0);
    let d = decode(&frame).unwrap();
    assert_eq!(d.payload, b"x");
    assert!(d.checksums_ok());
}

#[test]
fn summaries() {
    let arp = PacketBuilder::new; // a builder with no L3 yet
    let gateway = Ipv4Addr::new(10, 42, 1, 1);
    let cases = [
        (
            v4().tcp(40000, 8080, TCP_SYN),
            "10.42.1.11:40000 -> 10.42.1.12:8080 TCP SYN",
        ),
        (
            v4().tcp(1, 2, TCP_SYN | TCP_ACK),
            "10.42.1.11:1 -> 10.42.1.12:2 TCP SYN|ACK",
        ),
        (
            v4().icmp_echo_request(1, 2),
            "10.42.1.11 -> 10.42.1.12 ICMP echo-request id=1 seq=2",
        ),
        (v6().udp(1, 53), "[fd00::1]:1 -> [fd00::2]:53 UDP"),
        (
            v6().icmpv6_echo_reply(1, 1),
            "fd00::1 -> fd00::2 ICMPv6 echo-reply",
        ),
        (
            arp().arp_request(MAC_A, POD_A, gateway),
            "ARP who-has 10.42.1.1 tell 10.42.1.11",
        ),
        (
            arp().arp_reply(MAC_B, gateway, MAC_A, POD_A),
            "ARP 10.42.1.1 is-at 0b:00:00:00:00:0b",
        ),
    ];
    for (builder, line) in cases {
        assert_eq!(decoded(builder).summary(), line);
    }
}
