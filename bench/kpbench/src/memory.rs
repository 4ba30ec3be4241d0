//! What the datapath state costs in memory: the BPF maps a node pinned (`bpftool -j -f map
//! show`) and the kernel's own counters in `/proc/meminfo` (where iptables and nftables rules
//! live: slab objects, vmalloc'd rule blobs, per-CPU counters).

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct MapShow {
    #[serde(default)]
    bytes_memlock: u64,
    #[serde(default)]
    pinned: Vec<String>,
}

/// The sum of `bytes_memlock`, and the number of maps, of the maps in `bpftool -j -f map show`
/// output that are pinned under `pin_dir`.
pub fn pinned_memlock(json: &str, pin_dir: &Path) -> anyhow::Result<(u64, usize)> {
    let maps: Vec<MapShow> = serde_json::from_str(json).context("parsing bpftool's map list")?;
    let ours: Vec<&MapShow> = maps
        .iter()
        .filter(|m| m.pinned.iter().any(|p| Path::new(p).starts_with(pin_dir)))
        .collect();
    Ok((ours.iter().map(|m| m.bytes_memlock).sum(), ours.len()))
}

/// [`pinned_memlock`] of the machine's maps, now.
pub fn node_memlock(pin_dir: &Path) -> anyhow::Result<(u64, usize)> {
    let out = Command::new("bpftool")
        .args(["-j", "-f", "map", "show"])
        .output()
        .context("running bpftool")?;
    if !out.status.success() {
        bail!(
            "bpftool map show: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    pinned_memlock(&String::from_utf8_lossy(&out.stdout), pin_dir)
}

/// Slab + VmallocUsed + Percpu of `/proc/meminfo` text, in kB.
pub fn kernel_kb(meminfo: &str) -> anyhow::Result<i64> {
    let field = |name: &str| -> anyhow::Result<i64> {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {name} in /proc/meminfo"))
    };
    Ok(field("Slab")? + field("VmallocUsed")? + field("Percpu")?)
}

pub fn kernel_kb_now() -> anyhow::Result<i64> {
    kernel_kb(&std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?)
}

/// VmRSS of process `pid`, kB (0 when it cannot be read).
pub fn rss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|r| r.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_maps_pinned_under_the_node_count() {
        let json = r#"[
          {"id": 1, "type": "hash", "name": "weft_lb4_servic", "bytes_memlock": 1000,
           "pinned": ["/sys/fs/bpf/weft/lab1/vps1/weft_lb4_services"]},
          {"id": 2, "type": "lru_hash", "name": "weft_ct4", "bytes_memlock": 500,
           "pinned": ["/sys/fs/bpf/weft/lab1/vps1/weft_ct4", "/sys/fs/bpf/other"]},
          {"id": 3, "type": "hash", "name": "weft_ct4", "bytes_memlock": 7,
           "pinned": ["/sys/fs/bpf/weft/lab1/vps10/weft_ct4"]},
          {"id": 4, "type": "array", "name": ".rodata", "bytes_memlock": 4096}
        ]"#;
        let (bytes, maps) =
            pinned_memlock(json, Path::new("/sys/fs/bpf/weft/lab1/vps1")).expect("parses");
        assert_eq!((bytes, maps), (1500, 2));
        assert!(pinned_memlock("not json", Path::new("/x")).is_err());
    }

    #[test]
    fn kernel_memory_is_slab_vmalloc_and_percpu() {
        let text = "MemTotal: 100 kB\nSlab:   2000 kB\nSReclaimable: 5 kB\n\
                    VmallocUsed:  300 kB\nPercpu:  40 kB\n";
        assert_eq!(kernel_kb(text).expect("fields"), 2340);
        assert!(kernel_kb("Slab: 1 kB\n").is_err());
    }
}
