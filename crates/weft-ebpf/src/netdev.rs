//! The node's external device.
//! - XDP (`xdp`): the prefilter, then the north-south service path for flows whose backend is
//!   behind another node (the same decision as tc, see `nodeport`); malformed headers are
//!   dropped; everything else goes on to tc.
//! - tc ingress (`from_netdev`): Geneve from other nodes (their underlay addresses in the
//!   ipcache; from any other source it is dropped) is decapsulated and delivered to the
//!   pod (recording DSR flows, see `dsr`) or, addressed to the node, handed to its stack unless
//!   it is the reply of a north-south flow this node SNATed (sent back to the client); packets
//!   to a north-south frontend are balanced (`nodeport`); replies to masqueraded flows are
//!   translated back and delivered to the pod.
//! - tc egress (`to_netdev`): pod traffic the stack routed out is masqueraded to the node's
//!   address; traffic the stack routes to a pod of another node is encapsulated.

use aya_ebpf::{
    bindings::xdp_action::XDP_PASS,
    programs::{TcContext, XdpContext},
};
use weft_common::{
    Hook, NodeConfig, Reason, ct::CT_FLAG_NORTH_SOUTH, ipcache::identity, net::TC_ACT_OK,
};

use crate::{
    dsr, geneve, lb, lookup, nat,
    nodeport::{self, Decision},
    observe,
    parse::{self, Headers},
    prefilter, skb,
    verdict::{StageResult, Verdict, settle},
    xdp,
};

#[inline(always)]
pub fn xdp(ctx: &XdpContext) -> u32 {
    let Some(h) = parse::scratch(Hook::Xdp) else {
        return XDP_PASS;
    };
    let verdict = match parse::headers(ctx, h) {
        Ok(()) => settle(xdp::ingress(ctx, h)),
        Err(reason) if reason != Reason::UnsupportedL3 => Verdict::drop(reason),
        Err(_) => Verdict::pass(),
    };
    observe::account(ctx, Hook::Xdp, h, &verdict);
    xdp::action(&verdict)
}

#[inline(always)]
pub fn from_netdev(ctx: &TcContext) -> i32 {
    on_netdev(ctx, Hook::FromNetdev, ingress)
}

#[inline(always)]
pub fn to_netdev(ctx: &TcContext) -> i32 {
    on_netdev(ctx, Hook::ToNetdev, |ctx, h, node| egress(ctx, h, node))
}

/// The tc hooks of the external device: parse, hand IPv4 to `stage` once the node is
/// configured, account. What the node does not understand is its stack's business, not a drop.
#[inline(always)]
fn on_netdev(
    ctx: &TcContext,
    hook: Hook,
    stage: impl FnOnce(&TcContext, &mut Headers, &NodeConfig) -> StageResult,
) -> i32 {
    let Some(h) = parse::scratch(hook) else {
        return TC_ACT_OK;
    };
    let parsed = parse::headers(ctx, h).is_ok();
    let verdict = match lookup::node() {
        Some(node) if parsed && h.is_ipv4() => settle(stage(ctx, h, &node)),
        _ => Verdict::pass(),
    };
    observe::account(ctx, hook, h, &verdict);
    verdict.action
}

/// On success `h` becomes the headers of what is delivered (the inner packet of a tunnel).
#[inline(always)]
fn ingress(ctx: &TcContext, h: &mut Headers, node: &NodeConfig) -> StageResult {
    prefilter::check(h)?;
    if geneve::is_geneve_to(h, node) {
        return tunneled(ctx, h, node);
    }
    // tc carries out every delivery.
    if let Decision::Forward(plan, ()) = nodeport::plan(h, node, |_| Some(()))? {
        return nodeport::forward(ctx, h, node, &plan);
    }
    if let Some(pod) = nat::reverse_snat(ctx, h, node)? {
        let ep = lookup::endpoint(pod).ok_or(Reason::UnknownEndpoint)?;
        return Ok(skb::deliver_to(ctx, &ep)?.with_identity(identity::WORLD));
    }
    Ok(Verdict::pass())
}

/// Geneve to this node from another node, decapsulated. The outer source is all that tells a
/// node's packet from anyone's: from any other address the packet, its identity and its DSR
/// option are refused before they are read.
#[inline(always)]
fn tunneled(ctx: &TcContext, h: &mut Headers, node: &NodeConfig) -> StageResult {
    let sender = h.src_v4();
    if !lookup::is_other_node(sender) {
        return Err(Reason::TunnelFromUnknownSource);
    }
    let tunneled = geneve::inspect(ctx, h, node)?;
    let frontend = match tunneled.dsr {
        Some(option) => Some(dsr::honoured(option, h, sender, node)?),
        None => None,
    };
    if h.dst_v4() == node.ipv4 {
        geneve::decap(ctx, &tunneled)?;
        if let Some(flags) = lb::reverse_to_client(ctx, h, node)?
            && flags & CT_FLAG_NORTH_SOUTH != 0
        {
            // A remote backend's reply to a north-south flow this node SNATed.
            return Ok(nodeport::leave(ctx, h, node)?.with_identity(tunneled.identity));
        }
        // A pod of another node talking to this node: up the node's stack.
        return Ok(Verdict::pass().with_identity(tunneled.identity));
    }
    let ep = lookup::endpoint(h.dst_v4()).ok_or(Reason::UnknownEndpoint)?;
    geneve::decap(ctx, &tunneled)?;
    // DSR flows are the only ones a node tunnels with the world's identity (the client's address
    // is kept): pod-to-pod traffic skips the DSR conntrack lookup.
    if lb::reverse_to_client(ctx, h, node)?.is_none()
        && (frontend.is_some() || tunneled.identity == identity::WORLD)
    {
        dsr::record(h, frontend)?;
    }
    Ok(skb::deliver_to(ctx, &ep)?.with_identity(tunneled.identity))
}

#[inline(always)]
fn egress(ctx: &TcContext, h: &Headers, node: &NodeConfig) -> StageResult {
    let dst = lookup::ipcache(h.dst_v4());
    if let Some(remote) = dst.filter(|e| e.has_tunnel()) {
        let src_identity = source_identity(h, node);
        geneve::encap(ctx, node, remote.tunnel_endpoint, src_identity)?;
        return Ok(skb::redirect_neigh(node.external_ifindex).with_identity(src_identity));
    }
    let Some(pod) = lookup::endpoint(h.src_v4()) else {
        return Ok(Verdict::pass());
    };
    if node.masquerade() {
        nat::snat(ctx, h, node)?;
    }
    Ok(Verdict::pass().with_identity(pod.identity))
}

#[inline(always)]
fn source_identity(h: &Headers, node: &NodeConfig) -> u32 {
    if h.src_v4() == node.ipv4 {
        identity::HOST
    } else {
        lookup::endpoint(h.src_v4()).map_or(identity::WORLD, |ep| ep.identity)
    }
}
