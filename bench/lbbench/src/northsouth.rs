//! Nanoseconds per packet of the north-south service path under BPF_PROG_TEST_RUN: the same
//! packets, in one harness (so the same maps), through tc's `from_netdev` and through XDP's
//! `xdp_entry`. The node is the seed's entry node (vps2, 198.51.100.2); the service's one
//! backend is a pod on vps1 (Geneve). Two frontends on the node's address, Maglev (M = 16381):
//! port 443 in SNAT mode and port 444 in DSR mode (externalIPs, `externalTrafficPolicy:
//! Cluster`). For each program and mode: the first packet of a flow (a SYN: lookup, Maglev,
//! CT entries, SNAT port, DNAT, Geneve encapsulation with the DSR option in DSR mode) and a
//! packet of an established flow (1 byte of data: CT hit, translation, encapsulation); and,
//! for each program, a packet to the node's own address that no service owns (the program's
//! floor: parse, look up, pass).
//!
//! Whatever each program does with the packets is recorded (its verdicts and the size of the
//! packet it leaves), not asserted, except that tc must redirect the service packets: XDP may
//! pass them on to tc (then the accelerated path costs XDP + tc) or handle them itself
//! (XDP_TX / XDP_REDIRECT), and the report says which it was.
//!
//! One BPF_PROG_TEST_RUN per packet with `repeat` 1 (see `testrun`); the kinds take turns in
//! batches. A flow's first packet cannot be replayed, so each first packet has a tuple of its
//! own: every kind its own client address, and in SNAT mode a client port inside the SNAT range
//! that no other first packet uses, so that the client's port is kept at the first probe (as
//! for most real clients, whose ephemeral ports lie in that range) rather than the cost growing
//! with the number of flows already translated to the backend.

use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{Context as _, ensure};
use serde_json::{Value, json};
use weft_common::{
    IpcacheEntry, Lb4Backend, Lb4Key, Lb4RevNat, Lb4Service, NodeConfig,
    geneve::GENEVE_VNI,
    ipcache::identity,
    lb::{LB_ALG_MAGLEV, LB_SCOPE_EXTERNAL, SVC_FLAG_DSR, SVC_FLAG_EXTERNAL_IP},
    net::IPPROTO_TCP,
    node::NODE_MASQUERADE_FLAG,
    programs::{FROM_NETDEV, XDP_ENTRY},
};
use weft_datapath::testrun::TestHarness;
use weft_model::Ipv4Cidr;
use weft_packet::{PacketBuilder, TCP_ACK, TCP_PSH, TCP_SYN};

use crate::stats::Summary;

const TC_ACT_REDIRECT: i32 = 7;
const XDP_PASS: i32 = 2;
/// The entry node (vps2) and the backend's node (vps1).
const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const BACKEND_NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 42, 1, 10);
const BACKEND_PORT: u16 = 8443;
const BACKEND_ID: u32 = 1;
const SNAT_PORT: u16 = 443;
const DSR_PORT: u16 = 444;
/// A port of the node's own that no service owns.
const NODE_ONLY_PORT: u16 = 22;
pub const MAGLEV_SIZE: u32 = 16381;
const SNAT_PORT_MIN: u16 = 32768;
const ROUTER_MAC: [u8; 6] = [0x0e, 0, 0, 0, 0, 0xfe];
const UNDERLAY_MAC: [u8; 6] = [0x0e, 0, 0, 0, 0, 0x02];
/// The established flows' client port.
const ESTABLISHED_PORT: u16 = 40000;
/// First packets per kind at most: SNAT first packets of the two programs share the upper
/// half of the SNAT range between them, one port each.
pub const MAX_SAMPLES: u32 = 16_384;

/// The programs compared, the name the report uses first.
const PROGRAMS: [(&str, &str); 2] = [("tc", FROM_NETDEV), ("xdp", XDP_ENTRY)];

/// One kind of packet through one program.
#[derive(Clone, Copy)]
struct Kind {
    program: &'static str,
    /// The program's name in the object.
    entry: &'static str,
    /// "snat", "dsr" or "none" (to the node, no service).
    mode: &'static str,
    /// "first", "established" or "to_node".
    packet: &'static str,
    /// The kind's own client address.
    client: Ipv4Addr,
    /// Where the kind's first packets take their source ports from.
    port_base: u16,
}

impl Kind {
    fn dport(&self) -> u16 {
        match self.mode {
            "snat" => SNAT_PORT,
            "dsr" => DSR_PORT,
            _ => NODE_ONLY_PORT,
        }
    }

    fn is_service(&self) -> bool {
        self.mode != "none"
    }

    /// The `n`-th packet of the kind.
    fn packet(&self, n: u32) -> Vec<u8> {
        match self.packet {
            "first" => syn(self.client, self.port_base + n as u16, self.dport()),
            "established" => data(self.client, ESTABLISHED_PORT, self.dport()),
            _ => data(self.client, 1024 + (n % 60_000) as u16, self.dport()),
        }
    }
}

/// Every kind, in the order they take turns: per program, SNAT and DSR first and established,
/// then the packet to the node.
fn kinds() -> Vec<Kind> {
    let mut out = Vec::new();
    for (p, &(program, entry)) in PROGRAMS.iter().enumerate() {
        let mut add = |mode, packet, port_base| {
            let client = Ipv4Addr::new(203, 0, 113, 10 + out.len() as u8);
            out.push(Kind {
                program,
                entry,
                mode,
                packet,
                client,
                port_base,
            });
        };
        // SNAT first packets: tc from 32768, XDP from 49152 (distinct SNAT ports).
        let snat_base = SNAT_PORT_MIN + p as u16 * MAX_SAMPLES as u16;
        add("snat", "first", snat_base);
        add("snat", "established", 0);
        add("dsr", "first", SNAT_PORT_MIN);
        add("dsr", "established", 0);
        add("none", "to_node", 0);
    }
    out
}

fn syn(client: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    PacketBuilder::new()
        .eth(ROUTER_MAC, UNDERLAY_MAC)
        .ipv4(client, NODE_IP)
        .tcp(sport, dport, TCP_SYN)
        .build()
}

/// A segment of one byte of data, as a request/response exchange sends them.
fn data(client: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    PacketBuilder::new()
        .eth(ROUTER_MAC, UNDERLAY_MAC)
        .ipv4(client, NODE_IP)
        .tcp(sport, dport, TCP_ACK | TCP_PSH)
        .payload(b"x")
        .build()
}

/// The device standing for the entry node's eth0 in the namespace [`in_underlay`] makes.
const UNDERLAY_DEV: &str = "wnsb0";
const BACKEND_NODE_MAC: &str = "0e:00:00:00:00:01";

/// Runs `measure` on a thread in a network namespace of its own (gone with the thread) that
/// has the entry node's underlay: a device with its address and the backend's node as a
/// resolved neighbour, so that `bpf_fib_lookup` finds the next hop and XDP forwards the
/// packets itself, as on a node. `measure` gets the device's ifindex.
pub fn in_underlay<T: Send + 'static>(
    measure: impl FnOnce(u32) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    std::thread::spawn(move || {
        // SAFETY: unshare on this thread only; the namespace dies with it.
        ensure!(
            unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0,
            "unshare: {}",
            std::io::Error::last_os_error()
        );
        let mac = UNDERLAY_MAC.map(|b| format!("{b:02x}")).join(":");
        for args in [
            format!("link add {UNDERLAY_DEV} address {mac} type veth peer name wnsb1"),
            format!("link set {UNDERLAY_DEV} up"),
            "link set wnsb1 up".to_string(),
            format!("addr add {NODE_IP}/24 dev {UNDERLAY_DEV}"),
            format!(
                "neigh replace {BACKEND_NODE_IP} lladdr {BACKEND_NODE_MAC} dev {UNDERLAY_DEV} nud permanent"
            ),
        ] {
            ip(&args)?;
        }
        std::fs::write(
            format!("/proc/sys/net/ipv4/conf/{UNDERLAY_DEV}/forwarding"),
            "1",
        )
        .context("turning forwarding on")?;
        let name = std::ffi::CString::new(UNDERLAY_DEV)?;
        // SAFETY: a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        ensure!(ifindex != 0, "no {UNDERLAY_DEV}");
        measure(ifindex)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the measuring thread panicked"))?
}

fn ip(args: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .with_context(|| format!("ip {args}"))?;
    ensure!(status.success(), "ip {args}: {status}");
    Ok(())
}

/// The entry node with its two frontends to the backend on vps1, as the agent writes them;
/// its external device is `external_ifindex`.
pub fn harness(external_ifindex: u32) -> anyhow::Result<TestHarness> {
    let mut h = TestHarness::load()?;
    h.maps.set_node(NodeConfig {
        ipv4: NODE_IP.octets(),
        external_ifindex,
        vni: GENEVE_VNI,
        snat_port_min: SNAT_PORT_MIN,
        snat_port_max: 65535,
        flags: NODE_MASQUERADE_FLAG,
        _pad: 0,
        netns_cookie: 0,
    })?;
    h.maps.put_ipcache(
        Ipv4Cidr::new(Ipv4Addr::new(10, 42, 1, 0), 24)?,
        IpcacheEntry {
            identity: identity::UNMANAGED,
            tunnel_endpoint: BACKEND_NODE_IP.octets(),
        },
    )?;
    h.maps.put_ipcache(
        Ipv4Cidr::new(BACKEND_NODE_IP, 32)?,
        IpcacheEntry {
            identity: identity::REMOTE_NODE,
            tunnel_endpoint: [0; 4],
        },
    )?;
    h.lb.put_backend(
        BACKEND_ID,
        Lb4Backend {
            address: BACKEND.octets(),
            port: BACKEND_PORT,
            proto: IPPROTO_TCP,
            flags: 0,
        },
    )?;
    put_frontend(&mut h, SNAT_PORT, 1, SVC_FLAG_EXTERNAL_IP)?;
    put_frontend(&mut h, DSR_PORT, 2, SVC_FLAG_EXTERNAL_IP | SVC_FLAG_DSR)?;
    Ok(h)
}

/// An externalIPs frontend on the node's address with the one backend, Maglev.
fn put_frontend(h: &mut TestHarness, port: u16, id: u16, flags: u16) -> anyhow::Result<()> {
    let key = |slot| Lb4Key {
        address: NODE_IP.octets(),
        port,
        proto: IPPROTO_TCP,
        scope: LB_SCOPE_EXTERNAL,
        slot,
        _pad: [0; 2],
    };
    h.lb.put_service(
        key(0),
        Lb4Service {
            count: 1,
            rev_nat_index: id,
            flags,
            algorithm: LB_ALG_MAGLEV,
            maglev_size: MAGLEV_SIZE,
            ..Lb4Service::default()
        },
    )?;
    h.lb.put_service(
        key(1),
        Lb4Service {
            backend_id: BACKEND_ID,
            rev_nat_index: id,
            ..Lb4Service::default()
        },
    )?;
    h.lb.set_revnat(
        id,
        Lb4RevNat {
            address: NODE_IP.octets(),
            port,
            _pad: 0,
        },
    )?;
    h.lb.put_maglev(id, &vec![BACKEND_ID; MAGLEV_SIZE as usize])
}

/// What one kind's packets did, and how long they took.
struct Samples {
    ns: Vec<f64>,
    verdicts: BTreeMap<i32, u32>,
    bytes_in: usize,
    bytes_out: usize,
}

impl Samples {
    fn new() -> Samples {
        Samples {
            ns: Vec::new(),
            verdicts: BTreeMap::new(),
            bytes_in: 0,
            bytes_out: 0,
        }
    }
}

/// Runs one packet of `kind`; tc must redirect service packets.
fn run_one(
    h: &mut TestHarness,
    ifindex: u32,
    kind: &Kind,
    n: u32,
    out: &mut Samples,
) -> anyhow::Result<()> {
    let packet = kind.packet(n);
    let (outcome, duration) = run_kind(h, ifindex, kind, &packet)?;
    ensure!(
        kind.program != "tc" || !kind.is_service() || outcome.verdict == TC_ACT_REDIRECT,
        "{} returned {} on a {} {} packet instead of redirecting it",
        kind.entry,
        outcome.verdict,
        kind.mode,
        kind.packet
    );
    *out.verdicts.entry(outcome.verdict).or_default() += 1;
    out.bytes_in = packet.len();
    out.bytes_out = outcome.packet.len();
    out.ns.push(duration.as_nanos() as f64);
    Ok(())
}

/// One run of `kind`'s program; XDP's as if the packet arrived on `ifindex`.
fn run_kind(
    h: &mut TestHarness,
    ifindex: u32,
    kind: &Kind,
    packet: &[u8],
) -> anyhow::Result<(weft_datapath::testrun::RunOutcome, std::time::Duration)> {
    if kind.entry == XDP_ENTRY {
        h.run_xdp_timed_on(kind.entry, packet, ifindex)
    } else {
        h.run_timed(kind.entry, packet)
    }
}

/// Opens the established flow of every kind that has one, through the kind's own program;
/// a SYN XDP passes on goes through tc too, as the kernel would hand it on.
fn open_flows(h: &mut TestHarness, ifindex: u32, kinds: &[Kind]) -> anyhow::Result<()> {
    for kind in kinds.iter().filter(|k| k.packet == "established") {
        let packet = syn(kind.client, ESTABLISHED_PORT, kind.dport());
        let (outcome, _) = run_kind(h, ifindex, kind, &packet)?;
        if kind.program == "xdp" && outcome.verdict == XDP_PASS {
            h.run(FROM_NETDEV, &packet)?;
        }
    }
    Ok(())
}

/// `samples` packets of every kind, the kinds taking turns in rounds of `batch`: one JSON
/// value per kind.
pub fn measure(
    h: &mut TestHarness,
    ifindex: u32,
    samples: u32,
    batch: u32,
) -> anyhow::Result<Vec<Value>> {
    ensure!(
        samples <= MAX_SAMPLES,
        "at most {MAX_SAMPLES} packets of each kind (one SNAT port each)"
    );
    let kinds = kinds();
    open_flows(h, ifindex, &kinds)?;
    let mut results: Vec<Samples> = kinds.iter().map(|_| Samples::new()).collect();
    let mut n = 0;
    while n < samples {
        for (kind, out) in kinds.iter().zip(results.iter_mut()) {
            for i in n..(n + batch).min(samples) {
                run_one(h, ifindex, kind, i, out)?;
            }
            h.maps.drain_events();
        }
        n += batch;
    }
    kinds
        .iter()
        .zip(results)
        .map(|(kind, s)| describe(kind, &s))
        .collect()
}

fn describe(kind: &Kind, s: &Samples) -> anyhow::Result<Value> {
    let summary = Summary::of(&s.ns).context("no samples")?;
    let verdicts: serde_json::Map<String, Value> = s
        .verdicts
        .iter()
        .map(|(v, count)| (v.to_string(), json!(count)))
        .collect();
    Ok(json!({
        "program": kind.program,
        "entry": kind.entry,
        "mode": kind.mode,
        "packet": kind.packet,
        "ns": summary.json(),
        "verdicts": verdicts,
        "bytes_in": s.bytes_in,
        "bytes_out": s.bytes_out,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_client_and_snat_first_packets_their_own_ports() {
        let kinds = kinds();
        let mut clients: Vec<_> = kinds.iter().map(|k| k.client).collect();
        clients.sort();
        clients.dedup();
        assert_eq!(clients.len(), kinds.len());
        let ports = |program| {
            let k = kinds
                .iter()
                .find(|k| k.program == program && k.mode == "snat" && k.packet == "first")
                .expect("a SNAT first kind");
            let first = u32::from(k.port_base);
            first..first + MAX_SAMPLES
        };
        let (tc, xdp) = (ports("tc"), ports("xdp"));
        assert!(tc.start >= u32::from(SNAT_PORT_MIN) && tc.end <= xdp.start);
        assert!(xdp.end <= 65_536);
    }

    #[test]
    fn the_programs_get_the_same_packets_but_for_the_source() {
        let kinds = kinds();
        for tc in kinds.iter().filter(|k| k.program == "tc") {
            let xdp = kinds
                .iter()
                .find(|k| k.program == "xdp" && k.mode == tc.mode && k.packet == tc.packet)
                .expect("the XDP twin");
            let (a, b) = (tc.packet(7), xdp.packet(7));
            assert_eq!(a.len(), b.len());
            // Destination address and port, TCP flags and payload; the source is the kind's.
            for range in [30..34, 36..38, 47..48, 54..a.len()] {
                assert_eq!(a[range.clone()], b[range], "{} {}", tc.mode, tc.packet);
            }
        }
    }
}
