//! `weft lab ...`

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use weft_common::Reason;
use weft_lab::{
    LabSpec, Topology,
    datapath::{inspect, start},
    selftest,
    topology::format_mac,
};

#[derive(Args, Clone)]
pub struct LabName {
    /// The lab's name: the prefix of everything it creates, so several labs can coexist.
    #[arg(long, default_value = "weft")]
    pub name: String,
}

#[derive(Subcommand)]
pub enum LabCommand {
    /// Build the lab and attach the datapath (replaces what a crashed lab of that name left).
    Up {
        #[command(flatten)]
        lab: LabName,
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        #[arg(long, default_value_t = 2)]
        pods_per_node: u32,
    },
    /// Show the lab: namespaces, addresses, attached programs, counters.
    Status {
        #[command(flatten)]
        lab: LabName,
    },
    /// Run real traffic through the datapath and report what it did.
    Test {
        #[command(flatten)]
        lab: LabName,
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
}

pub fn run(command: LabCommand) -> anyhow::Result<ExitCode> {
    match command {
        LabCommand::Up {
            lab,
            nodes,
            pods_per_node,
        } => {
            let spec = LabSpec::with_size(lab.name, nodes, pods_per_node);
            let topology = start(&spec)?;
            println!(
                "lab {} is up: {} nodes, {} pods, datapath attached",
                topology.name,
                topology.nodes.len(),
                topology.pods().count()
            );
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Status { lab } => {
            print_status(&weft_lab::load(&lab.name)?)?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Test { lab } => self_test(&weft_lab::load(&lab.name)?),
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
    }
}

fn print_status(topology: &Topology) -> anyhow::Result<()> {
    println!("lab {}", topology.name);
    println!(
        "  router  netns {:<24} underlay 198.51.100.254/24, client side 203.0.113.1/24",
        topology.router_netns
    );
    println!(
        "  client  netns {:<24} {}",
        topology.client.netns, topology.client.ip
    );
    for node in &topology.nodes {
        println!(
            "  node {:<4} netns {:<24} eth0 {}  pods {}  pins {}",
            node.name,
            node.netns,
            node.underlay_ip,
            node.pod_cidr,
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
        let view = inspect(node).with_context(|| format!("inspecting {}", node.name))?;
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
    Ok(())
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
            let verdict = if key.reason == Reason::Forwarded {
                "forwarded".to_string()
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
