//! Weft's datapath programs. Entry points stay thin: each one names its hook and hands the
//! packet to the stages in the modules below.
#![no_std]
#![no_main]

mod arp;
mod container;
mod ct;
mod dsr;
mod events;
mod geneve;
mod lb;
mod lookup;
mod maps;
mod metrics;
mod nat;
mod netdev;
mod nodeport;
mod observe;
mod packet;
mod parse;
mod prefilter;
mod reject;
mod skb;
mod sock;
mod verdict;
mod xdp;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};

/// tcx ingress of a pod's host-side veth: every packet the pod sends.
#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    container::from_container(&ctx)
}

/// tcx egress of a pod's host-side veth: every packet delivered to the pod.
#[classifier]
pub fn to_container(ctx: TcContext) -> i32 {
    container::to_container(&ctx)
}

/// tcx ingress of the node's external device: what the underlay delivers to the node.
#[classifier]
pub fn from_netdev(ctx: TcContext) -> i32 {
    netdev::from_netdev(&ctx)
}

/// tcx egress of the node's external device: what the node sends to the underlay.
#[classifier]
pub fn to_netdev(ctx: TcContext) -> i32 {
    netdev::to_netdev(&ctx)
}

/// XDP on the node's external device: every frame the node receives from the underlay.
#[xdp]
pub fn xdp_entry(ctx: XdpContext) -> u32 {
    netdev::xdp(&ctx)
}

/// cgroup connect4 of the node's cgroup: TCP connections and connected UDP sockets.
#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::to_backend(&ctx)
}

/// cgroup sendmsg4: UDP datagrams sent to an address.
#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::to_backend(&ctx)
}

/// cgroup recvmsg4: the source a UDP datagram reads as.
#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::to_frontend(&ctx)
}

/// cgroup getpeername4: the peer a connected socket reads as.
#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::to_frontend(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
