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

/// Option type of the DSR option (not critical): the frontend a north-south flow was sent to,
/// on the packets that open a DSR flow, so the backend's node can reply from it.
pub const GENEVE_OPT_TYPE_DSR: u8 = 0x02;
/// Option header (4) + address (4) + port (2) + padding (2).
pub const GENEVE_OPT_DSR_LEN: usize = 12;

/// The DSR option as it sits on the wire: class [`GENEVE_OPT_CLASS`], type
/// [`GENEVE_OPT_TYPE_DSR`], length 2 words; the frontend's IPv4 address and port in network
/// order, two zero bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GeneveOptDsr {
    pub class: [u8; 2],
    pub kind: u8,
    /// Reserved bits (3) and the data length in 4-byte words (5).
    pub len: u8,
    pub address: [u8; 4],
    pub port: [u8; 2],
    pub _pad: [u8; 2],
}

impl GeneveOptDsr {
    /// The option for frontend `address` (network order), `port` (host order).
    pub const fn new(address: [u8; 4], port: u16) -> GeneveOptDsr {
        GeneveOptDsr {
            class: GENEVE_OPT_CLASS.to_be_bytes(),
            kind: GENEVE_OPT_TYPE_DSR,
            len: ((GENEVE_OPT_DSR_LEN - 4) / 4) as u8,
            address,
            port: port.to_be_bytes(),
            _pad: [0; 2],
        }
    }

    /// Whether an option header is Weft's DSR option of the right length.
    pub const fn is_dsr(class: [u8; 2], kind: u8, len: u8) -> bool {
        u16::from_be_bytes(class) == GENEVE_OPT_CLASS
            && kind == GENEVE_OPT_TYPE_DSR
            && (len & 0x1f) as usize * 4 + 4 == GENEVE_OPT_DSR_LEN
    }

    /// The option's bytes.
    pub const fn to_bytes(&self) -> [u8; GENEVE_OPT_DSR_LEN] {
        let [c0, c1] = self.class;
        let [a0, a1, a2, a3] = self.address;
        let [p0, p1] = self.port;
        [c0, c1, self.kind, self.len, a0, a1, a2, a3, p0, p1, 0, 0]
    }
}

/// The encapsulation of a packet that opens a DSR flow: the identity and the DSR option.
pub const GENEVE_DSR_ENCAP_LEN: usize = GENEVE_ENCAP_LEN + GENEVE_OPT_DSR_LEN;

const _: () = assert!(core::mem::size_of::<GeneveOptDsr>() == GENEVE_OPT_DSR_LEN);
const _: () = assert!(GENEVE_DSR_ENCAP_LEN == 70);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dsr_option_is_class_0x014b_type_2_two_words_address_port_padding() {
        let opt = GeneveOptDsr::new([198, 51, 100, 1], 30080);
        assert_eq!(
            opt.to_bytes(),
            [0x01, 0x4b, 0x02, 0x02, 198, 51, 100, 1, 0x75, 0x80, 0, 0]
        );
        assert!(GeneveOptDsr::is_dsr(opt.class, opt.kind, opt.len));
        assert!(!GeneveOptDsr::is_dsr(
            opt.class,
            GENEVE_OPT_TYPE_IDENTITY,
            opt.len
        ));
        assert!(
            !GeneveOptDsr::is_dsr(opt.class, opt.kind, 1),
            "wrong length"
        );
    }
}
