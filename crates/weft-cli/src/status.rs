//! `weft status`: the health of a node's agent (a lab's: every node's), through the agent API.

use std::{path::Path, process::ExitCode};

use serde::Serialize;
use weft_api::{AgentStatus, LbStatus, Request, Response};

use crate::{
    address::{self, no_agent},
    nodes::{NodeArgs, Output},
};

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
    /// Reachable, ready and answering without error: the agent runs the node.
    pub fn ready(&self) -> bool {
        self.reachable && self.ready && self.error.is_none()
    }

    /// Ready, but not doing all it is asked to (see [`AgentStatus::degraded`]).
    pub fn degraded(&self) -> bool {
        self.status.as_ref().is_some_and(AgentStatus::is_degraded)
    }

    pub fn healthy(&self) -> bool {
        self.ready() && !self.degraded()
    }
}

pub fn run(args: &NodeArgs) -> anyhow::Result<ExitCode> {
    let health: Vec<NodeHealth> = address::resolve(&args.address)?
        .iter()
        .map(|n| probe(&n.name, &n.socket))
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
    let reply = weft_api::call(socket, &Request::Status);
    let mut health = health_of(node, socket, reply);
    // The client's error says it could not connect; a socket that is not there means more
    // likely no agent, or the wrong path.
    if !health.reachable && !socket.exists() {
        health.error = Some(no_agent(socket));
    }
    health
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

/// Where continuation lines of a value start.
const INDENT: &str = "              ";

/// `cilium status`-like lines of one node.
pub fn health_text(h: &NodeHealth) -> String {
    let reasons: Vec<&str> = (h.status.iter())
        .flat_map(|s| &s.degraded)
        .map(|d| d.reason.as_str())
        .collect();
    let agent = match (h.reachable, h.ready, &h.error) {
        (true, true, None) if !reasons.is_empty() => {
            format!("Degraded (ready): {}", reasons.join(&format!("\n{INDENT}")))
        }
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
    let mut lines = vec![
        ("Node name:", s.node.clone()),
        ("Pod CIDR:", s.pod_cidr.clone()),
        ("Gateway:", s.gateway.to_string()),
        ("Node IP:", s.node_ip.to_string()),
        ("MTU:", s.mtu.to_string()),
        ("Endpoints:", s.endpoints.to_string()),
        ("Datapath:", format!("programs attached: {attached}")),
        ("Services:", s.north_south.clone()),
    ];
    if let Some(lb) = &s.lb {
        lines.push(("Programmed:", programmed_text(lb)));
        lines.push(("LB maps:", lb_maps_text(lb)));
    }
    lines
        .iter()
        .map(|(k, v)| format!("  {k:<12}{v}\n"))
        .collect()
}

/// The Services programmed and those refused.
fn programmed_text(lb: &LbStatus) -> String {
    let mut out = format!("{} Services ({} frontends)", lb.services, lb.frontends);
    if lb.refused == 0 {
        return out;
    }
    let named: Vec<String> = (lb.refused_first.iter())
        .map(|r| format!("{} ({})", r.service, r.map))
        .collect();
    out.push_str(&format!("; {} refused: {}", lb.refused, named.join(", ")));
    let more = lb.refused - lb.refused_first.len().min(lb.refused);
    if more > 0 {
        out.push_str(&format!(" and {more} more"));
    }
    out
}

/// One line per map: use, room, what the Services need when it is more, the configured size
/// when the pinned map has another.
fn lb_maps_text(lb: &LbStatus) -> String {
    let lines: Vec<String> = lb
        .maps
        .iter()
        .map(|m| {
            let mut line = format!("{} {}/{} {}", m.map, m.used, m.room, m.unit);
            if m.wanted > m.used {
                line.push_str(&format!(", the Services need {}", m.wanted));
            }
            if m.differs_from_config() {
                line.push_str(&format!(
                    " (bpf.lbMapMax asks {} entries; the pinned map has {})",
                    m.configured, m.max_entries
                ));
            }
            line
        })
        .collect();
    lines.join(&format!("\n{INDENT}"))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use weft_api::{Degraded, DegradedCause, LbMapStatus, RefusedService};

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
            degraded: Vec::new(),
            lb: None,
        }
    }

    fn map(name: &str, used: u64, room: u64, wanted: u64, refused: usize) -> LbMapStatus {
        LbMapStatus {
            map: name.into(),
            unit: "entries".into(),
            used,
            room,
            max_entries: room as u32,
            configured: 300,
            wanted,
            refused,
        }
    }

    fn refusing() -> AgentStatus {
        let reason = "120 of 400 Services are not programmed (none of their entries is \
                      written): weft_lb4_services has room for 300 entries, the Services need \
                      800; bpf.lbMapMax 800 would hold them all";
        AgentStatus {
            degraded: vec![Degraded {
                cause: DegradedCause::LbMapsFull,
                reason: reason.into(),
            }],
            lb: Some(LbStatus {
                services: 280,
                frontends: 280,
                refused: 120,
                refused_first: vec![RefusedService {
                    service: "default/s280".into(),
                    map: "weft_lb4_services".into(),
                }],
                lb_map_max: 300,
                lb_map_max_needed: Some(800),
                maps: vec![
                    map("weft_lb4_services", 299, 300, 800, 120),
                    map("weft_lb4_backends", 280, 300, 280, 0),
                ],
            }),
            ..status(true)
        }
    }

    #[test]
    fn refused_services_make_the_agent_degraded_with_the_reason() {
        let h = health_of("vps1", Path::new("/s"), Ok(Response::Status(refusing())));
        assert!(h.ready() && h.degraded() && !h.healthy());
        let text = health_text(&h);
        assert!(
            text.contains("  Agent:      Degraded (ready): 120 of 400 Services are not programmed"),
            "{text}"
        );
        assert!(
            text.contains(
                "  Programmed: 280 Services (280 frontends); 120 refused: default/s280 \
                 (weft_lb4_services) and 119 more\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "  LB maps:    weft_lb4_services 299/300 entries, the Services need 800\n\
                 \x20             weft_lb4_backends 280/300 entries\n"
            ),
            "{text}"
        );
        let json = serde_json::to_value(&h).expect("json");
        assert_eq!(json["status"]["degraded"][0]["cause"], "lb-maps-full");
        assert_eq!(json["status"]["lb"]["refused"], 120);
    }

    #[test]
    fn a_pinned_map_of_another_size_than_configured_is_shown() {
        let mut s = refusing();
        if let Some(lb) = &mut s.lb {
            lb.maps[1].configured = 1000;
        }
        let text = status_lines(&s);
        assert!(
            text.contains(
                "weft_lb4_backends 280/300 entries (bpf.lbMapMax asks 1000 entries; the pinned \
                 map has 300)"
            ),
            "{text}"
        );
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
    fn a_socket_nobody_answers_on_is_unreachable_with_the_clients_reason() {
        let dir = std::env::temp_dir().join(format!("weft-cli-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let sock = dir.join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind"));
        let h = probe("vps1", &sock);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!h.reachable, "{h:?}");
        let text = health_text(&h);
        assert!(text.contains("UNREACHABLE: cannot reach"), "{text}");
    }

    #[test]
    fn an_absent_agent_is_unreachable() {
        let sock = Path::new("/nonexistent/weft-cli-test.sock");
        let h = probe("vps2", sock);
        assert!(!h.reachable && !h.healthy());
        let text = health_text(&h);
        assert!(
            text.contains(
                "Agent:      UNREACHABLE: no agent at /nonexistent/weft-cli-test.sock: is \
                 weft-agent running? (--socket)"
            ),
            "{text}"
        );
        let json = serde_json::to_value(&h).expect("json");
        assert_eq!(json["reachable"], false);
        assert!(json.get("status").is_none());
    }
}
