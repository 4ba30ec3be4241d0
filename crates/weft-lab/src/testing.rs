//! Helpers for tests that run on a lab: skipping without root, unique lab names, and a guard
//! that takes the lab down however the test ends.

use std::{
    ops::Deref,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::{
    lifecycle::{DownReport, down, up},
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
