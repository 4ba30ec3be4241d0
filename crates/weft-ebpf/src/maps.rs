//! The maps of the datapath. Layouts come from `weft-common`. The object declares no pinning:
//! the loader chooses each map's pin path (the node's pin directory), so a node's programs, the
//! agent and the CLI share one instance, and a test harness gets private ones.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use weft_common::{
    DatapathConfig, EndpointInfo, EndpointKey, IpcacheEntry, MetricsKey, MetricsValue, NatEntry4,
    NatKey4, NodeConfig, endpoint::ENDPOINTS_MAX, ipcache::IPCACHE_MAX, nat::SNAT_MAX,
};

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

/// Who this node is, one entry.
#[map(name = "weft_node")]
pub static NODE: Array<NodeConfig> = Array::with_max_entries(1, 0);

/// The pods of this node.
#[map(name = "weft_endpoints")]
pub static ENDPOINTS: HashMap<EndpointKey, EndpointInfo> =
    HashMap::with_max_entries(ENDPOINTS_MAX, 0);

/// Every cluster address: identity and tunnel endpoint.
#[map(name = "weft_ipcache4")]
pub static IPCACHE4: LpmTrie<[u8; 4], IpcacheEntry> =
    LpmTrie::with_max_entries(IPCACHE_MAX, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Masquerade translations, both directions.
#[map(name = "weft_snat4")]
pub static SNAT4: LruHashMap<NatKey4, NatEntry4> = LruHashMap::with_max_entries(SNAT_MAX, 0);

/// Scratch space for the parsed headers, one slot per hook: kept off the 512-byte BPF stack.
#[map(name = "weft_scratch")]
pub static SCRATCH: PerCpuArray<crate::parse::Headers> =
    PerCpuArray::with_max_entries(weft_common::Hook::SLOTS, 0);
