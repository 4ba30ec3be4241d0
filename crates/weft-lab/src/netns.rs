//! Entering the lab's network namespaces with `setns` (never `ip netns exec`, which remounts
//! /sys in its own mount namespace and so hides bpffs and cgroup2).

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use nix::sched::{CloneFlags, setns};

use crate::host::NETNS_DIR;

/// `/run/netns/<name>`, the bind mount that keeps a named namespace alive.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Opens a named namespace, for `setns`.
pub fn open(name: &str) -> anyhow::Result<File> {
    let path = netns_path(name);
    File::open(&path).with_context(|| format!("opening netns {name} ({})", path.display()))
}

/// Runs `f` on a thread that has entered network namespace `netns`, and waits for it. Sockets
/// that `f` creates belong to that namespace for their whole life, whichever thread uses them
/// later. A panic in `f` is propagated to the caller.
pub fn run_in<F, R>(netns: &str, f: F) -> anyhow::Result<R>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    run_in_file(netns, open(netns)?, f)
}

/// [`run_in`] for a namespace given by path, such as a process's `/proc/<pid>/ns/net`.
pub fn run_in_path<F, R>(path: &Path, f: F) -> anyhow::Result<R>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let ns = File::open(path).with_context(|| format!("opening netns {}", path.display()))?;
    run_in_file(&path.display().to_string(), ns, f)
}

fn run_in_file<F, R>(netns: &str, ns: File, f: F) -> anyhow::Result<R>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name(format!("netns {netns}"))
            .spawn_scoped(scope, move || -> anyhow::Result<R> {
                setns(&ns, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("setns into netns {netns}"))?;
                Ok(f())
            })
            .with_context(|| format!("spawning a thread for netns {netns}"))?;
        match thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}
