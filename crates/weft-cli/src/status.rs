//! `weft status`: the health of every node's agent, through the agent API.

use std::{path::Path, process::ExitCode};

use serde::Serialize;
use weft_api::{AgentStatus, Request, Response};
use weft_lab::runtime::agent_socket;

use crate::nodes::{NodeArgs, Output, select_nodes};

/// What `weft status` found out about one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeHealth {
    pub node: String,
    pub socket: String,
    pub reachable: bool,
    pub ready: bool,
    /// Why the agent is not healthy, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<AgentStatus>,
}

impl NodeHealth {
    pub fn healthy(&self) -> bool {
        self.reachable && self.ready && self.error.is_none()
    }
}

pub fn run(args: &NodeArgs) -> anyhow::Result<ExitCode> {
    let topology = weft_lab::load(&args.lab)?;
    let nodes = select_nodes(&topology, args.node.as_deref())?;
    let health: Vec<NodeHealth> = nodes
        .iter()
        .map(|n| probe(&n.name, &agent_socket(&topology.name, &n.name)))
        .collect();
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&health)?),
        Output::Text => {
            for h in &health {
                print!("{}", health_text(h));
            }
        }
    }
    Ok(if health.iter().all(NodeHealth::healthy) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Asks the agent of `node` at `socket` for its status.
pub fn probe(node: &str, socket: &Path) -> NodeHealth {
    health_of(node, socket, weft_api::call(socket, &Request::Status))
}

fn health_of(
    node: &str,
    socket: &Path,
    reply: Result<Response, weft_api::ClientError>,
) -> NodeHealth {
    let mut health = NodeHealth {
        node: node.to_string(),
        socket: socket.display().to_string(),
        reachable: false,
        ready: false,
        error: None,
        status: None,
    };
    match reply {
        Err(e) => {
            health.reachable = !matches!(e, weft_api::ClientError::Unreachable { .. });
            health.error = Some(e.to_string());
        }
        Ok(Response::Status(status)) => {
            health.reachable = true;
            health.ready = status.ready;
            if !status.ready {
                health.error = Some("the agent has not programmed the node yet".into());
            }
            health.status = Some(status);
        }
        Ok(Response::Error(f)) => {
            health.reachable = true;
            health.error = Some(format!("the agent refused Status: {} ({})", f.msg, f.code));
        }
        Ok(other) => {
            health.reachable = true;
            health.error = Some(format!("the agent answered Status with {other:?}"));
        }
    }
    health
}

/// `cilium status`-like lines of one node.
pub fn health_text(h: &NodeHealth) -> String {
    let agent = match (h.reachable, h.ready, &h.error) {
        (true, true, None) => "Ok (ready)".to_string(),
        (false, _, Some(e)) => format!("UNREACHABLE: {e}"),
        (false, _, None) => "UNREACHABLE".to_string(),
        (true, _, Some(e)) => format!("NOT READY: {e}"),
        (true, false, None) => "NOT READY".to_string(),
    };
    let mut out = format!("Node {}:\n", h.node);
    out.push_str(&format!("  {:<12}{agent}\n", "Agent:"));
    if let Some(s) = &h.status {
        out.push_str(&status_lines(s));
    }
    out
}

/// The node summary of an agent's status, two-space indented.
pub fn status_lines(s: &AgentStatus) -> String {
    let attached = if s.attached.is_empty() {
        "none".to_string()
    } else {
        format!("{} ({})", s.attached.len(), s.attached.join(", "))
    };
    [
        ("Node name:", s.node.clone()),
        ("Pod CIDR:", s.pod_cidr.clone()),
        ("Gateway:", s.gateway.to_string()),
        ("Node IP:", s.node_ip.to_string()),
        ("MTU:", s.mtu.to_string()),
        ("Endpoints:", s.endpoints.to_string()),
        ("Datapath:", format!("programs attached: {attached}")),
        ("Services:", s.north_south.clone()),
    ]
    .iter()
    .map(|(k, v)| format!("  {k:<12}{v}\n"))
    .collect()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn status(ready: bool) -> AgentStatus {
        AgentStatus {
            node: "vps1".into(),
            pod_cidr: "10.42.1.0/24".into(),
            gateway: Ipv4Addr::new(10, 42, 1, 1),
            node_ip: Ipv4Addr::new(198, 51, 100, 1),
            mtu: 1450,
            endpoints: 2,
            attached: vec!["from-netdev@eth0".into(), "from-container@lxc1".into()],
            ready,
            north_south: "SNAT: replies return through the node that received the request".into(),
        }
    }

    #[test]
    fn a_ready_agent_is_healthy_and_shows_its_node() {
        let h = health_of("vps1", Path::new("/s"), Ok(Response::Status(status(true))));
        assert!(h.healthy());
        let text = health_text(&h);
        assert!(
            text.contains("\n  Services:   SNAT: replies return"),
            "{text}"
        );
        assert!(
            text.starts_with("Node vps1:\n  Agent:      Ok (ready)\n"),
            "{text}"
        );
        assert!(text.contains("  Pod CIDR:   10.42.1.0/24\n"), "{text}");
        assert!(text.contains("  Node IP:    198.51.100.1\n"), "{text}");
        assert!(text.contains("  MTU:        1450\n"), "{text}");
        assert!(text.contains("  Endpoints:  2\n"), "{text}");
        assert!(
            text.contains("programs attached: 2 (from-netdev@eth0, from-container@lxc1)"),
            "{text}"
        );
    }

    #[test]
    fn an_agent_that_is_not_ready_is_unhealthy() {
        let h = health_of("vps1", Path::new("/s"), Ok(Response::Status(status(false))));
        assert!(h.reachable && !h.ready && !h.healthy());
        assert!(health_text(&h).contains("NOT READY"));
    }

    #[test]
    fn an_absent_agent_is_unreachable() {
        let sock = Path::new("/nonexistent/weft-cli-test.sock");
        let h = probe("vps2", sock);
        assert!(!h.reachable && !h.healthy());
        let text = health_text(&h);
        assert!(
            text.contains("Agent:      UNREACHABLE: cannot reach"),
            "{text}"
        );
        let json = serde_json::to_value(&h).expect("json");
        assert_eq!(json["reachable"], false);
        assert!(json.get("status").is_none());
    }
}
