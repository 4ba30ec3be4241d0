//! Refusing a pod's packet at once: it is turned, in place, into the ICMP "port unreachable"
//! the destination would have sent, and handed back to the pod. A TCP connect then fails with
//! "connection refused" and a UDP socket sees the error, instead of waiting for a timeout.

use aya_ebpf::{
    bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    helpers::{bpf_csum_diff, bpf_skb_load_bytes},
    programs::TcContext,
};
use weft_common::{
    EndpointInfo, Reason,
    net::{ETH_HLEN, ETH_P_IP, IPPROTO_ICMP, IPV4_MIN_HLEN},
};

use crate::{
    maps::QUOTE,
    parse::{EthHdr, Headers, Ipv4Hdr},
    skb,
    verdict::Verdict,
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
const ICMP_HLEN: usize = 8;
/// An ICMP error quotes at least the offending packet's IP header and 8 bytes of its payload.
const QUOTE_MIN: usize = IPV4_MIN_HLEN + 8;
/// The largest packet quoted whole (and the checksum helper's limit); a larger one is dropped.
pub const QUOTE_MAX: usize = 512;

#[repr(C)]
#[derive(Clone, Copy)]
struct Reply {
    eth: EthHdr,
    ip: Ipv4Hdr,
    icmp: [u8; ICMP_HLEN],
}

/// Sends `pod` a port unreachable from the destination of its packet `h`; the packet is
/// accounted under `reason`. The whole packet is quoted: trimming it is refused by the kernel
/// while a socket's checksum offload is pending on it (`CHECKSUM_PARTIAL`, every TCP SYN).
/// Packets with IP options, or longer than [`QUOTE_MAX`], are only dropped.
#[inline(always)]
pub fn port_unreachable(
    ctx: &TcContext,
    h: &Headers,
    pod: &EndpointInfo,
    reason: Reason,
) -> Result<Verdict, Reason> {
    let quoted = (ctx.len() as usize).wrapping_sub(ETH_HLEN);
    if h.l4_off as usize != ETH_HLEN + IPV4_MIN_HLEN || !(QUOTE_MIN..=QUOTE_MAX).contains(&quoted) {
        return Err(reason);
    }
    let quote_sum = quote_sum(ctx, quoted).ok_or(reason)?;
    let room = (IPV4_MIN_HLEN + ICMP_HLEN) as i32;
    ctx.adjust_room(room, BPF_ADJ_ROOM_MAC, 0)
        .map_err(|_| reason)?;
    skb::store(ctx, 0, &reply_headers(h, pod, quoted, quote_sum), reason)?;
    Ok(skb::redirect_back_to_pod(ctx).with_reason(reason))
}

/// The ones' complement sum, in big-endian words, of the `len` bytes after the Ethernet header.
#[inline(always)]
fn quote_sum(ctx: &TcContext, len: usize) -> Option<u32> {
    let buf = QUOTE.get_ptr_mut(0)?;
    // Bounds the verifier can follow: 1..=QUOTE_MAX bytes, padded to 4 with zeroes (which do
    // not change the sum) for the checksum helper. The volatile read keeps the compiler from
    // dropping the mask as redundant.
    // SAFETY: a read of a local.
    let len = unsafe { core::ptr::read_volatile(&len) } & (2 * QUOTE_MAX - 1);
    if len == 0 || len > QUOTE_MAX {
        return None;
    }
    // SAFETY: `buf` is a QUOTE_MAX-byte map value and len <= QUOTE_MAX.
    let loaded =
        unsafe { bpf_skb_load_bytes(ctx.skb.skb.cast(), ETH_HLEN as u32, buf.cast(), len as u32) };
    if loaded != 0 {
        return None;
    }
    let padded = (len + 3) & !3;
    for i in 0..3 {
        let at = len + i;
        if at < padded && at < QUOTE_MAX {
            // SAFETY: at < QUOTE_MAX.
            unsafe { (*buf)[at] = 0 };
        }
    }
    // SAFETY: a read of a local.
    let padded = unsafe { core::ptr::read_volatile(&padded) } & (2 * QUOTE_MAX - 1);
    if padded > QUOTE_MAX {
        return None;
    }
    // SAFETY: `buf` holds `padded` readable bytes.
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, buf.cast(), padded as u32, 0) };
    if sum < 0 {
        return None;
    }
    // The helper adds host-order (little-endian) words: fold, then swap to big-endian.
    let sum = sum as u32;
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = ((folded & 0xffff) + (folded >> 16)) as u16;
    Some(u32::from(folded.swap_bytes()))
}

#[inline(always)]
fn reply_headers(h: &Headers, pod: &EndpointInfo, quoted: usize, quote_sum: u32) -> Reply {
    let total = (IPV4_MIN_HLEN + ICMP_HLEN + quoted) as u16;
    let mut icmp = [ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0, 0, 0, 0, 0, 0];
    let sum = skb::sum_words(&icmp, quote_sum);
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
