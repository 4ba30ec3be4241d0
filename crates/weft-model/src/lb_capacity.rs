//! Room in the service load-balancer maps: their sizes, what each Service needs of them, and
//! which Services fit.
//!
//! A Service is programmed whole or not at all: all its frontends (every port, every address
//! kind, both scopes) or none. Its needs, exactly as [`lb_map_contents`] writes them:
//! - `weft_lb4_services`: per scope entry of each frontend, the service entry and one slot per
//!   active backend;
//! - `weft_lb4_backends`: its backends (active and terminating, both scopes), shared with
//!   other Services that use the same ones;
//! - `weft_lb4_revnat`: a service id per scope entry; the array is indexed by id and id 0 means
//!   none, so ids run from 1 to its size - 1;
//! - `weft_lb4_maglev`: an inner table per scope entry that has active backends, with
//!   `loadBalancer.algorithm: maglev`.
//!
//! [`fit`] takes the Services in a fixed order — those the maps already hold first, then the
//! others, each group by (namespace, name) — and admits each one that fits next to what is
//! admitted so far and what the maps hold now (entries of a pass are written before the stale
//! ones are deleted, so both count). A Service that does not fit is refused and the next ones
//! are still tried. Refusals made only for want of room that stale entries take are undone by
//! the next pass, once those entries are gone.
//!
//! [`lb_map_contents`]: crate::lb_maps::lb_map_contents

use std::collections::{BTreeMap, BTreeSet, HashSet};

use weft_common::{
    Lb4Key,
    lb::{LB4_BACKENDS_MAX, LB4_MAGLEV_MAX, LB4_REVNAT_MAX, LB4_SERVICES_MAX},
    maps,
};

use crate::{
    config::LbMapMax,
    lb::{
        Backend, BackendKey, Frontend, LbIds, LbState, Scope, ScopedFrontend, ServiceLb,
        ServiceName,
    },
    lb_maps::{LbMapContents, scoped_key},
};

/// Service ids are 16 bits: the maps indexed by them never need more entries than this.
pub const SERVICE_ID_SPACE: u32 = 1 << 16;

/// The maps the agent fills for Services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LbMap {
    Services,
    Backends,
    RevNat,
    Maglev,
}

impl LbMap {
    pub const ALL: [LbMap; 4] = [
        LbMap::Services,
        LbMap::Backends,
        LbMap::RevNat,
        LbMap::Maglev,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LbMap::Services => maps::LB4_SERVICES,
            LbMap::Backends => maps::LB4_BACKENDS,
            LbMap::RevNat => maps::LB4_REVNAT,
            LbMap::Maglev => maps::LB4_MAGLEV,
        }
    }

    /// What one of its entries is, for messages.
    pub fn entry_kind(self) -> &'static str {
        match self {
            LbMap::Services => "entries",
            LbMap::Backends => "backends",
            LbMap::RevNat => "service ids",
            LbMap::Maglev => "Maglev tables",
        }
    }
}

/// The sizes (`max_entries`) of the LB maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbCapacity {
    pub services: u32,
    pub backends: u32,
    pub revnat: u32,
    pub maglev: u32,
}

impl Default for LbCapacity {
    /// The sizes the BPF object declares.
    fn default() -> Self {
        LbCapacity {
            services: LB4_SERVICES_MAX,
            backends: LB4_BACKENDS_MAX,
            revnat: LB4_REVNAT_MAX,
            maglev: LB4_MAGLEV_MAX,
        }
    }
}

impl LbCapacity {
    /// The sizes `bpf.lbMapMax` asks for: that many entries in every map, but the two indexed
    /// by service id, which never need more than [`SERVICE_ID_SPACE`].
    pub fn for_lb_map_max(max: u32) -> LbCapacity {
        LbCapacity {
            services: max,
            backends: max,
            revnat: max.min(SERVICE_ID_SPACE),
            maglev: max.min(SERVICE_ID_SPACE),
        }
    }

    pub fn max_entries(&self, map: LbMap) -> u32 {
        match map {
            LbMap::Services => self.services,
            LbMap::Backends => self.backends,
            LbMap::RevNat => self.revnat,
            LbMap::Maglev => self.maglev,
        }
    }

    /// How many of `map`'s entries Services can use: all, but index 0 of the reverse-NAT array
    /// (id 0 means no service).
    pub fn room(&self, map: LbMap) -> u64 {
        let entries = u64::from(self.max_entries(map));
        match map {
            LbMap::RevNat => entries.saturating_sub(1),
            _ => entries,
        }
    }

    /// The largest service id the reverse-NAT array can index.
    pub fn max_service_id(&self) -> u16 {
        u16::try_from(self.room(LbMap::RevNat)).unwrap_or(u16::MAX)
    }
}

/// Entries per map (reverse NAT: service ids in use).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbUsage {
    pub services: u64,
    pub backends: u64,
    pub revnat: u64,
    pub maglev: u64,
}

impl LbUsage {
    pub fn get(&self, map: LbMap) -> u64 {
        match map {
            LbMap::Services => self.services,
            LbMap::Backends => self.backends,
            LbMap::RevNat => self.revnat,
            LbMap::Maglev => self.maglev,
        }
    }

    /// What `contents` takes of each map.
    pub fn of(contents: &LbMapContents) -> LbUsage {
        let len = |n: usize| n as u64;
        LbUsage {
            services: len(contents.services.len()),
            backends: len(contents.backends.len()),
            revnat: len(contents.revnat.len()),
            maglev: len(contents.maglev.len()),
        }
    }

    /// The smallest `bpf.lbMapMax` whose maps hold this; `None` when none does (more service
    /// ids than 16 bits count, or more entries than the largest size).
    pub fn lb_map_max_needed(&self) -> Option<u32> {
        let ids_entries = self.revnat + 1;
        if ids_entries > u64::from(SERVICE_ID_SPACE) {
            return None;
        }
        let most = [self.services, self.backends, ids_entries, self.maglev]
            .into_iter()
            .max()
            .unwrap_or(0)
            .max(u64::from(LbMapMax::MIN));
        u32::try_from(most).ok().filter(|&n| n <= LbMapMax::MAX)
    }

    /// Whether every map has room for this.
    pub fn fits(&self, capacity: &LbCapacity) -> bool {
        LbMap::ALL
            .iter()
            .all(|&map| self.get(map) <= capacity.room(map))
    }
}

/// A Service left out of the maps, whole: `map` is the first that had no room for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub service: ServiceName,
    pub map: LbMap,
}

/// What [`fit`] decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fit {
    /// How many Services `desired` has.
    pub services: usize,
    /// In the order the Services were considered.
    pub refused: Vec<Refusal>,
    /// What all the desired Services need together: the contents the maps would have with
    /// every one of them.
    pub wanted: LbUsage,
}

impl Fit {
    pub fn refused_services(&self) -> BTreeSet<ServiceName> {
        self.refused.iter().map(|r| r.service.clone()).collect()
    }
}

/// Which Services of `desired` fit in maps of `capacity` that hold `applied` now, with ids
/// `ids` (both as the last pass left them).
pub fn fit(desired: &LbState, applied: &LbMapContents, ids: &LbIds, capacity: &LbCapacity) -> Fit {
    let needs = needs_by_service(desired);
    let mut out = Fit {
        services: needs.len(),
        wanted: wanted(needs.values()),
        ..Fit::default()
    };
    let mut room = Room::holding(applied, ids, capacity);
    let (programmed, new): (Vec<_>, Vec<_>) = needs
        .iter()
        .partition(|(_, n)| n.frontends.iter().any(|f| ids.services.contains_key(f)));
    for (service, needs) in programmed.into_iter().chain(new) {
        if let Err(map) = room.admit(needs) {
            out.refused.push(Refusal {
                service: (*service).clone(),
                map,
            });
        }
    }
    out
}

/// What one Service takes of the maps.
#[derive(Debug, Default)]
struct Needs {
    frontends: Vec<Frontend>,
    keys: Vec<Lb4Key>,
    backends: BTreeSet<BackendKey>,
    /// One service id each.
    scope_entries: usize,
    /// The scope entries that have a Maglev table.
    tables: Vec<ScopedFrontend>,
}

impl Needs {
    fn add(&mut self, frontend: &Frontend, lb: &ServiceLb) {
        self.frontends.push(*frontend);
        self.add_scope(frontend, Scope::External, &lb.backends_active, &lb.maglev);
        self.add_backends(&lb.backends_active, &lb.backends_terminating);
        if let Some(internal) = &lb.internal {
            self.add_scope(
                frontend,
                Scope::Internal,
                &internal.backends_active,
                &internal.maglev,
            );
            self.add_backends(&internal.backends_active, &internal.backends_terminating);
        }
    }

    fn add_scope(
        &mut self,
        frontend: &Frontend,
        scope: Scope,
        active: &[Backend],
        table: &Option<Vec<u32>>,
    ) {
        // As many slots as a slot number counts (lb_maps::backend_slots).
        let slots = u16::try_from(active.len()).unwrap_or(u16::MAX);
        self.keys
            .extend((0..=slots).map(|slot| scoped_key(frontend, scope, slot)));
        self.scope_entries += 1;
        if table.as_ref().is_some_and(|t| !t.is_empty()) {
            self.tables.push((*frontend, scope));
        }
    }

    fn add_backends(&mut self, active: &[Backend], terminating: &[Backend]) {
        self.backends
            .extend(active.iter().chain(terminating).map(Backend::key));
    }
}

fn needs_by_service(desired: &LbState) -> BTreeMap<&ServiceName, Needs> {
    let mut out: BTreeMap<&ServiceName, Needs> = BTreeMap::new();
    for (frontend, lb) in &desired.frontends {
        out.entry(&lb.service).or_default().add(frontend, lb);
    }
    out
}

fn wanted<'a>(needs: impl Iterator<Item = &'a Needs>) -> LbUsage {
    let mut backends = HashSet::new();
    let mut usage = LbUsage::default();
    for n in needs {
        usage.services += n.keys.len() as u64;
        usage.revnat += n.scope_entries as u64;
        usage.maglev += n.tables.len() as u64;
        backends.extend(n.backends.iter().copied());
    }
    usage.backends = backends.len() as u64;
    usage
}

/// The maps as a pass sees them: what they hold, plus what it admitted.
struct Room<'a> {
    capacity: &'a LbCapacity,
    keys: HashSet<Lb4Key>,
    backends: HashSet<BackendKey>,
    /// Entries of the backends map: more than `backends` when it holds entries no id names.
    backend_entries: u64,
    tables: HashSet<ScopedFrontend>,
    table_entries: u64,
    /// Service ids given to admitted Services (ids are assigned afresh each pass).
    ids: u64,
}

impl Room<'_> {
    fn holding<'a>(applied: &LbMapContents, ids: &LbIds, capacity: &'a LbCapacity) -> Room<'a> {
        let backends = ids
            .backends
            .iter()
            .filter(|(_, id)| applied.backends.contains_key(id))
            .map(|(key, _)| *key)
            .collect();
        let tables = ids
            .service_ids()
            .into_iter()
            .filter(|(_, id)| applied.maglev.contains_key(id))
            .map(|(scoped, _)| scoped)
            .collect();
        Room {
            capacity,
            keys: applied.services.keys().copied().collect(),
            backends,
            backend_entries: applied.backends.len() as u64,
            tables,
            table_entries: applied.maglev.len() as u64,
            ids: 0,
        }
    }

    /// Takes room for `needs`, or names the first map that has not enough.
    fn admit(&mut self, needs: &Needs) -> Result<(), LbMap> {
        let new_keys = needs.keys.iter().filter(|k| !self.keys.contains(k)).count() as u64;
        let new_backends = (needs.backends.iter())
            .filter(|b| !self.backends.contains(b))
            .count() as u64;
        let new_tables = (needs.tables.iter())
            .filter(|t| !self.tables.contains(t))
            .count() as u64;
        let after = [
            (LbMap::Services, self.keys.len() as u64 + new_keys),
            (LbMap::Backends, self.backend_entries + new_backends),
            (LbMap::RevNat, self.ids + needs.scope_entries as u64),
            (LbMap::Maglev, self.table_entries + new_tables),
        ];
        if let Some((map, _)) = after.iter().find(|(m, n)| *n > self.capacity.room(*m)) {
            return Err(*map);
        }
        self.keys.extend(needs.keys.iter().copied());
        self.backends.extend(needs.backends.iter().copied());
        self.backend_entries += new_backends;
        self.tables.extend(needs.tables.iter().copied());
        self.table_entries += new_tables;
        self.ids += needs.scope_entries as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
