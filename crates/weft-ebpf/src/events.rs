//! Drop and trace events written to the ring buffer.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    programs::TcContext,
};
use weft_common::{Event, EventKind, Hook, Reason, event::SNIPPET_LEN};

use crate::{
    maps::{CONFIG, EVENTS},
    parse::Headers,
};

#[inline(always)]
pub fn trace_enabled() -> bool {
    CONFIG.get(0).is_some_and(|c| c.trace_enabled())
}

/// Reports a packet. A full ring buffer loses the event, never the packet.
#[inline(always)]
pub fn emit(ctx: &TcContext, kind: EventKind, hook: Hook, reason: Reason, hdrs: &Headers) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        return;
    };
    let pkt_len = ctx.len();
    // SAFETY: `ctx.skb.skb` is the live __sk_buff of this invocation.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let event = entry.write(Event {
        kind: kind as u8,
        hook: hook as u8,
        reason: reason as u8,
        l4_proto: hdrs.l4_proto,
        ifindex,
        // SAFETY: helper without preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        pkt_len,
        ethertype: hdrs.ethertype,
        src_port: hdrs.src_port,
        dst_port: hdrs.dst_port,
        tcp_flags: hdrs.tcp_flags,
        ip_version: hdrs.ip_version,
        cap_len: 0,
        _pad: [0; 2],
        src_addr: hdrs.src_addr,
        dst_addr: hdrs.dst_addr,
        snippet: [0; SNIPPET_LEN],
    });
    event.cap_len = copy_snippet(ctx, pkt_len, &mut event.snippet);
    entry.submit(0);
}

/// Copies the head of the packet, at most `SNIPPET_LEN` bytes; returns how many were copied.
/// Calls the helper directly: the length must be provably in 1..=SNIPPET_LEN for the verifier,
/// which `TcContext::load_bytes` (re-reading `skb->len`) does not establish.
#[inline(always)]
fn copy_snippet(ctx: &TcContext, pkt_len: u32, dst: &mut [u8; SNIPPET_LEN]) -> u16 {
    let mut len = pkt_len;
    if len > SNIPPET_LEN as u32 {
        len = SNIPPET_LEN as u32;
    }
    if len == 0 {
        return 0;
    }
    // SAFETY: `dst` is SNIPPET_LEN writable bytes and 1 <= len <= SNIPPET_LEN.
    let ret = unsafe { bpf_skb_load_bytes(ctx.skb.skb.cast(), 0, dst.as_mut_ptr().cast(), len) };
    if ret == 0 { len as u16 } else { 0 }
}
