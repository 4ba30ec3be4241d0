//! The stage every program runs first: parse, count by hook and verdict, report.

use weft_common::{EventKind, Hook, Reason};

use crate::{events, metrics, packet::Packet, parse};

/// Parses and accounts for a packet. `drops` says which parse failures this hook drops; the
/// others are counted as forwarded. Returns the verdict.
#[inline(always)]
pub fn classify<P: Packet>(pkt: &P, hook: Hook, drops: impl Fn(Reason) -> bool) -> Reason {
    let (hdrs, verdict) = match parse::headers(pkt) {
        Ok(hdrs) => (hdrs, Reason::Forwarded),
        Err((hdrs, reason)) if drops(reason) => (hdrs, reason),
        Err((hdrs, _)) => (hdrs, Reason::Forwarded),
    };
    metrics::count(hook, verdict, pkt.len());
    if verdict.is_drop() {
        events::emit(pkt, EventKind::Drop, hook, verdict, &hdrs);
    } else if events::trace_enabled() {
        events::emit(pkt, EventKind::Trace, hook, verdict, &hdrs);
    }
    verdict
}
