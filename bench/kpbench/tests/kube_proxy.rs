//! L3 (root): the kube-proxy baseline lab, in each of its three modes — pods routed by the
//! kernel, a ClusterIP Service implemented by kube-proxy's rules, real sockets. The client pod
//! reaches both backends through the ClusterIP with its own address kept, pods talk across
//! nodes, an endpoint change is followed after a partial re-sync and undone, and `down` leaves nothing.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use weft_kpbench::{
    baseline,
    kube_proxy::{NodeProxy, ProxyMode},
};
use weft_lab::{
    Topology, leftovers,
    netns::run_in,
    testing::{LabGuard, running_as_root, unique_lab_name},
    traffic,
};
use weft_model::Store;

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 80);
const TARGET_PORT: u16 = 8080;

fn objects(backends: &[Ipv4Addr]) -> String {
    let endpoints: String = backends
        .iter()
        .map(|ip| format!("- addresses: [{ip}]\n  conditions: {{ready: true}}\n"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\n\
         spec: {{clusterIP: {CLUSTER_IP}, ports: [{{name: http, port: 80, targetPort: {TARGET_PORT}}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: {TARGET_PORT}, protocol: TCP}}]\n\
         endpoints:\n{endpoints}"
    )
}

/// A TCP server in a pod's netns that answers every connection with its own name and records
/// the peers it saw; stops when dropped.
struct Backend {
    name: String,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Backend {
    fn start(lab: &Topology, pod: &str) -> anyhow::Result<Backend> {
        let (_, spec) = lab.find_pod(pod).context("no such pod")?;
        let addr = SocketAddrV4::new(spec.ip, TARGET_PORT);
        let listener = run_in(&spec.netns, || TcpListener::bind(addr))??;
        listener.set_nonblocking(true)?;
        let (peers, stop) = (Arc::default(), Arc::new(AtomicBool::new(false)));
        let (seen, stopped, name) = (Arc::clone(&peers), Arc::clone(&stop), pod.to_string());
        let thread = thread::spawn(move || serve(&listener, &name, &seen, &stopped));
        Ok(Backend {
            name: pod.to_string(),
            peers,
            stop,
            thread: Some(thread),
        })
    }

    fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

fn serve(listener: &TcpListener, name: &str, peers: &Mutex<Vec<SocketAddr>>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut conn, peer)) => {
                if let Ok(mut p) = peers.lock() {
                    p.push(peer);
                }
                let _ = conn.set_nonblocking(false);
                let _ = conn.write_all(name.as_bytes());
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection from `netns` to the ClusterIP: the name of the backend that answered.
fn ask(netns: &str) -> anyhow::Result<String> {
    let service = SocketAddr::from((CLUSTER_IP, 80));
    let mut stream = run_in(netns, || {
        TcpStream::connect_timeout(&service, Duration::from_secs(2))
    })?
    .with_context(|| format!("connecting from {netns} to {service}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// Connects until every backend in `expected` answered (at most 64 times).
fn reach_all(netns: &str, expected: &[&Backend]) -> anyhow::Result<()> {
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..64 {
        answered.insert(ask(netns)?);
        if expected.iter().all(|b| answered.contains(&b.name)) {
            return Ok(());
        }
    }
    anyhow::bail!("only {answered:?} answered through {CLUSTER_IP}")
}

/// A full sync on every node, or a partial one (kube-proxy's answer to a changed slice).
fn sync_all(proxies: &mut [NodeProxy], store: &Store, full: bool) -> anyhow::Result<()> {
    for proxy in proxies {
        let report = if full {
            proxy.sync_store(store)?
        } else {
            proxy.sync_store_changes(store)?
        };
        ensure!(
            report.service_ports == 1
                && report.rules > 0
                && report.full == full
                && report.services_written == 1,
            "{report:?}"
        );
    }
    Ok(())
}

fn service_through_kube_proxy(mode: ProxyMode) -> anyhow::Result<()> {
    let started = Instant::now();
    let name = unique_lab_name(&format!("kp{}", &mode.as_str()[..1]));
    let lab = LabGuard::new(baseline::up(&name, mode, 2, 2)?);
    let (client, a, b) = ("vps1/pod1", "vps1/pod2", "vps2/pod1");
    let client_pod = lab.find_pod(client).context("client")?.1.clone();

    // Pod to pod across nodes, source kept.
    let (_, server) = lab.find_pod(b).context("b")?;
    let peer = traffic::tcp_echo(
        &client_pod.netns,
        &server.netns,
        SocketAddrV4::new(server.ip, 7000),
        b"hello",
    )?;
    ensure!(peer.ip() == client_pod.ip, "pod-to-pod source {peer}");

    let backends = [Backend::start(&lab, a)?, Backend::start(&lab, b)?];
    let ips: Vec<Ipv4Addr> = [a, b]
        .iter()
        .map(|p| lab.find_pod(p).map(|(_, s)| s.ip).context("pod"))
        .collect::<anyhow::Result<_>>()?;
    let mut proxies: Vec<NodeProxy> = lab.nodes.iter().map(|n| NodeProxy::new(n, mode)).collect();
    let both = Store::from_manifests([("a.yaml", objects(&ips).as_str())])?;
    sync_all(&mut proxies, &both, true)?;
    reach_all(&client_pod.netns, &[&backends[0], &backends[1]])?;
    for backend in &backends {
        let peers = backend.peers();
        ensure!(!peers.is_empty(), "{} got no connection", backend.name);
        ensure!(
            peers.iter().all(|p| p.ip() == client_pod.ip),
            "{} saw {peers:?}, not the client pod {}",
            backend.name,
            client_pod.ip
        );
    }

    // Endpoint change: only b is left; after a partial sync every connection goes to b.
    sync_all(
        &mut proxies,
        &Store::from_manifests([("b.yaml", objects(&ips[1..]).as_str())])?,
        false,
    )?;
    for _ in 0..8 {
        let answer = ask(&client_pod.netns)?;
        ensure!(answer == b, "{answer} answered after it left the slice");
    }
    // And back: a's chain, deleted with the previous change, is made again.
    sync_all(&mut proxies, &both, false)?;
    reach_all(&client_pod.netns, &[&backends[0], &backends[1]])?;
    drop(backends);

    lab.down()?;
    ensure!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));
    eprintln!("{mode}: {:?}", started.elapsed());
    Ok(())
}

#[test]
fn a_cluster_ip_through_iptables_nft() -> anyhow::Result<()> {
    if !running_as_root("a_cluster_ip_through_iptables_nft") {
        return Ok(());
    }
    service_through_kube_proxy(ProxyMode::Iptables)
}

#[test]
fn a_cluster_ip_through_iptables_legacy() -> anyhow::Result<()> {
    if !running_as_root("a_cluster_ip_through_iptables_legacy") {
        return Ok(());
    }
    service_through_kube_proxy(ProxyMode::IptablesLegacy)
}

#[test]
fn a_cluster_ip_through_nftables() -> anyhow::Result<()> {
    if !running_as_root("a_cluster_ip_through_nftables") {
        return Ok(());
    }
    service_through_kube_proxy(ProxyMode::Nftables)
}
