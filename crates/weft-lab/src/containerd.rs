//! A real container runtime on a lab node: a private containerd daemon (Debian's 1.6) started
//! for one node, and containers run with `ctr run --cni`, so that the CNI plugin is driven by
//! containerd's own CNI library (go-cni / libcni) exactly as a node's runtime drives it.
//!
//! Everything lives under `/run/weft/labs/<lab>/containerd/<node>/`: the daemon's config, root,
//! state and sockets, runc's state, the containers' logs and the CNI configuration. The daemon
//! runs in the node's network namespace and cgroup (so `down` kills whatever is left of it and
//! of its shims) and in a mount namespace of its own, so the containers' rootfs mounts never
//! show on the host. A container's processes get cgroups of their own, `<lab>-<id>`, which runc
//! removes with the task: runc 1.1 on a hybrid cgroup hierarchy places a relative cgroup path
//! below its own cgroup in the v1 hierarchies but at the root of the v2 one, so containers are
//! not below the node's cgroup2 directory as the lab's other pods are.
//!
//! What ctr 1.6 does (read in `cmd/ctr/commands/run/run.go` of containerd v1.6.20, which pins
//! go-cni v1.1.6 and libcni v1.1.1):
//! - `--cni` builds `gocni.New(gocni.WithDefaultConf)`: the first file (sorted) of
//!   `/etc/cni/net.d` with the plugins in `/opt/cni/bin`; no flag or variable changes either
//!   path. So ctr runs in a private mount namespace where the lab's directories are mounted
//!   over those two paths; the host's are never written.
//! - ADD runs after the task is created, with `CNI_NETNS=/proc/<task pid>/ns/net` and
//!   `CNI_CONTAINERID=<namespace>-<id>`; the plugin runs in ctr's own network namespace, so ctr
//!   runs in the node's.
//! - DEL is only run by a foreground `ctr run`, once the task has exited (not with `--detach`,
//!   and never by `ctr task delete` or `ctr container delete`). So a container is run in the
//!   foreground, and deleting it means killing its task and letting that `ctr run` finish.
//! - libcni 1.1.1 knows CNI versions up to 1.0.0, so the conflist says 1.0.0.
//!
//! One path outside the lab's directory is used: the runc shim's socket lives in
//! `/run/containerd/s/` (fixed in containerd 1.6); the shim removes it when it exits.

use std::{
    collections::BTreeMap,
    ffi::{CStr, CString},
    fs,
    io::Read as _,
    os::unix::{ffi::OsStrExt as _, fs::symlink, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail, ensure};
use nix::{
    mount::{MsFlags, mount},
    sched::{CloneFlags, unshare},
};
use serde_json::json;

use crate::{
    exec::placed_command,
    host, oci,
    runtime::{self, Binaries},
    topology::{NodeSpec, Topology},
};

/// The statically linked busybox the test image is built from (Debian's busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";
/// A reference plugin (Debian's containernetworking-plugins) chained after weft-cni.
pub const TUNING_PLUGIN: &str = "/usr/lib/cni/tuning";
/// What the chained `tuning` plugin sets in the container, to show the chain ran there.
pub const CHAINED_SYSCTL: (&str, &str) = ("net.ipv4.conf.eth0.arp_notify", "1");
/// The image [`Containerd::import_busybox`] imports.
pub const BUSYBOX_IMAGE: &str = "weft.local/busybox:latest";

const EXECUTABLES: &[&str] = &["containerd", "ctr", "runc", "containerd-shim-runc-v2"];
/// Where ctr 1.6 reads CNI network configurations and finds plugins (go-cni's defaults).
const CNI_CONF_DIR: &str = "/etc/cni/net.d";
const CNI_BIN_DIR: &str = "/opt/cni/bin";
/// The CNI version ctr 1.6's libcni speaks at most.
const CONFLIST_VERSION: &str = "1.0.0";

const DAEMON_READY_TIMEOUT: Duration = Duration::from_secs(20);
const CTR_TIMEOUT: Duration = Duration::from_secs(30);
const CONTAINER_START_TIMEOUT: Duration = Duration::from_secs(30);
const CONTAINER_EXIT_TIMEOUT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

/// What is missing on this machine to run containers (empty when nothing is).
pub fn missing_tools() -> Vec<String> {
    let mut missing: Vec<String> = EXECUTABLES
        .iter()
        .filter(|exe| find_in_path(exe).is_none())
        .map(|exe| format!("{exe} (not in PATH)"))
        .collect();
    for file in [BUSYBOX, TUNING_PLUGIN] {
        if !Path::new(file).is_file() {
            missing.push(file.to_string());
        }
    }
    missing
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `/run/weft/labs/<lab>/containerd/<node>/`.
pub fn runtime_dir(lab: &str, node: &str) -> PathBuf {
    runtime::lab_dir(lab).join("containerd").join(node)
}

/// A container started by [`Containerd::run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    /// What the CNI plugin was given as `CNI_CONTAINERID`: `<namespace>-<id>`.
    pub cni_container_id: String,
    /// The task's init process, on the host.
    pub pid: i32,
}

impl Container {
    /// The container's network namespace.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid))
    }
}

/// A foreground `ctr run`: it holds the container's network until the task exits.
struct Foreground {
    id: String,
    ctr: Child,
    log: PathBuf,
}

/// A containerd daemon of one lab node, stopped (its containers deleted, the daemon killed,
/// its directory removed) by [`Containerd::stop`] or when dropped.
pub struct Containerd {
    dir: PathBuf,
    node: NodeSpec,
    /// The containerd namespace: the lab's name, so CNI container IDs carry it too.
    namespace: String,
    snapshotter: &'static str,
    daemon: Option<Child>,
    running: Vec<Foreground>,
}

impl Containerd {
    /// Starts the daemon of `node` and waits until it answers.
    pub fn start(t: &Topology, node: &NodeSpec, bins: &Binaries) -> anyhow::Result<Containerd> {
        let dir = runtime_dir(&t.name, &node.name);
        host::remove_tree(&dir)?;
        // From here on, dropping `runtime` removes whatever was made.
        let mut runtime = Containerd {
            dir: dir.clone(),
            node: node.clone(),
            namespace: t.name.clone(),
            snapshotter: snapshotter(),
            daemon: None,
            running: Vec::new(),
        };
        for sub in ["root", "state", "runc", "fifo", "logs", "opt"] {
            host::create_dir_all(&dir.join(sub))?;
        }
        let config = dir.join("config.toml");
        fs::write(&config, daemon_config(&dir)).context("writing containerd's config")?;
        write_cni_dirs(&dir, &t.name, &node.name, bins)?;
        runtime.spawn_daemon(&config)?;
        runtime.wait_ready()?;
        Ok(runtime)
    }

    fn spawn_daemon(&mut self, config: &Path) -> anyhow::Result<()> {
        let argv = vec![
            "containerd".to_string(),
            "--config".into(),
            config.display().to_string(),
        ];
        let mut command = placed_command(&self.node.netns, &self.node.cgroup, &argv, true)?;
        with_private_mounts(&mut command, &[])?;
        let (out, err) = runtime::log_file(&self.dir.join("logs/containerd.log"))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting containerd for {}", self.node.name))?;
        self.daemon = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + DAEMON_READY_TIMEOUT;
        let mut last = anyhow!("no attempt yet");
        while Instant::now() < deadline {
            if let Some(status) = self.daemon_exit()? {
                bail!(
                    "containerd exited ({status}): {}",
                    log_tail(&self.dir.join("logs/containerd.log"))
                );
            }
            match self.ctr(&["version"], Duration::from_secs(2)) {
                Ok(_) => return Ok(()),
                Err(e) => last = e,
            }
            thread::sleep(POLL);
        }
        Err(last.context(format!(
            "containerd did not answer within {DAEMON_READY_TIMEOUT:?} (log: {})",
            self.dir.join("logs/containerd.log").display()
        )))
    }

    fn daemon_exit(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.daemon.as_mut() {
            Some(child) => child.try_wait().context("checking on containerd"),
            None => bail!("containerd is not running"),
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// `ctr ARGS` against this daemon, from the test's own namespaces (ctr is only a client
    /// here); its stdout, or an error with its stderr.
    fn ctr(&self, args: &[&str], timeout: Duration) -> anyhow::Result<String> {
        let mut command = Command::new("ctr");
        command
            .arg("--address")
            .arg(self.socket())
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args);
        let out = output_within(command, timeout).with_context(|| format!("ctr {args:?}"))?;
        ensure!(
            out.status.success(),
            "ctr {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Builds the busybox image from [`BUSYBOX`] and imports it; returns its reference.
    pub fn import_busybox(&self) -> anyhow::Result<String> {
        let archive = self.dir.join("busybox-oci.tar");
        oci::write_busybox_image(Path::new(BUSYBOX), BUSYBOX_IMAGE, &archive)?;
        let archive_arg = archive.display().to_string();
        self.ctr(
            &[
                "images",
                "import",
                "--snapshotter",
                self.snapshotter,
                &archive_arg,
            ],
            CTR_TIMEOUT,
        )?;
        Ok(BUSYBOX_IMAGE.to_string())
    }

    /// Runs container `id` of `image` with `args` through `ctr run --cni` in the foreground,
    /// from the node's network namespace, and waits until its task runs (the network is set up
    /// before the task starts).
    pub fn run(&mut self, id: &str, image: &str, args: &[&str]) -> anyhow::Result<Container> {
        validate_id(id)?;
        ensure!(
            !self.running.iter().any(|f| f.id == id),
            "container {id} is already running"
        );
        let log = self.dir.join(format!("logs/ctr-run-{id}.log"));
        let argv = self.run_argv(id, image, args);
        let mut command = placed_command(&self.node.netns, &self.node.cgroup, &argv, true)?;
        with_private_mounts(&mut command, &self.cni_mounts(id)?)?;
        let (out, err) = runtime::log_file(&log)?;
        let ctr = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting `ctr run --cni` for {id}"))?;
        self.running.push(Foreground {
            id: id.to_string(),
            ctr,
            log,
        });
        let pid = match self.wait_running(id) {
            Ok(pid) => pid,
            Err(e) => {
                return Err(self.discard(id, e.context(format!("container {id} did not start"))));
            }
        };
        Ok(Container {
            id: id.to_string(),
            cni_container_id: format!("{}-{id}", self.namespace),
            pid,
        })
    }

    fn run_argv(&self, id: &str, image: &str, args: &[&str]) -> Vec<String> {
        let dir = |sub: &str| self.dir.join(sub).display().to_string();
        let mut argv: Vec<String> = [
            "ctr",
            "--address",
            &self.socket().display().to_string(),
            "--namespace",
            &self.namespace,
            "run",
            "--cni",
            "--rm",
            "--snapshotter",
            self.snapshotter,
            "--runc-root",
            &dir("runc"),
            "--fifo-dir",
            &dir("fifo"),
            "--log-uri",
            &format!("file://{}", dir(&format!("logs/container-{id}.log"))),
            // Relative: in each cgroup v1 hierarchy runc puts it below its own cgroup (so it
            // stays inside the memory cgroup this process may be confined to), not at the
            // root; runc removes it when the task is deleted.
            "--cgroup",
            &format!("{}-{id}", self.namespace),
            image,
            id,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        argv.extend(args.iter().map(|a| a.to_string()));
        argv
    }

    /// The mounts that show the lab's CNI directories to one `ctr run` (an overlay's upper and
    /// work directories serve one mount at a time, hence one set per container).
    fn cni_mounts(&self, id: &str) -> anyhow::Result<Vec<PrivateMount>> {
        let targets = [
            (self.dir.join("cni/net.d"), PathBuf::from(CNI_CONF_DIR)),
            (self.dir.join("cni/bin"), PathBuf::from(CNI_BIN_DIR)),
        ];
        let overlay_dir = self.dir.join(format!("cni/overlay-{id}"));
        let plan = plan_mounts(&targets, &overlay_dir, |p| p.exists())?;
        for dir in &plan.dirs {
            host::create_dir_all(dir)?;
        }
        Ok(plan.mounts)
    }

    fn wait_running(&mut self, id: &str) -> anyhow::Result<i32> {
        let deadline = Instant::now() + CONTAINER_START_TIMEOUT;
        while Instant::now() < deadline {
            let foreground = self.foreground(id)?;
            if let Some(status) = foreground.ctr.try_wait().context("checking on ctr run")? {
                bail!("ctr run exited ({status}): {}", log_tail(&foreground.log));
            }
            let tasks = self.ctr(&["tasks", "ls"], CTR_TIMEOUT)?;
            if let Some(task) = parse_tasks(&tasks).into_iter().find(|t| t.id == id)
                && task.status == "RUNNING"
            {
                return Ok(task.pid);
            }
            thread::sleep(POLL);
        }
        bail!("its task was not running within {CONTAINER_START_TIMEOUT:?}")
    }

    fn foreground(&mut self, id: &str) -> anyhow::Result<&mut Foreground> {
        self.running
            .iter_mut()
            .find(|f| f.id == id)
            .ok_or_else(|| anyhow!("no container {id} runs here"))
    }

    /// Deletes a container the way its runtime does: kills the task, upon which the foreground
    /// `ctr run` calls CNI DEL, deletes the task and, with `--rm`, the container. Fails when
    /// that `ctr run` reports an error (a failed CNI DEL among them) or leaves the container.
    pub fn delete(&mut self, id: &str) -> anyhow::Result<()> {
        let mut foreground = self.take_foreground(id)?;
        let mut problems = self.finish(&mut foreground);
        let errors = logged_errors(&fs::read_to_string(&foreground.log).unwrap_or_default());
        if !errors.is_empty() {
            problems.push(format!("ctr run reported: {}", errors.join(" | ")));
        }
        match self.force_remove(id) {
            Ok(false) => {}
            Ok(true) => problems.push(format!(
                "container {id} was left behind by ctr run (removed by force)"
            )),
            Err(e) => problems.push(format!("{e:#}")),
        }
        ensure!(
            problems.is_empty(),
            "deleting container {id}: {}",
            problems.join("; ")
        );
        Ok(())
    }

    /// Removes what a container that failed to start left (ctr 1.6 keeps the container when
    /// CNI ADD fails, `--rm` or not). `error` is why it failed; it is returned, with a note
    /// when the cleanup failed too.
    fn discard(&mut self, id: &str, error: anyhow::Error) -> anyhow::Error {
        let mut problems = match self.take_foreground(id) {
            Ok(mut foreground) => self.finish(&mut foreground),
            Err(e) => vec![format!("{e:#}")],
        };
        if let Err(e) = self.force_remove(id) {
            problems.push(format!("{e:#}"));
        }
        if problems.is_empty() {
            error
        } else {
            error.context(format!("and cleaning up failed: {}", problems.join("; ")))
        }
    }

    fn take_foreground(&mut self, id: &str) -> anyhow::Result<Foreground> {
        let index = self
            .running
            .iter()
            .position(|f| f.id == id)
            .ok_or_else(|| anyhow!("no container {id} runs here"))?;
        Ok(self.running.remove(index))
    }

    /// Ends a foreground `ctr run`: kills its task unless it has exited already, then waits
    /// for ctr to finish (CNI DEL, task deletion); kills ctr itself if it does not. Returns
    /// what went wrong.
    fn finish(&self, foreground: &mut Foreground) -> Vec<String> {
        let mut problems = Vec::new();
        let id = foreground.id.as_str();
        if matches!(foreground.ctr.try_wait(), Ok(None))
            && let Err(e) = self.ctr(&["tasks", "kill", "--signal", "SIGKILL", id], CTR_TIMEOUT)
        {
            problems.push(format!("{e:#}"));
        }
        if let Err(e) = wait_exit(&mut foreground.ctr, CONTAINER_EXIT_TIMEOUT) {
            problems.push(format!("ctr run of {id}: {e:#}"));
            let _ = foreground.ctr.kill();
            let _ = foreground.ctr.wait();
        }
        problems
    }

    /// Removes container `id` by force if it is still there; returns whether it was.
    fn force_remove(&self, id: &str) -> anyhow::Result<bool> {
        let listed = self.ctr(&["containers", "ls", "--quiet"], CTR_TIMEOUT)?;
        if !listed.lines().any(|l| l.trim() == id) {
            return Ok(false);
        }
        // The task may be gone already; deleting the container then is what matters.
        let _ = self.ctr(&["tasks", "delete", "--force", id], CTR_TIMEOUT);
        self.ctr(&["containers", "delete", id], CTR_TIMEOUT)?;
        Ok(true)
    }

    /// Deletes the containers still running, stops the daemon (by its PID) and removes the
    /// runtime's directory. Every step is tried; the error lists those that failed.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        let ids: Vec<String> = self.running.iter().map(|f| f.id.clone()).collect();
        for id in ids {
            if let Err(e) = self.delete(&id) {
                problems.push(format!("{e:#}"));
            }
        }
        if let Some(mut daemon) = self.daemon.take() {
            let stopped = i32::try_from(daemon.id())
                .context("containerd's pid")
                .and_then(runtime::stop_process);
            if let Err(e) = stopped {
                problems.push(format!("stopping containerd: {e:#}"));
            }
            // stop_process reaps it already; this only makes sure.
            let _ = daemon.try_wait();
        }
        if let Err(e) = host::remove_tree(&self.dir) {
            problems.push(format!("{e:#}"));
        }
        if let Some(parent) = self.dir.parent()
            && let Err(e) = host::remove_dir_if_empty(parent)
        {
            problems.push(format!("{e:#}"));
        }
        ensure!(
            problems.is_empty(),
            "stopping the containerd of {}: {}",
            self.node.name,
            problems.join("; ")
        );
        Ok(())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if (self.daemon.is_some() || self.dir.exists())
            && let Err(e) = self.stop()
        {
            eprintln!("{e:#}");
        }
    }
}

/// containerd's rule for identifiers (it names files and a cgroup here, before containerd sees
/// it): letters, digits, `.`, `_` and `-`, starting with a letter or digit, at most 76.
fn validate_id(id: &str) -> anyhow::Result<()> {
    let ok = id.len() <= 76
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    ensure!(ok, "`{id}` is not a valid container id");
    Ok(())
}

/// overlayfs when the kernel has it, else the copying `native` snapshotter.
fn snapshotter() -> &'static str {
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        "overlayfs"
    } else {
        "native"
    }
}

/// containerd 1.6's config (format version 2): every path under `dir`, and no CRI plugin (it
/// would load the CNI config itself and serve a streaming port).
fn daemon_config(dir: &Path) -> String {
    let path = |sub: &str| toml_string(&dir.join(sub).display().to_string());
    format!(
        r#"version = 2
root = {root}
state = {state}
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = {grpc}

[ttrpc]
  address = {ttrpc}

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}
"#,
        root = path("root"),
        state = path("state"),
        grpc = path("containerd.sock"),
        ttrpc = path("containerd.sock.ttrpc"),
        opt = path("opt"),
    )
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The network configuration list ctr finds: weft-cni for the node, then `tuning`.
pub fn cni_conflist(lab: &str, node: &str) -> serde_json::Value {
    let (key, value) = CHAINED_SYSCTL;
    json!({
        "cniVersion": CONFLIST_VERSION,
        "name": "weft",
        "plugins": [
            runtime::cni_plugin(lab, node),
            { "type": "tuning", "sysctl": { key: value } },
        ],
    })
}

/// `cni/net.d` with the conflist and `cni/bin` with links to the plugins.
fn write_cni_dirs(dir: &Path, lab: &str, node: &str, bins: &Binaries) -> anyhow::Result<()> {
    let conf_dir = dir.join("cni/net.d");
    let bin_dir = dir.join("cni/bin");
    host::create_dir_all(&conf_dir)?;
    host::create_dir_all(&bin_dir)?;
    let conflist = serde_json::to_vec_pretty(&cni_conflist(lab, node))?;
    fs::write(conf_dir.join("10-weft.conflist"), conflist).context("writing the conflist")?;
    let cni =
        fs::canonicalize(&bins.cni).with_context(|| format!("resolving {}", bins.cni.display()))?;
    for (name, target) in [
        ("weft-cni", cni.as_path()),
        ("tuning", Path::new(TUNING_PLUGIN)),
    ] {
        symlink(target, bin_dir.join(name))
            .with_context(|| format!("linking {name} into {}", bin_dir.display()))?;
    }
    Ok(())
}

/// A mount made inside the private mount namespace of a spawned process.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PrivateMount {
    /// `target` becomes an overlay of itself and `upper`, so that directories missing on the
    /// host can appear in it without being created on the host.
    Overlay {
        target: PathBuf,
        upper: PathBuf,
        work: PathBuf,
    },
    Bind {
        source: PathBuf,
        target: PathBuf,
    },
}

#[derive(Debug, PartialEq, Eq)]
struct MountPlan {
    /// To create before the mounts (overlay upper and work directories).
    dirs: Vec<PathBuf>,
    mounts: Vec<PrivateMount>,
}

/// Mounts that show each `source` directory at its `target` path. A target missing on the host
/// is made to exist by an overlay on its deepest existing ancestor, whose upper directory holds
/// the missing part; the host's filesystem is never written. The root itself is never
/// overlaid.
fn plan_mounts(
    targets: &[(PathBuf, PathBuf)],
    overlay_dir: &Path,
    exists: impl Fn(&Path) -> bool,
) -> anyhow::Result<MountPlan> {
    let mut overlays: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    for (_, target) in targets {
        ensure!(target.is_absolute(), "{} is not absolute", target.display());
        if exists(target) {
            continue;
        }
        let ancestor = target
            .ancestors()
            .find(|a| exists(a))
            .unwrap_or(Path::new("/"));
        ensure!(
            ancestor != Path::new("/"),
            "no parent of {} exists to overlay, short of /",
            target.display()
        );
        let missing = target
            .strip_prefix(ancestor)
            .with_context(|| format!("{} under {}", target.display(), ancestor.display()))?;
        overlays
            .entry(ancestor.to_path_buf())
            .or_default()
            .push(missing.to_path_buf());
    }
    let mut plan = MountPlan {
        dirs: Vec::new(),
        mounts: Vec::new(),
    };
    for (i, (ancestor, missing)) in overlays.into_iter().enumerate() {
        let upper = overlay_dir.join(format!("{i}/upper"));
        let work = overlay_dir.join(format!("{i}/work"));
        plan.dirs.extend(missing.iter().map(|m| upper.join(m)));
        plan.dirs.push(work.clone());
        plan.mounts.push(PrivateMount::Overlay {
            target: ancestor,
            upper,
            work,
        });
    }
    plan.mounts
        .extend(targets.iter().map(|(source, target)| PrivateMount::Bind {
            source: source.clone(),
            target: target.clone(),
        }));
    Ok(plan)
}

/// One mount(2) call, with its strings made before the fork.
struct MountCall {
    source: CString,
    target: CString,
    fstype: Option<CString>,
    flags: MsFlags,
    data: Option<CString>,
}

fn c_path(path: &Path) -> anyhow::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("{} holds a NUL byte", path.display()))
}

fn mount_call(m: &PrivateMount) -> anyhow::Result<MountCall> {
    Ok(match m {
        PrivateMount::Overlay {
            target,
            upper,
            work,
        } => MountCall {
            source: c"overlay".to_owned(),
            target: c_path(target)?,
            fstype: Some(c"overlay".to_owned()),
            flags: MsFlags::empty(),
            data: Some(CString::new(format!(
                "lowerdir={},upperdir={},workdir={}",
                target.display(),
                upper.display(),
                work.display()
            ))?),
        },
        PrivateMount::Bind { source, target } => MountCall {
            source: c_path(source)?,
            target: c_path(target)?,
            fstype: None,
            flags: MsFlags::MS_BIND,
            data: None,
        },
    })
}

/// Makes `command` start in a mount namespace of its own, with no propagation back to the
/// host, where `mounts` are made in order.
fn with_private_mounts(command: &mut Command, mounts: &[PrivateMount]) -> anyhow::Result<()> {
    let calls = mounts
        .iter()
        .map(mount_call)
        .collect::<anyhow::Result<Vec<MountCall>>>()?;
    // SAFETY: the closure only makes system calls with strings allocated before the fork (no
    // allocation, no locks), which is what a pre_exec hook may do.
    unsafe {
        command.pre_exec(move || {
            unshare(CloneFlags::CLONE_NEWNS)?;
            mount(
                None::<&CStr>,
                c"/",
                None::<&CStr>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&CStr>,
            )?;
            for call in &calls {
                mount(
                    Some(call.source.as_c_str()),
                    call.target.as_c_str(),
                    call.fstype.as_deref(),
                    call.flags,
                    call.data.as_deref(),
                )?;
            }
            Ok(())
        });
    }
    Ok(())
}

/// A row of `ctr tasks ls`.
#[derive(Debug, PartialEq, Eq)]
struct Task {
    id: String,
    pid: i32,
    status: String,
}

/// `ctr tasks ls` prints a header, then `ID PID STATUS` per task.
fn parse_tasks(text: &str) -> Vec<Task> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let id = fields.next()?.to_string();
            let pid = fields.next()?.parse().ok()?;
            let status = fields.next()?.to_string();
            Some(Task { id, pid, status })
        })
        .collect()
}

/// The lines ctr logged at level error or fatal (logrus text format), and its own fatal
/// `ctr: ...` message.
fn logged_errors(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| {
            l.contains("level=error") || l.contains("level=fatal") || l.starts_with("ctr: ")
        })
        .map(|l| l.trim().to_string())
        .collect()
}

/// The last lines of a log, for error messages.
fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(8)..].join("\n");
    format!("{} (last lines of {})", tail.trim(), path.display())
}

/// Waits for a child of ours to exit, up to `timeout`.
fn wait_exit(child: &mut Child, timeout: Duration) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for a child")? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            bail!("pid {} still runs after {timeout:?}", child.id());
        }
        thread::sleep(POLL);
    }
}

/// Runs `command` to completion, capturing its output; kills it (it is our child, not yet
/// reaped, so its PID is still its own) when it outlives `timeout`.
fn output_within(mut command: Command, timeout: Duration) -> anyhow::Result<Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning")?;
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let waited = wait_exit(&mut child, timeout);
    if waited.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let status = waited?;
    let join = |h: thread::JoinHandle<Vec<u8>>| h.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout: join(stdout),
        stderr: join(stderr),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_mount_points_are_made_by_overlaying_their_deepest_existing_parent() {
        let targets = [
            (PathBuf::from("/lab/net.d"), PathBuf::from("/etc/cni/net.d")),
            (PathBuf::from("/lab/bin"), PathBuf::from("/opt/cni/bin")),
        ];
        let on_host = ["/", "/etc", "/opt"];
        let plan = plan_mounts(&targets, Path::new("/lab/ov"), |p| {
            on_host.iter().any(|h| Path::new(h) == p)
        })
        .expect("plan");
        assert_eq!(
            plan.dirs,
            [
                "/lab/ov/0/upper/cni/net.d",
                "/lab/ov/0/work",
                "/lab/ov/1/upper/cni/bin",
                "/lab/ov/1/work"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(
            plan.mounts[0],
            PrivateMount::Overlay {
                target: "/etc".into(),
                upper: "/lab/ov/0/upper".into(),
                work: "/lab/ov/0/work".into(),
            }
        );
        assert_eq!(
            plan.mounts[3],
            PrivateMount::Bind {
                source: "/lab/bin".into(),
                target: "/opt/cni/bin".into(),
            }
        );
        assert_eq!(plan.mounts.len(), 4);
    }

    #[test]
    fn existing_mount_points_are_only_bound_and_the_root_is_never_overlaid() {
        let targets = [(PathBuf::from("/lab/net.d"), PathBuf::from("/etc/cni/net.d"))];
        let plan = plan_mounts(&targets, Path::new("/ov"), |_| true).expect("plan");
        assert!(plan.dirs.is_empty());
        assert_eq!(plan.mounts.len(), 1);
        let only_root = plan_mounts(&targets, Path::new("/ov"), |p| p == Path::new("/"));
        assert!(only_root.is_err());
    }

    #[test]
    fn the_conflist_chains_tuning_after_weft_cni_in_a_version_ctr_speaks() {
        let list = cni_conflist("lab1", "vps1");
        assert_eq!(list["cniVersion"], CONFLIST_VERSION);
        assert_eq!(list["plugins"][0]["type"], "weft-cni");
        assert_eq!(
            list["plugins"][0]["agentSocket"],
            "/run/weft/labs/lab1/vps1/agent.sock"
        );
        assert_eq!(list["plugins"][1]["type"], "tuning");
        assert_eq!(list["plugins"][1]["sysctl"][CHAINED_SYSCTL.0], "1");
    }

    #[test]
    fn the_daemon_config_keeps_every_path_in_its_directory() {
        let text = daemon_config(Path::new("/run/weft/labs/l/containerd/vps1"));
        for line in text.lines().filter(|l| l.contains('/')) {
            assert!(
                line.contains("\"/run/weft/labs/l/containerd/vps1/"),
                "{line}"
            );
        }
        assert!(text.contains("root = "), "{text}");
        assert!(text.contains("\"io.containerd.grpc.v1.cri\""), "{text}");
    }

    #[test]
    fn container_ids_cannot_name_other_paths() {
        assert!(validate_id("web-1.a_b").is_ok());
        for bad in ["", "../x", "a/b", "-a", &"a".repeat(77)] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn task_rows_and_logged_errors_are_read() {
        let tasks = parse_tasks("TASK    PID      STATUS    \nweb     31896    RUNNING\nx\n");
        assert_eq!(
            tasks,
            vec![Task {
                id: "web".into(),
                pid: 31896,
                status: "RUNNING".into()
            }]
        );
        let log = "time=\"t\" level=info msg=ok\ntime=\"t\" level=error msg=\"network review\" error=\"x\"\nctr: exit\n";
        assert_eq!(logged_errors(log).len(), 2);
    }
}
