//! Service load balancing in tc (east-west, ClusterIP). A pod's packet to a frontend gets the
//! backend its flow already has (conntrack) or, for a new flow, a fresh selection — the
//! client's affinity, else Maglev or random over the active backends, never a terminating one
//! — and its destination is rewritten (DNAT). A reply is rewritten back (reverse NAT) before it
//! reaches the client, so the client only ever sees the frontend.
//!
//! Lookup and selection ([`frontend`], [`flow`]) read parsed headers and maps only, so the
//! north-south path (`nodeport`) and later XDP share them; the rewrites take the tc context.
//!
//! Hairpin: a pod given itself as backend gets its packets from [`LB_LOOPBACK_ADDR`] (a pod
//! drops packets from its own address), and its reply goes back to its own address.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_get_prandom_u32, programs::TcContext};
use weft_common::{
    CtKey4, Lb4AffinityEntry, Lb4AffinityKey, Lb4Backend, Lb4Key, Lb4Service, NodeConfig, Reason,
    ct::{
        CT_FLAG_LOOPBACK, CT_KIND_REPLY, CT_KIND_SERVICE, CtDirection, TCP_FLAG_ACK, TCP_FLAG_SYN,
        ct_update,
    },
    lb::{
        BACKEND_FLAG_TERMINATING, LB_ALG_MAGLEV, LB_LOOPBACK_ADDR, LB_SCOPE_EXTERNAL,
        LB_SCOPE_INTERNAL, SVC_FLAG_AFFINITY, SVC_FLAG_TWO_SCOPES, flow_hash, is_north_south,
    },
    net::{IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    ct,
    maps::{CT4, LB4_AFFINITY, LB4_BACKENDS, LB4_MAGLEV, LB4_REVNAT, LB4_SERVICES},
    nat,
    parse::Headers,
    skb::{self, IP_SRC_OFF},
};

/// A service a packet or a socket is addressed to.
pub struct Frontend {
    key: Lb4Key,
    pub svc: Lb4Service,
}

/// Only TCP and UDP are balanced; a later fragment has no ports to look up.
#[inline(always)]
pub fn balanced(h: &Headers) -> bool {
    !h.later_fragment && (h.l4_proto == IPPROTO_TCP || h.l4_proto == IPPROTO_UDP)
}

/// The service whose frontend the packet is addressed to, if any, as traffic from inside the
/// cluster sees it (pods and the node).
#[inline(always)]
pub fn frontend(h: &Headers) -> Option<Frontend> {
    if !balanced(h) {
        return None;
    }
    frontend_of(h.dst_v4(), h.dst_port, h.l4_proto)
}

/// The service whose frontend is (`address`, `port` in host order, `proto`), if any, as
/// traffic from inside the cluster sees it: a frontend with two scopes gives its internal
/// entry (when the model wrote one).
#[inline(always)]
pub fn frontend_of(address: [u8; 4], port: u16, proto: u8) -> Option<Frontend> {
    let fe = lookup_frontend(address, port, proto, LB_SCOPE_EXTERNAL)?;
    if fe.svc.flags & SVC_FLAG_TWO_SCOPES == 0 {
        return Some(fe);
    }
    lookup_frontend(address, port, proto, LB_SCOPE_INTERNAL).or(Some(fe))
}

/// The north-south service (NodePort, externalIPs, LoadBalancer) a packet from outside the
/// cluster is addressed to: always the external scope.
#[inline(always)]
pub fn north_south_frontend(h: &Headers) -> Option<Frontend> {
    if !balanced(h) {
        return None;
    }
    north_south_frontend_of(h.dst_v4(), h.dst_port, h.l4_proto)
}

/// The north-south service whose frontend is (`address`, `port` in host order, `proto`), if
/// any: always the external scope.
#[inline(always)]
pub fn north_south_frontend_of(address: [u8; 4], port: u16, proto: u8) -> Option<Frontend> {
    lookup_frontend(address, port, proto, LB_SCOPE_EXTERNAL)
        .filter(|fe| is_north_south(fe.svc.flags))
}

#[inline(always)]
fn lookup_frontend(address: [u8; 4], port: u16, proto: u8, scope: u8) -> Option<Frontend> {
    let key = Lb4Key {
        address,
        port,
        proto,
        scope,
        slot: 0,
        _pad: [0; 2],
    };
    // SAFETY: copied out at once.
    let svc = unsafe { LB4_SERVICES.get(key) }.copied()?;
    Some(Frontend { key, svc })
}

/// A flow's backend, as conntrack has it or as a new selection gave it.
pub struct Flow {
    pub backend: Lb4Backend,
    /// `CT_FLAG_*` of the flow's entry.
    pub flags: u16,
    /// The packet opened the flow (a new selection was made).
    pub opened: bool,
}

/// What a new flow records beside its backend, decided once the backend is known.
pub struct Opening {
    /// `CT_FLAG_*` the flow keeps (north-south, loopback).
    pub flags: u16,
    /// Whether replies pass this node (a reply entry is written): not for a DSR flow to a
    /// remote backend.
    pub with_reply: bool,
}

/// The asking hook takes a flow to its backend: what a new flow records, and what the hook
/// learned of the way to the backend (`route`) and carries on with.
pub struct Admit<R> {
    pub opening: Opening,
    pub route: R,
}

/// The backend of the packet's flow to `fe`: conntrack's for an existing flow, else a new
/// selection. `admit` sees the backend before anything is recorded: an error refuses it, `None`
/// leaves the flow to another hook (nothing recorded, nothing counted: that hook finds the
/// flow as it was, and a selection made here is not kept unless affinity remembered it).
/// Otherwise the flow is advanced or recorded with what `admit` says of it. Reads headers and
/// maps only.
#[inline(always)]
pub fn flow<R>(
    h: &Headers,
    fe: &Frontend,
    admit: impl FnOnce(&Lb4Backend) -> Result<Option<Admit<R>>, Reason>,
) -> Result<Option<(Flow, R)>, Reason> {
    let now = ct::now_s();
    let service = ct::service_key(h);
    match established(&service, h, now) {
        Some(existing) => {
            let Some(admitted) = admit(&existing.flow.backend)? else {
                return Ok(None);
            };
            advance(&service, &existing, now);
            Ok(Some((existing.flow, admitted.route)))
        }
        None => open_flow(&service, h, fe, now, admit),
    }
}

/// Sends a pod's packet to its flow's backend: `h` then describes the translated packet.
#[inline(always)]
pub fn to_backend(ctx: &TcContext, h: &mut Headers, fe: &Frontend) -> Result<(), Reason> {
    let client = h.src_v4();
    let taken = flow(h, fe, |backend| {
        let flags = if backend.address == client {
            CT_FLAG_LOOPBACK
        } else {
            0
        };
        Ok(Some(Admit {
            opening: Opening {
                flags,
                with_reply: true,
            },
            route: (),
        }))
    })?;
    let Some((flow, ())) = taken else {
        return Err(Reason::BackendMissing);
    };
    dnat(ctx, h, &flow.backend)?;
    if flow.flags & CT_FLAG_LOOPBACK != 0 {
        let l4_off = h.l4_off as usize;
        skb::rewrite_addr(
            ctx,
            h.l4_proto,
            l4_off,
            IP_SRC_OFF,
            client,
            LB_LOOPBACK_ADDR,
        )?;
        h.set_src_v4(LB_LOOPBACK_ADDR);
    }
    Ok(())
}

/// An existing flow as its service entry holds it, and the state the packet moves it to.
struct Existing {
    entry: *mut weft_common::CtEntry4,
    up: weft_common::ct::CtUpdate,
    flow: Flow,
}

/// The flow an existing service entry holds, nothing changed yet. `None` for a new flow, a
/// flow whose ports are reused after it closed, or a flow whose backend is gone (it is given a
/// new one: a UDP flow survives its server being replaced).
#[inline(always)]
fn established(service: &CtKey4, h: &Headers, now: u32) -> Option<Existing> {
    let entry = ct::live(service, now)?;
    let up = ct::next_state(entry, h, CtDirection::Forward);
    if up.reopens {
        return None;
    }
    // SAFETY: a live map value.
    let (id, flags) = unsafe { ((*entry).backend_id, (*entry).flags) };
    let backend = backend(id)?;
    Some(Existing {
        entry,
        up,
        flow: Flow {
            backend,
            flags,
            opened: false,
        },
    })
}

/// Records the packet in an existing flow's entries.
#[inline(always)]
fn advance(service: &CtKey4, existing: &Existing, now: u32) {
    let flow = &existing.flow;
    ct::apply(existing.entry, &existing.up, now, CtDirection::Forward);
    if let Some(reply) = ct::live(&reply_key_of(service, &flow.backend, flow.flags), now) {
        ct::apply(reply, &existing.up, now, CtDirection::Forward);
    }
}

/// Selects a backend for a new flow and records the flow, unless `admit` refuses it or leaves
/// it to another hook.
#[inline(always)]
fn open_flow<R>(
    service: &CtKey4,
    h: &Headers,
    fe: &Frontend,
    now: u32,
    admit: impl FnOnce(&Lb4Backend) -> Result<Option<Admit<R>>, Reason>,
) -> Result<Option<(Flow, R)>, Reason> {
    if fe.svc.count == 0 {
        return Err(Reason::NoServiceBackend);
    }
    let id = select(service, fe, now);
    let backend = backend(id).ok_or(Reason::BackendMissing)?;
    let Some(Admit { opening, route }) = admit(&backend)? else {
        return Ok(None);
    };
    let mut up = ct_update(
        0,
        h.l4_proto == IPPROTO_TCP,
        h.tcp_flags,
        CtDirection::Forward,
    );
    up.flags |= opening.flags;
    let frontend = (service.daddr, service.dport);
    let entry = ct::entry(id, fe.svc.rev_nat_index, frontend, &up, now);
    if opening.with_reply {
        ct::put(&reply_key_of(service, &backend, up.flags), &entry)?;
    }
    ct::put(service, &entry)?;
    let flow = Flow {
        backend,
        flags: up.flags,
        opened: true,
    };
    Ok(Some((flow, route)))
}

/// The reply entry's key of the flow `service` once translated to `backend`: the backend
/// answers the client, or the loopback address when the client is the backend.
#[inline(always)]
fn reply_key_of(service: &CtKey4, backend: &Lb4Backend, flags: u16) -> CtKey4 {
    let client = if flags & CT_FLAG_LOOPBACK != 0 {
        LB_LOOPBACK_ADDR
    } else {
        service.saddr
    };
    CtKey4 {
        saddr: backend.address,
        daddr: client,
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

/// The backend id for a new flow (0: none): the client's affinity when it has a live one to a
/// backend that is not terminating, else Maglev or random; affinity then remembers the choice.
/// Ids travel as plain numbers (backend ids are never 0) rather than `Result`s: merged error
/// paths of an inlined `Result` can leave the verifier a register it considers unread.
#[inline(always)]
fn select(service: &CtKey4, fe: &Frontend, now: u32) -> u32 {
    let affinity = fe.svc.flags & SVC_FLAG_AFFINITY != 0;
    let key = Lb4AffinityKey {
        client: service.saddr,
        rev_nat_index: fe.svc.rev_nat_index,
        _pad: 0,
    };
    if affinity && let Some(id) = affine_backend(&key, fe.svc.affinity_timeout_s, now) {
        remember(&key, id, now);
        return id;
    }
    let id = pick_id(fe, || {
        flow_hash(
            service.saddr,
            service.daddr,
            service.sport,
            service.dport,
            service.proto,
        )
    });
    if affinity && id != 0 {
        remember(&key, id, now);
    }
    id
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
    match pick_id(fe, maglev_hash) {
        0 => Err(Reason::BackendMissing),
        id => Ok(id),
    }
}

/// [`pick_backend`] with 0 for none.
#[inline(always)]
fn pick_id(fe: &Frontend, maglev_hash: impl FnOnce() -> u32) -> u32 {
    if fe.svc.algorithm == LB_ALG_MAGLEV {
        maglev_backend(maglev_hash(), &fe.svc)
    } else {
        random_backend(fe)
    }
}

#[inline(always)]
fn maglev_backend(hash: u32, svc: &Lb4Service) -> u32 {
    if svc.maglev_size == 0 {
        return 0;
    }
    let slot = hash % svc.maglev_size;
    let table = svc.rev_nat_index as u32;
    // SAFETY: the id is copied out at once.
    unsafe { LB4_MAGLEV.get_value(&table, &slot) }.map_or(0, |id| *id)
}

#[inline(always)]
fn random_backend(fe: &Frontend) -> u32 {
    // SAFETY: helper without arguments.
    let r = unsafe { bpf_get_prandom_u32() };
    let slot = (r % fe.svc.count as u32) as u16 + 1;
    let key = Lb4Key { slot, ..fe.key };
    // SAFETY: copied out at once.
    unsafe { LB4_SERVICES.get(key) }.map_or(0, |s| s.backend_id)
}

#[inline(always)]
pub fn dnat(ctx: &TcContext, h: &mut Headers, backend: &Lb4Backend) -> Result<(), Reason> {
    skb::set_destination(ctx, h, backend.address, backend.port)
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
/// again, its destination the client (after service SNAT, or hairpin). Returns the flow's
/// `CT_FLAG_*` when the packet was one (`CT_FLAG_NORTH_SOUTH`: the reply leaves the cluster).
#[inline(always)]
pub fn reverse_to_client(
    ctx: &TcContext,
    h: &mut Headers,
    node: &NodeConfig,
) -> Result<Option<u16>, Reason> {
    if !balanced(h) {
        return Ok(None);
    }
    let Some(reply) = reply_of(h, node) else {
        return Ok(None);
    };
    let Some(frontend) = frontend_of_reply(&reply) else {
        return Ok(None);
    };
    let now = ct::now_s();
    let up = ct::next_state(reply.entry, h, CtDirection::Reply);
    ct::apply(reply.entry, &up, now, CtDirection::Reply);
    let service = CtKey4 {
        saddr: reply.client,
        daddr: frontend.0,
        sport: reply.client_port,
        dport: frontend.1,
        proto: h.l4_proto,
        kind: CT_KIND_SERVICE,
        _pad: [0; 2],
    };
    if let Some(entry) = ct::live(&service, now) {
        ct::apply(entry, &up, now, CtDirection::Reply);
    }
    if reply.client != h.dst_v4() || reply.client_port != h.dst_port {
        skb::set_destination(ctx, h, reply.client, reply.client_port)?;
    }
    skb::set_source(ctx, h, frontend.0, frontend.1)?;
    Ok(Some(reply.flags))
}

/// A reply's conntrack entry and the client it goes back to.
struct Reply {
    entry: *mut weft_common::CtEntry4,
    flags: u16,
    client: [u8; 4],
    client_port: u16,
}

/// The reply entry of the packet, looked up by its tuple as the backend sent it, with the
/// destination first translated back when it is this node's address and a service SNAT
/// translation holds it (north-south SNAT mode).
#[inline(always)]
fn reply_of(h: &Headers, node: &NodeConfig) -> Option<Reply> {
    let (client, client_port) = if h.dst_v4() == node.ipv4 {
        nat::service_reverse(h, node).unwrap_or((h.dst_v4(), h.dst_port))
    } else {
        (h.dst_v4(), h.dst_port)
    };
    let key = CtKey4 {
        saddr: h.src_v4(),
        daddr: client,
        sport: h.src_port,
        dport: client_port,
        proto: h.l4_proto,
        kind: CT_KIND_REPLY,
        _pad: [0; 2],
    };
    let entry = ct::live(&key, ct::now_s())?;
    // SAFETY: a live map value.
    let flags = unsafe { (*entry).flags };
    // Hairpin: the client is the backend itself.
    let client = if flags & CT_FLAG_LOOPBACK != 0 {
        h.src_v4()
    } else {
        client
    };
    Some(Reply {
        entry,
        flags,
        client,
        client_port,
    })
}

/// The frontend the reply comes from: as the entry recorded it, else its service's.
#[inline(always)]
fn frontend_of_reply(reply: &Reply) -> Option<([u8; 4], u16)> {
    // SAFETY: a live map value.
    let (address, port, index) = unsafe {
        (
            (*reply.entry).nat_address,
            (*reply.entry).nat_port,
            (*reply.entry).rev_nat_index,
        )
    };
    if address != [0; 4] {
        return Some((address, port));
    }
    LB4_REVNAT.get(index as u32).map(|fe| (fe.address, fe.port))
}
