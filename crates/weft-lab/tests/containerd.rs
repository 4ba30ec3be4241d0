//! L3: the CNI plugin driven by a real runtime. A private containerd on node vps1 runs a busybox
//! image (built here from busybox-static) with `ctr run --cni`; containerd's CNI library calls
//! weft-cni, chained with the reference `tuning` plugin, from the node's namespace. A pod on
//! vps2 (across the tunnel) and the node vps1 exchange bytes with the container; deleting the
//! container through ctr runs CNI DEL, which frees its veth and address. Needs root and
//! containerd (scripts/bootstrap installs it).

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
};

use weft_api::{Attachment, EndpointRecord, Request, Response};
use weft_lab::{
    LabSpec,
    containerd::{self, CHAINED_SYSCTL, Container, Containerd},
    leftovers,
    netns::{run_in, run_in_path},
    runtime::{self, Binaries, PodRequest},
    testing::{LabGuard, running_as_root, unique_lab_name},
    traffic,
};

const ECHO_PORT: u16 = 8080;

/// A TCP echo server: busybox nc forks `cat` for every connection (`-ll` keeps listening).
const ECHO_SERVER: &[&str] = &["nc", "-ll", "-p", "8080", "-e", "cat"];

fn attachment(container: &Container) -> Attachment {
    Attachment {
        container_id: container.cni_container_id.clone(),
        ifname: "eth0".into(),
    }
}

fn agent_call(lab: &str, node: &str, request: &Request) -> Response {
    weft_api::call(&runtime::agent_socket(lab, node), request)
        .unwrap_or_else(|e| panic!("asking the agent of {node}: {e}"))
}

fn endpoint(lab: &str, container: &Container) -> EndpointRecord {
    match agent_call(
        lab,
        "vps1",
        &Request::Get {
            attachment: attachment(container),
        },
    ) {
        Response::Endpoint(record) => record,
        other => panic!("the agent does not have {container:?}: {other:?}"),
    }
}

fn pod_cidr(lab: &str, node: &str) -> (Ipv4Addr, u8) {
    let Response::Status(status) = agent_call(lab, node, &Request::Status) else {
        panic!("no status from the agent of {node}");
    };
    let (net, len) = status
        .pod_cidr
        .split_once('/')
        .unwrap_or_else(|| panic!("pod CIDR {}", status.pod_cidr));
    (
        net.parse().expect("CIDR address"),
        len.parse().expect("CIDR length"),
    )
}

fn in_cidr(address: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(address) & mask == u32::from(net) & mask
}

/// The IPv4 addresses of `ifname` in the namespace at `netns`.
fn addresses(netns: &Path, ifname: &str) -> Vec<Ipv4Addr> {
    run_in_path(netns, || {
        nix::ifaddrs::getifaddrs()
            .expect("getifaddrs")
            .filter(|a| a.interface_name == ifname)
            .filter_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
            .collect()
    })
    .expect("enter the container's netns")
}

fn sysctl_in(netns: &Path, key: &str) -> String {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    run_in_path(netns, || std::fs::read_to_string(&path))
        .expect("enter the container's netns")
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
        .trim()
        .to_string()
}

/// Whether interface `ifname` exists in named namespace `netns`.
fn link_exists(netns: &str, ifname: &str) -> bool {
    let name = std::ffi::CString::new(ifname).expect("interface name");
    // SAFETY: a valid NUL-terminated name.
    run_in(
        netns,
        || unsafe { libc::if_nametoindex(name.as_ptr()) } != 0,
    )
    .expect("enter netns")
}

#[test]
fn ctr_run_with_cni_networks_a_container_through_weft_cni() {
    let name = "ctr_run_with_cni_networks_a_container_through_weft_cni";
    if !running_as_root(name) {
        return;
    }
    let missing = containerd::missing_tools();
    if !missing.is_empty() {
        println!("SKIPPED (needs containerd): {name}: {}", missing.join(", "));
        return;
    }
    let bins = Binaries::locate().expect("weft-agent and weft-cni are built");
    let spec = LabSpec::with_size(unique_lab_name("ctr"), 2, 0);
    let lab = LabGuard::new(runtime::up_cluster(&spec, &bins, None).expect("cluster up"));
    let client = runtime::run_pod(
        &lab,
        &bins,
        &PodRequest {
            namespace: "default".into(),
            name: "client".into(),
            node: "vps2".into(),
            containers: vec![weft_model::k8s::Container {
                name: "main".into(),
                command: vec!["sleep".into(), "3600".into()],
                args: vec![],
                ports: vec![],
                env: vec![],
            }],
        },
    )
    .expect("client pod on vps2");
    let node1 = lab.node("vps1").expect("vps1").clone();

    // Declared after the lab, so dropped (containers deleted, daemon stopped) before it.
    let mut ctr = Containerd::start(&lab, &node1, &bins).expect("containerd on vps1");
    let image = ctr.import_busybox().expect("import the busybox image");
    let web = ctr.run("web", &image, ECHO_SERVER).expect("ctr run --cni");

    // The plugin registered the container with vps1's agent, with an address of vps1's CIDR,
    // and that address is on the container's eth0.
    let record = endpoint(&lab.name, &web);
    assert!(
        in_cidr(record.address, pod_cidr(&lab.name, "vps1")),
        "{record:?}"
    );
    assert_eq!(addresses(&web.netns_path(), "eth0"), vec![record.address]);
    let host_veth = record.host_ifname.clone().expect("registered host veth");
    assert_eq!(host_veth, weft_cni::host_ifname(&attachment(&web)));
    assert!(
        link_exists(&node1.netns, &host_veth),
        "no {host_veth} on vps1"
    );
    // The chained plugin ran in the container's namespace after weft-cni.
    let (key, value) = CHAINED_SYSCTL;
    assert_eq!(sysctl_in(&web.netns_path(), key), value);

    // Bytes both ways over one connection: from a pod of vps2 across the tunnel, and from vps1
    // itself through the host route the plugin installed.
    let server = SocketAddrV4::new(record.address, ECHO_PORT);
    traffic::tcp_round_trip(&client.netns, server, b"from a pod of vps2")
        .expect("pod on vps2 -> container on vps1");
    traffic::tcp_round_trip(&node1.netns, server, b"from vps1")
        .expect("node vps1 -> its container");

    // Deleting the container through ctr runs CNI DEL: the agent forgets the attachment (only
    // DEL releases it) and the host veth is gone.
    ctr.delete("web").expect("delete the container through ctr");
    match agent_call(
        &lab.name,
        "vps1",
        &Request::Get {
            attachment: attachment(&web),
        },
    ) {
        Response::Error(failure) => assert_eq!(failure.code, 3, "{failure:?}"),
        other => panic!("the attachment survived CNI DEL: {other:?}"),
    }
    let Response::Status(status) = agent_call(&lab.name, "vps1", &Request::Status) else {
        panic!("no status from vps1");
    };
    assert_eq!(status.endpoints, 0, "{status:?}");
    assert!(
        !link_exists(&node1.netns, &host_veth),
        "{host_veth} is left"
    );

    ctr.stop().expect("stop containerd");
    assert!(!containerd::runtime_dir(&lab.name, "vps1").exists());
    let lab_name = lab.name.clone();
    lab.down().expect("lab down");
    assert_eq!(leftovers(&lab_name), Vec::<String>::new());
}
