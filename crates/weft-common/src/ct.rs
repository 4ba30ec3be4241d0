//! Connection tracking for load-balanced flows (`weft_ct4`, LRU). A flow to a service has two
//! entries: the service entry, keyed by the tuple the client sent (client -> frontend), holds
//! the backend the flow was given and the flow's state; the reply entry, keyed by the tuple the
//! backend replies with (backend -> client), holds the service id that turns the reply's source
//! back into the frontend. Every packet of the flow, either way, updates both entries alike
//! (state, expiry, counts), so either one tells the whole flow. An expired entry is a miss for
//! the datapath and garbage for the agent.
//!
//! The state machine is here, shared by the kernel and the agent, and tested without root.

/// Key of `weft_ct4`. Addresses in network order, ports in host order; for ICMP echo the
/// identifier stands for both ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey4 {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// [`CT_KIND_SERVICE`], [`CT_KIND_REPLY`] or [`CT_KIND_DSR`].
    pub kind: u8,
    pub _pad: [u8; 2],
}

pub const CT_KIND_SERVICE: u8 = 0;
pub const CT_KIND_REPLY: u8 = 1;
/// The backend node's record of a DSR flow another node balanced to one of its pods, keyed by
/// the tuple the backend replies with (backend -> client); `nat_address`/`nat_port` hold the
/// frontend the reply leaves from. Written from the Geneve DSR option, refreshed by the flow's
/// packets both ways; it has no service id or backend id (`rev_nat_index`, `backend_id` 0).
pub const CT_KIND_DSR: u8 = 2;

/// Value of `weft_ct4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry4 {
    /// Monotonic seconds after which the entry is dead.
    pub expires_s: u32,
    pub created_s: u32,
    pub backend_id: u32,
    pub rev_nat_index: u16,
    /// `CT_FLAG_*`.
    pub flags: u16,
    /// Packets client -> service.
    pub packets_forward: u32,
    /// Packets backend -> client.
    pub packets_reply: u32,
    /// The frontend the flow's replies take as source (network order), recorded when the flow
    /// is opened; all zero in entries written before it existed: then the frontend of
    /// `rev_nat_index` in `weft_lb4_revnat`.
    pub nat_address: [u8; 4],
    pub nat_port: u16,
    pub _pad: u16,
}

/// The client sent a packet without SYN: the handshake is complete, the flow established.
pub const CT_FLAG_SEEN_NON_SYN: u16 = 1 << 0;
/// The client sent a FIN.
pub const CT_FLAG_FORWARD_CLOSING: u16 = 1 << 1;
/// The backend sent a FIN.
pub const CT_FLAG_REPLY_CLOSING: u16 = 1 << 2;
/// Either side sent a RST.
pub const CT_FLAG_RESET: u16 = 1 << 3;
/// The flow was translated at the socket (connect4/sendmsg4): tc leaves it alone.
pub const CT_FLAG_FROM_SOCKET: u16 = 1 << 4;
/// The flow came in from outside the cluster through this node's external device (NodePort,
/// externalIPs, LoadBalancer): its replies leave through that device.
pub const CT_FLAG_NORTH_SOUTH: u16 = 1 << 5;
/// Hairpin: the client was given itself as backend. Its packets reach it from the loopback
/// address ([`crate::lb::LB_LOOPBACK_ADDR`]), which the reply entry's key holds as the
/// destination; the reply goes back to the client's own address.
pub const CT_FLAG_LOOPBACK: u16 = 1 << 6;
/// This node sees only the client's side of the flow (DSR to a backend on another node: the
/// backend's node replies): the client's FIN closes it, as no backend FIN will ever pass.
pub const CT_FLAG_ONE_WAY: u16 = 1 << 7;

/// Lifetimes (Cilium's defaults, design §3).
pub const CT_LIFETIME_TCP_SYN_S: u32 = 60;
pub const CT_LIFETIME_TCP_ESTABLISHED_S: u32 = 8000;
pub const CT_LIFETIME_TCP_CLOSE_S: u32 = 10;
pub const CT_LIFETIME_NON_TCP_S: u32 = 60;

/// CT entries: 512 Ki for TCP plus 256 Ki for the rest, in one LRU map.
pub const CT4_MAX: u32 = 512 * 1024 + 256 * 1024;

pub const TCP_FLAG_FIN: u8 = 0x01;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_RST: u8 = 0x04;
pub const TCP_FLAG_ACK: u8 = 0x10;

/// Which way a packet goes relative to the flow's client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtDirection {
    Forward,
    Reply,
}

/// What a packet does to a flow's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtUpdate {
    pub flags: u16,
    pub lifetime_s: u32,
    /// A bare SYN on a flow that was closing or reset: the ports are being reused for a new
    /// connection, which gets a fresh backend selection.
    pub reopens: bool,
}

/// The state after a packet with `tcp_flags` (0 for non-TCP) of protocol `is_tcp` goes
/// `direction` on a flow whose flags were `flags`.
pub const fn ct_update(
    flags: u16,
    is_tcp: bool,
    tcp_flags: u8,
    direction: CtDirection,
) -> CtUpdate {
    if !is_tcp {
        return CtUpdate {
            flags,
            lifetime_s: CT_LIFETIME_NON_TCP_S,
            reopens: false,
        };
    }
    let bare_syn = tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
    let closing = CT_FLAG_FORWARD_CLOSING | CT_FLAG_REPLY_CLOSING | CT_FLAG_RESET;
    if bare_syn && flags & closing != 0 {
        return CtUpdate {
            flags: flags & CT_FLAG_FROM_SOCKET,
            lifetime_s: CT_LIFETIME_TCP_SYN_S,
            reopens: true,
        };
    }
    let mut next = flags;
    // Only the client's side establishes a flow. Whoever sends a SYN, from any source address,
    // gets the backend's SYN-ACK: were that enough, a flood of SYNs with forged sources would
    // fill the table with entries living `CT_LIFETIME_TCP_ESTABLISHED_S` (and a forged DSR
    // flow would be kept for hours). A real client's ACK follows the SYN-ACK within a round
    // trip, so its flows lose nothing. This holds for every kind of entry (service, reply,
    // DSR), as in Cilium, whose entries are established by a packet without SYN too.
    if matches!(direction, CtDirection::Forward) && tcp_flags & TCP_FLAG_SYN == 0 {
        next |= CT_FLAG_SEEN_NON_SYN;
    }
    if tcp_flags & TCP_FLAG_RST != 0 {
        next |= CT_FLAG_RESET;
    }
    if tcp_flags & TCP_FLAG_FIN != 0 {
        next |= match direction {
            CtDirection::Forward => CT_FLAG_FORWARD_CLOSING,
            CtDirection::Reply => CT_FLAG_REPLY_CLOSING,
        };
    }
    CtUpdate {
        flags: next,
        lifetime_s: tcp_lifetime(next),
        reopens: false,
    }
}

const fn tcp_lifetime(flags: u16) -> u32 {
    let both_closing = CT_FLAG_FORWARD_CLOSING | CT_FLAG_REPLY_CLOSING;
    let one_way_closing = CT_FLAG_ONE_WAY | CT_FLAG_FORWARD_CLOSING;
    if flags & CT_FLAG_RESET != 0
        || flags & both_closing == both_closing
        || flags & one_way_closing == one_way_closing
    {
        CT_LIFETIME_TCP_CLOSE_S
    } else if flags & CT_FLAG_SEEN_NON_SYN != 0 {
        CT_LIFETIME_TCP_ESTABLISHED_S
    } else {
        CT_LIFETIME_TCP_SYN_S
    }
}

/// Whether an entry is still alive at monotonic second `now_s`.
pub const fn ct_alive(entry: &CtEntry4, now_s: u32) -> bool {
    now_s < entry.expires_s
}

const _: () = assert!(core::mem::size_of::<CtKey4>() == 16);
const _: () = assert!(core::mem::size_of::<CtEntry4>() == 32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_one_way_flow_closes_on_the_clients_fin_alone() {
        let established = ct_update(CT_FLAG_ONE_WAY, true, TCP_FLAG_ACK, CtDirection::Forward);
        assert_eq!(established.lifetime_s, CT_LIFETIME_TCP_ESTABLISHED_S);
        let fin = ct_update(
            established.flags,
            true,
            TCP_FLAG_FIN | TCP_FLAG_ACK,
            CtDirection::Forward,
        );
        assert_eq!(fin.lifetime_s, CT_LIFETIME_TCP_CLOSE_S);
        // A two-way flow waits for the backend's FIN too.
        let two_way = ct_update(
            CT_FLAG_SEEN_NON_SYN,
            true,
            TCP_FLAG_FIN | TCP_FLAG_ACK,
            CtDirection::Forward,
        );
        assert_eq!(two_way.lifetime_s, CT_LIFETIME_TCP_ESTABLISHED_S);
    }

    const SYN: u8 = TCP_FLAG_SYN;
    const SYN_ACK: u8 = TCP_FLAG_SYN | TCP_FLAG_ACK;
    const ACK: u8 = TCP_FLAG_ACK;
    const FIN_ACK: u8 = TCP_FLAG_FIN | TCP_FLAG_ACK;
    const RST: u8 = TCP_FLAG_RST;

    /// Runs packets through the machine from a fresh flow; returns the last update.
    fn run(packets: &[(u8, CtDirection)]) -> CtUpdate {
        let mut state = CtUpdate {
            flags: 0,
            lifetime_s: 0,
            reopens: false,
        };
        for &(tcp_flags, dir) in packets {
            state = ct_update(state.flags, true, tcp_flags, dir);
        }
        state
    }

    use CtDirection::{Forward as F, Reply as R};

    #[test]
    fn a_handshake_is_established_by_the_clients_ack_not_the_backends_syn_ack() {
        assert_eq!(run(&[(SYN, F)]).lifetime_s, CT_LIFETIME_TCP_SYN_S);
        let answered = run(&[(SYN, F), (SYN_ACK, R)]);
        assert_eq!(answered.lifetime_s, CT_LIFETIME_TCP_SYN_S);
        assert_eq!(answered.flags, 0);
        let up = run(&[(SYN, F), (SYN_ACK, R), (ACK, F)]);
        assert_eq!(up.lifetime_s, CT_LIFETIME_TCP_ESTABLISHED_S);
        assert_eq!(up.flags, CT_FLAG_SEEN_NON_SYN);
    }

    #[test]
    fn no_packet_of_the_backend_establishes_a_flow() {
        for reply in [ACK, SYN_ACK, FIN_ACK] {
            let up = run(&[(SYN, F), (SYN_ACK, R), (reply, R)]);
            assert_eq!(up.flags & CT_FLAG_SEEN_NON_SYN, 0, "{reply:#x}");
            assert_eq!(up.lifetime_s, CT_LIFETIME_TCP_SYN_S, "{reply:#x}");
        }
        // A retransmitted SYN does not either; a client's segment after its SYN does.
        assert_eq!(run(&[(SYN, F), (SYN, F)]).lifetime_s, CT_LIFETIME_TCP_SYN_S);
        assert_eq!(
            run(&[(SYN, F), (ACK, F)]).lifetime_s,
            CT_LIFETIME_TCP_ESTABLISHED_S
        );
    }

    #[test]
    fn one_fin_keeps_the_flow_established_both_close_it() {
        let open = [(SYN, F), (SYN_ACK, R), (ACK, F)];
        let half = run(&[open.as_slice(), &[(FIN_ACK, F)]].concat());
        assert_eq!(
            half.lifetime_s, CT_LIFETIME_TCP_ESTABLISHED_S,
            "half-close may last"
        );
        let closed = run(&[open.as_slice(), &[(FIN_ACK, F), (FIN_ACK, R)]].concat());
        assert_eq!(closed.lifetime_s, CT_LIFETIME_TCP_CLOSE_S);
    }

    #[test]
    fn a_reset_from_either_side_closes() {
        for dir in [F, R] {
            let up = run(&[(SYN, F), (SYN_ACK, R), (RST, dir)]);
            assert_eq!(up.lifetime_s, CT_LIFETIME_TCP_CLOSE_S);
            assert_ne!(up.flags & CT_FLAG_RESET, 0);
        }
    }

    #[test]
    fn a_new_syn_on_a_closed_flow_reopens_it_and_keeps_the_socket_mark() {
        let closed = ct_update(
            CT_FLAG_SEEN_NON_SYN | CT_FLAG_RESET | CT_FLAG_FROM_SOCKET,
            true,
            SYN,
            F,
        );
        assert!(closed.reopens);
        assert_eq!(closed.flags, CT_FLAG_FROM_SOCKET);
        assert_eq!(closed.lifetime_s, CT_LIFETIME_TCP_SYN_S);
        let retransmitted_syn = ct_update(0, true, SYN, F);
        assert!(!retransmitted_syn.reopens);
    }

    #[test]
    fn north_south_and_loopback_marks_survive_the_state_machine() {
        let marks = CT_FLAG_NORTH_SOUTH | CT_FLAG_LOOPBACK;
        for (tcp_flags, dir) in [(SYN_ACK, R), (ACK, F), (FIN_ACK, F), (RST, R)] {
            assert_eq!(ct_update(marks, true, tcp_flags, dir).flags & marks, marks);
        }
        assert_eq!(ct_update(marks, false, 0, F).flags, marks);
    }

    #[test]
    fn non_tcp_flows_get_the_non_tcp_lifetime_and_keep_their_flags() {
        let up = ct_update(CT_FLAG_FROM_SOCKET, false, 0, R);
        assert_eq!(up.lifetime_s, CT_LIFETIME_NON_TCP_S);
        assert_eq!(up.flags, CT_FLAG_FROM_SOCKET);
    }

    #[test]
    fn an_entry_is_dead_from_its_expiry_on() {
        let e = CtEntry4 {
            expires_s: 100,
            ..CtEntry4::default()
        };
        assert!(ct_alive(&e, 99));
        assert!(!ct_alive(&e, 100));
    }
}
