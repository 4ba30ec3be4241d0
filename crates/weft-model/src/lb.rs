//! The desired service load-balancer state of one node, computed from Services and
//! EndpointSlices, with the stable numeric ids the maps key it by and the minimal change
//! between two states.
//!
//! Shape of the result ([`LbState`]):
//! - one [`Frontend`] (clusterIP, port, protocol) per port of every Service that has an IPv4
//!   clusterIP: the same port number with TCP and UDP is two frontends;
//! - per frontend a [`ServiceLb`]: the backends new flows may get (`backends_active`) and those
//!   only existing flows keep (`backends_terminating`), the session affinity, the algorithm and
//!   its Maglev table. The reverse-NAT entry of a frontend is the frontend itself, under its
//!   service id ([`LbIds`]).
//!
//! A Service port's backends are the endpoints of the Service's IPv4 EndpointSlices (those
//! labelled with its name in its namespace) whose slice port has the Service port's name (both
//! may be empty) and protocol, at that slice port's number. An endpoint that is ready is
//! active; one that is terminating but still serving (not ready, serving, terminating) keeps
//! its flows and gets no new ones; any other is left out. With `internalTrafficPolicy: Local`
//! only the endpoints of this node count, and a frontend without one has no backend at all
//! (its traffic is dropped, as Kubernetes specifies). Backends are unique per frontend and
//! sorted by (address, port, protocol).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
};

use crate::{
    ClusterConfig, LbAlgorithm, Store,
    k8s::{
        EndpointSlice, Protocol, Service, ServicePort,
        service::{AddressType, EndpointConditions, TrafficPolicy},
    },
    maglev::maglev_table,
};

/// A Service, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What clients address: the key of the service entry in the services map and the value of
/// its reverse-NAT entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub proto: Protocol,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.ip, self.port, self.proto)
    }
}

/// What identifies a backend in the backends map, whichever services use it. Its text,
/// `10.42.0.10:8080/TCP`, is its Maglev key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendKey {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub proto: Protocol,
}

impl fmt::Display for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.ip, self.port, self.proto)
    }
}

/// One endpoint of a frontend: where its flows are translated to, and the node it runs on
/// (from the slice; `None` when the slice does not say).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub proto: Protocol,
    pub node: Option<String>,
}

impl Backend {
    pub fn key(&self) -> BackendKey {
        BackendKey {
            ip: self.ip,
            port: self.port,
            proto: self.proto,
        }
    }
}

/// The load balancing of one frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceLb {
    pub service: ServiceName,
    /// The Service port's name; `""` when it has none.
    pub port_name: String,
    /// The backends new flows may get, sorted by key: the service's slots 1..=count, in this
    /// order.
    pub backends_active: Vec<Backend>,
    /// Terminating backends: flows that have one keep it, no new flow gets one. Sorted by key.
    pub backends_terminating: Vec<Backend>,
    /// `sessionAffinity: ClientIP`: seconds a client keeps its backend.
    pub affinity_timeout: Option<u32>,
    pub algorithm: LbAlgorithm,
    /// `internalTrafficPolicy: Local`: the backends are this node's only.
    pub local_only: bool,
    /// With [`LbAlgorithm::Maglev`]: the table, each slot an index into `backends_active`
    /// (see [`maglev_backend_ids`] for the map's form). Empty when there is no active backend.
    /// `None` with [`LbAlgorithm::Random`].
    pub maglev: Option<Vec<u32>>,
}

impl ServiceLb {
    pub fn active_keys(&self) -> Vec<BackendKey> {
        self.backends_active.iter().map(Backend::key).collect()
    }
}

/// Two Services claim the same frontend (an explicit clusterIP given twice, or a port listed
/// twice): the first in (namespace, name) order keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendConflict {
    pub frontend: Frontend,
    pub kept: ServiceName,
    pub dropped: ServiceName,
}

/// The desired load-balancer state of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LbState {
    pub frontends: BTreeMap<Frontend, ServiceLb>,
    pub conflicts: Vec<FrontendConflict>,
    /// What the Maglev tables were built with.
    pub maglev_table_size: u32,
    pub maglev_hash_seed: String,
}

/// Whether new flows may get a backend: a backend active for one frontend and terminating for
/// another (possible only with hand-written slices) is active.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum BackendState {
    Active,
    Terminating,
}

impl LbState {
    /// Every backend of every frontend, once: the contents of the backends map.
    pub fn backends(&self) -> BTreeMap<BackendKey, BackendState> {
        let mut out = BTreeMap::new();
        for lb in self.frontends.values() {
            for b in &lb.backends_terminating {
                out.insert(b.key(), BackendState::Terminating);
            }
        }
        for lb in self.frontends.values() {
            for b in &lb.backends_active {
                out.insert(b.key(), BackendState::Active);
            }
        }
        out
    }
}

/// The desired load-balancer state of node `node`. Builds every Maglev table; see
/// [`lb_state_reusing`] to build only those whose backends changed.
pub fn lb_state(store: &Store, node: &str, config: &ClusterConfig) -> LbState {
    lb_state_reusing(store, node, config, &LbState::default())
}

/// [`lb_state`], taking the Maglev table of a frontend from `previous` when its active
/// backends, the table size and the seed are the same (the table is a function of these only).
pub fn lb_state_reusing(
    store: &Store,
    node: &str,
    config: &ClusterConfig,
    previous: &LbState,
) -> LbState {
    let mut state = LbState {
        maglev_table_size: config.maglev.table_size.get(),
        maglev_hash_seed: config.maglev.hash_seed.clone(),
        ..LbState::default()
    };
    let reusable = previous.maglev_table_size == state.maglev_table_size
        && previous.maglev_hash_seed == state.maglev_hash_seed;
    let slices_by_service = store.slices_by_service();
    for svc in store.services.values() {
        let Some(ip) = svc.spec.cluster_ipv4() else {
            continue;
        };
        let slices: Vec<&EndpointSlice> = slices_by_service
            .get(&(svc.metadata.namespace(), svc.metadata.name.as_str()))
            .into_iter()
            .flatten()
            .copied()
            .filter(|s| s.address_type == AddressType::IPv4)
            .collect();
        for port in &svc.spec.ports {
            let frontend = Frontend {
                ip,
                port: port.port,
                proto: port.protocol,
            };
            if let Some(kept) = state.frontends.get(&frontend) {
                state.conflicts.push(FrontendConflict {
                    frontend,
                    kept: kept.service.clone(),
                    dropped: service_name(svc),
                });
                continue;
            }
            let mut lb = service_lb(svc, port, &slices, node, config.load_balancer.algorithm);
            let old = previous.frontends.get(&frontend).filter(|_| reusable);
            lb.maglev = table_for(&lb, old, &state);
            state.frontends.insert(frontend, lb);
        }
    }
    state
}

fn service_lb(
    svc: &Service,
    port: &ServicePort,
    slices: &[&EndpointSlice],
    node: &str,
    algorithm: LbAlgorithm,
) -> ServiceLb {
    let local_only = svc.spec.internal_traffic_policy == TrafficPolicy::Local;
    let (backends_active, backends_terminating) =
        backends_of(port, slices, local_only.then_some(node));
    ServiceLb {
        service: service_name(svc),
        port_name: port.name().to_string(),
        backends_active,
        backends_terminating,
        affinity_timeout: svc.spec.affinity_timeout(),
        algorithm,
        local_only,
        maglev: None,
    }
}

fn service_name(svc: &Service) -> ServiceName {
    ServiceName {
        namespace: svc.metadata.namespace().to_string(),
        name: svc.metadata.name.clone(),
    }
}

/// The Maglev table of `lb` (whose `maglev` is not set yet): `old`'s when it was built for the
/// same active backends.
fn table_for(lb: &ServiceLb, old: Option<&ServiceLb>, state: &LbState) -> Option<Vec<u32>> {
    if lb.algorithm != LbAlgorithm::Maglev {
        return None;
    }
    if let Some(old) = old
        && old.maglev.is_some()
        && old.active_keys() == lb.active_keys()
    {
        return old.maglev.clone();
    }
    let keys: Vec<String> = lb
        .backends_active
        .iter()
        .map(|b| b.key().to_string())
        .collect();
    // The size comes from a validated MaglevTableSize, and a service cannot have 2^32
    // backends: building cannot fail.
    let table = maglev_table(
        &keys,
        state.maglev_table_size,
        state.maglev_hash_seed.as_bytes(),
    )
    .unwrap_or_else(|e| unreachable!("{e}"));
    Some(table)
}

/// The active and terminating backends of one Service port, unique and sorted by key; only
/// those on `local_node` when it is given.
fn backends_of(
    port: &ServicePort,
    slices: &[&EndpointSlice],
    local_node: Option<&str>,
) -> (Vec<Backend>, Vec<Backend>) {
    let mut found: BTreeMap<BackendKey, (BackendState, Option<String>)> = BTreeMap::new();
    for slice in slices {
        let ports = slice
            .ports
            .iter()
            .filter(|p| p.name() == port.name() && p.protocol == port.protocol)
            .filter_map(|p| p.port);
        for target in ports {
            for ep in &slice.endpoints {
                let Some(state) = backend_state(&ep.conditions) else {
                    continue;
                };
                if local_node.is_some_and(|n| ep.node_name.as_deref() != Some(n)) {
                    continue;
                }
                let Some(ip) = ep.ipv4() else {
                    continue;
                };
                let key = BackendKey {
                    ip,
                    port: target,
                    proto: port.protocol,
                };
                let entry = found.entry(key).or_insert((state, ep.node_name.clone()));
                entry.0 = entry.0.min(state);
            }
        }
    }
    let mut active = Vec::new();
    let mut terminating = Vec::new();
    for (key, (state, node)) in found {
        let backend = Backend {
            ip: key.ip,
            port: key.port,
            proto: key.proto,
            node,
        };
        match state {
            BackendState::Active => active.push(backend),
            BackendState::Terminating => terminating.push(backend),
        }
    }
    (active, terminating)
}

/// Ready: new flows. Terminating but still serving: existing flows only. Otherwise: none.
fn backend_state(c: &EndpointConditions) -> Option<BackendState> {
    if c.is_ready() {
        Some(BackendState::Active)
    } else if c.is_serving() && c.is_terminating() {
        Some(BackendState::Terminating)
    } else {
        None
    }
}

/// The numeric ids the maps key the state by: per frontend a service id (its services-map
/// entry, its reverse-NAT index, its Maglev table and affinity entries), per backend a backend
/// id (its backends-map entry). Exactly the (frontend, id) and (backend, id) pairs the maps
/// hold, so a restarted agent rebuilds it from them with [`LbIds::from_pairs`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LbIds {
    /// 1..=65535.
    pub services: BTreeMap<Frontend, u16>,
    /// 1..=u32::MAX.
    pub backends: BTreeMap<BackendKey, u32>,
}

impl LbIds {
    /// Ids read back from the maps. Pairs that cannot stand (id 0, an id given twice) are
    /// dropped by [`assign_ids`], which gives their owners new ones.
    pub fn from_pairs(
        services: impl IntoIterator<Item = (Frontend, u16)>,
        backends: impl IntoIterator<Item = (BackendKey, u32)>,
    ) -> LbIds {
        LbIds {
            services: services.into_iter().collect(),
            backends: backends.into_iter().collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LbIdError {
    #[error("{wanted} service frontends are more than the {max} service ids")]
    ServiceIdsExhausted { wanted: usize, max: u64 },
    #[error("{wanted} backends are more than the {max} backend ids")]
    BackendIdsExhausted { wanted: usize, max: u64 },
}

/// Ids for every frontend and backend of `desired`: those `previous` gave keep theirs; ids of
/// what is no longer desired are free again; what is new gets the smallest free id.
pub fn assign_ids(desired: &LbState, previous: &LbIds) -> Result<LbIds, LbIdError> {
    let frontends: BTreeSet<Frontend> = desired.frontends.keys().copied().collect();
    let backends: BTreeSet<BackendKey> = desired.backends().into_keys().collect();
    let service_max = u64::from(u16::MAX);
    let backend_max = u64::from(u32::MAX);
    let services = assign(&frontends, &widen(&previous.services), service_max).ok_or(
        LbIdError::ServiceIdsExhausted {
            wanted: frontends.len(),
            max: service_max,
        },
    )?;
    let backends = assign(&backends, &widen(&previous.backends), backend_max).ok_or(
        LbIdError::BackendIdsExhausted {
            wanted: backends.len(),
            max: backend_max,
        },
    )?;
    Ok(LbIds {
        services: narrow(services),
        backends: narrow(backends),
    })
}

fn widen<K: Ord + Copy, I: Copy + Into<u64>>(ids: &BTreeMap<K, I>) -> BTreeMap<K, u64> {
    ids.iter().map(|(k, id)| (*k, (*id).into())).collect()
}

fn narrow<K: Ord, I: TryFrom<u64>>(ids: BTreeMap<K, u64>) -> BTreeMap<K, I> {
    // assign() only hands out ids up to the maximum of I.
    ids.into_iter()
        .filter_map(|(k, id)| Some((k, I::try_from(id).ok()?)))
        .collect()
}

/// Ids in 1..=max for `wanted`: kept from `previous` when valid and not taken by a key before
/// it, else the smallest free; `None` when they run out.
fn assign<K: Ord + Copy>(
    wanted: &BTreeSet<K>,
    previous: &BTreeMap<K, u64>,
    max: u64,
) -> Option<BTreeMap<K, u64>> {
    let mut out = BTreeMap::new();
    let mut used = BTreeSet::new();
    let mut new = Vec::new();
    for key in wanted {
        match previous.get(key) {
            Some(&id) if (1..=max).contains(&id) && used.insert(id) => {
                out.insert(*key, id);
            }
            _ => new.push(*key),
        }
    }
    let mut candidate = 1;
    for key in new {
        while used.contains(&candidate) {
            candidate += 1;
        }
        if candidate > max {
            return None;
        }
        used.insert(candidate);
        out.insert(key, candidate);
    }
    Some(out)
}

/// A frontend's Maglev table as its inner map holds it: each slot the backend id of its
/// backend. `None` when the frontend does not use Maglev, or when `ids` lacks one of its
/// backends (ids assigned for another state).
pub fn maglev_backend_ids(lb: &ServiceLb, ids: &LbIds) -> Option<Vec<u32>> {
    let table = lb.maglev.as_ref()?;
    let by_index = lb
        .backends_active
        .iter()
        .map(|b| ids.backends.get(&b.key()).copied())
        .collect::<Option<Vec<u32>>>()?;
    table
        .iter()
        .map(|&i| by_index.get(i as usize).copied())
        .collect()
}

/// What differs between two states, for writing only the map entries that must change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LbChanges {
    /// New frontends: a services-map entry, its backend slots, its reverse-NAT entry.
    pub frontends_added: Vec<Frontend>,
    /// Frontends whose load balancing differs in any way (backends, affinity, policy,
    /// algorithm, table): their services-map entry and slots.
    pub frontends_changed: Vec<Frontend>,
    /// Frontends gone: their entries, slots, reverse-NAT entry and Maglev table.
    pub frontends_removed: Vec<Frontend>,
    /// Backends no frontend had.
    pub backends_added: Vec<BackendKey>,
    /// Backends no frontend has any more.
    pub backends_removed: Vec<BackendKey>,
    /// Backends kept whose [`BackendState`] changed (their terminating flag).
    pub backends_changed: Vec<BackendKey>,
    /// Frontends whose Maglev table must be written: new ones, and those whose active backends
    /// or table changed (a changed table size or seed changes them all).
    pub maglev_rebuild: Vec<Frontend>,
}

impl LbChanges {
    pub fn is_empty(&self) -> bool {
        *self == LbChanges::default()
    }
}

pub fn lb_changes(old: &LbState, new: &LbState) -> LbChanges {
    let mut changes = LbChanges::default();
    for (frontend, lb) in &new.frontends {
        match old.frontends.get(frontend) {
            None => changes.frontends_added.push(*frontend),
            Some(before) if before != lb => changes.frontends_changed.push(*frontend),
            Some(_) => {}
        }
        if needs_table(old.frontends.get(frontend), lb) {
            changes.maglev_rebuild.push(*frontend);
        }
    }
    changes.frontends_removed = old
        .frontends
        .keys()
        .filter(|f| !new.frontends.contains_key(f))
        .copied()
        .collect();
    let (before, after) = (old.backends(), new.backends());
    for (key, state) in &after {
        match before.get(key) {
            None => changes.backends_added.push(*key),
            Some(s) if s != state => changes.backends_changed.push(*key),
            Some(_) => {}
        }
    }
    changes.backends_removed = before
        .keys()
        .filter(|k| !after.contains_key(k))
        .copied()
        .collect();
    changes
}

fn needs_table(old: Option<&ServiceLb>, new: &ServiceLb) -> bool {
    let Some(table) = &new.maglev else {
        return false;
    };
    match old {
        None => true,
        Some(old) => old.maglev.as_ref() != Some(table) || old.active_keys() != new.active_keys(),
    }
}

#[cfg(test)]
mod tests;
