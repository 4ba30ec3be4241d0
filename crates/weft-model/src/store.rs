//! The in-memory cluster state: every object of the current snapshot, by kind and name.

use std::collections::BTreeMap;

use crate::k8s::{
    EndpointSlice, LoadBalancerIpPool, ManifestError, Namespace, Node, Object, Pod, Service,
    WeftEndpoint, WeftNode, parse_manifest,
};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Store {
    /// By (namespace, name).
    pub pods: BTreeMap<(String, String), Pod>,
    pub namespaces: BTreeMap<String, Namespace>,
    pub nodes: BTreeMap<String, Node>,
    /// By node name.
    pub weft_nodes: BTreeMap<String, WeftNode>,
    /// By (namespace, name).
    pub weft_endpoints: BTreeMap<(String, String), WeftEndpoint>,
    /// By (namespace, name).
    pub services: BTreeMap<(String, String), Service>,
    /// By (namespace, name): applied ones and those derived for Services with a selector.
    pub endpoint_slices: BTreeMap<(String, String), EndpointSlice>,
    /// LB-IPAM pools, by name (cluster-scoped).
    pub lb_ip_pools: BTreeMap<String, LoadBalancerIpPool>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{kind} {name} is defined twice (in {first} and {second})")]
    Duplicate {
        kind: &'static str,
        name: String,
        first: String,
        second: String,
    },
}

impl Store {
    /// The store of a snapshot of manifest files, given as (file name, contents). Any malformed
    /// file or duplicate object fails the whole snapshot.
    pub fn from_manifests<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Store, StoreError> {
        ManifestCache::default().store(files)
    }

    /// Replaces the contents with those of a new snapshot; when the snapshot does not load,
    /// the store is left as it was and the error returned (a malformed manifest changes
    /// nothing).
    pub fn reload<'a>(
        &mut self,
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(), StoreError> {
        *self = Store::from_manifests(files)?;
        Ok(())
    }

    /// Adds or replaces one object.
    pub fn insert(&mut self, object: Object) {
        match object {
            Object::Pod(p) => {
                let key = (p.metadata.namespace().to_string(), p.metadata.name.clone());
                self.pods.insert(key, p);
            }
            Object::Namespace(n) => {
                self.namespaces.insert(n.metadata.name.clone(), n);
            }
            Object::Node(n) => {
                self.nodes.insert(n.metadata.name.clone(), n);
            }
            Object::WeftNode(n) => {
                self.weft_nodes.insert(n.metadata.name.clone(), n);
            }
            Object::WeftEndpoint(e) => {
                let key = (e.metadata.namespace().to_string(), e.metadata.name.clone());
                self.weft_endpoints.insert(key, e);
            }
            Object::Service(s) => {
                self.services.insert(namespaced_key(&s.metadata), s);
            }
            Object::EndpointSlice(s) => {
                self.endpoint_slices.insert(namespaced_key(&s.metadata), s);
            }
            Object::LoadBalancerIpPool(p) => {
                self.lb_ip_pools.insert(p.metadata.name.clone(), p);
            }
        }
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods.get(&(namespace.to_string(), name.to_string()))
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// The EndpointSlices of Service `namespace/name` (those labelled with its name), in
    /// slice-name order.
    pub fn slices_of<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
        self.endpoint_slices
            .values()
            .filter(move |s| s.metadata.namespace() == namespace && s.service_name() == Some(name))
    }
}

impl Store {
    /// Every labelled EndpointSlice by the (namespace, name) of its Service, each list in
    /// slice-name order: one pass instead of one scan per Service.
    pub fn slices_by_service(&self) -> BTreeMap<(&str, &str), Vec<&EndpointSlice>> {
        let mut out: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
        for slice in self.endpoint_slices.values() {
            if let Some(service) = slice.service_name() {
                out.entry((slice.metadata.namespace(), service))
                    .or_default()
                    .push(slice);
            }
        }
        out
    }
}

fn namespaced_key(metadata: &crate::k8s::ObjectMeta) -> (String, String) {
    (metadata.namespace().to_string(), metadata.name.clone())
}

/// The objects of the manifest files last loaded, by file name, with the text they came from:
/// loading a snapshot parses only the files whose text changed since (parsing is what a
/// snapshot of thousands of files costs; putting the objects together again is cheap).
#[derive(Clone, Debug, Default)]
pub struct ManifestCache {
    parsed: BTreeMap<String, (String, Vec<Object>)>,
}

impl ManifestCache {
    /// The store of a snapshot, as [`Store::from_manifests`] gives it. On an error the cache
    /// still holds the files that parsed.
    pub fn store<'a>(
        &mut self,
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Store, StoreError> {
        let mut parsed = BTreeMap::new();
        let mut result = Ok(());
        for (file, text) in files {
            let entry = match self.parsed.remove(file) {
                Some(cached) if cached.0 == text => cached,
                _ => match parse_manifest(file, text) {
                    Ok(objects) => (text.to_string(), objects),
                    Err(e) => {
                        result = Err(e.into());
                        break;
                    }
                },
            };
            parsed.insert(file.to_string(), entry);
        }
        if let Err(e) = result {
            self.parsed.append(&mut parsed);
            return Err(e);
        }
        self.parsed = parsed;
        self.assemble()
    }

    fn assemble(&self) -> Result<Store, StoreError> {
        let mut store = Store::default();
        let mut origin: BTreeMap<(&'static str, String), &str> = BTreeMap::new();
        for (file, (_, objects)) in &self.parsed {
            for object in objects {
                let key = (object.kind(), object_key(object));
                if let Some(first) = origin.insert(key.clone(), file) {
                    return Err(StoreError::Duplicate {
                        kind: key.0,
                        name: key.1,
                        first: first.to_string(),
                        second: file.clone(),
                    });
                }
                store.insert(object.clone());
            }
        }
        Ok(store)
    }
}

fn object_key(object: &Object) -> String {
    match object {
        Object::Pod(p) => format!("{}/{}", p.metadata.namespace(), p.metadata.name),
        Object::WeftEndpoint(e) => format!("{}/{}", e.metadata.namespace(), e.metadata.name),
        Object::Service(s) => format!("{}/{}", s.metadata.namespace(), s.metadata.name),
        Object::EndpointSlice(s) => format!("{}/{}", s.metadata.namespace(), s.metadata.name),
        Object::Namespace(n) => n.metadata.name.clone(),
        Object::Node(n) => n.metadata.name.clone(),
        Object::WeftNode(n) => n.metadata.name.clone(),
        Object::LoadBalancerIpPool(p) => p.metadata.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "apiVersion: weft.io/v1alpha1\nkind: WeftNode\nmetadata: {name: vps1}\nspec: {podCIDR: 10.42.0.0/24, underlayIP: 198.51.100.1}\n";
    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, labels: {app: web}}\nspec: {nodeName: vps1}\n";

    #[test]
    fn a_snapshot_fills_the_store_by_kind() {
        let store = Store::from_manifests([("node.yaml", NODE), ("pod.yaml", POD)]).unwrap();
        assert_eq!(
            store.weft_nodes["vps1"].spec.pod_cidr.to_string(),
            "10.42.0.0/24"
        );
        assert_eq!(
            store.pod("default", "web").unwrap().metadata.labels["app"],
            "web"
        );
    }

    #[test]
    fn the_cache_loads_every_snapshot_as_a_fresh_load_would() {
        let pod2 = POD.replace("name: web", "name: api");
        let snapshots: Vec<Vec<(&str, &str)>> = vec![
            vec![("node.yaml", NODE), ("pod.yaml", POD)],
            // A file changed, one added, one unchanged.
            vec![
                ("node.yaml", NODE),
                ("pod.yaml", &pod2),
                ("svc.yaml", SERVICES),
            ],
            // A file gone; an object moved to another file.
            vec![("moved.yaml", NODE), ("svc.yaml", SERVICES)],
            // The same object in two files.
            vec![("moved.yaml", NODE), ("node.yaml", NODE)],
            vec![("bad.yaml", "kind: ["), ("svc.yaml", SERVICES)],
            vec![("svc.yaml", SERVICES), ("pod.yaml", POD)],
            vec![],
        ];
        let mut cache = ManifestCache::default();
        for files in snapshots {
            let fresh = Store::from_manifests(files.iter().copied());
            let cached = cache.store(files.iter().copied());
            assert_eq!(cached, fresh, "{files:?}");
        }
    }

    #[test]
    fn a_malformed_manifest_leaves_the_previous_store_in_use() {
        let mut store = Store::from_manifests([("node.yaml", NODE)]).unwrap();
        let before = store.clone();
        let err = store
            .reload([
                ("node.yaml", NODE),
                ("pod.yaml", POD),
                ("bad.yaml", "kind: ["),
            ])
            .unwrap_err();
        assert!(err.to_string().starts_with("bad.yaml"), "{err}");
        assert_eq!(store, before);
        store.reload([("pod.yaml", POD)]).unwrap();
        assert!(store.weft_nodes.is_empty());
        assert_eq!(store.pods.len(), 1);
    }

    const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: []
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-b, namespace: other, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-a, namespace: shop, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
"#;

    #[test]
    fn services_and_slices_are_kept_by_namespace_and_name() {
        let store = Store::from_manifests([("svc.yaml", SERVICES)]).unwrap();
        assert_eq!(store.service("shop", "web").unwrap().spec.ports[0].port, 80);
        assert_eq!(store.endpoint_slices.len(), 3);
        let names: Vec<&str> = store
            .slices_of("shop", "web")
            .map(|s| s.metadata.name.as_str())
            .collect();
        assert_eq!(names, ["web-a"]);
        let twice = Store::from_manifests([("a.yaml", SERVICES), ("b.yaml", SERVICES)]);
        assert_eq!(
            twice.unwrap_err().to_string(),
            "Service shop/web is defined twice (in a.yaml and b.yaml)"
        );
    }

    #[test]
    fn an_object_defined_twice_is_refused_with_both_files() {
        let err = Store::from_manifests([("a.yaml", NODE), ("b.yaml", NODE)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "WeftNode vps1 is defined twice (in a.yaml and b.yaml)"
        );
    }
}
