//! L2 (root): the real `weft-cni` binary against the real kernel. Each test makes two network
//! namespaces, `weftcni-<pid>-<n>-node` (where the plugin runs, standing for the node) and
//! `…-pod` (CNI_NETNS), and a test-double agent serving the weft-api socket in a temp dir.
//! Nothing touches the host's own namespace; everything is removed on success and failure.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::{
    io::Write,
    net::Ipv4Addr,
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
};

use serde_json::{Value, json};
use weft_api::{
    AgentStatus, Allocation, ApiFailure, Attachment, EndpointRecord, Request, Response,
};

const ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 244, 7, 9);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 7, 1);
const MTU: u32 = 1400;
const CONTAINER: &str = "weftcni-l2-container";

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The test's namespaces and temp dir, removed on drop.
struct Lab {
    node: String,
    pod: String,
    dir: PathBuf,
}

impl Lab {
    /// None (after printing why) when the test cannot run here.
    fn new() -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("SKIPPED: needs root");
            return None;
        }
        for tool in ["ip", "nsenter"] {
            if Command::new(tool).arg("-V").output().is_err() {
                println!("SKIPPED: needs {tool}");
                return None;
            }
        }
        reap_stale();
        let prefix = format!(
            "weftcni-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let lab = Self {
            node: format!("{prefix}-node"),
            pod: format!("{prefix}-pod"),
            dir: std::env::temp_dir().join(&prefix),
        };
        std::fs::create_dir_all(&lab.dir).unwrap();
        for ns in [&lab.node, &lab.pod] {
            run_ok(Command::new("ip").args(["netns", "add", ns]));
        }
        Some(lab)
    }

    fn node_path(&self) -> String {
        format!("/run/netns/{}", self.node)
    }

    fn pod_path(&self) -> String {
        format!("/run/netns/{}", self.pod)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    fn config(&self) -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": "weft",
            "type": "weft-cni",
            "agentSocket": self.socket(),
        })
    }

    /// Runs the plugin in the node namespace; returns (exit success, stdout as JSON or Null).
    fn plugin(&self, command: &str, stdin: &Value) -> (bool, Value) {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", self.node_path()))
            .arg(env!("CARGO_BIN_EXE_weft-cni"))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", CONTAINER)
            .env("CNI_NETNS", self.pod_path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/opt/cni/bin")
            .env("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=l2")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let input = stdin.to_string();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = if out.stdout.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&out.stdout).unwrap()
        };
        (out.status.success(), stdout)
    }

    fn ip_json(&self, netns: &str, args: &[&str]) -> Vec<Value> {
        let out = run_ok(
            Command::new("nsenter")
                .arg(format!("--net={netns}"))
                .arg("ip")
                .arg("-json")
                .args(args),
        );
        serde_json::from_str(&out).unwrap()
    }

    fn link(&self, netns: &str, name: &str) -> Option<Value> {
        self.ip_json(netns, &["addr", "show"])
            .into_iter()
            .find(|l| l["ifname"] == name)
    }

    fn link_names(&self, netns: &str) -> Vec<String> {
        self.ip_json(netns, &["link", "show"])
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(String::from))
            .collect()
    }

    fn routes(&self, netns: &str) -> Vec<Value> {
        self.ip_json(netns, &["-4", "route", "show"])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.node, &self.pod] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes namespaces left by test processes that died before their Drop ran.
fn reap_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("weftcni-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

fn run_ok(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The test double of the agent: a fixed allocation, optionally refusing Register.
struct AgentDouble {
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    socket: PathBuf,
    thread: Option<JoinHandle<()>>,
}

impl AgentDouble {
    fn start(socket: PathBuf, refuse_register: bool) -> Self {
        let listener = UnixListener::bind(&socket).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, halt) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if halt.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let _ = weft_api::serve(&stream, |request| {
                    log.lock().unwrap().push(request.clone());
                    answer(request, refuse_register)
                });
            }
        });
        Self {
            requests,
            stop,
            socket,
            thread: Some(thread),
        }
    }

    fn ops(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| {
                serde_json::to_value(r).unwrap()["op"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }
}

impl Drop for AgentDouble {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::os::unix::net::UnixStream::connect(&self.socket);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn record(attachment: Attachment, host_ifname: Option<String>) -> EndpointRecord {
    EndpointRecord {
        attachment,
        pod: None,
        address: ADDRESS,
        prefix_len: 24,
        gateway: GATEWAY,
        mtu: MTU,
        host_ifname,
        mac: None,
        identity: 0,
    }
}

fn answer(request: Request, refuse_register: bool) -> Response {
    match request {
        Request::Allocate { .. } => Response::Allocated(Allocation {
            address: ADDRESS,
            prefix_len: 24,
            gateway: GATEWAY,
            mtu: MTU,
        }),
        Request::Register { .. } if refuse_register => Response::Error(ApiFailure {
            code: 11,
            msg: "datapath not ready".into(),
            details: "test double refuses Register".into(),
        }),
        Request::Register {
            attachment,
            host_ifname,
            ..
        } => Response::Registered(record(attachment, Some(host_ifname))),
        Request::Get { attachment } => Response::Endpoint(record(attachment, None)),
        Request::Release { .. } => Response::Released { released: true },
        Request::Gc { .. } => Response::Collected { released: vec![] },
        Request::Status => Response::Status(AgentStatus {
            node: "l2".into(),
            pod_cidr: "10.244.7.0/24".into(),
            gateway: GATEWAY,
            node_ip: Ipv4Addr::new(198, 51, 100, 1),
            mtu: MTU,
            endpoints: 0,
            attached: vec![],
            ready: true,
            north_south: String::new(),
            degraded: Vec::new(),
            lb: None,
        }),
        Request::ConntrackGc => Response::Error(ApiFailure {
            code: 999,
            msg: "not an agent".into(),
            details: "the plugin never asks this".into(),
        }),
    }
}

fn host_veth() -> String {
    weft_cni::host_ifname(&Attachment {
        container_id: CONTAINER.into(),
        ifname: "eth0".into(),
    })
}

fn has_route(routes: &[Value], dst: &str, gateway: Option<&str>, dev: &str) -> bool {
    routes
        .iter()
        .any(|r| r["dst"] == dst && r["dev"] == dev && gateway.is_none_or(|g| r["gateway"] == g))
}

#[test]
fn add_check_del_on_real_namespaces() {
    let Some(lab) = Lab::new() else { return };
    let agent = AgentDouble::start(lab.socket(), false);
    let (ok, result) = lab.plugin("ADD", &lab.config());
    assert!(ok, "ADD failed: {result}");

    // Pod side: eth0 with the /32, the MTU, up; lo up; routes via the gateway.
    let pod = lab.pod_path();
    let eth0 = lab.link(&pod, "eth0").expect("eth0 in the pod");
    assert_eq!(eth0["mtu"], MTU);
    assert!(
        eth0["flags"].as_array().unwrap().contains(&json!("UP")),
        "{eth0}"
    );
    let addr = &eth0["addr_info"][0];
    assert_eq!(
        (addr["local"].as_str(), addr["prefixlen"].as_u64()),
        (Some("10.244.7.9"), Some(32))
    );
    let lo = lab.link(&pod, "lo").unwrap();
    assert!(
        lo["flags"].as_array().unwrap().contains(&json!("UP")),
        "{lo}"
    );
    let routes = lab.routes(&pod);
    assert!(
        has_route(&routes, "default", Some("10.244.7.1"), "eth0"),
        "{routes:?}"
    );
    assert!(has_route(&routes, "10.244.7.1", None, "eth0"), "{routes:?}");

    // Node side: the lxc veth, up, same MTU, and the /32 route to the pod.
    let node = lab.node_path();
    let lxc = host_veth();
    let veth = lab
        .link(&node, &lxc)
        .expect("host veth in the node namespace");
    assert_eq!(veth["mtu"], MTU);
    assert!(
        veth["flags"].as_array().unwrap().contains(&json!("UP")),
        "{veth}"
    );
    assert!(has_route(&lab.routes(&node), "10.244.7.9", None, &lxc));

    // The result names both ends with their real MACs.
    assert_eq!(result["ips"][0]["address"], "10.244.7.9/32");
    assert_eq!(result["interfaces"][1]["mac"], eth0["address"]);
    assert_eq!(result["interfaces"][0]["mac"], veth["address"]);
    assert_eq!(result["interfaces"][1]["sandbox"], pod.as_str());

    let mut check = lab.config();
    check["prevResult"] = result.clone();
    let (ok, out) = lab.plugin("CHECK", &check);
    assert!(ok, "CHECK failed: {out}");

    let (ok, out) = lab.plugin("DEL", &check);
    assert!(ok, "DEL failed: {out}");
    assert_eq!(lab.link_names(&node), ["lo"], "host veth gone");
    assert_eq!(lab.link_names(&pod), ["lo"], "pod eth0 gone");
    assert!(!has_route(&lab.routes(&node), "10.244.7.9", None, &lxc));
    let (ok, out) = lab.plugin("DEL", &check);
    assert!(ok, "second DEL failed: {out}");
    assert_eq!(
        agent.ops(),
        ["allocate", "register", "get", "release", "release"]
    );
}

#[test]
fn a_refused_register_leaves_nothing_behind() {
    let Some(lab) = Lab::new() else { return };
    let agent = AgentDouble::start(lab.socket(), true);
    let (ok, out) = lab.plugin("ADD", &lab.config());
    assert!(!ok, "ADD must fail: {out}");
    assert_eq!(out["code"], 11, "{out}");
    assert_eq!(lab.link_names(&lab.node_path()), ["lo"]);
    assert_eq!(lab.link_names(&lab.pod_path()), ["lo"]);
    assert!(lab.routes(&lab.node_path()).is_empty());
    assert_eq!(agent.ops(), ["allocate", "register", "release"]);
}

#[test]
fn status_and_gc_reach_the_agent() {
    let Some(lab) = Lab::new() else { return };
    let agent = AgentDouble::start(lab.socket(), false);
    let (ok, out) = lab.plugin("STATUS", &lab.config());
    assert!(ok && out.is_null(), "STATUS: {out}");
    let mut gc = lab.config();
    gc["cni.dev/valid-attachments"] = json!([]);
    let (ok, out) = lab.plugin("GC", &gc);
    assert!(ok && out.is_null(), "GC: {out}");
    drop(agent);
    let (ok, out) = lab.plugin("STATUS", &lab.config());
    assert!(!ok, "STATUS with no agent must fail");
    assert_eq!(out["code"], 50, "{out}");
}
