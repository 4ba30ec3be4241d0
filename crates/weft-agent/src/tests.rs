//! L1: the agent against `FakeDatapath`, fake interfaces and temp directories. No root.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read as _, Write as _},
    net::Ipv4Addr,
    os::unix::net::UnixStream,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use weft_api::{ApiFailure, Attachment, PodRef, Request, Response};
use weft_common::{
    EndpointInfo, EndpointKey, Hook, IpcacheEntry,
    ipcache::identity::{HOST, REMOTE_NODE, UNMANAGED},
};
use weft_datapath::FakeDatapath;
use weft_model::{Acceleration, ClusterConfig, Ipv4Cidr, Store, desired, identity::pod_identity};

use crate::{
    agent::{Agent, Settings, codes},
    files::testing::TempDir,
    net::NetInfo,
    server::{ApiSocket, run},
    socket_lb::SocketLbSite,
    source::{ManifestsSource, Source},
};

/// Interfaces by name: (ifindex, MAC, MTU, IPv4).
#[derive(Clone, Default)]
struct FakeNet(BTreeMap<String, (u32, [u8; 6], u32, Option<Ipv4Addr>)>);

impl FakeNet {
    fn get(&self, ifname: &str) -> anyhow::Result<(u32, [u8; 6], u32, Option<Ipv4Addr>)> {
        self.0
            .get(ifname)
            .copied()
            .ok_or_else(|| anyhow::anyhow!("no interface {ifname}"))
    }
}

impl NetInfo for FakeNet {
    fn ifindex(&self, ifname: &str) -> anyhow::Result<u32> {
        Ok(self.get(ifname)?.0)
    }
    fn mac(&self, ifname: &str) -> anyhow::Result<[u8; 6]> {
        Ok(self.get(ifname)?.1)
    }
    fn mtu(&self, ifname: &str) -> anyhow::Result<u32> {
        Ok(self.get(ifname)?.2)
    }
    fn ipv4(&self, ifname: &str) -> anyhow::Result<Option<Ipv4Addr>> {
        Ok(self.get(ifname)?.3)
    }
}

fn fake_net() -> FakeNet {
    let mut net = FakeNet::default();
    net.0.insert(
        "eth0".into(),
        (
            2,
            [2, 0, 0, 0, 0, 2],
            1500,
            Some(Ipv4Addr::new(198, 51, 100, 1)),
        ),
    );
    for i in 1..=3u8 {
        net.0.insert(
            format!("lxc{i}"),
            (10 + u32::from(i), [2, 0, 0, 0, 0xbb, i], 1500, None),
        );
    }
    net
}

fn fake_datapath() -> FakeDatapath {
    FakeDatapath::with_interfaces(["eth0", "lxc1", "lxc2", "lxc3"])
}

struct Dirs {
    manifests: TempDir,
    state: TempDir,
}

fn dirs() -> Dirs {
    Dirs {
        manifests: TempDir::new("manifests"),
        state: TempDir::new("state"),
    }
}

fn settings(dirs: &Dirs, node: &str) -> Settings {
    Settings {
        node: node.into(),
        manifests_dir: dirs.manifests.0.clone(),
        state_dir: dirs.state.0.clone(),
        external_device: "eth0".into(),
        underlay_ip: None,
        cluster: ClusterConfig::default(),
        socket_lb: SocketLbSite::default(),
    }
}

fn start(dirs: &Dirs, datapath: FakeDatapath) -> Agent<FakeDatapath> {
    start_with(dirs, datapath, ClusterConfig::default())
}

fn start_with(dirs: &Dirs, datapath: FakeDatapath, cluster: ClusterConfig) -> Agent<FakeDatapath> {
    Agent::start(
        Settings {
            cluster,
            ..settings(dirs, "vps1")
        },
        datapath,
        Box::new(fake_net()),
        Store::default(),
    )
    .unwrap()
}

fn att(id: &str) -> Attachment {
    Attachment {
        container_id: id.into(),
        ifname: "eth0".into(),
    }
}

fn pod(name: &str) -> Option<PodRef> {
    Some(PodRef {
        namespace: "web".into(),
        name: name.into(),
    })
}

fn allocate(agent: &mut Agent<FakeDatapath>, id: &str) -> Ipv4Addr {
    match agent.handle(Request::Allocate {
        attachment: att(id),
        pod: pod(id),
    }) {
        Response::Allocated(a) => a.address,
        other => panic!("{other:?}"),
    }
}

fn register(agent: &mut Agent<FakeDatapath>, id: &str, host_ifname: &str) -> Response {
    let address = allocate(agent, id);
    agent.handle(Request::Register {
        attachment: att(id),
        host_ifname: host_ifname.into(),
        mac: "02:00:00:00:aa:01".into(),
        address,
    })
}

fn veth_hooks(ifname: &str) -> [desired::Attachment; 2] {
    [Hook::FromContainer, Hook::ToContainer].map(|hook| desired::Attachment {
        ifname: ifname.into(),
        hook,
    })
}

fn error_code(response: Response) -> u32 {
    match response {
        Response::Error(ApiFailure { code, .. }) => code,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn cidr(s: &str) -> Ipv4Cidr {
    s.parse().unwrap()
}

fn accelerated(acceleration: Acceleration) -> ClusterConfig {
    let mut cluster = ClusterConfig::default();
    cluster.load_balancer.acceleration = acceleration;
    cluster
}

fn without_native_xdp() -> FakeDatapath {
    let mut dp = fake_datapath();
    dp.without_native_xdp.insert("eth0".into());
    dp
}

#[test]
fn xdp_runs_on_the_external_device_only_with_acceleration() {
    let (d1, d2, d3) = (dirs(), dirs(), dirs());
    let native = start_with(&d1, fake_datapath(), accelerated(Acceleration::Native));
    assert!(native.is_ready());
    assert!(native.status().attached.contains(&"xdp@eth0".to_string()));

    let refused = start_with(&d2, without_native_xdp(), accelerated(Acceleration::Native));
    assert!(!refused.is_ready(), "native acceleration is required");

    let best = start_with(
        &d3,
        without_native_xdp(),
        accelerated(Acceleration::BestEffort),
    );
    assert!(best.is_ready(), "best effort runs without XDP");
    assert_eq!(
        best.status().attached,
        ["from-netdev@eth0", "to-netdev@eth0"]
    );
}

#[test]
fn the_prefilter_map_follows_the_values_with_minimal_changes() {
    let d = dirs();
    let mut datapath = fake_datapath();
    datapath.prefilter = [cidr("198.18.0.0/15"), cidr("192.0.2.0/24")].into();
    let mut cluster = ClusterConfig::default();
    cluster.prefilter.cidrs = [cidr("203.0.113.0/24"), cidr("192.0.2.0/24")].into();
    let mut agent = start_with(&d, datapath, cluster);
    assert_eq!(
        agent.datapath().prefilter,
        [cidr("192.0.2.0/24"), cidr("203.0.113.0/24")].into()
    );
    let changes: Vec<&String> = (agent.datapath().log.iter())
        .filter(|l| l.contains("prefilter"))
        .collect();
    assert_eq!(
        changes,
        [
            "delete prefilter 198.18.0.0/15",
            "put prefilter 203.0.113.0/24"
        ],
        "the prefix already in place is not rewritten"
    );
    let again = agent.reconcile();
    assert_eq!((again.prefilter_puts, again.prefilter_deletes), (0, 0));
    assert!(again.errors.is_empty(), "{:?}", again.errors);
}

#[test]
fn start_programs_the_node_and_publishes_its_weftnode() {
    let dirs = dirs();
    let agent = start(&dirs, fake_datapath());
    assert!(agent.is_ready());
    let node = agent.datapath().node;
    assert_eq!(Ipv4Addr::from(node.ipv4), Ipv4Addr::new(198, 51, 100, 1));
    assert_eq!(node.external_ifindex, 2);
    assert_eq!(node.vni, weft_common::geneve::GENEVE_VNI);
    assert_eq!((node.snat_port_min, node.snat_port_max), (32768, 65535));
    assert!(node.masquerade());
    let status = agent.status();
    assert_eq!(status.pod_cidr, "10.42.0.0/24");
    assert_eq!(status.gateway, Ipv4Addr::new(10, 42, 0, 1));
    assert_eq!(status.mtu, 1500 - 58);
    assert_eq!(status.attached, ["from-netdev@eth0", "to-netdev@eth0"]);
    let weftnode = fs::read_to_string(dirs.manifests.0.join("weftnode-vps1.yaml")).unwrap();
    let store = Store::from_manifests([("weftnode-vps1.yaml", weftnode.as_str())]).unwrap();
    assert_eq!(store.weft_nodes["vps1"].spec.pod_cidr, cidr("10.42.0.0/24"));
}

#[test]
fn an_agent_whose_device_cannot_be_attached_asks_the_plugin_to_retry() {
    let dirs = dirs();
    let mut agent = start(&dirs, FakeDatapath::with_interfaces(["lxc1"]));
    assert!(!agent.is_ready());
    assert!(!agent.status().ready);
    let code = error_code(agent.handle(Request::Allocate {
        attachment: att("c1"),
        pod: None,
    }));
    assert_eq!(code, codes::TRY_AGAIN_LATER);
    // Level-triggered: once the device exists the next pass makes the agent ready.
    agent.datapath_mut().interfaces.insert("eth0".into());
    agent.reconcile();
    assert!(agent.is_ready());
}

#[test]
fn allocate_register_release_program_and_clear_the_datapath() {
    let dirs = dirs();
    let mut agent = start(&dirs, fake_datapath());
    let Response::Allocated(allocation) = agent.handle(Request::Allocate {
        attachment: att("c1"),
        pod: pod("web-1"),
    }) else {
        panic!()
    };
    assert_eq!(allocation.address, Ipv4Addr::new(10, 42, 0, 10));
    assert_eq!(
        (allocation.prefix_len, allocation.gateway, allocation.mtu),
        (24, Ipv4Addr::new(10, 42, 0, 1), 1442)
    );
    let again = agent.handle(Request::Allocate {
        attachment: att("c1"),
        pod: pod("web-1"),
    });
    assert_eq!(again, Response::Allocated(allocation.clone()));

    let Response::Registered(record) = agent.handle(Request::Register {
        attachment: att("c1"),
        host_ifname: "lxc1".into(),
        mac: "02:00:00:00:AA:01".into(),
        address: allocation.address,
    }) else {
        panic!()
    };
    let identity = pod_identity("web", &BTreeMap::new());
    assert_eq!(record.identity, identity);
    assert_eq!(record.mac.as_deref(), Some("02:00:00:00:aa:01"));
    let key = EndpointKey {
        addr: [10, 42, 0, 10],
    };
    let entry = agent.datapath().endpoints[&key];
    assert_eq!(
        entry,
        EndpointInfo {
            ifindex: 11,
            identity,
            mac: [2, 0, 0, 0, 0xaa, 1],
            host_mac: [2, 0, 0, 0, 0xbb, 1],
            _pad: 0
        }
    );
    for a in veth_hooks("lxc1") {
        assert!(agent.datapath().attached.contains(&a), "{a:?}");
    }
    let file = dirs.manifests.0.join("weftendpoint-vps1-c1.yaml");
    let text = fs::read_to_string(&file).unwrap();
    let store = Store::from_manifests([("e.yaml", text.as_str())]).unwrap();
    let ep = &store.weft_endpoints[&("web".to_string(), "vps1-c1".to_string())];
    assert_eq!(
        (ep.spec.ipv4, ep.spec.identity, ep.spec.pod_name.as_str()),
        (allocation.address, identity, "web-1")
    );
    assert!(matches!(
        agent.handle(Request::Get {
            attachment: att("c1")
        }),
        Response::Endpoint(r) if r.host_ifname.as_deref() == Some("lxc1")
    ));

    // The veth is gone already (the runtime deleted the netns): release still succeeds.
    agent.datapath_mut().interfaces.remove("lxc1");
    assert_eq!(
        agent.handle(Request::Release {
            attachment: att("c1")
        }),
        Response::Released { released: true }
    );
    assert!(agent.datapath().endpoints.is_empty());
    for a in veth_hooks("lxc1") {
        assert!(!agent.datapath().attached.contains(&a));
    }
    assert!(!file.exists());
    assert_eq!(
        agent.handle(Request::Release {
            attachment: att("c1")
        }),
        Response::Released { released: false }
    );
    assert_eq!(
        error_code(agent.handle(Request::Get {
            attachment: att("c1")
        })),
        codes::UNKNOWN_CONTAINER
    );
    assert_eq!(allocate(&mut agent, "c2"), Ipv4Addr::new(10, 42, 0, 10));
}

#[test]
fn bad_registrations_are_refused_and_leave_nothing_behind() {
    let dirs = dirs();
    let mut agent = start(&dirs, fake_datapath());
    let before = agent.datapath().log.len();
    let unknown = agent.handle(Request::Register {
        attachment: att("nope"),
        host_ifname: "lxc1".into(),
        mac: "02:00:00:00:aa:01".into(),
        address: Ipv4Addr::new(10, 42, 0, 10),
    });
    assert_eq!(error_code(unknown), codes::UNKNOWN_CONTAINER);
    let address = allocate(&mut agent, "c1");
    let bad_mac = agent.handle(Request::Register {
        attachment: att("c1"),
        host_ifname: "lxc1".into(),
        mac: "02:00".into(),
        address,
    });
    assert_eq!(error_code(bad_mac), codes::INVALID_REQUEST);
    let no_such_if = agent.handle(Request::Register {
        attachment: att("c1"),
        host_ifname: "lxc9".into(),
        mac: "02:00:00:00:aa:01".into(),
        address,
    });
    assert_eq!(error_code(no_such_if), codes::INVALID_REQUEST);
    // The interface resolves but the datapath refuses it: everything is rolled back.
    agent.datapath_mut().interfaces.remove("lxc2");
    let refused = agent.handle(Request::Register {
        attachment: att("c1"),
        host_ifname: "lxc2".into(),
        mac: "02:00:00:00:aa:01".into(),
        address,
    });
    assert_eq!(error_code(refused), codes::AGENT_FAILURE);
    assert!(agent.datapath().endpoints.is_empty());
    assert_eq!(agent.datapath().attached.len(), 2, "only eth0's programs");
    assert!(!dirs.manifests.0.join("weftendpoint-vps1-c1.yaml").exists());
    assert!(agent.datapath().log.len() > before);
    assert_eq!(agent.status().endpoints, 0);
}

#[test]
fn a_restarted_agent_keeps_every_address_and_reprograms_its_endpoints() {
    let dirs = dirs();
    let (a1, a2) = {
        let mut agent = start(&dirs, fake_datapath());
        assert!(matches!(
            register(&mut agent, "c1", "lxc1"),
            Response::Registered(_)
        ));
        (allocate(&mut agent, "c1"), allocate(&mut agent, "c2"))
    };
    // A new process with a datapath that lost its state (worst case): the agent rebuilds it.
    let mut agent = start(&dirs, fake_datapath());
    assert_eq!(agent.node_cidr(), cidr("10.42.0.0/24"));
    assert_eq!(allocate(&mut agent, "c1"), a1);
    assert_eq!(allocate(&mut agent, "c2"), a2);
    assert_eq!(allocate(&mut agent, "c3"), Ipv4Addr::new(10, 42, 0, 12));
    assert!(
        agent
            .datapath()
            .endpoints
            .contains_key(&EndpointKey { addr: a1.octets() })
    );
    for a in veth_hooks("lxc1") {
        assert!(agent.datapath().attached.contains(&a));
    }
    assert_eq!(agent.status().endpoints, 1);
}

#[test]
fn two_agents_on_one_manifests_dir_claim_distinct_cidrs() {
    let shared = TempDir::new("shared");
    let results: Vec<Ipv4Cidr> = thread::scope(|s| {
        let handles: Vec<_> = ["vps1", "vps2"]
            .into_iter()
            .map(|node| {
                let manifests = shared.0.clone();
                s.spawn(move || {
                    let state = TempDir::new(node);
                    let settings = Settings {
                        node: node.into(),
                        manifests_dir: manifests,
                        state_dir: state.0.clone(),
                        external_device: "eth0".into(),
                        underlay_ip: None,
                        cluster: ClusterConfig::default(),
                        socket_lb: SocketLbSite::default(),
                    };
                    Agent::start(
                        settings,
                        fake_datapath(),
                        Box::new(fake_net()),
                        Store::default(),
                    )
                    .unwrap()
                    .node_cidr()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_ne!(results[0], results[1]);
    let mut source = ManifestsSource::new(shared.0.clone());
    let store = source.poll().unwrap().unwrap();
    assert_eq!(store.weft_nodes.len(), 2);
}

const VPS2: &str = "apiVersion: weft.io/v1alpha1\nkind: WeftNode\nmetadata: {name: vps2}\nspec: {podCIDR: 10.42.5.0/24, underlayIP: 198.51.100.2}\n";
const VPS2_POD: &str = "apiVersion: weft.io/v1alpha1\nkind: WeftEndpoint\nmetadata: {name: vps2-x, namespace: web}\nspec: {node: vps2, podName: x, containerID: x, interface: eth0, ipv4: 10.42.5.10, identity: 5000}\n";

fn entry(identity: u32, tunnel: [u8; 4]) -> IpcacheEntry {
    IpcacheEntry {
        identity,
        tunnel_endpoint: tunnel,
    }
}

#[test]
fn the_ipcache_follows_the_manifests_with_minimal_changes() {
    let dirs = dirs();
    let mut agent = start(&dirs, fake_datapath());
    assert!(matches!(
        register(&mut agent, "c1", "lxc1"),
        Response::Registered(_)
    ));
    fs::write(dirs.manifests.0.join("vps2.yaml"), VPS2).unwrap();
    fs::write(dirs.manifests.0.join("vps2-x.yaml"), VPS2_POD).unwrap();
    let mut source = ManifestsSource::new(dirs.manifests.0.clone());
    let report = agent.update_store(source.poll().unwrap().unwrap());
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let local_identity = pod_identity("web", &BTreeMap::new());
    let want = BTreeMap::from([
        (cidr("198.51.100.1/32"), entry(HOST, [0; 4])),
        (cidr("198.51.100.2/32"), entry(REMOTE_NODE, [0; 4])),
        (cidr("10.42.5.0/24"), entry(UNMANAGED, [198, 51, 100, 2])),
        (cidr("10.42.5.10/32"), entry(5000, [198, 51, 100, 2])),
        (cidr("10.42.0.10/32"), entry(local_identity, [0; 4])),
    ]);
    assert_eq!(agent.datapath().ipcache, want);
    assert_eq!(report.ipcache_puts, 5);

    let log_len = agent.datapath().log.len();
    let again = agent.reconcile();
    assert!(!again.changed(), "{again:?}");
    assert_eq!(agent.datapath().log.len(), log_len, "nothing rewritten");

    fs::remove_file(dirs.manifests.0.join("vps2-x.yaml")).unwrap();
    let report = agent.update_store(source.poll().unwrap().unwrap());
    assert_eq!((report.ipcache_puts, report.ipcache_deletes), (0, 1));
    assert!(
        !agent
            .datapath()
            .ipcache
            .contains_key(&cidr("10.42.5.10/32"))
    );
}

#[test]
fn labels_of_the_pod_decide_the_identity_and_its_changes_reach_map_and_manifest() {
    let dirs = dirs();
    let mut agent = start(&dirs, fake_datapath());
    assert!(matches!(
        register(&mut agent, "c1", "lxc1"),
        Response::Registered(_)
    ));
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: c1, namespace: web, labels: {app: api}}\nspec: {nodeName: vps1}\n";
    fs::write(dirs.manifests.0.join("pod.yaml"), pod).unwrap();
    let mut source = ManifestsSource::new(dirs.manifests.0.clone());
    agent.update_store(source.poll().unwrap().unwrap());
    let labels = BTreeMap::from([("app".to_string(), "api".to_string())]);
    let identity = pod_identity("web", &labels);
    let key = EndpointKey {
        addr: [10, 42, 0, 10],
    };
    assert_eq!(agent.datapath().endpoints[&key].identity, identity);
    let text = fs::read_to_string(dirs.manifests.0.join("weftendpoint-vps1-c1.yaml")).unwrap();
    assert!(text.contains(&format!("identity: {identity}")), "{text}");
}

#[test]
fn reconcile_restores_missing_links_and_removes_foreign_endpoint_entries() {
    let dirs = dirs();
    let mut agent = start(&dirs, fake_datapath());
    assert!(matches!(
        register(&mut agent, "c1", "lxc1"),
        Response::Registered(_)
    ));
    let [from, _] = veth_hooks("lxc1");
    agent.datapath_mut().attached.remove(&from);
    let stray = EndpointKey {
        addr: [10, 42, 0, 99],
    };
    agent
        .datapath_mut()
        .endpoints
        .insert(stray, EndpointInfo::default());
    let stray_link = veth_hooks("lxc3")[0].clone();
    agent.datapath_mut().attached.insert(stray_link.clone());
    let stray_file = dirs.manifests.0.join("weftendpoint-vps1-gone.yaml");
    fs::write(&stray_file, VPS2_POD).unwrap();

    let report = agent.reconcile();
    assert_eq!(report.attached, ["from-container@lxc1"]);
    assert_eq!(report.detached, ["from-container@lxc3"]);
    assert_eq!(report.endpoint_deletes, 1);
    assert!(!agent.datapath().endpoints.contains_key(&stray));
    assert!(!agent.datapath().attached.contains(&stray_link));
    assert!(!stray_file.exists());
    fs::remove_file(dirs.manifests.0.join("weftnode-vps1.yaml")).unwrap();
    agent.reconcile();
    assert!(dirs.manifests.0.join("weftnode-vps1.yaml").exists());
    assert!(dirs.manifests.0.join("weftendpoint-vps1-c1.yaml").exists());
}

#[test]
fn gc_releases_everything_not_kept() {
    let dirs = dirs();
    let mut agent = start(&dirs, fake_datapath());
    register(&mut agent, "c1", "lxc1");
    register(&mut agent, "c2", "lxc2");
    allocate(&mut agent, "c3");
    let Response::Collected { released } = agent.handle(Request::Gc {
        keep: vec![att("c2")],
    }) else {
        panic!()
    };
    assert_eq!(released, [att("c1"), att("c3")]);
    assert_eq!(agent.status().endpoints, 1);
    assert_eq!(agent.datapath().endpoints.len(), 1);
    assert!(!agent.datapath().attached.contains(&veth_hooks("lxc1")[0]));
    assert!(agent.datapath().attached.contains(&veth_hooks("lxc2")[0]));
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

fn call(socket: &Path, request: Request) -> Response {
    weft_api::call(socket, &request).unwrap()
}

#[test]
fn the_loop_serves_the_socket_follows_the_source_and_survives_a_bad_manifest() {
    let dirs = dirs();
    let run_dir = TempDir::new("run");
    let socket_path = run_dir.0.join("sub/agent.sock");
    fs::create_dir_all(socket_path.parent().unwrap()).unwrap();
    fs::write(&socket_path, "stale").unwrap();
    let stop = AtomicBool::new(false);
    let manifests = dirs.manifests.0.clone();
    thread::scope(|s| {
        let runner = s.spawn(|| {
            let mut agent = start(&dirs, fake_datapath());
            let mut source = ManifestsSource::new(manifests.clone());
            let socket = ApiSocket::bind(&socket_path).unwrap();
            run(&mut agent, &mut source, &socket, &stop);
            drop(socket);
            agent.datapath().ipcache.clone()
        });
        wait_for("the socket", || {
            weft_api::call(&socket_path, &Request::Status).is_ok()
        });
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(&socket_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let Response::Status(status) = call(&socket_path, Request::Status) else {
            panic!()
        };
        assert!(status.ready);

        fs::write(manifests.join("vps2.yaml"), VPS2).unwrap();
        // Several polls (100 ms each) pass: vps2 is in the store and the ipcache.
        thread::sleep(Duration::from_millis(1000));
        fs::write(manifests.join("broken.yaml"), "kind: [").unwrap();
        fs::remove_file(manifests.join("vps2.yaml")).unwrap();
        thread::sleep(Duration::from_millis(800));
        assert!(matches!(
            call(
                &socket_path,
                Request::Allocate {
                    attachment: att("c1"),
                    pod: None
                }
            ),
            Response::Allocated(_)
        ));
        stop.store(true, Ordering::Relaxed);
        let ipcache = runner.join().unwrap();
        assert!(
            ipcache.contains_key(&cidr("10.42.5.0/24")),
            "a malformed manifest changes nothing: vps2 stays routed, {ipcache:?}"
        );
    });
    assert!(!socket_path.exists(), "the socket is removed on stop");
}

#[test]
fn a_conntrack_gc_request_runs_a_pass_now() {
    let dirs = dirs();
    let mut datapath = fake_datapath();
    let expired = weft_common::CtEntry4 {
        expires_s: 1,
        ..weft_common::CtEntry4::default()
    };
    let live = weft_common::CtEntry4 {
        expires_s: u32::MAX,
        ..weft_common::CtEntry4::default()
    };
    let key = |sport| weft_common::CtKey4 {
        sport,
        ..weft_common::CtKey4::default()
    };
    datapath.ct.insert(key(1), expired);
    datapath.ct.insert(key(2), live);
    let mut agent = start(&dirs, datapath);
    let Response::ConntrackCollected(summary) = agent.handle(Request::ConntrackGc) else {
        panic!("not a GC summary");
    };
    assert_eq!((summary.flows, summary.flows_deleted), (2, 1));
    assert!(summary.next_in_s >= 10);
    let left: Vec<u16> = agent.datapath().ct.keys().map(|k| k.sport).collect();
    assert_eq!(left, [2]);
}

#[test]
fn an_external_local_service_gets_its_health_check_port_answered() {
    let dirs = dirs();
    let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut agent = Agent::start(
        Settings {
            underlay_ip: Some(Ipv4Addr::LOCALHOST),
            ..settings(&dirs, "vps1")
        },
        fake_datapath(),
        Box::new(fake_net()),
        Store::default(),
    )
    .unwrap();
    let manifests = format!(
        "apiVersion: weft.io/v1alpha1
kind: WeftNode
metadata: {{name: vps1}}
spec: {{podCIDR: 10.42.0.0/24, underlayIP: 127.0.0.1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  type: NodePort
  clusterIP: 10.43.0.9
  externalTrafficPolicy: Local
  healthCheckNodePort: {port}
  ports:
  - {{port: 80, nodePort: 30080, protocol: TCP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {{port: 8080, protocol: TCP}}
endpoints:
- addresses: [10.42.0.10]
  nodeName: vps1
  conditions: {{ready: true}}
"
    );
    let store = Store::from_manifests([("all.yaml", manifests.as_str())]).unwrap();
    let report = agent.update_store(store);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let mut stream = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("\"localEndpoints\":1"), "{text}");
}

/// Service `default/name` at `ip`, port 80/TCP, with ready endpoints `backends` at 8080.
fn service_yaml(name: &str, ip: &str, backends: &[&str]) -> String {
    let endpoints: String = backends
        .iter()
        .map(|b| format!("- addresses: [{b}]\n  conditions: {{ready: true}}\n"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  clusterIP: {ip}\n  ports:\n  - {{port: 80, protocol: TCP}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  \
         namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\n\
         addressType: IPv4\nports:\n- {{port: 8080, protocol: TCP}}\nendpoints:\n{endpoints}"
    )
}

fn status_of(agent: &mut Agent<FakeDatapath>) -> weft_api::AgentStatus {
    match agent.handle(Request::Status) {
        Response::Status(status) => status,
        other => panic!("not a status: {other:?}"),
    }
}

#[test]
fn the_status_is_degraded_with_the_reason_while_services_are_refused() {
    let dirs = dirs();
    let mut datapath = fake_datapath();
    datapath.lb_capacity = weft_model::lb_capacity::LbCapacity {
        services: 5,
        ..weft_model::lb_capacity::LbCapacity::for_lb_map_max(64)
    };
    let mut agent = start(&dirs, datapath);
    let status = status_of(&mut agent);
    assert!(!status.is_degraded(), "{:?}", status.degraded);
    let a = service_yaml("a", "10.43.0.10", &["10.42.1.10"]);
    let b = service_yaml("b", "10.43.0.20", &["10.42.1.20", "10.42.1.21"]);
    let c = service_yaml("c", "10.43.0.30", &["10.42.1.30"]);
    let store = |docs: &[&String]| {
        let text = docs
            .iter()
            .map(|d| d.as_str())
            .collect::<Vec<_>>()
            .join("---\n");
        Store::from_manifests([("svc.yaml", text.as_str())]).unwrap()
    };
    let report = agent.update_store(store(&[&a, &b, &c]));
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    let status = status_of(&mut agent);
    assert!(
        status.ready,
        "refusing Services does not make the node unready"
    );
    assert_eq!(status.degraded.len(), 1, "{:?}", status.degraded);
    assert_eq!(
        status.degraded[0].cause,
        weft_api::DegradedCause::LbMapsFull
    );
    assert_eq!(
        status.degraded[0].reason,
        "1 of 3 Services are not programmed (none of their entries is written): \
         weft_lb4_services has room for 5 entries, the Services need 7; \
         bpf.lbMapMax 16 would hold them all"
    );
    let lb = status.lb.expect("the LB maps in the status");
    assert_eq!((lb.services, lb.frontends, lb.refused), (2, 2, 1));
    assert_eq!(lb.refused_first[0].service, "default/c");
    assert_eq!(lb.refused_first[0].map, "weft_lb4_services");
    assert_eq!(lb.lb_map_max, 65_536);
    let services = &lb.maps[0];
    assert_eq!((services.used, services.room, services.wanted), (5, 5, 7));
    let addresses: std::collections::BTreeSet<[u8; 4]> = (agent.datapath().lb_services.keys())
        .map(|k| k.address)
        .collect();
    assert_eq!(addresses, [[10, 43, 0, 10], [10, 43, 0, 20]].into());

    // b goes: c fits, and the agent is Ok again.
    agent.update_store(store(&[&a, &c]));
    let status = status_of(&mut agent);
    assert!(!status.is_degraded(), "{:?}", status.degraded);
    assert_eq!(status.lb.map(|lb| (lb.services, lb.refused)), Some((2, 0)));
    assert!(
        agent
            .datapath()
            .lb_services
            .keys()
            .any(|k| k.address == [10, 43, 0, 30])
    );
}

#[test]
fn a_failed_reconcile_step_makes_the_agent_degraded_until_it_succeeds() {
    let dirs = dirs();
    let mut agent = start(&dirs, fake_datapath());
    // A registered pod's veth vanishes: attaching its programs fails.
    allocate(&mut agent, "c1");
    register(&mut agent, "c1", "lxc1");
    agent.datapath_mut().attached.clear();
    agent.datapath_mut().interfaces.remove("lxc1");
    agent.reconcile();
    let status = status_of(&mut agent);
    assert!(
        status
            .degraded
            .iter()
            .any(|d| d.cause == weft_api::DegradedCause::Reconcile && d.reason.contains("lxc1")),
        "{:?}",
        status.degraded
    );
    agent.datapath_mut().interfaces.insert("lxc1".into());
    agent.reconcile();
    assert!(!status_of(&mut agent).is_degraded());
}

/// A NodePort Service with `externalTrafficPolicy: Local` whose health-check port is `port` on
/// the node's address, with a ready endpoint on vps1.
fn health_checked_service(port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  type: NodePort
  clusterIP: 10.43.0.9
  externalTrafficPolicy: Local
  healthCheckNodePort: {port}
  ports:
  - {{port: 80, nodePort: 30080, protocol: TCP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {{port: 8080, protocol: TCP}}
endpoints:
- addresses: [10.42.0.10]
  nodeName: vps1
  conditions: {{ready: true}}
"
    )
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The agent's loop on a socket of its own, with the node at 127.0.0.1, until `stop`.
fn run_agent(dirs: &Dirs, socket: &Path, stop: &AtomicBool) -> Agent<FakeDatapath> {
    let mut agent = Agent::start(
        Settings {
            underlay_ip: Some(Ipv4Addr::LOCALHOST),
            ..settings(dirs, "vps1")
        },
        fake_datapath(),
        Box::new(fake_net()),
        Store::default(),
    )
    .unwrap();
    let mut source = ManifestsSource::new(dirs.manifests.0.clone());
    let api = ApiSocket::bind(socket).unwrap();
    run(&mut agent, &mut source, &api, stop);
    agent
}

/// Stops the loop when dropped, also when an assertion fails (a scope waits for its threads).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn lb_services(socket: &Path) -> Option<usize> {
    match weft_api::call(socket, &Request::Status) {
        Ok(Response::Status(status)) => status.lb.map(|lb| lb.services),
        _ => None,
    }
}

#[test]
fn idle_api_clients_delay_neither_status_nor_reconcile() {
    let dirs = dirs();
    let run_dir = TempDir::new("run");
    let socket = run_dir.0.join("agent.sock");
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        let runner = s.spawn(|| run_agent(&dirs, &socket, &stop));
        let stopper = StopOnDrop(&stop);
        wait_for("the socket", || {
            weft_api::call(&socket, &Request::Status).is_ok()
        });
        // Clients that connect and say nothing, and one that stops half-way through its
        // request: each would hold a one-request-at-a-time server for its whole timeout.
        let idle: Vec<UnixStream> = (0..6)
            .map(|_| UnixStream::connect(&socket).unwrap())
            .collect();
        let mut half = UnixStream::connect(&socket).unwrap();
        half.write_all(b"{\"op\":").unwrap();
        thread::sleep(Duration::from_millis(300));

        let status = weft_api::call(&socket, &Request::Status);
        assert!(
            matches!(status, Ok(Response::Status(_))),
            "status with idle clients connected: {status:?}"
        );
        fs::write(
            dirs.manifests.0.join("svc.yaml"),
            service_yaml("web", "10.43.0.10", &["10.42.0.10"]),
        )
        .unwrap();
        wait_for("the new Service to be programmed", || {
            lb_services(&socket) == Some(1)
        });
        drop((idle, half, stopper));
        let agent = runner.join().unwrap();
        assert!(
            agent
                .datapath()
                .lb_services
                .keys()
                .any(|k| k.address == [10, 43, 0, 10])
        );
    });
}

#[test]
fn idle_health_check_clients_stall_neither_the_agent_nor_other_checks() {
    let dirs = dirs();
    let run_dir = TempDir::new("run");
    let socket = run_dir.0.join("agent.sock");
    let port = free_tcp_port();
    fs::write(
        dirs.manifests.0.join("web.yaml"),
        health_checked_service(port),
    )
    .unwrap();
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        let runner = s.spawn(|| run_agent(&dirs, &socket, &stop));
        let stopper = StopOnDrop(&stop);
        wait_for("the health-check port", || {
            std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
        });
        let idle: Vec<std::net::TcpStream> = (0..60)
            .map(|_| std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap())
            .collect();
        thread::sleep(Duration::from_millis(300));

        let status = weft_api::call(&socket, &Request::Status);
        assert!(
            matches!(status, Ok(Response::Status(_))),
            "status with idle health-check clients connected: {status:?}"
        );
        let mut check = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        check
            .set_read_timeout(Some(weft_api::CLIENT_TIMEOUT))
            .unwrap();
        check.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut text = String::new();
        check.read_to_string(&mut text).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        drop((idle, stopper));
        runner.join().unwrap();
    });
}
