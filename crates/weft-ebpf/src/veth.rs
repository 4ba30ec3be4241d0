//! The pod's host-side veth: parse, count, report. Forwarding stages join here later.

use aya_ebpf::programs::TcContext;
use weft_common::{
    EventKind, Hook, Reason,
    net::{TC_ACT_OK, TC_ACT_SHOT},
};

use crate::{events, metrics, parse};

#[inline(always)]
pub fn handle(ctx: &TcContext, hook: Hook) -> i32 {
    let (hdrs, verdict) = match parse::headers(ctx) {
        Ok(hdrs) => (hdrs, Reason::Forwarded),
        Err((hdrs, reason)) => (hdrs, reason),
    };
    metrics::count(hook, verdict, ctx.len());
    if verdict.is_drop() {
        events::emit(ctx, EventKind::Drop, hook, verdict, &hdrs);
        return TC_ACT_SHOT;
    }
    if events::trace_enabled() {
        events::emit(ctx, EventKind::Trace, hook, verdict, &hdrs);
    }
    TC_ACT_OK
}
