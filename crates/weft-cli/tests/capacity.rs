//! L3: a node whose load-balancer maps are too small for its Services (`bpf.lbMapMax: 300`,
//! 200 Services of 2 entries each). The agent programs the Services that fit, whole, and
//! refuses the others whole; the programmed ones answer real connections; `weft status` says
//! Degraded with the reason and `weft doctor` names `bpf.lbMapMax`. Once Services are deleted
//! the refused ones are programmed and the node is Ok again. Needs root.

use std::{
    collections::BTreeSet,
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use weft_datapath::LbMaps;
use weft_lab::{
    netns::run_in,
    runtime::PodRecord,
    testing::{TestCluster, pod_address, running_as_root},
};

const SERVICES: u32 = 200;
const TIMEOUT: Duration = Duration::from_secs(5);
/// 300 entries in weft_lb4_services: 150 Services of an entry and one backend slot.
const VALUES: &str = "bpf: {lbMapMax: 300}\nsocketLB: {enabled: false}\n";

const PODS: &str = "apiVersion: v1
kind: Pod
metadata: {name: cl}
spec:
  nodeName: vps1
  containers: [{name: main, command: [sleep, '3600']}]
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  labels: {app: web}
spec:
  nodeName: vps1
  containers: [{name: main, command: [sleep, '3600']}]
";

fn service_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 43, 20, 0)) + i)
}

fn services(range: std::ops::Range<u32>) -> String {
    range
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i:03}}}\nspec:\n  \
                 clusterIP: {}\n  selector: {{app: web}}\n  ports:\n    - {{port: 80, \
                 targetPort: 8080}}\n",
                service_ip(i)
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// A TCP echo server on 8080 in a pod's netns; stopped when dropped.
struct Echo {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    fn start(pod: &PodRecord) -> Echo {
        let address = SocketAddrV4::new(pod_address(pod), 8080);
        let listener = run_in(&pod.netns, || TcpListener::bind(address))
            .expect("netns")
            .expect("listen on 8080");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => echo(conn),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => return,
                }
            }
        });
        Echo {
            stop,
            thread: Some(thread),
        }
    }
}

fn echo(mut conn: TcpStream) {
    let mut buf = [0u8; 4];
    let ok = conn.set_nonblocking(false).is_ok()
        && conn.set_read_timeout(Some(TIMEOUT)).is_ok()
        && conn.read_exact(&mut buf).is_ok();
    if ok {
        let _ = conn.write_all(&buf);
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One echoed exchange from the client pod to `to`.
fn exchange(netns: &str, to: SocketAddrV4) -> std::io::Result<()> {
    let mut stream = run_in(netns, || TcpStream::connect_timeout(&to.into(), TIMEOUT))
        .map_err(std::io::Error::other)??;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.write_all(b"ping")?;
    let mut back = [0u8; 4];
    stream.read_exact(&mut back)?;
    if &back != b"ping" {
        return Err(std::io::Error::other("the echo differs"));
    }
    Ok(())
}

/// The addresses of the service entries in vps1's `weft_lb4_services`, and its entry count.
fn programmed(cluster: &TestCluster) -> (BTreeSet<Ipv4Addr>, usize) {
    let node = cluster.lab.node("vps1").expect("vps1");
    let entries = LbMaps::from_pins(&node.pin_dir)
        .expect("LB maps")
        .services()
        .expect("services map");
    let addresses = entries
        .iter()
        .filter(|(key, _)| key.slot == 0)
        .map(|(key, _)| Ipv4Addr::from(key.address))
        .collect();
    (addresses, entries.len())
}

/// `weft <command> --lab <lab>`: its exit status and its output.
fn weft(command: &str, lab: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args([command, "--lab", lab])
        .output()
        .expect("weft runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Retries `f` until it returns `Ok` or `limit` passes.
fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => panic!("not within {limit:?}: {e}"),
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn services_beyond_the_maps_are_refused_whole_and_status_and_doctor_say_so() {
    if !running_as_root("services_beyond_the_maps_are_refused_whole_and_status_and_doctor_say_so") {
        return;
    }
    let cluster = TestCluster::up("cap", 1, Some(VALUES));
    let lab = cluster.lab.name.clone();
    cluster.apply_text("pods.yaml", PODS).expect("apply pods");
    let _echo = Echo::start(&cluster.pod("web-1"));
    cluster
        .apply_text("services.yaml", &services(0..SERVICES))
        .expect("apply services");

    let status = eventually(Duration::from_secs(60), || {
        let (ok, text) = weft("status", &lab);
        let settled = text.contains("Programmed: 150 Services (150 frontends); 50 refused");
        if ok || !settled {
            return Err(text);
        }
        Ok(text)
    });
    assert!(
        status.contains(
            "Agent:      Degraded (ready): 50 of 200 Services are not programmed (none of their \
             entries is written): weft_lb4_services has room for 300 entries, the Services \
             need 400; bpf.lbMapMax 400 would hold them all"
        ),
        "{status}"
    );
    assert!(
        status.contains("LB maps:    weft_lb4_services 300/300 entries, the Services need 400"),
        "{status}"
    );

    let (addresses, entries) = programmed(&cluster);
    assert_eq!(addresses.len(), 150, "{addresses:?}");
    assert_eq!(
        entries, 300,
        "each programmed Service whole: its entry and its slot"
    );
    let client = cluster.pod("cl");
    for &ip in &addresses {
        let to = SocketAddrV4::new(ip, 80);
        exchange(&client.netns, to).unwrap_or_else(|e| panic!("{to}: {e}"));
    }
    let all: BTreeSet<Ipv4Addr> = (0..SERVICES).map(service_ip).collect();
    assert!(addresses.is_subset(&all));

    let (ok, doctor) = weft("doctor", &lab);
    assert!(!ok, "refused Services are a problem: {doctor}");
    assert!(
        doctor.contains(
            "problem: 50 of 200 Services are not programmed: none of their entries is written, \
             so their addresses do not answer: weft_lb4_services has room for 300 entries, the \
             Services need 400"
        ),
        "{doctor}"
    );
    assert!(
        doctor.contains("fix: raise `bpf.lbMapMax` (Cilium's key) to at least 400"),
        "{doctor}"
    );

    // 60 Services go: the 140 left need 280 entries, and every one is programmed.
    cluster
        .delete_text("gone.yaml", &services(0..60))
        .expect("delete services");
    eventually(Duration::from_secs(60), || {
        let (ok, text) = weft("status", &lab);
        if ok && text.contains("Programmed: 140 Services (140 frontends)\n") {
            Ok(())
        } else {
            Err(text)
        }
    });
    let (addresses, _) = programmed(&cluster);
    let kept: BTreeSet<Ipv4Addr> = (60..SERVICES).map(service_ip).collect();
    assert_eq!(addresses, kept);
    for i in [60, 150, SERVICES - 1] {
        let to = SocketAddrV4::new(service_ip(i), 80);
        exchange(&client.netns, to).unwrap_or_else(|e| panic!("{to}: {e}"));
    }
    let (ok, doctor) = weft("doctor", &lab);
    assert!(ok, "{doctor}");
}
