//! L1: the service maps against `FakeDatapath`.

use std::{collections::BTreeMap, net::Ipv4Addr};

use weft_common::{CtEntry4, CtKey4, Lb4AffinityEntry, Lb4AffinityKey, Lb4RevNat};
use weft_datapath::FakeDatapath;
use weft_model::{
    ClusterConfig, Store,
    k8s::Protocol,
    lb::{BackendKey, Frontend},
    lb_maps::frontend_key,
};

use super::*;

fn service(name: &str, ip: &str, backends: &[&str]) -> String {
    let endpoints: String = backends
        .iter()
        .map(|b| format!("- addresses: [{b}]\n  conditions: {{ready: true}}\n"))
        .collect();
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  clusterIP: {ip}
  sessionAffinity: ClientIP
  ports:
  - {{port: 80, protocol: TCP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: default
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports:
- {{port: 8080, protocol: TCP}}
endpoints:
{endpoints}"#
    )
}

fn store(docs: &[String]) -> Store {
    let text = docs.join("---\n");
    Store::from_manifests([("all.yaml", text.as_str())]).unwrap()
}

fn maglev() -> ClusterConfig {
    ClusterConfig::from_yaml("loadBalancer: {algorithm: maglev}\nmaglev: {tableSize: 251}\n")
        .unwrap()
}

fn frontend(ip: [u8; 4]) -> Frontend {
    Frontend {
        ip: Ipv4Addr::from(ip),
        port: 80,
        proto: Protocol::Tcp,
    }
}

fn backend_key(ip: [u8; 4]) -> BackendKey {
    BackendKey {
        ip: Ipv4Addr::from(ip),
        port: 8080,
        proto: Protocol::Tcp,
    }
}

fn pass(maps: &mut ServiceMaps, dp: &mut FakeDatapath, store: &Store) -> ServiceReport {
    dp.log.clear();
    maps.reconcile(dp, store, "vps1", &maglev()).unwrap()
}

fn two_services(a_backends: &[&str]) -> Store {
    store(&[
        service("a", "10.43.0.10", a_backends),
        service("b", "10.43.0.20", &["10.42.1.20", "10.42.1.21"]),
    ])
}

#[test]
fn the_first_pass_writes_everything_and_the_next_nothing() {
    let mut dp = FakeDatapath::default();
    let mut maps = ServiceMaps::default();
    let store = two_services(&["10.42.0.10"]);
    let first = pass(&mut maps, &mut dp, &store);
    assert_eq!(first.frontends, 2);
    // a: entry + 1 slot; b: entry + 2 slots; 3 backends; 2 reverse-NAT entries.
    assert_eq!(first.entries_written, 2 + 3 + 3 + 2);
    assert_eq!(first.maglev_tables_written, 2);
    assert_eq!(dp.lb_services.len(), 5);
    assert_eq!(dp.maglev.len(), 2);
    let id = maps.ids().services[&frontend([10, 43, 0, 10])];
    assert_eq!(dp.lb_revnat[&id].address, [10, 43, 0, 10]);
    let again = pass(&mut maps, &mut dp, &store);
    assert!(!again.changed(), "{again:?}");
    assert!(dp.log.is_empty(), "{:?}", dp.log);
}

#[test]
fn adding_a_backend_to_one_service_touches_only_that_service() {
    let mut dp = FakeDatapath::default();
    let mut maps = ServiceMaps::default();
    pass(&mut maps, &mut dp, &two_services(&["10.42.0.10"]));
    let b_entries: BTreeMap<_, _> = dp
        .lb_services
        .iter()
        .filter(|(k, _)| k.address == [10, 43, 0, 20])
        .map(|(k, v)| (*k, *v))
        .collect();
    let b_id = maps.ids().services[&frontend([10, 43, 0, 20])];
    let b_table = dp.maglev[&b_id].clone();

    let report = pass(
        &mut maps,
        &mut dp,
        &two_services(&["10.42.0.10", "10.42.0.11"]),
    );
    let new_backend = maps.ids().backends[&backend_key([10, 42, 0, 11])];
    let a_id = maps.ids().services[&frontend([10, 43, 0, 10])];
    assert_eq!(
        dp.log,
        [
            format!("put backend {new_backend}"),
            format!("put maglev {a_id}"),
            format!(
                "put service {:?}",
                frontend_key(&frontend([10, 43, 0, 10]), 2)
            ),
            format!(
                "put service {:?}",
                frontend_key(&frontend([10, 43, 0, 10]), 0)
            ),
        ]
    );
    assert_eq!(report.entries_written, 3);
    assert_eq!(report.maglev_tables_written, 1);
    assert_eq!(
        dp.lb_services[&frontend_key(&frontend([10, 43, 0, 10]), 0)].count,
        2
    );
    for (key, value) in b_entries {
        assert_eq!(dp.lb_services[&key], value);
    }
    assert_eq!(dp.maglev[&b_id], b_table);
}

#[test]
fn a_restarted_agent_adopts_the_maps_and_rewrites_nothing() {
    let mut dp = FakeDatapath::default();
    let store = two_services(&["10.42.0.10", "10.42.0.11"]);
    let mut first = ServiceMaps::default();
    pass(&mut first, &mut dp, &store);
    let mut restarted = ServiceMaps::default();
    let report = pass(&mut restarted, &mut dp, &store);
    assert!(!report.changed(), "{report:?}");
    assert!(dp.log.is_empty(), "{:?}", dp.log);
    assert_eq!(restarted.ids(), first.ids());
}

fn flow(sport: u16, rev_nat_index: u16, backend_id: u32) -> (CtKey4, CtEntry4) {
    (
        CtKey4 {
            saddr: [10, 42, 2, 5],
            sport,
            ..CtKey4::default()
        },
        CtEntry4 {
            expires_s: u32::MAX,
            rev_nat_index,
            backend_id,
            ..CtEntry4::default()
        },
    )
}

#[test]
fn removing_a_backend_purges_its_flows_and_affinities_and_keeps_the_others() {
    let mut dp = FakeDatapath::default();
    let mut maps = ServiceMaps::default();
    pass(
        &mut maps,
        &mut dp,
        &two_services(&["10.42.0.10", "10.42.0.11"]),
    );
    let a = maps.ids().services[&frontend([10, 43, 0, 10])];
    let gone = maps.ids().backends[&backend_key([10, 42, 0, 11])];
    let kept = maps.ids().backends[&backend_key([10, 42, 0, 10])];
    dp.ct.extend([flow(1, a, gone), flow(2, a, kept)]);
    let client = |n: u8| Lb4AffinityKey {
        client: [10, 42, 2, n],
        rev_nat_index: a,
        _pad: 0,
    };
    dp.affinity.insert(
        client(1),
        Lb4AffinityEntry {
            backend_id: gone,
            last_used_s: 1,
        },
    );
    dp.affinity.insert(
        client(2),
        Lb4AffinityEntry {
            backend_id: kept,
            last_used_s: 1,
        },
    );

    let report = pass(&mut maps, &mut dp, &two_services(&["10.42.0.10"]));
    assert_eq!(report.flows_purged, 2);
    let left: Vec<u32> = dp.ct.values().map(|e| e.backend_id).collect();
    assert_eq!(left, [kept]);
    assert_eq!(dp.affinity.keys().copied().collect::<Vec<_>>(), [client(2)]);
    assert!(!dp.lb_backends.contains_key(&gone));
    assert!(
        !dp.lb_services
            .contains_key(&frontend_key(&frontend([10, 43, 0, 10]), 2))
    );
}

#[test]
fn removing_a_service_removes_its_entries_table_revnat_and_flows() {
    let mut dp = FakeDatapath::default();
    let mut maps = ServiceMaps::default();
    pass(&mut maps, &mut dp, &two_services(&["10.42.0.10"]));
    let a = maps.ids().services[&frontend([10, 43, 0, 10])];
    let b = maps.ids().services[&frontend([10, 43, 0, 20])];
    let b_backend = maps.ids().backends[&backend_key([10, 42, 1, 20])];
    dp.ct.extend([flow(1, a, 99), flow(2, b, b_backend)]);

    let only_b = store(&[service("b", "10.43.0.20", &["10.42.1.20", "10.42.1.21"])]);
    let report = pass(&mut maps, &mut dp, &only_b);
    assert_eq!(report.flows_purged, 1);
    assert!(dp.lb_services.keys().all(|k| k.address == [10, 43, 0, 20]));
    assert!(!dp.maglev.contains_key(&a));
    assert_eq!(dp.lb_revnat(a).unwrap(), Lb4RevNat::default());
    assert_eq!(
        dp.ct.values().map(|e| e.rev_nat_index).collect::<Vec<_>>(),
        [b]
    );
    assert_eq!(dp.lb_backends.len(), 2);
}

#[test]
fn a_failed_pass_is_finished_by_the_next() {
    let mut dp = FakeDatapath::default();
    let mut maps = ServiceMaps::default();
    pass(&mut maps, &mut dp, &two_services(&["10.42.0.10"]));
    // Someone deleted entries behind the agent's back and a write failed: the next pass
    // reads the maps again.
    dp.lb_services.clear();
    maps.applied = None;
    let report = pass(&mut maps, &mut dp, &two_services(&["10.42.0.10"]));
    // The 5 service entries, and the reverse-NAT entries, which are read back only at the ids
    // the service entries name.
    assert_eq!(report.entries_written, 5 + 2);
    assert_eq!(dp.lb_services.len(), 5);
    assert!(!pass(&mut maps, &mut dp, &two_services(&["10.42.0.10"])).changed());
}

fn small_maps(services: u32) -> FakeDatapath {
    FakeDatapath {
        lb_capacity: weft_model::lb_capacity::LbCapacity {
            services,
            ..weft_model::lb_capacity::LbCapacity::for_lb_map_max(64)
        },
        ..FakeDatapath::default()
    }
}

fn addresses(dp: &FakeDatapath) -> std::collections::BTreeSet<[u8; 4]> {
    dp.lb_services.keys().map(|k| k.address).collect()
}

fn refused_names(maps: &ServiceMaps) -> Vec<String> {
    maps.room()
        .refused
        .iter()
        .map(|r| r.service.to_string())
        .collect()
}

/// a: 2 entries, b: 3, c: 4 (entry and one slot per backend).
fn three_services(with_a: bool) -> Store {
    let a = service("a", "10.43.0.10", &["10.42.0.10"]);
    let b = service("b", "10.43.0.20", &["10.42.1.20", "10.42.1.21"]);
    let c = service("c", "10.43.0.30", &["10.42.2.1", "10.42.2.2", "10.42.2.3"]);
    let docs: Vec<String> = if with_a { vec![a, b, c] } else { vec![b, c] };
    store(&docs)
}

#[test]
fn services_that_do_not_fit_are_refused_whole_and_the_others_programmed() {
    let mut dp = small_maps(6);
    let mut maps = ServiceMaps::default();
    let report = maps
        .reconcile(&mut dp, &three_services(true), "vps1", &maglev())
        .expect("no write meets a full map");
    assert_eq!(
        addresses(&dp),
        [[10, 43, 0, 10], [10, 43, 0, 20]].into(),
        "a and b programmed, nothing of c"
    );
    assert_eq!(dp.lb_services.len(), 5);
    assert_eq!(dp.lb_backends.len(), 3, "no backend of c");
    assert_eq!((dp.maglev.len(), dp.lb_revnat.len()), (2, 2));
    assert_eq!((report.frontends, report.refused), (2, 1));
    assert_eq!(refused_names(&maps), ["default/c"]);
    assert_eq!(maps.room().services, 2);
    let reason = maps.refusal_reason().expect("a reason");
    assert_eq!(
        reason,
        "1 of 3 Services are not programmed (none of their entries is written): \
         weft_lb4_services has room for 6 entries, the Services need 9; \
         bpf.lbMapMax 16 would hold them all"
    );
    let again = maps
        .reconcile(&mut dp, &three_services(true), "vps1", &maglev())
        .unwrap();
    assert!(
        !again.changed(),
        "a refused Service is not retried write by write"
    );
}

#[test]
fn a_refused_service_is_programmed_once_room_frees_up() {
    let mut dp = small_maps(7);
    let mut maps = ServiceMaps::default();
    maps.reconcile(&mut dp, &three_services(true), "vps1", &maglev())
        .unwrap();
    assert_eq!(refused_names(&maps), ["default/c"]);
    // a goes: its 2 entries are deleted, then c's 4 fit next to b's 3, in the same reconcile.
    let report = maps
        .reconcile(&mut dp, &three_services(false), "vps1", &maglev())
        .unwrap();
    assert_eq!((report.frontends, report.refused), (2, 0));
    assert_eq!(addresses(&dp), [[10, 43, 0, 20], [10, 43, 0, 30]].into());
    assert_eq!(dp.lb_services.len(), 7);
    assert!(maps.refusal_reason().is_none());
    let status = maps.status(64).expect("status after a pass");
    assert_eq!((status.services, status.refused), (2, 0));
    let services_map = &status.maps[0];
    assert_eq!(services_map.map, "weft_lb4_services");
    assert_eq!(
        (services_map.used, services_map.room, services_map.wanted),
        (7, 7, 7)
    );
    assert!(
        services_map.differs_from_config(),
        "7 entries, 64 configured"
    );
}

#[test]
fn a_programmed_service_keeps_its_place_when_a_new_one_comes_first_by_name() {
    let mut dp = small_maps(5);
    let mut maps = ServiceMaps::default();
    let z = service("z", "10.43.0.90", &["10.42.0.10", "10.42.0.11"]);
    maps.reconcile(&mut dp, &store(std::slice::from_ref(&z)), "vps1", &maglev())
        .unwrap();
    let a = service("a", "10.43.0.10", &["10.42.1.10", "10.42.1.11"]);
    maps.reconcile(&mut dp, &store(&[a, z]), "vps1", &maglev())
        .unwrap();
    assert_eq!(refused_names(&maps), ["default/a"]);
    assert_eq!(addresses(&dp), [[10, 43, 0, 90]].into());
}

#[test]
fn refused_services_get_no_health_check_port() {
    let edge = |name: &str, ip: &str, port: u16| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
             spec:\n  type: NodePort\n  clusterIP: {ip}\n  externalTrafficPolicy: Local\n  \
             healthCheckNodePort: {port}\n  ports:\n  - {{port: 80, nodePort: {port}0, protocol: TCP}}\n"
        )
    };
    let mut dp = small_maps(1);
    let mut maps = ServiceMaps::default();
    let both = store(&[edge("a", "10.43.0.1", 3001), edge("b", "10.43.0.2", 3002)]);
    maps.reconcile(&mut dp, &both, "vps1", &maglev()).unwrap();
    assert_eq!(refused_names(&maps), ["default/b"]);
    let ports: Vec<u16> = maps.health_checks().map(|h| h.port).collect();
    assert_eq!(ports, [3001]);
}
