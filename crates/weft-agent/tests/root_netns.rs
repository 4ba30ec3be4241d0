//! L2 (root): the agent's logic with the real datapath, in a fresh network namespace owned by
//! the test thread (gone when the thread ends), with a veth pair standing for the node's eth0
//! and another for a pod. Skipped with a message when not root.

// Test code: an unwrap that fails is the test failing.
#![allow(clippy::unwrap_used)]

use std::{net::Ipv4Addr, process::Command, thread};

use nix::sched::{CloneFlags, unshare};
use weft_agent::{
    agent::{Agent, Settings},
    net::SystemNet,
    socket_lb::SocketLbSite,
};
use weft_api::{Attachment, Request, Response};
use weft_common::{EndpointKey, Hook};
use weft_datapath::{
    Datapath, DatapathMaps, NodeDatapath, bpffs::TempPinDir, node::attached_programs,
    running_as_root,
};
use weft_model::{ClusterConfig, Store};

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().unwrap();
    assert!(status.success(), "ip {}", args.join(" "));
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-agt-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Removes the test's temp directories, also when it panics.
struct Cleanup(Vec<std::path::PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn in_fresh_netns() {
    unshare(CloneFlags::CLONE_NEWNET).unwrap();
    ip(&["link", "set", "lo", "up"]);
    ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer",
    ]);
    ip(&["addr", "add", "198.51.100.1/24", "dev", "eth0"]);
    ip(&["link", "set", "eth0", "up"]);
    ip(&["link", "set", "eth0peer", "up"]);
    ip(&[
        "link", "add", "lxcagt1", "type", "veth", "peer", "name", "lxcagt1p",
    ]);
    ip(&["link", "set", "lxcagt1", "up"]);
    ip(&["link", "set", "lxcagt1p", "up"]);

    let pins = TempPinDir::new("weft-agt").unwrap();
    let manifests = temp_dir("manifests");
    let state = temp_dir("state");
    let _cleanup = Cleanup(vec![manifests.clone(), state.clone()]);
    let settings = Settings {
        node: "vps1".into(),
        manifests_dir: manifests,
        state_dir: state,
        external_device: "eth0".into(),
        underlay_ip: None,
        cluster: ClusterConfig::default(),
        socket_lb: SocketLbSite::default(),
    };
    let datapath = NodeDatapath::open(pins.path()).unwrap();
    let mut agent =
        Agent::start(settings, datapath, Box::new(SystemNet), Store::default()).unwrap();

    let Response::Status(status) = agent.handle(Request::Status) else {
        panic!()
    };
    assert!(status.ready, "{status:?}");
    assert_eq!(status.node_ip, Ipv4Addr::new(198, 51, 100, 1));
    assert_eq!(status.mtu, 1500 - 58);
    assert!(
        attached_programs("eth0", Hook::Xdp).unwrap().is_empty(),
        "no XDP without loadBalancer.acceleration"
    );
    assert_eq!(
        attached_programs("eth0", Hook::FromNetdev).unwrap(),
        ["from_netdev"]
    );
    assert_eq!(
        attached_programs("eth0", Hook::ToNetdev).unwrap(),
        ["to_netdev"]
    );
    assert!(agent.datapath().node().unwrap().is_configured());

    let attachment = Attachment {
        container_id: "agt1".into(),
        ifname: "eth0".into(),
    };
    let Response::Allocated(allocation) = agent.handle(Request::Allocate {
        attachment: attachment.clone(),
        pod: None,
    }) else {
        panic!()
    };
    let registered = agent.handle(Request::Register {
        attachment: attachment.clone(),
        host_ifname: "lxcagt1".into(),
        mac: "02:00:00:00:aa:01".into(),
        address: allocation.address,
    });
    assert!(
        matches!(registered, Response::Registered(_)),
        "{registered:?}"
    );
    assert_eq!(
        attached_programs("lxcagt1", Hook::FromContainer).unwrap(),
        ["from_container"]
    );
    assert_eq!(
        attached_programs("lxcagt1", Hook::ToContainer).unwrap(),
        ["to_container"]
    );
    let key = EndpointKey {
        addr: allocation.address.octets(),
    };
    let maps = DatapathMaps::from_pins(pins.path()).unwrap();
    let entry = maps.endpoints().unwrap()[&key];
    assert_eq!(entry.mac, [2, 0, 0, 0, 0xaa, 1]);
    assert_ne!(entry.ifindex, 0);

    // The pod's netns is gone before CNI DEL: its veth with it.
    ip(&["link", "del", "lxcagt1"]);
    assert_eq!(
        agent.handle(Request::Release { attachment }),
        Response::Released { released: true }
    );
    assert!(maps.endpoints().unwrap().is_empty());
    let left: Vec<_> = agent
        .datapath()
        .attachments()
        .unwrap()
        .into_iter()
        .filter(|a| a.ifname == "lxcagt1")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn the_agent_programs_a_node_and_a_pod_in_a_fresh_netns() {
    if !running_as_root("the_agent_programs_a_node_and_a_pod_in_a_fresh_netns") {
        return;
    }
    // The namespace belongs to this thread only and disappears with it.
    thread::spawn(in_fresh_netns).join().unwrap();
}
