//! One way for every stage to read a packet, whatever the hook: tc programs read through
//! `bpf_skb_load_bytes` (exact for non-linear skbs), XDP programs read the frame directly.

use aya_ebpf::{
    helpers::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};
use weft_common::event::SNIPPET_LEN;

pub trait Packet {
    /// Length of the whole packet.
    fn len(&self) -> u32;
    /// The `T` at `offset`, or `None` when the packet ends before it.
    fn load<T: Copy>(&self, offset: usize) -> Option<T>;
    /// The interface the packet is on.
    fn ifindex(&self) -> u32;
    /// Copies the head of the packet into `dst`; returns how many bytes were copied.
    fn copy_head(&self, dst: &mut [u8; SNIPPET_LEN]) -> u16;
}

/// The copy length: the packet length clamped to SNIPPET_LEN (0 for an empty packet); callers
/// test for 0 so the verifier sees 1..=SNIPPET_LEN.
#[inline(always)]
fn head_len(pkt_len: u32) -> u32 {
    let mut len = pkt_len;
    if len > SNIPPET_LEN as u32 {
        len = SNIPPET_LEN as u32;
    }
    len
}

impl Packet for TcContext {
    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }

    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        TcContext::load(self, offset).ok()
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: `skb` is the live __sk_buff of this invocation.
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn copy_head(&self, dst: &mut [u8; SNIPPET_LEN]) -> u16 {
        let len = head_len(Packet::len(self));
        if len == 0 {
            return 0;
        }
        // SAFETY: `dst` has SNIPPET_LEN writable bytes and 1 <= len <= SNIPPET_LEN.
        let ret =
            unsafe { bpf_skb_load_bytes(self.skb.skb.cast(), 0, dst.as_mut_ptr().cast(), len) };
        if ret == 0 { len as u16 } else { 0 }
    }
}

impl Packet for XdpContext {
    #[inline(always)]
    fn len(&self) -> u32 {
        (self.data_end() - self.data()) as u32
    }

    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        let start = self.data() + offset;
        if start + size_of::<T>() > self.data_end() {
            return None;
        }
        // SAFETY: [start, start + size_of::<T>()) lies inside the frame, checked above; T is
        // plain data read without alignment assumptions.
        Some(unsafe { (start as *const T).read_unaligned() })
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: `ctx` is the live xdp_md of this invocation.
        unsafe { (*self.ctx).ingress_ifindex }
    }

    #[inline(always)]
    fn copy_head(&self, dst: &mut [u8; SNIPPET_LEN]) -> u16 {
        if let Some(head) = Packet::load::<[u8; SNIPPET_LEN]>(self, 0) {
            *dst = head;
            return SNIPPET_LEN as u16;
        }
        // A short frame: byte by byte with constant-size helper reads, because the verifier
        // cannot bound a variable copy length the compiler keeps in an unclamped register.
        let mut copied = 0;
        while copied < SNIPPET_LEN {
            // SAFETY: one byte into `dst[copied]`, copied < SNIPPET_LEN.
            let ret = unsafe {
                bpf_xdp_load_bytes(
                    self.ctx.cast(),
                    copied as u32,
                    dst.as_mut_ptr().add(copied).cast(),
                    1,
                )
            };
            if ret != 0 {
                break;
            }
            copied += 1;
        }
        copied as u16
    }
}

/// A tc packet seen from `offset` on: the inner frame of a tunnel packet, for the shared parser.
pub struct Shifted<'a> {
    pub ctx: &'a TcContext,
    pub offset: usize,
}

impl Packet for Shifted<'_> {
    #[inline(always)]
    fn len(&self) -> u32 {
        Packet::len(self.ctx).saturating_sub(self.offset as u32)
    }

    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        Packet::load(self.ctx, self.offset + offset)
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        Packet::ifindex(self.ctx)
    }

    #[inline(always)]
    fn copy_head(&self, dst: &mut [u8; SNIPPET_LEN]) -> u16 {
        Packet::copy_head(self.ctx, dst)
    }
}
