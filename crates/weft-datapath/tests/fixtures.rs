//! L2: every datapath program run on crafted packets through BPF_PROG_TEST_RUN, as a table of
//! fixtures: input packet, expected verdict, expected output, expected map side effects
//! (counter slot and ring buffer event). Needs root; skipped with a visible message otherwise.

use std::net::{Ipv4Addr, Ipv6Addr};

use weft_common::{
    CONFIG_TRACE_FLAG, DatapathConfig, EventKind, Hook, MetricsKey, Reason,
    net::{TC_ACT_OK, TC_ACT_SHOT, XDP_DROP, XDP_PASS},
    programs::{FROM_CONTAINER, TO_CONTAINER, XDP_ENTRY},
};
use weft_datapath::{
    running_as_root,
    testrun::{TestHarness, assert_every_fixture},
};
use weft_packet::{PacketBuilder, TCP_ACK, TCP_SYN};

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 42, 1, 10);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 42, 1, 11);

/// What one packet must do.
struct Fixture {
    name: &'static str,
    program: &'static str,
    hook: Hook,
    packet: Vec<u8>,
    reason: Reason,
}

impl Fixture {
    fn verdict(&self) -> i32 {
        match (self.hook, self.reason.is_drop()) {
            (Hook::Xdp, true) => XDP_DROP as i32,
            (Hook::Xdp, false) => XDP_PASS as i32,
            (_, true) => TC_ACT_SHOT,
            (_, false) => TC_ACT_OK,
        }
    }
}

fn v4() -> PacketBuilder {
    PacketBuilder::new().ipv4(POD_A, POD_B)
}

fn v6() -> PacketBuilder {
    PacketBuilder::new().ipv6(
        "fd00:42:1::10".parse().expect("v6"),
        "fd00:42:1::11".parse().expect("v6"),
    )
}

/// IPv6 + hop-by-hop options + UDP, which the builder does not make.
fn ipv6_hop_by_hop_udp() -> Vec<u8> {
    let src: Ipv6Addr = "fd00::1".parse().expect("v6");
    let dst: Ipv6Addr = "fd00::2".parse().expect("v6");
    let mut ip = vec![0x60, 0, 0, 0, 0, 16, 0 /* hop-by-hop */, 64];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    ip.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]); // next=UDP, len 0 (8 bytes), PadN
    ip.extend_from_slice(&[0x13, 0x88, 0x00, 0x35, 0, 8, 0, 0]); // 5000 -> 53, len 8
    PacketBuilder::new().ethertype(0x86dd).payload(&ip).build()
}

fn fixtures() -> Vec<Fixture> {
    let fx = |name, program, hook, packet, reason| Fixture {
        name,
        program,
        hook,
        packet,
        reason,
    };
    let from = |name, packet, reason| fx(name, FROM_CONTAINER, Hook::FromContainer, packet, reason);
    let to = |name, packet, reason| fx(name, TO_CONTAINER, Hook::ToContainer, packet, reason);
    let xdp = |name, packet, reason| fx(name, XDP_ENTRY, Hook::Xdp, packet, reason);
    let from_client = || {
        PacketBuilder::new().ipv4(
            Ipv4Addr::new(203, 0, 113, 4),
            Ipv4Addr::new(198, 51, 100, 2),
        )
    };
    let tcp_syn = v4().tcp(40000, 80, TCP_SYN).build();
    vec![
        from("ipv4 tcp syn", tcp_syn.clone(), Reason::Forwarded),
        from(
            "ipv4 tcp with payload",
            v4().tcp(40000, 80, TCP_ACK).payload(&[7; 900]).build(),
            Reason::Forwarded,
        ),
        from(
            "ipv4 udp",
            v4().udp(5000, 53).payload(b"q").build(),
            Reason::Forwarded,
        ),
        from(
            "ipv4 icmp echo",
            v4().icmp_echo_request(1, 1).build(),
            Reason::Forwarded,
        ),
        from(
            "ipv6 tcp",
            v6().tcp(40000, 443, TCP_SYN).build(),
            Reason::Forwarded,
        ),
        from(
            "ipv6 icmpv6 echo",
            v6().icmpv6_echo_request(1, 1).build(),
            Reason::Forwarded,
        ),
        from(
            "ipv6 hop-by-hop then udp",
            ipv6_hop_by_hop_udp(),
            Reason::Forwarded,
        ),
        from(
            "arp request",
            PacketBuilder::new()
                .arp_request([2, 0, 0, 0, 0, 1], POD_A, Ipv4Addr::new(10, 42, 1, 1))
                .build(),
            Reason::Forwarded,
        ),
        from(
            "ipv4 later fragment without l4 header",
            {
                let mut p = v4().udp(1, 2).payload(&[0; 16]).build();
                p[20] = 0x00; // fragment offset 8 x 8 bytes, recomputing nothing: the checksum is not checked
                p[21] = 0x08;
                p
            },
            Reason::Forwarded,
        ),
        from(
            "ipv4 ihl below 5",
            v4().tcp(1, 2, TCP_SYN).ipv4_ihl(3).build(),
            Reason::MalformedIpv4,
        ),
        from(
            "ipv4 wrong version",
            v4().udp(1, 2).ipv4_version(5).build(),
            Reason::MalformedIpv4,
        ),
        from(
            "ipv4 total length beyond the frame",
            v4().udp(1, 2).ipv4_total_len(1400).build(),
            Reason::MalformedIpv4,
        ),
        // A frame whose IPv4 header itself is cut short is refused by BPF_PROG_TEST_RUN (EINVAL);
        // the lab test sends one from a pod's raw socket instead.
        from(
            "tcp header cut short",
            v4().tcp(1, 2, TCP_SYN)
                .ipv4_total_len(30)
                .truncate(14 + 30)
                .build(),
            Reason::MalformedTcp,
        ),
        from(
            "udp length beyond the ip payload",
            v4().udp(1, 2)
                .payload(&[0; 8])
                .ipv4_total_len(20 + 10)
                .truncate(14 + 30)
                .build(),
            Reason::MalformedUdp,
        ),
        from(
            "icmp header cut short",
            v4().icmp_echo_request(1, 1)
                .ipv4_total_len(24)
                .truncate(14 + 24)
                .build(),
            Reason::MalformedIcmp,
        ),
        from(
            "ipv6 payload length beyond the frame",
            {
                let mut p = v6().udp(1, 2).build();
                p[18] = 0x05; // payload length 0x05xx
                p
            },
            Reason::MalformedIpv6,
        ),
        from(
            "arp cut short",
            PacketBuilder::new()
                .ethertype(0x0806)
                .payload(&[0, 1, 8, 0, 6, 4, 0, 1, 0, 0])
                .build(),
            Reason::MalformedArp,
        ),
        from(
            "unsupported ethertype (LLDP)",
            PacketBuilder::new()
                .ethertype(0x88cc)
                .payload(&[0; 46])
                .build(),
            Reason::UnsupportedL3,
        ),
        to("to-container ipv4 tcp syn", tcp_syn, Reason::Forwarded),
        to(
            "to-container ipv4 ihl below 5",
            v4().udp(1, 2).ipv4_ihl(2).build(),
            Reason::MalformedIpv4,
        ),
        xdp(
            "xdp ipv4 tcp syn from the client",
            from_client().tcp(50000, 443, TCP_SYN).build(),
            Reason::Forwarded,
        ),
        xdp(
            "xdp ipv6 udp",
            v6().udp(5000, 53).build(),
            Reason::Forwarded,
        ),
        xdp(
            "xdp arp request",
            PacketBuilder::new()
                .arp_request([2, 0, 0, 0, 0, 1], POD_A, POD_B)
                .build(),
            Reason::Forwarded,
        ),
        // The node's own stack may speak protocols Weft does not parse: passed and counted.
        xdp(
            "xdp unsupported ethertype passes to the stack",
            PacketBuilder::new()
                .ethertype(0x88cc)
                .payload(&[0; 46])
                .build(),
            Reason::Forwarded,
        ),
        xdp(
            "xdp ipv4 ihl below 5 (short frame)",
            from_client().udp(1, 2).ipv4_ihl(3).build(),
            Reason::MalformedIpv4,
        ),
        xdp(
            "xdp ipv4 header cut short",
            from_client().udp(1, 2).truncate(14 + 12).build(),
            Reason::MalformedIpv4,
        ),
        xdp(
            "xdp tcp header cut short",
            from_client()
                .tcp(1, 2, TCP_SYN)
                .ipv4_total_len(30)
                .truncate(14 + 30)
                .build(),
            Reason::MalformedTcp,
        ),
        xdp(
            "xdp ipv6 payload length beyond the frame",
            {
                let mut p = v6().udp(1, 2).build();
                p[18] = 0x05;
                p
            },
            Reason::MalformedIpv6,
        ),
    ]
}

#[test]
fn fixture_table() {
    if !running_as_root("fixture_table") {
        return;
    }
    assert_every_fixture(fixtures(), |f| f.name, check);
}

/// Each fixture gets a fresh harness, so counters and events are its own.
fn check(fixture: &Fixture) -> anyhow::Result<()> {
    let mut h = TestHarness::load()?;
    let out = h.run(fixture.program, &fixture.packet)?;
    anyhow::ensure!(
        out.verdict == fixture.verdict(),
        "verdict {} != {}",
        out.verdict,
        fixture.verdict()
    );
    anyhow::ensure!(
        out.packet == fixture.packet,
        "the program changed the packet"
    );

    let metrics = h.maps.metrics()?;
    let key = MetricsKey {
        hook: fixture.hook,
        reason: fixture.reason,
    };
    let counted = metrics.get(&key).copied().unwrap_or_default();
    anyhow::ensure!(
        counted.packets == 1 && counted.bytes == fixture.packet.len() as u64,
        "metrics {key:?} = {counted:?}, all: {metrics:?}"
    );
    anyhow::ensure!(metrics.len() == 1, "other counters moved: {metrics:?}");

    let events = h.maps.drain_events();
    if fixture.reason.is_drop() {
        anyhow::ensure!(events.len() == 1, "expected one drop event, got {events:?}");
        let e = &events[0];
        anyhow::ensure!(
            e.kind == EventKind::Drop as u8
                && e.reason == fixture.reason as u8
                && e.hook == fixture.hook as u8,
            "event {e:?}"
        );
        let want = fixture.packet.len().min(e.snippet.len());
        anyhow::ensure!(usize::from(e.cap_len) == want, "cap_len {}", e.cap_len);
        anyhow::ensure!(
            e.snippet[..want] == fixture.packet[..want],
            "snippet differs"
        );
    } else {
        anyhow::ensure!(
            events.is_empty(),
            "no event expected with tracing off: {events:?}"
        );
    }
    Ok(())
}

#[test]
fn trace_events_carry_the_parsed_flow_when_enabled() {
    if !running_as_root("trace_events_carry_the_parsed_flow_when_enabled") {
        return;
    }
    let mut h = TestHarness::load().expect("loads");
    h.maps
        .set_config(DatapathConfig {
            flags: CONFIG_TRACE_FLAG,
            _pad: 0,
        })
        .expect("config");
    let packets = [
        v4().tcp(40000, 8080, TCP_SYN).build(),
        v4().udp(5353, 53).build(),
        v4().icmp_echo_request(9, 3).build(),
        ipv6_hop_by_hop_udp(),
    ];
    for p in &packets {
        assert_eq!(h.run(FROM_CONTAINER, p).expect("runs").verdict, TC_ACT_OK);
    }
    let events = h.maps.drain_events();
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| e.kind == EventKind::Trace as u8 && e.reason == 0)
    );

    let tcp = &events[0];
    assert_eq!((tcp.ip_version, tcp.l4_proto), (4, 6));
    assert_eq!(tcp.src_addr[..4], POD_A.octets());
    assert_eq!(tcp.dst_addr[..4], POD_B.octets());
    assert_eq!(
        (tcp.src_port, tcp.dst_port, tcp.tcp_flags),
        (40000, 8080, TCP_SYN)
    );
    assert_eq!(tcp.pkt_len as usize, packets[0].len());

    assert_eq!(
        (events[1].l4_proto, events[1].src_port, events[1].dst_port),
        (17, 5353, 53)
    );
    // ICMP: type and code in the port fields.
    assert_eq!(
        (events[2].l4_proto, events[2].src_port, events[2].dst_port),
        (1, 8, 0)
    );
    let v6 = &events[3];
    assert_eq!(
        (v6.ip_version, v6.l4_proto, v6.src_port, v6.dst_port),
        (6, 17, 5000, 53)
    );
    assert_eq!(
        v6.dst_addr,
        "fd00::2".parse::<Ipv6Addr>().expect("v6").octets()
    );
}
