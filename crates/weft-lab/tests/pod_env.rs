//! L3: a Pod's `env` reaches its processes: values, the pod's own fields through
//! `valueFrom.fieldRef`, and `$(VAR)` references in values and args, as the kubelet gives
//! them; nothing of the lab's own environment. Needs root.

use std::{
    thread,
    time::{Duration, Instant},
};

use weft_lab::testing::{TestCluster, pod_address, running_as_root};

#[test]
fn a_pods_processes_get_its_env() {
    if !running_as_root("a_pods_processes_get_its_env") {
        return;
    }
    let cluster = TestCluster::up("env", 2, None);
    let out = cluster.dir.join("env.txt");
    // A variable of this process: the pod's processes must not see it.
    let ours = std::env::vars()
        .map(|(name, _)| name)
        .find(|name| {
            !["PATH", "HOME", "HOSTNAME"].contains(&name.as_str())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .unwrap_or_else(|| "WEFT_NOT_SET_ANYWHERE".into());
    let pod = format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: envpod}}
spec:
  nodeName: vps2
  containers:
    - name: main
      command: [sh, -c]
      args:
        - 'echo \"$GREETING|$POD_NAME|$POD_NAMESPACE|$POD_IP|$NODE_NAME|$URL|$(POD_IP)|$HOSTNAME|${{{ours}-unset}}\" > {out}.tmp && mv {out}.tmp {out}; sleep 3600'
      env:
        - {{name: GREETING, value: hello}}
        - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
        - {{name: POD_NAMESPACE, valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}}}
        - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
        - {{name: NODE_NAME, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}
        - {{name: URL, value: 'http://$(POD_IP):8080'}}
",
        out = out.display(),
    );
    cluster.apply_text("envpod.yaml", &pod).expect("apply");
    let ip = pod_address(&cluster.pod("envpod"));
    let started = Instant::now();
    let written = loop {
        if let Ok(text) = std::fs::read_to_string(&out) {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the pod wrote nothing"
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        written.trim(),
        format!("hello|envpod|default|{ip}|vps2|http://{ip}:8080|{ip}|envpod|unset")
    );
}
