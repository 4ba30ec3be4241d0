//! Helpers for tests that run on a lab: skipping without root, unique lab names, a guard
//! that takes the lab down however the test ends, and a cluster run by Weft's agents.

use std::{
    net::Ipv4Addr,
    ops::Deref,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::{
    apply::{ApplyReport, apply, delete},
    lifecycle::{DownReport, down, up},
    runtime::{self, Binaries, PodRecord},
    spec::{LabSpec, MAX_NAME_LEN},
    topology::Topology,
};

pub use weft_datapath::running_as_root;

const PID_DIGITS: usize = 5; // 36^5 > 2^22, the largest pid_max
const COUNTER_DIGITS: usize = 2;
const TAG_LEN: usize = MAX_NAME_LEN - 1 - PID_DIGITS - COUNTER_DIGITS;

/// `t<tag><pid><counter>`: at most 4 characters of `tag` (a-z, 0-9 kept, the rest dropped), then
/// the process id and a per-process counter in fixed-width base 36, so names are unique across
/// the threads of a process and across the processes running at the same time.
pub fn unique_lab_name(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed) % 36u32.pow(COUNTER_DIGITS as u32);
    let tag: String = tag
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .take(TAG_LEN)
        .collect();
    format!(
        "t{tag}{}{}",
        base36(std::process::id(), PID_DIGITS),
        base36(count, COUNTER_DIGITS)
    )
}

fn base36(mut n: u32, width: usize) -> String {
    let mut digits = vec![b'0'; width];
    for d in digits.iter_mut().rev() {
        *d = b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8_lossy(&digits).into_owned()
}

/// A lab that is taken down when the guard is dropped, also when the test panics.
#[derive(Debug)]
pub struct LabGuard {
    topology: Topology,
    armed: bool,
}

impl LabGuard {
    pub fn up(spec: &LabSpec) -> anyhow::Result<LabGuard> {
        Ok(LabGuard::new(up(spec)?))
    }

    /// Takes charge of a lab that is already up.
    pub fn new(topology: Topology) -> LabGuard {
        LabGuard {
            topology,
            armed: true,
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Takes the lab down now, returning what was removed.
    pub fn down(mut self) -> anyhow::Result<DownReport> {
        self.armed = false;
        down(&self.topology.name)
    }
}

impl Deref for LabGuard {
    type Target = Topology;

    fn deref(&self) -> &Topology {
        &self.topology
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = down(&self.topology.name)
        {
            eprintln!("taking lab {} down failed: {e:#}", self.topology.name);
        }
    }
}

/// A lab run by Weft (an agent per node, the CNI plugin), with a scratch directory for the
/// manifests a test applies; both go when it is dropped.
pub struct TestCluster {
    pub lab: LabGuard,
    pub bins: Binaries,
    pub dir: PathBuf,
}

impl TestCluster {
    /// `nodes` nodes whose agents read `values` as their `values.yaml` (none: the defaults).
    /// Panics when the cluster does not come up: for tests only.
    pub fn up(tag: &str, nodes: u32, values: Option<&str>) -> TestCluster {
        let bins = Binaries::locate().expect("weft-agent and weft-cni are built");
        let spec = LabSpec::with_size(unique_lab_name(tag), nodes, 0);
        let dir = std::env::temp_dir().join(format!("weft-cluster-test-{}", spec.name));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = values.map(|text| {
            let path = dir.join("values.yaml");
            std::fs::write(&path, text).expect("write values.yaml");
            path
        });
        let lab = runtime::up_cluster(&spec, &bins, config.as_deref());
        let lab = LabGuard::new(lab.expect("cluster up"));
        TestCluster { lab, bins, dir }
    }

    /// `weft lab apply -f` of `text` saved as `file`.
    pub fn apply_text(&self, file: &str, text: &str) -> anyhow::Result<ApplyReport> {
        let path = self.dir.join(file);
        std::fs::write(&path, text)?;
        apply(&self.lab, &self.bins, &[path])
    }

    /// `weft lab delete -f` of `text` saved as `file`.
    pub fn delete_text(&self, file: &str, text: &str) -> anyhow::Result<ApplyReport> {
        let path = self.dir.join(file);
        std::fs::write(&path, text)?;
        delete(&self.lab, &self.bins, &[path])
    }

    /// The running pod `name` (namespace default). Panics when it is not running.
    pub fn pod(&self, name: &str) -> PodRecord {
        runtime::running_pods(&self.lab.name)
            .expect("pod records")
            .into_iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("pod {name} is not running"))
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running pod's IPv4 address. Panics when it has none.
pub fn pod_address(record: &PodRecord) -> Ipv4Addr {
    record
        .address
        .as_deref()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("pod {} has no address", record.name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::validate_name;

    #[test]
    fn unique_names_are_valid_and_distinct() {
        let names: Vec<String> = ["conn", "Re-Up!", "", "averyveryverylongtag", "9x"]
            .iter()
            .flat_map(|tag| [unique_lab_name(tag), unique_lab_name(tag)])
            .collect();
        for name in &names {
            assert_eq!(validate_name(name), Ok(()), "{name}");
        }
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "{names:?}");
        assert!(names[0].starts_with("tconn"), "{}", names[0]);
        assert!(names[2].starts_with("treup"), "{}", names[2]);
    }

    #[test]
    fn base36_is_fixed_width() {
        assert_eq!(base36(0, 5), "00000");
        assert_eq!(base36(35, 2), "0z");
        assert_eq!(base36(4_194_304, 5), "2hwcg");
        assert_eq!(base36(36u32.pow(5) - 1, 5), "zzzzz");
    }
}
