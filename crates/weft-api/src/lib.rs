//! The agent's local API, spoken over a unix socket by the CNI plugin and the CLI.
//!
//! Framing: the client connects, writes one JSON [`Request`] and a newline, and reads one JSON
//! [`Response`] and a newline; then the connection is closed. One request per connection keeps
//! the server free of session state.

use std::{
    io::{BufRead, BufReader, ErrorKind, Read as _, Write},
    net::Ipv4Addr,
    os::unix::net::UnixStream,
    path::Path,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// Where a node's agent listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/weft/agent.sock";

/// How long a client waits for the agent before giving up.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A pod interface as the container runtime names it (CNI's container ID and interface name).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

/// The Kubernetes pod an attachment belongs to, when the runtime says (CNI_ARGS
/// `K8S_POD_NAMESPACE` / `K8S_POD_NAME`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Agent health and a summary of the node.
    Status,
    /// Reserve an address for an attachment (CNI ADD, before the interface exists). Asking again
    /// for the same attachment returns the same address.
    Allocate {
        attachment: Attachment,
        pod: Option<PodRef>,
    },
    /// The interface exists and is configured: program the datapath for it (CNI ADD, last step).
    Register {
        attachment: Attachment,
        /// Host-side veth, in the node's namespace.
        host_ifname: String,
        /// MAC of the pod-side interface.
        mac: String,
        address: Ipv4Addr,
    },
    /// Forget an attachment: datapath state, then the address. Succeeds when there is nothing
    /// to forget (CNI DEL, and the rollback of a failed ADD).
    Release { attachment: Attachment },
    /// What the agent holds for an attachment (CNI CHECK).
    Get { attachment: Attachment },
    /// Release every attachment not in `keep` (CNI GC).
    Gc { keep: Vec<Attachment> },
    /// Run a conntrack garbage-collection pass now, whatever the interval.
    ConntrackGc,
}

/// How long a conntrack collection pass may take to answer: it reads and deletes whole tables
/// (hundreds of thousands of entries after a SYN flood).
pub const COLLECTION_TIMEOUT: Duration = Duration::from_secs(120);

impl Request {
    /// How long a client waits for the answer to this request.
    pub fn answer_within(&self) -> Duration {
        match self {
            Request::ConntrackGc => COLLECTION_TIMEOUT,
            _ => CLIENT_TIMEOUT,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Response {
    Status(AgentStatus),
    Allocated(Allocation),
    Registered(EndpointRecord),
    Released { released: bool },
    Endpoint(EndpointRecord),
    Collected { released: Vec<Attachment> },
    ConntrackCollected(GcSummary),
    Error(ApiFailure),
}

/// What a conntrack garbage-collection pass deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcSummary {
    /// Flows in the table before the pass.
    pub flows: usize,
    pub flows_deleted: usize,
    pub affinities_deleted: usize,
    pub snat_deleted: usize,
    /// Seconds until the next pass.
    pub next_in_s: u64,
}

/// A refusal by the agent, with a CNI error code the plugin passes on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiFailure {
    /// CNI error code (spec 1.1: 3 unknown container, 4 invalid env, 7 invalid config, 11 try
    /// again later, 999 and up plugin-specific).
    pub code: u32,
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub node: String,
    pub pod_cidr: String,
    pub gateway: Ipv4Addr,
    pub node_ip: Ipv4Addr,
    pub mtu: u32,
    pub endpoints: usize,
    /// Programs attached, as "hook@ifname".
    pub attached: Vec<String>,
    /// True once the agent has programmed the node (maps written, external device attached).
    pub ready: bool,
    /// How north-south traffic is forwarded (`loadBalancer.mode`) and how DSR is carried.
    #[serde(default)]
    pub north_south: String,
    /// Why the agent is not doing all it is asked to: Services refused for want of room in the
    /// maps, steps of the last reconcile pass that failed. Empty: it is.
    #[serde(default)]
    pub degraded: Vec<Degraded>,
    /// The service load-balancer maps; `None` before the first pass.
    #[serde(default)]
    pub lb: Option<LbStatus>,
}

impl AgentStatus {
    pub fn is_degraded(&self) -> bool {
        !self.degraded.is_empty()
    }
}

/// One reason the agent is degraded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Degraded {
    pub cause: DegradedCause,
    /// What is wrong, in a sentence.
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DegradedCause {
    /// Services are not programmed: the load-balancer maps have no room for them.
    LbMapsFull,
    /// A step of the last reconcile pass failed.
    Reconcile,
}

/// What the service load-balancer maps hold and could hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbStatus {
    /// Services programmed, every frontend of each.
    pub services: usize,
    pub frontends: usize,
    /// Services left out whole (none of their entries written) for want of room.
    pub refused: usize,
    /// The first refused Services, in the order they were refused.
    pub refused_first: Vec<RefusedService>,
    /// `bpf.lbMapMax` as configured.
    pub lb_map_max: u32,
    /// The smallest `bpf.lbMapMax` that holds every Service; `None` when none does.
    pub lb_map_max_needed: Option<u32>,
    pub maps: Vec<LbMapStatus>,
}

/// A Service the maps had no room for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedService {
    /// `namespace/name`.
    pub service: String,
    /// The first map that had no room for it.
    pub map: String,
}

/// One load-balancer map's use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbMapStatus {
    /// `weft_lb4_services`, ...
    pub map: String,
    /// What it counts: entries, backends, service ids, Maglev tables.
    pub unit: String,
    pub used: u64,
    /// What Services can use of it: its size (the reverse-NAT array: its size - 1, id 0 being
    /// no service).
    pub room: u64,
    /// Its size in the kernel.
    pub max_entries: u32,
    /// The size `bpf.lbMapMax` asks for; another than `max_entries` when the pinned map was
    /// created with another value (a pinned map keeps its size).
    pub configured: u32,
    /// What all the Services need.
    pub wanted: u64,
    /// Services refused for want of room in this map.
    pub refused: usize,
}

impl LbMapStatus {
    /// Whether the map's size is not the one `bpf.lbMapMax` asks for.
    pub fn differs_from_config(&self) -> bool {
        self.max_entries != self.configured
    }
}

/// What the pod's interface is to be configured with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub attachment: Attachment,
    pub pod: Option<PodRef>,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    /// Set once registered.
    pub host_ifname: Option<String>,
    pub mac: Option<String>,
    pub identity: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the Weft agent at {path}: {source}")]
    Unreachable {
        path: String,
        source: std::io::Error,
    },
    #[error("talking to the Weft agent at {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the Weft agent at {path} sent a reply that is not valid: {source}")]
    BadReply {
        path: String,
        source: serde_json::Error,
    },
}

/// Sends one request and waits for its response.
pub fn call(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    let path = socket.display().to_string();
    let io = |source| ClientError::Io {
        path: path.clone(),
        source,
    };
    let stream = UnixStream::connect(socket).map_err(|source| ClientError::Unreachable {
        path: path.clone(),
        source,
    })?;
    stream
        .set_read_timeout(Some(request.answer_within()))
        .map_err(io)?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT)).map_err(io)?;
    let mut line = serde_json::to_string(request).map_err(|source| ClientError::BadReply {
        path: path.clone(),
        source,
    })?;
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(io)?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).map_err(io)?;
    serde_json::from_str(&reply).map_err(|source| ClientError::BadReply {
        path: path.clone(),
        source,
    })
}

/// How long the agent gives a client to send its whole request, and to take its answer.
pub const SERVER_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest request the agent reads (a CNI GC request lists every attachment).
pub const REQUEST_MAX_BYTES: usize = 1 << 20;

/// Serves one connection: reads a request, answers it with `handle`. A request that does not
/// parse is answered with an error response (code 7, invalid configuration of the request).
pub fn serve(stream: &UnixStream, handle: impl FnOnce(Request) -> Response) -> std::io::Result<()> {
    let response = match read_request(stream, SERVER_TIMEOUT)? {
        Ok(request) => handle(request),
        Err(failure) => Response::Error(failure),
    };
    write_response(stream, &response, SERVER_TIMEOUT)
}

/// Reads one request: a line (or everything up to end of stream) within `timeout` in all, so
/// that a client trickling bytes is cut off like one sending none. A request that is too long
/// or does not parse is the failure to answer it with (code 7).
pub fn read_request(
    stream: &UnixStream,
    timeout: Duration,
) -> std::io::Result<Result<Request, ApiFailure>> {
    let deadline = Instant::now() + timeout;
    let mut line = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let n = match (&*stream).read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Err(ErrorKind::TimedOut.into()),
            Err(e) => return Err(e),
        };
        let newline = chunk[..n].iter().position(|&b| b == b'\n');
        line.extend_from_slice(&chunk[..newline.unwrap_or(n)]);
        if line.len() > REQUEST_MAX_BYTES {
            return Ok(Err(invalid_request(format!(
                "the request is longer than {REQUEST_MAX_BYTES} bytes"
            ))));
        }
        if n == 0 || newline.is_some() {
            break;
        }
    }
    if line.is_empty() {
        return Err(ErrorKind::UnexpectedEof.into());
    }
    Ok(serde_json::from_slice::<Request>(&line).map_err(|e| invalid_request(e.to_string())))
}

fn invalid_request(details: String) -> ApiFailure {
    ApiFailure {
        code: 7,
        msg: "malformed request".into(),
        details,
    }
}

/// Writes one response and its newline within `timeout`.
pub fn write_response(
    stream: &UnixStream,
    response: &Response,
    timeout: Duration,
) -> std::io::Result<()> {
    stream.set_write_timeout(Some(timeout))?;
    let mut out = serde_json::to_string(response).map_err(std::io::Error::other)?;
    out.push('\n');
    (&*stream).write_all(out.as_bytes())
}

#[cfg(test)]
mod tests {
    use std::{os::unix::net::UnixListener, thread};

    use super::*;

    fn attachment() -> Attachment {
        Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        }
    }

    #[test]
    fn a_request_round_trips_over_a_socket() {
        let dir = std::env::temp_dir().join(format!("weft-api-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("agent.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock).unwrap();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            serve(&stream, |req| match req {
                Request::Release { attachment } => Response::Released {
                    released: attachment.container_id == "c1",
                },
                other => panic!("unexpected {other:?}"),
            })
            .unwrap();
        });
        let reply = call(
            &sock,
            &Request::Release {
                attachment: attachment(),
            },
        )
        .unwrap();
        server.join().unwrap();
        assert_eq!(reply, Response::Released { released: true });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    #[test]
    fn a_request_is_read_to_its_newline_or_the_end_of_the_stream() {
        let (mut client, server) = pair();
        client.write_all(b"{\"op\":\"status\"}\ntrailing").unwrap();
        let request = read_request(&server, Duration::from_secs(5)).unwrap();
        assert_eq!(request, Ok(Request::Status));
        let (mut client, server) = pair();
        client.write_all(b"{\"op\":\"conntrack-gc\"}").unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let request = read_request(&server, Duration::from_secs(5)).unwrap();
        assert_eq!(request, Ok(Request::ConntrackGc));
        let (client, server) = pair();
        drop(client);
        let err = read_request(&server, Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_client_stopping_half_way_is_cut_off_and_a_long_or_bad_request_refused() {
        let (mut client, server) = pair();
        client.write_all(b"{\"op\":").unwrap();
        let err = read_request(&server, Duration::from_millis(100)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut);

        let (mut client, server) = pair();
        let writer = thread::spawn(move || {
            let long = vec![b' '; REQUEST_MAX_BYTES + 10];
            let _ = client.write_all(&long);
        });
        let failure = read_request(&server, Duration::from_secs(5))
            .unwrap()
            .unwrap_err();
        assert!(failure.details.contains("longer than"), "{failure:?}");
        drop(server);
        writer.join().unwrap();

        let (mut client, server) = pair();
        client.write_all(b"{\"op\":\"fly\"}\n").unwrap();
        let failure = read_request(&server, Duration::from_secs(5))
            .unwrap()
            .unwrap_err();
        assert_eq!(
            (failure.code, failure.msg.as_str()),
            (7, "malformed request")
        );
    }

    #[test]
    fn wire_format_is_tagged_and_kebab_cased() {
        let json = serde_json::to_value(Request::Gc {
            keep: vec![attachment()],
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"op": "gc", "keep": [{"container_id": "c1", "ifname": "eth0"}]})
        );
    }

    #[test]
    fn an_absent_agent_is_unreachable() {
        let err = call(Path::new("/nonexistent/weft.sock"), &Request::Status).unwrap_err();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
    }
}
