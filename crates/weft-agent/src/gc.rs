//! The garbage collector of the conntrack, affinity and masquerade maps, on the adaptive
//! interval of `weft_model::ct_gc`: 5 minutes at first, shorter while passes find much to
//! delete, never under 10 seconds.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use weft_common::ct::CT4_MAX;
use weft_datapath::Datapath;
use weft_model::{
    ct_gc::{GC_INTERVAL_MAX, next_gc_interval, stale_affinity, stale_ct, stale_snat},
    lb_maps::FreedIds,
};

/// What one pass deleted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub flows: usize,
    pub flows_deleted: usize,
    pub affinities_deleted: usize,
    pub snat_deleted: usize,
}

/// When the next pass is due.
#[derive(Debug)]
pub struct GcSchedule {
    interval: Duration,
    next: Instant,
}

impl GcSchedule {
    pub fn starting(now: Instant) -> GcSchedule {
        GcSchedule {
            interval: GC_INTERVAL_MAX,
            next: now + GC_INTERVAL_MAX,
        }
    }

    pub fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Sets the next pass from what this one deleted.
    pub fn passed(&mut self, now: Instant, report: &GcReport) {
        let deleted = report.flows_deleted + report.snat_deleted;
        self.interval = next_gc_interval(self.interval, deleted, CT4_MAX as usize);
        self.next = now + self.interval;
    }
}

/// One pass at monotonic time `now_ns`: expired flows, affinities older than their service's
/// timeout (`timeouts`, by service id), masquerade entries of expired flows.
pub fn collect<D: Datapath>(
    datapath: &mut D,
    now_ns: u64,
    timeouts: &BTreeMap<u16, u32>,
) -> anyhow::Result<GcReport> {
    let now_s = u32::try_from(now_ns / 1_000_000_000).unwrap_or(u32::MAX);
    let none = FreedIds::default();
    let flows = datapath.ct_entries()?;
    let mut report = GcReport {
        flows: flows.len(),
        ..GcReport::default()
    };
    for key in stale_ct(&flows, now_s, &none) {
        datapath.delete_ct(key)?;
        report.flows_deleted += 1;
    }
    let affinities = datapath.affinity_entries()?;
    for key in stale_affinity(&affinities, now_s, timeouts, &none) {
        datapath.delete_affinity(key)?;
        report.affinities_deleted += 1;
    }
    for key in stale_snat(&datapath.snat_entries()?, now_s) {
        datapath.delete_snat(key)?;
        report.snat_deleted += 1;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use weft_common::{
        CtEntry4, CtKey4, Lb4AffinityEntry, Lb4AffinityKey, NatEntry4, NatKey4,
        nat::{NAT_DIR_EGRESS, ingress_partner},
    };
    use weft_datapath::FakeDatapath;

    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_pass_deletes_expired_flows_and_old_affinities_only() {
        let mut dp = FakeDatapath::default();
        for (sport, expires_s) in [(1, 900), (2, 1100)] {
            let key = CtKey4 {
                sport,
                ..CtKey4::default()
            };
            let entry = CtEntry4 {
                expires_s,
                ..CtEntry4::default()
            };
            dp.ct.insert(key, entry);
        }
        for (client, last_used_s) in [(1, 990), (2, 100)] {
            let key = Lb4AffinityKey {
                client: [10, 42, 0, client],
                rev_nat_index: 3,
                _pad: 0,
            };
            let entry = Lb4AffinityEntry {
                backend_id: 1,
                last_used_s,
            };
            dp.affinity.insert(key, entry);
        }
        let report = collect(&mut dp, 1000 * S, &BTreeMap::from([(3, 60)])).unwrap();
        assert_eq!(report.flows, 2);
        assert_eq!(report.flows_deleted, 1);
        assert_eq!(report.affinities_deleted, 1);
        assert_eq!(dp.ct.keys().map(|k| k.sport).collect::<Vec<_>>(), [2]);
        assert_eq!(
            dp.affinity.keys().map(|k| k.client[3]).collect::<Vec<_>>(),
            [1]
        );
    }

    #[test]
    fn a_pass_deletes_both_entries_of_an_expired_masquerade_flow_and_keeps_live_ones() {
        let mut dp = FakeDatapath::default();
        for (sport, expires_s) in [(40000, 999), (40001, 1001)] {
            let egress = NatKey4 {
                saddr: [10, 42, 0, 10],
                daddr: [203, 0, 113, 4],
                sport,
                dport: 80,
                proto: 6,
                direction: NAT_DIR_EGRESS,
                _pad: [0; 2],
            };
            let out = NatEntry4 {
                addr: [198, 51, 100, 1],
                port: sport,
                expires_s,
                ..NatEntry4::default()
            };
            let back = NatEntry4 {
                addr: egress.saddr,
                port: sport,
                expires_s,
                ..NatEntry4::default()
            };
            dp.snat.insert(egress, out);
            dp.snat.insert(ingress_partner(&egress, &out), back);
        }
        let report = collect(&mut dp, 1000 * S, &BTreeMap::new()).unwrap();
        assert_eq!(report.snat_deleted, 2);
        assert!(
            dp.snat.values().all(|e| e.expires_s == 1001),
            "{:?}",
            dp.snat
        );
        assert_eq!(dp.snat.len(), 2);
    }

    #[test]
    fn the_schedule_starts_at_five_minutes_and_shortens_after_a_full_pass() {
        let start = Instant::now();
        let mut schedule = GcSchedule::starting(start);
        assert!(!schedule.due(start + Duration::from_secs(299)));
        assert!(schedule.due(start + GC_INTERVAL_MAX));
        let full = GcReport {
            flows_deleted: CT4_MAX as usize / 2,
            ..GcReport::default()
        };
        schedule.passed(start, &full);
        assert_eq!(schedule.interval(), Duration::from_secs(150));
    }
}
