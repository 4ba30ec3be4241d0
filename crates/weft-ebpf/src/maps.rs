//! The maps of the datapath. Layouts come from `weft-common`. The object declares no pinning:
//! the loader chooses each map's pin path (the node's pin directory), so a node's programs, the
//! agent and the CLI share one instance, and a test harness gets private ones.

use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};
use weft_common::{DatapathConfig, MetricsKey, MetricsValue};

/// Drop and trace events for `weft observe`.
#[map(name = "weft_events")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Packets and bytes by hook and verdict reason, per CPU.
#[map(name = "weft_metrics")]
pub static METRICS: PerCpuArray<MetricsValue> =
    PerCpuArray::with_max_entries(MetricsKey::ENTRIES, 0);

/// Run-time knobs, one entry.
#[map(name = "weft_config")]
pub static CONFIG: Array<DatapathConfig> = Array::with_max_entries(1, 0);
