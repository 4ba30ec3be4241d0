//! The prefilter: packets from a denied source prefix (`weft_prefilter4`) are dropped before any
//! other stage sees them. The first stage of `xdp_entry`, and of `from_netdev` so the list holds
//! with acceleration disabled too (with XDP attached the packet never reaches tc).

use aya_ebpf::maps::lpm_trie::Key;
use weft_common::{Reason, prefilter::PREFILTER_DENY};

use crate::{maps::PREFILTER4, parse::Headers};

/// `Err(Prefiltered)` when the packet's IPv4 source is inside a denied prefix.
#[inline(always)]
pub fn check(h: &Headers) -> Result<(), Reason> {
    if !h.is_ipv4() {
        return Ok(());
    }
    match PREFILTER4.get(Key::new(32, h.src_v4())) {
        Some(entry) if entry.action == PREFILTER_DENY => Err(Reason::Prefiltered),
        _ => Ok(()),
    }
}
