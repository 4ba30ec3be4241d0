//! The `weft_metrics` per-CPU array: packets and bytes by hook and verdict reason.

use crate::{Hook, Reason};

/// Logical key of a metrics slot; the map itself is an array indexed by [`MetricsKey::index`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MetricsKey {
    pub hook: Hook,
    pub reason: Reason,
}

impl MetricsKey {
    /// Number of entries of the metrics array.
    pub const ENTRIES: u32 = Hook::SLOTS * Reason::SLOTS;

    pub const fn index(self) -> u32 {
        index_of(self.hook as u8, self.reason as u8)
    }

    pub const fn from_index(index: u32) -> Option<MetricsKey> {
        let hook = (index / Reason::SLOTS) as u8;
        let reason = (index % Reason::SLOTS) as u8;
        match (Hook::from_u8(hook), Reason::from_u8(reason)) {
            (Some(hook), Some(reason)) => Some(MetricsKey { hook, reason }),
            _ => None,
        }
    }
}

/// Index from raw numbers, for the kernel side which carries hook and reason as `u8`.
/// Out-of-range reasons land in the hook's slot 0 only if a caller passes garbage; the mask keeps
/// the index inside the array for the verifier.
#[inline(always)]
pub const fn index_of(hook: u8, reason: u8) -> u32 {
    ((hook as u32 % Hook::SLOTS) * Reason::SLOTS) + (reason as u32 % Reason::SLOTS)
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsValue {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<MetricsValue>() == 16);
