//! Masquerade (BPF SNAT) of pod traffic leaving the cluster, and its reverse. A flow keeps its
//! translation in `weft_snat4`: the egress entry by the pod's tuple, the ingress entry by the
//! reply tuple. A new flow keeps its own source port when that is inside the SNAT range and
//! free, else probes random ports; when every probe is taken the packet is dropped as
//! `SnatNoPort`.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    programs::TcContext,
};
use weft_common::{
    Lb4Backend, NatEntry4, NatKey4, NodeConfig, Reason,
    nat::{NAT_DIR_EGRESS, NAT_DIR_INGRESS, SNAT_PORT_PROBES},
    net::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    maps::SNAT4,
    parse::{Headers, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST},
    skb::{self, IP_DST_OFF, IP_SRC_OFF},
};

/// The 16-bit L4 value a translation moves, and where it sits.
#[derive(Clone, Copy)]
struct Ports {
    /// Source port (ICMP: the echo identifier).
    src: u16,
    /// Destination port (ICMP: 0).
    dst: u16,
}

/// The ports of a packet NAT can translate; `None` for what it cannot (other protocols,
/// ICMP other than echo, later fragments).
#[inline(always)]
fn ports(h: &Headers, icmp_type: u8) -> Option<Ports> {
    if h.later_fragment {
        return None;
    }
    match h.l4_proto {
        IPPROTO_TCP | IPPROTO_UDP => Some(Ports {
            src: h.src_port,
            dst: h.dst_port,
        }),
        IPPROTO_ICMP if h.src_port == icmp_type as u16 => Some(Ports {
            src: h.icmp_echo_id,
            dst: 0,
        }),
        _ => None,
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Translates a pod's packet to the world: source becomes the node address and a SNAT port.
#[inline(always)]
pub fn snat(ctx: &TcContext, h: &Headers, node: &NodeConfig) -> Result<(), Reason> {
    let p = ports(h, ICMP_ECHO_REQUEST).ok_or(Reason::NatUnsupportedProto)?;
    let port = snat_port(
        &egress_key(h.src_v4(), h.dst_v4(), p.src, p.dst, h.l4_proto),
        node,
    )?;
    let l4_off = h.l4_off as usize;
    skb::rewrite_addr(ctx, h.l4_proto, l4_off, IP_SRC_OFF, h.src_v4(), node.ipv4)?;
    let field = if h.l4_proto == IPPROTO_ICMP { 4 } else { 0 };
    skb::rewrite_port(ctx, h.l4_proto, l4_off, l4_off + field, p.src, port)
}

/// The node port a north-south flow in SNAT mode leaves with, `h` describing the packet from
/// the client (TCP or UDP) and `backend` where it goes: the same translation and port
/// allocation as masquerade, so its reply is found by [`service_reverse`]. Reads and writes
/// maps only.
#[inline(always)]
pub fn service_snat_port(
    h: &Headers,
    backend: &Lb4Backend,
    node: &NodeConfig,
) -> Result<u16, Reason> {
    let egress = egress_key(
        h.src_v4(),
        backend.address,
        h.src_port,
        backend.port,
        h.l4_proto,
    );
    snat_port(&egress, node)
}

#[inline(always)]
fn egress_key(saddr: [u8; 4], daddr: [u8; 4], sport: u16, dport: u16, proto: u8) -> NatKey4 {
    NatKey4 {
        saddr,
        daddr,
        sport,
        dport,
        proto,
        direction: NAT_DIR_EGRESS,
        _pad: [0; 2],
    }
}

/// The client address and port of a reply (TCP or UDP, to this node's address) of a flow
/// [`service_snat_port`] translated, if it is one. Reads maps only.
#[inline(always)]
pub fn service_reverse(h: &Headers, node: &NodeConfig) -> Option<([u8; 4], u16)> {
    let ingress = NatKey4 {
        saddr: h.src_v4(),
        daddr: node.ipv4,
        sport: h.src_port,
        dport: h.dst_port,
        proto: h.l4_proto,
        direction: NAT_DIR_INGRESS,
        _pad: [0; 2],
    };
    use_entry(&ingress).map(|e| (e.addr, e.port))
}

/// The translated port of the flow whose egress key is `egress`: its existing one, or a new
/// one.
#[inline(always)]
fn snat_port(egress: &NatKey4, node: &NodeConfig) -> Result<u16, Reason> {
    match use_entry(egress) {
        Some(entry) => Ok(entry.port),
        None => claim_port(egress, node),
    }
}

/// The translation of `key`, marked as used now (in place: one lookup per packet).
#[inline(always)]
fn use_entry(key: &NatKey4) -> Option<NatEntry4> {
    let entry = SNAT4.get_ptr_mut(key)?;
    // SAFETY: a live map value; a racing update of the timestamp from another CPU is harmless.
    unsafe {
        (*entry).last_seen_ns = now();
        Some(*entry)
    }
}

/// Finds a free port for a new flow and records both directions.
#[inline(always)]
fn claim_port(egress: &NatKey4, node: &NodeConfig) -> Result<u16, Reason> {
    let (min, max) = (node.snat_port_min, node.snat_port_max);
    if min == 0 || max < min {
        return Err(Reason::SnatNoPort);
    }
    let span = (max - min) as u32 + 1;
    let mut port = if egress.sport >= min && egress.sport <= max {
        egress.sport
    } else {
        random_port(min, span)
    };
    let ts = now();
    for _ in 0..SNAT_PORT_PROBES {
        let ingress = NatKey4 {
            saddr: egress.daddr,
            daddr: node.ipv4,
            sport: egress.dport,
            dport: port,
            proto: egress.proto,
            direction: NAT_DIR_INGRESS,
            _pad: [0; 2],
        };
        let back = NatEntry4 {
            addr: egress.saddr,
            port: egress.sport,
            _pad: 0,
            last_seen_ns: ts,
        };
        if SNAT4.insert(ingress, back, BPF_NOEXIST as u64).is_ok() {
            let out = NatEntry4 {
                addr: node.ipv4,
                port,
                _pad: 0,
                last_seen_ns: ts,
            };
            SNAT4
                .insert(egress, out, BPF_ANY as u64)
                .map_err(|_| Reason::NatFailed)?;
            return Ok(port);
        }
        port = random_port(min, span);
    }
    Err(Reason::SnatNoPort)
}

#[inline(always)]
fn random_port(min: u16, span: u32) -> u16 {
    // SAFETY: helper without arguments.
    let r = unsafe { bpf_get_prandom_u32() };
    min + (r % span) as u16
}

/// A reply from the world to a masqueraded flow: destination back to the pod's address and
/// port. Returns the pod address, or `None` when the packet belongs to no translation (it is
/// for the node itself).
#[inline(always)]
pub fn reverse_snat(
    ctx: &TcContext,
    h: &Headers,
    node: &NodeConfig,
) -> Result<Option<[u8; 4]>, Reason> {
    if h.dst_v4() != node.ipv4 {
        return Ok(None);
    }
    let Some(p) = ports(h, ICMP_ECHO_REPLY) else {
        return Ok(None);
    };
    // For ICMP the reply's identifier is the translated one: it sits in the destination slot
    // of the ingress key.
    let (sport, dport) = if h.l4_proto == IPPROTO_ICMP {
        (0, p.src)
    } else {
        (p.src, p.dst)
    };
    let ingress = NatKey4 {
        saddr: h.src_v4(),
        daddr: node.ipv4,
        sport,
        dport,
        proto: h.l4_proto,
        direction: NAT_DIR_INGRESS,
        _pad: [0; 2],
    };
    let Some(entry) = use_entry(&ingress) else {
        return Ok(None);
    };
    let l4_off = h.l4_off as usize;
    skb::rewrite_addr(ctx, h.l4_proto, l4_off, IP_DST_OFF, node.ipv4, entry.addr)?;
    let field = if h.l4_proto == IPPROTO_ICMP { 4 } else { 2 };
    skb::rewrite_port(ctx, h.l4_proto, l4_off, l4_off + field, dport, entry.port)?;
    Ok(Some(entry.addr))
}
