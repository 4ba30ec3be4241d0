//! The seed's production flow (seed 000, Part 9) as a scenario: kube-proxy replacement with
//! Maglev, DSR, Geneve and native XDP acceleration; a backend on vps1 that answers with the
//! address it sees the client at, exposed with `externalIPs` = the three node addresses; the
//! client fetches from vps2's address. The backend must see the client's own address, and the
//! reply must leave vps1 for the router directly (a capture on the router's ports proves it),
//! at first, after 10,000 requests and after a conntrack garbage-collection pass: the seed's
//! "works at first, loses the client IP after half an hour" must not exist here.

use std::{
    io::Read as _,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use weft_api::{Request, Response};

use crate::{
    apply::{ApplyReport, apply},
    capture::{Capture, tcp_segments},
    netns::run_in,
    runtime::{self, Binaries},
    topology::{NodeSpec, Topology},
};

/// The seed's values.yaml, in Cilium's keys.
pub const SEED_VALUES: &str = "\
kubeProxyReplacement: true
routingMode: tunnel
tunnelProtocol: geneve
loadBalancer:
  mode: dsr
  dsrDispatch: opt
  algorithm: maglev
  acceleration: native
bpf:
  masquerade: true
";

/// The service port the client fetches (Traefik's 443 in the seed) and the backend's port.
pub const SERVICE_PORT: u16 = 443;
pub const BACKEND_PORT: u16 = 8443;
/// Requests between the first check and the second.
pub const REQUESTS: usize = 10_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// One check: the address the backend saw, and the reply segments seen on the router's port
/// of the backend's node and of the entry node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub when: String,
    pub seen: SocketAddr,
    pub replies_from_backend_node: usize,
    pub replies_from_entry_node: usize,
}

impl Check {
    pub fn passed(&self, client: Ipv4Addr) -> bool {
        self.seen.ip() == client
            && self.replies_from_backend_node > 0
            && self.replies_from_entry_node == 0
    }
}

/// The seed's objects: the backend pod on `backend` running `whoami`, and its Service with
/// the nodes' addresses as external IPs.
pub fn manifests(netbench: &Path, backend: &NodeSpec, nodes: &[&NodeSpec]) -> String {
    let external_ips: Vec<String> = nodes.iter().map(|n| n.underlay_ip.to_string()).collect();
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: traefik
  labels: {{app: traefik}}
spec:
  nodeName: {node}
  containers:
    - name: traefik
      command: [{netbench}, whoami, --listen, '0.0.0.0:{BACKEND_PORT}']
---
apiVersion: v1
kind: Service
metadata:
  name: traefik
spec:
  selector: {{app: traefik}}
  externalIPs: [{ips}]
  ports:
    - {{name: websecure, port: {SERVICE_PORT}, targetPort: {BACKEND_PORT}, protocol: TCP}}
",
        node = backend.name,
        netbench = netbench.display(),
        ips = external_ips.join(", "),
    )
}

/// Applies the seed's objects to `lab` (up, run by Weft's agents with [`SEED_VALUES`]).
pub fn apply_objects(
    lab: &Topology,
    bins: &Binaries,
    netbench: &Path,
    scratch: &Path,
) -> anyhow::Result<ApplyReport> {
    let (backend, nodes) = seed_nodes(lab)?;
    let path = scratch.join("seed.yaml");
    std::fs::write(&path, manifests(netbench, backend, &nodes))
        .with_context(|| format!("writing {}", path.display()))?;
    apply(lab, bins, &[path])
}

/// vps1 (the backend's node) and every node.
fn seed_nodes(lab: &Topology) -> anyhow::Result<(&NodeSpec, Vec<&NodeSpec>)> {
    let backend = lab.node("vps1").context("the seed needs a node vps1")?;
    ensure!(lab.node("vps2").is_some(), "the seed needs a node vps2");
    Ok((backend, lab.nodes.iter().collect()))
}

/// One request from the client to `entry`: the address the backend answered with.
pub fn fetch(lab: &Topology, entry: SocketAddrV4) -> anyhow::Result<SocketAddr> {
    let mut stream = run_in(&lab.client.netns, || {
        TcpStream::connect_timeout(&entry.into(), CONNECT_TIMEOUT)
    })?
    .with_context(|| format!("connecting from the client to {entry}"))?;
    stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .with_context(|| format!("reading the answer of {entry}"))?;
    text.trim()
        .parse()
        .with_context(|| format!("{entry} answered {text:?}, not an address"))
}

/// Fetches until the service answers (the agents pick the objects up within a poll).
pub fn wait_for_service(lab: &Topology, entry: SocketAddrV4) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match fetch(lab, entry) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!(
                    "the service did not answer within {READY_TIMEOUT:?}"
                )));
            }
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// One fetch through `entry` with the router's ports of `backend` and of the entry node
/// captured around it.
pub fn check(
    lab: &Topology,
    when: &str,
    entry: SocketAddrV4,
    backend: &NodeSpec,
    entry_node: &NodeSpec,
) -> anyhow::Result<Check> {
    let at_backend = Capture::start(&lab.router_netns, &backend.name)?;
    let at_entry = Capture::start(&lab.router_netns, &entry_node.name)?;
    let seen = fetch(lab, entry)?;
    // The last segments (FIN, ACK) may still be on their way.
    thread::sleep(Duration::from_millis(100));
    let client = lab.client.ip;
    Ok(Check {
        when: when.to_string(),
        seen,
        replies_from_backend_node: tcp_segments(&at_backend.drain(), entry, client),
        replies_from_entry_node: tcp_segments(&at_entry.drain(), entry, client),
    })
}

/// Asks every node's agent for a conntrack garbage-collection pass.
fn collect_garbage(lab: &Topology) -> anyhow::Result<()> {
    for node in &lab.nodes {
        let socket = runtime::agent_socket(&lab.name, &node.name);
        match weft_api::call(&socket, &Request::ConntrackGc)
            .with_context(|| format!("asking the agent of {}", node.name))?
        {
            Response::ConntrackCollected(_) => {}
            other => bail!("the agent of {} answered {other:?}", node.name),
        }
    }
    Ok(())
}

/// Runs the scenario on `lab`, whose objects [`apply_objects`] applied: the three checks.
pub fn run(lab: &Topology) -> anyhow::Result<Vec<Check>> {
    let (backend, _) = seed_nodes(lab)?;
    let entry_node = lab.node("vps2").context("the seed needs a node vps2")?;
    let entry = SocketAddrV4::new(entry_node.underlay_ip, SERVICE_PORT);
    wait_for_service(lab, entry)?;
    let mut checks = vec![check(lab, "first request", entry, backend, entry_node)?];
    for i in 0..REQUESTS {
        let seen = fetch(lab, entry).with_context(|| format!("request {i}"))?;
        ensure!(
            seen.ip() == lab.client.ip,
            "request {i}: the backend saw {seen}, not the client {}",
            lab.client.ip
        );
    }
    checks.push(check(
        lab,
        "after 10,000 requests",
        entry,
        backend,
        entry_node,
    )?);
    collect_garbage(lab)?;
    checks.push(check(
        lab,
        "after a conntrack GC pass",
        entry,
        backend,
        entry_node,
    )?);
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LabSpec, plan};

    #[test]
    fn the_seed_objects_parse_and_its_values_are_a_valid_config() {
        let lab = plan(&LabSpec::with_size("seedt", 3, 0)).unwrap();
        let (backend, nodes) = seed_nodes(&lab).unwrap();
        let text = manifests(Path::new("/bin/weft-netbench"), backend, &nodes);
        let objects = weft_model::k8s::parse_manifest("seed.yaml", &text).unwrap();
        assert_eq!(objects.len(), 2);
        assert!(text.contains("externalIPs: [198.51.100.1, 198.51.100.2, 198.51.100.3]"));
        assert!(text.contains("nodeName: vps1"));
        let config = weft_model::ClusterConfig::from_yaml(SEED_VALUES).unwrap();
        assert_eq!(
            config.load_balancer.acceleration,
            weft_model::Acceleration::Native
        );
    }
}
