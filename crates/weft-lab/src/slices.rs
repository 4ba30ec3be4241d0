//! The lab as kube-controller-manager's EndpointSlice controller: the slices
//! [`derive_endpoint_slices`] gives for the manifests directory's current state are written
//! next to the other objects, one file each, and the derived ones no longer wanted removed.
//! Applied slices (those of selector-less Services) are left alone. A file is only rewritten
//! when its content changes: the agents watch the directory.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use anyhow::Context as _;
use weft_model::{
    Store,
    endpointslice::{derive_endpoint_slices, is_derived},
    k8s::EndpointSlice,
};

use crate::apply::Manifests;

/// Prefix of the derived slices' files. `apply` names its files `<kind>_<namespace>_<name>`,
/// so no applied object's file starts with it.
pub const DERIVED_SLICE_FILE_PREFIX: &str = "derived-endpointslice_";

/// What a sync changed, as `namespace/name` of the slices.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SliceChanges {
    pub written: Vec<String>,
    pub removed: Vec<String>,
}

impl SliceChanges {
    pub fn is_empty(&self) -> bool {
        self.written.is_empty() && self.removed.is_empty()
    }
}

fn derived_file_name(slice: &EndpointSlice) -> String {
    format!(
        "{DERIVED_SLICE_FILE_PREFIX}{}_{}.yaml",
        slice.metadata.namespace(),
        slice.metadata.name
    )
}

/// `namespace/name` of the slice a derived file holds, from its name.
fn slice_of_file(file: &str) -> Option<String> {
    let rest = file
        .strip_prefix(DERIVED_SLICE_FILE_PREFIX)?
        .strip_suffix(".yaml")?;
    let (namespace, name) = rest.split_once('_')?;
    Some(format!("{namespace}/{name}"))
}

/// Brings the derived EndpointSlices of manifests directory `dir` to what its Services, Pods
/// and WeftEndpoints give.
pub fn sync_endpoint_slices(dir: &Path) -> anyhow::Result<SliceChanges> {
    let mut manifests = Manifests::read(dir)?;
    let store = manifests.store()?;
    sync_slices_of(&mut manifests, &store)
}

/// [`sync_endpoint_slices`] of directory `manifests`, whose objects are `store`.
pub(crate) fn sync_slices_of(
    manifests: &mut Manifests,
    store: &Store,
) -> anyhow::Result<SliceChanges> {
    let wanted = wanted_files(store)?;
    let mut changes = SliceChanges::default();
    for (file, text) in &wanted {
        if manifests.files().get(file) != Some(text) {
            manifests.write(file, text)?;
            changes
                .written
                .push(slice_of_file(file).unwrap_or_else(|| file.clone()));
        }
    }
    let stale: Vec<String> = manifests
        .files()
        .keys()
        .filter(|f| f.starts_with(DERIVED_SLICE_FILE_PREFIX) && !wanted.contains_key(*f))
        .cloned()
        .collect();
    for file in stale {
        if manifests.remove(&file)? {
            changes
                .removed
                .push(slice_of_file(&file).unwrap_or_else(|| file.clone()));
        }
    }
    Ok(changes)
}

/// The derived slices' files and texts. A derived slice named like an applied one is left out:
/// two objects of one name would make the directory unreadable to the agents.
fn wanted_files(store: &Store) -> anyhow::Result<BTreeMap<String, String>> {
    let applied: BTreeSet<&(String, String)> = store
        .endpoint_slices
        .iter()
        .filter(|(_, s)| !is_derived(s))
        .map(|(key, _)| key)
        .collect();
    let mut out = BTreeMap::new();
    for slice in derive_endpoint_slices(store) {
        let key = (
            slice.metadata.namespace().to_string(),
            slice.metadata.name.clone(),
        );
        if applied.contains(&key) {
            continue;
        }
        let text = slice
            .to_yaml()
            .with_context(|| format!("writing EndpointSlice {}/{}", key.0, key.1))?;
        out.insert(derived_file_name(&slice), text);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::temp_dir::TempDir;

    const WEB_SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
        spec: {clusterIP: 10.43.0.20, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n";
    const WEB_FILE: &str = "derived-endpointslice_shop_web-weft.yaml";

    fn pod(name: &str, ip: &str) -> [(String, String); 2] {
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: web}}}}\n\
             spec: {{containers: [{{name: c, command: [sleep]}}]}}\n"
        );
        let endpoint = format!(
            "apiVersion: weft.io/v1alpha1\nkind: WeftEndpoint\nmetadata: {{name: vps1-{name}, namespace: shop}}\n\
             spec: {{node: vps1, podName: {name}, containerID: {name}, interface: eth0, ipv4: {ip}, identity: 7}}\n"
        );
        [
            (format!("pod_shop_{name}.yaml"), pod),
            (format!("weftendpoint-vps1-{name}.yaml"), endpoint),
        ]
    }

    fn add_pod(dir: &TempDir, name: &str, ip: &str) {
        for (file, text) in pod(name, ip) {
            dir.write(&file, &text);
        }
    }

    fn addresses(dir: &TempDir, file: &str) -> Vec<String> {
        let text = dir.read(file).expect("slice file");
        let store = Store::from_manifests([(file, text.as_str())]).expect("slice parses");
        store
            .endpoint_slices
            .values()
            .flat_map(|s| s.endpoints.iter().map(|e| e.addresses[0].clone()))
            .collect()
    }

    fn cluster() -> TempDir {
        let dir = TempDir::new();
        dir.write("service_shop_web.yaml", WEB_SERVICE);
        add_pod(&dir, "web-1", "10.42.0.10");
        dir
    }

    #[test]
    fn a_new_pod_appears_in_its_services_slice() {
        let dir = cluster();
        let changes = sync_endpoint_slices(&dir.0).expect("sync");
        assert_eq!(changes.written, ["shop/web-weft"]);
        assert_eq!(addresses(&dir, WEB_FILE), ["10.42.0.10"]);
        add_pod(&dir, "web-2", "10.42.1.10");
        let changes = sync_endpoint_slices(&dir.0).expect("sync");
        assert_eq!(changes.written, ["shop/web-weft"]);
        assert_eq!(addresses(&dir, WEB_FILE), ["10.42.0.10", "10.42.1.10"]);
    }

    #[test]
    fn a_deleted_pod_disappears_from_the_slice() {
        let dir = cluster();
        add_pod(&dir, "web-2", "10.42.1.10");
        sync_endpoint_slices(&dir.0).expect("sync");
        dir.remove("pod_shop_web-1.yaml");
        sync_endpoint_slices(&dir.0).expect("sync");
        assert_eq!(addresses(&dir, WEB_FILE), ["10.42.1.10"]);
    }

    #[test]
    fn a_deleted_service_takes_its_slices_along() {
        let dir = cluster();
        sync_endpoint_slices(&dir.0).expect("sync");
        dir.remove("service_shop_web.yaml");
        let changes = sync_endpoint_slices(&dir.0).expect("sync");
        assert_eq!(changes.removed, ["shop/web-weft"]);
        assert!(dir.read(WEB_FILE).is_none());
    }

    #[test]
    fn applied_slices_are_left_alone_and_win_over_a_derived_namesake() {
        let dir = cluster();
        let applied = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
            metadata: {name: web-weft, namespace: shop, labels: {kubernetes.io/service-name: web}}\n\
            addressType: IPv4\nendpoints: [{addresses: [10.42.9.9]}]\n";
        dir.write("endpointslice_shop_web-weft.yaml", applied);
        let manual = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
            metadata: {name: ext, namespace: shop, labels: {kubernetes.io/service-name: ext}}\n\
            addressType: IPv4\nendpoints: [{addresses: [192.0.2.1]}]\n";
        dir.write("endpointslice_shop_ext.yaml", manual);
        let changes = sync_endpoint_slices(&dir.0).expect("sync");
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(
            dir.read("endpointslice_shop_web-weft.yaml").as_deref(),
            Some(applied)
        );
        assert_eq!(
            dir.read("endpointslice_shop_ext.yaml").as_deref(),
            Some(manual)
        );
        assert!(dir.read(WEB_FILE).is_none());
    }

    #[test]
    fn unchanged_slices_are_not_rewritten() {
        let dir = cluster();
        sync_endpoint_slices(&dir.0).expect("sync");
        let before = dir.modified(WEB_FILE);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let changes = sync_endpoint_slices(&dir.0).expect("sync again");
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(dir.modified(WEB_FILE), before);
    }

    #[test]
    fn derived_file_names_map_back_to_their_slice() {
        assert_eq!(slice_of_file(WEB_FILE).as_deref(), Some("shop/web-weft"));
        assert_eq!(slice_of_file("endpointslice_shop_web.yaml"), None);
    }
}
