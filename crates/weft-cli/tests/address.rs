//! L3: the node commands on a node's own paths, without `--lab` — as on a real node, where there
//! is no lab: `weft status --socket S --pin-dir P` and `weft bpf lb list --pin-dir P` against a
//! lab node's agent socket and pin directory show what `--lab NAME --node vps1` shows; a socket
//! or pin directory that is not there is named with the flag to fix. Needs root.

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use weft_lab::{
    runtime,
    testing::{TestCluster, running_as_root},
};

const OBJECTS: &str = "apiVersion: v1
kind: Pod
metadata:
  name: web-1
  labels: {app: web}
spec:
  nodeName: vps1
  containers: [{name: main, command: [sleep, '3600']}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.43.0.80
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
";

/// `weft ARGS`: success, stdout, stderr.
fn weft(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .output()
        .expect("weft runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_node_commands_work_on_a_nodes_paths_without_the_lab() {
    if !running_as_root("the_node_commands_work_on_a_nodes_paths_without_the_lab") {
        return;
    }
    let cluster = TestCluster::up("adr", 1, None);
    let lab = &cluster.lab;
    let node = lab.node("vps1").expect("vps1");
    let socket = runtime::agent_socket(&lab.name, "vps1");
    let (socket, pins) = (
        socket.to_str().expect("utf-8"),
        node.pin_dir.to_str().expect("utf-8"),
    );
    cluster.apply_text("web.yaml", OBJECTS).expect("apply");

    // The Service with its backend, read from the pins alone.
    let deadline = Instant::now() + Duration::from_secs(60);
    let listing = loop {
        let (ok, out, err) = weft(&["bpf", "lb", "list", "--pin-dir", pins]);
        assert!(ok, "bpf lb list --pin-dir: {err}");
        if out.contains("10.43.0.80:80/TCP") && out.contains(":8080 (id ") {
            break out;
        }
        assert!(Instant::now() < deadline, "never programmed: {out}");
        thread::sleep(Duration::from_millis(200));
    };
    let (ok, by_lab, err) = weft(&["bpf", "lb", "list", "--lab", &lab.name, "--node", "vps1"]);
    assert!(ok, "{err}");
    assert_eq!(
        listing, by_lab,
        "the same maps by their path and through the lab"
    );

    let (ok, status, err) = weft(&["status", "--socket", socket, "--pin-dir", pins]);
    assert!(ok, "status --socket: {status}{err}");
    assert!(status.contains("  Agent:      Ok (ready)\n"), "{status}");
    assert!(status.contains("  Node name:  vps1\n"), "{status}");
    assert!(status.contains("  Endpoints:  1\n"), "{status}");

    let missing = format!("{socket}.missing");
    let (ok, status, _) = weft(&["status", "--socket", &missing]);
    assert!(!ok, "{status}");
    assert!(
        status.contains(&format!(
            "UNREACHABLE: no agent at {missing}: is weft-agent running? (--socket)"
        )),
        "{status}"
    );
    let (ok, _, err) = weft(&["bpf", "lb", "list", "--pin-dir", "/sys/fs/bpf/weft-none"]);
    assert!(!ok);
    assert!(
        err.contains("no pin directory /sys/fs/bpf/weft-none") && err.contains("(--pin-dir)"),
        "{err}"
    );
    drop(cluster);
}
