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
//!
//! North-south frontends (what traffic from outside the cluster addresses), per Service port,
//! besides its clusterIP frontend:
//! - NodePort and LoadBalancer Services: (this node's underlay address from its `WeftNode`,
//!   `nodePort`) — a node receives NodePort traffic on its own address only;
//! - every `externalIPs` address, and every `status.loadBalancer.ingress` address of a
//!   LoadBalancer Service: (that address, `port`).
//!
//! An `externalIPs` or ingress address the cluster's rules refuse (`external_address`: inside
//! the pod or service CIDR, a special address, outside `externalIPs.allowedCIDRs`, a node's
//! address as a LoadBalancer address) gets no frontend; nor does any `externalIPs` address when
//! `externalIPs.enabled` is false. Each is a [`RefusedFrontend`].
//!
//! A frontend claimed twice (an externalIP that is also a node address, on a port equal to a
//! nodePort) goes to the first claim in (namespace, name) order, then clusterIP, NodePort,
//! externalIPs, ingress order; the other is a [`FrontendConflict`]. North-south frontends
//! forward with DSR when `loadBalancer.mode` says so for their protocol.
//!
//! Traffic policies and scopes. A north-south frontend's backends depend on where the traffic
//! comes from: from outside, `externalTrafficPolicy` decides (Local: this node's endpoints only,
//! none meaning the traffic is dropped); from pods and nodes, `internalTrafficPolicy` does, as
//! for the clusterIP. When the two policies agree the frontend has one entry (scope
//! [`LB_SCOPE_EXTERNAL`](weft_common::lb::LB_SCOPE_EXTERNAL)); when they differ it has a second,
//! [`ServiceLb::internal`], at scope internal.
//!
//! Each scope entry has its **own service id**, and with it its own Maglev table (built from
//! that scope's active backends), its own affinity entries and its own reverse-NAT entry (both
//! reverse-NAT entries hold the same frontend, so a reply is translated back the same whichever
//! scope chose its backend). A shared id would need one table for two backend sets, or a
//! kernel-side special case; separate ids keep the contract "an entry's id keys its table,
//! affinities and reverse NAT" true for every entry. [`LbIds::internal`] holds the internal
//! scope's ids; both scopes draw from one id space.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
};

use crate::{
    ClusterConfig, LbAlgorithm, Store,
    external_address::{ExternalAddressRules, ExternalKind},
    k8s::{
        EndpointSlice, Protocol, Service, ServicePort,
        service::{AddressType, EndpointConditions, TrafficPolicy},
    },
    maglev::maglev_table,
};

/// Why a frontend exists: what its address is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    /// The Service's clusterIP: reached from inside the cluster only.
    ClusterIp,
    /// This node's address at a `nodePort`.
    NodePort,
    /// An `externalIPs` address.
    ExternalIp,
    /// A `status.loadBalancer.ingress` address.
    LoadBalancer,
}

impl FrontendKind {
    pub fn is_north_south(self) -> bool {
        self != FrontendKind::ClusterIp
    }
}

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
    pub kind: FrontendKind,
    /// North-south flows are forwarded with DSR (`loadBalancer.mode`), else with SNAT.
    pub dsr: bool,
    /// `externalTrafficPolicy: Local` on a north-south frontend: `backends_active` and
    /// `backends_terminating` are this node's only.
    pub external_local: bool,
    /// The backends of traffic from inside the cluster, when they differ by policy from those
    /// of traffic from outside (the fields above then are the external scope's).
    pub internal: Option<InternalScope>,
}

impl ServiceLb {
    pub fn active_keys(&self) -> Vec<BackendKey> {
        keys_of(&self.backends_active)
    }
}

/// The internal scope of a north-south frontend whose traffic policies differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InternalScope {
    pub backends_active: Vec<Backend>,
    pub backends_terminating: Vec<Backend>,
    /// `internalTrafficPolicy: Local`.
    pub local_only: bool,
    /// As [`ServiceLb::maglev`], over this scope's `backends_active`.
    pub maglev: Option<Vec<u32>>,
}

impl InternalScope {
    pub fn active_keys(&self) -> Vec<BackendKey> {
        keys_of(&self.backends_active)
    }
}

fn keys_of(backends: &[Backend]) -> Vec<BackendKey> {
    backends.iter().map(Backend::key).collect()
}

/// A `healthCheckNodePort` this node answers: HTTP 200 with its count of local endpoints when
/// it has one, 503 otherwise, so that an external load balancer sends traffic of an
/// `externalTrafficPolicy: Local` Service only to nodes that have a backend.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HealthCheckPort {
    pub port: u16,
    pub service: ServiceName,
    /// Ready endpoints of the Service on this node (distinct addresses).
    pub local_endpoints: usize,
}

/// Two Services claim the same frontend (an explicit clusterIP given twice, or a port listed
/// twice): the first in (namespace, name) order keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendConflict {
    pub frontend: Frontend,
    pub kept: ServiceName,
    pub dropped: ServiceName,
}

/// A Service's external address left out of the datapath, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RefusedFrontend {
    pub frontend: Frontend,
    pub service: ServiceName,
    pub reason: String,
}

/// The desired load-balancer state of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LbState {
    pub frontends: BTreeMap<Frontend, ServiceLb>,
    pub conflicts: Vec<FrontendConflict>,
    pub refused: Vec<RefusedFrontend>,
    /// Sorted by port; a port claimed twice is kept by the first Service in (namespace, name)
    /// order.
    pub health_checks: Vec<HealthCheckPort>,
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
        self.backends_where(|_, _| true)
    }

    /// [`LbState::backends`] of the frontends `keep` selects.
    pub fn backends_where(
        &self,
        keep: impl Fn(&Frontend, &ServiceLb) -> bool,
    ) -> BTreeMap<BackendKey, BackendState> {
        let kept = || self.frontends.iter().filter(|(f, lb)| keep(f, lb));
        let mut out = BTreeMap::new();
        for (_, lb) in kept() {
            let internal = lb.internal.as_ref();
            let terminating = internal.map(|i| i.backends_terminating.as_slice());
            for b in lb
                .backends_terminating
                .iter()
                .chain(terminating.unwrap_or(&[]))
            {
                out.insert(b.key(), BackendState::Terminating);
            }
        }
        for (_, lb) in kept() {
            let active = lb.internal.as_ref().map(|i| i.backends_active.as_slice());
            for b in lb.backends_active.iter().chain(active.unwrap_or(&[])) {
                out.insert(b.key(), BackendState::Active);
            }
        }
        out
    }

    /// The `sessionAffinity` timeout of every service id (both scopes) that has one.
    pub fn affinity_timeouts(&self, ids: &LbIds) -> BTreeMap<u16, u32> {
        let mut out = BTreeMap::new();
        for (frontend, lb) in &self.frontends {
            let Some(timeout) = lb.affinity_timeout else {
                continue;
            };
            let internal = lb.internal.as_ref().and(ids.internal.get(frontend));
            for id in ids.services.get(frontend).into_iter().chain(internal) {
                out.insert(*id, timeout);
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
    let node_ip = store.weft_nodes.get(node).map(|n| n.spec.underlay_ip);
    let rules = ExternalAddressRules::of_store(config, store);
    for svc in store.services.values() {
        let Some(cluster_ip) = svc.spec.cluster_ipv4() else {
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
            for (frontend, kind) in frontends_of(svc, port, cluster_ip, node_ip) {
                if let Err(reason) = admit(&rules, config, frontend, kind) {
                    state.refused.push(RefusedFrontend {
                        frontend,
                        service: service_name(svc),
                        reason,
                    });
                    continue;
                }
                if let Some(kept) = state.frontends.get(&frontend) {
                    state.conflicts.push(FrontendConflict {
                        frontend,
                        kept: kept.service.clone(),
                        dropped: service_name(svc),
                    });
                    continue;
                }
                let mut lb = service_lb(svc, port, &slices, node, config, kind);
                let old = previous.frontends.get(&frontend).filter(|_| reusable);
                build_tables(&mut lb, old, &state);
                state.frontends.insert(frontend, lb);
            }
        }
        add_health_check(&mut state.health_checks, svc, &slices, node);
    }
    state.health_checks.sort();
    state
}

/// The frontends of one Service port, in claim order: clusterIP, NodePort (on `node_ip`, when
/// the node is known), externalIPs, LoadBalancer ingress.
fn frontends_of(
    svc: &Service,
    port: &ServicePort,
    cluster_ip: Ipv4Addr,
    node_ip: Option<Ipv4Addr>,
) -> Vec<(Frontend, FrontendKind)> {
    let at = |ip: Ipv4Addr, number: u16| Frontend {
        ip,
        port: number,
        proto: port.protocol,
    };
    let mut out = vec![(at(cluster_ip, port.port), FrontendKind::ClusterIp)];
    if svc.spec.has_node_ports()
        && let (Some(ip), Some(node_port)) = (node_ip, port.node_port)
    {
        out.push((at(ip, node_port), FrontendKind::NodePort));
    }
    for &ip in &svc.spec.external_ips {
        out.push((at(ip, port.port), FrontendKind::ExternalIp));
    }
    for ip in svc.ingress_ips() {
        out.push((at(ip, port.port), FrontendKind::LoadBalancer));
    }
    out
}

/// Whether `frontend`, of `kind`, may be programmed; the reason when not.
fn admit(
    rules: &ExternalAddressRules,
    config: &ClusterConfig,
    frontend: Frontend,
    kind: FrontendKind,
) -> Result<(), String> {
    let external = match kind {
        FrontendKind::ClusterIp | FrontendKind::NodePort => return Ok(()),
        FrontendKind::ExternalIp if !config.external_ips.enabled => {
            return Err("externalIPs.enabled is false".to_string());
        }
        FrontendKind::ExternalIp => ExternalKind::ExternalIp,
        FrontendKind::LoadBalancer => ExternalKind::LoadBalancer,
    };
    rules
        .check(frontend.ip, external)
        .map_err(|refusal| refusal.to_string())
}

fn service_lb(
    svc: &Service,
    port: &ServicePort,
    slices: &[&EndpointSlice],
    node: &str,
    config: &ClusterConfig,
    kind: FrontendKind,
) -> ServiceLb {
    let internal_local = svc.spec.internal_traffic_policy == TrafficPolicy::Local;
    let external_local = kind.is_north_south() && svc.spec.external_local();
    let two_scopes = kind.is_north_south() && external_local != internal_local;
    let local_here = |local: bool| local.then_some(node);
    let external_scope_local = if kind.is_north_south() {
        external_local
    } else {
        internal_local
    };
    let (backends_active, backends_terminating) =
        backends_of(port, slices, local_here(external_scope_local));
    let internal = two_scopes.then(|| {
        let (backends_active, backends_terminating) =
            backends_of(port, slices, local_here(internal_local));
        InternalScope {
            backends_active,
            backends_terminating,
            local_only: internal_local,
            maglev: None,
        }
    });
    ServiceLb {
        service: service_name(svc),
        port_name: port.name().to_string(),
        backends_active,
        backends_terminating,
        affinity_timeout: svc.spec.affinity_timeout(),
        algorithm: config.load_balancer.algorithm,
        local_only: internal_local && !two_scopes,
        maglev: None,
        kind,
        dsr: kind.is_north_south() && config.load_balancer.mode.dsr_for(port.protocol),
        external_local,
        internal,
    }
}

/// Records the `healthCheckNodePort` of an `externalTrafficPolicy: Local` Service, unless
/// another Service holds the port already.
fn add_health_check(
    checks: &mut Vec<HealthCheckPort>,
    svc: &Service,
    slices: &[&EndpointSlice],
    node: &str,
) {
    let Some(port) = svc.spec.health_check_node_port else {
        return;
    };
    if !svc.spec.wants_health_check_node_port() || checks.iter().any(|c| c.port == port) {
        return;
    }
    checks.push(HealthCheckPort {
        port,
        service: service_name(svc),
        local_endpoints: local_ready_endpoints(slices, node),
    });
}

fn local_ready_endpoints(slices: &[&EndpointSlice], node: &str) -> usize {
    slices
        .iter()
        .flat_map(|s| &s.endpoints)
        .filter(|ep| ep.node_name.as_deref() == Some(node) && ep.conditions.is_ready())
        .filter_map(|ep| ep.ipv4())
        .collect::<BTreeSet<Ipv4Addr>>()
        .len()
}

fn service_name(svc: &Service) -> ServiceName {
    ServiceName {
        namespace: svc.metadata.namespace().to_string(),
        name: svc.metadata.name.clone(),
    }
}

/// Sets the Maglev table of each scope of `lb`, taking `old`'s when it was built for the same
/// active backends.
fn build_tables(lb: &mut ServiceLb, old: Option<&ServiceLb>, state: &LbState) {
    if lb.algorithm != LbAlgorithm::Maglev {
        return;
    }
    let old_external = old.and_then(|o| Some((o.active_keys(), o.maglev.as_ref()?)));
    lb.maglev = Some(table_for(&lb.backends_active, old_external, state));
    let old_internal = old
        .and_then(|o| o.internal.as_ref())
        .and_then(|i| Some((i.active_keys(), i.maglev.as_ref()?)));
    if let Some(internal) = &mut lb.internal {
        internal.maglev = Some(table_for(&internal.backends_active, old_internal, state));
    }
}

/// The Maglev table of `active`: `old`'s table when it was built for the same backends.
fn table_for(
    active: &[Backend],
    old: Option<(Vec<BackendKey>, &Vec<u32>)>,
    state: &LbState,
) -> Vec<u32> {
    if let Some((old_keys, old_table)) = old
        && old_keys == keys_of(active)
    {
        return old_table.clone();
    }
    let keys: Vec<String> = active.iter().map(|b| b.key().to_string()).collect();
    // The size comes from a validated MaglevTableSize, and a service cannot have 2^32
    // backends: building cannot fail.
    maglev_table(
        &keys,
        state.maglev_table_size,
        state.maglev_hash_seed.as_bytes(),
    )
    .unwrap_or_else(|e| unreachable!("{e}"))
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
    /// 1..=65535: the id of each frontend's entry at the external scope (its only entry when
    /// it has one scope).
    pub services: BTreeMap<Frontend, u16>,
    /// The id of the internal-scope entry of the frontends that have two; from the same id
    /// space as `services`.
    pub internal: BTreeMap<Frontend, u16>,
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
            internal: BTreeMap::new(),
            backends: backends.into_iter().collect(),
        }
    }

    /// Every service id with its frontend and scope.
    pub fn service_ids(&self) -> BTreeMap<ScopedFrontend, u16> {
        let external = self
            .services
            .iter()
            .map(|(f, id)| ((*f, Scope::External), *id));
        let internal = self
            .internal
            .iter()
            .map(|(f, id)| ((*f, Scope::Internal), *id));
        external.chain(internal).collect()
    }
}

/// Which of a frontend's two entries (the map key's `scope`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    External,
    Internal,
}

pub type ScopedFrontend = (Frontend, Scope);

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
    assign_admitted_ids(desired, |_| true, previous, u16::MAX)
}

/// [`assign_ids`] for the frontends of `desired` whose load balancing `admitted` accepts, and
/// their backends, with service ids up to `max_service_id` (the last index of the reverse-NAT
/// array). The other frontends get no id, which leaves them out of
/// [`lb_map_contents`](crate::lb_maps::lb_map_contents).
pub fn assign_admitted_ids(
    desired: &LbState,
    admitted: impl Fn(&ServiceLb) -> bool,
    previous: &LbIds,
    max_service_id: u16,
) -> Result<LbIds, LbIdError> {
    let entries: BTreeSet<ScopedFrontend> = desired
        .frontends
        .iter()
        .filter(|(_, lb)| admitted(lb))
        .flat_map(|(f, lb)| {
            let internal = lb.internal.is_some().then_some((*f, Scope::Internal));
            std::iter::once((*f, Scope::External)).chain(internal)
        })
        .collect();
    let backends: BTreeSet<BackendKey> = desired
        .backends_where(|_, lb| admitted(lb))
        .into_keys()
        .collect();
    let service_max = u64::from(max_service_id);
    let backend_max = u64::from(u32::MAX);
    let services = assign(&entries, &widen(&previous.service_ids()), service_max).ok_or(
        LbIdError::ServiceIdsExhausted {
            wanted: entries.len(),
            max: service_max,
        },
    )?;
    let (services, internal) = split_scopes(narrow(services));
    let backends = assign(&backends, &widen(&previous.backends), backend_max).ok_or(
        LbIdError::BackendIdsExhausted {
            wanted: backends.len(),
            max: backend_max,
        },
    )?;
    Ok(LbIds {
        services,
        internal,
        backends: narrow(backends),
    })
}

fn split_scopes(
    ids: BTreeMap<ScopedFrontend, u16>,
) -> (BTreeMap<Frontend, u16>, BTreeMap<Frontend, u16>) {
    let (external, internal): (Vec<_>, Vec<_>) = ids
        .into_iter()
        .partition(|((_, scope), _)| *scope == Scope::External);
    let strip = |v: Vec<(ScopedFrontend, u16)>| v.into_iter().map(|((f, _), id)| (f, id)).collect();
    (strip(external), strip(internal))
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
    table_backend_ids(&lb.backends_active, lb.maglev.as_ref()?, ids)
}

/// [`maglev_backend_ids`] of a frontend's internal scope.
pub fn internal_maglev_backend_ids(scope: &InternalScope, ids: &LbIds) -> Option<Vec<u32>> {
    table_backend_ids(&scope.backends_active, scope.maglev.as_ref()?, ids)
}

fn table_backend_ids(active: &[Backend], table: &[u32], ids: &LbIds) -> Option<Vec<u32>> {
    let by_index = active
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
    let Some(old) = old else {
        return true;
    };
    let internal_table = |lb: &ServiceLb| {
        lb.internal
            .as_ref()
            .map(|i| (i.active_keys(), i.maglev.clone()))
    };
    old.maglev.as_ref() != Some(table)
        || old.active_keys() != new.active_keys()
        || internal_table(old) != internal_table(new)
}

#[cfg(test)]
mod tests;
