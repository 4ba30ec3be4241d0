//! Weft's datapath programs. Entry points stay thin: each one names its hook and hands the
//! packet to the stages in the modules below.
#![no_std]
#![no_main]

mod events;
mod maps;
mod metrics;
mod netdev;
mod observe;
mod packet;
mod parse;
mod veth;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use weft_common::Hook;

/// tcx ingress of a pod's host-side veth: every packet the pod sends.
#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    veth::handle(&ctx, Hook::FromContainer)
}

/// tcx egress of a pod's host-side veth: every packet delivered to the pod.
#[classifier]
pub fn to_container(ctx: TcContext) -> i32 {
    veth::handle(&ctx, Hook::ToContainer)
}

/// XDP on the node's external device: every frame the node receives from the underlay.
#[xdp]
pub fn xdp_entry(ctx: XdpContext) -> u32 {
    netdev::handle(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
