//! Socket LB: a ClusterIP translated once, where the socket names it, instead of on every
//! packet. `connect()` (TCP, connected UDP) and `sendmsg()` (each unconnected UDP datagram) get a
//! backend in place of the frontend, and the pair is remembered per socket so that
//! `recvmsg()` and `getpeername()` show the frontend again. The packets then carry the backend's
//! address from the start: tc sees no frontend, opens no conntrack entry and finds no reply
//! entry to reverse, so such a flow is never translated twice.
//!
//! What is left to tc (the address is not touched): services without an active backend (tc
//! answers them with ICMP port unreachable), services with session affinity (tc keys affinity
//! by client IP, which is not known before the socket is routed), protocols other than TCP and
//! UDP, and with `socketLB.hostNamespaceOnly`, sockets of other network namespaces (pods).

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_ANY, bpf_sock_addr},
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use weft_common::{
    Lb4SockKey, Lb4SockRevNat,
    lb::{SVC_FLAG_AFFINITY, cookie_hash},
    net::{IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{lb, lookup, maps::LB4_SOCK_REVNAT};

/// A cgroup sock_addr program's verdict that lets the call proceed.
const ALLOW: i32 = 1;

/// `connect()` and `sendmsg()`: a frontend becomes one of its backends.
#[inline(always)]
pub fn to_backend(ctx: &SockAddrContext) -> i32 {
    let _ = translate(ctx);
    ALLOW
}

/// `recvmsg()` and `getpeername()`: the backend given at `connect()`/`sendmsg()` reads as the
/// frontend it stands for.
#[inline(always)]
pub fn to_frontend(ctx: &SockAddrContext) -> i32 {
    let _ = reverse(ctx);
    ALLOW
}

#[inline(always)]
fn translate(ctx: &SockAddrContext) -> Option<()> {
    let sa = ctx.sock_addr;
    // The protocol, not the socket type: ICMP echo sockets are datagram sockets too.
    // SAFETY: the context pointer the kernel handed the program.
    let proto = unsafe { (*sa).protocol } as u8;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    if !in_scope(ctx) {
        return None;
    }
    let (address, port) = user_addr(sa);
    let fe = lb::frontend_of(address, port, proto)?;
    if fe.svc.count == 0 || fe.svc.flags & SVC_FLAG_AFFINITY != 0 {
        return None;
    }
    // SAFETY: the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // No 5-tuple exists yet (the source port is picked later), so Maglev hashes the socket
    // cookie: sockets spread over the table as flows would and each keeps its backend. Unlike
    // tc, no other node ever has to make the same choice for this socket.
    let id = lb::pick_backend(&fe, || cookie_hash(cookie)).ok()?;
    let backend = lb::backend(id)?;
    let key = Lb4SockKey {
        cookie,
        address: backend.address,
        port: backend.port,
        _pad: 0,
    };
    let frontend = Lb4SockRevNat {
        address,
        port,
        rev_nat_index: fe.svc.rev_nat_index,
    };
    // Without its reverse entry the socket would see the backend's address in replies: then
    // the frontend stays, and tc translates the flow instead.
    LB4_SOCK_REVNAT.insert(key, frontend, BPF_ANY as u64).ok()?;
    set_user_addr(sa, backend.address, backend.port);
    Some(())
}

#[inline(always)]
fn reverse(ctx: &SockAddrContext) -> Option<()> {
    let sa = ctx.sock_addr;
    let (address, port) = user_addr(sa);
    // SAFETY: the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = Lb4SockKey {
        cookie,
        address,
        port,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    let frontend = unsafe { LB4_SOCK_REVNAT.get(key) }.copied()?;
    set_user_addr(sa, frontend.address, frontend.port);
    Some(())
}

/// Whether the socket is one socket LB translates: every socket of the cgroup, or with
/// `socketLB.hostNamespaceOnly` only those of the node's own network namespace.
#[inline(always)]
fn in_scope(ctx: &SockAddrContext) -> bool {
    match lookup::node() {
        Some(node) if node.socket_lb_host_namespace_only() => {
            // SAFETY: the program's own context.
            let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
            netns == node.netns_cookie
        }
        _ => true,
    }
}

/// The address the call names: network-order bytes and a host-order port (the context holds
/// the port in network order in the low 16 bits of a u32).
#[inline(always)]
fn user_addr(sa: *mut bpf_sock_addr) -> ([u8; 4], u16) {
    // SAFETY: the context pointer the kernel handed the program.
    let (ip, port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    (ip.to_ne_bytes(), u16::from_be(port as u16))
}

#[inline(always)]
fn set_user_addr(sa: *mut bpf_sock_addr, address: [u8; 4], port: u16) {
    // SAFETY: the context pointer the kernel handed the program; both fields are writable at
    // the four hooks these programs attach to.
    unsafe {
        (*sa).user_ip4 = u32::from_ne_bytes(address);
        (*sa).user_port = u32::from(port.to_be());
    }
}
