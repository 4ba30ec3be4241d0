//! One stack's run: the lab, then at each number of services the programming step and every
//! measure, in that order; the lab goes however the run ends.

use std::{
    net::{SocketAddr, SocketAddrV4},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    measure::{self, FollowProbe, Pod, Servers, Tools},
    memory,
    objects::{
        self, DIRECT_IPERF_PORT, DIRECT_NETBENCH_PORT, IPERF_PORT, NAME_PORT, NETBENCH_PORT,
    },
    results::{CountRun, Follow, Memory, Paths, StackRun},
    stack::{Stack, StackLab, ms},
};

const FOLLOW_TIMEOUT: Duration = Duration::from_secs(120);

/// What a run is asked to do.
#[derive(Debug, Clone)]
pub struct Plan {
    pub stack: Stack,
    pub lab: String,
    pub work: PathBuf,
    pub services: Vec<u32>,
    pub tools: Tools,
    pub connects: usize,
    pub repeat: u32,
    pub rr_seconds: f64,
    pub crr_seconds: f64,
    pub tput_seconds: f64,
}

fn log(plan: &Plan, started: Instant, what: &str) {
    eprintln!(
        "[kpbench {} {:.0}s] {what}",
        plan.stack,
        started.elapsed().as_secs_f64()
    );
}

pub fn run(plan: &Plan) -> anyhow::Result<StackRun> {
    let started = Instant::now();
    measure::require_file(&plan.tools.netbench)?;
    log(plan, started, &format!("lab {} up", plan.lab));
    let mut lab = StackLab::up(plan.stack, &plan.lab, &plan.work)?;
    let mut servers = Servers::default();
    for pod in [&lab.pods.b, &lab.pods.c] {
        servers.start(&plan.tools, pod, NETBENCH_PORT, IPERF_PORT)?;
        servers.start(&plan.tools, pod, DIRECT_NETBENCH_PORT, DIRECT_IPERF_PORT)?;
    }
    for pod in [&lab.pods.a, &lab.pods.b, &lab.pods.c] {
        measure::start_name_server(pod, NAME_PORT)?;
    }
    let mut counts = Vec::new();
    for &n in &plan.services {
        log(plan, started, &format!("{n} services: programming"));
        let mut count = program_step(&mut lab, n)?;
        log(plan, started, &format!("{n} services: connect latency"));
        measure_connects(plan, &lab, &mut count)?;
        count.client_service_flows = lab.client_service_flows()?;
        check_balanced_where_said(plan.stack, count.client_service_flows)?;
        log(plan, started, &format!("{n} services: rr, crr, throughput"));
        for _ in 0..plan.repeat {
            measure_path(plan, &lab, Path::Direct, &mut count.direct)?;
            measure_path(plan, &lab, Path::Service, &mut count.service)?;
        }
        log(plan, started, &format!("{n} services: endpoint change"));
        count.follow = follow_change(&mut lab)?;
        counts.push(count);
    }
    drop(servers);
    let name = lab.lab.name.clone();
    lab.lab.down().context("taking the lab down")?;
    log(plan, started, "lab down");
    Ok(StackRun {
        stack: plan.stack.to_string(),
        lab: name,
        seconds: started.elapsed().as_secs_f64(),
        counts,
    })
}

/// Programs `n` services, with the kernel's memory counters around it and an idle interval of
/// the same length before it as the noise floor.
fn program_step(lab: &mut StackLab, n: u32) -> anyhow::Result<CountRun> {
    let before = memory::kernel_kb_now()?;
    let program = lab.program(n)?;
    let after = memory::kernel_kb_now()?;
    // The same length of doing nothing, right after: what the machine's others moved meanwhile.
    std::thread::sleep(
        Duration::from_secs_f64(program.total_ms / 1e3).min(Duration::from_secs(30)),
    );
    let idle_to = memory::kernel_kb_now()?;
    let mut mem = Memory {
        kernel_delta_kb: after - before,
        idle_delta_kb: idle_to - after,
        ..Memory::default()
    };
    if lab.stack.is_weft() {
        let node = lab.client_node()?;
        (mem.bpf_memlock_bytes, mem.bpf_maps) = memory::node_memlock(&node.pin_dir)?;
        mem.agent_rss_kb = weft_lab::runtime::agent_pid(&lab.lab.name, &node.name)
            .map(memory::rss_kb)
            .unwrap_or(0);
    }
    Ok(CountRun {
        services: n,
        program,
        memory: mem,
        ..CountRun::default()
    })
}

fn measure_connects(plan: &Plan, lab: &StackLab, count: &mut CountRun) -> anyhow::Result<()> {
    let (first, last) = (
        addr(objects::first_ip(), NAME_PORT),
        addr(objects::last_ip(), NAME_PORT),
    );
    (count.connect_first, count.connect_last) = measure::connect_latency(
        &lab.pods.client,
        first,
        last,
        plan.connects,
        plan.tools.pin_cpu,
    )?;
    Ok(())
}

/// Weft: the client's connects were balanced in tc (service conntrack entries) or, with socket
/// LB, at `connect()` (none) — else the stack's figures would be the other one's.
fn check_balanced_where_said(stack: Stack, service_flows: Option<usize>) -> anyhow::Result<()> {
    match (stack, service_flows) {
        (Stack::Weft, Some(0)) => {
            anyhow::bail!(
                "socket LB off, yet the client's connects left no service conntrack entry"
            )
        }
        (Stack::WeftSocketLb, Some(n)) if n > 0 => anyhow::bail!(
            "socket LB on, yet the client's connects left {n} service conntrack entries (balanced in tc)"
        ),
        _ => Ok(()),
    }
}

#[derive(Clone, Copy)]
enum Path {
    Direct,
    Service,
}

fn measure_path(plan: &Plan, lab: &StackLab, path: Path, out: &mut Paths) -> anyhow::Result<()> {
    let (netbench_to, iperf_to) = match path {
        Path::Direct => (
            addr(lab.pods.b.ip, DIRECT_NETBENCH_PORT),
            addr(lab.pods.b.ip, DIRECT_IPERF_PORT),
        ),
        Path::Service => (
            addr(objects::first_ip(), NETBENCH_PORT),
            addr(objects::first_ip(), IPERF_PORT),
        ),
    };
    let client = &lab.pods.client;
    let rr = measure::netbench(&plan.tools, client, "rr", netbench_to, plan.rr_seconds)?;
    out.rr_p50_us
        .push(rr["p50_us"].as_f64().context("rr p50_us")?);
    out.rr_p90_us
        .push(rr["p90_us"].as_f64().context("rr p90_us")?);
    let crr = measure::netbench(&plan.tools, client, "crr", netbench_to, plan.crr_seconds)?;
    out.crr_per_s.push(
        crr["connections_per_second"]
            .as_f64()
            .context("crr connections_per_second")?,
    );
    out.tput_gbps
        .push(measure::iperf(client, iperf_to, plan.tput_seconds)?);
    Ok(())
}

/// Replaces `c` by `a` in the last service and times until new connections reach `a`; then
/// puts `c` back the same way (untimed).
fn follow_change(lab: &mut StackLab) -> anyhow::Result<Follow> {
    let to = addr(objects::last_ip(), NAME_PORT);
    let (a, c) = (lab.pods.a.clone(), lab.pods.c.clone());
    let follow = change_followed(lab, to, &a, &c)?;
    change_followed(lab, to, &c, &a)?;
    Ok(follow)
}

/// Replaces endpoint `old` of the last service by `new`, with a probe connecting to `to` from
/// the client until `new` answers.
///
/// The clock runs from the start of the change itself to the probe's first connection
/// answered by `new`. The probe is a child process placed in the client (so socket LB applies
/// to it): it is started, and has reached the service once, before the change; it is let go
/// just before the change starts, so neither its start-up nor the bench's preparation of the
/// change is counted, and its stale answers are those from the change's start on.
fn change_followed(
    lab: &mut StackLab,
    to: SocketAddr,
    new: &Pod,
    old: &Pod,
) -> anyhow::Result<Follow> {
    let change = lab.prepare_change(new.ip)?;
    let mut probe = FollowProbe::start(&lab.pods.client, to, &new.name, &old.name, FOLLOW_TIMEOUT)?;
    probe.go()?;
    let started_ns = measure::monotonic_ns();
    let change_took = lab.make_change(change)?;
    let followed = probe.finish()?;
    lab.finish_change()?;
    Ok(Follow {
        ms: followed.answered_ns.saturating_sub(started_ns) as f64 / 1e6,
        change_ms: ms(change_took),
        stale: followed.stale,
        attempts: followed.attempts,
    })
}

fn addr(ip: std::net::Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}
