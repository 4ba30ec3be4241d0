use super::*;
use crate::{
    ClusterConfig, Store,
    lb::{assign_admitted_ids, assign_ids, lb_state},
    lb_maps::lb_map_contents,
};

/// Service `default/name` at 10.43.0.`n` with `ports` TCP ports and endpoints
/// 10.42.`n`.1..=`backends` (no EndpointSlice without endpoints).
fn service(name: &str, n: u8, ports: u16, backends: u8) -> String {
    let service_ports: String = (0..ports)
        .map(|p| format!("  - {{name: p{p}, port: {}, protocol: TCP}}\n", 80 + p))
        .collect();
    let slice_ports: String = (0..ports)
        .map(|p| format!("- {{name: p{p}, port: {}, protocol: TCP}}\n", 8080 + p))
        .collect();
    let endpoints: String = (1..=backends)
        .map(|b| format!("- addresses: [10.42.{n}.{b}]\n  conditions: {{ready: true}}\n"))
        .collect();
    let service = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  clusterIP: 10.43.0.{n}\n  ports:\n{service_ports}"
    );
    if backends == 0 {
        return service;
    }
    format!(
        "{service}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  \
         name: {name}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\n\
         addressType: IPv4\nports:\n{slice_ports}endpoints:\n{endpoints}"
    )
}

/// A NodePort and LoadBalancer Service with `externalTrafficPolicy: Local`: two scopes per
/// north-south frontend, a terminating endpoint, a backend on this node.
const EDGE: &str = r#"apiVersion: weft.io/v1alpha1
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
  externalTrafficPolicy: Local
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
- {addresses: [10.42.1.10], nodeName: vps1}
- {addresses: [10.42.3.10], nodeName: vps3}
- addresses: [10.42.3.11]
  nodeName: vps3
  conditions: {ready: false, serving: true, terminating: true}
"#;

fn store(docs: &[String]) -> Store {
    let text = docs.join("---\n");
    Store::from_manifests([("all.yaml", text.as_str())]).unwrap()
}

fn maglev() -> ClusterConfig {
    ClusterConfig::from_yaml("loadBalancer: {algorithm: maglev}\nmaglev: {tableSize: 251}\n")
        .unwrap()
}

fn name(n: &str) -> ServiceName {
    ServiceName {
        namespace: "default".into(),
        name: n.into(),
    }
}

fn capacity(services: u32, backends: u32, revnat: u32, maglev: u32) -> LbCapacity {
    LbCapacity {
        services,
        backends,
        revnat,
        maglev,
    }
}

/// The contents of the Services `fit` admitted, with ids as the agent assigns them.
fn admitted_contents(state: &LbState, fit: &Fit, cap: &LbCapacity) -> LbMapContents {
    let refused = fit.refused_services();
    let ids = assign_admitted_ids(
        state,
        |lb| !refused.contains(&lb.service),
        &LbIds::default(),
        cap.max_service_id(),
    )
    .unwrap();
    lb_map_contents(state, &ids)
}

#[test]
fn the_needs_of_services_are_exactly_what_the_maps_get() {
    // Two scopes, terminating backends, UDP and TCP, Maglev tables and a Service without
    // endpoints (an entry, an id, no table); b and c share a backend (counted once).
    let mut docs = vec![
        EDGE.to_string(),
        service("a", 1, 2, 3),
        service("empty", 2, 1, 0),
    ];
    docs.push(service("b", 3, 1, 2));
    docs.push(service("c", 4, 1, 1).replace("10.42.4.1]", "10.42.3.1]"));
    for config in [ClusterConfig::default(), maglev()] {
        let state = lb_state(&store(&docs), "vps1", &config);
        let ids = assign_ids(&state, &LbIds::default()).unwrap();
        let contents = lb_map_contents(&state, &ids);
        let fit = fit(
            &state,
            &LbMapContents::default(),
            &LbIds::default(),
            &LbCapacity::default(),
        );
        assert!(fit.refused.is_empty());
        assert_eq!(fit.wanted, LbUsage::of(&contents));
        assert!(contents.services.keys().any(|k| k.scope == 1), "two scopes");
    }
    let state = lb_state(&store(&docs), "vps1", &maglev());
    let wanted = fit(
        &state,
        &LbMapContents::default(),
        &LbIds::default(),
        &LbCapacity::default(),
    )
    .wanted;
    // a: 2 ports x (entry + 3 slots); empty: 1; b: 3; c: 2; edge: clusterIP 2 ports x (1 + 2
    // slots), 3 north-south frontends x 2 ports x (external 1 + 1 local slot, internal 1 + 2).
    assert_eq!(wanted.services, 8 + 1 + 3 + 2 + 6 + 30);
    // a 6, b 2, c 0 of its own, edge 3 endpoints x 2 ports.
    assert_eq!(wanted.backends, 6 + 2 + 6);
    assert_eq!(wanted.revnat, 2 + 1 + 1 + 1 + 2 + 12);
    assert_eq!(
        wanted.maglev,
        2 + 1 + 1 + 2 + 12,
        "every scope entry but empty's"
    );
}

#[test]
fn services_that_do_not_fit_are_refused_whole_by_name_and_the_rest_fit() {
    // Each Service: 1 port, 3 backends: 4 entries, 3 backends, 1 id.
    let docs: Vec<String> = ["d", "b", "a", "c"]
        .iter()
        .zip(1u8..)
        .map(|(n, i)| service(n, i, 1, 3))
        .collect();
    let state = lb_state(&store(&docs), "vps1", &ClusterConfig::default());
    let cap = capacity(10, 100, 100, 100);
    let fit = fit(&state, &LbMapContents::default(), &LbIds::default(), &cap);
    assert_eq!(
        fit.refused,
        [
            Refusal {
                service: name("c"),
                map: LbMap::Services
            },
            Refusal {
                service: name("d"),
                map: LbMap::Services
            }
        ]
    );
    assert_eq!(fit.wanted.services, 16);
    let contents = admitted_contents(&state, &fit, &cap);
    assert_eq!(LbUsage::of(&contents).services, 8, "a and b, whole");
    assert!(LbUsage::of(&contents).fits(&cap));
    let addresses: BTreeSet<[u8; 4]> = contents.services.keys().map(|k| k.address).collect();
    assert_eq!(addresses, BTreeSet::from([[10, 43, 0, 3], [10, 43, 0, 2]]));
}

#[test]
fn a_smaller_service_after_a_refused_one_still_fits() {
    let docs = vec![
        service("a", 1, 1, 2),
        service("big", 2, 1, 6),
        service("small", 3, 1, 1),
    ];
    let state = lb_state(&store(&docs), "vps1", &ClusterConfig::default());
    let cap = capacity(6, 100, 100, 100);
    let fit = fit(&state, &LbMapContents::default(), &LbIds::default(), &cap);
    assert_eq!(fit.refused_services(), BTreeSet::from([name("big")]));
}

#[test]
fn services_the_maps_hold_keep_their_place_before_new_ones() {
    let docs = vec![service("z", 1, 1, 2)];
    let cap = capacity(5, 100, 100, 100);
    let config = ClusterConfig::default();
    let before = lb_state(&store(&docs), "vps1", &config);
    let ids = assign_ids(&before, &LbIds::default()).unwrap();
    let applied = lb_map_contents(&before, &ids);

    let docs = vec![service("a", 2, 1, 2), service("z", 1, 1, 2)];
    let state = lb_state(&store(&docs), "vps1", &config);
    let fit = fit(&state, &applied, &ids, &cap);
    assert_eq!(
        fit.refused,
        [Refusal {
            service: name("a"),
            map: LbMap::Services
        }],
        "a comes first by name, z is programmed already"
    );
}

#[test]
fn entries_the_pass_has_yet_to_delete_take_room_until_they_are_gone() {
    let cap = capacity(3, 100, 100, 100);
    let config = ClusterConfig::default();
    let old = lb_state(&store(&[service("old", 1, 1, 2)]), "vps1", &config);
    let ids = assign_ids(&old, &LbIds::default()).unwrap();
    let applied = lb_map_contents(&old, &ids);
    let new = lb_state(&store(&[service("new", 2, 1, 2)]), "vps1", &config);
    let first = fit(&new, &applied, &ids, &cap);
    assert_eq!(first.refused_services(), BTreeSet::from([name("new")]));
    // The pass deletes `old`'s entries; the next one has room.
    let second = fit(&new, &LbMapContents::default(), &LbIds::default(), &cap);
    assert!(second.refused.is_empty());
}

#[test]
fn backends_ids_and_tables_are_limits_too() {
    let docs = vec![
        service("a", 1, 1, 2),
        service("b", 2, 1, 2),
        service("c", 3, 1, 1),
    ];
    let config = maglev();
    let state = lb_state(&store(&docs), "vps1", &config);
    let none = (LbMapContents::default(), LbIds::default());
    let refused = |cap: LbCapacity| fit(&state, &none.0, &none.1, &cap).refused;
    assert_eq!(
        refused(capacity(100, 3, 100, 100)),
        [Refusal {
            service: name("b"),
            map: LbMap::Backends
        }]
    );
    // Two ids: the array needs 3 entries (index 0 is no service).
    assert_eq!(
        refused(capacity(100, 100, 3, 100)),
        [Refusal {
            service: name("c"),
            map: LbMap::RevNat
        }]
    );
    assert_eq!(
        refused(capacity(100, 100, 100, 1)),
        [
            Refusal {
                service: name("b"),
                map: LbMap::Maglev
            },
            Refusal {
                service: name("c"),
                map: LbMap::Maglev
            }
        ]
    );
}

#[test]
fn a_service_of_several_ports_is_one_unit() {
    // 3 ports x (entry + 2 slots) = 9 entries: it does not fit in 8, and none of its ports is
    // programmed.
    let state = lb_state(
        &store(&[service("multi", 1, 3, 2), service("one", 2, 1, 1)]),
        "vps1",
        &ClusterConfig::default(),
    );
    let cap = capacity(8, 100, 100, 100);
    let fit = fit(&state, &LbMapContents::default(), &LbIds::default(), &cap);
    assert_eq!(fit.refused_services(), BTreeSet::from([name("multi")]));
    let contents = admitted_contents(&state, &fit, &cap);
    assert!(
        contents
            .services
            .keys()
            .all(|k| k.address == [10, 43, 0, 2])
    );
    assert_eq!(contents.backends.len(), 1);
}

#[test]
fn lb_map_max_sizes_every_map_and_ids_fit_the_reverse_nat_array() {
    let small = LbCapacity::for_lb_map_max(300);
    assert_eq!(small, capacity(300, 300, 300, 300));
    assert_eq!(small.max_service_id(), 299);
    assert_eq!(small.room(LbMap::RevNat), 299);
    assert_eq!(small.room(LbMap::Services), 300);
    let large = LbCapacity::for_lb_map_max(1 << 20);
    assert_eq!(large, capacity(1 << 20, 1 << 20, 65_536, 65_536));
    assert_eq!(large.max_service_id(), u16::MAX);
    assert_eq!(LbCapacity::default(), LbCapacity::for_lb_map_max(65_536));

    // Ids are given up to the array's last index only.
    let docs: Vec<String> = (1..=3u8)
        .map(|i| service(&format!("s{i}"), i, 1, 1))
        .collect();
    let state = lb_state(&store(&docs), "vps1", &ClusterConfig::default());
    let err = assign_admitted_ids(&state, |_| true, &LbIds::default(), 2).unwrap_err();
    assert!(err.to_string().contains("3 service frontends"), "{err}");
    let ids = assign_admitted_ids(&state, |_| true, &LbIds::default(), 3).unwrap();
    assert_eq!(ids.services.values().max(), Some(&3));
}

#[test]
fn the_lb_map_max_needed_is_the_largest_need_and_ids_have_a_ceiling() {
    let usage = |services, backends, revnat, maglev| LbUsage {
        services,
        backends,
        revnat,
        maglev,
    };
    assert_eq!(
        usage(116_538, 77_692, 38_846, 0).lb_map_max_needed(),
        Some(116_538)
    );
    assert_eq!(
        usage(10, 20, 30, 0).lb_map_max_needed(),
        Some(31),
        "ids start at 1"
    );
    assert_eq!(usage(1, 1, 1, 1).lb_map_max_needed(), Some(LbMapMax::MIN));
    assert_eq!(usage(10, 10, 65_535, 0).lb_map_max_needed(), Some(65_536));
    assert_eq!(usage(10, 10, 65_536, 0).lb_map_max_needed(), None);
    assert_eq!(usage(1 << 25, 10, 10, 0).lb_map_max_needed(), None);
}
