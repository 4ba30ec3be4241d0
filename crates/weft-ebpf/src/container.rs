//! The pod's host-side veth. What a pod sends is checked against the pod (anti-spoofing) and
//! routed here: to a pod of this node by `bpf_redirect_peer`, to a pod of another node through
//! the Geneve tunnel, everything else to the node's stack (which masquerades it on the way out,
//! see `netdev`). Until the agent has configured the node, packets only get parsed and counted.

use aya_ebpf::programs::TcContext;
use weft_common::{
    Hook, NodeConfig, Reason,
    ct::CT_FLAG_NORTH_SOUTH,
    ipcache::identity,
    net::{ETH_P_ARP, ETH_P_IP, TC_ACT_OK},
};

use crate::{
    arp, dsr, geneve, lb, lookup, nodeport, observe,
    parse::{self, Headers},
    reject, skb,
    verdict::{StageResult, Verdict, settle},
};

#[inline(always)]
pub fn from_container(ctx: &TcContext) -> i32 {
    let Some(h) = parse::scratch(Hook::FromContainer) else {
        return TC_ACT_OK;
    };
    let verdict = match parse::headers(ctx, h) {
        Ok(()) => settle(route(ctx, h)),
        Err(reason) => Verdict::drop(reason),
    };
    observe::account(ctx, Hook::FromContainer, h, &verdict);
    verdict.action
}

/// Traffic the node's stack delivers to the pod (from the node itself, or anything not
/// redirected straight to the pod).
#[inline(always)]
pub fn to_container(ctx: &TcContext) -> i32 {
    let Some(h) = parse::scratch(Hook::ToContainer) else {
        return TC_ACT_OK;
    };
    let verdict = match parse::headers(ctx, h) {
        Ok(()) => settle(reverse_nat(ctx, h)),
        Err(reason) => Verdict::drop(reason),
    };
    observe::account(ctx, Hook::ToContainer, h, &verdict);
    verdict.action
}

/// Replies of load-balanced flows the stack delivers get their frontend back.
#[inline(always)]
fn reverse_nat(ctx: &TcContext, h: &mut Headers) -> StageResult {
    if let Some(node) = lookup::node()
        && h.is_ipv4()
    {
        lb::reverse_to_client(ctx, h, &node)?;
    }
    Ok(Verdict::pass())
}

#[inline(always)]
fn route(ctx: &TcContext, h: &mut Headers) -> StageResult {
    let Some(node) = lookup::node() else {
        return Ok(Verdict::pass());
    };
    match h.ethertype {
        ETH_P_ARP => arp::from_pod(ctx, h),
        ETH_P_IP => ipv4(ctx, h, &node),
        // Pods are IPv4-only.
        _ => Err(Reason::UnsupportedL3),
    }
}

/// A pod's IPv4 packet: to a service it goes to the flow's backend; a reply of a flow this node
/// balanced gets its frontend back (a north-south one then leaves through the external
/// device); then it is routed by its (new) destination. Outside the cluster, a reply of a DSR
/// flow leaves from the frontend; the rest goes to the stack (masquerade, see `netdev`).
#[inline(always)]
fn ipv4(ctx: &TcContext, h: &mut Headers, node: &NodeConfig) -> StageResult {
    let src = lookup::source_endpoint(ctx, h.src_v4(), h.src_mac)?;
    let identity = src.identity;
    if let Some(fe) = lb::frontend(h) {
        match lb::to_backend(ctx, h, &fe) {
            Err(Reason::NoServiceBackend) => {
                let refused = reject::port_unreachable(ctx, h, &src, Reason::NoServiceBackend)?;
                return Ok(refused.with_identity(identity));
            }
            other => other?,
        }
    } else {
        match lb::reverse_to_client(ctx, h, node)? {
            Some(flags) if flags & CT_FLAG_NORTH_SOUTH != 0 => {
                return Ok(nodeport::leave(ctx, h, node)?.with_identity(identity));
            }
            Some(_) => {}
            None => lb::forget_reply_of_direct_syn(h),
        }
    }
    if let Some(dst) = lookup::endpoint(h.dst_v4()) {
        skb::decrement_ttl(ctx, h.ttl)?;
        return Ok(skb::deliver_to(ctx, &dst)?.with_identity(identity));
    }
    if let Some(tunnel_endpoint) = tunnel_endpoint(h.dst_v4()) {
        skb::decrement_ttl(ctx, h.ttl)?;
        geneve::encap(ctx, node, tunnel_endpoint, identity)?;
        return Ok(skb::redirect_neigh(node.external_ifindex).with_identity(identity));
    }
    if let Some(replied) = dsr::reply(ctx, h, node)? {
        return Ok(replied.with_identity(identity));
    }
    Ok(Verdict::pass().with_identity(identity))
}

/// The node a pod's packet to `dst` tunnels to: the node of a remote pod, or the remote node
/// itself (pods reach other nodes through the tunnel, so the node sees the pod's own address,
/// and its reply, routed to the pod's CIDR, comes back the same way).
#[inline(always)]
fn tunnel_endpoint(dst: [u8; 4]) -> Option<[u8; 4]> {
    let entry = lookup::ipcache(dst)?;
    if entry.has_tunnel() {
        Some(entry.tunnel_endpoint)
    } else if entry.identity == identity::REMOTE_NODE {
        Some(dst)
    } else {
        None
    }
}
