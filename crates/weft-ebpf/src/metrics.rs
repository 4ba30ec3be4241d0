//! Verdict counters.

use weft_common::{Hook, Reason, metrics::index_of};

use crate::maps::METRICS;

#[inline(always)]
pub fn count(hook: Hook, reason: Reason, bytes: u32) {
    if let Some(slot) = METRICS.get_ptr_mut(index_of(hook as u8, reason as u8)) {
        // SAFETY: a per-CPU array slot is only touched by this CPU while the program runs.
        let slot = unsafe { &mut *slot };
        slot.packets += 1;
        slot.bytes += u64::from(bytes);
    }
}
