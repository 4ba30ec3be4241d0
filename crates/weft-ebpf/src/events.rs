//! Drop and trace events written to the ring buffer.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use weft_common::{Event, EventKind, Hook, event::SNIPPET_LEN};

use crate::{
    maps::{CONFIG, EVENTS},
    packet::Packet,
    parse::Headers,
    verdict::Verdict,
};

#[inline(always)]
pub fn trace_enabled() -> bool {
    CONFIG.get(0).is_some_and(|c| c.trace_enabled())
}

/// Reports a packet. A full ring buffer loses the event, never the packet. Fields are written
/// straight into the reserved record: an `Event` built on the stack first would cost 136 of the
/// program's 512 stack bytes.
#[inline(always)]
pub fn emit<P: Packet>(pkt: &P, kind: EventKind, hook: Hook, verdict: &Verdict, hdrs: &Headers) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points to a reserved, writable record of size_of::<Event>() bytes; every
    // field is written before the record is submitted.
    unsafe {
        (*e).kind = kind as u8;
        (*e).hook = hook as u8;
        (*e).reason = verdict.reason as u8;
        (*e).l4_proto = hdrs.l4_proto;
        (*e).ifindex = pkt.ifindex();
        (*e).timestamp_ns = bpf_ktime_get_ns();
        (*e).pkt_len = pkt.len();
        (*e).ethertype = hdrs.ethertype;
        (*e).src_port = hdrs.src_port;
        (*e).dst_port = hdrs.dst_port;
        (*e).tcp_flags = hdrs.tcp_flags;
        (*e).ip_version = hdrs.ip_version;
        (*e)._pad = [0; 2];
        (*e).src_addr = hdrs.src_addr;
        (*e).dst_addr = hdrs.dst_addr;
        (*e).snippet = [0; SNIPPET_LEN];
        (*e).src_identity = verdict.identity;
        (*e)._pad2 = 0;
        (*e).cap_len = pkt.copy_head(&mut (*e).snippet);
    }
    entry.submit(0);
}
