//! The plugin's logic: one function from (environment, stdin) to (stdout, exit code), with the
//! system and the agent behind traits.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use weft_api::{Allocation, Attachment, EndpointRecord, Request, Response};

use crate::{
    agent::{Agent, AgentError},
    config::{self, DEFAULT_VERSION, NetConf, SUPPORTED_VERSIONS, Version},
    env::{self, Command, Params},
    error::{CniError, code},
    host::{Host, HostError, Link, NetnsState},
    sha256,
};

/// What the binary prints and how it exits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub exit_code: i32,
}

/// Runs one CNI invocation.
pub fn run(
    vars: &BTreeMap<String, String>,
    stdin: &[u8],
    host: &dyn Host,
    agent: &dyn Agent,
) -> Outcome {
    match dispatch(vars, stdin, host, agent) {
        Ok(None) => Outcome {
            stdout: Vec::new(),
            exit_code: 0,
        },
        Ok(Some(result)) => Outcome {
            stdout: json_line(&result),
            exit_code: 0,
        },
        Err(error) => {
            let version = config::sniff_version(stdin).unwrap_or_else(|| DEFAULT_VERSION.into());
            Outcome {
                stdout: json_line(&error.to_json(&version)),
                exit_code: 1,
            }
        }
    }
}

/// The host-side veth of an attachment: `lxc` and the first 11 hex digits of the SHA-256 of the
/// container ID (as Cilium names them). An interface other than `eth0` hashes
/// `<container ID>/<ifname>` so that two attachments of one container never share a name.
pub fn host_ifname(attachment: &Attachment) -> String {
    let key = if attachment.ifname == "eth0" {
        attachment.container_id.clone()
    } else {
        format!("{}/{}", attachment.container_id, attachment.ifname)
    };
    let digest = sha256::hex_digest(key.as_bytes());
    format!("lxc{}", &digest[..11])
}

fn json_line(value: &Value) -> Vec<u8> {
    let mut out = value.to_string().into_bytes();
    out.push(b'\n');
    out
}

fn dispatch(
    vars: &BTreeMap<String, String>,
    stdin: &[u8],
    host: &dyn Host,
    agent: &dyn Agent,
) -> Result<Option<Value>, CniError> {
    let command = Command::from_env(vars)?;
    if command == Command::Version {
        return Ok(Some(version_result(stdin)));
    }
    env::require(vars, command)?;
    let conf = config::parse(stdin)?;
    check_command_allowed(command, conf.version)?;
    match command {
        Command::Add => add(&Ctx::new(conf, vars)?, host, agent).map(Some),
        Command::Del => del(&Ctx::new(conf, vars)?, host, agent).map(|()| None),
        Command::Check => check(&Ctx::new(conf, vars)?, host, agent).map(|()| None),
        Command::Status => status(&conf, agent).map(|()| None),
        Command::Gc => gc(&conf, host, agent).map(|()| None),
        Command::Version => Ok(Some(version_result(stdin))),
    }
}

fn version_result(stdin: &[u8]) -> Value {
    let version = config::sniff_version(stdin).unwrap_or_else(|| DEFAULT_VERSION.into());
    json!({ "cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS })
}

fn check_command_allowed(command: Command, version: Version) -> Result<(), CniError> {
    let (name, since) = match command {
        Command::Check => ("CHECK", Version(0, 4, 0)),
        Command::Status => ("STATUS", Version(1, 1, 0)),
        Command::Gc => ("GC", Version(1, 1, 0)),
        _ => return Ok(()),
    };
    if version >= since {
        Ok(())
    } else {
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("config version does not allow {name}"),
            format!(
                "{name} needs cniVersion {}.{}.{} or later",
                since.0, since.1, since.2
            ),
        ))
    }
}

/// One attachment command's inputs.
struct Ctx {
    conf: NetConf,
    params: Params,
    host_ifname: String,
}

impl Ctx {
    fn new(conf: NetConf, vars: &BTreeMap<String, String>) -> Result<Self, CniError> {
        let params = env::params(vars)?;
        let host_ifname = host_ifname(&params.attachment());
        Ok(Self {
            conf,
            params,
            host_ifname,
        })
    }

    fn attachment(&self) -> Attachment {
        self.params.attachment()
    }

    fn netns(&self) -> &str {
        &self.params.netns
    }

    fn ifname(&self) -> &str {
        &self.params.ifname
    }
}

// ---------------------------------------------------------------------------------------------
// The agent

fn ask(agent: &dyn Agent, conf: &NetConf, request: &Request) -> Result<Response, CniError> {
    let socket = conf.agent_socket.display();
    match agent.call(&conf.agent_socket, request) {
        Ok(Response::Error(f)) if f.code != 0 => Err(CniError::new(f.code, f.msg, f.details)),
        Ok(Response::Error(f)) => Err(CniError::new(code::AGENT_PROTOCOL, f.msg, f.details)),
        Ok(response) => Ok(response),
        Err(AgentError::Unreachable(d)) => Err(CniError::new(
            code::TRY_AGAIN_LATER,
            "the Weft agent is not reachable",
            format!("{d}; start weft-agent on this node (it listens on {socket}) and retry"),
        )),
        Err(AgentError::Failed(d)) => Err(CniError::new(
            code::TRY_AGAIN_LATER,
            "the Weft agent did not answer",
            format!("{d}; retry once weft-agent is responsive"),
        )),
        Err(AgentError::BadReply(d)) => Err(CniError::new(
            code::AGENT_PROTOCOL,
            "the Weft agent sent a reply weft-cni cannot read",
            format!("{d}; are weft-agent and weft-cni from the same release?"),
        )),
    }
}

fn unexpected(request: &str, response: &Response) -> CniError {
    CniError::new(
        code::AGENT_PROTOCOL,
        format!("the Weft agent answered {request} with an unexpected reply"),
        format!("{response:?}; are weft-agent and weft-cni from the same release?"),
    )
}

fn allocate(ctx: &Ctx, agent: &dyn Agent) -> Result<Allocation, CniError> {
    let request = Request::Allocate {
        attachment: ctx.attachment(),
        pod: ctx.params.pod.clone(),
    };
    match ask(agent, &ctx.conf, &request)? {
        Response::Allocated(allocation) => Ok(allocation),
        other => Err(unexpected("Allocate", &other)),
    }
}

fn register(ctx: &Ctx, agent: &dyn Agent, mac: &str, alloc: &Allocation) -> Result<(), CniError> {
    let request = Request::Register {
        attachment: ctx.attachment(),
        host_ifname: ctx.host_ifname.clone(),
        mac: mac.to_string(),
        address: alloc.address,
    };
    match ask(agent, &ctx.conf, &request)? {
        Response::Registered(_) => Ok(()),
        other => Err(unexpected("Register", &other)),
    }
}

fn release(ctx: &Ctx, agent: &dyn Agent) -> Result<(), CniError> {
    let request = Request::Release {
        attachment: ctx.attachment(),
    };
    match ask(agent, &ctx.conf, &request)? {
        Response::Released { .. } => Ok(()),
        other => Err(unexpected("Release", &other)),
    }
}

fn get(ctx: &Ctx, agent: &dyn Agent) -> Result<EndpointRecord, CniError> {
    let request = Request::Get {
        attachment: ctx.attachment(),
    };
    match ask(agent, &ctx.conf, &request)? {
        Response::Endpoint(record) => Ok(record),
        other => Err(unexpected("Get", &other)),
    }
}

// ---------------------------------------------------------------------------------------------
// ADD

/// What ADD has done so far, for the rollback.
#[derive(Default)]
struct Progress {
    veth_created: bool,
}

struct Made {
    host_mac: String,
    pod_mac: String,
}

fn add(ctx: &Ctx, host: &dyn Host, agent: &dyn Agent) -> Result<Value, CniError> {
    preflight(ctx, host)?;
    let alloc = allocate(ctx, agent)?;
    let mut progress = Progress::default();
    match setup(ctx, host, agent, &alloc, &mut progress) {
        Ok(made) => Ok(add_result(ctx, &alloc, &made)),
        Err(error) => Err(rollback(ctx, host, agent, &progress, error)),
    }
}

/// Everything that can be refused before anything is allocated or created.
fn preflight(ctx: &Ctx, host: &dyn Host) -> Result<(), CniError> {
    check_prev_result_shape(ctx.conf.prev_result.as_ref())?;
    let netns = ctx.netns();
    match host
        .netns_state(netns)
        .map_err(|e| setup_error("inspect CNI_NETNS", ctx, &e))?
    {
        NetnsState::Other => {}
        NetnsState::Missing => {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_NETNS {netns:?} is not a network namespace"),
                "the path does not exist; the runtime must pass the pod's network namespace",
            ));
        }
        NetnsState::Own => {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_NETNS {netns:?} is the plugin's own network namespace"),
                "the plugin runs in the node's namespace and CNI_NETNS must be the pod's",
            ));
        }
    }
    let existing = host
        .pod_link(netns, ctx.ifname())
        .map_err(|e| setup_error("inspect the pod's interfaces", ctx, &e))?;
    match existing {
        None => Ok(()),
        Some(_) => Err(CniError::new(
            code::SETUP_FAILED,
            format!("interface {} already exists in {netns}", ctx.ifname()),
            "CNI forbids ADD over an existing interface; DEL the attachment first or use another CNI_IFNAME",
        )),
    }
}

fn check_prev_result_shape(prev: Option<&Map<String, Value>>) -> Result<(), CniError> {
    let Some(prev) = prev else { return Ok(()) };
    for key in ["interfaces", "ips", "routes"] {
        if prev.get(key).is_some_and(|v| !v.is_array() && !v.is_null()) {
            return Err(CniError::new(
                code::DECODE_FAILURE,
                "cannot decode prevResult",
                format!("prevResult.{key} must be an array"),
            ));
        }
    }
    Ok(())
}

fn setup(
    ctx: &Ctx,
    host: &dyn Host,
    agent: &dyn Agent,
    alloc: &Allocation,
    progress: &mut Progress,
) -> Result<Made, CniError> {
    remove_leftover_veth(ctx, host)?;
    host.create_veth(ctx.netns(), ctx.ifname(), &ctx.host_ifname, alloc.mtu)
        .map_err(|e| setup_error("create the veth pair", ctx, &e))?;
    progress.veth_created = true;
    host.configure_pod(ctx.netns(), ctx.ifname(), alloc.address, alloc.gateway)
        .map_err(|e| setup_error("configure the pod's interface", ctx, &e))?;
    host.configure_node(&ctx.host_ifname, alloc.address)
        .map_err(|e| setup_error("configure the host-side veth", ctx, &e))?;
    let pod = created_link(ctx, host.pod_link(ctx.netns(), ctx.ifname()), ctx.ifname())?;
    let node = created_link(ctx, host.node_link(&ctx.host_ifname), &ctx.host_ifname)?;
    register(ctx, agent, &pod.mac, alloc)?;
    Ok(Made {
        host_mac: node.mac,
        pod_mac: pod.mac,
    })
}

/// A crashed ADD of the same container may have left its host veth behind.
fn remove_leftover_veth(ctx: &Ctx, host: &dyn Host) -> Result<(), CniError> {
    let leftover = host
        .node_link(&ctx.host_ifname)
        .map_err(|e| setup_error("look for a leftover host veth", ctx, &e))?;
    if leftover.is_some() {
        host.delete_node_link(&ctx.host_ifname)
            .map_err(|e| setup_error("remove the leftover host veth", ctx, &e))?;
    }
    Ok(())
}

fn created_link(
    ctx: &Ctx,
    found: Result<Option<Link>, HostError>,
    name: &str,
) -> Result<Link, CniError> {
    let what = format!("read interface {name}");
    found
        .map_err(|e| setup_error(&what, ctx, &e))?
        .ok_or_else(|| {
            setup_error(
                &what,
                ctx,
                &HostError::new(&what, "it vanished right after being created"),
            )
        })
}

fn setup_error(what: &str, ctx: &Ctx, error: &HostError) -> CniError {
    CniError::new(
        code::SETUP_FAILED,
        format!("could not {what} for container {}", ctx.params.container_id),
        error.to_string(),
    )
}

/// Undoes a failed ADD: the veth (deleting one end deletes both) and the address.
fn rollback(
    ctx: &Ctx,
    host: &dyn Host,
    agent: &dyn Agent,
    progress: &Progress,
    error: CniError,
) -> CniError {
    let mut error = error;
    if progress.veth_created
        && let Err(e) = delete_veth(ctx, host)
    {
        error = error.with_note(&format!("rollback could not delete the veth: {e}"));
    }
    if let Err(e) = release(ctx, agent) {
        error = error.with_note(&format!(
            "rollback could not release the address: {} ({})",
            e.msg, e.details
        ));
    }
    error
}

/// Deletes the pair from the host end, or from the pod end when the host end cannot be.
fn delete_veth(ctx: &Ctx, host: &dyn Host) -> Result<(), HostError> {
    let host_end = match host.node_link(&ctx.host_ifname) {
        Ok(Some(_)) => host.delete_node_link(&ctx.host_ifname),
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    if host.netns_state(ctx.netns())? == NetnsState::Other
        && host.pod_link(ctx.netns(), ctx.ifname())?.is_some()
    {
        host.delete_pod_link(ctx.netns(), ctx.ifname())?;
    }
    match host_end {
        // The pod end took the host end with it.
        Err(e) if host.node_link(&ctx.host_ifname)?.is_some() => Err(e),
        _ => Ok(()),
    }
}

/// The ADD result: this attachment's interfaces, address and route, appended to `prevResult`
/// when there is one.
fn add_result(ctx: &Ctx, alloc: &Allocation, made: &Made) -> Value {
    let version = ctx.conf.version;
    let mut result = ctx.conf.prev_result.clone().unwrap_or_default();
    result.insert("cniVersion".into(), json!(ctx.conf.cni_version));
    let base = push(
        &mut result,
        "interfaces",
        interface(&ctx.host_ifname, &made.host_mac, None, alloc.mtu, version),
    );
    push(
        &mut result,
        "interfaces",
        interface(
            ctx.ifname(),
            &made.pod_mac,
            Some(ctx.netns()),
            alloc.mtu,
            version,
        ),
    );
    let mut ip = json!({
        "address": format!("{}/32", alloc.address),
        "gateway": alloc.gateway.to_string(),
        "interface": base + 1,
    });
    if version < Version(1, 0, 0) {
        ip["version"] = json!("4");
    }
    push(&mut result, "ips", ip);
    push(
        &mut result,
        "routes",
        json!({ "dst": "0.0.0.0/0", "gw": alloc.gateway.to_string() }),
    );
    Value::Object(result)
}

fn interface(name: &str, mac: &str, sandbox: Option<&str>, mtu: u32, version: Version) -> Value {
    let mut iface = json!({ "name": name, "mac": mac });
    if let Some(sandbox) = sandbox {
        iface["sandbox"] = json!(sandbox);
    }
    if version >= Version(1, 1, 0) {
        iface["mtu"] = json!(mtu);
    }
    iface
}

/// Appends to the array `key` (created when absent); returns the new element's index.
fn push(result: &mut Map<String, Value>, key: &str, value: Value) -> usize {
    let slot = result.entry(key).or_insert_with(|| json!([]));
    if !slot.is_array() {
        *slot = json!([]);
    }
    match slot {
        Value::Array(items) => {
            items.push(value);
            items.len() - 1
        }
        _ => 0,
    }
}

// ---------------------------------------------------------------------------------------------
// DEL

fn del(ctx: &Ctx, host: &dyn Host, agent: &dyn Agent) -> Result<(), CniError> {
    // Release first (the agent detaches from the veth while it exists), then tear down locally
    // even when the agent is away, so that a retry has less to do.
    let released = release(ctx, agent);
    let torn_down = delete_host_veth(host, &ctx.host_ifname);
    released?;
    torn_down
}

/// Deletes a host veth if it exists; its peer and the `/32` route through it go with it.
fn delete_host_veth(host: &dyn Host, name: &str) -> Result<(), CniError> {
    let teardown_error = |e: HostError| {
        CniError::new(
            code::TEARDOWN_FAILED,
            format!("could not delete host interface {name}"),
            format!("{e}; delete it by hand with `ip link del {name}`"),
        )
    };
    if host.node_link(name).map_err(teardown_error)?.is_some() {
        host.delete_node_link(name).map_err(teardown_error)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// CHECK

fn check(ctx: &Ctx, host: &dyn Host, agent: &dyn Agent) -> Result<(), CniError> {
    let prev = ctx.conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "CHECK needs prevResult",
            "the runtime must pass the result of the last ADD as prevResult",
        )
    })?;
    let expected = PrevAttachment::find(prev, ctx)?;
    let record = get(ctx, agent)?;
    let address = format!("{}/32", record.address);
    if !expected.addresses.contains(&address) {
        return Err(check_failed(
            format!("the agent holds {address} for this attachment, prevResult does not"),
            format!(
                "prevResult lists {:?} on {}",
                expected.addresses,
                ctx.ifname()
            ),
        ));
    }
    check_pod(ctx, host, &record, &expected)?;
    check_node(ctx, host, &record)
}

/// Our interface and its addresses in `prevResult`.
struct PrevAttachment {
    mac: Option<String>,
    addresses: Vec<String>,
    default_via: Option<String>,
}

impl PrevAttachment {
    fn find(prev: &Map<String, Value>, ctx: &Ctx) -> Result<Self, CniError> {
        let interfaces = array(prev, "interfaces");
        let index = interfaces
            .iter()
            .position(|i| {
                i["name"].as_str() == Some(ctx.ifname())
                    && i["sandbox"].as_str() == Some(ctx.netns())
            })
            .ok_or_else(|| {
                check_failed(
                    format!(
                        "prevResult has no interface {} in {}",
                        ctx.ifname(),
                        ctx.netns()
                    ),
                    "CHECK must get the result of this attachment's ADD as prevResult",
                )
            })?;
        let addresses = array(prev, "ips")
            .iter()
            .filter(|ip| ip["interface"].as_u64() == Some(index as u64))
            .filter_map(|ip| ip["address"].as_str().map(String::from))
            .collect();
        let default_via = array(prev, "routes")
            .iter()
            .find(|r| r["dst"].as_str() == Some("0.0.0.0/0"))
            .and_then(|r| r["gw"].as_str().map(String::from));
        Ok(Self {
            mac: interfaces[index]["mac"].as_str().map(String::from),
            addresses,
            default_via,
        })
    }
}

fn array<'a>(map: &'a Map<String, Value>, key: &str) -> &'a [Value] {
    map.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn check_failed(msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError::new(code::CHECK_FAILED, msg, details)
}

fn inspect_error(what: &str) -> impl Fn(HostError) -> CniError + '_ {
    move |e| check_failed(format!("could not inspect {what}"), e.to_string())
}

fn check_pod(
    ctx: &Ctx,
    host: &dyn Host,
    record: &EndpointRecord,
    expected: &PrevAttachment,
) -> Result<(), CniError> {
    let (netns, ifname) = (ctx.netns(), ctx.ifname());
    if host
        .netns_state(netns)
        .map_err(inspect_error("CNI_NETNS"))?
        != NetnsState::Other
    {
        return Err(check_failed(
            format!("network namespace {netns} is gone"),
            "the pod's namespace no longer exists",
        ));
    }
    let link = host
        .pod_link(netns, ifname)
        .map_err(inspect_error("the pod's interfaces"))?
        .ok_or_else(|| {
            check_failed(
                format!("interface {ifname} is missing from {netns}"),
                "DEL and ADD the attachment again to recreate it",
            )
        })?;
    check_link(&link, &format!("pod interface {ifname}"), record.mtu)?;
    if !link.ipv4.contains(&(record.address, 32)) {
        return Err(check_failed(
            format!("pod interface {ifname} lacks address {}/32", record.address),
            format!("it has {:?}", link.ipv4),
        ));
    }
    if let Some(mac) = &expected.mac
        && !mac.eq_ignore_ascii_case(&link.mac)
    {
        return Err(check_failed(
            format!(
                "pod interface {ifname} has MAC {}, prevResult says {mac}",
                link.mac
            ),
            "the interface was replaced after ADD",
        ));
    }
    check_pod_default_route(ctx, host, record, expected)
}

fn check_pod_default_route(
    ctx: &Ctx,
    host: &dyn Host,
    record: &EndpointRecord,
    expected: &PrevAttachment,
) -> Result<(), CniError> {
    // A later plugin of the chain may have changed the routes: check ours only while the
    // result still lists it.
    let gateway = record.gateway.to_string();
    if expected.default_via.as_deref() != Some(gateway.as_str()) {
        return Ok(());
    }
    let routes = host
        .pod_routes(ctx.netns())
        .map_err(inspect_error("the pod's routes"))?;
    let present = routes
        .iter()
        .any(|r| r.dst == "default" && r.gateway == Some(record.gateway) && r.dev == ctx.ifname());
    if present {
        Ok(())
    } else {
        Err(check_failed(
            format!(
                "the pod has no default route via {gateway} dev {}",
                ctx.ifname()
            ),
            format!("routes in {}: {routes:?}", ctx.netns()),
        ))
    }
}

fn check_node(ctx: &Ctx, host: &dyn Host, record: &EndpointRecord) -> Result<(), CniError> {
    let name = record.host_ifname.as_deref().unwrap_or(&ctx.host_ifname);
    let link = host
        .node_link(name)
        .map_err(inspect_error("the node's interfaces"))?
        .ok_or_else(|| {
            check_failed(
                format!("host veth {name} is missing"),
                "DEL and ADD the attachment again to recreate it",
            )
        })?;
    check_link(&link, &format!("host veth {name}"), record.mtu)?;
    let dst = format!("{}/32", record.address);
    let routes = host
        .node_routes()
        .map_err(inspect_error("the node's routes"))?;
    if routes.iter().any(|r| r.dst == dst && r.dev == name) {
        Ok(())
    } else {
        Err(check_failed(
            format!("the node has no route {dst} dev {name}"),
            format!("restore it with `ip route replace {dst} dev {name} scope link`"),
        ))
    }
}

fn check_link(link: &Link, what: &str, mtu: u32) -> Result<(), CniError> {
    if !link.up {
        return Err(check_failed(format!("{what} is down"), "it must be up"));
    }
    if link.mtu != mtu {
        return Err(check_failed(
            format!("{what} has MTU {}, expected {mtu}", link.mtu),
            "the MTU comes from the agent's allocation",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// STATUS and GC

fn status(conf: &NetConf, agent: &dyn Agent) -> Result<(), CniError> {
    let not_available = |details: String| {
        CniError::new(
            code::NOT_AVAILABLE,
            "the Weft agent is not available",
            details,
        )
    };
    match agent.call(&conf.agent_socket, &Request::Status) {
        Ok(Response::Status(s)) if s.ready => Ok(()),
        Ok(Response::Status(s)) => Err(CniError::new(
            code::NOT_AVAILABLE_DEGRADED,
            "the Weft agent is not ready",
            format!(
                "the agent of node {} has not programmed the datapath yet (attached: [{}]); \
                 existing pods may have limited connectivity",
                s.node,
                s.attached.join(", ")
            ),
        )),
        Ok(Response::Error(f)) => Err(not_available(format!("{}: {}", f.msg, f.details))),
        Ok(other) => Err(not_available(format!(
            "unexpected reply to Status: {other:?}"
        ))),
        Err(e) => Err(not_available(format!(
            "{e}; start weft-agent on this node (socket {})",
            conf.agent_socket.display()
        ))),
    }
}

fn gc(conf: &NetConf, host: &dyn Host, agent: &dyn Agent) -> Result<(), CniError> {
    let keep = conf.valid_attachments.clone().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "GC needs cni.dev/valid-attachments",
            "without the list of valid attachments GC would release every address",
        )
    })?;
    let released = match ask(agent, conf, &Request::Gc { keep })? {
        Response::Collected { released } => released,
        other => return Err(unexpected("Gc", &other)),
    };
    let failures: Vec<String> = released
        .iter()
        .filter_map(|a| delete_host_veth(host, &host_ifname(a)).err())
        .map(|e| format!("{} ({})", e.msg, e.details))
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::TEARDOWN_FAILED,
            format!(
                "GC released {} attachments but could not delete {} host veths",
                released.len(),
                failures.len()
            ),
            failures.join("; "),
        ))
    }
}
