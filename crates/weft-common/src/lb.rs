//! The service load-balancer maps (IPv4). A service frontend is (address, port, protocol). Its
//! entries in `weft_lb4_services` are keyed by slot: slot 0 is the service itself (backend count,
//! service id, algorithm, affinity); slots 1..=count name its active backends, for random
//! selection and for listing. Backends live once in `weft_lb4_backends` by id, however many
//! services use them. The service id doubles as the reverse-NAT index: replies get the
//! frontend back from `weft_lb4_revnat`.
//!
//! Addresses are in network order, ports in host order (as in `nat`).

/// Key of `weft_lb4_services`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lb4Key {
    pub address: [u8; 4],
    pub port: u16,
    pub proto: u8,
    /// [`LB_SCOPE_EXTERNAL`] or [`LB_SCOPE_INTERNAL`]: the two backend sets of a frontend
    /// whose traffic policy differs for traffic from inside and outside the cluster.
    pub scope: u8,
    /// 0 for the service entry, 1..=count for its active backends.
    pub slot: u16,
    pub _pad: [u8; 2],
}

pub const LB_SCOPE_EXTERNAL: u8 = 0;
pub const LB_SCOPE_INTERNAL: u8 = 1;

/// Value of `weft_lb4_services`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lb4Service {
    /// Backend slots: the backend's id. Service entry: 0.
    pub backend_id: u32,
    /// Service entry: number of active backends (slots 1..=count). Backend slots: 0.
    pub count: u16,
    /// The service id: key of `weft_lb4_revnat`, of the service's Maglev table and of its
    /// affinity entries.
    pub rev_nat_index: u16,
    /// `SVC_FLAG_*`.
    pub flags: u16,
    /// [`LB_ALG_RANDOM`] or [`LB_ALG_MAGLEV`].
    pub algorithm: u8,
    pub _pad: u8,
    /// `sessionAffinity: ClientIP` timeout, when [`SVC_FLAG_AFFINITY`] is set.
    pub affinity_timeout_s: u32,
}

pub const SVC_FLAG_AFFINITY: u16 = 1 << 0;
/// `internalTrafficPolicy: Local`: the slots hold only this node's backends.
pub const SVC_FLAG_LOCAL_ONLY: u16 = 1 << 1;

pub const LB_ALG_RANDOM: u8 = 0;
pub const LB_ALG_MAGLEV: u8 = 1;

/// Value of `weft_lb4_backends`, keyed by backend id (u32, never 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lb4Backend {
    pub address: [u8; 4],
    pub port: u16,
    pub proto: u8,
    /// `BACKEND_FLAG_*`.
    pub flags: u8,
}

/// Terminating: flows that have it keep it; no new flow is given it.
pub const BACKEND_FLAG_TERMINATING: u8 = 1 << 0;

/// Value of `weft_lb4_revnat` (an array indexed by service id): the frontend replies come from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lb4RevNat {
    pub address: [u8; 4],
    pub port: u16,
    pub _pad: u16,
}

/// Key of `weft_lb4_affinity`: one client of one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lb4AffinityKey {
    pub client: [u8; 4],
    pub rev_nat_index: u16,
    pub _pad: u16,
}

/// Value of `weft_lb4_affinity`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lb4AffinityEntry {
    pub backend_id: u32,
    /// Monotonic seconds (bpf_ktime_get_ns / 1e9) of the last new flow that used it.
    pub last_used_s: u32,
}

/// Entries of `weft_lb4_services` (service entries plus backend slots).
pub const LB4_SERVICES_MAX: u32 = 65_536;
pub const LB4_BACKENDS_MAX: u32 = 65_536;
/// Service ids are u16 and 0 means none: the reverse-NAT array covers every id.
pub const LB4_REVNAT_MAX: u32 = 65_536;
pub const LB4_AFFINITY_MAX: u32 = 65_536;

const _: () = assert!(core::mem::size_of::<Lb4Key>() == 12);
const _: () = assert!(core::mem::size_of::<Lb4Service>() == 16);
const _: () = assert!(core::mem::size_of::<Lb4Backend>() == 8);
const _: () = assert!(core::mem::size_of::<Lb4RevNat>() == 8);
const _: () = assert!(core::mem::size_of::<Lb4AffinityKey>() == 8);
const _: () = assert!(core::mem::size_of::<Lb4AffinityEntry>() == 8);
