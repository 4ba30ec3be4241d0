//! What the agent's garbage collector removes from the conntrack, affinity and masquerade maps,
//! and how often it runs. The datapath ages entries only by overwriting them (the maps are
//! LRU); the collector removes what can no longer be used, so that the tables hold live flows
//! and a reused service or backend id never inherits another's flows.
//!
//! Times are monotonic: seconds or nanoseconds of `CLOCK_MONOTONIC`, the clock of
//! `bpf_ktime_get_ns`.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use weft_common::{
    CtEntry4, CtKey4, Lb4AffinityEntry, Lb4AffinityKey, NatEntry4, NatKey4,
    ct::{CT_LIFETIME_NON_TCP_S, CT_LIFETIME_TCP_ESTABLISHED_S, ct_alive},
    nat::{NAT_DIR_EGRESS, NAT_DIR_INGRESS},
    net::IPPROTO_TCP,
};

use crate::lb_maps::FreedIds;

/// The first interval, and the longest.
pub const GC_INTERVAL_MAX: Duration = Duration::from_secs(300);
/// The shortest interval, however full the tables are.
pub const GC_INTERVAL_MIN: Duration = Duration::from_secs(10);

/// Conntrack entries that are expired, or that belong to a service or backend id that was
/// freed.
pub fn stale_ct(entries: &[(CtKey4, CtEntry4)], now_s: u32, freed: &FreedIds) -> Vec<CtKey4> {
    entries
        .iter()
        .filter(|(_, e)| !ct_alive(e, now_s) || flow_of_freed(e, freed))
        .map(|(k, _)| *k)
        .collect()
}

/// Conntrack entries of a freed service or backend id, whether expired or not.
pub fn ct_of_freed(entries: &[(CtKey4, CtEntry4)], freed: &FreedIds) -> Vec<CtKey4> {
    entries
        .iter()
        .filter(|(_, e)| flow_of_freed(e, freed))
        .map(|(k, _)| *k)
        .collect()
}

fn flow_of_freed(e: &CtEntry4, freed: &FreedIds) -> bool {
    freed.services.contains(&e.rev_nat_index) || freed.backends.contains(&e.backend_id)
}

fn affinity_of_freed(k: &Lb4AffinityKey, e: &Lb4AffinityEntry, freed: &FreedIds) -> bool {
    freed.services.contains(&k.rev_nat_index) || freed.backends.contains(&e.backend_id)
}

/// Affinity entries of a freed service or backend id.
pub fn affinities_of_freed(
    entries: &[(Lb4AffinityKey, Lb4AffinityEntry)],
    freed: &FreedIds,
) -> Vec<Lb4AffinityKey> {
    entries
        .iter()
        .filter(|(k, e)| affinity_of_freed(k, e, freed))
        .map(|(k, _)| *k)
        .collect()
}

/// Affinity entries older than their service's timeout, or of a freed id; `timeouts` holds the
/// affinity timeout of every service id that has one (an entry of any other id is stale).
pub fn stale_affinity(
    entries: &[(Lb4AffinityKey, Lb4AffinityEntry)],
    now_s: u32,
    timeouts: &BTreeMap<u16, u32>,
    freed: &FreedIds,
) -> Vec<Lb4AffinityKey> {
    entries
        .iter()
        .filter(|(k, e)| {
            let expired = timeouts
                .get(&k.rev_nat_index)
                .is_none_or(|&t| now_s.saturating_sub(e.last_used_s) > t);
            expired || affinity_of_freed(k, e, freed)
        })
        .map(|(k, _)| *k)
        .collect()
}

/// How long a masqueraded flow may stay idle: conntrack's lifetime of its protocol (the
/// masquerade entries carry no TCP state, so an idle TCP flow counts as established).
fn snat_lifetime(proto: u8) -> Duration {
    let seconds = if proto == IPPROTO_TCP {
        CT_LIFETIME_TCP_ESTABLISHED_S
    } else {
        CT_LIFETIME_NON_TCP_S
    };
    Duration::from_secs(u64::from(seconds))
}

/// Masquerade entries of flows idle for longer than their lifetime in both directions: the
/// egress entry and its ingress partner go together (a flow that only sends keeps its reply
/// entry). An ingress entry whose egress entry is gone is stale once idle.
pub fn stale_snat(entries: &[(NatKey4, NatEntry4)], now_ns: u64) -> Vec<NatKey4> {
    let by_key: BTreeMap<NatKey4, &NatEntry4> = entries.iter().map(|(k, e)| (*k, e)).collect();
    let idle = |key: &NatKey4, last_seen_ns: u64| {
        let lifetime = u64::try_from(snat_lifetime(key.proto).as_nanos()).unwrap_or(u64::MAX);
        now_ns.saturating_sub(last_seen_ns) > lifetime
    };
    let mut stale = Vec::new();
    for (key, entry) in entries {
        if key.direction != NAT_DIR_EGRESS {
            continue;
        }
        let partner = ingress_partner(key, entry);
        let last_seen = by_key.get(&partner).map_or(entry.last_seen_ns, |p| {
            p.last_seen_ns.max(entry.last_seen_ns)
        });
        if idle(key, last_seen) {
            stale.push(*key);
            if by_key.contains_key(&partner) {
                stale.push(partner);
            }
        }
    }
    let partnered: BTreeSet<NatKey4> = entries
        .iter()
        .filter(|(k, _)| k.direction == NAT_DIR_EGRESS)
        .map(|(k, e)| ingress_partner(k, e))
        .collect();
    stale.extend(
        entries
            .iter()
            .filter(|(k, e)| {
                k.direction == NAT_DIR_INGRESS && !partnered.contains(k) && idle(k, e.last_seen_ns)
            })
            .map(|(k, _)| *k),
    );
    stale
}

/// The key of the reply entry the datapath wrote with an egress entry.
fn ingress_partner(egress: &NatKey4, entry: &NatEntry4) -> NatKey4 {
    NatKey4 {
        saddr: egress.daddr,
        daddr: entry.addr,
        sport: egress.dport,
        dport: entry.port,
        proto: egress.proto,
        direction: NAT_DIR_INGRESS,
        _pad: [0; 2],
    }
}

/// The interval until the next pass, from the last one and the share of the table it deleted:
/// a pass that deleted much runs again sooner (down to [`GC_INTERVAL_MIN`]), one that deleted
/// little waits longer (up to [`GC_INTERVAL_MAX`]).
pub fn next_gc_interval(previous: Duration, deleted: usize, capacity: usize) -> Duration {
    let ratio = if capacity == 0 {
        0.0
    } else {
        deleted as f64 / capacity as f64
    };
    let next = if ratio > 0.25 {
        previous.mul_f64(1.0 - ratio.min(0.9))
    } else if ratio < 0.05 {
        previous.mul_f64(1.5)
    } else {
        previous
    };
    next.clamp(GC_INTERVAL_MIN, GC_INTERVAL_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ct(sport: u16, expires_s: u32, rev_nat_index: u16, backend_id: u32) -> (CtKey4, CtEntry4) {
        (
            CtKey4 {
                sport,
                ..CtKey4::default()
            },
            CtEntry4 {
                expires_s,
                rev_nat_index,
                backend_id,
                ..CtEntry4::default()
            },
        )
    }

    #[test]
    fn expired_flows_and_flows_of_freed_ids_are_stale() {
        let entries = [
            ct(1, 100, 1, 10),
            ct(2, 50, 1, 10),
            ct(3, 100, 2, 20),
            ct(4, 100, 1, 30),
        ];
        let freed = FreedIds {
            services: BTreeSet::from([2]),
            backends: BTreeSet::from([30]),
        };
        let sports: Vec<u16> = stale_ct(&entries, 60, &freed)
            .iter()
            .map(|k| k.sport)
            .collect();
        assert_eq!(sports, [2, 3, 4]);
        assert!(stale_ct(&entries, 10, &FreedIds::default()).is_empty());
        let of_freed: Vec<u16> = ct_of_freed(&entries, &freed)
            .iter()
            .map(|k| k.sport)
            .collect();
        assert_eq!(of_freed, [3, 4], "expiry is not looked at");
    }

    #[test]
    fn affinity_lasts_its_service_timeout() {
        let entry = |id: u16, last_used_s: u32| {
            (
                Lb4AffinityKey {
                    rev_nat_index: id,
                    ..Lb4AffinityKey::default()
                },
                Lb4AffinityEntry {
                    backend_id: 7,
                    last_used_s,
                },
            )
        };
        let timeouts = BTreeMap::from([(1, 100)]);
        let entries = [entry(1, 950), entry(1, 850), entry(2, 999)];
        let stale = stale_affinity(&entries, 1000, &timeouts, &FreedIds::default());
        let ids: Vec<u16> = stale.iter().map(|k| k.rev_nat_index).collect();
        assert_eq!(
            ids,
            [1, 2],
            "the old entry and the one of a service without affinity"
        );
        assert_eq!(stale.len(), 2);
    }

    fn snat_pair(
        sport: u16,
        proto: u8,
        egress_ns: u64,
        ingress_ns: u64,
    ) -> [(NatKey4, NatEntry4); 2] {
        let egress = NatKey4 {
            saddr: [10, 42, 0, 10],
            daddr: [203, 0, 113, 4],
            sport,
            dport: 443,
            proto,
            direction: NAT_DIR_EGRESS,
            _pad: [0; 2],
        };
        let out = NatEntry4 {
            addr: [198, 51, 100, 1],
            port: sport + 30_000,
            _pad: 0,
            last_seen_ns: egress_ns,
        };
        let back = NatEntry4 {
            addr: egress.saddr,
            port: sport,
            _pad: 0,
            last_seen_ns: ingress_ns,
        };
        [(egress, out), (ingress_partner(&egress, &out), back)]
    }

    #[test]
    fn a_masqueraded_flow_goes_when_idle_both_ways_and_its_two_entries_go_together() {
        let s = 1_000_000_000u64;
        let now = 10_000 * s;
        let mut entries = Vec::new();
        // UDP idle 100 s both ways: stale. UDP whose replies are recent: kept.
        entries.extend(snat_pair(1000, 17, now - 100 * s, now - 100 * s));
        entries.extend(snat_pair(1001, 17, now - 100 * s, now - 5 * s));
        // TCP idle 100 s: kept (established lifetime).
        entries.extend(snat_pair(1002, IPPROTO_TCP, now - 100 * s, now - 100 * s));
        // An ingress entry whose egress entry the LRU evicted, idle: stale.
        let orphan = snat_pair(1003, 17, 0, now - 100 * s)[1];
        entries.push(orphan);
        let stale = stale_snat(&entries, now);
        let expected = vec![entries[0].0, entries[1].0, orphan.0];
        assert_eq!(stale, expected);
    }

    #[test]
    fn the_interval_shrinks_when_passes_delete_much_and_grows_back() {
        let mut interval = GC_INTERVAL_MAX;
        interval = next_gc_interval(interval, 500, 1000);
        assert_eq!(interval, Duration::from_secs(150));
        for _ in 0..10 {
            interval = next_gc_interval(interval, 900, 1000);
        }
        assert_eq!(interval, GC_INTERVAL_MIN);
        assert_eq!(next_gc_interval(interval, 100, 1000), interval);
        for _ in 0..20 {
            interval = next_gc_interval(interval, 0, 1000);
        }
        assert_eq!(interval, GC_INTERVAL_MAX);
    }
}
