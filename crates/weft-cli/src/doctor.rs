//! `weft doctor`: finds what fights the datapath on a node (a lab's: every node's) —
//! kube-proxy's or kube-router's (svclb's) rules, masquerade of pod-to-pod traffic, programs not
//! Weft's on the external device (the one the agent attached to), an MTU that cannot carry the
//! encapsulation, an agent that is not ready or degraded (Services its maps have no room for) —
//! and says what to do. The seed's lesson as a command: the datapath must be the only thing
//! handling service traffic.

mod findings;

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
};

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;
use weft_api::AgentStatus;
use weft_common::{Hook, geneve::GENEVE_ENCAP_LEN, programs};
use weft_datapath::node::attached_programs;

use crate::{
    address::{self, Address, Node},
    bpf::json_array,
    nodes::Output,
    status,
};
use findings::{
    Finding, Severity, foreign_programs, iptables_findings, lb_map_findings, mtu_findings,
    nftables_findings, reconcile_findings,
};

/// The external device when the agent does not say which it attached to (the agent's default).
const DEFAULT_EXTERNAL_DEVICE: &str = "eth0";

#[derive(Args, Clone, Debug)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub address: Address,
    /// The agent's values.yaml (Cilium keys), for the cluster's pod CIDR [default: the lab's
    /// with --lab, else Weft's defaults].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Serialize)]
struct NodeReport {
    node: String,
    findings: Vec<Finding>,
}

pub fn run(args: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let pod_cidr = address::cluster_config(&args.address, args.config.as_deref())?
        .ipam
        .operator
        .cluster_pool_ipv4_pod_cidr_list
        .first()
        .map(ToString::to_string)
        .unwrap_or_default();
    let mut reports = Vec::new();
    for node in address::resolve(&args.address)? {
        reports.push(NodeReport {
            findings: examine(&node, &pod_cidr),
            node: node.name,
        });
    }
    match args.output {
        Output::Json => {
            let objects: Vec<String> = reports
                .iter()
                .map(|r| serde_json::to_string_pretty(r).context("serializing a report"))
                .collect::<anyhow::Result<_>>()?;
            println!("{}", json_array(&objects));
        }
        Output::Text => reports.iter().for_each(|r| print!("{}", text(r))),
    }
    let problems = reports
        .iter()
        .flat_map(|r| &r.findings)
        .any(|f| f.severity == Severity::Problem);
    Ok(if problems {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn text(report: &NodeReport) -> String {
    if report.findings.is_empty() {
        return format!(
            "Node {}: ok — Weft's datapath is the only thing handling its service traffic\n",
            report.node
        );
    }
    let mut out = format!("Node {}:\n", report.node);
    for f in &report.findings {
        let mark = match f.severity {
            Severity::Problem => "problem",
            Severity::Unknown => "not checked",
        };
        out.push_str(&format!("  {mark}: {}\n    fix: {}\n", f.what, f.fix));
    }
    out
}

/// Everything `weft doctor` checks on one node.
fn examine(node: &Node, pod_cidr: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    let status = agent_findings(node, &mut out);
    let device = status
        .as_ref()
        .and_then(external_device)
        .unwrap_or_else(|| DEFAULT_EXTERNAL_DEVICE.to_string());
    for (backend, tool) in [
        ("nft", "iptables-nft-save"),
        ("legacy", "iptables-legacy-save"),
    ] {
        match output_in(node, &[tool, "-t", "nat"]) {
            Ok(dump) => out.extend(iptables_findings(&dump, backend, pod_cidr)),
            Err(e) => out.push(unchecked(&format!("iptables ({backend})"), &e)),
        }
    }
    match output_in(node, &["nft", "list", "ruleset"]) {
        Ok(ruleset) => out.extend(nftables_findings(&ruleset)),
        Err(e) => out.push(unchecked("nftables", &e)),
    }
    out.extend(program_findings(node, &device));
    if let Some(status) = &status {
        match underlay_mtu(node, &device) {
            Ok(mtu) => out.extend(mtu_findings(mtu, status.mtu, GENEVE_ENCAP_LEN as u32)),
            Err(e) => out.push(unchecked("the MTU", &e)),
        }
    }
    out
}

/// The device the agent attached `from_netdev` to (`from-netdev@eth0` in its status).
fn external_device(status: &AgentStatus) -> Option<String> {
    status.attached.iter().find_map(|a| {
        let (hook, device) = a.split_once('@')?;
        (hook == Hook::FromNetdev.name()).then(|| device.to_string())
    })
}

/// The agent's health as findings: not ready, Services its maps have no room for, steps of
/// its last pass that failed; its status when it answered.
fn agent_findings(node: &Node, out: &mut Vec<Finding>) -> Option<AgentStatus> {
    let health = status::probe(&node.name, &node.socket);
    if !health.ready() {
        out.push(Finding {
            severity: Severity::Problem,
            what: format!(
                "the agent is not ready: {}",
                health.error.as_deref().unwrap_or("it says it is not ready")
            ),
            fix: "see `weft status` and the agent's log".to_string(),
        });
    }
    let status = health.status?;
    if let Some(lb) = &status.lb {
        out.extend(lb_map_findings(lb));
    }
    out.extend(reconcile_findings(&status.degraded));
    Some(status)
}

fn unchecked(what: &str, error: &anyhow::Error) -> Finding {
    Finding {
        severity: Severity::Unknown,
        what: format!("{what} could not be read: {error:#}"),
        fix: "install the tool (iptables, nftables) to have it checked".to_string(),
    }
}

/// Programs on the external device's hooks that are not Weft's.
fn program_findings(node: &Node, device: &str) -> Vec<Finding> {
    let hooks = [
        (Hook::FromNetdev, "tcx ingress", programs::FROM_NETDEV),
        (Hook::ToNetdev, "tcx egress", programs::TO_NETDEV),
        (Hook::Xdp, "XDP", programs::XDP_ENTRY),
    ];
    let mut out = Vec::new();
    for (hook, name, ours) in hooks {
        match node.run(|| attached_programs(device, hook)) {
            Ok(Ok(programs)) => out.extend(foreign_programs(device, name, &programs, ours)),
            Ok(Err(e)) | Err(e) => out.push(unchecked(&format!("{device} {name}"), &e)),
        }
    }
    out
}

/// The external device's MTU, from `ip -o link`.
fn underlay_mtu(node: &Node, device: &str) -> anyhow::Result<u32> {
    let line = output_in(node, &["ip", "-o", "link", "show", "dev", device])?;
    line.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("no MTU in `{}`", line.trim()))
}

/// The standard output of `argv` run in `node`'s namespace; an error when it cannot run or
/// fails.
fn output_in(node: &Node, argv: &[&str]) -> anyhow::Result<String> {
    let (program, args) = argv.split_first().context("no command")?;
    let out = node
        .run(|| Command::new(program).args(args).output())?
        .with_context(|| format!("running {}", argv.join(" ")))?;
    anyhow::ensure!(
        out.status.success(),
        "{} failed: {}",
        argv.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn status(attached: &[&str]) -> AgentStatus {
        AgentStatus {
            node: "n1".into(),
            pod_cidr: "10.42.0.0/24".into(),
            gateway: Ipv4Addr::new(10, 42, 0, 1),
            node_ip: Ipv4Addr::new(192, 0, 2, 1),
            mtu: 1442,
            endpoints: 0,
            attached: attached.iter().map(ToString::to_string).collect(),
            ready: true,
            north_south: String::new(),
            degraded: Vec::new(),
            lb: None,
        }
    }

    #[test]
    fn the_external_device_is_the_one_the_agent_attached_from_netdev_to() {
        let s = status(&["from-container@lxc1", "to-netdev@ens3", "from-netdev@ens3"]);
        assert_eq!(external_device(&s).as_deref(), Some("ens3"));
        assert_eq!(external_device(&status(&["from-container@lxc1"])), None);
    }

    #[test]
    fn a_command_runs_here_without_a_lab() {
        let node = Node {
            name: "h".into(),
            socket: "/nonexistent.sock".into(),
            pin_dir: "/nonexistent".into(),
            netns: None,
        };
        assert_eq!(output_in(&node, &["echo", "hi"]).expect("echo"), "hi\n");
        let err = output_in(&node, &["false"]).expect_err("fails");
        assert!(err.to_string().starts_with("false failed"), "{err}");
    }
}
