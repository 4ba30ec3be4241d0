//! The `weft_snat4` LRU hash: masquerade of pod traffic to the world. Every translated flow has
//! two entries. The egress entry is keyed by the pod's original tuple and holds the node address
//! and port it was translated to; the ingress entry is keyed by the reply tuple (peer to node
//! address and port) and holds the pod's address and port.

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

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatEntry4 {
    /// Egress: the node address the source becomes. Ingress: the pod address the destination
    /// returns to.
    pub addr: [u8; 4],
    pub port: u16,
    pub _pad: u16,
    /// bpf_ktime_get_ns of the last packet that used the entry.
    pub last_seen_ns: u64,
}

/// Cilium's default NAT table size: 2/3 of the 512 Ki TCP CT entries.
pub const SNAT_MAX: u32 = 349_525;
/// Default masquerade port range.
pub const SNAT_PORT_MIN: u16 = 32768;
pub const SNAT_PORT_MAX: u16 = 65535;
/// Random probes for a free port before the packet is dropped with `SnatNoPort`.
pub const SNAT_PORT_PROBES: u32 = 16;

const _: () = assert!(core::mem::size_of::<NatKey4>() == 16);
const _: () = assert!(core::mem::size_of::<NatEntry4>() == 16);
