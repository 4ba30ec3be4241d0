//! L3: the lab's supervisor and all-or-nothing apply. An agent killed on purpose is restarted
//! (new pid, answering, its pods still known, counted in `weft lab status`); an apply while a
//! node's agent is stopped changes nothing and runs once it is back; an apply whose pod fails
//! to start is taken back whole. Needs root.

use std::{
    path::Path,
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use weft_lab::{
    apply::manifest_files,
    leftovers,
    netns::netns_path,
    runtime::{self, PodRecord},
    supervise::{self, AgentRun},
    testing::{TestCluster, running_as_root},
};

/// A generous deadline for what the supervisor does in well under a second.
const DEADLINE: Duration = Duration::from_secs(60);

fn sleeper(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {name}}}}}\n\
         spec: {{nodeName: {node}, containers: [{{name: main, command: [sleep, '3600']}}]}}\n---\n"
    )
}

fn service(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n\
         spec: {{selector: {{app: {name}}}, ports: [{{port: 80}}]}}\n---\n"
    )
}

/// `weft <args>` of this build.
fn weft(cluster: &TestCluster, args: &[&str]) -> Output {
    Command::new(&cluster.bins.weft)
        .args(args)
        .output()
        .expect("weft runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn running(lab: &str) -> Vec<PodRecord> {
    runtime::running_pods(lab).expect("pod records")
}

#[test]
fn a_killed_agent_is_restarted_and_lab_status_counts_the_restart() {
    if !running_as_root("a_killed_agent_is_restarted_and_lab_status_counts_the_restart") {
        return;
    }
    let cluster = TestCluster::up("sup", 2, None);
    let lab = cluster.lab.name.clone();
    cluster
        .apply_text("pods.yaml", &sleeper("web", "vps1"))
        .expect("apply");
    let killed = runtime::agent_pid(&lab, "vps1").expect("vps1's agent pid");
    let other = runtime::agent_pid(&lab, "vps2").expect("vps2's agent pid");

    kill(Pid::from_raw(killed), Signal::SIGKILL).expect("kill vps1's agent");
    let socket = runtime::agent_socket(&lab, "vps1");
    let started = Instant::now();
    let (pid, status) = loop {
        let pid = runtime::agent_pid(&lab, "vps1").filter(|pid| *pid != killed);
        if let Some(pid) = pid
            && let Ok(status) = runtime::wait_ready(&socket, Duration::from_secs(1))
        {
            break (pid, status);
        }
        assert!(
            started.elapsed() < DEADLINE,
            "vps1's agent was not restarted; supervisor log:\n{}",
            std::fs::read_to_string(supervise::log_path(&lab)).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.endpoints, 1, "the restarted agent knows pod web");

    let state = supervise::read_state(&lab)
        .expect("state")
        .expect("supervised");
    let vps1 = state.agent("vps1").expect("vps1");
    assert_eq!(
        (vps1.pid, vps1.run, vps1.restarts),
        (Some(pid), AgentRun::Running, 1)
    );
    assert_eq!(vps1.last_exit.as_deref(), Some("signal: 9 (SIGKILL)"));
    let vps2 = state.agent("vps2").expect("vps2");
    assert_eq!((vps2.pid, vps2.restarts), (Some(other), 0), "untouched");

    let out = weft(&cluster, &["lab", "status", "--name", &lab]);
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}{}", text(&out.stderr));
    assert!(
        shown.contains(&format!(
            "agent pid {pid}, running, restarts 1 (last exit: signal: 9 (SIGKILL))"
        )),
        "{shown}"
    );
    assert!(
        shown.contains("restarting agents that exit"),
        "the supervisor runs: {shown}"
    );
    let log = std::fs::read_to_string(supervise::log_path(&lab)).expect("supervisor log");
    assert!(
        log.contains(&format!("agent of vps1 restarted (pid {pid}, restart 1)")),
        "{log}"
    );

    let supervisor = supervise::running_pid(&lab).expect("the supervisor runs");
    let report = weft_lab::down(&lab).expect("down");
    drop(cluster);
    assert_eq!(report.supervisor, Some(supervisor), "{report}");
    assert!(!Path::new(&format!("/proc/{supervisor}")).exists());
    assert_eq!(leftovers(&lab), Vec::<String>::new());
}

#[test]
fn an_apply_while_an_agent_is_down_changes_nothing_and_runs_once_it_is_back() {
    if !running_as_root("an_apply_while_an_agent_is_down_changes_nothing_and_runs_once_it_is_back")
    {
        return;
    }
    let cluster = TestCluster::up("aon", 2, None);
    let lab = cluster.lab.name.clone();
    let request = cluster.dir.join("web.yaml");
    std::fs::write(
        &request,
        format!("{}{}", sleeper("web", "vps1"), service("web")),
    )
    .expect("write");
    let request = request.display().to_string();
    let before = manifest_files(&lab).expect("manifests");

    supervise::stop_agent(&lab, "vps1").expect("stop vps1's agent");
    let out = weft(&cluster, &["lab", "apply", "--name", &lab, "-f", &request]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "refused: {}", text(&out.stdout));
    assert!(
        err.contains("the agent of node vps1 does not answer"),
        "{err}"
    );
    assert_eq!(
        manifest_files(&lab).expect("manifests"),
        before,
        "unchanged"
    );
    assert!(running(&lab).is_empty());
    assert!(!netns_path(&format!("{lab}-vps1-web")).exists());
    let state = supervise::read_state(&lab).expect("state").expect("state");
    assert_eq!(state.agent("vps1").map(|a| a.run), Some(AgentRun::Held));

    supervise::start_agent(&lab, "vps1").expect("vps1's agent is back");
    let out = weft(&cluster, &["lab", "apply", "--name", &lab, "-f", &request]);
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}{}", text(&out.stderr));
    assert!(
        said.contains("pod/default/web created on vps1 10.42."),
        "{said}"
    );
    assert!(said.contains("service/default/web created"), "{said}");
    assert_eq!(running(&lab).len(), 1);
    let state = supervise::read_state(&lab).expect("state").expect("state");
    assert_eq!(
        state.agent("vps1").map(|a| (a.run, a.restarts)),
        Some((AgentRun::Running, 0)),
        "a stop and start on request are no restarts"
    );

    // A pod that fails to start after another of the request started: both go, and every
    // file is as it was.
    let before = manifest_files(&lab).expect("manifests");
    let broken = sleeper("zz-broken", "vps2").replace("[sleep, '3600']", "[/nonexistent/weft]");
    let err = cluster
        .apply_text(
            "two.yaml",
            &format!(
                "{}{}{broken}",
                sleeper("aa-fine", "vps2"),
                service("aa-fine")
            ),
        )
        .expect_err("the broken pod fails the request");
    let err = format!("{err:#}");
    assert!(err.contains("pod default/zz-broken on vps2"), "{err}");
    assert!(err.contains("nothing of the request was kept"), "{err}");
    assert_eq!(
        manifest_files(&lab).expect("manifests"),
        before,
        "unchanged"
    );
    let names: Vec<String> = running(&lab).into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["web"], "aa-fine was stopped again");
    for pod in ["aa-fine", "zz-broken"] {
        assert!(!netns_path(&format!("{lab}-vps2-{pod}")).exists(), "{pod}");
    }
    let vps2 = runtime::wait_ready(
        &runtime::agent_socket(&lab, "vps2"),
        Duration::from_secs(10),
    )
    .expect("vps2's agent");
    assert_eq!(vps2.endpoints, 0, "aa-fine's address was released");
}
