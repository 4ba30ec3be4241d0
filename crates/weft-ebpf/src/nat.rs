//! Masquerade (BPF SNAT) of pod traffic leaving the cluster, and its reverse. A flow keeps its
//! translation in `weft_snat4`: the egress entry by the pod's tuple, the ingress entry by the
//! reply tuple. Every packet, either way, advances the flow's TCP state in both entries with the
//! conntrack state machine (`weft_common::nat`), so a closed flow's port is free 10 s later and
//! a half-open one's after 60 s. An expired entry is a miss.
//!
//! A new flow keeps its own source port when that is inside the SNAT range and free, else
//! probes ports spread over the whole range from a random start (`bpf_loop`, so the verifier
//! checks one probe, not all of them); an expired translation met on the way is taken over at
//! once, without waiting for the agent's collector. When every probe is taken the packet is
//! dropped as `SnatNoPort`.
// Keys and values go to the map helpers by reference so that they are read where they are, in
// the scratch slot: by value (what the lint suggests) they are copied to the stack first.
#![allow(clippy::needless_borrows_for_generic_args)]

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_loop, bpf_map_lookup_elem},
    programs::TcContext,
};
use weft_common::{
    Lb4Backend, NatEntry4, NatKey4, NodeConfig, Reason,
    ct::{CtDirection, CtUpdate, ct_update},
    nat::{
        NAT_DIR_EGRESS, NAT_DIR_INGRESS, SNAT_PORT_PROBES, nat_alive, snat_probe_port,
        snat_probe_stride,
    },
    net::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    maps::{SNAT_SCRATCH, SNAT4},
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

/// The clock of a packet: monotonic seconds (expiry) and nanoseconds (last seen).
#[derive(Clone, Copy)]
struct Now {
    s: u32,
    ns: u64,
}

#[inline(always)]
fn now() -> Now {
    // SAFETY: helper without arguments.
    let ns = unsafe { bpf_ktime_get_ns() };
    Now {
        s: (ns / 1_000_000_000) as u32,
        ns,
    }
}

/// Translates a pod's packet to the world: source becomes the node address and a SNAT port.
#[inline(always)]
pub fn snat(ctx: &TcContext, h: &Headers, node: &NodeConfig) -> Result<(), Reason> {
    let p = ports(h, ICMP_ECHO_REQUEST).ok_or(Reason::NatUnsupportedProto)?;
    let port = forward(
        &egress_key(h.src_v4(), h.dst_v4(), p.src, p.dst, h.l4_proto),
        h,
        node,
    )?;
    let l4_off = h.l4_off as usize;
    skb::rewrite_addr(ctx, h.l4_proto, l4_off, IP_SRC_OFF, h.src_v4(), node.ipv4)?;
    let field = if h.l4_proto == IPPROTO_ICMP { 4 } else { 0 };
    skb::rewrite_port(ctx, h.l4_proto, l4_off, l4_off + field, p.src, port)
}

/// The node port a north-south flow in SNAT mode leaves with, `h` describing the packet from
/// the client (TCP or UDP) and `backend` where it goes: the same translation, state and port
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
    forward(&egress, h, node)
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

#[inline(always)]
fn ingress_key(saddr: [u8; 4], daddr: [u8; 4], sport: u16, dport: u16, proto: u8) -> NatKey4 {
    NatKey4 {
        saddr,
        daddr,
        sport,
        dport,
        proto,
        direction: NAT_DIR_INGRESS,
        _pad: [0; 2],
    }
}

/// The client address and port of a reply (TCP or UDP, to this node's address) of a flow
/// [`service_snat_port`] translated, if it is one; the flow's state advances. Reads and writes
/// maps only.
#[inline(always)]
pub fn service_reverse(h: &Headers, node: &NodeConfig) -> Option<([u8; 4], u16)> {
    let ingress = ingress_key(h.src_v4(), node.ipv4, h.src_port, h.dst_port, h.l4_proto);
    reply(&ingress, h)
}

/// The state after packet `h` going `direction` on a flow whose state was `flags`.
#[inline(always)]
fn next_state(flags: u16, h: &Headers, direction: CtDirection) -> CtUpdate {
    ct_update(flags, h.l4_proto == IPPROTO_TCP, h.tcp_flags, direction)
}

/// Records the state after a packet in a live map value. Racing CPUs may lose a flag of one
/// packet to each other; the next packet restores it.
#[inline(always)]
fn apply(entry: *mut NatEntry4, up: &CtUpdate, now: Now) {
    // SAFETY: a live map value.
    unsafe { (*entry).advance(up, now.s, now.ns) };
}

/// The live entry of `key`, as a pointer into the map.
#[inline(always)]
fn live(key: &NatKey4, now_s: u32) -> Option<*mut NatEntry4> {
    let entry = SNAT4.get_ptr_mut(key)?;
    // SAFETY: a live map value, read once.
    if nat_alive(unsafe { &*entry }, now_s) {
        Some(entry)
    } else {
        None
    }
}

/// This CPU's scratch for a translation. The keys and entries of a flow live there rather than
/// on the stack: `xdp_entry` runs this inside the north-south path with almost none to spare.
/// A raw pointer: the `bpf_loop` callback reaches the slot on its own, so no reference to it
/// may be held across that call (the compiler would take the slot as unchanged by it).
#[inline(always)]
fn scratch() -> Result<*mut NatScratch, Reason> {
    SNAT_SCRATCH.get_ptr_mut(0).ok_or(Reason::NatFailed)
}

/// The index of the scratch slot, as global data: [`probe_at`] looks the slot up with a key
/// outside its stack, so that it uses none. `xdp_entry` calls it (through `bpf_loop`) from a
/// frame of nearly 512 bytes, and the verifier adds the two.
static SCRATCH_SLOT: u32 = 0;

/// [`scratch`] without a stack slot for the key.
#[inline(always)]
fn scratch_without_stack() -> Option<*mut NatScratch> {
    let map = (&raw const SNAT_SCRATCH).cast_mut().cast::<c_void>();
    let key = (&raw const SCRATCH_SLOT).cast::<c_void>();
    // SAFETY: the map is `weft_snat_scratch` (a `PerCpuArray` is its map definition) and the
    // key a u32 that lives as long as the program.
    let slot = unsafe { bpf_map_lookup_elem(map, key) };
    (!slot.is_null()).then_some(slot.cast::<NatScratch>())
}

/// The translated port of the flow whose egress key is `egress`, its state advanced by a packet
/// from the pod (or the client, north-south): the flow's port while both its entries live, else
/// a new translation.
#[inline(always)]
fn forward(egress: &NatKey4, h: &Headers, node: &NodeConfig) -> Result<u16, Reason> {
    let now = now();
    let slot = scratch()?;
    // SAFETY: this CPU's slot; nothing else runs on it until this packet is done, and the
    // borrow ends before `claim_port`.
    let s = unsafe { &mut *slot };
    s.egress = *egress;
    s.node_ip = node.ipv4;
    s.now_s = now.s;
    // A flow that comes back (its translation expired, or its reply entry was evicted) asks
    // for its old port first.
    s.preferred = egress.sport;
    if let Some(out) = SNAT4.get_ptr_mut(&s.egress) {
        // SAFETY: a live map value.
        let (port, flags, alive) = unsafe { ((*out).port, (*out).flags, nat_alive(&*out, now.s)) };
        s.preferred = port;
        if alive {
            s.set_ingress(port);
            if let Some(back) = live(&s.ingress, now.s)
                && s.returns_to_egress(back)
            {
                let up = next_state(flags, h, CtDirection::Forward);
                apply(out, &up, now);
                apply(back, &up, now);
                return Ok(port);
            }
        }
    }
    let up = next_state(0, h, CtDirection::Forward);
    claim_port(slot, node, &up, now)
}

/// The translation of a reply (its pod address and port), its flow's state advanced in both
/// entries.
#[inline(always)]
fn reply(ingress: &NatKey4, h: &Headers) -> Option<([u8; 4], u16)> {
    // SAFETY: this CPU's slot, written once.
    unsafe { (*scratch().ok()?).ingress = *ingress };
    let found = reverse_in_scratch(h.tcp_flags as u64);
    if found < 0 {
        return None;
    }
    Some((((found >> 16) as u32).to_ne_bytes(), found as u16))
}

/// [`reply`] for the ingress key in this CPU's scratch and a packet with `tcp_flags`: the pod
/// address (as `u32::from_ne_bytes`) shifted left by 16 and or-ed with the pod port, or -1 when
/// no live translation holds the key. A BPF subprogram with scalars only in its signature: the
/// callers that inline it stay small, and its BTF is plain.
#[inline(never)]
extern "C" fn reverse_in_scratch(tcp_flags: u64) -> i64 {
    let Ok(slot) = scratch() else {
        return -1;
    };
    // SAFETY: this CPU's slot; nothing else runs on it until this packet is done.
    let s = unsafe { &mut *slot };
    let now = now();
    let Some(back) = live(&s.ingress, now.s) else {
        return -1;
    };
    // SAFETY: a live map value.
    let (addr, port, flags) = unsafe { ((*back).addr, (*back).port, (*back).flags) };
    let is_tcp = s.ingress.proto == IPPROTO_TCP;
    let up = ct_update(flags, is_tcp, tcp_flags as u8, CtDirection::Reply);
    apply(back, &up, now);
    let i = &s.ingress;
    s.egress = egress_key(addr, i.saddr, port, i.sport, i.proto);
    if let Some(out) = SNAT4.get_ptr_mut(&s.egress)
        // SAFETY: a live map value.
        && unsafe { (*out).port } == s.ingress.dport
    {
        apply(out, &up, now);
    }
    (i64::from(u32::from_ne_bytes(addr)) << 16) | i64::from(port)
}

/// Finds a free port for the new flow of the scratch's egress key (its preferred port first,
/// when in range) and records both directions with the state `up` of its first packet.
#[inline(always)]
fn claim_port(
    slot: *mut NatScratch,
    node: &NodeConfig,
    up: &CtUpdate,
    now: Now,
) -> Result<u16, Reason> {
    let (min, max) = (node.snat_port_min, node.snat_port_max);
    if min == 0 || max < min {
        return Err(Reason::SnatNoPort);
    }
    {
        // SAFETY: this CPU's slot; the borrow ends before the search.
        let s = unsafe { &mut *slot };
        s.back.addr = s.egress.saddr;
        s.back.port = s.egress.sport;
        s.back._pad = 0;
        s.back.advance(up, now.s, now.ns);
        s.min = min;
        s.span = (max - min) as u32 + 1;
        if s.preferred < min || s.preferred > max {
            s.preferred = 0;
        }
    }
    let port = search(slot).ok_or(Reason::SnatNoPort)?;
    // SAFETY: as above, after the search.
    let s = unsafe { &mut *slot };
    s.out = s.back;
    s.out.addr = node.ipv4;
    s.out.port = port;
    SNAT4
        .insert(&s.egress, &s.out, BPF_ANY as u64)
        .map_err(|_| Reason::NatFailed)?;
    Ok(port)
}

/// Tries the preferred port, then [`SNAT_PORT_PROBES`] ports spread over the range from a
/// random start ([`probe_at`], called by `bpf_loop`); returns the one taken.
#[inline(always)]
fn search(slot: *mut NatScratch) -> Option<u16> {
    {
        // SAFETY: this CPU's slot; the borrow ends before the loop, which reads it.
        let s = unsafe { &mut *slot };
        // SAFETY: helper without arguments.
        s.start = unsafe { bpf_get_prandom_u32() }
            .checked_rem(s.span)
            .unwrap_or(0);
        s.stride = snat_probe_stride(s.span);
        s.found = 0;
    }
    // SAFETY: `probe_at` has bpf_loop's callback signature; it takes no context.
    unsafe {
        bpf_loop(
            SNAT_PORT_PROBES + 1,
            probe_at as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    // SAFETY: read after the loop wrote it.
    let found = unsafe { (*slot).found };
    (found != 0).then_some(found)
}

/// A translation in the making, in this CPU's slot of `weft_snat_scratch`, where the
/// `bpf_loop` callback [`probe_at`] finds it.
#[derive(Clone, Copy)]
pub struct NatScratch {
    /// The flow's egress key.
    egress: NatKey4,
    /// An ingress key being looked at.
    ingress: NatKey4,
    /// The egress key of an expired flow being taken over.
    stale: NatKey4,
    /// The ingress and egress entries to write.
    back: NatEntry4,
    out: NatEntry4,
    node_ip: [u8; 4],
    now_s: u32,
    min: u16,
    /// The port to try first, 0 for none.
    preferred: u16,
    span: u32,
    start: u32,
    stride: u32,
    /// The port taken, 0 while none is (0 is never in the range: `min` is not 0).
    found: u16,
    _pad: u16,
}

impl NatScratch {
    /// `ingress` becomes the reply tuple of the flow translated to `port`.
    #[inline(always)]
    fn set_ingress(&mut self, port: u16) {
        self.ingress = ingress_key(
            self.egress.daddr,
            self.node_ip,
            self.egress.dport,
            port,
            self.egress.proto,
        );
    }

    /// Whether the ingress entry `back` returns to the pod tuple of `egress`.
    #[inline(always)]
    fn returns_to_egress(&self, back: *mut NatEntry4) -> bool {
        // SAFETY: a live map value.
        let (addr, port) = unsafe { ((*back).addr, (*back).port) };
        addr == self.egress.saddr && port == self.egress.sport
    }

    /// The port of step `i` of [`search`]: the preferred one first (`None` when
    /// there is none), then the probes.
    #[inline(always)]
    fn candidate(&self, i: u32) -> Option<u16> {
        match i {
            0 if self.preferred == 0 => None,
            0 => Some(self.preferred),
            _ => Some(snat_probe_port(
                self.min,
                self.span,
                self.start,
                self.stride,
                i - 1,
            )),
        }
    }

    /// Takes the port of `ingress` for the flow when that reply tuple is free or held by an
    /// expired flow, whose entries then go.
    #[inline(always)]
    fn take(&mut self) -> bool {
        if let Some(old) = SNAT4.get_ptr(&self.ingress) {
            // SAFETY: a live map value, read once.
            let (alive, addr, port) =
                unsafe { (nat_alive(&*old, self.now_s), (*old).addr, (*old).port) };
            if alive {
                return false;
            }
            let i = &self.ingress;
            self.stale = egress_key(addr, i.saddr, port, i.sport, i.proto);
            self.release();
        }
        // NOEXIST: of two flows taking the same port at once, one gets it.
        SNAT4
            .insert(&self.ingress, &self.back, BPF_NOEXIST as u64)
            .is_ok()
    }

    /// Deletes the expired translation at `ingress` and its egress entry `stale`, when that
    /// still holds the port.
    #[inline(always)]
    fn release(&self) {
        if let Some(out) = SNAT4.get_ptr(&self.stale)
            // SAFETY: a live map value.
            && unsafe { (*out).port } == self.ingress.dport
        {
            let _ = SNAT4.remove(&self.stale);
        }
        let _ = SNAT4.remove(&self.ingress);
    }
}

/// Step `i` of [`search`]: 1 stops the loop (a port is taken). A BPF subprogram: the verifier
/// checks it once, not once per step, and its callers stay small. It keeps nothing on its
/// stack (see [`SCRATCH_SLOT`]).
#[inline(never)]
extern "C" fn probe_at(i: u64, _ctx: *mut c_void) -> i64 {
    let Some(slot) = scratch_without_stack() else {
        return 1;
    };
    // SAFETY: this CPU's slot, filled by `claim_port` before the loop.
    let s = unsafe { &mut *slot };
    let Some(port) = s.candidate(i as u32) else {
        return 0;
    };
    s.set_ingress(port);
    if s.take() {
        s.found = s.ingress.dport;
    }
    // SAFETY: as above.
    i64::from(unsafe { (*slot).found } != 0)
}

/// A reply from the world to a masqueraded flow: destination back to the pod's address and
/// port. Returns the pod address, or `None` when the packet belongs to no live translation (it
/// is for the node itself).
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
    let ingress = ingress_key(h.src_v4(), node.ipv4, sport, dport, h.l4_proto);
    let Some((pod, pod_port)) = reply(&ingress, h) else {
        return Ok(None);
    };
    let l4_off = h.l4_off as usize;
    skb::rewrite_addr(ctx, h.l4_proto, l4_off, IP_DST_OFF, node.ipv4, pod)?;
    let field = if h.l4_proto == IPPROTO_ICMP { 4 } else { 2 };
    skb::rewrite_port(ctx, h.l4_proto, l4_off, l4_off + field, dport, pod_port)?;
    Ok(Some(pod))
}
