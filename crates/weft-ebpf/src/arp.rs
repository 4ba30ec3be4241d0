//! ARP for pods. A pod resolves every next hop (its gateway) to the host-side veth's MAC: the
//! datapath answers the request itself and sends the reply straight back into the pod.

use aya_ebpf::programs::TcContext;
use weft_common::{EndpointInfo, Reason, net::ETH_HLEN};

use crate::{
    packet::Packet,
    parse::EthHdr,
    skb,
    verdict::{StageResult, Verdict},
};

const ARP_OP_REQUEST: u16 = 1;
const ARP_OP_REPLY: u16 = 2;

/// The ARP body for Ethernet/IPv4 after the fixed 8-byte header.
#[repr(C)]
#[derive(Clone, Copy)]
struct ArpEthIpv4 {
    htype: [u8; 2],
    ptype: [u8; 2],
    hlen: u8,
    plen: u8,
    op: [u8; 2],
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
}

const _: () = assert!(core::mem::size_of::<ArpEthIpv4>() == 28);

/// ARP from a pod: the sender must be the pod itself; requests for any other address are
/// answered with the host-side MAC, everything else goes to the stack.
#[inline(always)]
pub fn from_pod(ctx: &TcContext, eth: &EthHdr) -> StageResult {
    let arp: ArpEthIpv4 = Packet::load(ctx, ETH_HLEN).ok_or(Reason::MalformedArp)?;
    let ep = crate::lookup::endpoint(arp.spa).ok_or(Reason::InvalidSource)?;
    if !sent_by(&ep, ctx, eth.src) || arp.sha != ep.mac {
        return Err(Reason::InvalidSource);
    }
    let is_request = u16::from_be_bytes(arp.op) == ARP_OP_REQUEST;
    if !is_request || arp.tpa == arp.spa {
        return Ok(Verdict::pass().with_identity(ep.identity));
    }
    answer(ctx, &arp, ep.host_mac)?;
    Ok(skb::redirect_egress(Packet::ifindex(ctx)).with_identity(ep.identity))
}

/// Whether a frame with source MAC `src` on this interface comes from endpoint `ep`.
#[inline(always)]
pub fn sent_by(ep: &EndpointInfo, ctx: &TcContext, src: [u8; 6]) -> bool {
    ep.ifindex == Packet::ifindex(ctx) && ep.mac == src
}

#[inline(always)]
fn answer(ctx: &TcContext, req: &ArpEthIpv4, mac: [u8; 6]) -> Result<(), Reason> {
    let eth = EthHdr {
        dst: req.sha,
        src: mac,
        proto: weft_common::net::ETH_P_ARP.to_be_bytes(),
    };
    let reply = ArpEthIpv4 {
        op: ARP_OP_REPLY.to_be_bytes(),
        sha: mac,
        spa: req.tpa,
        tha: req.sha,
        tpa: req.spa,
        ..*req
    };
    skb::store(ctx, 0, &eth, Reason::RedirectFailed)?;
    skb::store(ctx, ETH_HLEN, &reply, Reason::RedirectFailed)
}
