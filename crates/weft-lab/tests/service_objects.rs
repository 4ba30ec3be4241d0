//! L3: Services in a lab run by Weft — `apply` stores a Service with an allocated clusterIP,
//! and the lab derives its EndpointSlice from the pods the agents wired, following pods as they
//! are applied and deleted. Needs root.

use std::{fs, path::PathBuf};

use weft_lab::{
    LabSpec,
    apply::{apply, current_files, delete},
    runtime::{self, Binaries},
    testing::{LabGuard, running_as_root, unique_lab_name},
};
use weft_model::{Store, endpointslice::is_derived};

fn pod(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: web}}}}\n\
         spec: {{nodeName: vps1, containers: [{{name: main, command: [sleep, '3600']}}]}}\n"
    )
}

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n\
                       spec: {selector: {app: web}, ports: [{port: 80}]}\n";

struct Request(PathBuf);

impl Request {
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, text).expect("request file");
        path
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn store(lab: &str) -> Store {
    let files = current_files(&runtime::manifests_dir(lab)).expect("manifests");
    Store::from_manifests(files.iter().map(|(k, v)| (k.as_str(), v.as_str()))).expect("loads")
}

fn slice_addresses(lab: &str) -> Vec<String> {
    store(lab)
        .slices_of("default", "web")
        .filter(|s| is_derived(s))
        .flat_map(|s| s.endpoints.iter().map(|e| e.addresses[0].clone()))
        .collect()
}

#[test]
fn a_service_gets_a_cluster_ip_and_slices_follow_its_pods() {
    if !running_as_root("a_service_gets_a_cluster_ip_and_slices_follow_its_pods") {
        return;
    }
    let bins = Binaries::locate().expect("weft-agent and weft-cni are built");
    let spec = LabSpec::with_size(unique_lab_name("svc"), 1, 0);
    let lab = LabGuard::new(runtime::up_cluster(&spec, &bins, None).expect("cluster up"));
    let request = Request(std::env::temp_dir().join(format!("weft-svc-test-{}", lab.name)));
    fs::create_dir_all(&request.0).expect("request dir");

    let svc = request.file("svc.yaml", SERVICE);
    let report = apply(&lab, &bins, std::slice::from_ref(&svc)).expect("service applied");
    assert!(report.slices.is_empty(), "no pod yet: {:?}", report.slices);
    let ip = store(&lab.name)
        .service("default", "web")
        .and_then(|s| s.spec.cluster_ipv4())
        .expect("a clusterIP");
    assert_eq!(ip.octets()[..2], [10, 43]);

    let a = request.file("a.yaml", &pod("a"));
    let report = apply(&lab, &bins, std::slice::from_ref(&a)).expect("pod a");
    assert_eq!(report.slices.written, ["default/web-weft"]);
    let a_ip = report.started[0].address.clone().expect("address");
    assert_eq!(slice_addresses(&lab.name), [a_ip.trim_end_matches("/32")]);

    let b = request.file("b.yaml", &pod("b"));
    apply(&lab, &bins, std::slice::from_ref(&b)).expect("pod b");
    assert_eq!(slice_addresses(&lab.name).len(), 2);
    delete(&lab, &bins, std::slice::from_ref(&a)).expect("pod a deleted");
    assert_eq!(slice_addresses(&lab.name).len(), 1);
    assert!(!slice_addresses(&lab.name).contains(&a_ip.trim_end_matches("/32").to_string()));

    let report = apply(&lab, &bins, std::slice::from_ref(&svc)).expect("re-applied");
    assert!(report.slices.is_empty(), "{:?}", report.slices);
    let again = store(&lab.name).service("default", "web").cloned();
    assert_eq!(again.and_then(|s| s.spec.cluster_ipv4()), Some(ip), "kept");

    let report = delete(&lab, &bins, std::slice::from_ref(&svc)).expect("service deleted");
    assert_eq!(report.slices.removed, ["default/web-weft"]);
    assert!(store(&lab.name).endpoint_slices.is_empty());
}
