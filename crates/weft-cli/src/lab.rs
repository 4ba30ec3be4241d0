//! `weft lab ...`

mod apply;
mod seed;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::bail;
use clap::{Args, Subcommand};
use weft_lab::{
    LabSpec, Topology,
    datapath::{inspect, start},
    runtime::{self, Binaries},
    selftest,
    supervise::{self, AgentRun, AgentState, Phase, SupervisorState},
    topology::format_mac,
};

use crate::status;

#[derive(Args, Clone)]
pub struct LabName {
    /// The lab's name: the prefix of everything it creates, so several labs can coexist.
    #[arg(long, default_value = "weft")]
    pub name: String,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Scenario {
    /// The seed's Part 9: client IP preserved through DSR over Geneve, reply from the
    /// backend's node.
    Seed,
}

#[derive(Subcommand)]
pub enum LabCommand {
    /// Build the lab and start a Weft agent on every node (replaces what a crashed lab of that
    /// name left). With --pods-per-node N>0, hand-wire N pods per node and attach the datapath
    /// directly instead, without agents (what `weft lab test` exercises).
    Up {
        #[command(flatten)]
        lab: LabName,
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// Hand-wired pods per node; 0 (the default) lets Weft's agents run the lab.
        #[arg(long, default_value_t = 0)]
        pods_per_node: u32,
        /// A Cilium-style values.yaml handed to every agent.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Put Kubernetes objects into the lab and run the Pods among them, like `kubectl apply`.
    Apply {
        #[command(flatten)]
        lab: LabName,
        /// A manifest file, or a directory of them (*.yaml, *.yml); repeatable.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Remove Kubernetes objects from the lab and stop the Pods among them.
    Delete {
        #[command(flatten)]
        lab: LabName,
        /// A manifest file, or a directory of them (*.yaml, *.yml); repeatable.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Show the lab: namespaces, addresses, attached programs, counters.
    Status {
        #[command(flatten)]
        lab: LabName,
    },
    /// Run real traffic through the datapath and report what it did. `weft lab test` drives
    /// the hand-wired pods of a lab; `weft lab test seed` brings up a lab of its own with the
    /// seed's values and checks the seed's north-south flow (client IP kept through DSR, the
    /// reply straight from the backend's node), then takes it down.
    Test {
        #[command(flatten)]
        lab: LabName,
        scenario: Option<Scenario>,
        /// Leave the seed's lab up afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// Run a command in a node (`vps1`) or pod (`vps1/pod1`) namespace, in the node's cgroup.
    Exec {
        #[command(flatten)]
        lab: LabName,
        target: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Remove everything the lab made.
    Down {
        #[command(flatten)]
        lab: LabName,
    },
    /// The lab's supervisor, which `weft lab up` starts: starts the agents and restarts one
    /// that exits.
    #[command(hide = true)]
    Supervise {
        #[command(flatten)]
        lab: LabName,
        #[arg(long, value_name = "FILE")]
        agent: PathBuf,
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

pub fn run(command: LabCommand) -> anyhow::Result<ExitCode> {
    match command {
        LabCommand::Up {
            lab,
            nodes,
            pods_per_node,
            config,
        } => up(
            &LabSpec::with_size(lab.name, nodes, pods_per_node),
            config.as_deref(),
        ),
        LabCommand::Apply { lab, files } => apply::apply(&lab.name, &files),
        LabCommand::Delete { lab, files } => apply::delete(&lab.name, &files),
        LabCommand::Status { lab } => {
            print_status(&weft_lab::load(&lab.name)?)?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Test {
            lab,
            scenario: Some(Scenario::Seed),
            keep,
        } => seed::run(&lab.name, keep),
        LabCommand::Test { lab, .. } => {
            let topology = weft_lab::load(&lab.name)?;
            require_hand_wired(&topology)?;
            self_test(&topology)
        }
        LabCommand::Exec {
            lab,
            target,
            command,
        } => {
            let status = weft_lab::exec(&weft_lab::load(&lab.name)?, &target, &command)?;
            Ok(ExitCode::from(
                status.code().unwrap_or(1).clamp(0, 255) as u8
            ))
        }
        LabCommand::Down { lab } => {
            println!("lab {}: {}", lab.name, weft_lab::down(&lab.name)?);
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Supervise { lab, agent, config } => {
            supervise::run(&lab.name, &agent, config.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn up(spec: &LabSpec, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    if spec.pods_per_node > 0 {
        if config.is_some() {
            bail!("--config is for labs run by Weft's agents (--pods-per-node 0)");
        }
        let topology = start(spec)?;
        println!(
            "lab {} is up: {} nodes, {} hand-wired pods, datapath attached",
            topology.name,
            topology.nodes.len(),
            topology.pods().count()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(config) = config
        && !config.is_file()
    {
        bail!("--config {}: no such file", config.display());
    }
    let bins = Binaries::locate()?;
    let topology = runtime::up_cluster(spec, &bins, config)?;
    println!(
        "lab {} is up: {} nodes, each run by a Weft agent",
        topology.name,
        topology.nodes.len()
    );
    let mut code = ExitCode::SUCCESS;
    for node in &topology.nodes {
        let health = status::probe(
            &node.name,
            &runtime::agent_socket(&topology.name, &node.name),
        );
        print!("{}", status::health_text(&health));
        if !health.healthy() {
            code = ExitCode::FAILURE;
        }
    }
    Ok(code)
}

/// `weft lab test` drives the hand-wired pods of `weft lab up --pods-per-node N`.
fn require_hand_wired(topology: &Topology) -> anyhow::Result<()> {
    if topology.pods().next().is_none() {
        bail!(
            "lab {} has no hand-wired pods: `weft lab test` exercises hand-wired pods: bring the \
             lab up with --pods-per-node 2",
            topology.name
        );
    }
    Ok(())
}

fn print_status(topology: &Topology) -> anyhow::Result<()> {
    println!("lab {}", topology.name);
    let supervision = supervise::read_state(&topology.name)?;
    if let Some(state) = &supervision {
        println!("  {}", supervisor_line(&topology.name, state));
    }
    println!(
        "  router  netns {:<24} underlay 198.51.100.254/24, client side 203.0.113.1/24",
        topology.router_netns
    );
    println!(
        "  client  netns {:<24} {}",
        topology.client.netns, topology.client.ip
    );
    for node in &topology.nodes {
        // The planned pod CIDR is the hand-wired pods'; an agent claims its own (shown below).
        let pods = if node.pods.is_empty() {
            String::new()
        } else {
            format!("  pods {}", node.pod_cidr)
        };
        println!(
            "  node {:<4} netns {:<24} eth0 {}{pods}  pins {}",
            node.name,
            node.netns,
            node.underlay_ip,
            node.pin_dir.display()
        );
        for pod in &node.pods {
            println!(
                "    pod {:<5} netns {:<28} {:<12} mac {}  host veth {}",
                pod.name,
                pod.netns,
                pod.ip,
                format_mac(&pod.mac),
                pod.host_ifname
            );
        }
        let socket = runtime::agent_socket(&topology.name, &node.name);
        // A lab run by agents: show each agent's view, also when it died.
        if socket.exists() || runtime::agent_pid(&topology.name, &node.name).is_some() {
            let health = status::probe(&node.name, &socket);
            for line in status::health_text(&health).lines().skip(1) {
                println!("  {line}");
            }
        }
        if let Some(agent) = supervision.as_ref().and_then(|s| s.agent(&node.name)) {
            println!("    {}", agent_line(agent));
        }
        let view = match inspect(node) {
            Ok(view) => view,
            Err(e) => {
                println!("    datapath: cannot inspect: {e:#}");
                continue;
            }
        };
        for a in &view.attachments {
            println!(
                "    attached {:<14} on {:<10} -> {}",
                a.hook,
                a.ifname,
                if a.programs.is_empty() {
                    "NOTHING (link lost)".to_string()
                } else {
                    a.programs.join(", ")
                }
            );
        }
        for (key, value) in &view.metrics {
            println!(
                "    counter  {:<14} {:<28} {:>8} packets {:>10} bytes",
                key.hook.name(),
                key.reason.name(),
                value.packets,
                value.bytes
            );
        }
    }
    print_weft_pods(&runtime::running_pods(&topology.name)?);
    Ok(())
}

/// `supervisor pid 812, restarting agents that exit (log ...)`, or why it is not.
fn supervisor_line(lab: &str, state: &SupervisorState) -> String {
    let log = supervise::log_path(lab);
    let running = supervise::running_pid(lab).is_some();
    let what = match (&state.phase, running) {
        (Phase::Supervising, true) => "restarting agents that exit".to_string(),
        (Phase::Starting { node }, true) => format!("starting the agent of {node}"),
        (Phase::Failed { error }, _) => format!("failed: {}", error.lines().next().unwrap_or("")),
        (Phase::Stopped, _) => "stopped: agents that exit stay down".to_string(),
        (_, false) => "NOT RUNNING: agents that exit stay down".to_string(),
    };
    format!(
        "supervisor pid {}, {what} (log {})",
        state.pid,
        log.display()
    )
}

/// `agent pid 905, running, restarts 1 (last exit: signal: 9 (SIGKILL))`.
fn agent_line(agent: &AgentState) -> String {
    let run = match agent.run {
        AgentRun::NotStarted => "not started",
        AgentRun::Running => "running",
        AgentRun::Restarting => "exited, restarting",
        AgentRun::Held => "stopped on request",
    };
    let pid = agent
        .pid
        .map_or_else(|| "-".to_string(), |pid| pid.to_string());
    let last = agent
        .last_exit
        .as_deref()
        .map(|exit| format!(" (last exit: {exit})"))
        .unwrap_or_default();
    format!("agent pid {pid}, {run}, restarts {}{last}", agent.restarts)
}

fn print_weft_pods(pods: &[runtime::PodRecord]) {
    if pods.is_empty() {
        return;
    }
    println!("  pods run by Weft:");
    for line in crate::nodes::table(
        &["NAMESPACE/NAME", "NODE", "NETNS", "ADDRESS", "PIDS"],
        &pods
            .iter()
            .map(|p| {
                vec![
                    format!("{}/{}", p.namespace, p.name),
                    p.node.clone(),
                    p.netns.clone(),
                    p.address.clone().unwrap_or_else(|| "-".into()),
                    p.pids
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                ]
            })
            .collect::<Vec<_>>(),
    )
    .lines()
    {
        println!("    {line}");
    }
}

fn self_test(topology: &Topology) -> anyhow::Result<ExitCode> {
    let report = selftest::run(topology)?;
    println!("self-test of lab {}:", topology.name);
    for check in &report.checks {
        match &check.outcome {
            Ok(()) => println!("  PASS  {}", check.name),
            Err(e) => println!("  FAIL  {}: {e}", check.name),
        }
    }
    println!("what the datapath counted during the test:");
    for (node, delta) in &report.deltas {
        for (key, value) in delta {
            let verdict = if !key.reason.is_drop() {
                key.reason.name().to_string()
            } else {
                format!("DROPPED ({})", key.reason.name())
            };
            println!(
                "  {node:<5} {:<15} {verdict:<34} {:>5} packets {:>7} bytes",
                key.hook.name(),
                value.packets,
                value.bytes
            );
        }
    }
    println!(
        "events ({} in all; drops and the first traces):",
        report.events.len()
    );
    let drops = report.events.iter().filter(|e| e.kind == "drop");
    let traces = report.events.iter().filter(|e| e.kind != "drop").take(12);
    for e in traces.chain(drops) {
        println!("  {}", e.line());
    }
    let passed = report.checks.iter().filter(|c| c.outcome.is_ok()).count();
    println!(
        "self-test: {passed} passed, {} failed",
        report.checks.len() - passed
    );
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
