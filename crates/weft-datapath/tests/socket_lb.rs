//! L3: socket LB on real sockets. A node's datapath is opened in a private pin directory and
//! its socket LB attached to a private cgroup; clients are child processes placed in that cgroup
//! and in a network namespace, servers are threads of the test in the namespaces:
//!
//! - node netns: the backend (TCP and UDP on 10.42.9.11:8080), and a listener on the ClusterIP
//!   of the service without backends (10.43.0.20:80) that only an untranslated connect reaches;
//! - pod netns (a veth away): a listener on the ClusterIP 10.43.0.10:80 itself, reached only by
//!   a pod socket socket LB leaves alone.
//!
//! Each server answers with its name, so the client knows who it reached. Needs root; skipped
//! with a visible message otherwise. Everything it makes carries the prefix `wsl<pid>` and is
//! removed by Drop guards, also when an assertion fails.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use nix::sched::{CloneFlags, setns};
use weft_common::{
    Lb4Backend, Lb4Key, Lb4RevNat, Lb4Service, NodeConfig,
    lb::{LB_ALG_MAGLEV, LB_SCOPE_EXTERNAL},
    net::{IPPROTO_TCP, IPPROTO_UDP},
    node::NODE_SOCKET_LB_HOST_NS_ONLY_FLAG,
};
use weft_datapath::{
    Datapath, LbMaps, NodeDatapath, bpffs::TempPinDir, cgroup::find_cgroup2_root, running_as_root,
    socket_lb,
};

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 10);
const NO_BACKEND_IP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 20);
const MAGLEV_IP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 30);
const SERVICE_PORT: u16 = 80;
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 42, 9, 11);
const BACKEND_PORT: u16 = 8080;
const NODE_VETH_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const POD_VETH_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const SERVICE_ID: u16 = 7;

const CLIENT_ENV: &str = "WEFT_SOCKLB_TEST_CLIENT";

// ---- the client, run in a child process placed in the cgroup and a netns ----

/// Not a test: the body of the client processes, a no-op unless the environment names a call.
#[test]
fn socket_lb_client_process() {
    let Ok(call) = std::env::var(CLIENT_ENV) else {
        return;
    };
    let result = match call.split_once(' ') {
        Some(("tcp", addr)) => tcp_call(addr),
        Some(("udp", addr)) => udp_call(addr),
        _ => format!("error=unknown call {call}"),
    };
    println!("RESULT {result}");
}

fn tcp_call(addr: &str) -> String {
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        return "error=bad address".into();
    };
    let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
        Ok(s) => s,
        Err(e) => return format!("error={}", e.kind()),
    };
    let peer = stream
        .peer_addr()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let mut tag = String::new();
    let _ = stream.read_to_string(&mut tag);
    format!("peer={peer} tag={tag}")
}

fn udp_call(addr: &str) -> String {
    let run = || -> std::io::Result<String> {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        sock.set_read_timeout(Some(Duration::from_secs(3)))?;
        sock.send_to(b"ping", addr)?;
        let mut buf = [0u8; 64];
        let (n, from) = sock.recv_from(&mut buf)?;
        Ok(format!(
            "from={from} tag={}",
            String::from_utf8_lossy(&buf[..n])
        ))
    };
    run().unwrap_or_else(|e| format!("error={}", e.kind()))
}

/// Runs `call` ("tcp 10.43.0.10:80") in a child process in `netns` and `cgroup`, and returns
/// what it printed after `RESULT `.
fn client(netns: &Netns, cgroup: &TempCgroup, call: &str) -> String {
    let ns = File::open(&netns.path).expect("netns file");
    let procs = File::options()
        .write(true)
        .open(cgroup.0.join("cgroup.procs"))
        .expect("cgroup.procs");
    let (ns_fd, procs_fd) = (ns.as_raw_fd(), procs.as_raw_fd());
    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    command
        .args([
            "--exact",
            "socket_lb_client_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CLIENT_ENV, call);
    // SAFETY: the hook only makes async-signal-safe system calls on descriptors opened before
    // the fork ("0" moves the writing process itself).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0
                || libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = command.output().expect("client runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, result)| result))
        .map(str::to_string)
        .unwrap_or_else(|| {
            panic!(
                "client {call} printed no result: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

// ---- the fixture ----

fn ip(netns: &Netns, args: &[&str]) {
    let net = format!("--net={}", netns.path.display());
    let status = Command::new("nsenter")
        .arg(&net)
        .arg("ip")
        .args(args)
        .status()
        .expect("nsenter ip");
    assert!(status.success(), "ip {args:?} in {}", netns.name);
}

struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    fn new(name: String) -> Netns {
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(status.success(), "ip netns add {name}");
        let path = Path::new("/run/netns").join(&name);
        let ns = Netns { name, path };
        ip(&ns, &["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `f` on a thread that entered this namespace.
    fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = File::open(&self.path).expect("netns file");
        thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in netns")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A cgroup of the test's own, removed when dropped (its client processes have exited).
struct TempCgroup(PathBuf);

impl TempCgroup {
    fn new(name: &str) -> TempCgroup {
        let root = find_cgroup2_root().expect("a cgroup2 hierarchy");
        let path = root.join(name);
        std::fs::create_dir(&path).expect("mkdir cgroup");
        TempCgroup(path)
    }
}

impl Drop for TempCgroup {
    fn drop(&mut self) {
        for _ in 0..200 {
            match std::fs::remove_dir(&self.0) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    thread::sleep(Duration::from_millis(10));
                }
                _ => return,
            }
        }
    }
}

/// Servers answering with their name until dropped.
struct Servers(Arc<AtomicBool>);

impl Drop for Servers {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn serve_tcp(listener: TcpListener, name: &'static str, stop: Arc<AtomicBool>) {
    listener.set_nonblocking(true).expect("nonblocking");
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    let _ = conn.write_all(name.as_bytes());
                }
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        }
    });
}

fn serve_udp(sock: UdpSocket, name: &'static str, stop: Arc<AtomicBool>) {
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((_, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(name.as_bytes(), from);
            }
        }
    });
}

/// The node netns and a pod netns joined by a veth, with their servers.
struct Topology {
    node: Netns,
    pod: Netns,
    _servers: Servers,
}

fn topology(prefix: &str) -> Topology {
    let node = Netns::new(format!("{prefix}-node"));
    let pod = Netns::new(format!("{prefix}-pod"));
    let (node_if, pod_if) = (format!("{prefix}n"), format!("{prefix}p"));
    ip(
        &node,
        &[
            "link", "add", &node_if, "type", "veth", "peer", "name", &pod_if, "netns", &pod.name,
        ],
    );
    ip(
        &node,
        &[
            "addr",
            "add",
            &format!("{NODE_VETH_IP}/30"),
            "dev",
            &node_if,
        ],
    );
    ip(&node, &["link", "set", &node_if, "up"]);
    ip(
        &node,
        &["addr", "add", &format!("{BACKEND}/32"), "dev", "lo"],
    );
    ip(
        &node,
        &["addr", "add", &format!("{NO_BACKEND_IP}/32"), "dev", "lo"],
    );
    ip(
        &pod,
        &["addr", "add", &format!("{POD_VETH_IP}/30"), "dev", &pod_if],
    );
    ip(&pod, &["link", "set", &pod_if, "up"]);
    ip(
        &pod,
        &[
            "route",
            "add",
            &format!("{BACKEND}/32"),
            "via",
            &NODE_VETH_IP.to_string(),
        ],
    );
    ip(
        &pod,
        &["addr", "add", &format!("{CLUSTER_IP}/32"), "dev", "lo"],
    );

    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    node.spawn(move || {
        let backend = SocketAddrV4::new(BACKEND, BACKEND_PORT);
        serve_tcp(
            TcpListener::bind(backend).expect("bind"),
            "backend",
            s.clone(),
        );
        serve_udp(
            UdpSocket::bind(backend).expect("bind"),
            "backend",
            s.clone(),
        );
        let sink = SocketAddrV4::new(NO_BACKEND_IP, SERVICE_PORT);
        serve_tcp(TcpListener::bind(sink).expect("bind"), "untranslated", s);
    });
    let s = stop.clone();
    pod.spawn(move || {
        let sink = SocketAddrV4::new(CLUSTER_IP, SERVICE_PORT);
        serve_tcp(TcpListener::bind(sink).expect("bind"), "untranslated", s);
    });
    Topology {
        node,
        pod,
        _servers: Servers(stop),
    }
}

fn key(address: Ipv4Addr, proto: u8, slot: u16) -> Lb4Key {
    Lb4Key {
        address: address.octets(),
        port: SERVICE_PORT,
        proto,
        scope: LB_SCOPE_EXTERNAL,
        slot,
        _pad: [0; 2],
    }
}

/// A service at `address` for `proto` whose active backends are `ids` (slots 1..).
fn put_service(lb: &mut LbMaps, address: Ipv4Addr, proto: u8, ids: &[u32], id: u16, alg: u8) {
    let svc = Lb4Service {
        count: ids.len() as u16,
        rev_nat_index: id,
        algorithm: alg,
        maglev_size: if alg == LB_ALG_MAGLEV { 251 } else { 0 },
        ..Lb4Service::default()
    };
    lb.put_service(key(address, proto, 0), svc)
        .expect("service");
    for (slot, &backend_id) in (1u16..).zip(ids) {
        let entry = Lb4Service {
            backend_id,
            rev_nat_index: id,
            ..Lb4Service::default()
        };
        lb.put_service(key(address, proto, slot), entry)
            .expect("slot");
    }
    let frontend = Lb4RevNat {
        address: address.octets(),
        port: SERVICE_PORT,
        _pad: 0,
    };
    lb.set_revnat(id, frontend).expect("revnat");
}

fn fill_lb_maps(pin_dir: &Path) {
    let mut lb = LbMaps::from_pins(pin_dir).expect("lb maps");
    for (id, proto) in [(1, IPPROTO_TCP), (2, IPPROTO_UDP)] {
        let backend = Lb4Backend {
            address: BACKEND.octets(),
            port: BACKEND_PORT,
            proto,
            flags: 0,
        };
        lb.put_backend(id, backend).expect("backend");
    }
    put_service(&mut lb, CLUSTER_IP, IPPROTO_TCP, &[1], SERVICE_ID, 0);
    put_service(&mut lb, CLUSTER_IP, IPPROTO_UDP, &[2], SERVICE_ID, 0);
    put_service(&mut lb, NO_BACKEND_IP, IPPROTO_TCP, &[], 8, 0);
    put_service(&mut lb, MAGLEV_IP, IPPROTO_TCP, &[1], 9, LB_ALG_MAGLEV);
    lb.put_maglev(9, &[1; 251]).expect("maglev table");
}

fn node_config(flags: u32, netns_cookie: u64) -> NodeConfig {
    NodeConfig {
        ipv4: NODE_VETH_IP.octets(),
        external_ifindex: 1,
        flags,
        netns_cookie,
        ..NodeConfig::default()
    }
}

fn translated(frontend: Ipv4Addr) -> String {
    format!("peer={frontend}:{SERVICE_PORT} tag=backend")
}

#[test]
fn socket_lb_translates_clusterip_per_socket_in_its_cgroup_only() {
    if !running_as_root("socket_lb_translates_clusterip_per_socket_in_its_cgroup_only") {
        return;
    }
    let prefix = format!("wsl{}", std::process::id());
    let net = topology(&prefix);
    let cgroup = TempCgroup::new(&prefix);
    let pins = TempPinDir::new(&prefix).expect("pin dir");
    let mut dp = NodeDatapath::open(pins.path()).expect("datapath");
    fill_lb_maps(pins.path());
    let node_cookie = net
        .node
        .spawn(socket_lb::current_netns_cookie)
        .expect("netns cookie");
    dp.set_node(node_config(0, node_cookie)).expect("node");

    let tcp = format!("tcp {CLUSTER_IP}:{SERVICE_PORT}");
    let udp = format!("udp {CLUSTER_IP}:{SERVICE_PORT}");
    assert_eq!(
        client(&net.node, &cgroup, &tcp),
        "error=network unreachable",
        "before socket LB, the node has no route to the ClusterIP"
    );

    dp.set_socket_lb(Some(&cgroup.0)).expect("attach");
    assert_eq!(dp.socket_lb().expect("read back"), Some(cgroup.0.clone()));

    // TCP: the backend accepts, getpeername shows the ClusterIP.
    assert_eq!(client(&net.node, &cgroup, &tcp), translated(CLUSTER_IP));
    // UDP: the backend answers, recvfrom shows the ClusterIP as the source.
    assert_eq!(
        client(&net.node, &cgroup, &udp),
        format!("from={CLUSTER_IP}:{SERVICE_PORT} tag=backend")
    );
    // Maglev at the socket: the table's only backend.
    assert_eq!(
        client(
            &net.node,
            &cgroup,
            &format!("tcp {MAGLEV_IP}:{SERVICE_PORT}")
        ),
        translated(MAGLEV_IP)
    );
    let revnat = socket_lb::sock_revnat(pins.path()).expect("sock revnat");
    let to_cluster_ip: Vec<_> = revnat
        .iter()
        .filter(|(_, v)| v.address == CLUSTER_IP.octets())
        .collect();
    assert_eq!(
        to_cluster_ip.len(),
        2,
        "one TCP and one UDP socket: {revnat:?}"
    );
    for (k, v) in to_cluster_ip {
        assert_eq!((k.address, k.port), (BACKEND.octets(), BACKEND_PORT));
        assert_ne!(k.cookie, 0);
        assert_eq!((v.port, v.rev_nat_index), (SERVICE_PORT, SERVICE_ID));
    }

    // A service without backends keeps its address: the node's own listener on it answers.
    assert_eq!(
        client(
            &net.node,
            &cgroup,
            &format!("tcp {NO_BACKEND_IP}:{SERVICE_PORT}")
        ),
        format!("peer={NO_BACKEND_IP}:{SERVICE_PORT} tag=untranslated")
    );

    // A pod's socket (another netns, same cgroup) is translated too by default...
    assert_eq!(client(&net.pod, &cgroup, &tcp), translated(CLUSTER_IP));
    // ...but not with hostNamespaceOnly, while the node's own sockets still are.
    dp.set_node(node_config(NODE_SOCKET_LB_HOST_NS_ONLY_FLAG, node_cookie))
        .expect("node");
    assert_eq!(
        client(&net.pod, &cgroup, &tcp),
        format!("peer={CLUSTER_IP}:{SERVICE_PORT} tag=untranslated")
    );
    assert_eq!(client(&net.node, &cgroup, &tcp), translated(CLUSTER_IP));
    dp.set_node(node_config(0, node_cookie)).expect("node");

    // A restarted agent reads the attachment back from the pins.
    let reopened = NodeDatapath::open(pins.path()).expect("reopen");
    assert_eq!(
        reopened.socket_lb().expect("read back"),
        Some(cgroup.0.clone())
    );
    drop(reopened);
    assert_eq!(client(&net.node, &cgroup, &tcp), translated(CLUSTER_IP));

    dp.set_socket_lb(None).expect("detach");
    assert_eq!(dp.socket_lb().expect("read back"), None);
    assert_eq!(
        client(&net.node, &cgroup, &tcp),
        "error=network unreachable",
        "detached: the ClusterIP is not translated any more"
    );
}
