//! The lab on a real kernel (root): connectivity inside and across nodes, isolation of the
//! client, idempotent `up`, `exec` placement, and that `down` leaves nothing behind.

use std::{
    fs,
    io::{self, ErrorKind},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    os::unix::process::ExitStatusExt as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use weft_lab::{
    LabSpec, Topology, command_in, down, exec, leftovers, load,
    netns::run_in,
    testing::{LabGuard, running_as_root, unique_lab_name},
    traffic, up,
};

fn pod_addr(lab: &Topology, pod: &str) -> anyhow::Result<(String, Ipv4Addr)> {
    let (_, pod) = lab.find_pod(pod).with_context(|| format!("no pod {pod}"))?;
    Ok((pod.netns.clone(), pod.ip))
}

/// TCP connect from pod `from` to pod `to`, echo a few bytes; the server sees the real pod IP.
fn tcp_echo(lab: &Topology, from: &str, to: &str) -> anyhow::Result<()> {
    let (server_ns, server_ip) = pod_addr(lab, to)?;
    let (client_ns, client_ip) = pod_addr(lab, from)?;
    // A port of its own per connection: the previous pair's server socket on a shared port may
    // still be closing (LAST_ACK) when the next server binds, which then fails.
    static NEXT_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(7100);
    let port = NEXT_PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let server = SocketAddrV4::new(server_ip, port);
    let msg = format!("hello from {from}");
    let peer = traffic::tcp_echo(&client_ns, &server_ns, server, msg.as_bytes())
        .with_context(|| format!("TCP {from} -> {to} ({server})"))?;
    assert_eq!(peer.ip(), client_ip, "{to} sees {from}'s own address");
    Ok(())
}

fn udp_roundtrip(lab: &Topology, from: &str, to: &str) -> anyhow::Result<()> {
    let (server_ns, server_ip) = pod_addr(lab, to)?;
    let (client_ns, client_ip) = pod_addr(lab, from)?;
    let peer = traffic::udp_echo(
        &client_ns,
        &server_ns,
        SocketAddrV4::new(server_ip, 7001),
        b"ping",
    )
    .with_context(|| format!("UDP {from} -> {to}"))?;
    assert_eq!(peer.ip(), client_ip);
    Ok(())
}

/// A TCP connect from the client netns, with a 1 s timeout.
fn connect_from_client(lab: &Topology, ip: Ipv4Addr) -> anyhow::Result<io::Result<TcpStream>> {
    let addr = SocketAddr::from((ip, 7000));
    run_in(&lab.client.netns, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1))
    })
}

/// The lab's namespaces as listed in /run/netns.
fn netns_on_machine(lab: &str) -> Vec<String> {
    let prefix = format!("{lab}-");
    let mut names: Vec<String> = fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn args(argv: &[&str]) -> Vec<String> {
    argv.iter().map(|s| s.to_string()).collect()
}

#[test]
fn pods_talk_within_and_across_nodes_and_the_client_cannot_reach_them() -> anyhow::Result<()> {
    if !running_as_root("pods_talk_within_and_across_nodes_and_the_client_cannot_reach_them") {
        return Ok(());
    }
    let name = unique_lab_name("conn");
    let lab = LabGuard::up(&LabSpec::with_size(&name, 2, 2))?;
    assert_eq!(&load(&name)?, lab.topology());

    tcp_echo(&lab, "vps1/pod1", "vps1/pod2")?;
    tcp_echo(&lab, "vps1/pod1", "vps2/pod1")?;
    tcp_echo(&lab, "vps2/pod2", "vps1/pod2")?;
    udp_roundtrip(&lab, "vps1/pod1", "vps1/pod2")?;
    udp_roundtrip(&lab, "vps2/pod1", "vps1/pod1")?;

    // The client reaches the nodes over the router (nothing listens: refused)...
    let node_ip = lab.nodes[0].underlay_ip;
    let to_node = connect_from_client(&lab, node_ip)?;
    assert_eq!(
        to_node.as_ref().map_err(io::Error::kind).err(),
        Some(ErrorKind::ConnectionRefused),
        "client -> node {node_ip}: {to_node:?}"
    );
    // ...but the internet has no route to pod addresses.
    let pod_ip = pod_addr(&lab, "vps1/pod1")?.1;
    let started = Instant::now();
    let to_pod = connect_from_client(&lab, pod_ip)?;
    assert!(to_pod.is_err(), "client reached pod {pod_ip}");
    assert_ne!(
        to_pod.as_ref().map_err(io::Error::kind).err(),
        Some(ErrorKind::ConnectionRefused)
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    let report = lab.down()?;
    assert_eq!(report.netns.len(), 2 + 2 + 4, "{report}");
    assert!(
        report.pin_dir.is_some() && report.state_file.is_some(),
        "{report}"
    );
    assert_eq!(leftovers(&name), Vec::<String>::new());
    assert!(
        load(&name)
            .expect_err("down")
            .to_string()
            .contains("is not up")
    );
    Ok(())
}

#[test]
fn up_over_a_crashed_run_replaces_it_and_down_leaves_nothing() -> anyhow::Result<()> {
    if !running_as_root("up_over_a_crashed_run_replaces_it_and_down_leaves_nothing") {
        return Ok(());
    }
    let name = unique_lab_name("reup");
    let spec = LabSpec::with_size(&name, 2, 1);
    // The first run "crashes": its lab stays up (the guard only protects against a failure).
    let _first = LabGuard::up(&spec)?;
    let lab = LabGuard::up(&spec)?;

    assert_eq!(netns_on_machine(&name), sorted(lab.all_netns()));
    // Exactly one set of links in a node, whatever the first run had made.
    let out = command_in(&lab, "vps1", &args(&["ip", "-o", "link", "show"]))?.output()?;
    let listed = String::from_utf8_lossy(&out.stdout);
    let mut names: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split(": ").nth(1)?.split('@').next())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["eth0", "lo", "lxcpod1", "weft_host", "weft_net"],
        "{listed}"
    );
    for node in &lab.nodes {
        assert!(node.pin_dir.is_dir(), "{}", node.pin_dir.display());
    }
    tcp_echo(&lab, "vps2/pod1", "vps1/pod1")?;

    let report = lab.down()?;
    assert!(!report.netns.is_empty(), "{report}");
    assert_eq!(leftovers(&name), Vec::<String>::new());
    assert!(netns_on_machine(&name).is_empty());
    assert!(down(&name)?.is_empty(), "a second down has nothing to do");
    Ok(())
}

#[test]
fn exec_runs_in_the_pods_netns_and_the_nodes_cgroup_and_down_kills_it() -> anyhow::Result<()> {
    if !running_as_root("exec_runs_in_the_pods_netns_and_the_nodes_cgroup_and_down_kills_it") {
        return Ok(());
    }
    let name = unique_lab_name("exec");
    let lab = LabGuard::up(&LabSpec::with_size(&name, 2, 1))?;

    let out = command_in(&lab, "vps2/pod1", &args(&["cat", "/proc/self/cgroup"]))?.output()?;
    assert!(out.status.success());
    let cgroups = String::from_utf8_lossy(&out.stdout);
    assert!(
        cgroups
            .lines()
            .any(|l| l == format!("0::/weft-{name}/vps2")),
        "{cgroups}"
    );

    let out = command_in(&lab, "vps2/pod1", &args(&["readlink", "/proc/self/ns/net"]))?.output()?;
    let theirs = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let ours = fs::read_link("/proc/self/ns/net")?;
    let pods = run_in(&pod_addr(&lab, "vps2/pod1")?.0, || {
        fs::read_link("/proc/thread-self/ns/net")
    })??;
    assert!(theirs.starts_with("net:["), "{theirs}");
    assert_ne!(Path::new(&theirs), ours);
    assert_eq!(Path::new(&theirs), pods);

    assert!(exec(&lab, "vps1", &args(&["true"]))?.success());
    assert!(!exec(&lab, "vps1/pod1", &args(&["false"]))?.success());
    let err = command_in(&lab, "vps7", &args(&["true"])).expect_err("no such node");
    assert!(err.to_string().contains("has no `vps7`"), "{err}");
    assert!(command_in(&lab, "vps1", &[]).is_err());

    let mut sleeper = command_in(&lab, "vps1/pod1", &args(&["sleep", "30"]))?.spawn()?;
    let pid = i32::try_from(sleeper.id())?;
    let placed = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    assert!(
        placed.lines().any(|l| l == format!("0::/weft-{name}/vps1")),
        "{placed}"
    );
    let report = lab.down()?;
    let status = sleeper.wait()?;
    assert!(report.killed.contains(&pid), "{report}");
    assert_eq!(status.signal(), Some(9));
    assert_eq!(leftovers(&name), Vec::<String>::new());
    Ok(())
}

#[test]
fn a_failed_up_removes_what_it_made() -> anyhow::Result<()> {
    if !running_as_root("a_failed_up_removes_what_it_made") {
        return Ok(());
    }
    let name = unique_lab_name("fail");
    // A directory where the state file's temporary copy goes makes the very last step fail.
    let blocker = Path::new("/run/weft/labs").join(format!("{name}.json.tmp"));
    fs::create_dir_all(&blocker)?;
    let result = up(&LabSpec::with_size(&name, 1, 1));
    let guard = result.as_ref().ok().cloned().map(LabGuard::new);
    fs::remove_dir(&blocker)?;
    drop(guard);
    let err = result.expect_err("up must fail");
    assert!(
        format!("{err:#}").contains("writing the state file"),
        "{err:#}"
    );
    assert_eq!(leftovers(&name), Vec::<String>::new());
    Ok(())
}

#[test]
fn in_the_default_lab_every_pod_reaches_every_other_pod() -> anyhow::Result<()> {
    if !running_as_root("in_the_default_lab_every_pod_reaches_every_other_pod") {
        return Ok(());
    }
    let name = unique_lab_name("mesh");
    let started = Instant::now();
    let lab = LabGuard::up(&LabSpec::new(&name))?;
    let up_took = started.elapsed();
    let pods: Vec<String> = lab
        .pods()
        .map(|(node, pod)| format!("{}/{}", node.name, pod.name))
        .collect();
    assert_eq!(pods.len(), 6);
    for from in &pods {
        for to in pods.iter().filter(|to| *to != from) {
            tcp_echo(&lab, from, to)?;
        }
    }
    let started = Instant::now();
    lab.down()?;
    eprintln!(
        "lab of 3 nodes x 2 pods: up {up_took:?}, down {:?}",
        started.elapsed()
    );
    assert_eq!(leftovers(&name), Vec::<String>::new());
    Ok(())
}
