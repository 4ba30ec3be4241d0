//! Connection tracking of load-balanced flows: the service entry (client -> frontend) and the
//! reply entry (backend -> client) of each flow, kept in step from both directions. The state
//! machine is `weft_common::ct`; this stage only reads and writes `weft_ct4`.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_ns};
use weft_common::{
    CtEntry4, CtKey4, Reason,
    ct::{CT_KIND_REPLY, CT_KIND_SERVICE, CtDirection, CtUpdate, ct_alive, ct_update},
    net::IPPROTO_TCP,
};

use crate::{maps::CT4, parse::Headers};

/// Monotonic seconds, the clock of every expiry in `weft_ct4` and `weft_lb4_affinity`.
#[inline(always)]
pub fn now_s() -> u32 {
    // SAFETY: helper without arguments.
    (unsafe { bpf_ktime_get_ns() } / 1_000_000_000) as u32
}

/// The service entry's key: the packet's tuple as the client sent it.
#[inline(always)]
pub fn service_key(h: &Headers) -> CtKey4 {
    CtKey4 {
        saddr: h.src_v4(),
        daddr: h.dst_v4(),
        sport: h.src_port,
        dport: h.dst_port,
        proto: h.l4_proto,
        kind: CT_KIND_SERVICE,
        _pad: [0; 2],
    }
}

/// The reply entry's key: the packet's tuple as the backend sends it.
#[inline(always)]
pub fn reply_key(h: &Headers) -> CtKey4 {
    CtKey4 {
        kind: CT_KIND_REPLY,
        ..service_key(h)
    }
}

/// The live entry for `key`, as a pointer into the map so that updates cost no second lookup.
#[inline(always)]
pub fn live(key: &CtKey4, now: u32) -> Option<*mut CtEntry4> {
    let entry = CT4.get_ptr_mut(key)?;
    // SAFETY: a live map value, read once.
    if ct_alive(unsafe { &*entry }, now) {
        Some(entry)
    } else {
        None
    }
}

/// What the packet in `h`, going `direction`, does to the flow whose entry is `entry`.
#[inline(always)]
pub fn next_state(entry: *mut CtEntry4, h: &Headers, direction: CtDirection) -> CtUpdate {
    // SAFETY: a live map value.
    let flags = unsafe { (*entry).flags };
    ct_update(flags, h.l4_proto == IPPROTO_TCP, h.tcp_flags, direction)
}

/// Records the state after a packet in an entry. Racing CPUs may lose a count or a flag of
/// one packet to each other; the next packet restores the flags.
#[inline(always)]
pub fn apply(entry: *mut CtEntry4, up: &CtUpdate, now: u32, direction: CtDirection) {
    // SAFETY: a live map value.
    unsafe {
        (*entry).flags = up.flags;
        (*entry).expires_s = now.saturating_add(up.lifetime_s);
        match direction {
            CtDirection::Forward => (*entry).packets_forward += 1,
            CtDirection::Reply => (*entry).packets_reply += 1,
        }
    }
}

/// A new flow's entry: state after its first packet (`up`), its backend, its service and the
/// frontend its replies come from.
#[inline(always)]
pub fn entry(
    backend_id: u32,
    rev_nat_index: u16,
    frontend: ([u8; 4], u16),
    up: &CtUpdate,
    now: u32,
) -> CtEntry4 {
    CtEntry4 {
        expires_s: now.saturating_add(up.lifetime_s),
        created_s: now,
        backend_id,
        rev_nat_index,
        flags: up.flags,
        packets_forward: 1,
        packets_reply: 0,
        nat_address: frontend.0,
        nat_port: frontend.1,
        _pad: 0,
    }
}

/// Writes `entry` under `key`.
#[inline(always)]
pub fn put(key: &CtKey4, entry: &CtEntry4) -> Result<(), Reason> {
    CT4.insert(key, entry, BPF_ANY as u64)
        .map_err(|_| Reason::ConntrackFailed)
}
