//! `weft lab test`: real traffic through the attached programs, and what the datapath made of it
//! (counters and events), checked and reported.

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{IpAddr, SocketAddr, SocketAddrV4, TcpStream},
};

use anyhow::{Context as _, anyhow, ensure};
use weft_common::{Hook, MetricsKey, MetricsValue, Reason};
use weft_datapath::events::EventView;
use weft_packet::PacketBuilder;

use crate::{
    NodeSpec, PodSpec, Topology,
    datapath::{EXTERNAL_DEVICE, drain_events, inspect, metrics_delta, set_trace},
    netns::run_in,
    traffic,
};

/// One named check and what came of it.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub outcome: Result<(), String>,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub checks: Vec<Check>,
    /// Events of every node during the test, in node order.
    pub events: Vec<EventView>,
    /// Counter changes per node during the test.
    pub deltas: Vec<(String, BTreeMap<MetricsKey, MetricsValue>)>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.outcome.is_ok())
    }
}

const MALFORMED_FRAMES: usize = 2;

/// Runs the traffic checks on the lab with per-packet tracing on, then checks what the
/// datapath saw. Needs a node with two pods; crosses nodes when there are two.
pub fn run(topology: &Topology) -> anyhow::Result<Report> {
    let node = topology
        .nodes
        .first()
        .ok_or_else(|| anyhow!("the lab has no node"))?;
    let [a, b] = first_two_pods(node)?;
    let remote = topology.nodes.get(1).and_then(|n| n.pods.first());

    let before = topology
        .nodes
        .iter()
        .map(|n| Ok((n.name.clone(), inspect(n)?.metrics)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for n in &topology.nodes {
        drain_events(n)?;
    }

    set_trace(topology, true)?;
    let mut checks = traffic_checks(a, b, remote);
    checks.extend(underlay_checks(topology, node));
    let trace_off = set_trace(topology, false);

    let mut events = Vec::new();
    for n in &topology.nodes {
        events.extend(drain_events(n)?);
    }
    trace_off?;
    let mut deltas = Vec::new();
    for (n, (name, before)) in topology.nodes.iter().zip(&before) {
        deltas.push((name.clone(), metrics_delta(before, &inspect(n)?.metrics)));
    }

    checks.push(check(
        "malformed frames are dropped with a named reason",
        || {
            malformed_drops_reported(
                &events,
                node,
                Hook::FromContainer,
                &a.host_ifname,
                MALFORMED_FRAMES,
            )?;
            malformed_drops_reported(&events, node, Hook::Xdp, EXTERNAL_DEVICE, 1)
        },
    ));
    checks.push(check(
        "counters advanced on both veth hooks and at XDP",
        || counters_advanced(&deltas, node),
    ));
    Ok(Report {
        checks,
        events,
        deltas,
    })
}

fn first_two_pods(node: &NodeSpec) -> anyhow::Result<[&PodSpec; 2]> {
    match node.pods.as_slice() {
        [a, b, ..] => Ok([a, b]),
        _ => Err(anyhow!("{} needs two pods for the self-test", node.name)),
    }
}

fn check(name: &str, f: impl FnOnce() -> anyhow::Result<()>) -> Check {
    Check {
        name: name.to_string(),
        outcome: f().map_err(|e| format!("{e:#}")),
    }
}

/// The server must see the client pod's own address: nothing on the way translates it.
fn server_saw(seen: SocketAddr, client: &PodSpec) -> anyhow::Result<()> {
    ensure!(
        seen.ip() == IpAddr::V4(client.ip),
        "the server saw {seen}, not {}",
        client.ip
    );
    Ok(())
}

fn traffic_checks(a: &PodSpec, b: &PodSpec, remote: Option<&PodSpec>) -> Vec<Check> {
    let mut checks = vec![
        check(&format!("TCP {} -> {} (same node)", a.name, b.name), || {
            let seen = traffic::tcp_echo(
                &a.netns,
                &b.netns,
                SocketAddrV4::new(b.ip, 7001),
                b"weft tcp",
            )?;
            server_saw(seen, a)
        }),
        check(&format!("UDP {} -> {} (same node)", a.name, b.name), || {
            let seen = traffic::udp_echo(
                &a.netns,
                &b.netns,
                SocketAddrV4::new(b.ip, 7002),
                b"weft udp",
            )?;
            server_saw(seen, a)
        }),
        check(
            &format!("ICMP echo {} -> {} (same node)", a.name, b.name),
            || traffic::icmp_echo(&a.netns, b.ip, 0x77, 1),
        ),
    ];
    if let Some(r) = remote {
        checks.push(check(
            &format!(
                "TCP {}/{} -> {}/{} (across nodes)",
                a.node, a.name, r.node, r.name
            ),
            || {
                let seen = traffic::tcp_echo(
                    &a.netns,
                    &r.netns,
                    SocketAddrV4::new(r.ip, 7003),
                    b"weft remote",
                )?;
                server_saw(seen, a)
            },
        ));
    }
    checks.push(check(
        &format!("{MALFORMED_FRAMES} malformed frames sent from {}", a.name),
        || {
            for frame in malformed_frames(a, b) {
                traffic::send_raw_frame(&a.netns, "eth0", &frame).context("raw send")?;
            }
            Ok(())
        },
    ));
    checks
}

/// Traffic that enters a node from the underlay, through `xdp_entry` on its eth0.
fn underlay_checks(topology: &Topology, node: &NodeSpec) -> Vec<Check> {
    let client = &topology.client;
    vec![
        check(
            &format!(
                "TCP client -> {} node address (refused by the node's stack)",
                node.name
            ),
            || {
                let target = SocketAddrV4::new(node.underlay_ip, 7400);
                let result = run_in(&client.netns, || {
                    TcpStream::connect_timeout(&target.into(), traffic::TIMEOUT)
                })?;
                match result {
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(()),
                    Err(e) => Err(anyhow!("connecting to {target}: {e}")),
                    Ok(_) => Err(anyhow!(
                        "{target} accepted a connection; nothing listens there"
                    )),
                }
            },
        ),
        check(
            &format!("malformed frame from the underlay to {}", node.name),
            || {
                let frame = PacketBuilder::new()
                    .eth([2, 0, 0, 0, 0, 0xfe], [0xff; 6])
                    .ipv4(client.ip, node.underlay_ip)
                    .udp(9, 9)
                    .ipv4_ihl(4)
                    .build();
                // The router-side end of the node's eth0 carries the node's name.
                traffic::send_raw_frame(&topology.router_netns, &node.name, &frame)
            },
        ),
    ]
}

/// An IPv4 header claiming 12 bytes, and one cut off after 12 bytes.
fn malformed_frames(a: &PodSpec, b: &PodSpec) -> [Vec<u8>; MALFORMED_FRAMES] {
    let base = || {
        PacketBuilder::new()
            .eth(a.mac, a.host_mac)
            .ipv4(a.ip, b.ip)
            .udp(9, 9)
    };
    [base().ipv4_ihl(3).build(), base().truncate(14 + 12).build()]
}

fn malformed_drops_reported(
    events: &[EventView],
    node: &NodeSpec,
    hook: Hook,
    ifname: &str,
    expected: usize,
) -> anyhow::Result<()> {
    let drops = events
        .iter()
        .filter(|e| {
            e.node == node.name
                && e.kind == "drop"
                && e.reason == Reason::MalformedIpv4.name()
                && e.hook == hook.name()
                && e.ifname.as_deref() == Some(ifname)
        })
        .count();
    ensure!(
        drops == expected,
        "{drops} drop events '{}' at {} of {ifname} on {}, expected {expected}",
        Reason::MalformedIpv4.name(),
        hook.name(),
        node.name
    );
    Ok(())
}

fn counters_advanced(
    deltas: &[(String, BTreeMap<MetricsKey, MetricsValue>)],
    node: &NodeSpec,
) -> anyhow::Result<()> {
    let (_, delta) = deltas
        .iter()
        .find(|(n, _)| *n == node.name)
        .ok_or_else(|| anyhow!("no counters of {}", node.name))?;
    let forwarded = |hook| {
        delta
            .get(&MetricsKey {
                hook,
                reason: Reason::Forwarded,
            })
            .map_or(0, |v| v.packets)
    };
    let dropped = delta
        .get(&MetricsKey {
            hook: Hook::FromContainer,
            reason: Reason::MalformedIpv4,
        })
        .map_or(0, |v| v.packets);
    ensure!(
        forwarded(Hook::FromContainer) >= 8,
        "from-container forwarded {}",
        forwarded(Hook::FromContainer)
    );
    ensure!(
        forwarded(Hook::ToContainer) >= 8,
        "to-container forwarded {}",
        forwarded(Hook::ToContainer)
    );
    ensure!(
        dropped == MALFORMED_FRAMES as u64,
        "from-container malformed drops {dropped}"
    );
    Ok(())
}
