//! Running the datapath's programs on crafted packets with BPF_PROG_TEST_RUN: the object is
//! loaded with private (unpinned) maps, so each harness starts from empty state.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    programs::{Program, TestRun, TestRunOptions},
};

use crate::{
    DatapathMaps, LbMaps,
    object::{BPF_OBJECT, load_programs},
};

pub struct TestHarness {
    ebpf: Ebpf,
    pub maps: DatapathMaps,
    pub lb: LbMaps,
}

/// What a program did with one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// The program's return code (TC_ACT_* or XDP_*).
    pub verdict: i32,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
}

impl TestHarness {
    /// Loads every program of the object. Needs root (CAP_BPF).
    pub fn load() -> anyhow::Result<TestHarness> {
        TestHarness::load_with_max_entries(&[])
    }

    /// Like [`TestHarness::load`], with the named maps sized to the given number of entries
    /// instead of the object's (benchmarks: more services than the datapath's maps hold).
    pub fn load_with_max_entries(sizes: &[(&str, u32)]) -> anyhow::Result<TestHarness> {
        let mut loader = EbpfLoader::new();
        for &(name, entries) in sizes {
            loader.map_max_entries(name, entries);
        }
        let mut ebpf = loader.load(BPF_OBJECT).context("loading the BPF object")?;
        load_programs(&mut ebpf)?;
        let maps = DatapathMaps::take_from(&mut ebpf)?;
        let lb = LbMaps::take_from(&mut ebpf)?;
        Ok(TestHarness { ebpf, maps, lb })
    }

    /// What the verifier reports of a loaded program: the instructions it processed
    /// (`verified_insns`) and the size of the translated program in instructions.
    pub fn verifier_stats(&self, program: &str) -> anyhow::Result<(u32, u32)> {
        let info = self
            .ebpf
            .program(program)
            .ok_or_else(|| anyhow!("no program {program}"))?
            .info()
            .with_context(|| format!("info of {program}"))?;
        let verified = info.verified_instruction_count().unwrap_or(0);
        let insns = info.size_translated().unwrap_or(0) / 8;
        Ok((verified, insns))
    }

    /// Runs `program` once on `packet`.
    pub fn run(&mut self, program: &str, packet: &[u8]) -> anyhow::Result<RunOutcome> {
        self.run_timed(program, packet).map(|(outcome, _)| outcome)
    }

    /// Runs the XDP program `program` once on `packet` as if it arrived on the interface
    /// `ingress_ifindex` of the calling thread's network namespace (the namespace its helpers,
    /// `bpf_fib_lookup` among them, then see).
    pub fn run_xdp_on(
        &mut self,
        program: &str,
        packet: &[u8],
        ingress_ifindex: u32,
    ) -> anyhow::Result<RunOutcome> {
        self.run_xdp_timed_on(program, packet, ingress_ifindex)
            .map(|(outcome, _)| outcome)
    }

    /// [`TestHarness::run_xdp_on`], with the run's duration by the kernel's clock.
    pub fn run_xdp_timed_on(
        &mut self,
        program: &str,
        packet: &[u8],
        ingress_ifindex: u32,
    ) -> anyhow::Result<(RunOutcome, Duration)> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        let md: Vec<u8> = [0, packet.len() as u32, 0, ingress_ifindex, 0, 0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        if !matches!(self.ebpf.program(program), Some(Program::Xdp(_))) {
            return Err(anyhow!("no XDP program {program}"));
        }
        self.test_run(program, packet, Some(&md))
            .with_context(|| format!("on ifindex {ingress_ifindex}"))
    }

    /// Runs `program` once on `packet`; also returns how long the run took by the kernel's
    /// clock (BPF_PROG_TEST_RUN's duration: the program, without the syscall around it).
    pub fn run_timed(
        &mut self,
        program: &str,
        packet: &[u8],
    ) -> anyhow::Result<(RunOutcome, Duration)> {
        self.test_run(program, packet, None)
    }

    /// One BPF_PROG_TEST_RUN of the tc or XDP program `program`, with `ctx_in` as its context.
    fn test_run(
        &mut self,
        program: &str,
        packet: &[u8],
        ctx_in: Option<&[u8]>,
    ) -> anyhow::Result<(RunOutcome, Duration)> {
        let mut out = vec![0u8; packet.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ctx_in,
            ..TestRunOptions::default()
        };
        let result = match self.ebpf.program_mut(program) {
            Some(Program::SchedClassifier(p)) => p.test_run(opts),
            Some(Program::Xdp(p)) => p.test_run(opts),
            Some(_) => return Err(anyhow!("{program} is neither a tc nor an XDP program")),
            None => return Err(anyhow!("no program {program}")),
        }
        .with_context(|| format!("BPF_PROG_TEST_RUN of {program}"))?;
        out.truncate(result.data_size_out as usize);
        let outcome = RunOutcome {
            verdict: result.return_value as i32,
            packet: out,
        };
        Ok((outcome, result.duration))
    }
}

/// Runs `check` on every fixture of a table and fails once at the end, naming every fixture
/// that failed and why (a table stops at no single failure).
pub fn assert_every_fixture<F>(
    fixtures: impl IntoIterator<Item = F>,
    name: impl Fn(&F) -> &str,
    check: impl Fn(&F) -> anyhow::Result<()>,
) {
    let failures: Vec<String> = fixtures
        .into_iter()
        .filter_map(|f| check(&f).err().map(|e| format!("{}: {e:#}", name(&f))))
        .collect();
    assert!(
        failures.is_empty(),
        "fixtures failed:\n{}",
        failures.join("\n")
    );
}
