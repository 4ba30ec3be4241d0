//! Observation points: where in the datapath a packet was seen.

/// The program (and so the direction) that saw a packet. Stable numbers: they index the metrics
/// map and appear in events.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// tcx ingress of a pod's host-side veth: traffic leaving the pod.
    FromContainer = 1,
    /// tcx egress of a pod's host-side veth: traffic entering the pod.
    ToContainer = 2,
    /// tcx ingress of the node's external device.
    FromNetdev = 3,
    /// tcx egress of the node's external device.
    ToNetdev = 4,
    /// XDP on the node's external device.
    Xdp = 5,
}

impl Hook {
    /// One slot per possible hook number in per-hook tables (0 is unused).
    pub const SLOTS: u32 = 8;
    pub const ALL: [Hook; 5] = [
        Hook::FromContainer,
        Hook::ToContainer,
        Hook::FromNetdev,
        Hook::ToNetdev,
        Hook::Xdp,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Hook::FromContainer => "from-container",
            Hook::ToContainer => "to-container",
            Hook::FromNetdev => "from-netdev",
            Hook::ToNetdev => "to-netdev",
            Hook::Xdp => "xdp",
        }
    }

    pub const fn from_u8(v: u8) -> Option<Hook> {
        match v {
            1 => Some(Hook::FromContainer),
            2 => Some(Hook::ToContainer),
            3 => Some(Hook::FromNetdev),
            4 => Some(Hook::ToNetdev),
            5 => Some(Hook::Xdp),
            _ => None,
        }
    }

    pub fn from_name(name: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.name() == name)
    }
}
