//! bpffs, where a node's maps and links are pinned: mounted when the machine has none, and
//! private pin directories for tests.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::Context as _;
use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

pub const ROOT: &str = "/sys/fs/bpf";

/// Mounts bpffs at /sys/fs/bpf unless it is there already (a fresh machine has none).
pub fn ensure_mounted() -> anyhow::Result<()> {
    let root = Path::new(ROOT);
    let fs = statfs(root).with_context(|| format!("statfs {ROOT}"))?;
    if fs.filesystem_type() == BPF_FS_MAGIC {
        return Ok(());
    }
    mount(
        Some("bpf"),
        root,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mount -t bpf bpf {ROOT}"))
}

/// A unique pin directory `/sys/fs/bpf/<prefix>-<pid>-<n>`, removed with everything pinned in
/// it when dropped (also when a test panics).
pub struct TempPinDir(PathBuf);

impl TempPinDir {
    pub fn new(prefix: &str) -> anyhow::Result<TempPinDir> {
        static N: AtomicU64 = AtomicU64::new(0);
        ensure_mounted()?;
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = Path::new(ROOT).join(format!("{prefix}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempPinDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempPinDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("removing {}: {e}", self.0.display());
        }
    }
}
