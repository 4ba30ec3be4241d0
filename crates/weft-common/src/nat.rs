//! The `weft_snat4` LRU hash: masquerade of pod traffic to the world. Every translated flow has
//! two entries. The egress entry is keyed by the pod's original tuple and holds the node address
//! and port it was translated to; the ingress entry is keyed by the reply tuple (peer to node
//! address and port) and holds the pod's address and port.
//!
//! Both entries carry the flow's state and expiry, kept in step by every packet either way with
//! the conntrack state machine ([`crate::ct::ct_update`]): packets from the pod go forward,
//! replies from the world go the reply way. A TCP flow lives 60 s after a SYN, 8000 s once
//! established and 10 s after both FINs or a RST; other protocols 60 s after their last packet.
//! An expired entry is a miss for the datapath: its port is free, and a new flow that meets it
//! while looking for a port takes it over at once. The agent's collector deletes what is left.

use crate::ct::CtUpdate;

/// Addresses in network order, ports in host order. For ICMP echo the identifier stands for both
/// ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NatKey4 {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// [`NAT_DIR_EGRESS`] or [`NAT_DIR_INGRESS`].
    pub direction: u8,
    pub _pad: [u8; 2],
}

pub const NAT_DIR_EGRESS: u8 = 0;
pub const NAT_DIR_INGRESS: u8 = 1;

/// Value of `weft_snat4`. The first 16 bytes are laid out as before the entries carried state
/// (`flags` was padding): a map pinned by an older Weft has 16-byte values, which this one
/// refuses to adopt (see `weft_datapath::node`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatEntry4 {
    /// Egress: the node address the source becomes. Ingress: the pod address the destination
    /// returns to.
    pub addr: [u8; 4],
    pub port: u16,
    /// The flow's TCP state: the `CT_FLAG_*` bits [`crate::ct::ct_update`] keeps (0 for other
    /// protocols).
    pub flags: u16,
    /// bpf_ktime_get_ns of the last packet of the flow.
    pub last_seen_ns: u64,
    /// Monotonic second from which the entry is dead and its port free.
    pub expires_s: u32,
    pub _pad: u32,
}

impl NatEntry4 {
    /// Records the flow's state after a packet at `now_s` / `now_ns`: `up` from
    /// [`crate::ct::ct_update`]. The translation itself stays.
    pub const fn advance(&mut self, up: &CtUpdate, now_s: u32, now_ns: u64) {
        self.flags = up.flags;
        self.expires_s = now_s.saturating_add(up.lifetime_s);
        self.last_seen_ns = now_ns;
    }
}

/// Whether a translation still holds at monotonic second `now_s`.
pub const fn nat_alive(entry: &NatEntry4, now_s: u32) -> bool {
    now_s < entry.expires_s
}

/// The ingress key written with the egress entry `entry` of `egress`: the reply tuple, peer to
/// the translated address and port.
pub const fn ingress_partner(egress: &NatKey4, entry: &NatEntry4) -> NatKey4 {
    NatKey4 {
        saddr: egress.daddr,
        daddr: entry.addr,
        sport: egress.dport,
        dport: entry.port,
        proto: egress.proto,
        direction: NAT_DIR_INGRESS,
        _pad: [0; 2],
    }
}

/// The egress key written with the ingress entry `entry` of `ingress`: the pod's tuple.
pub const fn egress_partner(ingress: &NatKey4, entry: &NatEntry4) -> NatKey4 {
    NatKey4 {
        saddr: entry.addr,
        daddr: ingress.saddr,
        sport: entry.port,
        dport: ingress.sport,
        proto: ingress.proto,
        direction: NAT_DIR_EGRESS,
        _pad: [0; 2],
    }
}

/// Cilium's default NAT table size: 2/3 of the 512 Ki TCP CT entries.
pub const SNAT_MAX: u32 = 349_525;
/// Default masquerade port range.
pub const SNAT_PORT_MIN: u16 = 32768;
pub const SNAT_PORT_MAX: u16 = 65535;
/// Ports a new flow tries after its own before the packet is dropped with `SnatNoPort` (as
/// Cilium's SNAT_COLLISION_RETRIES). They are spread evenly over the whole range from a random
/// start ([`snat_probe_port`]); a range of at most this many ports is tried entirely.
pub const SNAT_PORT_PROBES: u32 = 128;

/// The distance between two probes in a range of `span` ports: the probes of one packet are
/// distinct and spread over the whole range.
pub const fn snat_probe_stride(span: u32) -> u32 {
    if span <= SNAT_PORT_PROBES {
        1
    } else {
        span / SNAT_PORT_PROBES
    }
}

/// The port of probe `i` (0 ≤ i < [`SNAT_PORT_PROBES`]) in the range of `span` ports from
/// `min`, starting from offset `start` (random, below `span`).
pub const fn snat_probe_port(min: u16, span: u32, start: u32, stride: u32, i: u32) -> u16 {
    // checked: the BPF target has no panic to reach for an empty range.
    match start.wrapping_add(i.wrapping_mul(stride)).checked_rem(span) {
        Some(offset) => min.wrapping_add(offset as u16),
        None => min,
    }
}

const _: () = assert!(core::mem::size_of::<NatKey4>() == 16);
const _: () = assert!(core::mem::size_of::<NatEntry4>() == 24);
// The probe offsets never overflow: start < span ≤ 65536, i * stride < span.
const _: () = assert!(SNAT_PORT_PROBES <= 65536);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ct::{
        CT_LIFETIME_NON_TCP_S, CT_LIFETIME_TCP_CLOSE_S, CT_LIFETIME_TCP_ESTABLISHED_S,
        CT_LIFETIME_TCP_SYN_S, CtDirection, TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN,
        ct_update,
    };

    const SYN: u8 = TCP_FLAG_SYN;
    const SYN_ACK: u8 = TCP_FLAG_SYN | TCP_FLAG_ACK;
    const ACK: u8 = TCP_FLAG_ACK;
    const FIN_ACK: u8 = TCP_FLAG_FIN | TCP_FLAG_ACK;
    const RST: u8 = TCP_FLAG_RST;
    use CtDirection::{Forward as Out, Reply as In};

    /// A masqueraded TCP flow's entry after `packets`, each at second `now` (out: from the
    /// pod; in: the world's reply), as the datapath advances it.
    fn after(packets: &[(u8, CtDirection)], now: u32) -> NatEntry4 {
        let mut entry = NatEntry4::default();
        for &(tcp_flags, dir) in packets {
            let up = ct_update(entry.flags, true, tcp_flags, dir);
            entry.advance(&up, now, u64::from(now) * 1_000_000_000);
        }
        entry
    }

    fn lifetime(packets: &[(u8, CtDirection)]) -> u32 {
        after(packets, 1000).expires_s - 1000
    }

    #[test]
    fn a_masqueraded_tcp_flow_lives_as_long_as_its_state_allows() {
        let open = [(SYN, Out), (SYN_ACK, In), (ACK, Out)];
        assert_eq!(lifetime(&[(SYN, Out)]), CT_LIFETIME_TCP_SYN_S);
        assert_eq!(lifetime(&open), CT_LIFETIME_TCP_ESTABLISHED_S);
        let fin_out = [open.as_slice(), &[(FIN_ACK, Out)]].concat();
        assert_eq!(
            lifetime(&fin_out),
            CT_LIFETIME_TCP_ESTABLISHED_S,
            "half-closed"
        );
        let closed = [fin_out.as_slice(), &[(FIN_ACK, In), (ACK, Out)]].concat();
        assert_eq!(lifetime(&closed), CT_LIFETIME_TCP_CLOSE_S);
        for dir in [Out, In] {
            let reset = [open.as_slice(), &[(RST, dir)]].concat();
            assert_eq!(lifetime(&reset), CT_LIFETIME_TCP_CLOSE_S, "{dir:?}");
        }
        // The pod reuses the 4-tuple: a bare SYN on the closed flow opens it again.
        let reused = [closed.as_slice(), &[(SYN, Out)]].concat();
        assert_eq!(lifetime(&reused), CT_LIFETIME_TCP_SYN_S);
        assert_eq!(after(&reused, 1000).flags, 0);
    }

    #[test]
    fn other_protocols_live_sixty_seconds_after_their_last_packet() {
        let mut entry = NatEntry4::default();
        entry.advance(&ct_update(0, false, 0, Out), 500, 0);
        assert_eq!(entry.expires_s, 500 + CT_LIFETIME_NON_TCP_S);
        assert_eq!(entry.flags, 0);
    }

    #[test]
    fn an_entry_is_dead_from_its_expiry_on_and_keeps_its_translation() {
        let mut entry = NatEntry4 {
            addr: [198, 51, 100, 1],
            port: 40000,
            ..NatEntry4::default()
        };
        entry.advance(&ct_update(0, true, SYN, Out), 100, 7);
        assert_eq!(
            (entry.addr, entry.port, entry.last_seen_ns),
            ([198, 51, 100, 1], 40000, 7)
        );
        assert!(nat_alive(&entry, 100 + CT_LIFETIME_TCP_SYN_S - 1));
        assert!(!nat_alive(&entry, 100 + CT_LIFETIME_TCP_SYN_S));
    }

    #[test]
    fn partners_name_each_other() {
        let egress = NatKey4 {
            saddr: [10, 42, 0, 10],
            daddr: [203, 0, 113, 4],
            sport: 40000,
            dport: 80,
            proto: 6,
            direction: NAT_DIR_EGRESS,
            _pad: [0; 2],
        };
        let out = NatEntry4 {
            addr: [198, 51, 100, 1],
            port: 33000,
            ..NatEntry4::default()
        };
        let ingress = ingress_partner(&egress, &out);
        assert_eq!(
            (ingress.saddr, ingress.daddr, ingress.sport, ingress.dport),
            ([203, 0, 113, 4], [198, 51, 100, 1], 80, 33000)
        );
        let back = NatEntry4 {
            addr: egress.saddr,
            port: egress.sport,
            ..NatEntry4::default()
        };
        assert_eq!(egress_partner(&ingress, &back), egress);
    }

    /// The ports one packet probes.
    fn probes(min: u16, span: u32, start: u32) -> [u16; SNAT_PORT_PROBES as usize] {
        let stride = snat_probe_stride(span);
        core::array::from_fn(|i| snat_probe_port(min, span, start, stride, i as u32))
    }

    #[test]
    fn probes_are_distinct_and_spread_over_the_whole_range() {
        let span = u32::from(SNAT_PORT_MAX - SNAT_PORT_MIN) + 1;
        for start in [0, 1, 255, 20_000, span - 1] {
            let mut ports = probes(SNAT_PORT_MIN, span, start);
            ports.sort_unstable();
            assert!(
                ports.windows(2).all(|w| w[0] < w[1]),
                "distinct from {start}"
            );
            assert!(ports.iter().all(|p| *p >= SNAT_PORT_MIN), "in range");
            // Evenly spread: no gap between neighbours (cyclically) beyond one stride.
            let stride = snat_probe_stride(span) as u16;
            assert!(ports.windows(2).all(|w| w[1] - w[0] <= stride));
            let last = ports[ports.len() - 1];
            assert!((ports[0] - SNAT_PORT_MIN) + (SNAT_PORT_MAX - last) < stride);
        }
    }

    #[test]
    fn a_range_no_larger_than_the_probes_is_tried_entirely() {
        for span in [1, 2, 100, SNAT_PORT_PROBES] {
            for start in [0, span / 2, span - 1] {
                let ports = probes(40000, span, start);
                for port in 40000..40000 + span as u16 {
                    assert!(ports.contains(&port), "span {span} start {start}: {port}");
                }
            }
        }
    }
}
