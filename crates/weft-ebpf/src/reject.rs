//! Refusing a pod's packet at once: it is turned, in place, into the ICMP "port unreachable"
//! the destination would have sent, and handed back to the pod. A TCP connect then fails with
//! "connection refused" and a UDP socket sees the error, instead of waiting for a timeout.

use aya_ebpf::{
    bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, helpers::bpf_skb_change_tail,
    programs::TcContext,
};
use weft_common::{
    EndpointInfo, Reason,
    net::{ETH_HLEN, ETH_P_IP, IPPROTO_ICMP, IPV4_MIN_HLEN},
};

use crate::{
    parse::{EthHdr, Headers, Ipv4Hdr},
    skb,
    verdict::Verdict,
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
/// What an ICMP error quotes of the offending packet: its IP header (without options) and the
/// first 8 bytes of its payload.
const QUOTE_LEN: usize = IPV4_MIN_HLEN + 8;
const ICMP_HLEN: usize = 8;

#[repr(C)]
#[derive(Clone, Copy)]
struct Reply {
    eth: EthHdr,
    ip: Ipv4Hdr,
    icmp: [u8; ICMP_HLEN],
}

/// Sends `pod` a port unreachable from the destination of its packet `h`; the packet is
/// accounted under `reason`. Packets with IP options are only dropped.
#[inline(always)]
pub fn port_unreachable(
    ctx: &TcContext,
    h: &Headers,
    pod: &EndpointInfo,
    reason: Reason,
) -> Result<Verdict, Reason> {
    if h.l4_off as usize != ETH_HLEN + IPV4_MIN_HLEN {
        return Err(reason);
    }
    let quote: [u8; QUOTE_LEN] = ctx.load(ETH_HLEN).map_err(|_| reason)?;
    // SAFETY: helper on the live skb; the new length is within the packet (the quote loaded).
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_HLEN + QUOTE_LEN) as u32, 0) } != 0 {
        return Err(reason);
    }
    let room = (IPV4_MIN_HLEN + ICMP_HLEN) as i32;
    ctx.adjust_room(room, BPF_ADJ_ROOM_MAC, 0)
        .map_err(|_| reason)?;
    skb::store(ctx, 0, &reply_headers(h, pod, &quote), reason)?;
    Ok(skb::redirect_back_to_pod(ctx).with_reason(reason))
}

#[inline(always)]
fn reply_headers(h: &Headers, pod: &EndpointInfo, quote: &[u8; QUOTE_LEN]) -> Reply {
    let total = (IPV4_MIN_HLEN + ICMP_HLEN + QUOTE_LEN) as u16;
    let mut icmp = [ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0, 0, 0, 0, 0, 0];
    let sum = skb::sum_words(quote, skb::sum_words(&icmp, 0));
    icmp[2..4].copy_from_slice(&skb::fold(sum).to_be_bytes());
    Reply {
        eth: EthHdr {
            dst: pod.mac,
            src: pod.host_mac,
            proto: ETH_P_IP.to_be_bytes(),
        },
        ip: skb::ipv4_header(IPPROTO_ICMP, h.dst_v4(), h.src_v4(), total),
        icmp,
    }
}
