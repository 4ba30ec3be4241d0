//! L3: `weft doctor` on a Weft lab — clean, then with the rules kube-proxy writes (iptables on
//! vps1, nftables on vps2) installed next to Weft, as when kube-proxy was never disabled.
//! The rules are the kube-proxy benchmark's golden full syncs (`bench/kpbench`, checked there
//! against the generator, the generator against kube-proxy's own naming). Needs root.

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use weft_lab::{
    netns::run_in,
    testing::{TestCluster, running_as_root},
};

const IPTABLES_RULES: &str =
    include_str!("../../../bench/kpbench/src/kube_proxy/testdata/iptables.golden");
const NFTABLES_RULES: &str =
    include_str!("../../../bench/kpbench/src/kube_proxy/testdata/nftables.golden");

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

/// Feeds `rules` to `loader` in network namespace `netns`, as kube-proxy does.
fn load_rules(netns: &str, loader: &[&str], rules: &str) {
    let output = run_in(netns, || -> std::io::Result<std::process::Output> {
        let mut child = Command::new(loader[0])
            .args(&loader[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(rules.as_bytes())?;
        }
        child.wait_with_output()
    })
    .expect("entering the node's netns")
    .expect("running the loader");
    assert!(
        output.status.success(),
        "{loader:?} in {netns}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
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

    let (vps1, vps2) = (
        lab.node("vps1").expect("vps1"),
        lab.node("vps2").expect("vps2"),
    );
    load_rules(
        &vps1.netns,
        &["iptables-nft-restore", "--noflush"],
        IPTABLES_RULES,
    );
    load_rules(&vps2.netns, &["nft", "-f", "-"], NFTABLES_RULES);
    let (ok, text) = doctor(&lab.name);
    assert!(!ok, "problems make the doctor fail: {text}");
    let (vps1, vps2) = text.split_once("Node vps2:").expect("both nodes");
    assert!(
        vps1.contains("kube-proxy's iptables rules (nft backend): KUBE-SERVICES, 2 KUBE-SVC"),
        "{vps1}"
    );
    assert!(vps1.contains("disable-kube-proxy"), "{vps1}");
    assert!(vps2.contains("kube-proxy's nftables rules"), "{vps2}");
    drop(cluster);
}
