//! L3: Services inside the cluster, on a lab run by Weft's agents. Pods reach a ClusterIP over
//! TCP and UDP from the same node and from another node, with the load balancing done in tc
//! (sockets of this test process, which is outside the nodes' cgroups) and at the socket
//! (`weft-netbench probe` run in a node's cgroup); what the client sees is always the service
//! address. Session affinity, backend removal under open connections, a UDP flow whose server
//! pod is replaced, a service without endpoints, an agent restart, 1,000 services. Needs root.

use std::{
    collections::BTreeSet,
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use weft_common::ct::CT_KIND_SERVICE;
use weft_datapath::LbMaps;
use weft_lab::{
    exec::command_in,
    leftovers,
    netns::run_in,
    runtime::{self, PodRecord, locate_binary},
    supervise,
    testing::{TestCluster, pod_address, running_as_root},
};

const WEB_IP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 80);
const STICKY_IP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 81);
const EMPTY_IP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 82);
const TIMEOUT: Duration = Duration::from_secs(5);

fn pod(name: &str, node: &str, app: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: {app}}}
spec:
  nodeName: {node}
  containers:
    - name: main
      command: [sleep, '3600']
      ports:
        - {{name: http, containerPort: 8080}}
"
    )
}

/// `web` (TCP 80 -> the pods' port named http, UDP 53 -> 5353), `sticky` (ClientIP affinity,
/// its clusterIP allocated by the lab), `empty` (selects no pod).
const SERVICES: &str = "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.43.0.80
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: http, protocol: TCP}
    - {name: dns, port: 53, targetPort: 5353, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  clusterIP: 10.43.0.81
  selector: {app: web}
  sessionAffinity: ClientIP
  ports:
    - {port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: empty}
spec:
  clusterIP: 10.43.0.82
  selector: {app: nothing}
  ports:
    - {port: 80, targetPort: 8080}
";

/// Echo servers in a pod's netns, TCP on 8080 and UDP on 5353, recording every client
/// address they see; stopped when dropped.
struct Backend {
    name: String,
    stop: Arc<AtomicBool>,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Backend {
    fn start(pod: &PodRecord) -> Backend {
        let ip = pod_address(pod);
        let tcp = run_in(&pod.netns, || {
            TcpListener::bind(SocketAddrV4::new(ip, 8080))
        })
        .expect("netns")
        .expect("listen on 8080");
        let udp = run_in(&pod.netns, || UdpSocket::bind(SocketAddrV4::new(ip, 5353)))
            .expect("netns")
            .expect("bind 5353");
        tcp.set_nonblocking(true).expect("nonblocking");
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let threads = vec![
            spawn_tcp_echo(tcp, stop.clone(), peers.clone()),
            spawn_udp_echo(udp, stop.clone(), peers.clone()),
        ];
        Backend {
            name: pod.name.clone(),
            stop,
            peers,
            threads,
        }
    }

    fn saw(&self, client: SocketAddr) -> bool {
        self.peers.lock().expect("peers").contains(&client)
    }

    fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().expect("peers").clone()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn spawn_tcp_echo(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut conns = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((conn, peer)) => {
                    peers.lock().expect("peers").push(peer);
                    let stop = stop.clone();
                    conns.push(thread::spawn(move || echo_connection(conn, &stop)));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(5));
                }
                Err(_) => break,
            }
        }
        for c in conns {
            let _ = c.join();
        }
    })
}

fn echo_connection(mut conn: TcpStream, stop: &AtomicBool) {
    if conn.set_nonblocking(false).is_err()
        || conn
            .set_read_timeout(Some(Duration::from_millis(50)))
            .is_err()
    {
        return;
    }
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

fn spawn_udp_echo(
    socket: UdpSocket,
    stop: Arc<AtomicBool>,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                peers.lock().expect("peers").push(peer);
                let _ = socket.send_to(&buf[..n], peer);
            }
        }
    })
}

/// A TCP connection from `netns` (a socket of this process: balanced in tc).
fn connect(netns: &str, to: SocketAddrV4) -> std::io::Result<TcpStream> {
    let stream = run_in(netns, || TcpStream::connect_timeout(&to.into(), TIMEOUT))
        .map_err(std::io::Error::other)??;
    stream.set_read_timeout(Some(TIMEOUT))?;
    Ok(stream)
}

fn echo_once(stream: &mut TcpStream, payload: &[u8]) -> std::io::Result<()> {
    stream.write_all(payload)?;
    let mut back = vec![0; payload.len()];
    stream.read_exact(&mut back)?;
    if back != payload {
        return Err(std::io::Error::other("the echo differs"));
    }
    Ok(())
}

/// One echoed connection: the address the client's socket shows as its peer and its own.
fn tcp_probe(netns: &str, to: SocketAddrV4) -> std::io::Result<(SocketAddr, SocketAddr)> {
    let mut stream = connect(netns, to)?;
    echo_once(&mut stream, b"ping")?;
    Ok((stream.peer_addr()?, stream.local_addr()?))
}

/// Retries `f` until it succeeds or `limit` passes (agents pick manifests up within a poll).
fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => panic!("not within {limit:?}: {e}"),
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Which backend served the connection or datagram from `client`.
fn served_by(backends: &[&Backend], client: SocketAddr) -> Option<String> {
    backends
        .iter()
        .find(|b| b.saw(client))
        .map(|b| b.name.clone())
}

/// A UDP socket in `netns`, unconnected: `sendto` the service, `recvfrom` the answer.
fn udp_socket(netns: &str) -> UdpSocket {
    let socket = run_in(netns, || UdpSocket::bind("0.0.0.0:0"))
        .expect("netns")
        .expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    socket
}

fn udp_exchange(socket: &UdpSocket, to: SocketAddrV4) -> Result<SocketAddr, String> {
    socket.send_to(b"q", to).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 16];
    let (_, from) = socket.recv_from(&mut buf).map_err(|e| e.to_string())?;
    Ok(from)
}

fn service_flows_of(cluster: &TestCluster, node: &str, client: SocketAddr) -> usize {
    let node = cluster.lab.node(node).expect("node");
    let maps = LbMaps::from_pins(&node.pin_dir).expect("LB maps");
    let SocketAddr::V4(client) = client else {
        return 0;
    };
    maps.ct()
        .expect("weft_ct4")
        .iter()
        .filter(|(k, _)| {
            k.kind == CT_KIND_SERVICE && k.saddr == client.ip().octets() && k.sport == client.port()
        })
        .count()
}

/// A 2-node cluster with `values`: pods cl (vps1), far (vps2), web-1 (vps1) and web-2 (vps2)
/// with echo servers, and [`SERVICES`]; returned once pod cl reaches `web` (agents pick
/// manifests up within a poll).
fn web_cluster(tag: &str, values: &str) -> (TestCluster, Backend, Backend) {
    let cluster = TestCluster::up(tag, 2, Some(values));
    let pods = [
        pod("cl", "vps1", "client"),
        pod("far", "vps2", "client"),
        pod("web-1", "vps1", "web"),
        pod("web-2", "vps2", "web"),
    ]
    .join("---\n");
    cluster.apply_text("pods.yaml", &pods).expect("apply pods");
    cluster
        .apply_text("services.yaml", SERVICES)
        .expect("apply services");
    let web1 = Backend::start(&cluster.pod("web-1"));
    let web2 = Backend::start(&cluster.pod("web-2"));
    let cl = cluster.pod("cl");
    let web = SocketAddrV4::new(WEB_IP, 80);
    eventually(TIMEOUT, || {
        tcp_probe(&cl.netns, web).map_err(|e| e.to_string())
    });
    (cluster, web1, web2)
}

/// The backends that served 24 connections from `client` to `to` (balanced in tc), each of
/// which showed `to` as its peer and the client pod's own address as its source.
fn backends_serving(
    client: &PodRecord,
    to: SocketAddrV4,
    backends: &[&Backend],
) -> BTreeSet<String> {
    let mut served = BTreeSet::new();
    for _ in 0..24 {
        let (peer, local) =
            tcp_probe(&client.netns, to).unwrap_or_else(|e| panic!("{} -> {to}: {e}", client.name));
        assert_eq!(peer, SocketAddr::V4(to), "getpeername shows the ClusterIP");
        assert_eq!(local.ip(), pod_address(client));
        served.insert(served_by(backends, local).expect("a backend saw the client"));
    }
    served
}

/// Takes the cluster down (its backends' servers stopped first) and checks nothing is left.
fn take_down(cluster: TestCluster) {
    let name = cluster.lab.name.clone();
    drop(cluster);
    assert_eq!(leftovers(&name), Vec::<String>::new());
}

#[test]
fn pods_reach_cluster_ips_balanced_in_tc() {
    if !running_as_root("pods_reach_cluster_ips_balanced_in_tc") {
        return;
    }
    let (cluster, web1, web2) = web_cluster("svc", "socketLB: {enabled: false}\n");
    let (cl, far) = (cluster.pod("cl"), cluster.pod("far"));
    let web = SocketAddrV4::new(WEB_IP, 80);

    // From the same node and from the other node: the client sees the ClusterIP, the backend
    // sees the client pod, and new connections spread over both backends.
    for client in [&cl, &far] {
        let served = backends_serving(client, web, &[&web1, &web2]);
        assert_eq!(served.len(), 2, "{}: {served:?}", client.name);
    }

    // UDP from an unconnected socket: the answer comes from the ClusterIP.
    let dns = SocketAddrV4::new(WEB_IP, 53);
    for client in [&cl, &far] {
        let socket = udp_socket(&client.netns);
        let from = eventually(TIMEOUT, || udp_exchange(&socket, dns));
        assert_eq!(from, SocketAddr::V4(dns), "{}", client.name);
    }

    // With the socket load balancer off, a process in the node's cgroup is balanced in tc: its
    // flow has a service conntrack entry (the socket test below checks there is none).
    let earlier: BTreeSet<SocketAddr> = web1.peers().into_iter().chain(web2.peers()).collect();
    assert_eq!(
        socket_probe(&cluster, "default/cl", web, false),
        SocketAddr::V4(web)
    );
    let probe = web1
        .peers()
        .into_iter()
        .chain(web2.peers())
        .find(|c| !earlier.contains(c))
        .expect("the probe reached a backend");
    assert_eq!(service_flows_of(&cluster, "vps1", probe), 1);

    // Session affinity: one client, one backend.
    let sticky = SocketAddrV4::new(STICKY_IP, 80);
    let mut served = BTreeSet::new();
    for _ in 0..12 {
        let (peer, local) = tcp_probe(&cl.netns, sticky).expect("sticky");
        assert_eq!(peer, SocketAddr::V4(sticky));
        served.insert(served_by(&[&web1, &web2], local).expect("served"));
    }
    assert_eq!(served.len(), 1, "affinity: {served:?}");

    // No endpoint: refused at once, not timed out.
    let started = Instant::now();
    let refused = connect(&cl.netns, SocketAddrV4::new(EMPTY_IP, 80));
    let err = refused.expect_err("a service without endpoints refuses");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));

    // An open connection per backend; the connection to web-2 survives an agent restart.
    let open: Vec<(TcpStream, String)> = {
        let mut open = Vec::new();
        let mut seen = BTreeSet::new();
        while seen.len() < 2 {
            let mut stream = connect(&cl.netns, web).expect("connect");
            echo_once(&mut stream, b"hold").expect("echo");
            let local = stream.local_addr().expect("local");
            let backend = served_by(&[&web1, &web2], local).expect("served");
            if seen.insert(backend.clone()) {
                open.push((stream, backend));
            }
        }
        open
    };
    let pid = runtime::agent_pid(&cluster.lab.name, "vps1").expect("agent pid");
    let node1 = cluster.lab.node("vps1").expect("vps1").clone();
    let lb_before = LbMaps::from_pins(&node1.pin_dir)
        .and_then(|m| m.services())
        .expect("services");
    supervise::stop_agent(&cluster.lab.name, "vps1").expect("stop the vps1 agent");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the agent {pid} is stopped"
    );
    supervise::start_agent(&cluster.lab.name, "vps1").expect("agent restarts");
    let lb_after = LbMaps::from_pins(&node1.pin_dir)
        .and_then(|m| m.services())
        .expect("services");
    assert_eq!(lb_before, lb_after, "the restarted agent adopted the maps");

    // Removing web-2: the connection to web-1 goes on, new connections all go to web-1.
    cluster
        .delete_text("web-2.yaml", &pod("web-2", "vps2", "web"))
        .expect("delete web-2");
    for (stream, backend) in &open {
        if backend == "web-1" {
            let mut stream = stream.try_clone().expect("clone");
            echo_once(&mut stream, b"still there").expect("the web-1 connection goes on");
        }
    }
    eventually(TIMEOUT, || {
        let all_web1 = (0..8).all(|_| {
            tcp_probe(&cl.netns, web)
                .ok()
                .and_then(|(_, local)| served_by(&[&web1], local))
                .is_some()
        });
        all_web1
            .then_some(())
            .ok_or("new connections still reach web-2".into())
    });
    drop(web2);

    // A UDP flow survives its server pod being replaced: the same client socket, web-1 gone,
    // web-3 started, answered again from the ClusterIP.
    let socket = udp_socket(&cl.netns);
    let from = eventually(TIMEOUT, || udp_exchange(&socket, dns));
    assert_eq!(from, SocketAddr::V4(dns));
    let client = socket.local_addr().expect("local");
    let client = SocketAddr::new(std::net::IpAddr::V4(pod_address(&cl)), client.port());
    assert!(web1.saw(client));
    drop(open);
    cluster
        .delete_text("web-1.yaml", &pod("web-1", "vps1", "web"))
        .expect("delete web-1");
    drop(web1);
    cluster
        .apply_text("web-3.yaml", &pod("web-3", "vps2", "web"))
        .expect("apply web-3");
    let web3 = Backend::start(&cluster.pod("web-3"));
    let from = eventually(Duration::from_secs(10), || udp_exchange(&socket, dns));
    assert_eq!(from, SocketAddr::V4(dns));
    assert!(
        web3.saw(client),
        "web-3 answers the same flow: {:?}",
        web3.peers()
    );

    drop(web3);
    take_down(cluster);
}

/// `weft-netbench probe` in pod `pod` (its netns, its node's cgroup): the peer its socket shows.
fn socket_probe(cluster: &TestCluster, target: &str, to: SocketAddrV4, udp: bool) -> SocketAddr {
    let netbench = locate_binary("WEFT_NETBENCH", "weft-netbench").expect("weft-netbench");
    let mut argv = vec![
        netbench.display().to_string(),
        "probe".into(),
        "--to".into(),
        to.to_string(),
    ];
    if udp {
        argv.push("--udp".into());
    }
    let out = command_in(&cluster.lab, target, &argv)
        .expect("placed command")
        .output()
        .expect("weft-netbench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "probe {to} from {target}: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peer = stdout
        .split("\"peer\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default();
    peer.parse()
        .unwrap_or_else(|_| panic!("no peer in {stdout}"))
}

/// `weft-netbench probe` from `target` to `to`; returns the peer its socket showed and the
/// service conntrack entries its flow left on the nodes (0: balanced at the socket).
fn probe_and_count_flows(
    cluster: &TestCluster,
    backends: &[&Backend],
    target: &str,
    to: SocketAddrV4,
    udp: bool,
) -> (SocketAddr, usize) {
    let earlier: BTreeSet<SocketAddr> = backends.iter().flat_map(|b| b.peers()).collect();
    let peer = socket_probe(cluster, target, to, udp);
    let client = backends
        .iter()
        .flat_map(|b| b.peers())
        .find(|c| !earlier.contains(c))
        .unwrap_or_else(|| panic!("the probe from {target} reached no backend"));
    let flows = ["vps1", "vps2"]
        .iter()
        .map(|node| service_flows_of(cluster, node, client))
        .sum();
    (peer, flows)
}

/// A cluster with socket LB on (`values`), pods cl (vps1), far (vps2), web-1 (vps1), web-2
/// (vps2) serving `web`; checks for each target whether its TCP and UDP flows are balanced at
/// the socket (`at_socket`) or in tc; either way the client sees the ClusterIP.
fn check_socket_lb(tag: &str, values: &str, targets: &[(&str, bool)]) {
    let (cluster, web1, web2) = web_cluster(tag, values);
    let web = SocketAddrV4::new(WEB_IP, 80);
    let dns = SocketAddrV4::new(WEB_IP, 53);
    for &(target, at_socket) in targets {
        for (to, udp) in [(web, false), (web, false), (dns, true), (dns, true)] {
            let (peer, flows) = probe_and_count_flows(&cluster, &[&web1, &web2], target, to, udp);
            assert_eq!(peer, SocketAddr::V4(to), "{target}: getpeername/recvfrom");
            let expected = usize::from(!at_socket);
            assert_eq!(flows, expected, "{target} -> {to}: service flows in tc");
        }
    }
    drop((web1, web2));
    take_down(cluster);
}

#[test]
fn the_socket_load_balancer_translates_once_per_connection() {
    if !running_as_root("the_socket_load_balancer_translates_once_per_connection") {
        return;
    }
    check_socket_lb(
        "sock",
        "socketLB: {enabled: true}\n",
        &[("default/cl", true), ("default/far", true), ("vps1", true)],
    );
}

#[test]
fn with_host_namespace_only_pods_are_balanced_in_tc() {
    if !running_as_root("with_host_namespace_only_pods_are_balanced_in_tc") {
        return;
    }
    check_socket_lb(
        "sockh",
        "socketLB: {enabled: true, hostNamespaceOnly: true}\n",
        &[
            ("default/cl", false),
            ("default/far", false),
            ("vps1", true),
        ],
    );
}

/// The Maglev table of frontend `ip`:80/TCP on `node`, each slot as its backend's address.
fn maglev_addresses(cluster: &TestCluster, node: &str, ip: Ipv4Addr) -> Vec<Ipv4Addr> {
    let node = cluster.lab.node(node).expect("node");
    let maps = LbMaps::from_pins(&node.pin_dir).expect("LB maps");
    let id = maps
        .services()
        .expect("services")
        .into_iter()
        .find(|(k, _)| k.address == ip.octets() && k.port == 80 && k.proto == 6 && k.slot == 0)
        .map(|(_, svc)| svc.rev_nat_index)
        .expect("the frontend");
    let backends: std::collections::BTreeMap<u32, Ipv4Addr> = maps
        .backends()
        .expect("backends")
        .into_iter()
        .map(|(id, b)| (id, Ipv4Addr::from(b.address)))
        .collect();
    maps.maglev(id)
        .expect("read")
        .expect("a Maglev table")
        .iter()
        .map(|b| backends[b])
        .collect()
}

#[test]
fn maglev_tables_are_the_same_on_every_node_and_spread_flows() {
    if !running_as_root("maglev_tables_are_the_same_on_every_node_and_spread_flows") {
        return;
    }
    let values = "loadBalancer: {algorithm: maglev}\nmaglev: {tableSize: 1021}\nsocketLB: {enabled: false}\n";
    let (cluster, web1, web2) = web_cluster("mag", values);
    let web = SocketAddrV4::new(WEB_IP, 80);
    let served = backends_serving(&cluster.pod("cl"), web, &[&web1, &web2]);
    assert_eq!(served.len(), 2, "{served:?}");
    let table = maglev_addresses(&cluster, "vps1", WEB_IP);
    assert_eq!(table.len(), 1021);
    assert_eq!(table, maglev_addresses(&cluster, "vps2", WEB_IP));
    drop((web1, web2));
    take_down(cluster);
}

#[test]
fn a_thousand_services_loaded_at_once_all_answer() {
    if !running_as_root("a_thousand_services_loaded_at_once_all_answer") {
        return;
    }
    let cluster = TestCluster::up("k1", 1, Some("socketLB: {enabled: false}\n"));
    let pods = [pod("cl", "vps1", "client"), pod("web-1", "vps1", "web")].join("---\n");
    cluster.apply_text("pods.yaml", &pods).expect("apply pods");
    let services: Vec<String> = (0..1000u32)
        .map(|i| {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 43, 16, 0)) + i);
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\nspec:\n  clusterIP: {ip}\n  selector: {{app: web}}\n  ports:\n    - {{port: 80, targetPort: 8080}}\n"
            )
        })
        .collect();
    let started = Instant::now();
    cluster
        .apply_text("many.yaml", &services.join("---\n"))
        .expect("apply 1000 services");
    let web1 = Backend::start(&cluster.pod("web-1"));
    let cl = cluster.pod("cl");
    let last = SocketAddrV4::new(Ipv4Addr::new(10, 43, 19, 231), 80);
    eventually(Duration::from_secs(30), || {
        tcp_probe(&cl.netns, last).map_err(|e| e.to_string())
    });
    eprintln!(
        "1000 services answering {:?} after apply",
        started.elapsed()
    );
    for i in 0..1000u32 {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 43, 16, 0)) + i);
        let to = SocketAddrV4::new(ip, 80);
        let (peer, _) = tcp_probe(&cl.netns, to).unwrap_or_else(|e| panic!("{to}: {e}"));
        assert_eq!(peer, SocketAddr::V4(to));
    }
    assert_eq!(web1.peers().len() as u32, 1000 + 1);
    drop(web1);
    take_down(cluster);
}
