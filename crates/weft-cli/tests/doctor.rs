//! L3: `weft doctor` on a Weft lab — clean, then with the rules kube-proxy writes (iptables on
//! vps1, nftables on vps2) installed next to Weft, as when kube-proxy was never disabled.
//! Needs root.

use std::process::Command;

use weft_lab::{
    kube_proxy::{NodeProxy, ProxyMode, setup_node},
    testing::{TestCluster, running_as_root},
};
use weft_model::Store;

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.43.0.80
  ports: [{port: 80, targetPort: 8080, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.42.0.10]
  conditions: {ready: true}
";

/// `weft doctor` on the lab: its exit status and its output.
fn doctor(lab: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["doctor", "--lab", lab])
        .output()
        .expect("weft doctor runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_doctor_finds_kube_proxys_rules_next_to_weft() {
    if !running_as_root("the_doctor_finds_kube_proxys_rules_next_to_weft") {
        return;
    }
    let cluster = TestCluster::up("doc", 2, None);
    let lab = &cluster.lab;
    let (ok, text) = doctor(&lab.name);
    assert!(ok, "a clean lab: {text}");
    assert!(text.contains("Node vps1: ok"), "{text}");

    let store = Store::from_manifests([("web.yaml", SERVICE)]).expect("manifests");
    for (node, mode) in [("vps1", ProxyMode::Iptables), ("vps2", ProxyMode::Nftables)] {
        let node = lab.node(node).expect("node");
        setup_node(node, mode).expect("kube-proxy's start-up rules");
        NodeProxy::new(node, mode)
            .sync_store(&store)
            .expect("kube-proxy's rules");
    }
    let (ok, text) = doctor(&lab.name);
    assert!(!ok, "problems make the doctor fail: {text}");
    let (vps1, vps2) = text.split_once("Node vps2:").expect("both nodes");
    assert!(
        vps1.contains("kube-proxy's iptables rules (nft backend): KUBE-SERVICES, 1 KUBE-SVC"),
        "{vps1}"
    );
    assert!(vps1.contains("disable-kube-proxy"), "{vps1}");
    assert!(vps2.contains("kube-proxy's nftables rules"), "{vps2}");
    drop(cluster);
}
