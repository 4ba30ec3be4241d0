//! ARP for pods. A pod resolves every next hop (its gateway) to the host-side veth's MAC: the
//! datapath answers the request itself and sends the reply straight back into the pod.

use aya_ebpf::programs::TcContext;
use weft_common::{Reason, net::ETH_HLEN};

use crate::{
    lookup,
    packet::Packet,
    parse::{ArpHdr, EthHdr, Headers},
    skb,
    verdict::{StageResult, Verdict},
};

const ARP_OP_REQUEST: u16 = 1;
const ARP_OP_REPLY: u16 = 2;

/// An Ethernet/IPv4 ARP packet: the fixed header the parser reads, then the addresses.
#[repr(C)]
#[derive(Clone, Copy)]
struct ArpEthIpv4 {
    hdr: ArpHdr,
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
}

const _: () = assert!(core::mem::size_of::<ArpEthIpv4>() == 28);

/// ARP from a pod: the sender must be the pod itself; requests for any other address are
/// answered with the host-side MAC, everything else goes to the stack.
#[inline(always)]
pub fn from_pod(ctx: &TcContext, h: &Headers) -> StageResult {
    let arp: ArpEthIpv4 = Packet::load(ctx, ETH_HLEN).ok_or(Reason::MalformedArp)?;
    let ep = lookup::source_endpoint(ctx, arp.spa, h.src_mac)?;
    if arp.sha != ep.mac {
        return Err(Reason::InvalidSource);
    }
    let is_request = u16::from_be_bytes(arp.hdr.op) == ARP_OP_REQUEST;
    if !is_request || arp.tpa == arp.spa {
        return Ok(Verdict::pass().with_identity(ep.identity));
    }
    answer(ctx, &arp, ep.host_mac)?;
    Ok(skb::redirect_egress(Packet::ifindex(ctx)).with_identity(ep.identity))
}

#[inline(always)]
fn answer(ctx: &TcContext, req: &ArpEthIpv4, mac: [u8; 6]) -> Result<(), Reason> {
    let eth = EthHdr {
        dst: req.sha,
        src: mac,
        proto: weft_common::net::ETH_P_ARP.to_be_bytes(),
    };
    let reply = ArpEthIpv4 {
        hdr: ArpHdr {
            op: ARP_OP_REPLY.to_be_bytes(),
            ..req.hdr
        },
        sha: mac,
        spa: req.tpa,
        tha: req.sha,
        tpa: req.spa,
    };
    skb::store(ctx, 0, &eth, Reason::RedirectFailed)?;
    skb::store(ctx, ETH_HLEN, &reply, Reason::RedirectFailed)
}
