//! The maps of the datapath. Layouts come from `weft-common`. The object declares no pinning:
//! the loader chooses each map's pin path (the node's pin directory), so a node's programs, the
//! agent and the CLI share one instance, and a test harness gets private ones.

use aya_ebpf::{
    btf_maps::{Array as BtfArray, HashOfMaps},
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use weft_common::{
    CtEntry4, CtKey4, DatapathConfig, EndpointInfo, EndpointKey, IpcacheEntry, Lb4AffinityEntry,
    Lb4AffinityKey, Lb4Backend, Lb4Key, Lb4RevNat, Lb4Service, Lb4SockKey, Lb4SockRevNat,
    MetricsKey, MetricsValue, NatEntry4, NatKey4, NodeConfig, PrefilterEntry,
    ct::CT4_MAX,
    endpoint::ENDPOINTS_MAX,
    ipcache::IPCACHE_MAX,
    lb::{
        LB4_AFFINITY_MAX, LB4_BACKENDS_MAX, LB4_MAGLEV_MAX, LB4_REVNAT_MAX, LB4_SERVICES_MAX,
        LB4_SOCK_REVNAT_MAX,
    },
    nat::SNAT_MAX,
    prefilter::PREFILTER_MAX,
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

/// Source prefixes dropped first thing on the external device.
#[map(name = "weft_prefilter4")]
pub static PREFILTER4: LpmTrie<[u8; 4], PrefilterEntry> =
    LpmTrie::with_max_entries(PREFILTER_MAX, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Masquerade translations, both directions.
#[map(name = "weft_snat4")]
pub static SNAT4: LruHashMap<NatKey4, NatEntry4> = LruHashMap::with_max_entries(SNAT_MAX, 0);

/// Scratch space for the parsed headers, one slot per hook: kept off the 512-byte BPF stack.
#[map(name = "weft_scratch")]
pub static SCRATCH: PerCpuArray<crate::parse::Headers> =
    PerCpuArray::with_max_entries(weft_common::Hook::SLOTS, 0);

/// Scratch space for a masquerade translation (`nat`): its keys, entries and port search, kept
/// off the BPF stack.
#[map(name = "weft_snat_scratch")]
pub static SNAT_SCRATCH: PerCpuArray<crate::nat::NatScratch> = PerCpuArray::with_max_entries(1, 0);

/// Scratch space for the packet an ICMP error quotes, to checksum it.
#[map(name = "weft_quote")]
pub static QUOTE: PerCpuArray<[u8; crate::reject::QUOTE_MAX]> = PerCpuArray::with_max_entries(1, 0);

/// Service frontends (slot 0) and their active backends (slots 1..=count).
#[map(name = "weft_lb4_services")]
pub static LB4_SERVICES: HashMap<Lb4Key, Lb4Service> =
    HashMap::with_max_entries(LB4_SERVICES_MAX, 0);

/// Backends by id.
#[map(name = "weft_lb4_backends")]
pub static LB4_BACKENDS: HashMap<u32, Lb4Backend> = HashMap::with_max_entries(LB4_BACKENDS_MAX, 0);

/// The frontend of each service id, for replies.
#[map(name = "weft_lb4_revnat")]
pub static LB4_REVNAT: Array<Lb4RevNat> = Array::with_max_entries(LB4_REVNAT_MAX, 0);

/// `sessionAffinity: ClientIP`: the backend each client of a service was last given.
#[map(name = "weft_lb4_affinity")]
pub static LB4_AFFINITY: LruHashMap<Lb4AffinityKey, Lb4AffinityEntry> =
    LruHashMap::with_max_entries(LB4_AFFINITY_MAX, 0);

/// Load-balanced flows, two entries each (see `weft_common::ct`).
#[map(name = "weft_ct4")]
pub static CT4: LruHashMap<CtKey4, CtEntry4> = LruHashMap::with_max_entries(CT4_MAX, 0);

/// Socket LB: the frontend each socket asked for, by socket and the backend it was given.
#[map(name = "weft_lb4_sock_revnat")]
pub static LB4_SOCK_REVNAT: LruHashMap<Lb4SockKey, Lb4SockRevNat> =
    LruHashMap::with_max_entries(LB4_SOCK_REVNAT_MAX, 0);

/// One Maglev lookup table per service (key: service id), each an array of backend ids whose
/// length is the cluster's `maglev.tableSize`. `BPF_F_INNER_MAP` lets the agent size the inner
/// arrays at run time instead of at build time.
#[btf_map(name = "weft_lb4_maglev")]
pub static LB4_MAGLEV: HashOfMaps<
    u32,
    BtfArray<u32, 16381, { BPF_F_INNER_MAP }>,
    { LB4_MAGLEV_MAX as usize },
> = HashOfMaps::new();

const BPF_F_INNER_MAP: usize = 0x1000;
