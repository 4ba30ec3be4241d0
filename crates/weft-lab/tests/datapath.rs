//! L3: the datapath attached in a lab (root), real sockets through it: the self-test's traffic
//! passes and is counted, malformed frames from a pod's raw socket are dropped with a named
//! event, attachments are idempotent and detachable, and `down` leaves nothing behind.

use std::net::SocketAddrV4;

use weft_common::{Hook, MetricsKey, Reason};
use weft_datapath::{
    NodeDatapath, events::EventView, node::attached_programs, reconcile_attachments,
};
use weft_lab::{
    LabSpec,
    datapath::{
        drain_events, endpoints, external_device, inspect, install, metrics_delta, set_trace, start,
    },
    leftovers,
    netns::run_in,
    selftest,
    testing::{LabGuard, running_as_root, unique_lab_name},
    traffic,
};

fn lab(tag: &str, nodes: u32) -> LabGuard {
    let spec = LabSpec::with_size(unique_lab_name(tag), nodes, 2);
    LabGuard::new(start(&spec).expect("lab with datapath starts"))
}

#[test]
fn self_test_traffic_passes_through_the_programs_and_is_reported() {
    if !running_as_root("self_test_traffic_passes_through_the_programs_and_is_reported") {
        return;
    }
    let lab = lab("self", 2);
    let report = selftest::run(&lab).expect("self-test runs");
    for check in &report.checks {
        assert!(check.outcome.is_ok(), "{}: {:?}", check.name, check.outcome);
    }
    assert!(report.passed());
    let traces = report.events.iter().filter(|e| e.kind == "trace").count();
    assert!(traces >= 16, "tracing was on: {traces} trace events");

    let name = lab.name.clone();
    lab.down().expect("down");
    assert_eq!(leftovers(&name), Vec::<String>::new());
}

#[test]
fn every_node_interface_carries_exactly_its_program_and_reinstall_changes_nothing() {
    if !running_as_root(
        "every_node_interface_carries_exactly_its_program_and_reinstall_changes_nothing",
    ) {
        return;
    }
    let lab = lab("att", 2);
    install(&lab).expect("second install is a no-op");
    for node in &lab.nodes {
        let view = inspect(node).expect("inspect");
        assert_eq!(view.attachments.len(), 3 + 2 * node.pods.len());
        for a in &view.attachments {
            let want = match Hook::from_name(&a.hook) {
                Some(Hook::FromContainer) => "from_container",
                Some(Hook::ToContainer) => "to_container",
                Some(Hook::Xdp) => "xdp_entry",
                Some(Hook::FromNetdev) => "from_netdev",
                Some(Hook::ToNetdev) => "to_netdev",
                other => panic!("unexpected hook {other:?}"),
            };
            assert_eq!(
                a.programs,
                [want],
                "{} {} on {}",
                a.hook,
                a.ifname,
                node.name
            );
        }
    }
}

#[test]
fn a_malformed_frame_from_a_pod_is_dropped_and_observed_by_name() {
    if !running_as_root("a_malformed_frame_from_a_pod_is_dropped_and_observed_by_name") {
        return;
    }
    let lab = lab("drop", 1);
    let node = &lab.nodes[0];
    let (a, b) = (&node.pods[0], &node.pods[1]);
    let frame = weft_packet::PacketBuilder::new()
        .eth(a.mac, a.host_mac)
        .ipv4(a.ip, b.ip)
        .tcp(1234, 80, weft_packet::TCP_SYN)
        .ipv4_version(7)
        .build();
    let before = inspect(node).expect("inspect").metrics;
    traffic::send_raw_frame(&a.netns, "eth0", &frame).expect("raw send");
    let delta = metrics_delta(&before, &inspect(node).expect("inspect").metrics);
    let key = MetricsKey {
        hook: Hook::FromContainer,
        reason: Reason::MalformedIpv4,
    };
    assert_eq!(delta.get(&key).map(|v| v.packets), Some(1), "{delta:?}");

    let drops: Vec<EventView> = drain_events(node)
        .expect("events")
        .into_iter()
        .filter(|e| e.kind == "drop")
        .collect();
    assert_eq!(drops.len(), 1, "{drops:?}");
    let e = &drops[0];
    assert_eq!(e.reason, "malformed IPv4 header");
    assert_eq!(e.ifname.as_deref(), Some(a.host_ifname.as_str()));
    assert!(
        e.packet.starts_with(&hex(&frame[..20])),
        "{} vs {}",
        e.packet,
        hex(&frame)
    );
    assert!(
        e.line().contains("DROPPED (malformed IPv4 header)"),
        "{}",
        e.line()
    );

    // The well-formed version of the same flow still gets through.
    traffic::tcp_echo(&a.netns, &b.netns, SocketAddrV4::new(b.ip, 7100), b"ok").expect("tcp");
}

#[test]
fn detaching_an_endpoint_removes_its_programs_and_its_traffic_is_no_longer_counted() {
    if !running_as_root(
        "detaching_an_endpoint_removes_its_programs_and_its_traffic_is_no_longer_counted",
    ) {
        return;
    }
    let lab = lab("det", 1);
    let node = &lab.nodes[0];
    let (a, b) = (&node.pods[0], &node.pods[1]);
    let only_b = endpoints(node)
        .into_iter()
        .filter(|e| e.name == b.name)
        .collect::<Vec<_>>();
    let changes = run_in(&node.netns, || {
        let mut dp = NodeDatapath::open(&node.pin_dir)?;
        reconcile_attachments(&mut dp, &external_device(), &only_b)?.into_result()
    })
    .expect("netns")
    .expect("reconcile");
    assert_eq!(changes.detach.len(), 2);
    assert!(changes.attach.is_empty());
    let remaining = run_in(&node.netns, || {
        attached_programs(&a.host_ifname, Hook::FromContainer)
    })
    .expect("netns")
    .expect("query");
    assert!(remaining.is_empty(), "{remaining:?}");

    set_trace(&lab, true).expect("trace on");
    drain_events(node).expect("drain");
    traffic::icmp_echo(&a.netns, b.ip, 9, 9).expect("ping still works without programs on a");
    let seen: Vec<_> = drain_events(node).expect("events");
    assert!(
        seen.iter()
            .all(|e| e.ifname.as_deref() != Some(a.host_ifname.as_str())),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|e| e.ifname.as_deref() == Some(b.host_ifname.as_str())),
        "{seen:?}"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
