//! Geneve overlay (RFC 8926) as Weft writes it: outer IPv4 + UDP to port 6081, one VNI, inner
//! Ethernet frame, and one option carrying the sender's security identity.

use crate::net::{ETH_HLEN, IPV4_MIN_HLEN, UDP_HLEN};

pub const GENEVE_PORT: u16 = 6081;
/// Inner payload type: Transparent Ethernet Bridging.
pub const ETH_P_TEB: u16 = 0x6558;
pub const GENEVE_HLEN: usize = 8;
/// Option class Cilium registered with IANA, reused for Weft's options.
pub const GENEVE_OPT_CLASS: u16 = 0x014B;
/// Option type of the identity option (not critical: a receiver that does not know it may
/// ignore it).
pub const GENEVE_OPT_TYPE_IDENTITY: u8 = 0x01;
/// Option header (4) + identity (4).
pub const GENEVE_OPT_IDENTITY_LEN: usize = 8;
/// The VNI of the cluster's one overlay network.
pub const GENEVE_VNI: u32 = 2;

/// Everything Weft's encapsulation adds in front of the pod's IP packet.
pub const GENEVE_ENCAP_LEN: usize =
    IPV4_MIN_HLEN + UDP_HLEN + GENEVE_HLEN + GENEVE_OPT_IDENTITY_LEN + ETH_HLEN;

/// The MTU a pod gets when the underlay has `underlay_mtu`.
pub const fn pod_mtu(underlay_mtu: u32) -> u32 {
    underlay_mtu.saturating_sub(GENEVE_ENCAP_LEN as u32)
}

const _: () = assert!(GENEVE_ENCAP_LEN == 58);
