//! The pod's host-side veth. A pod sends only what it may: any malformed header or L3 protocol
//! Weft does not carry is dropped. Forwarding stages join here later.

use aya_ebpf::programs::TcContext;
use weft_common::{
    Hook, Reason,
    net::{TC_ACT_OK, TC_ACT_SHOT},
};

use crate::observe;

#[inline(always)]
pub fn handle(ctx: &TcContext, hook: Hook) -> i32 {
    if observe::classify(ctx, hook, Reason::is_drop).is_drop() {
        TC_ACT_SHOT
    } else {
        TC_ACT_OK
    }
}
