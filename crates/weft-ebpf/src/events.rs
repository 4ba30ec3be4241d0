//! Drop and trace events written to the ring buffer.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use weft_common::{Event, EventKind, Hook, Reason, event::SNIPPET_LEN};

use crate::{
    maps::{CONFIG, EVENTS},
    packet::Packet,
    parse::Headers,
};

#[inline(always)]
pub fn trace_enabled() -> bool {
    CONFIG.get(0).is_some_and(|c| c.trace_enabled())
}

/// Reports a packet. A full ring buffer loses the event, never the packet.
#[inline(always)]
pub fn emit<P: Packet>(pkt: &P, kind: EventKind, hook: Hook, reason: Reason, hdrs: &Headers) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        return;
    };
    let event = entry.write(Event {
        kind: kind as u8,
        hook: hook as u8,
        reason: reason as u8,
        l4_proto: hdrs.l4_proto,
        ifindex: pkt.ifindex(),
        // SAFETY: helper without preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        pkt_len: pkt.len(),
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
    event.cap_len = pkt.copy_head(&mut event.snippet);
    entry.submit(0);
}
