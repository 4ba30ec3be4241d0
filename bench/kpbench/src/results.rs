//! The raw figures of one stack's run, as written to `bench/results/<stack>.json` and read back
//! by the report.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StackRun {
    /// `weft`, `weft-socklb`, `iptables`, `iptables-legacy` or `nftables`.
    pub stack: String,
    pub lab: String,
    /// Seconds from the lab's creation to its removal.
    pub seconds: f64,
    pub counts: Vec<CountRun>,
}

/// Everything measured with `services` services loaded.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CountRun {
    pub services: u32,
    pub program: Program,
    pub memory: Memory,
    pub connect_first: Latency,
    pub connect_last: Latency,
    /// Weft: service conntrack entries from the client pod on its node right after the
    /// connects (one per connection balanced in tc; none with socket LB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_service_flows: Option<usize>,
    /// Through the first service (its two endpoints on the other node).
    pub service: Paths,
    /// Client pod to one of those endpoints, no service.
    pub direct: Paths,
    pub follow: Follow,
}

/// Getting the services into the datapath.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Program {
    /// Services added by this step (Weft applies only those; kube-proxy re-syncs all).
    pub added: u32,
    /// Weft: `weft lab apply` of the added objects; kube-proxy: generating the rules (the
    /// client node's).
    pub prepare_ms: f64,
    /// Weft: from the command's return until both agents logged the new frontend count;
    /// kube-proxy: the loader (`iptables-restore` / `nft -f`) on the client's node.
    pub apply_ms: f64,
    /// From the start of the step until every node has the services.
    pub total_ms: f64,
    /// kube-proxy only: rules and bytes handed to the loader on one node.
    pub rules: usize,
    pub bytes: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Memory {
    /// Change of Slab + VmallocUsed + Percpu in /proc/meminfo over the programming step, kB.
    pub kernel_delta_kb: i64,
    /// The same over an idle interval of the same length just before: the machine's noise.
    pub idle_delta_kb: i64,
    /// Weft: `bytes_memlock` of the maps pinned under the client node's pin directory.
    pub bpf_memlock_bytes: u64,
    pub bpf_maps: usize,
    /// Weft: the client node's agent's resident memory, kB.
    pub agent_rss_kb: u64,
}

/// Connect latency (SYN to established), one connection at a time.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// Connections established (the percentiles are over these).
    pub count: usize,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    /// Connections not established within the probe's timeout (1 s: a lost SYN).
    #[serde(default)]
    pub timed_out: usize,
}

/// One figure per repeat, for each measure of one path.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Paths {
    pub rr_p50_us: Vec<f64>,
    pub rr_p90_us: Vec<f64>,
    pub crr_per_s: Vec<f64>,
    pub tput_gbps: Vec<f64>,
}

/// Changing one endpoint of the last service until new connections reach the new backend.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Follow {
    /// From the start of the change to the first connection answered by the new backend.
    pub ms: f64,
    /// The part of it spent in the change itself (apply command or the client node's sync).
    pub change_ms: f64,
    /// Connections made after the change, answered by the removed backend.
    pub stale: u32,
    pub attempts: u32,
}
