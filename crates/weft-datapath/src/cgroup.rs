//! The cgroup2 hierarchy: where it is mounted and which cgroup a process is in (socket LB is
//! attached to a cgroup).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};

/// The mount point of the cgroup2 hierarchy, if the machine has one.
pub fn find_cgroup2_root() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup2_in_mountinfo(&mountinfo)
}

/// The cgroup2 directory of the calling process, from /proc/self/cgroup and the mount point.
pub fn own_cgroup() -> anyhow::Result<PathBuf> {
    let root = find_cgroup2_root().ok_or_else(|| anyhow!("no cgroup2 hierarchy is mounted"))?;
    let text = fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let relative = cgroup2_in_proc_cgroup(&text)
        .ok_or_else(|| anyhow!("/proc/self/cgroup names no cgroup2 cgroup"))?;
    Ok(root.join(relative.trim_start_matches('/')))
}

/// Refuses the root of the cgroup2 hierarchy: programs there would act on every socket of the
/// machine, not only on this node's.
pub fn refuse_root(cgroup: &Path) -> anyhow::Result<()> {
    let Some(root) = find_cgroup2_root() else {
        return Ok(());
    };
    if is_same_dir(cgroup, &root) {
        bail!(
            "{} is the root of the cgroup2 hierarchy (every process of the host)",
            cgroup.display()
        );
    }
    Ok(())
}

fn is_same_dir(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The path of the cgroup2 line (`0::<path>`) of a /proc/<pid>/cgroup text.
fn cgroup2_in_proc_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|line| line.strip_prefix("0::"))
}

/// The first cgroup2 mount point listed in a /proc/<pid>/mountinfo text.
fn cgroup2_in_mountinfo(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let fstype = after.split(' ').next()?;
        let mount_point = before.split(' ').nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|o| {
            let s = std::str::from_utf8(o).ok()?;
            u8::from_str_radix(s, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_point() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_in_mountinfo(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let spaced = "41 31 0:38 / /mnt/cg\\040two rw shared:9 - cgroup2 none rw\n";
        assert_eq!(
            cgroup2_in_mountinfo(spaced),
            Some(PathBuf::from("/mnt/cg two"))
        );
        assert_eq!(
            cgroup2_in_mountinfo("32 31 0:29 / /x rw - cgroup c rw\n"),
            None
        );
    }

    #[test]
    fn the_cgroup2_line_of_proc_cgroup_is_found_among_v1_lines() {
        let text = "4:memory:/process_api/2e99\n1:cpu:/\n0::/weft-ab/vps1\n";
        assert_eq!(cgroup2_in_proc_cgroup(text), Some("/weft-ab/vps1"));
        assert_eq!(cgroup2_in_proc_cgroup("0::/\n"), Some("/"));
        assert_eq!(cgroup2_in_proc_cgroup("4:memory:/x\n"), None);
    }
}
