//! The contents of the service load-balancer maps as a function of an [`LbState`] and its
//! [`LbIds`]; the ids read back from those contents (what a restarted agent adopts); and the
//! ids a change frees, whose conntrack and affinity entries must go before the ids are used
//! again.
//!
//! A frontend's entries: the service entry (slot 0) and backend slots 1..=count at scope
//! external; with two scopes the same again at scope internal, under the internal scope's own
//! id (its own reverse-NAT entry, holding the same frontend, and its own Maglev table). Flags
//! of the external entry: the frontend's kind (NodePort, externalIP, LoadBalancer), DSR,
//! `EXT_LOCAL`, `LOCAL_ONLY` when its backends follow `internalTrafficPolicy: Local`, and
//! `TWO_SCOPES`; of the internal entry: the kind and `LOCAL_ONLY` (DSR and `EXT_LOCAL` concern
//! traffic from outside, which never takes it).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use weft_common::{
    Lb4Backend, Lb4Key, Lb4RevNat, Lb4Service,
    lb::{
        BACKEND_FLAG_TERMINATING, LB_ALG_MAGLEV, LB_ALG_RANDOM, LB_SCOPE_EXTERNAL,
        LB_SCOPE_INTERNAL, SVC_FLAG_AFFINITY, SVC_FLAG_DSR, SVC_FLAG_EXT_LOCAL,
        SVC_FLAG_EXTERNAL_IP, SVC_FLAG_LOADBALANCER, SVC_FLAG_LOCAL_ONLY, SVC_FLAG_NODEPORT,
        SVC_FLAG_TWO_SCOPES,
    },
};

use crate::{
    LbAlgorithm,
    k8s::Protocol,
    lb::{
        Backend, BackendKey, BackendState, Frontend, FrontendKind, LbIds, LbState, Scope,
        ServiceLb, internal_maglev_backend_ids, maglev_backend_ids,
    },
};

/// What `weft_lb4_services`, `weft_lb4_backends`, `weft_lb4_revnat` and `weft_lb4_maglev`
/// hold (the reverse-NAT array only at the ids in use).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LbMapContents {
    pub services: BTreeMap<Lb4Key, Lb4Service>,
    pub backends: BTreeMap<u32, Lb4Backend>,
    pub revnat: BTreeMap<u16, Lb4RevNat>,
    /// Per service id, the backend id of every slot.
    pub maglev: BTreeMap<u16, Vec<u32>>,
}

/// The map contents of `state` under `ids`, which must come from
/// [`assign_ids`](crate::lb::assign_ids) for `state`: a frontend or backend without an id is
/// left out.
pub fn lb_map_contents(state: &LbState, ids: &LbIds) -> LbMapContents {
    let mut out = LbMapContents::default();
    for (frontend, lb) in &state.frontends {
        if let Some(&id) = ids.services.get(frontend) {
            let scope = ScopeEntries {
                frontend,
                scope: Scope::External,
                id,
                slots: backend_slots(&lb.backends_active, ids),
                table: maglev_backend_ids(lb, ids),
                flags: external_flags(lb),
            };
            scope.write(lb, &mut out);
        }
        let internal = lb.internal.as_ref();
        if let (Some(internal), Some(&id)) = (internal, ids.internal.get(frontend)) {
            let scope = ScopeEntries {
                frontend,
                scope: Scope::Internal,
                id,
                slots: backend_slots(&internal.backends_active, ids),
                table: internal_maglev_backend_ids(internal, ids),
                flags: kind_flag(lb.kind) | local_only_flag(internal.local_only),
            };
            scope.write(lb, &mut out);
        }
    }
    for (key, state) in state.backends_where(|f, _| ids.services.contains_key(f)) {
        if let Some(&id) = ids.backends.get(&key) {
            out.backends.insert(id, backend_entry(&key, state));
        }
    }
    out
}

/// The entries of one scope of a frontend, before they are written.
struct ScopeEntries<'a> {
    frontend: &'a Frontend,
    scope: Scope,
    id: u16,
    slots: Vec<u32>,
    table: Option<Vec<u32>>,
    /// Flags of the service entry, but for affinity (common to both scopes).
    flags: u16,
}

impl ScopeEntries<'_> {
    fn write(self, lb: &ServiceLb, out: &mut LbMapContents) {
        let table = self.table.filter(|t| !t.is_empty());
        let maglev_size = table.as_ref().map_or(0, Vec::len);
        let entry = service_entry(lb, self.id, &self.slots, maglev_size, self.flags);
        out.services
            .insert(scoped_key(self.frontend, self.scope, 0), entry);
        for (slot, backend_id) in (1u16..).zip(self.slots) {
            out.services.insert(
                scoped_key(self.frontend, self.scope, slot),
                slot_entry(backend_id),
            );
        }
        out.revnat.insert(self.id, revnat_entry(self.frontend));
        if let Some(table) = table {
            out.maglev.insert(self.id, table);
        }
    }
}

fn kind_flag(kind: FrontendKind) -> u16 {
    match kind {
        FrontendKind::ClusterIp => 0,
        FrontendKind::NodePort => SVC_FLAG_NODEPORT,
        FrontendKind::ExternalIp => SVC_FLAG_EXTERNAL_IP,
        FrontendKind::LoadBalancer => SVC_FLAG_LOADBALANCER,
    }
}

fn local_only_flag(local_only: bool) -> u16 {
    if local_only { SVC_FLAG_LOCAL_ONLY } else { 0 }
}

/// Flags of the external (or only) scope's service entry, but for affinity.
fn external_flags(lb: &ServiceLb) -> u16 {
    let named = [
        (lb.dsr, SVC_FLAG_DSR),
        (lb.external_local, SVC_FLAG_EXT_LOCAL),
        (lb.internal.is_some(), SVC_FLAG_TWO_SCOPES),
    ];
    let set = named
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |acc, (_, f)| acc | f);
    kind_flag(lb.kind) | local_only_flag(lb.local_only) | set
}

/// The ids of the active backends, in slot order; at most as many as a slot number counts.
fn backend_slots(active: &[Backend], ids: &LbIds) -> Vec<u32> {
    active
        .iter()
        .filter_map(|b| ids.backends.get(&b.key()).copied())
        .take(usize::from(u16::MAX))
        .collect()
}

/// The key of a frontend's entry at the external scope (its only one when it has one).
pub fn frontend_key(frontend: &Frontend, slot: u16) -> Lb4Key {
    scoped_key(frontend, Scope::External, slot)
}

pub fn scoped_key(frontend: &Frontend, scope: Scope, slot: u16) -> Lb4Key {
    Lb4Key {
        address: frontend.ip.octets(),
        port: frontend.port,
        proto: frontend.proto.ip_proto(),
        scope: match scope {
            Scope::External => LB_SCOPE_EXTERNAL,
            Scope::Internal => LB_SCOPE_INTERNAL,
        },
        slot,
        _pad: [0; 2],
    }
}

fn service_entry(
    lb: &ServiceLb,
    id: u16,
    slots: &[u32],
    maglev_size: usize,
    flags: u16,
) -> Lb4Service {
    let affinity = if lb.affinity_timeout.is_some() {
        SVC_FLAG_AFFINITY
    } else {
        0
    };
    Lb4Service {
        backend_id: 0,
        count: u16::try_from(slots.len()).unwrap_or(u16::MAX),
        rev_nat_index: id,
        flags: flags | affinity,
        algorithm: match lb.algorithm {
            LbAlgorithm::Random => LB_ALG_RANDOM,
            LbAlgorithm::Maglev => LB_ALG_MAGLEV,
        },
        _pad: 0,
        affinity_timeout_s: lb.affinity_timeout.unwrap_or(0),
        maglev_size: u32::try_from(maglev_size).unwrap_or(0),
    }
}

fn slot_entry(backend_id: u32) -> Lb4Service {
    Lb4Service {
        backend_id,
        ..Lb4Service::default()
    }
}

fn revnat_entry(frontend: &Frontend) -> Lb4RevNat {
    Lb4RevNat {
        address: frontend.ip.octets(),
        port: frontend.port,
        _pad: 0,
    }
}

fn backend_entry(key: &BackendKey, state: BackendState) -> Lb4Backend {
    Lb4Backend {
        address: key.ip.octets(),
        port: key.port,
        proto: key.proto.ip_proto(),
        flags: match state {
            BackendState::Active => 0,
            BackendState::Terminating => BACKEND_FLAG_TERMINATING,
        },
    }
}

/// The ids the maps hold: each service entry's frontend, scope and id, each backend's key and
/// id. Entries no Service could have made (an unknown protocol or scope) are not ids.
pub fn ids_from_maps(
    services: &BTreeMap<Lb4Key, Lb4Service>,
    backends: &BTreeMap<u32, Lb4Backend>,
) -> LbIds {
    let in_scope = |scope: u8| {
        services
            .iter()
            .filter(move |(key, _)| key.slot == 0 && key.scope == scope)
            .filter_map(|(key, svc)| {
                let frontend = Frontend {
                    ip: Ipv4Addr::from(key.address),
                    port: key.port,
                    proto: Protocol::from_ip_proto(key.proto)?,
                };
                Some((frontend, svc.rev_nat_index))
            })
    };
    let frontends = in_scope(LB_SCOPE_EXTERNAL);
    let backends = backends.iter().filter_map(|(&id, b)| {
        let key = BackendKey {
            ip: Ipv4Addr::from(b.address),
            port: b.port,
            proto: Protocol::from_ip_proto(b.proto)?,
        };
        Some((key, id))
    });
    LbIds {
        internal: in_scope(LB_SCOPE_INTERNAL).collect(),
        ..LbIds::from_pairs(frontends, backends)
    }
}

/// Ids that named something in `old` and name something else, or nothing, in `new`: flows
/// and affinities recorded under them are stale.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FreedIds {
    pub services: BTreeSet<u16>,
    pub backends: BTreeSet<u32>,
}

impl FreedIds {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.backends.is_empty()
    }
}

pub fn freed_ids(old: &LbIds, new: &LbIds) -> FreedIds {
    FreedIds {
        services: freed(&old.service_ids(), &new.service_ids()),
        backends: freed(&old.backends, &new.backends),
    }
}

fn freed<K: Ord, I: Ord + Copy>(old: &BTreeMap<K, I>, new: &BTreeMap<K, I>) -> BTreeSet<I> {
    old.iter()
        .filter(|(key, id)| new.get(*key) != Some(*id))
        .map(|(_, id)| *id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ClusterConfig, Store,
        lb::{assign_ids, lb_state},
    };

    const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.43.0.10
  sessionAffinity: ClientIP
  ports:
  - {name: http, port: 80, protocol: TCP}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: dns, port: 5353, protocol: UDP}
endpoints:
- addresses: [10.42.0.10]
  conditions: {ready: true}
- addresses: [10.42.1.10]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.42.1.11]
  conditions: {ready: true}
"#;

    fn store(text: &str) -> Store {
        Store::from_manifests([("svc.yaml", text)]).unwrap()
    }

    fn maglev_config() -> ClusterConfig {
        ClusterConfig::from_yaml("loadBalancer: {algorithm: maglev}\nmaglev: {tableSize: 251}\n")
            .unwrap()
    }

    fn contents(store: &Store, config: &ClusterConfig) -> (LbState, LbIds, LbMapContents) {
        let state = lb_state(store, "vps1", config);
        let ids = assign_ids(&state, &LbIds::default()).unwrap();
        let maps = lb_map_contents(&state, &ids);
        (state, ids, maps)
    }

    fn frontend(ip: [u8; 4], port: u16, proto: Protocol) -> Frontend {
        Frontend {
            ip: Ipv4Addr::from(ip),
            port,
            proto,
        }
    }

    #[test]
    fn each_frontend_has_its_entry_its_slots_and_its_revnat() {
        let (_, ids, maps) = contents(&store(MANIFESTS), &ClusterConfig::default());
        let http = frontend([10, 43, 0, 10], 80, Protocol::Tcp);
        let id = ids.services[&http];
        let entry = maps.services[&frontend_key(&http, 0)];
        assert_eq!(entry.count, 2, "the terminating backend gets no slot");
        assert_eq!(entry.rev_nat_index, id);
        assert_eq!(entry.flags, SVC_FLAG_AFFINITY);
        assert_eq!(entry.affinity_timeout_s, 10_800);
        assert_eq!(entry.algorithm, LB_ALG_RANDOM);
        assert_eq!(entry.maglev_size, 0);
        let slot_backends: Vec<Ipv4Addr> = (1..=2)
            .map(|slot| maps.services[&frontend_key(&http, slot)].backend_id)
            .map(|b| Ipv4Addr::from(maps.backends[&b].address))
            .collect();
        assert_eq!(
            slot_backends,
            [Ipv4Addr::new(10, 42, 0, 10), Ipv4Addr::new(10, 42, 1, 11)]
        );
        assert!(!maps.services.contains_key(&frontend_key(&http, 3)));
        assert_eq!(maps.revnat[&id].address, [10, 43, 0, 10]);
        assert_eq!(maps.revnat[&id].port, 80);
        // Two frontends, each with two slots.
        assert_eq!(maps.services.len(), 6);
        assert!(maps.maglev.is_empty());
    }

    #[test]
    fn backends_are_listed_once_per_port_and_terminating_ones_are_flagged() {
        let (_, _, maps) = contents(&store(MANIFESTS), &ClusterConfig::default());
        assert_eq!(maps.backends.len(), 6, "3 endpoints x 2 ports");
        let terminating: BTreeSet<(Ipv4Addr, u16)> = maps
            .backends
            .values()
            .filter(|b| b.flags & BACKEND_FLAG_TERMINATING != 0)
            .map(|b| (Ipv4Addr::from(b.address), b.port))
            .collect();
        assert_eq!(
            terminating,
            BTreeSet::from([
                (Ipv4Addr::new(10, 42, 1, 10), 8080),
                (Ipv4Addr::new(10, 42, 1, 10), 5353)
            ])
        );
    }

    #[test]
    fn maglev_services_carry_their_table_of_backend_ids() {
        let (_, ids, maps) = contents(&store(MANIFESTS), &maglev_config());
        let dns = frontend([10, 43, 0, 10], 53, Protocol::Udp);
        let id = ids.services[&dns];
        let entry = maps.services[&frontend_key(&dns, 0)];
        assert_eq!(entry.algorithm, LB_ALG_MAGLEV);
        assert_eq!(entry.maglev_size, 251);
        let table = &maps.maglev[&id];
        assert_eq!(table.len(), 251);
        let active: BTreeSet<u32> = (1..=entry.count)
            .map(|slot| maps.services[&frontend_key(&dns, slot)].backend_id)
            .collect();
        assert!(table.iter().all(|b| active.contains(b)));
        assert_eq!(table.iter().copied().collect::<BTreeSet<u32>>(), active);
    }

    #[test]
    fn a_service_without_backends_has_a_zero_count_and_no_table() {
        let text = MANIFESTS.split("---").next().unwrap();
        let (_, _, maps) = contents(&store(text), &maglev_config());
        let http = frontend([10, 43, 0, 10], 80, Protocol::Tcp);
        let entry = maps.services[&frontend_key(&http, 0)];
        assert_eq!(entry.count, 0);
        assert_eq!(entry.maglev_size, 0);
        assert!(maps.maglev.is_empty());
        assert!(maps.backends.is_empty());
    }

    #[test]
    fn ids_read_back_from_the_maps_are_the_ids_written() {
        let (_, ids, maps) = contents(&store(MANIFESTS), &maglev_config());
        assert_eq!(ids_from_maps(&maps.services, &maps.backends), ids);
    }

    #[test]
    fn freed_ids_are_those_gone_or_given_to_another_owner() {
        let a = frontend([10, 43, 0, 1], 80, Protocol::Tcp);
        let b = frontend([10, 43, 0, 2], 80, Protocol::Tcp);
        let c = frontend([10, 43, 0, 3], 80, Protocol::Tcp);
        let old = LbIds::from_pairs([(a, 1), (b, 2)], []);
        let new = LbIds::from_pairs([(a, 1), (c, 2)], []);
        assert_eq!(freed_ids(&old, &new).services, BTreeSet::from([2]));
        assert!(freed_ids(&old, &old).is_empty());
    }

    const NORTH_SOUTH: &str = r#"
apiVersion: weft.io/v1alpha1
kind: WeftNode
metadata: {name: vps1}
spec: {podCIDR: 10.42.1.0/24, underlayIP: 198.51.100.1}
---
apiVersion: v1
kind: Service
metadata: {name: edge, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 10.43.0.50
  externalIPs: [198.51.100.1]
  externalTrafficPolicy: POLICY
  ports:
  - {name: http, port: 80, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP, nodePort: 30053}
status: {loadBalancer: {ingress: [{ip: 192.0.2.10}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: edge-1
  namespace: default
  labels: {kubernetes.io/service-name: edge}
addressType: IPv4
ports:
- {name: http, port: 8080}
- {name: dns, port: 5353, protocol: UDP}
endpoints:
- {addresses: [10.42.2.10], nodeName: vps2}
- {addresses: [10.42.3.10], nodeName: vps3}
"#;

    fn north_south(policy: &str, mode: &str) -> (LbIds, LbMapContents) {
        let config = ClusterConfig::from_yaml(&format!(
            "loadBalancer: {{algorithm: maglev, mode: {mode}}}\nmaglev: {{tableSize: 251}}\n"
        ))
        .unwrap();
        let (_, ids, maps) = contents(&store(&NORTH_SOUTH.replace("POLICY", policy)), &config);
        (ids, maps)
    }

    fn entry(maps: &LbMapContents, f: &Frontend, scope: Scope) -> Lb4Service {
        maps.services[&scoped_key(f, scope, 0)]
    }

    #[test]
    fn north_south_entries_carry_their_kind_and_snat_or_dsr() {
        let (_, maps) = north_south("Cluster", "hybrid");
        let flags =
            |ip, port, proto| entry(&maps, &frontend(ip, port, proto), Scope::External).flags;
        assert_eq!(
            flags([198, 51, 100, 1], 30080, Protocol::Tcp),
            SVC_FLAG_NODEPORT | SVC_FLAG_DSR
        );
        assert_eq!(
            flags([198, 51, 100, 1], 30053, Protocol::Udp),
            SVC_FLAG_NODEPORT,
            "hybrid: UDP is SNAT"
        );
        assert_eq!(
            flags([198, 51, 100, 1], 80, Protocol::Tcp),
            SVC_FLAG_EXTERNAL_IP | SVC_FLAG_DSR
        );
        assert_eq!(
            flags([192, 0, 2, 10], 80, Protocol::Tcp),
            SVC_FLAG_LOADBALANCER | SVC_FLAG_DSR
        );
        assert_eq!(
            flags([192, 0, 2, 10], 53, Protocol::Udp),
            SVC_FLAG_LOADBALANCER
        );
        assert_eq!(
            flags([10, 43, 0, 50], 80, Protocol::Tcp),
            0,
            "the clusterIP is unchanged"
        );
        assert!(!weft_common::lb::is_north_south(0));
        assert!(
            maps.services.keys().all(|k| k.scope == LB_SCOPE_EXTERNAL),
            "one scope"
        );
        let np = entry(
            &maps,
            &frontend([198, 51, 100, 1], 30080, Protocol::Tcp),
            Scope::External,
        );
        assert_eq!((np.count, np.maglev_size), (2, 251));
        assert_eq!(maps.revnat[&np.rev_nat_index].address, [198, 51, 100, 1]);
        assert_eq!(maps.revnat[&np.rev_nat_index].port, 30080);
        // 4 kinds x 2 ports, each an entry and 2 slots.
        assert_eq!(maps.services.len(), 8 * 3);
        let (_, snat) = north_south("Cluster", "snat");
        assert!(snat.services.values().all(|e| e.flags & SVC_FLAG_DSR == 0));
    }

    #[test]
    fn external_local_without_a_local_backend_has_count_zero_and_a_full_internal_scope() {
        let (ids, maps) = north_south("Local", "dsr");
        let np = frontend([198, 51, 100, 1], 30080, Protocol::Tcp);
        let external = entry(&maps, &np, Scope::External);
        assert_eq!(external.count, 0, "no backend on vps1: dropped");
        assert_eq!(external.maglev_size, 0);
        assert_eq!(
            external.flags,
            SVC_FLAG_NODEPORT | SVC_FLAG_DSR | SVC_FLAG_EXT_LOCAL | SVC_FLAG_TWO_SCOPES
        );
        assert!(
            !maps
                .services
                .contains_key(&scoped_key(&np, Scope::External, 1))
        );
        assert!(!maps.maglev.contains_key(&external.rev_nat_index));
        let internal = entry(&maps, &np, Scope::Internal);
        assert_eq!(internal.flags, SVC_FLAG_NODEPORT);
        assert_eq!(internal.count, 2);
        assert_eq!(internal.maglev_size, 251);
        assert_eq!(internal.rev_nat_index, ids.internal[&np]);
        assert_ne!(internal.rev_nat_index, external.rev_nat_index);
        for slot in 1..=2 {
            let backend = maps.services[&scoped_key(&np, Scope::Internal, slot)].backend_id;
            assert!(maps.backends.contains_key(&backend));
        }
        assert_eq!(
            maps.revnat[&internal.rev_nat_index], maps.revnat[&external.rev_nat_index],
            "replies are translated back to the same frontend"
        );
        let table: BTreeSet<u32> = maps.maglev[&internal.rev_nat_index]
            .iter()
            .copied()
            .collect();
        assert_eq!(table.len(), 2);
        let cip = entry(
            &maps,
            &frontend([10, 43, 0, 50], 80, Protocol::Tcp),
            Scope::External,
        );
        assert_eq!((cip.flags, cip.count), (0, 2));
        assert!(!maps.services.contains_key(&scoped_key(
            &frontend([10, 43, 0, 50], 80, Protocol::Tcp),
            Scope::Internal,
            0
        )));
    }

    #[test]
    fn external_local_with_a_local_backend_fills_the_external_scope_with_it_only() {
        let text = NORTH_SOUTH
            .replace("POLICY", "Local")
            .replace("nodeName: vps3", "nodeName: vps1");
        let (state, ids, maps) = contents(&store(&text), &maglev_config());
        let np = frontend([198, 51, 100, 1], 30080, Protocol::Tcp);
        let external = entry(&maps, &np, Scope::External);
        assert_eq!(external.count, 1);
        let local = maps.services[&scoped_key(&np, Scope::External, 1)].backend_id;
        assert_eq!(maps.backends[&local].address, [10, 42, 3, 10]);
        assert!(
            maps.maglev[&external.rev_nat_index]
                .iter()
                .all(|&b| b == local)
        );
        assert_eq!(entry(&maps, &np, Scope::Internal).count, 2);
        assert_eq!(ids_from_maps(&maps.services, &maps.backends), ids);
        assert_eq!(
            state.frontends[&np]
                .internal
                .as_ref()
                .map(|i| i.backends_active.len()),
            Some(2)
        );
    }

    #[test]
    fn ids_of_both_scopes_round_trip_through_the_maps() {
        let (ids, maps) = north_south("Local", "snat");
        assert_eq!(ids.internal.len(), 6, "3 north-south kinds x 2 ports");
        assert_eq!(ids_from_maps(&maps.services, &maps.backends), ids);
        let mut stray = maps.services.clone();
        let mut key = frontend_key(&frontend([10, 43, 0, 99], 80, Protocol::Tcp), 0);
        key.scope = 7;
        stray.insert(
            key,
            Lb4Service {
                rev_nat_index: 99,
                ..Lb4Service::default()
            },
        );
        assert_eq!(
            ids_from_maps(&stray, &maps.backends),
            ids,
            "an unknown scope is no id"
        );
    }

    #[test]
    fn an_internal_scope_id_given_to_another_frontend_is_freed() {
        let a = frontend([198, 51, 100, 1], 30080, Protocol::Tcp);
        let mut old = LbIds::from_pairs([(a, 1)], []);
        old.internal.insert(a, 2);
        let mut moved = LbIds::from_pairs([(a, 2)], []);
        moved.internal.insert(a, 1);
        assert_eq!(freed_ids(&old, &moved).services, BTreeSet::from([1, 2]));
        assert!(freed_ids(&old, &old).is_empty());
    }
}
