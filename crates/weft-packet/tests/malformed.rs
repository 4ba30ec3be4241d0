//! Corruptions, bad checksums and arbitrary short input: the decoder reports what is wrong and
//! never panics.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;

use weft_packet::Layer::{Ethernet, Icmp, Ipv4, Tcp};
use weft_packet::*;

fn v4() -> PacketBuilder {
    PacketBuilder::new().ipv4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2))
}

/// A 14 + 20 + 20 + 4 = 58 byte TCP frame.
fn tcp_v4() -> PacketBuilder {
    v4().tcp(1000, 80, TCP_SYN).payload(b"data")
}

fn error(builder: PacketBuilder) -> DecodeError {
    decode(&builder.build()).unwrap_err()
}

fn truncated(layer: Layer, len: usize, need: usize) -> DecodeError {
    DecodeError::Truncated { layer, len, need }
}

fn bad_length(layer: Layer, len: u16, available: usize) -> DecodeError {
    DecodeError::BadLength {
        layer,
        len,
        available,
    }
}

#[test]
fn ihl_corruption() {
    assert_eq!(error(tcp_v4().ipv4_ihl(4)), DecodeError::BadIpv4Ihl(4));
    // A 60 byte header in a 44 byte packet.
    assert_eq!(error(tcp_v4().ipv4_ihl(15)), DecodeError::BadIpv4Ihl(15));
    // A plausible IHL is honoured: the header swallows 4 payload bytes and its checksum fails.
    let d = decode(&v4().payload(b"optsdata").ipv4_ihl(6).build()).unwrap();
    assert!(matches!(
        d.l3,
        L3::Ipv4 {
            ihl: 6,
            checksum_ok: false,
            ..
        }
    ));
    assert_eq!(d.payload, b"data");
}

#[test]
fn version_corruption() {
    let frame = tcp_v4().ipv4_version(6).build();
    assert_eq!(frame[ETH_HEADER_LEN], 0x65);
    assert_eq!(decode(&frame), Err(DecodeError::BadIpv4Version(6)));
}

#[test]
fn total_len_corruption() {
    assert_eq!(
        error(tcp_v4().ipv4_total_len(1500)),
        bad_length(Ipv4, 1500, 44)
    );
    assert_eq!(error(tcp_v4().ipv4_total_len(19)), bad_length(Ipv4, 19, 44));
    // Room for only 6 bytes of the TCP header.
    assert_eq!(error(tcp_v4().ipv4_total_len(26)), truncated(Tcp, 6, 20));
}

#[test]
fn truncate_corruption() {
    assert_eq!(tcp_v4().truncate(40).build().len(), 40);
    assert_eq!(error(tcp_v4().truncate(13)), truncated(Ethernet, 13, 14));
    assert_eq!(error(tcp_v4().truncate(30)), truncated(Ipv4, 16, 20));
    assert_eq!(error(tcp_v4().truncate(40)), bad_length(Ipv4, 44, 26));
    let icmp = v4()
        .icmp_echo_request(1, 1)
        .truncate(14 + 20 + 4)
        .ipv4_total_len(24);
    assert_eq!(error(icmp), truncated(Icmp, 4, 8));
}

#[test]
fn corruptions_apply_in_order_after_checksums() {
    // Restoring the IHL after breaking it gives back the original, valid frame.
    assert_eq!(tcp_v4().ipv4_ihl(3).ipv4_ihl(5).build(), tcp_v4().build());
    // A corruption of bytes that a truncation removed is a no-op, not a panic.
    assert_eq!(tcp_v4().truncate(10).ipv4_total_len(1).build().len(), 10);
}

#[test]
fn errors_name_the_problem() {
    let message = |builder| error(builder).to_string();
    assert_eq!(message(tcp_v4().ipv4_ihl(2)), "bad IPv4 IHL 2");
    assert_eq!(
        message(tcp_v4().truncate(5)),
        "truncated Ethernet header: 5 bytes, need 14"
    );
    assert_eq!(
        message(tcp_v4().ipv4_total_len(30)),
        "truncated TCP header: 10 bytes, need 20"
    );
    assert_eq!(
        message(tcp_v4().ipv4_total_len(99)),
        "bad IPv4 length 99: 44 bytes available"
    );
}

#[test]
fn damaged_bytes_fail_checksums_not_decoding() {
    let mut frame = tcp_v4().build();
    *frame.last_mut().unwrap() ^= 0xff;
    let d = decode(&frame).unwrap();
    assert!(matches!(
        d.l4,
        L4::Tcp {
            checksum_ok: false,
            ..
        }
    ));
    assert!(matches!(
        d.l3,
        L3::Ipv4 {
            checksum_ok: true,
            ..
        }
    ));
    assert!(d.summary().ends_with("[bad checksum]"), "{}", d.summary());

    let mut ttl_changed = tcp_v4().build();
    ttl_changed[ETH_HEADER_LEN + 8] -= 1;
    let d = decode(&ttl_changed).unwrap();
    assert!(matches!(
        d.l3,
        L3::Ipv4 {
            checksum_ok: false,
            ..
        }
    ));
    assert!(matches!(
        d.l4,
        L4::Tcp {
            checksum_ok: true,
            ..
        }
    ));
}

#[test]
fn udp_over_ipv4_without_checksum_is_accepted() {
    let mut frame = v4().udp(1, 2).payload(b"abc").build();
    let checksum_at = ETH_HEADER_LEN + IPV4_HEADER_LEN + 6;
    frame[checksum_at..checksum_at + 2].fill(0);
    assert!(matches!(
        decode(&frame).unwrap().l4,
        L4::Udp {
            checksum_ok: true,
            ..
        }
    ));
}

fn sample_frames() -> Vec<Vec<u8>> {
    let v6 = || PacketBuilder::new().ipv6("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
    let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
    vec![
        tcp_v4().build(),
        v4().udp(1, 2).payload(b"u").build(),
        v4().icmp_echo_request(1, 2).build(),
        v6().tcp(1, 2, TCP_RST).build(),
        v6().udp(1, 2).build(),
        v6().icmpv6_echo_request(1, 2).build(),
        PacketBuilder::new()
            .arp_request([2, 0, 0, 0, 0, 9], a, b)
            .build(),
    ]
}

#[test]
fn every_proper_prefix_is_an_error() {
    for frame in sample_frames() {
        assert!(decode(&frame).is_ok());
        for len in 0..frame.len() {
            assert!(
                decode(&frame[..len]).is_err(),
                "prefix {len} of {frame:02x?} decoded"
            );
        }
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    for frame in sample_frames() {
        for at in 0..frame.len() {
            for value in [0x00, 0x0f, 0x40, 0x4f, 0x60, 0xff] {
                let mut mutated = frame.clone();
                mutated[at] = value;
                for len in (0..=mutated.len()).step_by(3) {
                    let _ = decode(&mutated[..len]);
                }
            }
        }
    }
    for len in 0..=60 {
        let _ = decode(&vec![0xff; len]);
        let _ = decode(&vec![0x00; len]);
    }
}
