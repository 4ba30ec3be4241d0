//! `weft doctor`: finds what fights the datapath on a lab's nodes — kube-proxy's or kube-router's
//! (svclb's) rules, masquerade of pod-to-pod traffic, programs not Weft's on the external
//! device, an MTU that cannot carry the encapsulation, an agent that is not ready or degraded
//! (Services its maps have no room for) — and says what to do. The seed's lesson as a command: the datapath must be the only thing handling
//! service traffic.

mod findings;

use std::process::ExitCode;

use anyhow::Context as _;
use serde::Serialize;
use weft_common::{Hook, geneve::GENEVE_ENCAP_LEN, programs};
use weft_datapath::node::attached_programs;
use weft_lab::{NodeSpec, Topology, command_in, netns::run_in, runtime};

use crate::{
    bpf::json_array,
    nodes::{NodeArgs, Output, select_nodes},
    status,
};
use findings::{
    Finding, Severity, foreign_programs, iptables_findings, lb_map_findings, mtu_findings,
    nftables_findings, reconcile_findings,
};

/// The external device of a lab node.
const EXTERNAL_DEVICE: &str = "eth0";

#[derive(Debug, Serialize)]
struct NodeReport {
    node: String,
    findings: Vec<Finding>,
}

pub fn run(args: &NodeArgs) -> anyhow::Result<ExitCode> {
    let topology = weft_lab::load(&args.lab)?;
    let pod_cidr = runtime::cluster_config(&topology.name)?
        .ipam
        .operator
        .cluster_pool_ipv4_pod_cidr_list
        .first()
        .map(ToString::to_string)
        .unwrap_or_default();
    let mut reports = Vec::new();
    for node in select_nodes(&topology, args.node.as_deref())? {
        reports.push(NodeReport {
            node: node.name.clone(),
            findings: examine(&topology, node, &pod_cidr),
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
fn examine(topology: &Topology, node: &NodeSpec, pod_cidr: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    let pod_mtu = agent_findings(topology, node, &mut out);
    for (backend, tool) in [
        ("nft", "iptables-nft-save"),
        ("legacy", "iptables-legacy-save"),
    ] {
        match output_in(topology, node, &[tool, "-t", "nat"]) {
            Ok(dump) => out.extend(iptables_findings(&dump, backend, pod_cidr)),
            Err(e) => out.push(unchecked(&format!("iptables ({backend})"), &e)),
        }
    }
    match output_in(topology, node, &["nft", "list", "ruleset"]) {
        Ok(ruleset) => out.extend(nftables_findings(&ruleset)),
        Err(e) => out.push(unchecked("nftables", &e)),
    }
    out.extend(program_findings(node));
    if let Some(pod_mtu) = pod_mtu {
        match underlay_mtu(topology, node) {
            Ok(mtu) => out.extend(mtu_findings(mtu, pod_mtu, GENEVE_ENCAP_LEN as u32)),
            Err(e) => out.push(unchecked("the MTU", &e)),
        }
    }
    out
}

/// The agent's health as findings: not ready, Services its maps have no room for, steps of
/// its last pass that failed; the pods' MTU when the agent answered.
fn agent_findings(topology: &Topology, node: &NodeSpec, out: &mut Vec<Finding>) -> Option<u32> {
    let health = status::probe(
        &node.name,
        &runtime::agent_socket(&topology.name, &node.name),
    );
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
    Some(status.mtu)
}

fn unchecked(what: &str, error: &anyhow::Error) -> Finding {
    Finding {
        severity: Severity::Unknown,
        what: format!("{what} could not be read: {error:#}"),
        fix: "install the tool (iptables, nftables) to have it checked".to_string(),
    }
}

/// Programs on the external device's hooks that are not Weft's.
fn program_findings(node: &NodeSpec) -> Vec<Finding> {
    let hooks = [
        (Hook::FromNetdev, "tcx ingress", programs::FROM_NETDEV),
        (Hook::ToNetdev, "tcx egress", programs::TO_NETDEV),
        (Hook::Xdp, "XDP", programs::XDP_ENTRY),
    ];
    let mut out = Vec::new();
    for (hook, name, ours) in hooks {
        match run_in(&node.netns, || attached_programs(EXTERNAL_DEVICE, hook)) {
            Ok(Ok(programs)) => {
                out.extend(foreign_programs(EXTERNAL_DEVICE, name, &programs, ours));
            }
            Ok(Err(e)) | Err(e) => out.push(unchecked(&format!("{EXTERNAL_DEVICE} {name}"), &e)),
        }
    }
    out
}

/// The external device's MTU, from `ip -o link`.
fn underlay_mtu(topology: &Topology, node: &NodeSpec) -> anyhow::Result<u32> {
    let line = output_in(
        topology,
        node,
        &["ip", "-o", "link", "show", "dev", EXTERNAL_DEVICE],
    )?;
    line.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("no MTU in `{}`", line.trim()))
}

/// The standard output of `argv` run in `node`'s namespace; an error when it cannot run or
/// fails.
fn output_in(topology: &Topology, node: &NodeSpec, argv: &[&str]) -> anyhow::Result<String> {
    let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
    let out = command_in(topology, &node.name, &argv)?
        .output()
        .with_context(|| format!("running {}", argv.join(" ")))?;
    anyhow::ensure!(
        out.status.success(),
        "{} failed: {}",
        argv.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
