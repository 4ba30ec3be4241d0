//! The machine-wide facilities a lab sits in: bpffs, the cgroup2 hierarchy, `/run/netns`, and
//! the directory of state files. Each lab only ever creates and removes objects carrying its
//! own name.

use std::{
    fs, io,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};
use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{CGROUP2_SUPER_MAGIC, statfs},
};

pub(crate) const NETNS_DIR: &str = "/run/netns";
pub(crate) const STATE_DIR: &str = "/run/weft/labs";
/// Where cgroup2 is mounted when the machine has no cgroup2 mount at all.
const FALLBACK_CGROUP2: &str = "/run/weft/cgroup2";

/// The mount point of the cgroup2 hierarchy, if the machine has one.
pub(crate) fn find_cgroup2_root() -> Option<PathBuf> {
    weft_datapath::cgroup::find_cgroup2_root()
}

/// The cgroup2 mount point, mounting cgroup2 at /run/weft/cgroup2 when there is none.
pub(crate) fn ensure_cgroup2_root() -> anyhow::Result<PathBuf> {
    if let Some(root) = find_cgroup2_root() {
        return Ok(root);
    }
    let root = PathBuf::from(FALLBACK_CGROUP2);
    fs::create_dir_all(&root).with_context(|| format!("mkdir {}", root.display()))?;
    let already = statfs(&root).is_ok_and(|fs| fs.filesystem_type() == CGROUP2_SUPER_MAGIC);
    if !already {
        mount(
            Some("cgroup2"),
            &root,
            Some("cgroup2"),
            MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mount -t cgroup2 cgroup2 {}", root.display()))?;
    }
    Ok(root)
}

/// Whether `name` is one of lab `lab`'s namespaces: `<lab>-inet`, `<lab>-client`,
/// `<lab>-vps<digits>` or `<lab>-vps<digits>-<anything>`.
pub(crate) fn is_lab_netns(lab: &str, name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix(lab)
        .and_then(|rest| rest.strip_prefix('-'))
    else {
        return false;
    };
    if rest == "inet" || rest == "client" {
        return true;
    }
    let Some(node) = rest.strip_prefix("vps") else {
        return false;
    };
    let (digits, tail) = match node.split_once('-') {
        Some((digits, tail)) => (digits, Some(tail)),
        None => (node, None),
    };
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && tail.is_none_or(|t| !t.is_empty())
}

/// The lab's namespaces present in /run/netns, sorted so that pods come after their node.
pub(crate) fn lab_netns_names(lab: &str) -> anyhow::Result<Vec<String>> {
    let entries = match fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {NETNS_DIR}")),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {NETNS_DIR}"))?;
        if let Some(name) = entry.file_name().to_str()
            && is_lab_netns(lab, name)
        {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// `create_dir_all` that survives a concurrent `down` of another lab removing an empty shared
/// parent (e.g. /sys/fs/bpf/weft) between our mkdirs.
pub(crate) fn create_dir_all(path: &Path) -> anyhow::Result<()> {
    let mut attempt = 0;
    loop {
        match fs::create_dir_all(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 5 => attempt += 1,
            Err(e) => return Err(e).with_context(|| format!("mkdir -p {}", path.display())),
        }
    }
}

/// Removes a directory tree; a missing one is not an error. Returns whether it existed.
pub(crate) fn remove_tree(path: &Path) -> anyhow::Result<bool> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("rm -r {}", path.display())),
    }
}

/// Removes a directory if it is empty; missing or non-empty is fine.
pub(crate) fn remove_dir_if_empty(path: &Path) -> anyhow::Result<()> {
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("rmdir {}", path.display())),
    }
}

/// rmdir of a cgroup, retried while the kernel still counts just-killed tasks in it.
pub(crate) fn remove_cgroup_dir(path: &Path) -> anyhow::Result<bool> {
    for _ in 0..200 {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e).with_context(|| format!("rmdir {}", path.display())),
        }
    }
    bail!("rmdir {}: still busy after 2 s", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_netns_names_are_matched_exactly() {
        for name in [
            "ab-inet",
            "ab-client",
            "ab-vps1",
            "ab-vps12",
            "ab-vps1-pod1",
            "ab-vps3-x",
        ] {
            assert!(is_lab_netns("ab", name), "{name}");
        }
        for name in [
            "ab",
            "abc-inet",
            "a-inet",
            "ab-inet2",
            "ab-vps",
            "ab-vpsx",
            "ab-vps1-",
            "ab-vps1x",
            "ab-other",
            "xab-inet",
            "ab-client-1",
        ] {
            assert!(!is_lab_netns("ab", name), "{name}");
        }
    }
}
