//! Running the datapath's programs on crafted packets with BPF_PROG_TEST_RUN: the object is
//! loaded with private (unpinned) maps, so each harness starts from empty state.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    programs::{Program, TestRun, TestRunOptions},
};

use crate::{DatapathMaps, object::BPF_OBJECT};

pub struct TestHarness {
    ebpf: Ebpf,
    pub maps: DatapathMaps,
}

/// What a program did with one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// The program's return code (for tc: TC_ACT_*).
    pub verdict: i32,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
}

impl TestHarness {
    /// Loads every program of the object. Needs root (CAP_BPF).
    pub fn load() -> anyhow::Result<TestHarness> {
        let mut ebpf = EbpfLoader::new()
            .load(BPF_OBJECT)
            .context("loading the BPF object")?;
        let names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_string()).collect();
        for name in names {
            if let Some(Program::SchedClassifier(p)) = ebpf.program_mut(&name) {
                p.load().with_context(|| format!("verifying {name}"))?;
            }
        }
        let maps = DatapathMaps::take_from(&mut ebpf)?;
        Ok(TestHarness { ebpf, maps })
    }

    /// Runs `program` once on `packet`.
    pub fn run(&mut self, program: &str, packet: &[u8]) -> anyhow::Result<RunOutcome> {
        let mut out = vec![0u8; packet.len() + 256];
        let result = self.test_run(program, packet, Some(&mut out), 1)?;
        out.truncate(result.0 as usize);
        Ok(RunOutcome {
            verdict: result.1,
            packet: out,
        })
    }

    /// Runs `program` `repeat` times in the kernel and returns the mean time per run.
    pub fn time_per_packet(
        &mut self,
        program: &str,
        packet: &[u8],
        repeat: u32,
    ) -> anyhow::Result<Duration> {
        let mut out = vec![0u8; packet.len() + 256];
        self.test_run(program, packet, Some(&mut out), repeat)
            .map(|r| r.2)
    }

    fn test_run(
        &mut self,
        program: &str,
        packet: &[u8],
        out: Option<&mut [u8]>,
        repeat: u32,
    ) -> anyhow::Result<(u32, i32, Duration)> {
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: out,
            repeat,
            ..TestRunOptions::default()
        };
        let result = match self.ebpf.program_mut(program) {
            Some(Program::SchedClassifier(p)) => p.test_run(opts),
            Some(_) => return Err(anyhow!("{program} is not a tc program")),
            None => return Err(anyhow!("no program {program}")),
        }
        .with_context(|| format!("BPF_PROG_TEST_RUN of {program}"))?;
        Ok((
            result.data_size_out,
            result.return_value as i32,
            result.duration,
        ))
    }
}
