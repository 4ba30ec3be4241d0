//! North-south services in tc (`from_netdev`): a packet from outside the cluster to a NodePort,
//! externalIPs or LoadBalancer frontend of this node goes to its flow's backend — the same
//! conntrack and selection as east-west (`lb::flow`; Maglev hashes the client's tuple, so every
//! node picks the same backend) — translated by the frontend's mode:
//! - SNAT (no `SVC_FLAG_DSR`): destination the backend, source this node's address and a port
//!   from the SNAT range (`nat`'s allocation and entries, so the reply is found); the reply
//!   comes back to this node (from a local pod through `from_container`, from a remote one
//!   through Geneve) and is translated back by `lb::reverse_to_client`.
//! - DSR: destination only; to a remote backend the packets that open the flow carry the
//!   frontend in a Geneve option (`dsr`), and the backend's node answers the client itself.
//! - `externalTrafficPolicy: Local` keeps the client's address in either mode: the external
//!   scope holds only local backends, whose replies pass this node anyway.
//!
//! Local backends get the packet by `bpf_redirect_peer`, remote ones through Geneve. Every
//! north-south reply leaves through the external device by `bpf_redirect_neigh` ([`leave`]):
//! the node's stack would need forwarding enabled and could masquerade or filter it.
//!
//! [`plan`] reads headers and maps only and is the one decision for both hooks: `xdp_entry`
//! (`xdp`) and `from_netdev` ask it the same way, each saying which deliveries it can carry
//! out; a flow the asking hook cannot carry (XDP: a local backend, or a next hop it cannot
//! resolve) is left untouched for tc, which then finds conntrack as it was. [`forward`] writes
//! a plan into the tc packet, `xdp::forward` into the XDP frame.

use aya_ebpf::programs::TcContext;
use weft_common::{
    EndpointInfo, Lb4Backend, NodeConfig, Reason,
    ct::{CT_FLAG_NORTH_SOUTH, CT_FLAG_ONE_WAY, TCP_FLAG_ACK, TCP_FLAG_SYN},
    ipcache::identity,
    lb::{SVC_FLAG_DSR, SVC_FLAG_EXT_LOCAL},
    net::IPPROTO_TCP,
};

use crate::{
    geneve,
    lb::{self, Admit, Opening},
    lookup, nat,
    parse::Headers,
    skb,
    verdict::{StageResult, Verdict},
};

/// Where a translated packet goes.
#[derive(Clone, Copy)]
pub enum Delivery {
    /// A pod of this node.
    Local(EndpointInfo),
    /// A pod behind the node at this underlay address (Geneve).
    Tunnel([u8; 4]),
}

/// What is done to a packet to a north-south frontend.
pub struct Plan {
    pub backend: Lb4Backend,
    /// SNAT mode: the source becomes this node's address and this port; 0 (never in the SNAT
    /// range) for none. Not an `Option`: the compiler leaves the payload of a `None` undefined and
    /// may then spill part of whatever register held it, which the verifier refuses.
    pub snat_port: u16,
    pub delivery: Delivery,
    /// DSR to a remote backend, on a packet that opens the flow: the frontend the option
    /// carries (address, port in host order).
    pub dsr_option: Option<([u8; 4], u16)>,
    /// The identity the tunnel carries: the world when the client's address is kept, this
    /// node when the source is its own.
    pub identity: u32,
}

/// What a hook does with a packet from outside the cluster.
pub enum Decision<N> {
    /// Not addressed to a north-south frontend.
    NotService,
    /// Addressed to one, but its flow's backend is not one this hook reaches: left to the next
    /// hook with nothing recorded.
    Handoff,
    /// Forwarded by this hook: the plan, and the next hop the hook found for it.
    Forward(Plan, N),
}

/// The decision for a packet from outside the cluster. `next_hop` says whether the asking hook
/// carries a delivery out (and how: `N`); when it does, the flow is opened or advanced
/// (conntrack, SNAT port) and the plan returned.
#[inline(always)]
pub fn plan<N>(
    h: &Headers,
    node: &NodeConfig,
    next_hop: impl FnOnce(&Delivery) -> Option<N>,
) -> Result<Decision<N>, Reason> {
    let Some(fe) = lb::north_south_frontend(h) else {
        return Ok(Decision::NotService);
    };
    let dsr = fe.svc.flags & SVC_FLAG_DSR != 0;
    let ext_local = fe.svc.flags & SVC_FLAG_EXT_LOCAL != 0;
    let taken = lb::flow(h, &fe, |backend| {
        let delivery = delivery(backend)?;
        let Some(hop) = next_hop(&delivery) else {
            return Ok(None);
        };
        let local = matches!(delivery, Delivery::Local(_));
        let with_reply = !dsr || local;
        let one_way = if with_reply { 0 } else { CT_FLAG_ONE_WAY };
        Ok(Some(Admit {
            opening: Opening {
                flags: CT_FLAG_NORTH_SOUTH | one_way,
                with_reply,
            },
            route: (delivery, hop),
        }))
    })
    .map_err(|reason| match reason {
        Reason::NoServiceBackend if ext_local => Reason::NoLocalBackend,
        other => other,
    })?;
    let Some((flow, (delivery, hop))) = taken else {
        return Ok(Decision::Handoff);
    };
    let remote = matches!(delivery, Delivery::Tunnel(_));
    // A local backend keeps the client address (as in Cilium): its reply passes this node
    // anyway, so nothing forces it back through here. The volatile read keeps the compiler
    // from folding the test on `delivery`'s niche (a pointer) into flag arithmetic, which the
    // verifier refuses.
    // SAFETY: a read of a local.
    let remote = unsafe { core::ptr::read_volatile(&remote) };
    let snat = !dsr && !ext_local && remote;
    let snat_port = if snat {
        nat::service_snat_port(h, &flow.backend, node)?
    } else {
        0
    };
    let dsr_option = if dsr && remote && opens(h, flow.opened) {
        Some((h.dst_v4(), h.dst_port))
    } else {
        None
    };
    let plan = Plan {
        backend: flow.backend,
        snat_port,
        delivery,
        dsr_option,
        identity: if snat {
            identity::HOST
        } else {
            identity::WORLD
        },
    };
    Ok(Decision::Forward(plan, hop))
}

/// Whether the packet opens its flow for the backend's node: a TCP SYN (every one: a lost SYN
/// is retransmitted), or the first packet of a UDP flow here. Later packets go without the
/// option: a full-size packet plus the option would exceed the underlay MTU.
#[inline(always)]
fn opens(h: &Headers, opened: bool) -> bool {
    if h.l4_proto == IPPROTO_TCP {
        h.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN
    } else {
        opened
    }
}

/// A pod of this node, or a pod behind another node; anything else (a host-network backend)
/// this path cannot reach.
#[inline(always)]
fn delivery(backend: &Lb4Backend) -> Result<Delivery, Reason> {
    if let Some(ep) = lookup::endpoint(backend.address) {
        return Ok(Delivery::Local(ep));
    }
    match lookup::ipcache(backend.address) {
        Some(entry) if entry.has_tunnel() => Ok(Delivery::Tunnel(entry.tunnel_endpoint)),
        _ => Err(Reason::BackendUnreachable),
    }
}

/// Writes `plan` into the packet and sends it on; `h` then describes the translated packet
/// (the inner one when tunneled).
#[inline(always)]
pub fn forward(ctx: &TcContext, h: &mut Headers, node: &NodeConfig, plan: &Plan) -> StageResult {
    lb::dnat(ctx, h, &plan.backend)?;
    if plan.snat_port != 0 {
        skb::set_source(ctx, h, node.ipv4, plan.snat_port)?;
    }
    skb::decrement_ttl(ctx, h.ttl)?;
    let verdict = match plan.delivery {
        Delivery::Local(ep) => skb::deliver_to(ctx, &ep)?,
        Delivery::Tunnel(endpoint) => {
            match plan.dsr_option {
                Some(frontend) => geneve::encap_dsr(ctx, node, endpoint, plan.identity, frontend)?,
                None => geneve::encap(ctx, node, endpoint, plan.identity)?,
            }
            skb::redirect_neigh(node.external_ifindex)
        }
    };
    Ok(verdict.with_identity(identity::WORLD))
}

/// A translated reply on its way to a client outside the cluster: out of the external device,
/// routed as the node routes (TTL decremented, next hop from the neighbour table).
#[inline(always)]
pub fn leave(ctx: &TcContext, h: &Headers, node: &NodeConfig) -> Result<Verdict, Reason> {
    skb::decrement_ttl(ctx, h.ttl)?;
    Ok(skb::redirect_neigh(node.external_ifindex))
}
