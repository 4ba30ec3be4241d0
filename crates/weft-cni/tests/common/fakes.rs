#![allow(clippy::unwrap_used)] // test double: a panic is the failure report

//! In-memory fakes of the plugin's [`Host`] and [`Agent`], with the kernel's semantics that the
//! plugin relies on: a veth pair dies as a whole, routes die with their device, names collide.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use weft_api::{
    AgentStatus, Allocation, ApiFailure, Attachment, EndpointRecord, Request, Response,
};
use weft_cni::{Agent, AgentError, Host, HostError, Link, NetnsState, Route};

pub const NODE_NETNS: &str = "/proc/self/ns/net";

#[derive(Default, Debug)]
pub struct HostState {
    pub node_links: BTreeMap<String, Link>,
    pub node_routes: Vec<Route>,
    /// netns path -> its links and routes.
    pub pods: BTreeMap<String, (BTreeMap<String, Link>, Vec<Route>)>,
    /// host veth -> (netns, pod ifname).
    pub peers: BTreeMap<String, (String, String)>,
    next_mac: u8,
}

/// A fake system. `fail` names operations that fail (`create_veth`, `configure_pod`,
/// `configure_node`, `delete_node_link`).
#[derive(Default)]
pub struct FakeHost {
    pub state: RefCell<HostState>,
    pub fail: BTreeSet<&'static str>,
}

impl FakeHost {
    pub fn with_netns(netns: &str) -> Self {
        let host = Self::default();
        host.add_netns(netns);
        host
    }

    pub fn add_netns(&self, netns: &str) {
        let lo = link("lo", "00:00:00:00:00:00", 65536);
        let mut links = BTreeMap::new();
        links.insert("lo".to_string(), lo);
        self.state
            .borrow_mut()
            .pods
            .insert(netns.to_string(), (links, Vec::new()));
    }

    pub fn failing(mut self, op: &'static str) -> Self {
        self.fail.insert(op);
        self
    }

    pub fn node_link_names(&self) -> Vec<String> {
        self.state.borrow().node_links.keys().cloned().collect()
    }

    pub fn pod_link_names(&self, netns: &str) -> Vec<String> {
        self.state
            .borrow()
            .pods
            .get(netns)
            .map(|(links, _)| links.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn check(&self, op: &'static str) -> Result<(), HostError> {
        if self.fail.contains(op) {
            Err(HostError::new(
                op,
                "injected failure: Operation not permitted",
            ))
        } else {
            Ok(())
        }
    }
}

pub fn link(name: &str, mac: &str, mtu: u32) -> Link {
    Link {
        name: name.to_string(),
        mac: mac.to_string(),
        mtu,
        up: false,
        ipv4: Vec::new(),
    }
}

fn no_netns(netns: &str) -> HostError {
    HostError::new(
        format!("enter network namespace {netns}"),
        "it does not exist",
    )
}

impl HostState {
    fn mac(&mut self) -> String {
        self.next_mac += 1;
        format!("02:00:00:00:00:{:02x}", self.next_mac)
    }

    fn remove_node_link(&mut self, name: &str) {
        self.node_links.remove(name);
        self.node_routes.retain(|r| r.dev != name);
        if let Some((netns, pod_if)) = self.peers.remove(name)
            && let Some((links, routes)) = self.pods.get_mut(&netns)
        {
            links.remove(&pod_if);
            routes.retain(|r| r.dev != pod_if);
        }
    }
}

impl Host for FakeHost {
    fn netns_state(&self, netns: &str) -> Result<NetnsState, HostError> {
        Ok(if netns == NODE_NETNS {
            NetnsState::Own
        } else if self.state.borrow().pods.contains_key(netns) {
            NetnsState::Other
        } else {
            NetnsState::Missing
        })
    }

    fn node_link(&self, name: &str) -> Result<Option<Link>, HostError> {
        Ok(self.state.borrow().node_links.get(name).cloned())
    }

    fn pod_link(&self, netns: &str, name: &str) -> Result<Option<Link>, HostError> {
        let state = self.state.borrow();
        let (links, _) = state.pods.get(netns).ok_or_else(|| no_netns(netns))?;
        Ok(links.get(name).cloned())
    }

    fn create_veth(
        &self,
        netns: &str,
        pod_ifname: &str,
        host_ifname: &str,
        mtu: u32,
    ) -> Result<(), HostError> {
        self.check("create_veth")?;
        let mut state = self.state.borrow_mut();
        let exists = |what: &str| HostError::new("ip link add", format!("{what}: File exists"));
        if state.node_links.contains_key(host_ifname) {
            return Err(exists(host_ifname));
        }
        let (host_mac, pod_mac) = (state.mac(), state.mac());
        let (links, _) = state.pods.get_mut(netns).ok_or_else(|| no_netns(netns))?;
        if links.contains_key(pod_ifname) {
            return Err(exists(pod_ifname));
        }
        links.insert(pod_ifname.into(), link(pod_ifname, &pod_mac, mtu));
        state
            .node_links
            .insert(host_ifname.into(), link(host_ifname, &host_mac, mtu));
        state
            .peers
            .insert(host_ifname.into(), (netns.into(), pod_ifname.into()));
        Ok(())
    }

    fn delete_node_link(&self, name: &str) -> Result<(), HostError> {
        self.check("delete_node_link")?;
        let mut state = self.state.borrow_mut();
        if !state.node_links.contains_key(name) {
            return Err(HostError::new(
                "ip link del",
                format!("Cannot find device {name:?}"),
            ));
        }
        state.remove_node_link(name);
        Ok(())
    }

    fn delete_pod_link(&self, netns: &str, name: &str) -> Result<(), HostError> {
        let mut state = self.state.borrow_mut();
        let host_end = state
            .peers
            .iter()
            .find(|(_, (ns, pod))| ns == netns && pod == name)
            .map(|(h, _)| h.clone());
        match host_end {
            Some(host_end) => state.remove_node_link(&host_end),
            None => {
                let (links, _) = state.pods.get_mut(netns).ok_or_else(|| no_netns(netns))?;
                links.remove(name);
            }
        }
        Ok(())
    }

    fn configure_pod(
        &self,
        netns: &str,
        ifname: &str,
        address: Ipv4Addr,
        gateway: Ipv4Addr,
    ) -> Result<(), HostError> {
        self.check("configure_pod")?;
        let mut state = self.state.borrow_mut();
        let (links, routes) = state.pods.get_mut(netns).ok_or_else(|| no_netns(netns))?;
        for name in ["lo", ifname] {
            links
                .get_mut(name)
                .ok_or_else(|| HostError::new("ip link set", format!("no device {name}")))?
                .up = true;
        }
        if let Some(l) = links.get_mut(ifname) {
            l.ipv4.push((address, 32));
        }
        routes.push(route(&format!("{gateway}/32"), None, ifname));
        routes.push(route("default", Some(gateway), ifname));
        Ok(())
    }

    fn configure_node(&self, host_ifname: &str, address: Ipv4Addr) -> Result<(), HostError> {
        self.check("configure_node")?;
        let mut state = self.state.borrow_mut();
        state
            .node_links
            .get_mut(host_ifname)
            .ok_or_else(|| HostError::new("ip link set", format!("no device {host_ifname}")))?
            .up = true;
        state
            .node_routes
            .push(route(&format!("{address}/32"), None, host_ifname));
        Ok(())
    }

    fn pod_routes(&self, netns: &str) -> Result<Vec<Route>, HostError> {
        let state = self.state.borrow();
        let (_, routes) = state.pods.get(netns).ok_or_else(|| no_netns(netns))?;
        Ok(routes.clone())
    }

    fn node_routes(&self) -> Result<Vec<Route>, HostError> {
        Ok(self.state.borrow().node_routes.clone())
    }
}

pub fn route(dst: &str, gateway: Option<Ipv4Addr>, dev: &str) -> Route {
    Route {
        dst: dst.to_string(),
        gateway,
        dev: dev.to_string(),
    }
}

/// A fake agent: allocates [`FakeAgent::allocation`], remembers registrations, and can be told
/// to be unreachable or to refuse one kind of request.
pub struct FakeAgent {
    pub reachable: bool,
    pub ready: bool,
    pub allocation: Allocation,
    /// Refuse requests of this op (`allocate`, `register`, `release`, `get`, `gc`).
    pub refuse: Option<(&'static str, ApiFailure)>,
    pub records: RefCell<BTreeMap<Attachment, EndpointRecord>>,
    pub calls: RefCell<Vec<Request>>,
    pub sockets: RefCell<Vec<PathBuf>>,
}

impl Default for FakeAgent {
    fn default() -> Self {
        Self {
            reachable: true,
            ready: true,
            allocation: Allocation {
                address: Ipv4Addr::new(10, 42, 1, 5),
                prefix_len: 24,
                gateway: Ipv4Addr::new(10, 42, 1, 1),
                mtu: 1450,
            },
            refuse: None,
            records: RefCell::default(),
            calls: RefCell::default(),
            sockets: RefCell::default(),
        }
    }
}

impl FakeAgent {
    pub fn unreachable() -> Self {
        Self {
            reachable: false,
            ..Self::default()
        }
    }

    pub fn refusing(op: &'static str, code: u32, msg: &str) -> Self {
        Self {
            refuse: Some((
                op,
                ApiFailure {
                    code,
                    msg: msg.to_string(),
                    details: format!("refused by the fake agent ({op})"),
                },
            )),
            ..Self::default()
        }
    }

    /// The ops of the requests received, in order.
    pub fn ops(&self) -> Vec<&'static str> {
        self.calls.borrow().iter().map(op).collect()
    }

    fn record(&self, attachment: &Attachment) -> EndpointRecord {
        let a = &self.allocation;
        EndpointRecord {
            attachment: attachment.clone(),
            pod: None,
            address: a.address,
            prefix_len: a.prefix_len,
            gateway: a.gateway,
            mtu: a.mtu,
            host_ifname: None,
            mac: None,
            identity: 0,
        }
    }

    fn answer(&self, request: &Request) -> Response {
        match request {
            Request::Status => Response::Status(self.status()),
            Request::Allocate { attachment, pod } => {
                let mut record = self.record(attachment);
                record.pod = pod.clone();
                self.records.borrow_mut().insert(attachment.clone(), record);
                Response::Allocated(self.allocation.clone())
            }
            Request::Register {
                attachment,
                host_ifname,
                mac,
                ..
            } => self.register(attachment, host_ifname, mac),
            Request::Release { attachment } => Response::Released {
                released: self.records.borrow_mut().remove(attachment).is_some(),
            },
            Request::Get { attachment } => match self.records.borrow().get(attachment) {
                Some(record) => Response::Endpoint(record.clone()),
                None => Response::Error(ApiFailure {
                    code: 3,
                    msg: "unknown attachment".into(),
                    details: format!("{attachment:?}"),
                }),
            },
            Request::Gc { keep } => {
                let mut records = self.records.borrow_mut();
                let gone: Vec<Attachment> = records
                    .keys()
                    .filter(|a| !keep.contains(a))
                    .cloned()
                    .collect();
                records.retain(|a, _| keep.contains(a));
                Response::Collected { released: gone }
            }
            Request::ConntrackGc => Response::Error(ApiFailure {
                code: 999,
                msg: "not an agent".into(),
                details: "the plugin never asks this".into(),
            }),
        }
    }

    fn register(&self, attachment: &Attachment, host_ifname: &str, mac: &str) -> Response {
        let mut records = self.records.borrow_mut();
        match records.get_mut(attachment) {
            Some(record) => {
                record.host_ifname = Some(host_ifname.to_string());
                record.mac = Some(mac.to_string());
                record.identity = 4242;
                Response::Registered(record.clone())
            }
            None => Response::Error(ApiFailure {
                code: 3,
                msg: "register before allocate".into(),
                details: String::new(),
            }),
        }
    }

    fn status(&self) -> AgentStatus {
        AgentStatus {
            node: "vps1".into(),
            pod_cidr: "10.42.1.0/24".into(),
            gateway: self.allocation.gateway,
            node_ip: Ipv4Addr::new(198, 51, 100, 1),
            mtu: self.allocation.mtu,
            endpoints: self.records.borrow().len(),
            attached: if self.ready {
                vec!["xdp@eth0".into()]
            } else {
                Vec::new()
            },
            ready: self.ready,
            north_south: String::new(),
            degraded: Vec::new(),
            lb: None,
        }
    }
}

pub fn op(request: &Request) -> &'static str {
    match request {
        Request::Status => "status",
        Request::Allocate { .. } => "allocate",
        Request::Register { .. } => "register",
        Request::Release { .. } => "release",
        Request::Get { .. } => "get",
        Request::Gc { .. } => "gc",
        Request::ConntrackGc => "conntrack-gc",
    }
}

impl Agent for FakeAgent {
    fn call(&self, socket: &Path, request: &Request) -> Result<Response, AgentError> {
        self.calls.borrow_mut().push(request.clone());
        self.sockets.borrow_mut().push(socket.to_path_buf());
        if !self.reachable {
            return Err(AgentError::Unreachable(format!(
                "cannot reach the Weft agent at {}: Connection refused (os error 111)",
                socket.display()
            )));
        }
        if let Some((refused, failure)) = &self.refuse
            && *refused == op(request)
        {
            return Ok(Response::Error(failure.clone()));
        }
        Ok(self.answer(request))
    }
}
