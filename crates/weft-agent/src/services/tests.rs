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
