//! The `weft_prefilter4` LPM trie: CIDRs whose packets the node's external device drops before
//! anything else looks at them (`prefilter.cidrs`), in XDP when it is attached and in
//! `from_netdev` otherwise. Counted as `Reason::Prefiltered`.
//!
//! The trie's key is aya's `Key { prefix_len: u32, data: [u8; 4] }` (as `weft_ipcache4`), the
//! source address in network order.

/// The entry of a denied prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefilterEntry {
    /// `PREFILTER_DENY` (the only action; the field leaves room for others).
    pub action: u32,
}

/// Drop the packets whose source is inside the prefix.
pub const PREFILTER_DENY: u32 = 1;

pub const PREFILTER_MAX: u32 = 16384;

const _: () = assert!(core::mem::size_of::<PrefilterEntry>() == 4);
