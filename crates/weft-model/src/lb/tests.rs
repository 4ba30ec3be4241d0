use super::*;
use crate::{
    config::MaglevTableSize,
    endpointslice::{derive_endpoint_slices, is_derived},
    k8s::parse_manifest,
};

const M: usize = 16_381;

fn service(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec: {spec}\n---\n"
    )
}

/// An IPv4 slice of Service `service` in namespace `shop`.
fn slice(name: &str, service: &str, endpoints: &str, ports: &str) -> String {
    slice_in("shop", name, service, "IPv4", endpoints, ports)
}

fn slice_in(
    ns: &str,
    name: &str,
    service: &str,
    address_type: &str,
    endpoints: &str,
    ports: &str,
) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}, namespace: {ns}, labels: {{kubernetes.io/service-name: {service}}}}}\n\
         addressType: {address_type}\nendpoints: {endpoints}\nports: {ports}\n---\n"
    )
}

fn store(docs: &[String]) -> Store {
    Store::from_manifests([("cluster.yaml", docs.concat().as_str())]).unwrap()
}

fn config(algorithm: LbAlgorithm) -> ClusterConfig {
    let mut c = ClusterConfig::default();
    c.load_balancer.algorithm = algorithm;
    c
}

fn random() -> ClusterConfig {
    config(LbAlgorithm::Random)
}

fn maglev() -> ClusterConfig {
    config(LbAlgorithm::Maglev)
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn frontend(addr: &str, port: u16, proto: Protocol) -> Frontend {
    Frontend {
        ip: ip(addr),
        port,
        proto,
    }
}

fn key(addr: &str, port: u16, proto: Protocol) -> BackendKey {
    BackendKey {
        ip: ip(addr),
        port,
        proto,
    }
}

fn keys(backends: &[Backend]) -> Vec<String> {
    backends.iter().map(|b| b.key().to_string()).collect()
}

use Protocol::{Tcp, Udp};

const WEB: &str = "{clusterIP: 10.43.0.20, ports: [\
    {name: http, port: 80, targetPort: http}, \
    {name: dns, port: 53, protocol: UDP}, \
    {name: dns-tcp, port: 53, protocol: TCP}]}";

fn web_slice() -> String {
    slice(
        "web-1",
        "web",
        "[{addresses: [10.42.1.10], nodeName: vps2}, {addresses: [10.42.0.10], nodeName: vps1}]",
        "[{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}, \
          {name: dns-tcp, port: 5354, protocol: TCP}]",
    )
}

#[test]
fn every_port_and_protocol_of_a_service_is_a_frontend_with_its_own_backends() {
    let state = lb_state(
        &store(&[service("web", WEB), web_slice()]),
        "vps1",
        &random(),
    );
    assert_eq!(
        state.frontends.keys().copied().collect::<Vec<_>>(),
        [
            frontend("10.43.0.20", 53, Tcp),
            frontend("10.43.0.20", 53, Udp),
            frontend("10.43.0.20", 80, Tcp),
        ]
    );
    let http = &state.frontends[&frontend("10.43.0.20", 80, Tcp)];
    assert_eq!(http.service.to_string(), "shop/web");
    assert_eq!(http.port_name, "http");
    assert_eq!(
        keys(&http.backends_active),
        ["10.42.0.10:8080/TCP", "10.42.1.10:8080/TCP"],
        "sorted by address whatever the slice's order"
    );
    assert_eq!(http.backends_active[0].node.as_deref(), Some("vps1"));
    assert!(http.backends_terminating.is_empty());
    assert_eq!(
        (
            http.algorithm,
            http.affinity_timeout,
            http.local_only,
            &http.maglev
        ),
        (LbAlgorithm::Random, None, false, &None)
    );
    let dns = &state.frontends[&frontend("10.43.0.20", 53, Udp)];
    assert_eq!(
        keys(&dns.backends_active),
        ["10.42.0.10:5353/UDP", "10.42.1.10:5353/UDP"]
    );
    let dns_tcp = &state.frontends[&frontend("10.43.0.20", 53, Tcp)];
    assert_eq!(dns_tcp.port_name, "dns-tcp");
    assert_eq!(
        keys(&dns_tcp.backends_active),
        ["10.42.0.10:5354/TCP", "10.42.1.10:5354/TCP"]
    );
    assert!(state.conflicts.is_empty());
}

#[test]
fn endpoint_conditions_decide_active_terminating_or_left_out() {
    let endpoints = "[\
        {addresses: [10.42.0.1]}, \
        {addresses: [10.42.0.2], conditions: {ready: true}}, \
        {addresses: [10.42.0.3], conditions: {ready: false, serving: true, terminating: true}}, \
        {addresses: [10.42.0.4], conditions: {ready: false}}, \
        {addresses: [10.42.0.5], conditions: {ready: false, serving: false, terminating: true}}, \
        {addresses: [10.42.0.6], conditions: {ready: false, serving: true}}]";
    let docs = [
        service("s", "{clusterIP: 10.43.0.30, ports: [{port: 80}]}"),
        slice("s-1", "s", endpoints, "[{port: 80}]"),
    ];
    let state = lb_state(&store(&docs), "vps1", &random());
    let lb = &state.frontends[&frontend("10.43.0.30", 80, Tcp)];
    assert_eq!(
        keys(&lb.backends_active),
        ["10.42.0.1:80/TCP", "10.42.0.2:80/TCP"]
    );
    assert_eq!(keys(&lb.backends_terminating), ["10.42.0.3:80/TCP"]);
    assert_eq!(
        state.backends(),
        BTreeMap::from([
            (key("10.42.0.1", 80, Tcp), BackendState::Active),
            (key("10.42.0.2", 80, Tcp), BackendState::Active),
            (key("10.42.0.3", 80, Tcp), BackendState::Terminating),
        ])
    );
}

#[test]
fn an_endpoint_in_several_slices_is_one_backend_and_ready_wins() {
    let docs = [
        service("s", "{clusterIP: 10.43.0.30, ports: [{port: 80}]}"),
        slice(
            "s-1",
            "s",
            "[{addresses: [10.42.0.9], conditions: {ready: false, serving: true, terminating: true}}, \
              {addresses: [10.42.0.2]}]",
            "[{port: 8080}]",
        ),
        slice(
            "s-2",
            "s",
            "[{addresses: [10.42.0.9]}, {addresses: [10.42.0.2]}]",
            "[{port: 8080}]",
        ),
    ];
    let state = lb_state(&store(&docs), "vps1", &random());
    let lb = &state.frontends[&frontend("10.43.0.30", 80, Tcp)];
    assert_eq!(
        keys(&lb.backends_active),
        ["10.42.0.2:8080/TCP", "10.42.0.9:8080/TCP"]
    );
    assert!(lb.backends_terminating.is_empty());
}

#[test]
fn slices_of_other_services_namespaces_families_names_or_protocols_are_ignored() {
    let one = "[{addresses: [10.42.0.1]}]";
    let docs = [
        service(
            "s",
            "{clusterIP: 10.43.0.30, ports: [{name: web, port: 80}]}",
        ),
        slice("other-svc", "t", one, "[{name: web, port: 81}]"),
        slice_in(
            "other",
            "other-ns",
            "s",
            "IPv4",
            one,
            "[{name: web, port: 82}]",
        ),
        slice_in(
            "shop",
            "v6",
            "s",
            "IPv6",
            "[{addresses: [\"fd00::1\"]}]",
            "[{name: web, port: 83}]",
        ),
        slice(
            "other-name",
            "s",
            one,
            "[{name: www, port: 84}, {port: 85}]",
        ),
        slice(
            "other-proto",
            "s",
            one,
            "[{name: web, port: 86, protocol: UDP}]",
        ),
        slice("no-number", "s", one, "[{name: web}]"),
        slice(
            "right",
            "s",
            "[{addresses: [10.42.0.7, 10.42.0.8]}]",
            "[{name: web, port: 87}]",
        ),
    ];
    let state = lb_state(&store(&docs), "vps1", &random());
    let lb = &state.frontends[&frontend("10.43.0.30", 80, Tcp)];
    assert_eq!(
        keys(&lb.backends_active),
        ["10.42.0.7:87/TCP"],
        "only the first address of an endpoint, as kube-proxy"
    );
}

#[test]
fn headless_unallocated_and_external_name_services_have_no_frontend() {
    let docs = [
        service("headless", "{clusterIP: None, ports: [{port: 80}]}"),
        service("pending", "{ports: [{port: 80}]}"),
        service(
            "alias",
            "{type: ExternalName, clusterIP: 10.43.0.9, ports: [{port: 80}]}",
        ),
        service("portless", "{clusterIP: 10.43.0.8}"),
        slice(
            "h",
            "headless",
            "[{addresses: [10.42.0.1]}]",
            "[{port: 80}]",
        ),
    ];
    let state = lb_state(&store(&docs), "vps1", &random());
    assert!(state.frontends.is_empty(), "{state:#?}");
}

#[test]
fn internal_traffic_policy_local_keeps_this_nodes_endpoints_only() {
    let endpoints = "[{addresses: [10.42.0.10], nodeName: vps1}, \
                      {addresses: [10.42.0.11], nodeName: vps1}, \
                      {addresses: [10.42.1.10], nodeName: vps2}, \
                      {addresses: [10.42.9.10]}]";
    let docs = [
        service(
            "local",
            "{clusterIP: 10.43.0.40, internalTrafficPolicy: Local, ports: [{port: 80}]}",
        ),
        slice("local-1", "local", endpoints, "[{port: 80}]"),
        service("cluster", "{clusterIP: 10.43.0.41, ports: [{port: 80}]}"),
        slice("cluster-1", "cluster", endpoints, "[{port: 80}]"),
    ];
    let s = store(&docs);
    let active = |node: &str, addr: &str| {
        let state = lb_state(&s, node, &random());
        let lb = &state.frontends[&frontend(addr, 80, Tcp)];
        (lb.local_only, keys(&lb.backends_active))
    };
    assert_eq!(
        active("vps1", "10.43.0.40"),
        (
            true,
            vec!["10.42.0.10:80/TCP".into(), "10.42.0.11:80/TCP".into()]
        )
    );
    assert_eq!(
        active("vps2", "10.43.0.40"),
        (true, vec!["10.42.1.10:80/TCP".into()])
    );
    assert_eq!(
        active("vps3", "10.43.0.40"),
        (true, vec![]),
        "no local endpoint: none"
    );
    for node in ["vps1", "vps3"] {
        let (local, all) = active(node, "10.43.0.41");
        assert!(!local);
        assert_eq!(all.len(), 4);
    }
}

#[test]
fn client_ip_affinity_carries_its_timeout() {
    let docs = [
        service(
            "default-timeout",
            "{clusterIP: 10.43.0.50, sessionAffinity: ClientIP, ports: [{port: 80}]}",
        ),
        service(
            "short",
            "{clusterIP: 10.43.0.51, sessionAffinity: ClientIP, \
              sessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}, ports: [{port: 80}]}",
        ),
        service("none", "{clusterIP: 10.43.0.52, ports: [{port: 80}]}"),
    ];
    let state = lb_state(&store(&docs), "vps1", &random());
    let timeout = |addr: &str| state.frontends[&frontend(addr, 80, Tcp)].affinity_timeout;
    assert_eq!(timeout("10.43.0.50"), Some(10_800));
    assert_eq!(timeout("10.43.0.51"), Some(30));
    assert_eq!(timeout("10.43.0.52"), None);
}

fn many_backends(n: usize) -> String {
    let endpoints: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "{{addresses: [10.42.{}.{}], nodeName: vps{}}}",
                i / 200,
                10 + i % 200,
                1 + i % 3
            )
        })
        .collect();
    slice(
        "s-1",
        "s",
        &format!("[{}]", endpoints.join(", ")),
        "[{port: 8080}]",
    )
}

#[test]
fn maglev_tables_index_the_active_backends_and_are_the_same_on_every_node() {
    let docs = [
        service("s", "{clusterIP: 10.43.0.60, ports: [{port: 80}]}"),
        many_backends(10),
        service("empty", "{clusterIP: 10.43.0.61, ports: [{port: 80}]}"),
    ];
    let s = store(&docs);
    let on_vps1 = lb_state(&s, "vps1", &maglev());
    let lb = &on_vps1.frontends[&frontend("10.43.0.60", 80, Tcp)];
    let table = lb.maglev.as_ref().unwrap();
    assert_eq!(table.len(), M);
    let mut counts = vec![0; lb.backends_active.len()];
    for &i in table {
        counts[i as usize] += 1;
    }
    assert!(
        counts.iter().all(|&c| c == M / 10 || c == M / 10 + 1),
        "{counts:?}"
    );
    let on_vps2 = lb_state(&s, "vps2", &maglev());
    assert_eq!(
        on_vps1, on_vps2,
        "nothing node-specific without a Local policy"
    );
    let empty = &on_vps1.frontends[&frontend("10.43.0.61", 80, Tcp)];
    assert_eq!(empty.maglev, Some(Vec::new()));

    let mut bigger = maglev();
    bigger.maglev.table_size = MaglevTableSize::try_from(65_521).unwrap();
    let big = lb_state(&s, "vps1", &bigger);
    assert_eq!(big.maglev_table_size, 65_521);
    assert_eq!(
        big.frontends[&frontend("10.43.0.60", 80, Tcp)]
            .maglev
            .as_ref()
            .unwrap()
            .len(),
        65_521
    );
}

#[test]
fn a_previous_tables_is_reused_only_for_the_same_backends_size_and_seed() {
    let docs = [
        service("s", "{clusterIP: 10.43.0.60, ports: [{port: 80}]}"),
        many_backends(5),
    ];
    let s = store(&docs);
    let fresh = lb_state(&s, "vps1", &maglev());
    assert_eq!(lb_state_reusing(&s, "vps1", &maglev(), &fresh), fresh);
    // A marker table shows whether the previous one was taken.
    let f = frontend("10.43.0.60", 80, Tcp);
    let mut marked = fresh.clone();
    marked.frontends.get_mut(&f).unwrap().maglev = Some(vec![0; M]);
    let reused = lb_state_reusing(&s, "vps1", &maglev(), &marked);
    assert_eq!(reused.frontends[&f].maglev, Some(vec![0; M]));
    let mut other_seed = marked.clone();
    other_seed.maglev_hash_seed = "other".into();
    assert_eq!(lb_state_reusing(&s, "vps1", &maglev(), &other_seed), fresh);
    let mut other_backends = marked;
    other_backends
        .frontends
        .get_mut(&f)
        .unwrap()
        .backends_active
        .pop();
    assert_eq!(
        lb_state_reusing(&s, "vps1", &maglev(), &other_backends),
        fresh
    );
}

fn pod(name: &str, labels: &str, ports: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {labels}}}\n\
         spec: {{containers: [{{name: c, command: [sleep], ports: {ports}}}]}}\n---\n"
    )
}

fn weft_endpoint(node: &str, pod: &str, ip: &str) -> String {
    format!(
        "apiVersion: weft.io/v1alpha1\nkind: WeftEndpoint\nmetadata: {{name: {node}-{pod}, namespace: shop}}\n\
         spec: {{node: {node}, podName: {pod}, containerID: {pod}, interface: eth0, ipv4: {ip}, identity: 1}}\n---\n"
    )
}

#[test]
fn derived_slices_feed_selector_services_and_applied_ones_selectorless_services() {
    let docs = [
        pod("web-1", "{app: web}", "[{name: http, containerPort: 8080}]"),
        weft_endpoint("vps1", "web-1", "10.42.0.10"),
        pod("web-2", "{app: web}", "[{name: http, containerPort: 8081}]"),
        weft_endpoint("vps2", "web-2", "10.42.1.10"),
        service(
            "web",
            "{clusterIP: 10.43.0.70, selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}]}",
        ),
        service("external", "{clusterIP: 10.43.0.71, ports: [{port: 443}]}"),
        slice(
            "external-1",
            "external",
            "[{addresses: [198.51.100.7]}]",
            "[{port: 8443}]",
        ),
    ];
    let mut s = store(&docs);
    for derived in derive_endpoint_slices(&s) {
        let yaml = derived.to_yaml().unwrap();
        for object in parse_manifest("derived.yaml", &yaml).unwrap() {
            s.insert(object);
        }
    }
    let state = lb_state(&s, "vps1", &random());
    let web = &state.frontends[&frontend("10.43.0.70", 80, Tcp)];
    assert_eq!(
        keys(&web.backends_active),
        ["10.42.0.10:8080/TCP", "10.42.1.10:8081/TCP"],
        "each pod's own number for the named port"
    );
    let external = &state.frontends[&frontend("10.43.0.71", 443, Tcp)];
    assert_eq!(keys(&external.backends_active), ["198.51.100.7:8443/TCP"]);
    assert!(
        !s.endpoint_slices
            .values()
            .any(|sl| sl.service_name() == Some("external") && is_derived(sl)),
        "no slice derived for a selector-less Service"
    );
}

#[test]
fn a_frontend_claimed_twice_is_kept_by_the_first_service() {
    let docs = [
        service("a", "{clusterIP: 10.43.0.80, ports: [{port: 80}]}"),
        service(
            "b",
            "{clusterIP: 10.43.0.80, ports: [{port: 80, protocol: UDP}, {port: 81}]}",
        ),
        service("c", "{clusterIP: 10.43.0.80, ports: [{port: 81}]}"),
    ];
    let state = lb_state(&store(&docs), "vps1", &random());
    assert_eq!(state.frontends.len(), 3);
    let name = |n: &str| ServiceName {
        namespace: "shop".into(),
        name: n.into(),
    };
    assert_eq!(
        state.frontends[&frontend("10.43.0.80", 80, Udp)].service,
        name("b")
    );
    assert_eq!(
        state.conflicts,
        [FrontendConflict {
            frontend: frontend("10.43.0.80", 81, Tcp),
            kept: name("b"),
            dropped: name("c"),
        },]
    );
}

/// Services `web` (10.43.0.20:80) and `db` (10.43.0.21:5432) with the given backend hosts
/// (10.42.0.x), the second sharing `shared` hosts with the first.
fn two_services(web_hosts: &[u8], db_hosts: &[u8]) -> Store {
    let endpoints = |hosts: &[u8]| {
        let list: Vec<String> = hosts
            .iter()
            .map(|h| format!("{{addresses: [10.42.0.{h}], nodeName: vps1}}"))
            .collect();
        format!("[{}]", list.join(", "))
    };
    store(&[
        service("web", "{clusterIP: 10.43.0.20, ports: [{port: 80}]}"),
        slice("web-1", "web", &endpoints(web_hosts), "[{port: 8080}]"),
        service("db", "{clusterIP: 10.43.0.21, ports: [{port: 5432}]}"),
        slice("db-1", "db", &endpoints(db_hosts), "[{port: 8080}]"),
    ])
}

#[test]
fn adding_one_backend_to_one_service_touches_that_service_only() {
    let before = lb_state(&two_services(&[10, 11], &[11, 20]), "vps1", &maglev());
    let after = lb_state_reusing(
        &two_services(&[10, 11, 12], &[11, 20]),
        "vps1",
        &maglev(),
        &before,
    );
    let web = frontend("10.43.0.20", 80, Tcp);
    let db = frontend("10.43.0.21", 5432, Tcp);
    assert_eq!(
        lb_changes(&before, &after),
        LbChanges {
            frontends_changed: vec![web],
            backends_added: vec![key("10.42.0.12", 8080, Tcp)],
            maglev_rebuild: vec![web],
            ..LbChanges::default()
        }
    );
    assert_eq!(before.frontends[&db], after.frontends[&db]);

    let ids_before = assign_ids(&before, &LbIds::default()).unwrap();
    let ids_after = assign_ids(&after, &ids_before).unwrap();
    for (f, id) in &ids_before.services {
        assert_eq!(ids_after.services[f], *id);
    }
    for (b, id) in &ids_before.backends {
        assert_eq!(ids_after.backends[b], *id);
    }
    assert_eq!(ids_after.backends[&key("10.42.0.12", 8080, Tcp)], 4);
    assert_eq!(
        maglev_backend_ids(&before.frontends[&db], &ids_before),
        maglev_backend_ids(&after.frontends[&db], &ids_after),
        "the other service's table holds the same ids"
    );
}

#[test]
fn removing_a_service_keeps_the_backends_another_one_still_uses() {
    let before = lb_state(&two_services(&[10, 11], &[11, 20]), "vps1", &random());
    let mut s = two_services(&[10, 11], &[11, 20]);
    s.services.retain(|(_, name), _| name != "db");
    let after = lb_state(&s, "vps1", &random());
    assert_eq!(
        lb_changes(&before, &after),
        LbChanges {
            frontends_removed: vec![frontend("10.43.0.21", 5432, Tcp)],
            backends_removed: vec![key("10.42.0.20", 8080, Tcp)],
            ..LbChanges::default()
        }
    );
    assert!(lb_changes(&after, &after).is_empty());
}

#[test]
fn a_backend_that_starts_terminating_changes_its_flag_and_the_table() {
    let docs = |conditions: &str| {
        store(&[
            service("s", "{clusterIP: 10.43.0.30, ports: [{port: 80}]}"),
            slice(
                "s-1",
                "s",
                &format!(
                    "[{{addresses: [10.42.0.1]}}, {{addresses: [10.42.0.2], conditions: {conditions}}}]"
                ),
                "[{port: 80}]",
            ),
        ])
    };
    let before = lb_state(&docs("{ready: true}"), "vps1", &maglev());
    let after = lb_state(
        &docs("{ready: false, serving: true, terminating: true}"),
        "vps1",
        &maglev(),
    );
    let f = frontend("10.43.0.30", 80, Tcp);
    assert_eq!(
        lb_changes(&before, &after),
        LbChanges {
            frontends_changed: vec![f],
            backends_changed: vec![key("10.42.0.2", 80, Tcp)],
            maglev_rebuild: vec![f],
            ..LbChanges::default()
        }
    );
    let table = after.frontends[&f].maglev.as_ref().unwrap();
    assert!(
        table.iter().all(|&i| i == 0),
        "terminating backends get no new flows"
    );
}

#[test]
fn a_new_table_size_or_seed_rebuilds_every_table_and_nothing_else_moves() {
    // (A table of one backend is all zeros whatever the seed: it would not change.)
    let s = two_services(&[10, 11], &[20, 21]);
    let before = lb_state(&s, "vps1", &maglev());
    let mut reseeded = maglev();
    reseeded.maglev.hash_seed = "another".into();
    let after = lb_state_reusing(&s, "vps1", &reseeded, &before);
    let changes = lb_changes(&before, &after);
    assert_eq!(changes.maglev_rebuild.len(), 2);
    assert!(changes.backends_added.is_empty() && changes.backends_removed.is_empty());
    // Switching to random drops the tables without rebuilding any.
    let random_state = lb_state(&s, "vps1", &random());
    let changes = lb_changes(&before, &random_state);
    assert!(changes.maglev_rebuild.is_empty());
    assert_eq!(changes.frontends_changed.len(), 2);
}

#[test]
fn ids_are_kept_freed_and_the_smallest_free_given_to_new_ones() {
    let first = lb_state(&two_services(&[10, 11], &[20]), "vps1", &random());
    let ids = assign_ids(&first, &LbIds::default()).unwrap();
    let web = frontend("10.43.0.20", 80, Tcp);
    let db = frontend("10.43.0.21", 5432, Tcp);
    assert_eq!(ids.services, BTreeMap::from([(web, 1), (db, 2)]));
    assert_eq!(
        ids.backends.values().copied().collect::<Vec<_>>(),
        [1, 2, 3],
        "in key order"
    );
    // web goes away, a new service comes: it gets web's freed id; db keeps its own.
    let mut s = two_services(&[10, 11], &[20]);
    s.services.retain(|(_, name), _| name != "web");
    s.insert(
        parse_manifest(
            "x.yaml",
            &service("new", "{clusterIP: 10.43.0.22, ports: [{port: 1}]}"),
        )
        .unwrap()
        .remove(0),
    );
    let second = lb_state(&s, "vps1", &random());
    let ids2 = assign_ids(&second, &ids).unwrap();
    assert_eq!(ids2.services[&db], 2);
    assert_eq!(ids2.services[&frontend("10.43.0.22", 1, Tcp)], 1);
    assert_eq!(
        ids2.backends,
        BTreeMap::from([(key("10.42.0.20", 8080, Tcp), 3)])
    );
    assert_eq!(
        assign_ids(&second, &ids2).unwrap(),
        ids2,
        "stable when nothing changes"
    );
}

#[test]
fn ids_survive_a_restart_from_the_map_pairs_and_bad_pairs_are_replaced() {
    let state = lb_state(&two_services(&[10, 11, 12], &[20]), "vps1", &random());
    let web = frontend("10.43.0.20", 80, Tcp);
    let db = frontend("10.43.0.21", 5432, Tcp);
    // What the pinned maps held: ids from an earlier life, not in key order.
    let pinned = LbIds::from_pairs(
        [(web, 7), (db, 3)],
        [
            (key("10.42.0.10", 8080, Tcp), 9),
            (key("10.42.0.11", 8080, Tcp), 0),
            (key("10.42.0.12", 8080, Tcp), 9),
            (key("10.42.0.99", 8080, Tcp), 1),
        ],
    );
    let ids = assign_ids(&state, &pinned).unwrap();
    assert_eq!(ids.services, BTreeMap::from([(web, 7), (db, 3)]));
    assert_eq!(
        ids.backends,
        BTreeMap::from([
            (key("10.42.0.10", 8080, Tcp), 9),
            // id 0 is not an id; 9 was given twice and its first key keeps it.
            (key("10.42.0.11", 8080, Tcp), 1),
            (key("10.42.0.12", 8080, Tcp), 2),
            (key("10.42.0.20", 8080, Tcp), 3),
        ])
    );
}

#[test]
fn ids_run_out_with_an_error() {
    let wanted: BTreeSet<u32> = (0..4).collect();
    assert_eq!(assign(&wanted, &BTreeMap::new(), 3), None);
    let kept = BTreeMap::from([(0, 3), (1, 1)]);
    assert_eq!(
        assign(&(0..3).collect(), &kept, 3),
        Some(BTreeMap::from([(0, 3), (1, 1), (2, 2)]))
    );

    let template = lb_state(&two_services(&[10], &[]), "vps1", &random());
    let lb = template.frontends.values().next().unwrap().clone();
    let mut huge = LbState::default();
    for i in 0..=u32::from(u16::MAX) {
        let f = Frontend {
            ip: Ipv4Addr::from(0x0a2b_0000 + i),
            port: 80,
            proto: Tcp,
        };
        huge.frontends.insert(f, lb.clone());
    }
    assert_eq!(
        assign_ids(&huge, &LbIds::default()),
        Err(LbIdError::ServiceIdsExhausted {
            wanted: 65_536,
            max: 65_535
        })
    );
}

#[test]
fn maglev_backend_ids_translate_table_indexes_to_backend_ids() {
    let state = lb_state(&two_services(&[10, 11], &[20]), "vps1", &maglev());
    let ids = assign_ids(&state, &LbIds::default()).unwrap();
    let lb = &state.frontends[&frontend("10.43.0.20", 80, Tcp)];
    let by_id = maglev_backend_ids(lb, &ids).unwrap();
    let table = lb.maglev.as_ref().unwrap();
    assert_eq!(by_id.len(), table.len());
    for (slot, id) in table.iter().zip(&by_id) {
        assert_eq!(ids.backends[&lb.backends_active[*slot as usize].key()], *id);
    }
    assert_eq!(maglev_backend_ids(lb, &LbIds::default()), None);
    let random_state = lb_state(&two_services(&[10], &[]), "vps1", &random());
    let lb = random_state.frontends.values().next().unwrap();
    assert_eq!(maglev_backend_ids(lb, &ids), None);
}

// North-south frontends.

const VPS1: &str = "198.51.100.1";

fn weft_node(name: &str, underlay: &str) -> String {
    format!(
        "apiVersion: weft.io/v1alpha1\nkind: WeftNode\nmetadata: {{name: {name}}}\n\
         spec: {{podCIDR: 10.42.{}.0/24, underlayIP: {underlay}}}\n---\n",
        underlay.rsplit('.').next().unwrap_or("9")
    )
}

/// Service `edge` of type `kind` with ports 80/TCP (nodePort 30080) and 53/UDP (nodePort
/// 30053), backed by one endpoint on vps1 and one on vps2; nodes vps1..3 registered.
fn edge(kind: &str, extra: &str) -> Vec<String> {
    vec![
        weft_node("vps1", VPS1),
        weft_node("vps2", "198.51.100.2"),
        weft_node("vps3", "198.51.100.3"),
        service(
            "edge",
            &format!(
                "{{type: {kind}, clusterIP: 10.43.0.50, ports: [\
                 {{name: http, port: 80, nodePort: 30080}}, \
                 {{name: dns, port: 53, protocol: UDP, nodePort: 30053}}]{extra}}}"
            ),
        ),
        slice(
            "edge-1",
            "edge",
            "[{addresses: [10.42.1.10], nodeName: vps1}, {addresses: [10.42.2.10], nodeName: vps2}]",
            "[{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]",
        ),
    ]
}

fn with_mode(mut c: ClusterConfig, mode: crate::LbMode) -> ClusterConfig {
    c.load_balancer.mode = mode;
    c
}

fn kinds(state: &LbState) -> Vec<(String, FrontendKind)> {
    state
        .frontends
        .iter()
        .map(|(f, lb)| (f.to_string(), lb.kind))
        .collect()
}

#[test]
fn a_node_port_service_has_a_frontend_on_this_nodes_address_only() {
    let state = lb_state(&store(&edge("NodePort", "")), "vps1", &random());
    assert_eq!(
        kinds(&state),
        [
            ("10.43.0.50:53/UDP".to_string(), FrontendKind::ClusterIp),
            ("10.43.0.50:80/TCP".to_string(), FrontendKind::ClusterIp),
            ("198.51.100.1:30053/UDP".to_string(), FrontendKind::NodePort),
            ("198.51.100.1:30080/TCP".to_string(), FrontendKind::NodePort),
        ]
    );
    let np = &state.frontends[&frontend(VPS1, 30080, Tcp)];
    assert_eq!(
        keys(&np.backends_active),
        ["10.42.1.10:8080/TCP", "10.42.2.10:8080/TCP"]
    );
    assert_eq!(
        (np.dsr, np.external_local, &np.internal),
        (false, false, &None)
    );
    let on_vps2 = lb_state(&store(&edge("NodePort", "")), "vps2", &random());
    assert!(
        on_vps2
            .frontends
            .contains_key(&frontend("198.51.100.2", 30080, Tcp))
    );
    assert!(!on_vps2.frontends.contains_key(&frontend(VPS1, 30080, Tcp)));
    let unregistered = lb_state(&store(&edge("NodePort", "")), "vps9", &random());
    assert!(
        unregistered
            .frontends
            .values()
            .all(|lb| lb.kind == FrontendKind::ClusterIp),
        "a node without its WeftNode has no address to open node ports on"
    );
    let cluster_ip = edge("ClusterIP", "")
        .join("")
        .replace(", nodePort: 300", ", x: 300");
    let state = lb_state(&store(&[cluster_ip]), "vps1", &random());
    assert_eq!(
        state.frontends.len(),
        2,
        "a ClusterIP Service has no node port"
    );
}

#[test]
fn load_balancer_ingress_and_external_ips_are_frontends_on_the_service_port() {
    let docs = edge(
        "LoadBalancer",
        ", externalIPs: [198.51.100.1, 192.0.2.99]}\nstatus: {loadBalancer: {ingress: [{ip: 192.0.2.10}]}",
    );
    let state = lb_state(&store(&docs), "vps1", &random());
    let kind = |ip: &str, port: u16| state.frontends[&frontend(ip, port, Tcp)].kind;
    assert_eq!(kind("192.0.2.10", 80), FrontendKind::LoadBalancer);
    assert_eq!(kind("192.0.2.99", 80), FrontendKind::ExternalIp);
    assert_eq!(
        kind(VPS1, 80),
        FrontendKind::ExternalIp,
        "an externalIP may be a node address"
    );
    assert_eq!(kind(VPS1, 30080), FrontendKind::NodePort);
    assert_eq!(
        state.frontends.len(),
        2 * 5,
        "clusterIP, NodePort, 2 externalIPs, 1 ingress"
    );
    assert!(state.conflicts.is_empty());
    let lb = &state.frontends[&frontend("192.0.2.10", 53, Udp)];
    assert_eq!(
        keys(&lb.backends_active),
        ["10.42.1.10:5353/UDP", "10.42.2.10:5353/UDP"]
    );
}

#[test]
fn external_addresses_that_would_hijack_cluster_traffic_get_no_frontend() {
    let docs = edge(
        "LoadBalancer",
        ", externalIPs: [10.42.1.10, 10.43.0.20, 203.0.113.4, 198.51.100.2]}\n\
         status: {loadBalancer: {ingress: [{ip: 198.51.100.3}, {ip: 192.0.2.10}]}",
    );
    let mut locked = random();
    locked.external_ips.allowed_cidrs = vec!["192.0.2.0/24".parse().unwrap()];
    for (config, kept) in [
        // Outside the cluster's ranges anything goes; a node address only as an externalIP.
        (random(), vec!["192.0.2.10", "198.51.100.2", "203.0.113.4"]),
        (locked, vec!["192.0.2.10"]),
    ] {
        let state = lb_state(&store(&docs), "vps1", &config);
        let external: BTreeSet<String> = state
            .frontends
            .iter()
            .filter(|(_, lb)| {
                matches!(
                    lb.kind,
                    FrontendKind::ExternalIp | FrontendKind::LoadBalancer
                )
            })
            .map(|(f, _)| f.ip.to_string())
            .collect();
        assert_eq!(external.into_iter().collect::<Vec<_>>(), kept);
        let refused: BTreeMap<String, String> = state
            .refused
            .iter()
            .map(|r| (r.frontend.ip.to_string(), r.reason.clone()))
            .collect();
        assert!(refused["10.42.1.10"].contains("pod CIDR"), "{refused:?}");
        assert!(
            refused["10.43.0.20"].contains("service CIDR"),
            "{refused:?}"
        );
        assert!(
            refused["198.51.100.3"].contains("node's address"),
            "{refused:?}"
        );
        assert!(
            state
                .refused
                .iter()
                .all(|r| r.service.to_string() == "shop/edge")
        );
        assert_eq!(state.refused.len(), 2 * (6 - kept.len()), "per port");
    }
}

#[test]
fn external_ips_disabled_leave_only_their_frontends_out() {
    let docs = edge(
        "LoadBalancer",
        ", externalIPs: [192.0.2.99]}\nstatus: {loadBalancer: {ingress: [{ip: 192.0.2.10}]}",
    );
    let mut config = random();
    config.external_ips.enabled = false;
    let state = lb_state(&store(&docs), "vps1", &config);
    assert!(
        !state
            .frontends
            .contains_key(&frontend("192.0.2.99", 80, Tcp))
    );
    assert!(
        state
            .frontends
            .contains_key(&frontend("192.0.2.10", 80, Tcp))
    );
    assert_eq!(state.refused.len(), 2);
    assert_eq!(state.refused[0].reason, "externalIPs.enabled is false");
}

#[test]
fn dsr_follows_the_mode_and_hybrid_is_dsr_for_tcp_only() {
    use crate::LbMode::{Dsr, Hybrid, Snat};
    let docs = edge("NodePort", "");
    let dsr_of = |mode, ip: &str, port, proto| {
        let state = lb_state(&store(&docs), "vps1", &with_mode(random(), mode));
        state.frontends[&frontend(ip, port, proto)].dsr
    };
    assert!(dsr_of(Hybrid, VPS1, 30080, Tcp));
    assert!(!dsr_of(Hybrid, VPS1, 30053, Udp));
    assert!(dsr_of(Dsr, VPS1, 30053, Udp));
    assert!(!dsr_of(Snat, VPS1, 30080, Tcp));
    assert!(
        !dsr_of(Dsr, "10.43.0.50", 80, Tcp),
        "a clusterIP is never DSR"
    );
}

#[test]
fn a_frontend_claimed_by_an_external_ip_and_a_node_port_goes_to_the_first_claim() {
    let mut docs = edge("NodePort", ", externalIPs: [198.51.100.1]");
    docs[3] = docs[3].replace(
        "{name: http, port: 80, nodePort: 30080}",
        "{name: http, port: 30080, nodePort: 30080}",
    );
    docs.push(service(
        "thief",
        "{clusterIP: 10.43.0.60, externalIPs: [198.51.100.1], ports: [{port: 30053, protocol: UDP}]}",
    ));
    let state = lb_state(&store(&docs), "vps1", &random());
    let conflicts: Vec<(String, String, String)> = state
        .conflicts
        .iter()
        .map(|c| {
            (
                c.frontend.to_string(),
                c.kept.to_string(),
                c.dropped.to_string(),
            )
        })
        .collect();
    assert_eq!(
        conflicts,
        [
            (
                "198.51.100.1:30080/TCP".into(),
                "shop/edge".into(),
                "shop/edge".into()
            ),
            (
                "198.51.100.1:30053/UDP".into(),
                "shop/edge".into(),
                "shop/thief".into()
            ),
        ]
    );
    assert_eq!(
        state.frontends[&frontend(VPS1, 30080, Tcp)].kind,
        FrontendKind::NodePort
    );
}

#[test]
fn external_traffic_policy_local_splits_the_scopes() {
    let docs = edge("NodePort", ", externalTrafficPolicy: Local");
    let state = lb_state(&store(&docs), "vps1", &random());
    let np = &state.frontends[&frontend(VPS1, 30080, Tcp)];
    assert!(np.external_local && !np.local_only);
    assert_eq!(
        keys(&np.backends_active),
        ["10.42.1.10:8080/TCP"],
        "this node's only"
    );
    let internal = np.internal.as_ref().expect("two scopes");
    assert_eq!(
        keys(&internal.backends_active),
        ["10.42.1.10:8080/TCP", "10.42.2.10:8080/TCP"],
        "traffic from pods and nodes reaches every backend"
    );
    assert!(!internal.local_only);
    let cip = &state.frontends[&frontend("10.43.0.50", 80, Tcp)];
    assert_eq!((cip.external_local, &cip.internal), (false, &None));
    assert_eq!(
        cip.backends_active.len(),
        2,
        "the clusterIP is not affected"
    );

    let without_local = lb_state(&store(&docs), "vps3", &random());
    let np3 = &without_local.frontends[&frontend("198.51.100.3", 30080, Tcp)];
    assert!(np3.backends_active.is_empty(), "no local backend: dropped");
    assert_eq!(
        np3.internal.as_ref().map(|i| i.backends_active.len()),
        Some(2)
    );
}

#[test]
fn internal_traffic_policy_decides_the_internal_scope() {
    let itp = lb_state(
        &store(&edge("NodePort", ", internalTrafficPolicy: Local")),
        "vps1",
        &random(),
    );
    let np = &itp.frontends[&frontend(VPS1, 30080, Tcp)];
    assert_eq!(
        np.backends_active.len(),
        2,
        "eTP Cluster: every backend from outside"
    );
    assert!(!np.local_only && !np.external_local);
    let internal = np.internal.as_ref().expect("policies differ");
    assert!(internal.local_only);
    assert_eq!(keys(&internal.backends_active), ["10.42.1.10:8080/TCP"]);
    assert!(itp.frontends[&frontend("10.43.0.50", 80, Tcp)].local_only);

    let both = lb_state(
        &store(&edge(
            "NodePort",
            ", internalTrafficPolicy: Local, externalTrafficPolicy: Local",
        )),
        "vps1",
        &random(),
    );
    let np = &both.frontends[&frontend(VPS1, 30080, Tcp)];
    assert_eq!(np.internal, None, "both Local: one scope");
    assert!(np.local_only && np.external_local);
    assert_eq!(keys(&np.backends_active), ["10.42.1.10:8080/TCP"]);
}

#[test]
fn each_scope_has_a_maglev_table_of_its_own_backends_and_its_own_id() {
    let docs = edge(
        "NodePort",
        ", externalTrafficPolicy: Local, sessionAffinity: ClientIP",
    );
    let state = lb_state(&store(&docs), "vps1", &maglev());
    let f = frontend(VPS1, 30080, Tcp);
    let np = &state.frontends[&f];
    let external = np.maglev.as_ref().expect("external table");
    assert!(external.iter().all(|&i| i == 0), "one local backend");
    let internal = np
        .internal
        .as_ref()
        .and_then(|i| i.maglev.as_ref())
        .expect("internal");
    assert_eq!(internal.len(), M);
    assert!(internal.contains(&0) && internal.contains(&1));
    let ids = assign_ids(&state, &LbIds::default()).unwrap();
    let (ext_id, int_id) = (ids.services[&f], ids.internal[&f]);
    assert_ne!(ext_id, int_id);
    let all: BTreeSet<u16> = ids.service_ids().into_values().collect();
    assert_eq!(
        all.len(),
        ids.services.len() + ids.internal.len(),
        "one id space"
    );
    let timeouts = state.affinity_timeouts(&ids);
    assert_eq!(
        (timeouts.get(&ext_id), timeouts.get(&int_id)),
        (Some(&10_800), Some(&10_800))
    );
    // Rebuilt from scratch each scope is the same; with `previous` both are reused.
    let again = lb_state_reusing(&store(&docs), "vps1", &maglev(), &state);
    assert_eq!(again, state);
    assert!(lb_changes(&state, &again).is_empty());
    // Dropping the policy: the internal scope and its id go.
    let cluster = lb_state(&store(&edge("NodePort", "")), "vps1", &maglev());
    let changes = lb_changes(&state, &cluster);
    assert!(changes.frontends_changed.contains(&f) && changes.maglev_rebuild.contains(&f));
    let new_ids = assign_ids(&cluster, &ids).unwrap();
    assert_eq!(new_ids.services[&f], ext_id);
    assert!(new_ids.internal.is_empty());
    assert!(
        crate::lb_maps::freed_ids(&ids, &new_ids)
            .services
            .contains(&int_id)
    );
}

#[test]
fn an_internal_scope_backend_is_a_backend_of_the_state() {
    let docs = edge("NodePort", ", externalTrafficPolicy: Local");
    let state = lb_state(&store(&docs), "vps3", &random());
    let backends = state.backends();
    assert!(backends.contains_key(&key("10.42.2.10", 8080, Tcp)));
    assert!(backends.contains_key(&key("10.42.1.10", 5353, Udp)));
}

#[test]
fn health_check_node_ports_count_this_nodes_ready_endpoints() {
    let mut docs = edge(
        "LoadBalancer",
        ", externalTrafficPolicy: Local, healthCheckNodePort: 32000",
    );
    docs.push(slice(
        "edge-2",
        "edge",
        "[{addresses: [10.42.1.11], nodeName: vps1, conditions: {ready: false}}, \
          {addresses: [10.42.1.10], nodeName: vps1}]",
        "[{name: http, port: 8080}]",
    ));
    let count = |node: &str| {
        let state = lb_state(&store(&docs), node, &random());
        state
            .health_checks
            .iter()
            .map(|h| (h.port, h.service.to_string(), h.local_endpoints))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        count("vps1"),
        [(32000, "shop/edge".to_string(), 1)],
        "not ready: not counted; twice: once"
    );
    assert_eq!(count("vps3"), [(32000, "shop/edge".to_string(), 0)]);
    let cluster = edge("LoadBalancer", "");
    assert!(
        lb_state(&store(&cluster), "vps1", &random())
            .health_checks
            .is_empty()
    );
}
