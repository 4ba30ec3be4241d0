//! The stage every program ends with: count the packet by hook and verdict, report it.

use weft_common::{EventKind, Hook};

use crate::{events, metrics, packet::Packet, parse::Headers, verdict::Verdict};

/// Counts and reports a packet with its verdict; `hdrs` are the headers the event shows (the
/// inner ones for a tunnel packet).
#[inline(always)]
pub fn account<P: Packet>(pkt: &P, hook: Hook, hdrs: &Headers, verdict: &Verdict) {
    metrics::count(hook, verdict.reason, pkt.len());
    if verdict.reason.is_drop() {
        events::emit(pkt, EventKind::Drop, hook, verdict, hdrs);
    } else if events::trace_enabled() {
        events::emit(pkt, EventKind::Trace, hook, verdict, hdrs);
    }
}
