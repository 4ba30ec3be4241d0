//! DSR on the backend's node. A packet another node balanced to a local pod arrives over Geneve
//! with the frontend in the DSR option (on the packets that open the flow): the flow is
//! recorded in conntrack as `CT_KIND_DSR`, keyed by the tuple the backend replies with, holding
//! the frontend. The pod's reply finds it in `from_container`, takes the frontend as source and
//! leaves through the external device straight to the client: never back through the tunnel,
//! never masqueraded.
//!
//! The option is honoured only from another node (`netdev` drops Geneve from anyone else) and
//! only for a frontend this node serves with DSR itself ([`honoured`]): it makes the node send
//! packets from the frontend's address, which must never be an address of someone's choosing.

use aya_ebpf::programs::TcContext;
use weft_common::{
    CtKey4, NodeConfig, Reason,
    ct::{CT_FLAG_NORTH_SOUTH, CT_KIND_DSR, CtDirection, ct_update},
    lb::{SVC_FLAG_DSR, SVC_FLAG_NODEPORT},
    net::IPPROTO_TCP,
};

use crate::{ct, lb, nodeport, parse::Headers, skb, verdict::Verdict};

/// The DSR entry's key of a forward packet (client -> backend), as the reply will carry it.
#[inline(always)]
fn key_of_forward(h: &Headers) -> CtKey4 {
    CtKey4 {
        saddr: h.dst_v4(),
        daddr: h.src_v4(),
        sport: h.dst_port,
        dport: h.src_port,
        proto: h.l4_proto,
        kind: CT_KIND_DSR,
        _pad: [0; 2],
    }
}

/// The frontend a DSR option names (address, port in host order), when this node has it as a
/// north-south frontend with DSR for the inner packet's protocol, as every node has the same
/// services. A NodePort is written on each node's own address only: the sender's NodePort
/// stands for this node's at the same port. Anything else is refused: a node with the service
/// in another mode, or without it, must not answer from that address.
#[inline(always)]
pub fn honoured(
    option: ([u8; 4], u16),
    inner: &Headers,
    sender: [u8; 4],
    node: &NodeConfig,
) -> Result<([u8; 4], u16), Reason> {
    let (address, port) = option;
    let dsr_frontend = |address, kind| {
        lb::north_south_frontend_of(address, port, inner.l4_proto)
            .is_some_and(|fe| fe.svc.flags & (SVC_FLAG_DSR | kind) == SVC_FLAG_DSR | kind)
    };
    if dsr_frontend(address, 0) || (address == sender && dsr_frontend(node.ipv4, SVC_FLAG_NODEPORT))
    {
        Ok(option)
    } else {
        Err(Reason::DsrUnknownFrontend)
    }
}

/// A packet decapsulated for a local pod, `frontend` its DSR option once [`honoured`]: records
/// a new flow (or a flow reusing a closed one's ports), or advances the state of a recorded
/// one. Reads headers and maps only.
#[inline(always)]
pub fn record(h: &Headers, frontend: Option<([u8; 4], u16)>) -> Result<(), Reason> {
    if !lb::balanced(h) {
        return Ok(());
    }
    let now = ct::now_s();
    let key = key_of_forward(h);
    if let Some(entry) = ct::live(&key, now) {
        let up = ct::next_state(entry, h, CtDirection::Forward);
        if !up.reopens {
            ct::apply(entry, &up, now, CtDirection::Forward);
            return Ok(());
        }
    }
    let Some(frontend) = frontend else {
        return Ok(());
    };
    let mut up = ct_update(
        0,
        h.l4_proto == IPPROTO_TCP,
        h.tcp_flags,
        CtDirection::Forward,
    );
    up.flags |= CT_FLAG_NORTH_SOUTH;
    ct::put(&key, &ct::entry(0, 0, frontend, &up, now))
}

/// A local pod's packet to outside the cluster: when it answers a DSR flow, its source becomes
/// the frontend and it leaves through the external device.
#[inline(always)]
pub fn reply(
    ctx: &TcContext,
    h: &mut Headers,
    node: &NodeConfig,
) -> Result<Option<Verdict>, Reason> {
    if !lb::balanced(h) {
        return Ok(None);
    }
    let now = ct::now_s();
    let key = CtKey4 {
        kind: CT_KIND_DSR,
        ..ct::reply_key(h)
    };
    let Some(entry) = ct::live(&key, now) else {
        return Ok(None);
    };
    let up = ct::next_state(entry, h, CtDirection::Reply);
    ct::apply(entry, &up, now, CtDirection::Reply);
    // SAFETY: a live map value.
    let (address, port) = unsafe { ((*entry).nat_address, (*entry).nat_port) };
    skb::set_source(ctx, h, address, port)?;
    nodeport::leave(ctx, h, node).map(Some)
}
