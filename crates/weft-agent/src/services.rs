//! The service load-balancer maps, kept equal to what `weft-model` computes from the Services
//! and EndpointSlices. The agent remembers what it wrote, so a pass writes only the entries
//! that differ and rebuilds only the Maglev tables whose backends changed; it reads the maps
//! back when it starts (adopting the ids a previous agent gave) and after a failed pass.
//!
//! A pass goes in three steps so that the datapath never sees a service pointing at something
//! missing: retire what is gone (frontends, then the flows and affinities of freed ids), write
//! what is new or changed (backends, reverse NAT, Maglev tables, backend slots, and the service
//! entries last), then trim (slots past a shrunk count, unused backends and tables).
//!
//! The maps have a fixed size (`bpf.lbMapMax`, read back from the kernel). Before writing, a
//! pass decides which Services fit (`weft_model::lb_capacity`): those that do not are refused
//! whole — none of their entries is written — and named in the agent's status; the others are
//! programmed. So no write meets a full map.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use weft_api::{LbMapStatus, LbStatus, RefusedService};
use weft_common::{Lb4Key, Lb4RevNat};
use weft_datapath::Datapath;
use weft_model::{
    ClusterConfig, Store,
    ct_gc::{affinities_of_freed, ct_of_freed},
    ipcache::map_changes,
    lb::{HealthCheckPort, LbIds, LbState, assign_admitted_ids, lb_state_reusing},
    lb_capacity::{LbCapacity, LbMap, LbUsage, Refusal, fit},
    lb_maps::{FreedIds, LbMapContents, freed_ids, ids_from_maps, lb_map_contents},
};

use crate::log;

/// What the agent knows of the service maps.
#[derive(Debug, Default)]
pub struct ServiceMaps {
    /// The desired state of the last pass, refused Services included (its Maglev tables are
    /// reused when their backends are unchanged). The ids say which frontends are programmed.
    state: LbState,
    ids: LbIds,
    /// The maps' contents as last written; `None` until read (at start, after a failure).
    applied: Option<LbMapContents>,
    room: Room,
}

/// How the last pass found the maps' room.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Room {
    /// The maps' sizes, from the datapath; `None` before the first pass.
    pub capacity: Option<LbCapacity>,
    /// Services programmed, every frontend of each.
    pub services: usize,
    /// Services left out whole, in the order they were considered.
    pub refused: Vec<Refusal>,
    /// What the maps hold.
    pub used: LbUsage,
    /// What all the Services need.
    pub wanted: LbUsage,
}

/// What one pass changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServiceReport {
    /// Frontends programmed.
    pub frontends: usize,
    /// Services refused for want of room.
    pub refused: usize,
    pub entries_written: usize,
    pub entries_deleted: usize,
    pub maglev_tables_written: usize,
    pub flows_purged: usize,
}

impl ServiceReport {
    pub fn changed(&self) -> bool {
        self.entries_written + self.entries_deleted + self.maglev_tables_written + self.flows_purged
            > 0
    }

    /// A first pass followed by `then`.
    fn and_then(self, then: ServiceReport) -> ServiceReport {
        ServiceReport {
            frontends: then.frontends,
            refused: then.refused,
            entries_written: self.entries_written + then.entries_written,
            entries_deleted: self.entries_deleted + then.entries_deleted,
            maglev_tables_written: self.maglev_tables_written + then.maglev_tables_written,
            flows_purged: self.flows_purged + then.flows_purged,
        }
    }
}

impl ServiceMaps {
    pub fn ids(&self) -> &LbIds {
        &self.ids
    }

    pub fn room(&self) -> &Room {
        &self.room
    }

    /// The `healthCheckNodePort`s of the programmed Services.
    pub fn health_checks(&self) -> impl Iterator<Item = &HealthCheckPort> {
        let refused: BTreeSet<_> = self.room.refused.iter().map(|r| &r.service).collect();
        (self.state.health_checks.iter()).filter(move |h| !refused.contains(&h.service))
    }

    /// The affinity timeout of every service id (of either scope) that has session affinity.
    pub fn affinity_timeouts(&self) -> BTreeMap<u16, u32> {
        self.state.affinity_timeouts(&self.ids)
    }

    /// Brings the maps to the state of `store` for `node`, with the Services that fit. On
    /// error the maps may be half-way; the next pass reads them back and finishes.
    pub fn reconcile<D: Datapath>(
        &mut self,
        datapath: &mut D,
        store: &Store,
        node: &str,
        config: &ClusterConfig,
    ) -> anyhow::Result<ServiceReport> {
        let desired = lb_state_reusing(store, node, config, &self.state);
        for conflict in &desired.conflicts {
            log!(
                "services: {} claimed by {} and {}; {} keeps it",
                conflict.frontend,
                conflict.kept,
                conflict.dropped,
                conflict.kept
            );
        }
        if desired.refused != self.state.refused {
            for refused in &desired.refused {
                log!(
                    "services: {} of {} is not programmed: {}",
                    refused.frontend,
                    refused.service,
                    refused.reason
                );
            }
        }
        let mut report = self.pass(datapath, &desired)?;
        if report.refused > 0 && report.entries_deleted > 0 {
            // The fit counted the entries this pass deleted as taken; now they are not.
            report = report.and_then(self.pass(datapath, &desired)?);
        }
        self.state = desired;
        Ok(report)
    }

    /// Writes the Services of `desired` that fit.
    fn pass<D: Datapath>(
        &mut self,
        datapath: &mut D,
        desired: &LbState,
    ) -> anyhow::Result<ServiceReport> {
        let applied = match self.applied.take() {
            Some(applied) => applied,
            None => {
                let applied = read_applied(datapath)?;
                self.ids = ids_from_maps(&applied.services, &applied.backends);
                applied
            }
        };
        let capacity = datapath.lb_capacity().context("reading the maps' sizes")?;
        let fit = fit(desired, &applied, &self.ids, &capacity);
        let refused = fit.refused_services();
        let admitted = |lb: &weft_model::lb::ServiceLb| !refused.contains(&lb.service);
        let ids = assign_admitted_ids(desired, admitted, &self.ids, capacity.max_service_id())?;
        let contents = lb_map_contents(desired, &ids);
        let freed = freed_ids(&self.ids, &ids);
        let mut report = ServiceReport {
            frontends: ids.services.len(),
            refused: fit.refused.len(),
            ..ServiceReport::default()
        };
        apply(datapath, &applied, &contents, &freed, &mut report)?;
        self.room = Room {
            capacity: Some(capacity),
            services: fit.services - fit.refused.len(),
            used: LbUsage::of(&contents),
            wanted: fit.wanted,
            refused: fit.refused,
        };
        self.ids = ids;
        self.applied = Some(contents);
        Ok(report)
    }
}

/// How many refused Services the status names.
const REFUSED_NAMED: usize = 10;

impl ServiceMaps {
    /// The maps' use and room, for the agent's status; `None` before the first pass.
    /// `lb_map_max` is the configured `bpf.lbMapMax`.
    pub fn status(&self, lb_map_max: u32) -> Option<LbStatus> {
        let room = &self.room;
        let capacity = room.capacity?;
        let configured = LbCapacity::for_lb_map_max(lb_map_max);
        let maps = LbMap::ALL
            .iter()
            .map(|&map| LbMapStatus {
                map: map.name().to_string(),
                unit: map.entry_kind().to_string(),
                used: room.used.get(map),
                room: capacity.room(map),
                max_entries: capacity.max_entries(map),
                configured: configured.max_entries(map),
                wanted: room.wanted.get(map),
                refused: room.refused.iter().filter(|r| r.map == map).count(),
            })
            .collect();
        let refused_first = (room.refused.iter().take(REFUSED_NAMED))
            .map(|r| RefusedService {
                service: r.service.to_string(),
                map: r.map.name().to_string(),
            })
            .collect();
        Some(LbStatus {
            services: room.services,
            frontends: self.ids.services.len(),
            refused: room.refused.len(),
            refused_first,
            lb_map_max,
            lb_map_max_needed: room.wanted.lb_map_max_needed(),
            maps,
        })
    }

    /// Why Services are not programmed, when some are not: which maps lack room, and the
    /// `bpf.lbMapMax` that would hold them all.
    pub fn refusal_reason(&self) -> Option<String> {
        let room = &self.room;
        let capacity = room.capacity?;
        if room.refused.is_empty() {
            return None;
        }
        let short: Vec<String> = LbMap::ALL
            .iter()
            .filter(|&&map| room.wanted.get(map) > capacity.room(map))
            .map(|&map| {
                format!(
                    "{} has room for {} {}, the Services need {}",
                    map.name(),
                    capacity.room(map),
                    map.entry_kind(),
                    room.wanted.get(map)
                )
            })
            .collect();
        let why = if short.is_empty() {
            "the maps are full until stale entries are deleted".to_string()
        } else {
            short.join("; ")
        };
        let fix = match room.wanted.lb_map_max_needed() {
            Some(n) => format!("bpf.lbMapMax {n} would hold them all"),
            None => "no bpf.lbMapMax holds them all".to_string(),
        };
        Some(format!(
            "{} of {} Services are not programmed (none of their entries is written): {why}; {fix}",
            room.refused.len(),
            room.services + room.refused.len()
        ))
    }
}

/// The maps' contents: services and backends whole, reverse NAT and Maglev tables at the ids
/// the service entries name.
fn read_applied<D: Datapath>(datapath: &D) -> anyhow::Result<LbMapContents> {
    let services = datapath.lb_services()?;
    let backends = datapath.lb_backends()?;
    let mut revnat = BTreeMap::new();
    let mut maglev = BTreeMap::new();
    for (key, svc) in &services {
        if key.slot != 0 || svc.rev_nat_index == 0 {
            continue;
        }
        let id = svc.rev_nat_index;
        let entry = datapath.lb_revnat(id)?;
        if entry != Lb4RevNat::default() {
            revnat.insert(id, entry);
        }
        if let Some(table) = datapath.maglev_table(id)? {
            maglev.insert(id, table);
        }
    }
    Ok(LbMapContents {
        services,
        backends,
        revnat,
        maglev,
    })
}

fn apply<D: Datapath>(
    datapath: &mut D,
    applied: &LbMapContents,
    desired: &LbMapContents,
    freed: &FreedIds,
    report: &mut ServiceReport,
) -> anyhow::Result<()> {
    let retired = retire(datapath, applied, desired, freed, report)?;
    write(datapath, applied, desired, report)?;
    trim(datapath, applied, desired, &retired, report)
}

/// What the entries of one frontend (its service entry and its slots) have in common.
fn frontend_of(key: &Lb4Key) -> ([u8; 4], u16, u8, u8) {
    (key.address, key.port, key.proto, key.scope)
}

/// Removes the frontends that are gone, then every flow and affinity recorded under an id
/// that was freed (before the id names something else). Returns the keys it deleted.
fn retire<D: Datapath>(
    datapath: &mut D,
    applied: &LbMapContents,
    desired: &LbMapContents,
    freed: &FreedIds,
    report: &mut ServiceReport,
) -> anyhow::Result<BTreeSet<Lb4Key>> {
    let desired_frontends: BTreeSet<_> = desired.services.keys().map(frontend_of).collect();
    let gone = applied
        .services
        .keys()
        .copied()
        .filter(|k| !desired_frontends.contains(&frontend_of(k)));
    // Service entries first, so that no new flow gets a slot about to go.
    let (entries, slots): (Vec<Lb4Key>, Vec<Lb4Key>) = gone.partition(|k| k.slot == 0);
    let mut retired = BTreeSet::new();
    for key in entries.into_iter().chain(slots) {
        datapath.delete_lb_service(key)?;
        retired.insert(key);
        report.entries_deleted += 1;
    }
    if !freed.is_empty() {
        report.flows_purged += purge(datapath, freed)?;
    }
    Ok(retired)
}

/// Deletes the conntrack and affinity entries of freed ids; returns how many.
pub fn purge<D: Datapath>(datapath: &mut D, freed: &FreedIds) -> anyhow::Result<usize> {
    let flows = ct_of_freed(&datapath.ct_entries()?, freed);
    for key in &flows {
        datapath.delete_ct(*key)?;
    }
    let affinities = affinities_of_freed(&datapath.affinity_entries()?, freed);
    for key in &affinities {
        datapath.delete_affinity(*key)?;
    }
    Ok(flows.len() + affinities.len())
}

/// Writes what is new or changed, dependencies first: a service entry is written only once
/// everything it points to is in place.
fn write<D: Datapath>(
    datapath: &mut D,
    applied: &LbMapContents,
    desired: &LbMapContents,
    report: &mut ServiceReport,
) -> anyhow::Result<()> {
    for (id, backend) in map_changes(&desired.backends, &applied.backends).put {
        datapath.put_lb_backend(id, backend)?;
        report.entries_written += 1;
    }
    for (id, entry) in map_changes(&desired.revnat, &applied.revnat).put {
        datapath.set_lb_revnat(id, entry)?;
        report.entries_written += 1;
    }
    for (id, table) in map_changes(&desired.maglev, &applied.maglev).put {
        datapath
            .put_maglev_table(id, &table)
            .with_context(|| format!("the Maglev table of service {id}"))?;
        report.maglev_tables_written += 1;
    }
    let services = map_changes(&desired.services, &applied.services).put;
    let (entries, slots): (Vec<_>, Vec<_>) = services.into_iter().partition(|(k, _)| k.slot == 0);
    for (key, value) in slots.into_iter().chain(entries) {
        datapath.put_lb_service(key, value)?;
        report.entries_written += 1;
    }
    Ok(())
}

/// Deletes what nothing points to any more.
fn trim<D: Datapath>(
    datapath: &mut D,
    applied: &LbMapContents,
    desired: &LbMapContents,
    retired: &BTreeSet<Lb4Key>,
    report: &mut ServiceReport,
) -> anyhow::Result<()> {
    let services = map_changes(&desired.services, &applied.services).delete;
    for key in services.into_iter().filter(|k| !retired.contains(k)) {
        datapath.delete_lb_service(key)?;
        report.entries_deleted += 1;
    }
    for id in map_changes(&desired.maglev, &applied.maglev).delete {
        datapath.delete_maglev_table(id)?;
        report.entries_deleted += 1;
    }
    for id in map_changes(&desired.revnat, &applied.revnat).delete {
        datapath.set_lb_revnat(id, Lb4RevNat::default())?;
        report.entries_deleted += 1;
    }
    for id in map_changes(&desired.backends, &applied.backends).delete {
        datapath.delete_lb_backend(id)?;
        report.entries_deleted += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
