//! Running a command inside the lab: in a node's or pod's network namespace, and in the node's
//! cgroup (so `down` can find and kill it, and per-node socket LB applies to it).

use std::{
    fs::{File, OpenOptions},
    os::{fd::AsFd as _, unix::process::CommandExt as _},
    path::Path,
    process::{Command, ExitStatus},
};

use anyhow::{Context as _, anyhow};
use nix::{
    sched::{CloneFlags, setns},
    unistd::{setsid, write},
};

use crate::{
    host, netns, runtime,
    topology::{Target, Topology},
};

/// A [`Command`] for `argv` that, once spawned, runs in `target`'s netns and cgroup. `target` is
/// `vps1`, a hand-wired pod `vps1/pod1` (or `vps1-pod1`), a pod the lab runs for Weft (`web` or
/// `default/web`), `client` or `inet`. Stdio is left as `Command`'s default, so callers may
/// capture output.
pub fn command_in(topology: &Topology, target: &str, argv: &[String]) -> anyhow::Result<Command> {
    let place = topology
        .target(target)
        .or_else(|| weft_pod(topology, target))
        .ok_or_else(|| {
            anyhow!(
                "lab {} has no `{target}` (use a node like vps1, a pod like web or default/web, \
                 client or inet)",
                topology.name
            )
        })?;
    placed_command(&place.netns, &place.cgroup, argv, false)
}

/// A pod applied to the lab (`name` in namespace default, or `namespace/name`): its netns and
/// its node's cgroup.
fn weft_pod(topology: &Topology, target: &str) -> Option<Target> {
    let (namespace, name) = target.split_once('/').unwrap_or(("default", target));
    let pod = runtime::running_pods(&topology.name)
        .ok()?
        .into_iter()
        .find(|p| p.namespace == namespace && p.name == name)?;
    let node = topology.node(&pod.node)?;
    Some(Target {
        netns: pod.netns,
        cgroup: node.cgroup.clone(),
    })
}

/// A [`Command`] for `argv` that, once spawned, runs in network namespace `netns` and cgroup
/// `cgroup` (relative to the cgroup2 root); with `new_session`, in a session of its own so it
/// outlives the caller's terminal.
pub fn placed_command(
    netns_name: &str,
    cgroup: &Path,
    argv: &[String],
    new_session: bool,
) -> anyhow::Result<Command> {
    placed(Some(netns::open(netns_name)?), cgroup, argv, new_session)
}

/// [`placed_command`] in the caller's network namespace.
pub(crate) fn command_in_cgroup(
    cgroup: &Path,
    argv: &[String],
    new_session: bool,
) -> anyhow::Result<Command> {
    placed(None, cgroup, argv, new_session)
}

fn placed(
    ns: Option<File>,
    cgroup: &Path,
    argv: &[String],
    new_session: bool,
) -> anyhow::Result<Command> {
    let (program, args) = argv.split_first().context("no command given")?;
    let cgroup2 = host::find_cgroup2_root().context("no cgroup2 hierarchy is mounted")?;
    let procs_path = cgroup2.join(cgroup).join("cgroup.procs");
    let procs = OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .with_context(|| format!("opening {}", procs_path.display()))?;
    let mut command = Command::new(program);
    command.args(args);
    // SAFETY: the closure only makes system calls on descriptors opened before the fork (no
    // allocation, no locks), which is what a pre_exec hook may do.
    unsafe {
        command.pre_exec(move || {
            if let Some(ns) = &ns {
                setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)?;
            }
            write(procs.as_fd(), b"0")?;
            if new_session {
                setsid()?;
            }
            Ok(())
        });
    }
    Ok(command)
}

/// Runs `argv` in `target` (see [`command_in`]) with stdio inherited, and waits for it.
pub fn exec(topology: &Topology, target: &str, argv: &[String]) -> anyhow::Result<ExitStatus> {
    let mut command = command_in(topology, target, argv)?;
    command
        .status()
        .with_context(|| format!("running {argv:?} in {target} of lab {}", topology.name))
}
