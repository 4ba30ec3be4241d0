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
    /// Length of the service's table in `weft_lb4_maglev` ([`LB_ALG_MAGLEV`]), else 0.
    pub maglev_size: u32,
}

pub const SVC_FLAG_AFFINITY: u16 = 1 << 0;
/// `internalTrafficPolicy: Local`: the slots hold only this node's backends.
pub const SVC_FLAG_LOCAL_ONLY: u16 = 1 << 1;
/// North-south frontends: a NodePort on one of this node's addresses, an `externalIPs` address,
/// a LoadBalancer ingress address. A frontend without any of these is a ClusterIP, reached
/// from inside the cluster only.
pub const SVC_FLAG_NODEPORT: u16 = 1 << 2;
pub const SVC_FLAG_EXTERNAL_IP: u16 = 1 << 3;
pub const SVC_FLAG_LOADBALANCER: u16 = 1 << 4;
/// North-south flows of this frontend are forwarded with DSR (the backend's node replies to
/// the client itself), else with SNAT through this node (`loadBalancer.mode`; `hybrid` sets it
/// on TCP frontends only).
pub const SVC_FLAG_DSR: u16 = 1 << 5;
/// `externalTrafficPolicy: Local`: the external scope's slots hold only this node's backends
/// (none: the traffic is dropped) and the client address is kept.
pub const SVC_FLAG_EXT_LOCAL: u16 = 1 << 6;
/// The frontend has a second entry at [`LB_SCOPE_INTERNAL`], with the backends traffic from
/// inside the cluster uses (all of them when only the external policy is Local). Lookups from
/// pods and nodes take that entry; lookups of traffic from outside take the external one.
pub const SVC_FLAG_TWO_SCOPES: u16 = 1 << 7;

/// Whether a service entry's frontend is reachable from outside the cluster.
pub const fn is_north_south(flags: u16) -> bool {
    flags & (SVC_FLAG_NODEPORT | SVC_FLAG_EXTERNAL_IP | SVC_FLAG_LOADBALANCER) != 0
}

/// The source a pod sees on a flow it opened to a service that gave it itself as backend
/// (hairpin): a pod drops packets from its own address arriving on its interface. Cilium's
/// `IPV4_LOOPBACK`, link-local, never a pod's or node's address.
pub const LB_LOOPBACK_ADDR: [u8; 4] = [169, 254, 42, 1];

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

/// Key of `weft_lb4_sock_revnat`: a socket (its cookie) and the backend socket LB gave it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lb4SockKey {
    pub cookie: u64,
    pub address: [u8; 4],
    pub port: u16,
    pub _pad: u16,
}

/// Value of `weft_lb4_sock_revnat`: the frontend the socket asked for, shown back to it by
/// `recvmsg` and `getpeername`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lb4SockRevNat {
    pub address: [u8; 4],
    pub port: u16,
    pub rev_nat_index: u16,
}

/// Sizes the object declares for the load-balancer maps; the agent creates them with
/// `bpf.lbMapMax` entries instead (the maps indexed by service id with at most 65,536), and reads
/// back the size each map has.
///
/// Entries of `weft_lb4_services` (service entries plus backend slots).
pub const LB4_SERVICES_MAX: u32 = 65_536;
pub const LB4_BACKENDS_MAX: u32 = 65_536;
/// Service ids are u16 and 0 means none: the reverse-NAT array covers every id.
pub const LB4_REVNAT_MAX: u32 = 65_536;
/// Inner tables of `weft_lb4_maglev`, keyed by service id.
pub const LB4_MAGLEV_MAX: u32 = 65_536;
pub const LB4_AFFINITY_MAX: u32 = 65_536;
/// LRU: a closed socket's entry is never looked up again (cookies are not reused) and ages out.
pub const LB4_SOCK_REVNAT_MAX: u32 = 262_144;

/// The hash that picks a flow's Maglev slot: of the tuple as the client sent it, the same on
/// every node (unlike the kernel's skb hash, which is seeded per boot), so any node that sees
/// a flow picks the same backend.
pub const fn flow_hash(saddr: [u8; 4], daddr: [u8; 4], sport: u16, dport: u16, proto: u8) -> u32 {
    let mut h = 0x9e37_79b9u32;
    h = mix(h, u32::from_be_bytes(saddr));
    h = mix(h, u32::from_be_bytes(daddr));
    h = mix(h, ((sport as u32) << 16) | dport as u32);
    h = mix(h, proto as u32);
    finalize(h)
}

/// The hash that picks a socket's Maglev slot at `connect()`/`sendmsg()`, where the source port
/// is not chosen yet: of the socket cookie, unique per socket for the life of the kernel.
pub const fn cookie_hash(cookie: u64) -> u32 {
    let h = mix(0x9e37_79b9u32, cookie as u32);
    finalize(mix(h, (cookie >> 32) as u32))
}

/// One round of MurmurHash3's 32-bit block mixing.
const fn mix(h: u32, word: u32) -> u32 {
    let k = word
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// MurmurHash3's finalizer: every input bit reaches every output bit.
const fn finalize(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

const _: () = assert!(core::mem::size_of::<Lb4Key>() == 12);
const _: () = assert!(core::mem::size_of::<Lb4Service>() == 20);
const _: () = assert!(core::mem::size_of::<Lb4Backend>() == 8);
const _: () = assert!(core::mem::size_of::<Lb4RevNat>() == 8);
const _: () = assert!(core::mem::size_of::<Lb4AffinityKey>() == 8);
const _: () = assert!(core::mem::size_of::<Lb4AffinityEntry>() == 8);
const _: () = assert!(core::mem::size_of::<Lb4SockKey>() == 16);
const _: () = assert!(core::mem::size_of::<Lb4SockRevNat>() == 8);

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn flow_hash_is_fixed_and_spreads_neighbouring_tuples() {
        // A fixed value: nodes built at different times must agree.
        let h = flow_hash([10, 42, 0, 10], [10, 43, 0, 20], 40000, 80, 6);
        assert_eq!(h, 2_221_808_920);
        // Consecutive source ports spread over a 7-slot table.
        let mut slots = [0u32; 7];
        for sport in 40000..47000u16 {
            slots[(flow_hash([10, 42, 0, 10], [10, 43, 0, 20], sport, 80, 6) % 7) as usize] += 1;
        }
        assert!(slots.iter().all(|&n| (900..1100).contains(&n)), "{slots:?}");
        assert_ne!(
            h,
            flow_hash([10, 42, 0, 10], [10, 43, 0, 20], 40000, 80, 17)
        );
    }

    #[test]
    fn cookie_hash_spreads_consecutive_cookies_and_sees_the_high_word() {
        let mut slots = [0u32; 7];
        for cookie in 4096..11096u64 {
            slots[(cookie_hash(cookie) % 7) as usize] += 1;
        }
        assert!(slots.iter().all(|&n| (900..1100).contains(&n)), "{slots:?}");
        assert_ne!(cookie_hash(1), cookie_hash(1 | 1 << 32));
    }
}
