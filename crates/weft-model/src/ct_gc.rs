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
    ct::ct_alive,
    nat::{NAT_DIR_EGRESS, NAT_DIR_INGRESS, ingress_partner, nat_alive},
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

/// Masquerade entries of expired flows. The datapath keeps both entries of a flow in step
/// (state and expiry, see `weft_common::nat`); a flow goes when neither of its entries lives,
/// and its two entries go together. An entry without its partner goes once it has expired.
pub fn stale_snat(entries: &[(NatKey4, NatEntry4)], now_s: u32) -> Vec<NatKey4> {
    let by_key: BTreeMap<NatKey4, &NatEntry4> = entries.iter().map(|(k, e)| (*k, e)).collect();
    let mut partnered = BTreeSet::new();
    let mut stale = Vec::new();
    for (key, entry) in entries
        .iter()
        .filter(|(k, _)| k.direction == NAT_DIR_EGRESS)
    {
        let partner_key = ingress_partner(key, entry);
        let partner = by_key
            .get(&partner_key)
            .filter(|back| back.addr == key.saddr && back.port == key.sport);
        if partner.is_some() {
            partnered.insert(partner_key);
        }
        let alive = nat_alive(entry, now_s) || partner.is_some_and(|back| nat_alive(back, now_s));
        if !alive {
            stale.push(*key);
            if partner.is_some() {
                stale.push(partner_key);
            }
        }
    }
    stale.extend(
        entries
            .iter()
            .filter(|(k, e)| {
                k.direction == NAT_DIR_INGRESS && !partnered.contains(k) && !nat_alive(e, now_s)
            })
            .map(|(k, _)| *k),
    );
    stale
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

    /// A masqueraded flow's two entries, expiring at `egress_s` and `ingress_s`.
    fn snat_pair(sport: u16, egress_s: u32, ingress_s: u32) -> [(NatKey4, NatEntry4); 2] {
        let egress = NatKey4 {
            saddr: [10, 42, 0, 10],
            daddr: [203, 0, 113, 4],
            sport,
            dport: 443,
            proto: 6,
            direction: NAT_DIR_EGRESS,
            _pad: [0; 2],
        };
        let out = NatEntry4 {
            addr: [198, 51, 100, 1],
            port: sport + 30_000,
            expires_s: egress_s,
            ..NatEntry4::default()
        };
        let back = NatEntry4 {
            addr: egress.saddr,
            port: sport,
            expires_s: ingress_s,
            ..NatEntry4::default()
        };
        [(egress, out), (ingress_partner(&egress, &out), back)]
    }

    #[test]
    fn a_masqueraded_flow_goes_when_it_has_expired_and_its_two_entries_go_together() {
        let now = 10_000;
        let mut entries = Vec::new();
        // Expired both ways (a closed flow 10 s on, a half-open one 60 s on): stale.
        entries.extend(snat_pair(1000, now - 1, now - 1));
        entries.extend(snat_pair(1001, now, now));
        // Alive: established, or one entry refreshed later than the other.
        entries.extend(snat_pair(1002, now + 7000, now + 7000));
        entries.extend(snat_pair(1003, now - 50, now + 5));
        // An ingress entry whose egress entry the LRU evicted: stale once expired, kept while
        // alive.
        let orphan = snat_pair(1004, 0, now - 1)[1];
        let live_orphan = snat_pair(1005, 0, now + 1)[1];
        entries.extend([orphan, live_orphan]);
        // An egress entry whose reply tuple another flow holds now: it goes alone.
        let [(moved, mut moved_out), _] = snat_pair(1006, now - 1, 0);
        moved_out.port = entries[0].1.port;
        entries.push((moved, moved_out));
        let stale = stale_snat(&entries, now);
        let expected = vec![
            entries[0].0,
            entries[1].0,
            entries[2].0,
            entries[3].0,
            moved,
            orphan.0,
        ];
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
