//! Service load balancing in tc (east-west, ClusterIP). A pod's packet to a frontend gets the
//! backend its flow already has (conntrack) or, for a new flow, a fresh selection — the
//! client's affinity, else Maglev or random over the active backends, never a terminating one
//! — and its destination is rewritten (DNAT). A reply is rewritten back (reverse NAT) before it
//! reaches the client, so the client only ever sees the frontend.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_get_prandom_u32, programs::TcContext};
use weft_common::{
    CtKey4, Lb4AffinityEntry, Lb4AffinityKey, Lb4Backend, Lb4Key, Lb4Service, Reason,
    ct::{CT_KIND_REPLY, CT_KIND_SERVICE, CtDirection, TCP_FLAG_ACK, TCP_FLAG_SYN, ct_update},
    lb::{
        BACKEND_FLAG_TERMINATING, LB_ALG_MAGLEV, LB_SCOPE_EXTERNAL, SVC_FLAG_AFFINITY, flow_hash,
    },
    net::{IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    ct,
    maps::{CT4, LB4_AFFINITY, LB4_BACKENDS, LB4_MAGLEV, LB4_REVNAT, LB4_SERVICES},
    parse::Headers,
    skb::{self, IP_DST_OFF, IP_SRC_OFF},
};

/// A service a packet or a socket is addressed to.
pub struct Frontend {
    key: Lb4Key,
    pub svc: Lb4Service,
}

/// Only TCP and UDP are balanced; a later fragment has no ports to look up.
#[inline(always)]
fn balanced(h: &Headers) -> bool {
    !h.later_fragment && (h.l4_proto == IPPROTO_TCP || h.l4_proto == IPPROTO_UDP)
}

/// The service whose frontend the packet is addressed to, if any.
#[inline(always)]
pub fn frontend(h: &Headers) -> Option<Frontend> {
    if !balanced(h) {
        return None;
    }
    frontend_of(h.dst_v4(), h.dst_port, h.l4_proto)
}

/// The service whose frontend is (`address`, `port` in host order, `proto`), if any.
#[inline(always)]
pub fn frontend_of(address: [u8; 4], port: u16, proto: u8) -> Option<Frontend> {
    let key = Lb4Key {
        address,
        port,
        proto,
        scope: LB_SCOPE_EXTERNAL,
        slot: 0,
        _pad: [0; 2],
    };
    // SAFETY: copied out at once.
    let svc = unsafe { LB4_SERVICES.get(key) }.copied()?;
    Some(Frontend { key, svc })
}

/// Sends the packet to its flow's backend: `h` then describes the translated packet.
#[inline(always)]
pub fn to_backend(ctx: &TcContext, h: &mut Headers, fe: &Frontend) -> Result<(), Reason> {
    let now = ct::now_s();
    let service = ct::service_key(h);
    let backend = match established_backend(&service, h, now) {
        Some(backend) => backend,
        None => open_flow(&service, h, fe, now)?,
    };
    dnat(ctx, h, &backend)
}

/// The backend an existing flow keeps, with the flow's state advanced. `None` for a new flow,
/// a flow whose ports are reused after it closed, or a flow whose backend is gone (it is given
/// a new one: a UDP flow survives its server being replaced).
#[inline(always)]
fn established_backend(service: &CtKey4, h: &Headers, now: u32) -> Option<Lb4Backend> {
    let entry = ct::live(service, now)?;
    let up = ct::next_state(entry, h, CtDirection::Forward);
    if up.reopens {
        return None;
    }
    // SAFETY: a live map value.
    let backend = backend(unsafe { (*entry).backend_id })?;
    ct::apply(entry, &up, now, CtDirection::Forward);
    if let Some(reply) = ct::live(&reply_key_of(service, &backend), now) {
        ct::apply(reply, &up, now, CtDirection::Forward);
    }
    Some(backend)
}

/// Selects a backend for a new flow and records the flow.
#[inline(always)]
fn open_flow(service: &CtKey4, h: &Headers, fe: &Frontend, now: u32) -> Result<Lb4Backend, Reason> {
    if fe.svc.count == 0 {
        return Err(Reason::NoServiceBackend);
    }
    let id = select(service, fe, now)?;
    let backend = backend(id).ok_or(Reason::BackendMissing)?;
    let up = ct_update(
        0,
        h.l4_proto == IPPROTO_TCP,
        h.tcp_flags,
        CtDirection::Forward,
    );
    let reply = reply_key_of(service, &backend);
    ct::open(service, &reply, id, fe.svc.rev_nat_index, &up, now)?;
    Ok(backend)
}

/// The reply entry's key of the flow `service` once translated to `backend`.
#[inline(always)]
fn reply_key_of(service: &CtKey4, backend: &Lb4Backend) -> CtKey4 {
    CtKey4 {
        saddr: backend.address,
        daddr: service.saddr,
        sport: backend.port,
        dport: service.sport,
        proto: service.proto,
        kind: CT_KIND_REPLY,
        _pad: [0; 2],
    }
}

#[inline(always)]
pub fn backend(id: u32) -> Option<Lb4Backend> {
    // SAFETY: copied out at once.
    unsafe { LB4_BACKENDS.get(id) }.copied()
}

/// The backend id for a new flow: the client's affinity when it has a live one to a backend
/// that is not terminating, else Maglev or random; affinity then remembers the choice.
#[inline(always)]
fn select(service: &CtKey4, fe: &Frontend, now: u32) -> Result<u32, Reason> {
    let affinity = fe.svc.flags & SVC_FLAG_AFFINITY != 0;
    let key = Lb4AffinityKey {
        client: service.saddr,
        rev_nat_index: fe.svc.rev_nat_index,
        _pad: 0,
    };
    if affinity && let Some(id) = affine_backend(&key, fe.svc.affinity_timeout_s, now) {
        remember(&key, id, now);
        return Ok(id);
    }
    let id = pick_backend(fe, || {
        flow_hash(
            service.saddr,
            service.daddr,
            service.sport,
            service.dport,
            service.proto,
        )
    })?;
    if affinity {
        remember(&key, id, now);
    }
    Ok(id)
}

#[inline(always)]
fn affine_backend(key: &Lb4AffinityKey, timeout_s: u32, now: u32) -> Option<u32> {
    // SAFETY: copied out at once.
    let entry = unsafe { LB4_AFFINITY.get(key) }.copied()?;
    if now.wrapping_sub(entry.last_used_s) >= timeout_s {
        return None;
    }
    let b = backend(entry.backend_id)?;
    (b.flags & BACKEND_FLAG_TERMINATING == 0).then_some(entry.backend_id)
}

#[inline(always)]
fn remember(key: &Lb4AffinityKey, backend_id: u32, now: u32) {
    let entry = Lb4AffinityEntry {
        backend_id,
        last_used_s: now,
    };
    // Losing the affinity record only costs the next flow its stickiness.
    let _ = LB4_AFFINITY.insert(key, entry, BPF_ANY as u64);
}

/// A backend id of the service by its algorithm, affinity aside: Maglev's slot for
/// `maglev_hash` (asked only for a Maglev service), else a random active backend.
#[inline(always)]
pub fn pick_backend(fe: &Frontend, maglev_hash: impl FnOnce() -> u32) -> Result<u32, Reason> {
    if fe.svc.algorithm == LB_ALG_MAGLEV {
        maglev_backend(maglev_hash(), &fe.svc)
    } else {
        random_backend(fe)
    }
}

#[inline(always)]
fn maglev_backend(hash: u32, svc: &Lb4Service) -> Result<u32, Reason> {
    if svc.maglev_size == 0 {
        return Err(Reason::BackendMissing);
    }
    let slot = hash % svc.maglev_size;
    let table = svc.rev_nat_index as u32;
    // SAFETY: the id is copied out at once.
    unsafe { LB4_MAGLEV.get_value(&table, &slot) }
        .copied()
        .ok_or(Reason::BackendMissing)
}

#[inline(always)]
fn random_backend(fe: &Frontend) -> Result<u32, Reason> {
    // SAFETY: helper without arguments.
    let r = unsafe { bpf_get_prandom_u32() };
    let slot = (r % fe.svc.count as u32) as u16 + 1;
    let key = Lb4Key { slot, ..fe.key };
    // SAFETY: copied out at once.
    unsafe { LB4_SERVICES.get(key) }
        .map(|s| s.backend_id)
        .ok_or(Reason::BackendMissing)
}

#[inline(always)]
fn dnat(ctx: &TcContext, h: &mut Headers, backend: &Lb4Backend) -> Result<(), Reason> {
    let l4_off = h.l4_off as usize;
    skb::rewrite_addr(
        ctx,
        h.l4_proto,
        l4_off,
        IP_DST_OFF,
        h.dst_v4(),
        backend.address,
    )?;
    skb::rewrite_port(
        ctx,
        h.l4_proto,
        l4_off,
        l4_off + 2,
        h.dst_port,
        backend.port,
    )?;
    h.set_dst_v4(backend.address);
    h.dst_port = backend.port;
    Ok(())
}

/// A pod opening a TCP connection straight to an address and port that were a backend of one
/// of its load-balanced flows, from the same port: that flow is over (the backend cannot hold
/// two connections with one tuple), and its reply entry must not turn the new connection's
/// replies into the frontend's.
#[inline(always)]
pub fn forget_reply_of_direct_syn(h: &Headers) {
    let bare_syn = h.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
    if h.l4_proto != IPPROTO_TCP || !bare_syn || h.later_fragment {
        return;
    }
    let reply = CtKey4 {
        saddr: h.dst_v4(),
        daddr: h.src_v4(),
        sport: h.dst_port,
        dport: h.src_port,
        proto: h.l4_proto,
        kind: CT_KIND_REPLY,
        _pad: [0; 2],
    };
    // An absent entry is the common case: nothing to do.
    let _ = CT4.remove(reply);
}

/// A reply of a load-balanced flow on its way to the client: its source becomes the frontend
/// again. Returns whether the packet was one.
#[inline(always)]
pub fn reverse_to_client(ctx: &TcContext, h: &mut Headers) -> Result<bool, Reason> {
    if !balanced(h) {
        return Ok(false);
    }
    let now = ct::now_s();
    let Some(reply) = ct::live(&ct::reply_key(h), now) else {
        return Ok(false);
    };
    // SAFETY: a live map value.
    let index = unsafe { (*reply).rev_nat_index };
    let Some(fe) = LB4_REVNAT.get(index as u32).copied() else {
        return Ok(false);
    };
    let up = ct::next_state(reply, h, CtDirection::Reply);
    ct::apply(reply, &up, now, CtDirection::Reply);
    let service = CtKey4 {
        saddr: h.dst_v4(),
        daddr: fe.address,
        sport: h.dst_port,
        dport: fe.port,
        proto: h.l4_proto,
        kind: CT_KIND_SERVICE,
        _pad: [0; 2],
    };
    if let Some(entry) = ct::live(&service, now) {
        ct::apply(entry, &up, now, CtDirection::Reply);
    }
    let l4_off = h.l4_off as usize;
    skb::rewrite_addr(ctx, h.l4_proto, l4_off, IP_SRC_OFF, h.src_v4(), fe.address)?;
    skb::rewrite_port(ctx, h.l4_proto, l4_off, l4_off, h.src_port, fe.port)?;
    h.set_src_v4(fe.address);
    h.src_port = fe.port;
    Ok(true)
}
