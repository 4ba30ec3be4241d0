//! Bringing a lab up and down. `down` works from what is on the machine (namespaces in
//! /run/netns, the lab's cgroup and bpffs directories), not from the state file, so it also
//! cleans up after a crashed `up` or a killed test. It stops the lab's supervisor first, so
//! that no agent is restarted while the lab goes.

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use nix::{
    errno::Errno,
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde::Serialize;

use crate::{
    host, ip, netns,
    spec::{LabSpec, validate_name},
    topology::{PIN_ROOT, Topology, cgroup_dir_name, plan},
    wiring,
};

/// How long `down` waits for killed processes to leave the lab's cgroups.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// What `down` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DownReport {
    /// The lab's supervisor, stopped first so that it restarts nothing being taken down.
    pub supervisor: Option<i32>,
    /// PIDs that were in the lab's cgroups and got SIGKILL.
    pub killed: Vec<i32>,
    pub netns: Vec<String>,
    pub pin_dir: Option<PathBuf>,
    /// Absolute paths, children before parents.
    pub cgroups: Vec<PathBuf>,
    pub state_file: Option<PathBuf>,
}

impl DownReport {
    pub fn is_empty(&self) -> bool {
        self == &DownReport::default()
    }
}

impl fmt::Display for DownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return write!(f, "nothing to remove");
        }
        if let Some(pid) = self.supervisor {
            write!(f, "stopped the supervisor (pid {pid}); ")?;
        }
        let mut parts = Vec::new();
        if !self.killed.is_empty() {
            parts.push(format!("killed pids {:?}", self.killed));
        }
        if !self.netns.is_empty() {
            parts.push(format!("netns {}", self.netns.join(" ")));
        }
        if let Some(dir) = &self.pin_dir {
            parts.push(format!("pin dir {}", dir.display()));
        }
        if !self.cgroups.is_empty() {
            parts.push(format!("{} cgroups", self.cgroups.len()));
        }
        if let Some(file) = &self.state_file {
            parts.push(format!("state file {}", file.display()));
        }
        write!(f, "removed {}", parts.join("; "))
    }
}

/// `/run/weft/labs/<lab>.json`.
pub fn state_file(name: &str) -> PathBuf {
    Path::new(host::STATE_DIR).join(format!("{name}.json"))
}

fn pin_dir(name: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(name)
}

/// Builds the lab, after removing whatever an earlier run of the same name left. On failure,
/// everything made so far is removed and the error names the step that failed.
pub fn up(spec: &LabSpec) -> anyhow::Result<Topology> {
    spec.validate()?;
    let topology = plan(spec)?;
    down(&spec.name)
        .with_context(|| format!("removing what an earlier run of lab {} left", spec.name))?;
    if let Err(err) = build(&topology) {
        let err = err.context(format!("bringing lab {} up", spec.name));
        return Err(match down(&spec.name) {
            Ok(_) => err,
            Err(cleanup) => err.context(format!(
                "lab {} failed to come up, and removing its remains failed too: {cleanup:#}",
                spec.name
            )),
        });
    }
    Ok(topology)
}

fn build(t: &Topology) -> anyhow::Result<()> {
    weft_datapath::bpffs::ensure_mounted().context("mounting bpffs at /sys/fs/bpf")?;
    for node in &t.nodes {
        host::create_dir_all(&node.pin_dir)
            .with_context(|| format!("creating the pin directory of {}", node.name))?;
    }
    let cgroup2 = host::ensure_cgroup2_root().context("finding the cgroup2 hierarchy")?;
    for cgroup in t.cgroups() {
        host::create_dir_all(&cgroup2.join(&cgroup))
            .with_context(|| format!("creating cgroup {}", cgroup.display()))?;
    }
    create_namespaces(t).context("creating the network namespaces")?;
    write_sysctls(t).context("setting sysctls")?;
    for batch in wiring::ip_batches(t) {
        ip::batch(Some(&batch.netns), &batch.commands, false)
            .with_context(|| format!("wiring netns {}", batch.netns))?;
    }
    crate::xdp_peer::attach_to_router_ports(t).context("XDP on the router's node ports")?;
    crate::xdp_peer::client_checksums_in_software(t).context("the client's checksums")?;
    write_state(t).context("writing the state file")
}

fn create_namespaces(t: &Topology) -> anyhow::Result<()> {
    let commands: Vec<String> = t
        .all_netns()
        .iter()
        .map(|ns| format!("netns add {ns}"))
        .collect();
    ip::batch(None, &commands, false)
}

fn write_sysctls(t: &Topology) -> anyhow::Result<()> {
    set_sysctls(&wiring::sysctls(t))
}

/// Writes each sysctl in its own namespace: the lab's, or those a user of the toolkit adds to a
/// lab that is up (the kube-proxy baseline's `route_localnet`).
pub fn set_sysctls(sysctls: &[wiring::Sysctl]) -> anyhow::Result<()> {
    let mut namespaces: Vec<&str> = Vec::new();
    for s in sysctls {
        if !namespaces.contains(&s.netns.as_str()) {
            namespaces.push(&s.netns);
        }
    }
    for ns in namespaces {
        let mine: Vec<&wiring::Sysctl> = sysctls.iter().filter(|s| s.netns == ns).collect();
        netns::run_in(ns, || mine.iter().try_for_each(|s| write_sysctl(s)))??;
    }
    Ok(())
}

/// Writes one sysctl of the calling thread's namespace ([`set_sysctls`] runs it in the right
/// one); an optional one the kernel lacks is skipped.
pub fn write_sysctl(s: &wiring::Sysctl) -> anyhow::Result<()> {
    let path = s.path();
    match fs::write(&path, s.value) {
        Ok(()) => Ok(()),
        Err(e) if s.optional && e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("{} = {} in netns {}", s.key, s.value, s.netns)),
    }
}

fn write_state(t: &Topology) -> anyhow::Result<()> {
    let path = state_file(&t.name);
    host::create_dir_all(Path::new(host::STATE_DIR))?;
    let json = serde_json::to_string_pretty(t).context("serializing the topology")?;
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, json).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
}

/// The topology of a lab that is up, from its state file.
pub fn load(name: &str) -> anyhow::Result<Topology> {
    validate_name(name)?;
    let path = state_file(name);
    let json = match fs::read_to_string(&path) {
        Ok(json) => json,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            bail!("lab {name} is not up (no {})", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_str(&json).with_context(|| format!("parsing {}", path.display()))
}

/// Removes everything of lab `name` from the machine; a lab that is not there is no error.
/// Every step is tried even when an earlier one failed; the error then lists all failures.
pub fn down(name: &str) -> anyhow::Result<DownReport> {
    validate_name(name)?;
    let mut report = DownReport::default();
    let cgroup = find_lab_cgroup(name);
    let mut errors = Vec::new();
    match crate::supervise::stop(name) {
        Ok(pid) => report.supervisor = pid,
        Err(e) => errors.push(e.context("stopping the lab's supervisor")),
    }
    if let Some(cg) = &cgroup
        && let Err(e) = kill_processes(cg, &mut report)
    {
        errors.push(e.context("killing the lab's processes"));
    }
    if let Err(e) = delete_namespaces(name, &mut report) {
        errors.push(e.context("deleting the network namespaces"));
    }
    if let Err(e) = remove_pin_dir(name, &mut report) {
        errors.push(e.context("removing the bpffs pin directory"));
    }
    if let Some(cg) = &cgroup
        && let Err(e) = remove_cgroups(cg, &mut report)
    {
        errors.push(e.context("removing the cgroups"));
    }
    if let Err(e) = remove_state_file(name, &mut report) {
        errors.push(e.context("removing the state file"));
    }
    if errors.is_empty() {
        return Ok(report);
    }
    let all: Vec<String> = errors.iter().map(|e| format!("{e:#}")).collect();
    Err(anyhow!("taking lab {name} down: {}", all.join("; ")))
}

/// Everything of lab `name` still on the machine, one line each; empty after a good `down`.
pub fn leftovers(name: &str) -> Vec<String> {
    let mut found = Vec::new();
    match host::lab_netns_names(name) {
        Ok(names) => found.extend(names.into_iter().map(|n| format!("netns {n}"))),
        Err(e) => found.push(format!("cannot tell about netns: {e:#}")),
    }
    let pins = pin_dir(name);
    if pins.exists() {
        found.push(format!("pin dir {}", pins.display()));
    }
    if let Some(cg) = find_lab_cgroup(name) {
        found.push(format!("cgroup {}", cg.display()));
    }
    let state = state_file(name);
    if state.exists() {
        found.push(format!("state file {}", state.display()));
    }
    let runtime_dir = crate::runtime::lab_dir(name);
    if runtime_dir.exists() {
        found.push(format!("runtime dir {}", runtime_dir.display()));
    }
    found
}

/// The lab's cgroup directory, when the machine has a cgroup2 hierarchy and the directory exists.
fn find_lab_cgroup(name: &str) -> Option<PathBuf> {
    let dir = host::find_cgroup2_root()?.join(cgroup_dir_name(name));
    dir.is_dir().then_some(dir)
}

/// The cgroup directories of a tree, children before their parent.
fn cgroup_tree(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(dirs),
        Err(e) => return Err(e).with_context(|| format!("listing {}", root.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", root.display()))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            dirs.extend(cgroup_tree(&entry.path())?);
        }
    }
    dirs.push(root.to_path_buf());
    Ok(dirs)
}

fn cgroup_pids(tree: &[PathBuf]) -> anyhow::Result<Vec<i32>> {
    let mut pids = Vec::new();
    for dir in tree {
        let file = dir.join("cgroup.procs");
        let text = match fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let pid = line
                .trim()
                .parse()
                .with_context(|| format!("pid `{line}` in {}", file.display()))?;
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// SIGKILLs, by PID, every process in the lab's cgroups until none is left.
fn kill_processes(lab_cgroup: &Path, report: &mut DownReport) -> anyhow::Result<()> {
    let me = i32::try_from(std::process::id()).context("own pid")?;
    let deadline = Instant::now() + KILL_TIMEOUT;
    loop {
        let pids = cgroup_pids(&cgroup_tree(lab_cgroup)?)?;
        if pids.is_empty() {
            return Ok(());
        }
        if pids.contains(&me) {
            bail!("this process ({me}) is itself in {}", lab_cgroup.display());
        }
        if Instant::now() > deadline {
            bail!(
                "pids {pids:?} still in {} after SIGKILL",
                lab_cgroup.display()
            );
        }
        for pid in pids {
            match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => return Err(e).with_context(|| format!("kill -KILL {pid}")),
            }
            if !report.killed.contains(&pid) {
                report.killed.push(pid);
            }
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn delete_namespaces(name: &str, report: &mut DownReport) -> anyhow::Result<()> {
    let names = host::lab_netns_names(name)?;
    let commands: Vec<String> = names.iter().map(|n| format!("netns del {n}")).collect();
    let result = ip::batch(None, &commands, true);
    let remaining = host::lab_netns_names(name)?;
    report
        .netns
        .extend(names.into_iter().filter(|n| !remaining.contains(n)));
    result?;
    if !remaining.is_empty() {
        bail!("still present: {}", remaining.join(" "));
    }
    Ok(())
}

fn remove_pin_dir(name: &str, report: &mut DownReport) -> anyhow::Result<()> {
    let dir = pin_dir(name);
    if host::remove_tree(&dir)? {
        report.pin_dir = Some(dir);
    }
    host::remove_dir_if_empty(Path::new(PIN_ROOT))
}

fn remove_cgroups(lab_cgroup: &Path, report: &mut DownReport) -> anyhow::Result<()> {
    for dir in cgroup_tree(lab_cgroup)? {
        if host::remove_cgroup_dir(&dir)? {
            report.cgroups.push(dir);
        }
    }
    Ok(())
}

fn remove_state_file(name: &str, report: &mut DownReport) -> anyhow::Result<()> {
    // The runtime's directory: agents' sockets, state and logs, manifests, pod records.
    let runtime_dir = crate::runtime::lab_dir(name);
    if host::remove_tree(&runtime_dir)? {
        report.state_file = Some(runtime_dir);
    }
    let path = state_file(name);
    match fs::remove_file(&path) {
        Ok(()) => {
            report.state_file = Some(path);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("rm {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_report_says_so() {
        assert!(DownReport::default().is_empty());
        assert_eq!(DownReport::default().to_string(), "nothing to remove");
        let r = DownReport {
            netns: vec!["a-inet".into()],
            state_file: Some("/run/weft/labs/a.json".into()),
            ..DownReport::default()
        };
        assert_eq!(
            r.to_string(),
            "removed netns a-inet; state file /run/weft/labs/a.json"
        );
    }

    #[test]
    fn down_and_load_refuse_bad_names() {
        assert!(down("").is_err());
        assert!(down("../etc").is_err());
        assert!(load("a-b").is_err());
    }

    #[test]
    fn state_file_is_under_run_weft() {
        assert_eq!(state_file("abc"), PathBuf::from("/run/weft/labs/abc.json"));
    }
}
