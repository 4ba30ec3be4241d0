//! The north-south path in XDP (`xdp_entry` on the node's external device, with
//! `loadBalancer.acceleration`): after the prefilter, a packet from outside to a north-south
//! frontend whose flow goes to a pod behind another node is translated, wrapped in Geneve and
//! sent back out of the device it came in on (`XDP_TX`), never building an skb.
//!
//! The decision is `nodeport::plan`, the same function tc asks: XDP says it carries a delivery
//! out only when it is a tunnel to another node whose next hop `bpf_fib_lookup` resolves out of
//! this device (the node's route and neighbour tables, in its namespace). A local backend, a
//! next hop without a neighbour entry yet (`BPF_FIB_LKUP_RET_NO_NEIGH`), any other lookup
//! result, replies, Geneve and everything that is no service go on to tc (`XDP_PASS`) with
//! nothing recorded: tc then decides with conntrack as it was and `bpf_redirect_neigh` resolves
//! the neighbour. This module only writes the plan into the frame: the same translation as tc
//! (DNAT, SNAT in SNAT mode, TTL), the same outer headers (`geneve::tunnel_header`) and the DSR
//! option on the same packets, with incremental checksums instead of the skb helpers. The
//! outer UDP source port comes from the flow hash of the translated tuple (tc's from the skb
//! hash): both only spread flows.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
        xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    },
    helpers::{bpf_fib_lookup, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use weft_common::{
    NodeConfig, Reason,
    geneve::{
        GENEVE_DSR_ENCAP_LEN, GENEVE_ENCAP_LEN, GENEVE_OPT_DSR_LEN, GENEVE_PORT, GeneveOptDsr,
    },
    ipcache::identity,
    lb::flow_hash,
    net::{ETH_HLEN, ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    geneve::{self, TunnelHdr},
    lookup,
    nodeport::{self, Decision, Delivery, Plan},
    packet::Packet,
    parse::{EthHdr, Headers, Ipv4Hdr},
    prefilter,
    verdict::{StageResult, Verdict},
};

const AF_INET: u8 = 2;
const IPV4_MAX_HLEN: usize = 60;

/// The XDP action of a verdict: drops drop, `Transmitted` goes back out, the rest to tc.
#[inline(always)]
pub fn action(verdict: &Verdict) -> u32 {
    match verdict.reason {
        Reason::Transmitted => XDP_TX,
        r if r.is_drop() => XDP_DROP,
        _ => XDP_PASS,
    }
}

/// A parsed frame from the underlay: prefiltered, then balanced here or passed on.
#[inline(always)]
pub fn ingress(ctx: &XdpContext, h: &mut Headers) -> StageResult {
    prefilter::check(h)?;
    let Some(node) = lookup::node() else {
        return Ok(Verdict::pass());
    };
    if !h.is_ipv4() || geneve::is_geneve_to(h, &node) {
        return Ok(Verdict::pass());
    }
    let outer_len = (Packet::len(ctx) as usize - ETH_HLEN + GENEVE_ENCAP_LEN) as u16;
    let decision = nodeport::plan(h, &node, |delivery| {
        next_hop(ctx, &node, delivery, outer_len)
    })?;
    match decision {
        Decision::Forward(plan, hop) => forward(ctx, h, &node, &plan, &hop),
        Decision::Handoff | Decision::NotService => Ok(Verdict::pass()),
    }
}

/// The Ethernet addresses of the tunnel packet, from the FIB and neighbour lookup.
pub struct NextHop {
    src: [u8; 6],
    dst: [u8; 6],
}

/// The next hop of a delivery XDP carries out: a tunnel to another node, routed back out of
/// this device, with a resolved neighbour; `None` leaves the flow to tc.
#[inline(always)]
fn next_hop(
    ctx: &XdpContext,
    node: &NodeConfig,
    delivery: &Delivery,
    outer_len: u16,
) -> Option<NextHop> {
    let Delivery::Tunnel(endpoint) = *delivery else {
        return None;
    };
    let ifindex = Packet::ifindex(ctx);
    // SAFETY: plain data for which all zeroes is a valid value.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = IPPROTO_UDP;
    params.dport = GENEVE_PORT.to_be();
    params.__bindgen_anon_1.tot_len = outer_len;
    params.ifindex = ifindex;
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(node.ipv4);
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(endpoint);
    // SAFETY: `params` is a live, writable bpf_fib_lookup of the size passed.
    let ret = unsafe {
        bpf_fib_lookup(
            ctx.ctx.cast(),
            &mut params,
            size_of::<FibParams>() as i32,
            0,
        )
    };
    if ret != BPF_FIB_LKUP_RET_SUCCESS as i64 || params.ifindex != ifindex {
        return None;
    }
    Some(NextHop {
        src: params.smac,
        dst: params.dmac,
    })
}

/// Writes `plan` (a tunnel delivery) into the frame and sends it back out; `h` then describes
/// the inner packet.
#[inline(always)]
fn forward(
    ctx: &XdpContext,
    h: &mut Headers,
    node: &NodeConfig,
    plan: &Plan,
    hop: &NextHop,
) -> StageResult {
    let Delivery::Tunnel(endpoint) = plan.delivery else {
        return Err(Reason::BackendUnreachable);
    };
    translate(ctx, h, node, plan)?;
    encap(ctx, h, node, endpoint, plan, hop)?;
    Ok(Verdict::transmitted().with_identity(identity::WORLD))
}

/// DNAT to the backend, SNAT to the node in SNAT mode, TTL decremented: the IPv4 header and the
/// L4 ports and checksum rewritten in place.
#[inline(always)]
fn translate(
    ctx: &XdpContext,
    h: &mut Headers,
    node: &NodeConfig,
    plan: &Plan,
) -> Result<(), Reason> {
    if h.ttl <= 1 {
        return Err(Reason::TtlExceeded);
    }
    let (src, sport) = match plan.snat_port {
        0 => (h.src_v4(), h.src_port),
        port => (node.ipv4, port),
    };
    let (dst, dport) = (plan.backend.address, plan.backend.port);
    let ip_at = frame_ptr::<Ipv4Hdr>(ctx, ETH_HLEN).ok_or(Reason::MalformedIpv4)?;
    // SAFETY: inside the frame, checked by `frame_ptr`.
    let old = unsafe { ip_at.read_unaligned() };
    let mut ip = old;
    ip.saddr = src;
    ip.daddr = dst;
    ip.ttl = old.ttl - 1;
    ip.check = adjust(old.check, &ip_bytes(&old), &ip_bytes(&ip));
    l4(ctx, h, &old, &ip, [sport, dport])?;
    // SAFETY: as above.
    unsafe { ip_at.write_unaligned(ip) };
    h.set_src_v4(src);
    h.set_dst_v4(dst);
    h.src_port = sport;
    h.dst_port = dport;
    h.ttl = ip.ttl;
    Ok(())
}

/// The L4 ports become `ports` (source, destination, host order); the checksum follows them and
/// the pseudo-header's addresses (`old` to `new`). A zero UDP checksum stays "none".
#[inline(always)]
fn l4(
    ctx: &XdpContext,
    h: &Headers,
    old: &Ipv4Hdr,
    new: &Ipv4Hdr,
    ports: [u16; 2],
) -> Result<(), Reason> {
    let l4_off = h.l4_off as usize;
    match h.l4_proto {
        // The checksum is the last field of the first 18 (TCP) or 8 (UDP) bytes.
        IPPROTO_TCP => {
            rewrite_l4::<18>(ctx, l4_off, old, new, ports, false).ok_or(Reason::MalformedTcp)
        }
        IPPROTO_UDP => {
            rewrite_l4::<8>(ctx, l4_off, old, new, ports, true).ok_or(Reason::MalformedUdp)
        }
        _ => Err(Reason::NatUnsupportedProto),
    }
}

/// [`l4`] on the first `N` bytes of the L4 header, ports first and checksum last: one bounds
/// check for both, so the verifier keeps the range.
#[inline(always)]
fn rewrite_l4<const N: usize>(
    ctx: &XdpContext,
    l4_off: usize,
    old: &Ipv4Hdr,
    new: &Ipv4Hdr,
    ports: [u16; 2],
    udp: bool,
) -> Option<()> {
    // An IPv4 header is at most 60 bytes; the bound also keeps the verifier's packet range.
    if l4_off > ETH_HLEN + IPV4_MAX_HLEN {
        return None;
    }
    let at = frame_ptr::<[u8; N]>(ctx, l4_off)?;
    // SAFETY: inside the frame, checked by `frame_ptr`.
    let mut head = unsafe { at.read_unaligned() };
    let old_ports = [head[0], head[1], head[2], head[3]];
    let [s0, s1] = ports[0].to_be_bytes();
    let [d0, d1] = ports[1].to_be_bytes();
    let new_ports = [s0, s1, d0, d1];
    let check = [head[N - 2], head[N - 1]];
    let check = if udp && check == [0; 2] {
        check
    } else {
        match adjust(check, &pseudo(old, old_ports), &pseudo(new, new_ports)) {
            [0, 0] if udp => [0xff; 2],
            c => c,
        }
    };
    head[..4].copy_from_slice(&new_ports);
    head[N - 2] = check[0];
    head[N - 1] = check[1];
    // SAFETY: as above.
    unsafe { at.write_unaligned(head) };
    Some(())
}

/// What the L4 checksum covers of the fields a translation changes: addresses and ports.
#[inline(always)]
fn pseudo(ip: &Ipv4Hdr, ports: [u8; 4]) -> [u8; 12] {
    let [a0, a1, a2, a3] = ip.saddr;
    let [b0, b1, b2, b3] = ip.daddr;
    let [p0, p1, p2, p3] = ports;
    [a0, a1, a2, a3, b0, b1, b2, b3, p0, p1, p2, p3]
}

#[inline(always)]
fn ip_bytes(ip: &Ipv4Hdr) -> [u8; 20] {
    // SAFETY: Ipv4Hdr is 20 bytes of plain data.
    unsafe { core::mem::transmute(*ip) }
}

/// A checksum after the covered bytes `old` became `new` (RFC 1624, eqn. 3), both in network
/// order; `old` and `new` have the same even length.
#[inline(always)]
fn adjust(check: [u8; 2], old: &[u8], new: &[u8]) -> [u8; 2] {
    let mut sum = !u16::from_be_bytes(check) as u32;
    let mut i = 0;
    while i + 1 < old.len() && i + 1 < new.len() {
        sum += !u16::from_be_bytes([old[i], old[i + 1]]) as u32;
        sum += u16::from_be_bytes([new[i], new[i + 1]]) as u32;
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}

/// The Ethernet and outer headers in front of the frame, which becomes the inner frame.
#[repr(C)]
#[derive(Clone, Copy)]
struct Outer {
    eth: EthHdr,
    tunnel: TunnelHdr,
}

/// The same with the DSR option.
#[repr(C)]
#[derive(Clone, Copy)]
struct OuterDsr {
    eth: EthHdr,
    tunnel: TunnelHdr,
    dsr: GeneveOptDsr,
}

// The frame's own Ethernet header stays as the inner one: what is pushed is everything else
// tc's encapsulation adds, plus the outer Ethernet header.
const _: () = assert!(size_of::<Outer>() == GENEVE_ENCAP_LEN);
const _: () = assert!(size_of::<OuterDsr>() == GENEVE_DSR_ENCAP_LEN);

/// Wraps the frame for the node at `endpoint`, with the DSR option when the plan has one.
#[inline(always)]
fn encap(
    ctx: &XdpContext,
    h: &Headers,
    node: &NodeConfig,
    endpoint: [u8; 4],
    plan: &Plan,
    hop: &NextHop,
) -> Result<(), Reason> {
    let frame_len = Packet::len(ctx) as usize;
    let hash = flow_hash(h.src_v4(), h.dst_v4(), h.src_port, h.dst_port, h.l4_proto);
    let eth = EthHdr {
        dst: hop.dst,
        src: hop.src,
        proto: ETH_P_IP.to_be_bytes(),
    };
    let tunnel =
        |extra| geneve::tunnel_header(node, endpoint, plan.identity, extra, frame_len, hash);
    match plan.dsr_option {
        Some((address, port)) => push(
            ctx,
            &OuterDsr {
                eth,
                tunnel: tunnel(GENEVE_OPT_DSR_LEN),
                dsr: GeneveOptDsr::new(address, port),
            },
        ),
        None => push(
            ctx,
            &Outer {
                eth,
                tunnel: tunnel(0),
            },
        ),
    }
}

/// Grows the frame at its head by a `T` and writes it there.
#[inline(always)]
fn push<T: Copy>(ctx: &XdpContext, hdr: &T) -> Result<(), Reason> {
    let len = size_of::<T>() as i32;
    // SAFETY: helper on the live xdp_md.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -len) } != 0 {
        return Err(Reason::EncapFailed);
    }
    let at = frame_ptr::<T>(ctx, 0).ok_or(Reason::EncapFailed)?;
    // SAFETY: inside the frame, checked by `frame_ptr`.
    unsafe { at.write_unaligned(*hdr) };
    Ok(())
}

/// A pointer to a `T` at `offset` of the frame, `None` when the frame ends before it.
#[inline(always)]
fn frame_ptr<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data() + offset;
    if start + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some(start as *mut T)
}
