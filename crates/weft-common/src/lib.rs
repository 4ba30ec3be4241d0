//! The one definition of everything the kernel side and the user side of Weft must agree on:
//! map names, map key and value layouts (`#[repr(C)]`, explicit padding, size checked at compile
//! time), observation points, drop reasons and the datapath configuration record.
//!
//! `no_std` so that `weft-ebpf` links it into the BPF object; the `user` feature adds the
//! `aya::Pod` impls the loader needs.
#![no_std]

pub mod config;
pub mod ct;
pub mod endpoint;
pub mod event;
pub mod geneve;
pub mod hook;
pub mod ipcache;
pub mod lb;
pub mod mac;
pub mod metrics;
pub mod nat;
pub mod net;
pub mod node;
pub mod prefilter;
pub mod reason;

pub use config::{CONFIG_TRACE_FLAG, DatapathConfig};
pub use ct::{CtEntry4, CtKey4};
pub use endpoint::{EndpointInfo, EndpointKey};
pub use event::{Event, EventKind};
pub use hook::Hook;
pub use ipcache::IpcacheEntry;
pub use lb::{
    Lb4AffinityEntry, Lb4AffinityKey, Lb4Backend, Lb4Key, Lb4RevNat, Lb4Service, Lb4SockKey,
    Lb4SockRevNat,
};
pub use mac::Mac;
pub use metrics::{MetricsKey, MetricsValue};
pub use nat::{NatEntry4, NatKey4};
pub use node::NodeConfig;
pub use prefilter::PrefilterEntry;
pub use reason::Reason;

/// Names of the maps as they appear in the BPF object and under the node's pin directory.
pub mod maps {
    pub const EVENTS: &str = "weft_events";
    pub const METRICS: &str = "weft_metrics";
    pub const CONFIG: &str = "weft_config";
    pub const NODE: &str = "weft_node";
    pub const ENDPOINTS: &str = "weft_endpoints";
    pub const IPCACHE4: &str = "weft_ipcache4";
    pub const SNAT4: &str = "weft_snat4";
    pub const LB4_SERVICES: &str = "weft_lb4_services";
    pub const LB4_BACKENDS: &str = "weft_lb4_backends";
    pub const LB4_REVNAT: &str = "weft_lb4_revnat";
    pub const LB4_AFFINITY: &str = "weft_lb4_affinity";
    pub const LB4_MAGLEV: &str = "weft_lb4_maglev";
    pub const CT4: &str = "weft_ct4";
    pub const LB4_SOCK_REVNAT: &str = "weft_lb4_sock_revnat";
    pub const PREFILTER4: &str = "weft_prefilter4";

    /// Every map of the object; all of them are pinned in the node's pin directory.
    pub const ALL: [&str; 15] = [
        EVENTS,
        METRICS,
        CONFIG,
        NODE,
        ENDPOINTS,
        IPCACHE4,
        SNAT4,
        LB4_SERVICES,
        LB4_BACKENDS,
        LB4_REVNAT,
        LB4_AFFINITY,
        LB4_MAGLEV,
        CT4,
        LB4_SOCK_REVNAT,
        PREFILTER4,
    ];
}

/// Names of the programs in the BPF object.
pub mod programs {
    pub const FROM_CONTAINER: &str = "from_container";
    pub const TO_CONTAINER: &str = "to_container";
    pub const XDP_ENTRY: &str = "xdp_entry";
    pub const SOCK_CONNECT4: &str = "sock_connect4";
    pub const SOCK_SENDMSG4: &str = "sock_sendmsg4";
    pub const SOCK_RECVMSG4: &str = "sock_recvmsg4";
    pub const SOCK_GETPEERNAME4: &str = "sock_getpeername4";
    /// The socket LB programs, attached together to one cgroup.
    pub const SOCKET_LB: [&str; 4] = [
        SOCK_CONNECT4,
        SOCK_SENDMSG4,
        SOCK_RECVMSG4,
        SOCK_GETPEERNAME4,
    ];
    pub const FROM_NETDEV: &str = "from_netdev";
    pub const TO_NETDEV: &str = "to_netdev";
}

/// Declares that a type is plain old data for aya's map accessors.
#[cfg(feature = "user")]
macro_rules! impl_pod {
    ($($t:ty),+ $(,)?) => {
        $(
            // SAFETY: every listed type is #[repr(C)], has no implicit padding (size asserted
            // at compile time next to its definition) and every bit pattern is a valid value.
            unsafe impl aya::Pod for $t {}
        )+
    };
}

#[cfg(feature = "user")]
impl_pod!(
    Event,
    MetricsValue,
    DatapathConfig,
    NodeConfig,
    EndpointKey,
    EndpointInfo,
    IpcacheEntry,
    NatKey4,
    NatEntry4,
    Lb4Key,
    Lb4Service,
    Lb4Backend,
    Lb4RevNat,
    Lb4AffinityKey,
    Lb4AffinityEntry,
    Lb4SockKey,
    Lb4SockRevNat,
    CtKey4,
    CtEntry4,
    PrefilterEntry,
);

#[cfg(test)]
mod tests {
    extern crate std;
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_hook_and_reason_has_a_unique_name_that_reads_back() {
        let hooks: BTreeSet<_> = Hook::ALL.iter().map(|h| h.name()).collect();
        assert_eq!(hooks.len(), Hook::ALL.len());
        for h in Hook::ALL {
            assert_eq!(Hook::from_name(h.name()), Some(h));
            assert_eq!(Hook::from_u8(h as u8), Some(h));
        }
        let reasons: BTreeSet<_> = Reason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(reasons.len(), Reason::ALL.len());
        for &r in Reason::ALL {
            assert_eq!(Reason::from_name(r.name()), Some(r));
            assert_eq!(Reason::from_u8(r as u8), Some(r));
            assert_eq!(
                r.is_drop(),
                !matches!(r, Reason::Forwarded | Reason::Transmitted)
            );
        }
        assert_eq!(Reason::from_u8(63), None);
    }

    #[test]
    fn metrics_slots_are_distinct_in_range_and_read_back() {
        let mut seen = BTreeSet::new();
        for hook in Hook::ALL {
            for &reason in Reason::ALL {
                let key = MetricsKey { hook, reason };
                let index = key.index();
                assert!(index < MetricsKey::ENTRIES);
                assert!(seen.insert(index), "{key:?} collides");
                assert_eq!(MetricsKey::from_index(index), Some(key));
            }
        }
        assert_eq!(MetricsKey::from_index(0), None, "hook 0 is unused");
    }

    #[test]
    fn the_kernel_index_never_leaves_the_array_even_for_garbage() {
        for hook in 0..=u8::MAX {
            for reason in [0, 1, 63, 64, 200, 255] {
                assert!(metrics::index_of(hook, reason) < MetricsKey::ENTRIES);
            }
        }
    }

    #[test]
    fn trace_flag_is_read_from_the_config_record() {
        assert!(!DatapathConfig::default().trace_enabled());
        let c = DatapathConfig {
            flags: CONFIG_TRACE_FLAG,
            _pad: 0,
        };
        assert!(c.trace_enabled());
    }
}
