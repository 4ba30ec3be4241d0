//! The EndpointSlices of Services with a selector, as kube-controller-manager's EndpointSlice
//! controller would write them, for the lab (which has no controller manager): the lab writes
//! them next to the other manifests and the agents read them like applied ones.
//!
//! A Service's endpoints are the pods of its namespace whose labels hold all of its selector
//! and that have an address (a `WeftEndpoint`); a pod not yet wired has none and is not listed.
//! Each endpoint serves the Service's ports with `targetPort` resolved for that pod: a number
//! as is, a name through the pod's container ports of the same protocol. Pods whose resolved
//! port sets differ (one lacks a named port, or names it with another number) go in different
//! slices, as Kubernetes does. Slices hold every endpoint of their port set (Kubernetes splits
//! at 100; the lab's Services are far smaller).
//!
//! The lab has no pod readiness: a wired pod is ready and serving, never terminating. Services
//! without a selector get nothing here: their slices are the applied ones.

use std::collections::BTreeMap;

use crate::{
    Store,
    k8s::{
        EndpointPort, EndpointSlice, ObjectMeta, Pod, Service, ServicePort, SliceEndpoint,
        TargetPort, WeftEndpoint,
        service::{
            AddressType, EndpointConditions, MANAGED_BY_LABEL, ObjectReference, SERVICE_NAME_LABEL,
            ServiceType,
        },
    },
};

/// The [`MANAGED_BY_LABEL`] value of the slices derived here: what tells them from applied
/// ones.
pub const WEFT_SLICE_MANAGER: &str = "weft.io/endpointslice-controller";

/// Every derived slice of the store's Services, in (namespace, service, slice) order. Slices
/// already in the store are not read: the result is the whole desired set.
pub fn derive_endpoint_slices(store: &Store) -> Vec<EndpointSlice> {
    let endpoints = pod_endpoints(store);
    store
        .services
        .values()
        .filter(|svc| svc.spec.service_type != ServiceType::ExternalName)
        .flat_map(|svc| slices_of(svc, store, &endpoints))
        .collect()
}

/// Whether `slice` is one [`derive_endpoint_slices`] made.
pub fn is_derived(slice: &EndpointSlice) -> bool {
    slice
        .metadata
        .labels
        .get(MANAGED_BY_LABEL)
        .map(String::as_str)
        == Some(WEFT_SLICE_MANAGER)
}

/// The address of each wired pod, by (namespace, pod name); the first `WeftEndpoint` (in
/// name order) when a pod has several.
fn pod_endpoints(store: &Store) -> BTreeMap<(&str, &str), &WeftEndpoint> {
    let mut out = BTreeMap::new();
    for ep in store.weft_endpoints.values() {
        out.entry((ep.metadata.namespace(), ep.spec.pod_name.as_str()))
            .or_insert(ep);
    }
    out
}

fn slices_of(
    svc: &Service,
    store: &Store,
    endpoints: &BTreeMap<(&str, &str), &WeftEndpoint>,
) -> Vec<EndpointSlice> {
    let Some(selector) = svc.spec.selector() else {
        return Vec::new();
    };
    let namespace = svc.metadata.namespace();
    let mut by_ports: BTreeMap<Vec<EndpointPort>, Vec<SliceEndpoint>> = BTreeMap::new();
    let selected = store.pods.values().filter(|pod| {
        pod.metadata.namespace() == namespace
            && selector
                .iter()
                .all(|(k, v)| pod.metadata.labels.get(k) == Some(v))
    });
    for pod in selected {
        let Some(ep) = endpoints.get(&(namespace, pod.metadata.name.as_str())) else {
            continue;
        };
        by_ports
            .entry(endpoint_ports(&svc.spec.ports, pod))
            .or_default()
            .push(slice_endpoint(pod, ep));
    }
    by_ports
        .into_iter()
        .enumerate()
        .map(|(i, (ports, endpoints))| EndpointSlice {
            metadata: slice_metadata(svc, i),
            address_type: AddressType::IPv4,
            endpoints,
            ports,
        })
        .collect()
}

/// The Service's ports this pod serves, with their number on the pod.
fn endpoint_ports(ports: &[ServicePort], pod: &Pod) -> Vec<EndpointPort> {
    ports
        .iter()
        .filter_map(|sp| {
            Some(EndpointPort {
                name: Some(sp.name().to_string()),
                port: Some(resolve_target_port(sp, pod)?),
                protocol: sp.protocol,
            })
        })
        .collect()
}

/// `targetPort` on this pod: a number as is; a name through the pod's container ports of the
/// Service port's protocol; `None` when the pod has no such port.
pub fn resolve_target_port(port: &ServicePort, pod: &Pod) -> Option<u16> {
    match port.target_port() {
        TargetPort::Number(n) => Some(n),
        TargetPort::Name(name) => pod
            .spec
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .find(|cp| cp.name.as_deref() == Some(name.as_str()) && cp.protocol == port.protocol)
            .map(|cp| cp.container_port),
    }
}

fn slice_endpoint(pod: &Pod, ep: &WeftEndpoint) -> SliceEndpoint {
    SliceEndpoint {
        addresses: vec![ep.spec.ipv4.to_string()],
        conditions: EndpointConditions {
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
        },
        node_name: Some(ep.spec.node.clone()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some(pod.metadata.namespace().to_string()),
            name: Some(pod.metadata.name.clone()),
        }),
    }
}

/// `<service>-weft` for the first slice of a Service, `<service>-weft-2`, `-3` ... for the
/// others.
fn slice_metadata(svc: &Service, index: usize) -> ObjectMeta {
    let name = match index {
        0 => format!("{}-weft", svc.metadata.name),
        i => format!("{}-weft-{}", svc.metadata.name, i + 1),
    };
    ObjectMeta {
        name,
        namespace: Some(svc.metadata.namespace().to_string()),
        labels: BTreeMap::from([
            (SERVICE_NAME_LABEL.to_string(), svc.metadata.name.clone()),
            (MANAGED_BY_LABEL.to_string(), WEFT_SLICE_MANAGER.to_string()),
        ]),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::k8s::{Object, Protocol, parse_manifest};

    fn pod(name: &str, ns: &str, labels: &str, ports: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {labels}}}\n\
             spec: {{containers: [{{name: c, command: [sleep], ports: {ports}}}]}}\n---\n"
        )
    }

    fn endpoint(node: &str, ns: &str, pod: &str, ip: &str) -> String {
        format!(
            "apiVersion: weft.io/v1alpha1\nkind: WeftEndpoint\nmetadata: {{name: {node}-{pod}, namespace: {ns}}}\n\
             spec: {{node: {node}, podName: {pod}, containerID: {pod}, interface: eth0, ipv4: {ip}, identity: 1}}\n---\n"
        )
    }

    fn service(name: &str, ns: &str, spec: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n---\n"
        )
    }

    fn cluster() -> Store {
        let text = [
            pod("web-1", "shop", "{app: web}", "[{name: http, containerPort: 8080}]"),
            endpoint("vps1", "shop", "web-1", "10.42.0.10"),
            pod("web-2", "shop", "{app: web, v: two}", "[{name: http, containerPort: 8080}]"),
            endpoint("vps2", "shop", "web-2", "10.42.1.10"),
            // Names its port differently: serves the numbered port only.
            pod("web-3", "shop", "{app: web}", "[{name: www, containerPort: 8080}]"),
            endpoint("vps2", "shop", "web-3", "10.42.1.11"),
            // Not wired yet.
            pod("web-4", "shop", "{app: web}", "[{name: http, containerPort: 8080}]"),
            // Another namespace; another app.
            pod("web-5", "other", "{app: web}", "[]"),
            endpoint("vps1", "other", "web-5", "10.42.0.11"),
            pod("db-1", "shop", "{app: db}", "[]"),
            endpoint("vps1", "shop", "db-1", "10.42.0.12"),
            service(
                "web",
                "shop",
                "{selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}, {name: metrics, port: 9090}]}",
            ),
            service("manual", "shop", "{ports: [{port: 80}]}"),
            service("alias", "shop", "{type: ExternalName, selector: {app: web}}"),
        ]
        .concat();
        Store::from_manifests([("cluster.yaml", text.as_str())]).unwrap()
    }

    fn port(name: &str, port: u16) -> EndpointPort {
        EndpointPort {
            name: Some(name.into()),
            port: Some(port),
            protocol: Protocol::Tcp,
        }
    }

    fn addresses(slice: &EndpointSlice) -> Vec<&str> {
        slice
            .endpoints
            .iter()
            .map(|e| e.addresses[0].as_str())
            .collect()
    }

    #[test]
    fn selected_wired_pods_of_the_namespace_become_endpoints_split_by_port_set() {
        let slices = derive_endpoint_slices(&cluster());
        assert_eq!(slices.len(), 2, "{slices:#?}");
        let (full, partial) = (&slices[0], &slices[1]);
        assert_eq!(full.metadata.name, "web-weft");
        assert_eq!(full.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(full.service_name(), Some("web"));
        assert!(is_derived(full));
        assert_eq!(full.ports, [port("http", 8080), port("metrics", 9090)]);
        assert_eq!(addresses(full), ["10.42.0.10", "10.42.1.10"]);
        assert_eq!(partial.metadata.name, "web-weft-2");
        assert_eq!(partial.ports, [port("metrics", 9090)]);
        assert_eq!(addresses(partial), ["10.42.1.11"]);

        let ep = &full.endpoints[1];
        assert_eq!(ep.node_name.as_deref(), Some("vps2"));
        assert_eq!(
            ep.target_ref.as_ref().unwrap().name.as_deref(),
            Some("web-2")
        );
        let c = ep.conditions;
        assert!(c.is_ready() && c.is_serving() && !c.is_terminating());
    }

    #[test]
    fn a_named_target_port_matches_name_and_protocol() {
        let store = Store::from_manifests([(
            "p.yaml",
            pod(
                "dns",
                "kube-system",
                "{}",
                "[{name: dns, containerPort: 5353, protocol: UDP}, {name: dns-tcp, containerPort: 5354}]",
            )
            .as_str(),
        )])
        .unwrap();
        let pod = store.pod("kube-system", "dns").unwrap();
        let port = |spec: &str| -> ServicePort { serde_norway::from_str(spec).unwrap() };
        assert_eq!(
            resolve_target_port(&port("{port: 53, targetPort: dns, protocol: UDP}"), pod),
            Some(5353)
        );
        assert_eq!(
            resolve_target_port(&port("{port: 53, targetPort: dns}"), pod),
            None,
            "dns is a UDP port"
        );
        assert_eq!(
            resolve_target_port(&port("{port: 53, targetPort: dns-tcp}"), pod),
            Some(5354)
        );
        assert_eq!(resolve_target_port(&port("{port: 53}"), pod), Some(53));
    }

    #[test]
    fn derived_slices_are_written_and_read_back_unchanged() {
        for slice in derive_endpoint_slices(&cluster()) {
            let yaml = slice.to_yaml().unwrap();
            assert!(yaml.starts_with("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"));
            let objects = parse_manifest("slice.yaml", &yaml).unwrap();
            assert_eq!(objects, [Object::EndpointSlice(slice)]);
        }
    }

    #[test]
    fn no_pods_or_no_selector_give_no_slices() {
        let mut store = cluster();
        store.pods.clear();
        assert!(derive_endpoint_slices(&store).is_empty());
        let text = service("s", "default", "{selector: {}, ports: [{port: 80}]}");
        let store = Store::from_manifests([("s.yaml", text.as_str())]).unwrap();
        assert!(derive_endpoint_slices(&store).is_empty());
    }

    #[test]
    fn a_service_without_ports_lists_its_endpoints_without_ports() {
        let text = [
            pod("a", "default", "{app: a}", "[]"),
            endpoint("vps1", "default", "a", "10.42.0.10"),
            service("a", "default", "{clusterIP: None, selector: {app: a}}"),
        ]
        .concat();
        let store = Store::from_manifests([("s.yaml", text.as_str())]).unwrap();
        let slices = derive_endpoint_slices(&store);
        assert_eq!(slices.len(), 1);
        assert!(slices[0].ports.is_empty());
        assert_eq!(
            slices[0].endpoints[0].ipv4(),
            Some(Ipv4Addr::new(10, 42, 0, 10))
        );
    }
}
