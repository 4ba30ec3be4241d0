//! The node's external device at XDP. The node's own stack still needs whatever L3 it speaks
//! (VLAN, LLDP, ...), so only malformed headers are dropped this early; everything else goes on
//! to the stack. The north-south service path and the prefilter join here later.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    programs::XdpContext,
};
use weft_common::{Hook, Reason};

use crate::observe;

#[inline(always)]
pub fn handle(ctx: &XdpContext) -> u32 {
    let drop_malformed = |r: Reason| r.is_drop() && r != Reason::UnsupportedL3;
    if observe::classify(ctx, Hook::Xdp, drop_malformed).is_drop() {
        XDP_DROP
    } else {
        XDP_PASS
    }
}
