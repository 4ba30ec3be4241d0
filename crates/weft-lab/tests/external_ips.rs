//! L3: external addresses cannot hijack traffic (the CVE-2020-8554 class). A Service whose
//! `externalIPs` name a pod's address, or an outside host outside `externalIPs.allowedCIDRs`,
//! is refused by `weft lab apply`; stored anyway (a cluster without that admission check), the
//! agents leave its frontends out, and pods' traffic still reaches the real owner of the
//! address. Needs root.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use weft_datapath::LbMaps;
use weft_lab::{
    netns::run_in,
    runtime,
    testing::{TestCluster, pod_address, running_as_root},
};

const TIMEOUT: Duration = Duration::from_secs(10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 4);
const MARKER_IP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 99);

fn pod(name: &str, node: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {app}}}}}\n\
         spec: {{nodeName: {node}, containers: [{{name: main, command: [sleep, '3600']}}]}}\n"
    )
}

/// A Service selecting the `thief` pod on `external` port 8080.
fn hijacker(name: &str, external: Ipv4Addr) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n\
         spec: {{selector: {{app: thief}}, externalIPs: [{external}], ports: [{{port: 8080}}]}}\n"
    )
}

/// Accepts one connection on `at` in `netns` and answers with `reply`, in a thread.
fn serve_once(netns: &str, at: SocketAddrV4, reply: &'static [u8]) -> thread::JoinHandle<bool> {
    let listener = run_in(netns, || TcpListener::bind(at))
        .expect("netns")
        .expect("listen");
    listener.set_nonblocking(true).expect("nonblocking");
    thread::spawn(move || {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if let Ok((mut stream, _)) = listener.accept() {
                let _ = stream.set_nonblocking(false);
                return stream.write_all(reply).is_ok();
            }
            thread::sleep(Duration::from_millis(10));
        }
        false
    })
}

/// What a connection from `netns` to `to` reads.
fn fetch(netns: &str, to: SocketAddrV4) -> Result<Vec<u8>, String> {
    run_in(netns, || -> std::io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect_timeout(&to.into(), Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut got = Vec::new();
        stream.read_to_end(&mut got)?;
        Ok(got)
    })
    .map_err(|e| format!("{e:#}"))?
    .map_err(|e| e.to_string())
}

fn frontends(cluster: &TestCluster, node: &str) -> Vec<Ipv4Addr> {
    let pins = &cluster.lab.node(node).expect("node").pin_dir;
    let maps = LbMaps::from_pins(pins).expect("LB maps");
    let services = maps.services().expect("weft_lb4_services");
    services
        .iter()
        .map(|(k, _)| Ipv4Addr::from(k.address))
        .collect()
}

#[test]
fn external_ips_of_pods_or_disallowed_hosts_never_divert_traffic() {
    if !running_as_root("external_ips_of_pods_or_disallowed_hosts_never_divert_traffic") {
        return;
    }
    let cluster = TestCluster::up(
        "extip",
        2,
        Some("externalIPs:\n  allowedCIDRs: [192.0.2.0/24]\n"),
    );
    let pods = [
        pod("victim", "vps2", "victim"),
        pod("thief", "vps1", "thief"),
        pod("cl", "vps1", "client"),
    ]
    .join("---\n");
    cluster.apply_text("pods.yaml", &pods).expect("apply pods");
    let victim = cluster.pod("victim");
    let victim_ip = pod_address(&victim);
    let cl = cluster.pod("cl");

    for (external, why) in [
        (victim_ip, "is inside the pod CIDR"),
        (CLIENT, "is outside externalIPs.allowedCIDRs (192.0.2.0/24)"),
    ] {
        let err = cluster
            .apply_text("hijack.yaml", &hijacker("hijack", external))
            .expect_err("an external address that hijacks traffic is refused");
        assert!(format!("{err:#}").contains(why), "{external}: {err:#}");
    }

    // A cluster without that admission check stores them anyway: the agents must not program
    // them. The marker Service tells when the agents have read the directory.
    let stored = format!(
        "{}---\n{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: marker}}\n\
         spec: {{clusterIP: {MARKER_IP}, ports: [{{port: 80}}]}}\n",
        hijacker("to-pod", victim_ip).replace("{selector", "{clusterIP: 10.43.0.97, selector"),
        hijacker("to-host", CLIENT).replace("{selector", "{clusterIP: 10.43.0.98, selector"),
    );
    let dir = runtime::manifests_dir(&cluster.lab.name);
    std::fs::write(dir.join("unchecked.yaml"), stored).expect("write manifests");
    for node in ["vps1", "vps2"] {
        let deadline = Instant::now() + TIMEOUT;
        while !frontends(&cluster, node).contains(&MARKER_IP) {
            assert!(Instant::now() < deadline, "{node} never read the manifests");
            thread::sleep(Duration::from_millis(50));
        }
        let programmed = frontends(&cluster, node);
        assert!(!programmed.contains(&victim_ip), "{node}: {programmed:?}");
        assert!(!programmed.contains(&CLIENT), "{node}: {programmed:?}");
    }

    let to_victim = SocketAddrV4::new(victim_ip, 8080);
    let served = serve_once(&victim.netns, to_victim, b"victim");
    assert_eq!(fetch(&cl.netns, to_victim).as_deref(), Ok(&b"victim"[..]));
    assert!(served.join().expect("server thread"));

    let to_client = SocketAddrV4::new(CLIENT, 8080);
    let served = serve_once(&cluster.lab.client.netns, to_client, b"client");
    assert_eq!(fetch(&cl.netns, to_client).as_deref(), Ok(&b"client"[..]));
    assert!(served.join().expect("server thread"));
}
