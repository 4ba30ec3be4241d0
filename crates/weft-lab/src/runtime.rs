//! The lab as the nodes' runtime: one `weft-agent` per node inside the node's namespace and
//! cgroup, and pods started the way a container runtime starts them — a network namespace, the
//! CNI plugin called with CNI_* variables and the network configuration on stdin, then the
//! containers' commands as processes in the pod's namespace and the node's cgroup (host
//! filesystem, no images).
//!
//! What runs is recorded under `/run/weft/labs/<lab>/`: each node's agent socket, state and log,
//! the manifests directory the agents watch, and one record per running pod.

use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use nix::{
    errno::Errno,
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde::{Deserialize, Serialize};
use weft_api::{AgentStatus, Request, Response};
use weft_model::{
    ClusterConfig,
    k8s::{
        Container,
        env::{PodFields, expand_argv, resolve_env},
    },
};

use crate::{
    host, ip, netns,
    topology::{NodeSpec, Topology},
};

/// How long a starting agent may take to report ready.
pub(crate) const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped process may take to exit before it gets SIGKILL.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The executables the lab runs: the node agent, the CNI plugin, and `weft` (whose
/// `weft lab supervise` is the lab's supervisor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    pub agent: PathBuf,
    pub cni: PathBuf,
    pub weft: PathBuf,
}

impl Binaries {
    /// `WEFT_AGENT` / `WEFT_CNI` / `WEFT_CLI` when set, else `weft-agent` / `weft-cni` /
    /// `weft` next to the running executable or in one of its parent directories (a test
    /// binary lives in `target/*/deps`).
    pub fn locate() -> anyhow::Result<Binaries> {
        Ok(Binaries {
            agent: locate_binary("WEFT_AGENT", "weft-agent")?,
            cni: locate_binary("WEFT_CNI", "weft-cni")?,
            weft: locate_binary("WEFT_CLI", "weft")?,
        })
    }
}

pub fn locate_binary(env: &str, name: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("finding the running executable")?;
    exe.ancestors()
        .skip(1)
        .take(3)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            anyhow!(
                "cannot find {name} next to {} (build it with `cargo build --workspace`, or set \
                 {env})",
                exe.display()
            )
        })
}

/// `/run/weft/labs/<lab>/`.
pub fn lab_dir(lab: &str) -> PathBuf {
    Path::new(host::STATE_DIR).join(lab)
}

/// The directory of Kubernetes objects every agent of the lab watches.
pub fn manifests_dir(lab: &str) -> PathBuf {
    lab_dir(lab).join("manifests")
}

/// The lab's copy of the `values.yaml` given at `up`: what its agents read, and where `apply`
/// finds the service CIDR.
pub fn config_path(lab: &str) -> PathBuf {
    lab_dir(lab).join("values.yaml")
}

/// The lab's cluster configuration: its `values.yaml`, the defaults without one.
pub fn cluster_config(lab: &str) -> anyhow::Result<ClusterConfig> {
    let path = config_path(lab);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    ClusterConfig::from_yaml(&text).with_context(|| format!("reading {}", path.display()))
}

/// Keeps a copy of `config` in the lab's directory, so that later commands read the same
/// settings as the agents; the copy's path, what the agents are given.
fn record_config(lab: &str, config: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    let Some(config) = config else {
        return Ok(None);
    };
    host::create_dir_all(&lab_dir(lab))?;
    let copy = config_path(lab);
    fs::copy(config, &copy)
        .with_context(|| format!("copying {} to {}", config.display(), copy.display()))?;
    Ok(Some(copy))
}

/// A node's agent directory: socket, state, log.
pub fn node_dir(lab: &str, node: &str) -> PathBuf {
    lab_dir(lab).join(node)
}

pub fn agent_socket(lab: &str, node: &str) -> PathBuf {
    node_dir(lab, node).join("agent.sock")
}

fn pods_dir(lab: &str) -> PathBuf {
    lab_dir(lab).join("pods")
}

/// Opens `path` for a process's stdout and stderr (appending).
pub(crate) fn log_file(path: &Path) -> anyhow::Result<(File, File)> {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening log {}", path.display()))?;
    let err = out.try_clone().context("duplicating the log descriptor")?;
    Ok((out, err))
}

/// A command that, once spawned, runs in network namespace `netns` and cgroup `cgroup`
/// (relative to the cgroup2 root), in a session of its own so it outlives the CLI.
pub fn detached_command(
    netns_name: &str,
    cgroup: &Path,
    argv: &[String],
) -> anyhow::Result<Command> {
    let mut command = crate::exec::placed_command(netns_name, cgroup, argv, true)?;
    command.stdin(Stdio::null());
    Ok(command)
}

/// Starts the agent of `node` in the node's namespace and cgroup, logging to its `agent.log`,
/// and records its pid; it is not ready yet.
pub(crate) fn spawn_agent(
    lab: &str,
    node: &NodeSpec,
    agent: &Path,
    config: Option<&Path>,
) -> anyhow::Result<Child> {
    let dir = node_dir(lab, &node.name);
    host::create_dir_all(&dir)?;
    host::create_dir_all(&manifests_dir(lab))?;
    let mut argv = vec![
        agent.display().to_string(),
        "--node".into(),
        node.name.clone(),
        "--manifests".into(),
        manifests_dir(lab).display().to_string(),
        "--state-dir".into(),
        dir.join("state").display().to_string(),
        "--pin-dir".into(),
        node.pin_dir.display().to_string(),
        "--socket".into(),
        agent_socket(lab, &node.name).display().to_string(),
        "--external-device".into(),
        crate::datapath::EXTERNAL_DEVICE.into(),
    ];
    if let Some(config) = config {
        argv.extend(["--config".into(), config.display().to_string()]);
    }
    let (out, err) = log_file(&agent_log(lab, &node.name))?;
    let child = detached_command(&node.netns, &node.cgroup, &argv)?
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting the agent of {}", node.name))?;
    fs::write(dir.join("agent.pid"), child.id().to_string())
        .context("recording the agent's pid")?;
    Ok(child)
}

pub fn agent_log(lab: &str, node: &str) -> PathBuf {
    node_dir(lab, node).join("agent.log")
}

/// The last `lines` lines of a log, for an error that outlives the file.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls the agent's Status until it says ready.
pub fn wait_ready(socket: &Path, timeout: Duration) -> anyhow::Result<AgentStatus> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        match weft_api::call(socket, &Request::Status) {
            Ok(Response::Status(status)) if status.ready => return Ok(status),
            Ok(other) => last = format!("{other:?}"),
            Err(e) => last = e.to_string(),
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!("not ready after {timeout:?}: {last}")
}

/// The pid of a node's agent as recorded at start.
pub fn agent_pid(lab: &str, node: &str) -> Option<i32> {
    fs::read_to_string(node_dir(lab, node).join("agent.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]. A process that is gone already is no error.
pub fn stop_process(pid: i32) -> anyhow::Result<()> {
    let pid = Pid::from_raw(pid);
    match kill(pid, Signal::SIGTERM) {
        Err(Errno::ESRCH) => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("signalling {pid}")),
        Ok(()) => {}
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if !alive(pid) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    match kill(pid, Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("killing {pid}")),
    }
}

/// Whether `pid` still runs (a zombie of ours is reaped and counts as gone).
pub(crate) fn alive(pid: Pid) -> bool {
    let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Field 3 is the state; a zombie that is not our child shows `Z`.
    !stat.is_empty()
        && stat
            .rsplit(") ")
            .next()
            .is_some_and(|rest| !rest.starts_with('Z'))
}

/// A pod as the lab runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub netns: String,
    pub container_id: String,
    pub address: Option<String>,
    pub pids: Vec<i32>,
}

/// What the lab needs of a Pod object to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRequest {
    pub namespace: String,
    pub name: String,
    pub node: String,
    /// Each runs as one process: `command` followed by `args`, with `env`.
    pub containers: Vec<Container>,
}

impl PodRequest {
    pub fn netns(&self, lab: &str) -> String {
        format!("{lab}-{}-{}", self.node, self.name)
    }

    /// `<hash>-<lab>-<namespace>-<name>`. The hash comes first because runtimes, and Weft's
    /// agent naming a pod's `WeftEndpoint`, shorten container ids to their first 12
    /// characters, which pods of one lab would otherwise share.
    pub fn container_id(&self, lab: &str) -> String {
        let key = format!("{lab}/{}/{}", self.namespace, self.name);
        format!(
            "{:012x}-{lab}-{}-{}",
            fnv1a(key.as_bytes()) & 0xffff_ffff_ffff,
            self.namespace,
            self.name
        )
    }
}

/// FNV-1a (64 bits): stable across builds, unlike std's hasher, so a newer `weft` names the
/// containers of a running lab as the one that started them.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn record_path(lab: &str, namespace: &str, name: &str) -> PathBuf {
    pods_dir(lab).join(format!("{namespace}_{name}.json"))
}

/// The pods the lab runs now.
pub fn running_pods(lab: &str) -> anyhow::Result<Vec<PodRecord>> {
    let dir = pods_dir(lab);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let json = fs::read_to_string(&path)?;
            out.push(
                serde_json::from_str(&json)
                    .with_context(|| format!("parsing {}", path.display()))?,
            );
        }
    }
    out.sort_by(|a: &PodRecord, b| (&a.node, &a.name).cmp(&(&b.node, &b.name)));
    Ok(out)
}

fn write_record(lab: &str, record: &PodRecord) -> anyhow::Result<()> {
    host::create_dir_all(&pods_dir(lab))?;
    let path = record_path(lab, &record.namespace, &record.name);
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(record)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
}

/// The network configuration the lab hands the plugin on stdin.
pub fn cni_config(lab: &str, node: &str) -> serde_json::Value {
    let mut config = cni_plugin(lab, node);
    config["cniVersion"] = "1.1.0".into();
    config["name"] = "weft".into();
    config
}

/// The plugin's own part of a network configuration: its type and the node's agent socket (also
/// an entry of a conflist's `plugins`).
pub fn cni_plugin(lab: &str, node: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "weft-cni",
        "agentSocket": agent_socket(lab, node).display().to_string(),
    })
}

/// Calls the CNI plugin as a runtime does, from the node's namespace. Returns its stdout (the
/// result JSON) or an error carrying the plugin's error JSON.
pub fn call_cni(
    t: &Topology,
    node: &NodeSpec,
    bins: &Binaries,
    command: &str,
    pod: &PodRequest,
) -> anyhow::Result<serde_json::Value> {
    let node_ns = netns::netns_path(&node.netns);
    let pod_ns = netns::netns_path(&pod.netns(&t.name));
    let cni_path = bins
        .cni
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", node_ns.display()))
        .arg(&bins.cni)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", pod.container_id(&t.name))
        .env("CNI_NETNS", &pod_ns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path)
        .env(
            "CNI_ARGS",
            format!(
                "K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
                pod.namespace, pod.name
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running the CNI plugin through nsenter")?;
    let config = serde_json::to_vec(&cni_config(&t.name, &node.name))?;
    child
        .stdin
        .take()
        .context("the plugin's stdin")?
        .write_all(&config)
        .context("writing the network configuration to the plugin")?;
    let out = child
        .wait_with_output()
        .context("waiting for the CNI plugin")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "CNI {command} of pod {}/{} failed ({}): {} {}",
            pod.namespace,
            pod.name,
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if stdout.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_str(&stdout).with_context(|| format!("CNI {command} printed {stdout}"))
}

/// Fails, naming the node and its agent, when the node's agent does not answer: a pod there
/// cannot get its network.
pub fn ensure_agent_answers(lab: &str, node: &str) -> anyhow::Result<()> {
    let socket = agent_socket(lab, node);
    weft_api::call(&socket, &Request::Status)
        .map(drop)
        .with_context(|| {
            format!(
                "the agent of node {node} does not answer (`weft lab status --name {lab}` shows \
                 it)"
            )
        })
}

/// Starts a pod: namespace, CNI ADD, container processes. On failure nothing of it is left.
pub fn run_pod(t: &Topology, bins: &Binaries, pod: &PodRequest) -> anyhow::Result<PodRecord> {
    let node = t
        .node(&pod.node)
        .ok_or_else(|| anyhow!("lab {} has no node {}", t.name, pod.node))?;
    ensure_agent_answers(&t.name, &node.name)?;
    let netns_name = pod.netns(&t.name);
    ip::batch(None, &[format!("netns add {netns_name}")], false)
        .with_context(|| format!("creating netns {netns_name}"))?;
    let mut record = PodRecord {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        node: pod.node.clone(),
        netns: netns_name.clone(),
        container_id: pod.container_id(&t.name),
        address: None,
        pids: Vec::new(),
    };
    let started = (|| -> anyhow::Result<()> {
        netns::run_in(&netns_name, || {
            fs::write("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1")
        })?
        .ok();
        let result = call_cni(t, node, bins, "ADD", pod)?;
        record.address = result["ips"][0]["address"].as_str().map(str::to_string);
        let fields = PodFields {
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            node_name: pod.node.clone(),
            pod_ip: address_of(&record)?,
        };
        let log_dir = pods_dir(&t.name);
        host::create_dir_all(&log_dir)?;
        for (i, container) in pod.containers.iter().enumerate() {
            let env = resolve_env(&container.env, &fields)
                .with_context(|| format!("container {} of pod {}", container.name, pod.name))?;
            let argv = expand_argv(&container.command, &container.args, &env);
            let log = log_dir.join(format!("{}_{}_{i}.log", pod.namespace, pod.name));
            let (out, err) = log_file(&log)?;
            let child = detached_command(&netns_name, &node.cgroup, &argv)?
                .env_clear()
                .envs(base_env(&pod.name))
                .envs(env)
                .stdout(out)
                .stderr(err)
                .spawn()
                .with_context(|| format!("starting container {i} of pod {}: {argv:?}", pod.name))?;
            record.pids.push(child.id() as i32);
        }
        write_record(&t.name, &record)
    })();
    if let Err(err) = started {
        let cleanup = stop_pod(t, bins, &record);
        return Err(match cleanup {
            Ok(()) => err,
            Err(c) => err.context(format!("and cleaning up the pod failed too: {c:#}")),
        });
    }
    Ok(record)
}

/// What a container runtime gives every container before the pod's `env` (nothing of the
/// lab's own environment): the usual PATH, root's HOME and the pod's name as HOSTNAME.
fn base_env(pod: &str) -> [(&'static str, String); 3] {
    [
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOME", "/root".into()),
        ("HOSTNAME", pod.into()),
    ]
}

/// The pod's IPv4 address, from the CNI result recorded (`10.42.0.10/32`).
fn address_of(record: &PodRecord) -> anyhow::Result<std::net::Ipv4Addr> {
    let address = record
        .address
        .as_deref()
        .context("the CNI plugin gave the pod no IPv4 address")?;
    let ip = address.split('/').next().unwrap_or_default();
    ip.parse()
        .with_context(|| format!("the CNI plugin gave the pod address `{address}`"))
}

/// Stops a pod's processes, calls CNI DEL, removes its namespace and record.
pub fn stop_pod(t: &Topology, bins: &Binaries, record: &PodRecord) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    for &pid in &record.pids {
        if let Err(e) = stop_process(pid) {
            failures.push(format!("{e:#}"));
        }
    }
    let request = PodRequest {
        namespace: record.namespace.clone(),
        name: record.name.clone(),
        node: record.node.clone(),
        containers: Vec::new(),
    };
    if let Some(node) = t.node(&record.node)
        && let Err(e) = call_cni(t, node, bins, "DEL", &request)
    {
        failures.push(format!("{e:#}"));
    }
    if netns::netns_path(&record.netns).exists()
        && let Err(e) = ip::batch(None, &[format!("netns del {}", record.netns)], false)
    {
        failures.push(format!("{e:#}"));
    }
    let path = record_path(&t.name, &record.namespace, &record.name);
    if let Err(e) = fs::remove_file(&path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        failures.push(format!("removing {}: {e}", path.display()));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("stopping pod {}: {}", record.name, failures.join("; "))
    }
}

/// Brings up a lab whose pods come from Weft (no hand-wired pods) and its supervisor, which
/// starts every node's agent, one after another so the node CIDRs are claimed in node order,
/// and restarts an agent that exits. `config` is checked before anything is made. On failure
/// the lab is taken down again.
pub fn up_cluster(
    spec: &crate::spec::LabSpec,
    bins: &Binaries,
    config: Option<&Path>,
) -> anyhow::Result<Topology> {
    if spec.pods_per_node != 0 {
        bail!("a lab run by Weft's agents has no hand-wired pods (pods_per_node must be 0)");
    }
    if let Some(config) = config {
        check_config(config)?;
    }
    let t = crate::lifecycle::up(spec)?;
    let started = record_config(&t.name, config)
        .and_then(|config| crate::supervise::start(&t, bins, config.as_deref()));
    if let Err(err) = started {
        return Err(match crate::lifecycle::down(&t.name) {
            Ok(_) => err,
            Err(cleanup) => err.context(format!("and taking the lab down failed: {cleanup:#}")),
        });
    }
    Ok(t)
}

/// Reads a `values.yaml` as the agents will, so that a key Weft refuses is reported before
/// anything starts.
pub fn check_config(path: &Path) -> anyhow::Result<ClusterConfig> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    ClusterConfig::from_yaml(&text).with_context(|| format!("{} is refused", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(name: &str) -> PodRequest {
        PodRequest {
            namespace: "default".into(),
            name: name.into(),
            node: "vps1".into(),
            containers: vec![],
        }
    }

    #[test]
    fn container_ids_differ_in_their_first_twelve_characters() {
        let lab = "tsvc0abcd01";
        let (a, b) = (
            request("a").container_id(lab),
            request("b").container_id(lab),
        );
        assert_ne!(a[..12], b[..12], "{a} {b}");
        assert_eq!(a, request("a").container_id(lab), "stable");
        assert!(a.ends_with("-tsvc0abcd01-default-a"), "{a}");
    }
}
