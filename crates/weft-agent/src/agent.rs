//! The agent's logic: node setup, the answers to the local API and the reconcile pass. All
//! kernel changes go through [`Datapath`], all interface lookups through [`NetInfo`]; what
//! remains is files in the manifests and state directories.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, anyhow};
use weft_api::{
    AgentStatus, Allocation, ApiFailure, Attachment, Degraded, DegradedCause, EndpointRecord,
    GcSummary, PodRef, Request, Response,
};
use weft_common::{
    Hook, NodeConfig,
    geneve::{GENEVE_VNI, pod_mtu},
    nat::{SNAT_PORT_MAX, SNAT_PORT_MIN},
    node::NODE_MASQUERADE_FLAG,
};
use weft_datapath::{Datapath, monotonic_ns, reconcile_attachments};
use weft_model::{
    ClusterConfig, Ipv4Cidr, Store,
    desired::{self, ExternalDevice, required_attachments},
    identity::pod_identity,
    ipam::PodIpam,
    ipcache::{LocalEndpoint, MapChanges, desired_endpoints, desired_ipcache, map_changes},
    k8s::{DEFAULT_NAMESPACE, ObjectMeta, WeftEndpoint, WeftEndpointSpec, WeftNode, WeftNodeSpec},
};

use crate::{
    claim::claim_node_cidr,
    files::{read_if_present, remove_if_present, write_atomically},
    gc::{self, GcReport, GcSchedule},
    health::{HealthCheck, HealthServer},
    log,
    net::{NetInfo, format_mac, parse_mac},
    services::{ServiceMaps, ServiceReport},
    state::{self, AgentState, EndpointState, Registration},
};

/// CNI error codes (spec 1.1) the agent answers with.
pub mod codes {
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_REQUEST: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// The agent failed to do what it was asked (datapath, files).
    pub const AGENT_FAILURE: u32 = 999;
    /// The node's pod CIDR has no free address.
    pub const NO_ADDRESS: u32 = 1000;
}

/// How the agent was started.
#[derive(Clone, Debug)]
pub struct Settings {
    pub node: String,
    pub manifests_dir: PathBuf,
    pub state_dir: PathBuf,
    pub external_device: String,
    /// Defaults to the external device's first IPv4 address.
    pub underlay_ip: Option<Ipv4Addr>,
    pub cluster: ClusterConfig,
    pub socket_lb: crate::socket_lb::SocketLbSite,
}

pub struct Agent<D: Datapath> {
    settings: Settings,
    datapath: D,
    net: Box<dyn NetInfo + Send>,
    store: Store,
    node_cidr: Ipv4Cidr,
    gateway: Ipv4Addr,
    underlay_ip: Ipv4Addr,
    mtu: u32,
    ipam: PodIpam<Attachment>,
    endpoints: BTreeMap<Attachment, EndpointState>,
    services: ServiceMaps,
    health: HealthServer,
    gc: GcSchedule,
    ready: bool,
    /// What the last reconcile pass could not do.
    last_errors: Vec<String>,
    /// The last reason Services were refused that was logged.
    logged_refusal: Option<String>,
}

/// What one reconcile pass changed, and what it could not do.
#[derive(Debug, Default)]
pub struct ReconcileReport {
    pub ipcache_puts: usize,
    pub ipcache_deletes: usize,
    pub prefilter_puts: usize,
    pub prefilter_deletes: usize,
    pub endpoint_puts: usize,
    pub endpoint_deletes: usize,
    pub attached: Vec<String>,
    pub detached: Vec<String>,
    pub services: ServiceReport,
    pub errors: Vec<String>,
}

impl ReconcileReport {
    pub fn changed(&self) -> bool {
        self.ipcache_puts
            + self.ipcache_deletes
            + self.prefilter_puts
            + self.prefilter_deletes
            + self.endpoint_puts
            + self.endpoint_deletes
            + self.attached.len()
            + self.detached.len()
            > 0
            || self.services.changed()
    }
}

fn failure(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Response {
    Response::Error(ApiFailure {
        code,
        msg: msg.into(),
        details: details.into(),
    })
}

fn agent_failure(msg: &str, error: &anyhow::Error) -> Response {
    failure(codes::AGENT_FAILURE, msg, format!("{error:#}"))
}

fn hook_name(a: &desired::Attachment) -> String {
    format!("{}@{}", a.hook.name(), a.ifname)
}

/// Short, file-name-safe form of a container ID.
fn short_id(container_id: &str) -> String {
    container_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(12)
        .collect()
}

impl<D: Datapath> Agent<D> {
    /// Sets the node up: claims its pod CIDR, publishes its `WeftNode`, restores the pod
    /// addresses saved in the state directory, writes `weft_node`, then reconciles once.
    pub fn start(
        settings: Settings,
        datapath: D,
        net: Box<dyn NetInfo + Send>,
        store: Store,
    ) -> anyhow::Result<Agent<D>> {
        let ext = settings.external_device.clone();
        let underlay_ip = match settings.underlay_ip {
            Some(ip) => ip,
            None => net
                .ipv4(&ext)?
                .ok_or_else(|| anyhow!("{ext} has no IPv4 address; pass --underlay-ip"))?,
        };
        let mtu = pod_mtu(net.mtu(&ext)?);
        let node_cidr = claim_node_cidr(
            &settings.manifests_dir,
            &settings.node,
            &settings.cluster,
            &store,
        )?;
        log!("node {} has pod CIDR {node_cidr}", settings.node);
        let saved = state::load(&settings.state_dir)?;
        let (ipam, endpoints) = restore_endpoints(node_cidr, saved);
        let gateway = ipam.gateway()?;
        let mut agent = Agent {
            settings,
            datapath,
            net,
            store,
            node_cidr,
            gateway,
            underlay_ip,
            mtu,
            ipam,
            endpoints,
            services: ServiceMaps::default(),
            health: HealthServer::on(underlay_ip),
            gc: GcSchedule::starting(Instant::now()),
            ready: false,
            last_errors: Vec::new(),
            logged_refusal: None,
        };
        agent.publish_weft_node()?;
        agent.save_state()?;
        agent.write_node_config()?;
        agent.reconcile();
        Ok(agent)
    }

    pub fn datapath(&self) -> &D {
        &self.datapath
    }

    pub fn datapath_mut(&mut self) -> &mut D {
        &mut self.datapath
    }

    pub fn node_cidr(&self) -> Ipv4Cidr {
        self.node_cidr
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    pub fn services(&self) -> &ServiceMaps {
        &self.services
    }

    /// Runs the garbage collector when its interval has passed.
    pub fn collect_garbage_if_due(&mut self, now: Instant) {
        if self.gc.due(now) {
            self.collect_garbage(now);
        }
    }

    /// One garbage-collection pass, now.
    pub fn collect_garbage(&mut self, now: Instant) -> Option<GcReport> {
        let Some(now_ns) = monotonic_ns() else {
            log!("gc: the monotonic clock is not readable");
            return None;
        };
        let timeouts = self.services.affinity_timeouts();
        match gc::collect(&mut self.datapath, now_ns, &timeouts) {
            Ok(report) => {
                self.gc.passed(now, &report);
                log!(
                    "gc: {} of {} flows, {} affinities, {} masquerade entries deleted; next in {:?}",
                    report.flows_deleted,
                    report.flows,
                    report.affinities_deleted,
                    report.snat_deleted,
                    self.gc.interval()
                );
                Some(report)
            }
            Err(e) => {
                log!("gc: {e:#}");
                self.gc.passed(now, &GcReport::default());
                None
            }
        }
    }

    fn publish_weft_node(&self) -> anyhow::Result<()> {
        let node = WeftNode {
            metadata: ObjectMeta {
                name: self.settings.node.clone(),
                ..ObjectMeta::default()
            },
            spec: WeftNodeSpec {
                pod_cidr: self.node_cidr,
                underlay_ip: self.underlay_ip,
            },
        };
        let path = self
            .settings
            .manifests_dir
            .join(format!("weftnode-{}.yaml", self.settings.node));
        write_if_changed(&path, &node.to_yaml()?)
    }

    fn write_node_config(&mut self) -> anyhow::Result<()> {
        let ext = &self.settings.external_device;
        let masquerade = if self.settings.cluster.bpf.masquerade {
            NODE_MASQUERADE_FLAG
        } else {
            0
        };
        let flags = masquerade | crate::socket_lb::node_flags(&self.settings.cluster.socket_lb);
        let config = NodeConfig {
            ipv4: self.underlay_ip.octets(),
            external_ifindex: self.net.ifindex(ext)?,
            vni: GENEVE_VNI,
            snat_port_min: SNAT_PORT_MIN,
            snat_port_max: SNAT_PORT_MAX,
            flags,
            _pad: 0,
            netns_cookie: self.settings.socket_lb.netns_cookie,
        };
        if self.datapath.node()? != config {
            self.datapath
                .set_node(config)
                .context("writing weft_node")?;
            log!(
                "wrote weft_node: {} ifindex {} masquerade {}",
                self.underlay_ip,
                config.external_ifindex,
                config.masquerade()
            );
        }
        Ok(())
    }

    fn save_state(&self) -> anyhow::Result<()> {
        let state = AgentState {
            pod_cidr: Some(self.node_cidr),
            endpoints: self.endpoints.values().cloned().collect(),
        };
        state::save(&self.settings.state_dir, &state)
    }

    /// Takes a new cluster state and reconciles against it.
    pub fn update_store(&mut self, store: Store) -> ReconcileReport {
        self.store = store;
        self.reconcile()
    }

    // ---- the local API ----

    pub fn handle(&mut self, request: Request) -> Response {
        match request {
            Request::Status => Response::Status(self.status()),
            Request::Allocate { attachment, pod } => self.allocate(attachment, pod),
            Request::Register {
                attachment,
                host_ifname,
                mac,
                address,
            } => self.register(attachment, &host_ifname, &mac, address),
            Request::Release { attachment } => match self.release(&attachment) {
                Ok(released) => Response::Released { released },
                Err(e) => agent_failure("release failed", &e),
            },
            Request::Get { attachment } => match self.endpoints.get(&attachment) {
                Some(ep) => Response::Endpoint(self.record(ep)),
                None => failure(
                    codes::UNKNOWN_CONTAINER,
                    "no such attachment",
                    format!("{} {}", attachment.container_id, attachment.ifname),
                ),
            },
            Request::Gc { keep } => self.gc(&keep),
            Request::ConntrackGc => match self.collect_garbage(Instant::now()) {
                Some(report) => Response::ConntrackCollected(GcSummary {
                    flows: report.flows,
                    flows_deleted: report.flows_deleted,
                    affinities_deleted: report.affinities_deleted,
                    snat_deleted: report.snat_deleted,
                    next_in_s: self.gc.interval().as_secs(),
                }),
                None => failure(
                    codes::AGENT_FAILURE,
                    "the garbage collection failed",
                    "see the agent's log",
                ),
            },
        }
    }

    pub fn status(&self) -> AgentStatus {
        let attached = self
            .datapath
            .attachments()
            .map(|set| set.iter().map(hook_name).collect())
            .unwrap_or_default();
        AgentStatus {
            node: self.settings.node.clone(),
            pod_cidr: self.node_cidr.to_string(),
            gateway: self.gateway,
            node_ip: self.underlay_ip,
            mtu: self.mtu,
            endpoints: self.registered().count(),
            attached,
            ready: self.ready,
            north_south: self.settings.cluster.load_balancer.north_south_summary(),
            degraded: self.degraded(),
            lb: self
                .services
                .status(self.settings.cluster.bpf.lb_map_max.get()),
        }
    }

    /// Services refused for want of room, then the failures of the last reconcile pass.
    fn degraded(&self) -> Vec<Degraded> {
        let refused = self.services.refusal_reason().map(|reason| Degraded {
            cause: DegradedCause::LbMapsFull,
            reason,
        });
        let failed = self.last_errors.iter().map(|e| Degraded {
            cause: DegradedCause::Reconcile,
            reason: e.clone(),
        });
        refused.into_iter().chain(failed).collect()
    }

    fn not_ready() -> Response {
        failure(
            codes::TRY_AGAIN_LATER,
            "the Weft agent is not ready",
            "the node's external device is not programmed yet",
        )
    }

    fn allocate(&mut self, attachment: Attachment, pod: Option<PodRef>) -> Response {
        if !self.ready {
            return Agent::<D>::not_ready();
        }
        if let Some(ep) = self.endpoints.get(&attachment) {
            return Response::Allocated(self.allocation(ep.address));
        }
        let address = match self.ipam.allocate(&attachment) {
            Ok(a) => a,
            Err(e) => return failure(codes::NO_ADDRESS, "no pod address left", e.to_string()),
        };
        self.endpoints.insert(
            attachment.clone(),
            EndpointState {
                attachment: attachment.clone(),
                pod,
                address,
                registration: None,
            },
        );
        if let Err(e) = self.save_state() {
            self.ipam.release(&attachment);
            self.endpoints.remove(&attachment);
            return agent_failure("cannot save the allocation", &e);
        }
        log!(
            "allocated {address} to {} {}",
            attachment.container_id,
            attachment.ifname
        );
        Response::Allocated(self.allocation(address))
    }

    fn allocation(&self, address: Ipv4Addr) -> Allocation {
        Allocation {
            address,
            prefix_len: self.node_cidr.prefix_len(),
            gateway: self.gateway,
            mtu: self.mtu,
        }
    }

    fn register(
        &mut self,
        attachment: Attachment,
        host_ifname: &str,
        mac: &str,
        address: Ipv4Addr,
    ) -> Response {
        if !self.ready {
            return Agent::<D>::not_ready();
        }
        let Some(allocated) = self.endpoints.get(&attachment).map(|e| e.address) else {
            return failure(
                codes::UNKNOWN_CONTAINER,
                "register before allocate",
                format!("{} {}", attachment.container_id, attachment.ifname),
            );
        };
        if allocated != address {
            return failure(
                codes::INVALID_REQUEST,
                "address differs from the allocation",
                format!("allocated {allocated}, asked {address}"),
            );
        }
        let registration = match self.resolve_registration(host_ifname, mac) {
            Ok(r) => r,
            Err(e) => return failure(codes::INVALID_REQUEST, "bad interface", format!("{e:#}")),
        };
        if let Some(ep) = self.endpoints.get_mut(&attachment) {
            ep.registration = Some(registration);
        }
        match self.program_endpoint(&attachment) {
            Ok(()) => {
                log!(
                    "registered {address} on {host_ifname} for {} {}",
                    attachment.container_id,
                    attachment.ifname
                );
                match self.endpoints.get(&attachment) {
                    Some(ep) => Response::Registered(self.record(ep)),
                    None => failure(codes::AGENT_FAILURE, "endpoint vanished", ""),
                }
            }
            Err(e) => {
                if let Err(undo) = self.unprogram_endpoint(&attachment) {
                    log!("rolling back the registration failed too: {undo:#}");
                }
                if let Some(ep) = self.endpoints.get_mut(&attachment) {
                    ep.registration = None;
                }
                agent_failure("cannot program the datapath", &e)
            }
        }
    }

    fn resolve_registration(&self, host_ifname: &str, mac: &str) -> anyhow::Result<Registration> {
        Ok(Registration {
            host_ifname: host_ifname.to_string(),
            host_ifindex: self.net.ifindex(host_ifname)?,
            host_mac: self.net.mac(host_ifname)?,
            mac: parse_mac(mac)?,
        })
    }

    /// Endpoint map entry, both veth programs, the `WeftEndpoint`, the saved state.
    fn program_endpoint(&mut self, attachment: &Attachment) -> anyhow::Result<()> {
        let ep = self
            .endpoints
            .get(attachment)
            .cloned()
            .ok_or_else(|| anyhow!("unknown attachment"))?;
        let local = self
            .local_endpoint(&ep)
            .ok_or_else(|| anyhow!("not registered"))?;
        let (key, info) = desired_endpoints(&[local])
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("no endpoint entry"))?;
        self.datapath.put_endpoint(key, info)?;
        let current = self.datapath.attachments()?;
        for hook in [Hook::FromContainer, Hook::ToContainer] {
            let a = desired::Attachment {
                ifname: local_ifname(&ep),
                hook,
            };
            if !current.contains(&a) {
                self.datapath.attach(&a)?;
                log!("attached {}", hook_name(&a));
            }
        }
        self.write_weft_endpoint(&ep, local.identity)?;
        self.save_state()
    }

    /// Undoes [`Agent::program_endpoint`] except the saved state. Works when the interface is
    /// gone already.
    fn unprogram_endpoint(&mut self, attachment: &Attachment) -> anyhow::Result<()> {
        let Some(ep) = self.endpoints.get(attachment).cloned() else {
            return Ok(());
        };
        if let Some(reg) = &ep.registration {
            let shared = self
                .registered()
                .any(|o| o.attachment != ep.attachment && local_ifname(o) == reg.host_ifname);
            let current = self.datapath.attachments()?;
            for hook in [Hook::FromContainer, Hook::ToContainer] {
                let a = desired::Attachment {
                    ifname: reg.host_ifname.clone(),
                    hook,
                };
                if !shared && current.contains(&a) {
                    self.datapath.detach(&a)?;
                    log!("detached {}", hook_name(&a));
                }
            }
        }
        let key = weft_common::EndpointKey {
            addr: ep.address.octets(),
        };
        self.datapath.delete_endpoint(key)?;
        if remove_if_present(&self.weft_endpoint_path(&ep.attachment))? {
            log!("removed WeftEndpoint of {}", ep.address);
        }
        Ok(())
    }

    /// Forgets an attachment; `false` when there was nothing to forget.
    pub fn release(&mut self, attachment: &Attachment) -> anyhow::Result<bool> {
        if !self.endpoints.contains_key(attachment) {
            return Ok(false);
        }
        self.unprogram_endpoint(attachment)?;
        let address = self.ipam.release(attachment);
        self.endpoints.remove(attachment);
        self.save_state()?;
        log!(
            "released {} of {} {}",
            address.map(|a| a.to_string()).unwrap_or_default(),
            attachment.container_id,
            attachment.ifname
        );
        Ok(true)
    }

    fn gc(&mut self, keep: &[Attachment]) -> Response {
        let keep: BTreeSet<&Attachment> = keep.iter().collect();
        let stale: Vec<Attachment> = self
            .endpoints
            .keys()
            .filter(|a| !keep.contains(a))
            .cloned()
            .collect();
        let mut released = Vec::new();
        for attachment in stale {
            match self.release(&attachment) {
                Ok(_) => released.push(attachment),
                Err(e) => return agent_failure("garbage collection failed", &e),
            }
        }
        Response::Collected { released }
    }

    fn record(&self, ep: &EndpointState) -> EndpointRecord {
        EndpointRecord {
            attachment: ep.attachment.clone(),
            pod: ep.pod.clone(),
            address: ep.address,
            prefix_len: self.node_cidr.prefix_len(),
            gateway: self.gateway,
            mtu: self.mtu,
            host_ifname: ep.registration.as_ref().map(|r| r.host_ifname.clone()),
            mac: ep.registration.as_ref().map(|r| format_mac(&r.mac)),
            identity: self.identity_of(ep),
        }
    }

    // ---- identities and WeftEndpoints ----

    fn pod_namespace_and_name(ep: &EndpointState) -> (String, String) {
        match &ep.pod {
            Some(p) => (p.namespace.clone(), p.name.clone()),
            None => (
                DEFAULT_NAMESPACE.to_string(),
                short_id(&ep.attachment.container_id),
            ),
        }
    }

    /// From the pod's namespace and labels as the store has them now (no labels while the Pod
    /// is unknown).
    fn identity_of(&self, ep: &EndpointState) -> u32 {
        let (namespace, name) = Agent::<D>::pod_namespace_and_name(ep);
        let empty = BTreeMap::new();
        let labels = self
            .store
            .pod(&namespace, &name)
            .map(|p| &p.metadata.labels)
            .unwrap_or(&empty);
        pod_identity(&namespace, labels)
    }

    fn registered(&self) -> impl Iterator<Item = &EndpointState> {
        self.endpoints.values().filter(|e| e.registration.is_some())
    }

    fn local_endpoint(&self, ep: &EndpointState) -> Option<LocalEndpoint> {
        let reg = ep.registration.as_ref()?;
        Some(LocalEndpoint {
            address: ep.address,
            ifindex: reg.host_ifindex,
            identity: self.identity_of(ep),
            mac: reg.mac,
            host_mac: reg.host_mac,
        })
    }

    fn weft_endpoint_name(&self, attachment: &Attachment) -> String {
        let mut name = format!(
            "{}-{}",
            self.settings.node,
            short_id(&attachment.container_id)
        );
        if attachment.ifname != "eth0" {
            name.push('-');
            name.extend(
                attachment
                    .ifname
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric()),
            );
        }
        name
    }

    fn weft_endpoint_path(&self, attachment: &Attachment) -> PathBuf {
        self.settings.manifests_dir.join(format!(
            "weftendpoint-{}.yaml",
            self.weft_endpoint_name(attachment)
        ))
    }

    fn write_weft_endpoint(&self, ep: &EndpointState, identity: u32) -> anyhow::Result<()> {
        let (namespace, pod_name) = Agent::<D>::pod_namespace_and_name(ep);
        let object = WeftEndpoint {
            metadata: ObjectMeta {
                name: self.weft_endpoint_name(&ep.attachment),
                namespace: Some(namespace),
                ..ObjectMeta::default()
            },
            spec: WeftEndpointSpec {
                node: self.settings.node.clone(),
                pod_name,
                container_id: ep.attachment.container_id.clone(),
                interface: ep.attachment.ifname.clone(),
                ipv4: ep.address,
                identity,
            },
        };
        write_if_changed(&self.weft_endpoint_path(&ep.attachment), &object.to_yaml()?)
    }

    /// Writes the `WeftEndpoint` of every registered endpoint (identities follow label
    /// changes) and removes this node's files of endpoints it no longer has.
    fn sync_weft_endpoints(&self) -> anyhow::Result<()> {
        let mut wanted = BTreeSet::new();
        for ep in self.registered() {
            self.write_weft_endpoint(ep, self.identity_of(ep))?;
            wanted.insert(self.weft_endpoint_path(&ep.attachment));
        }
        let prefix = format!("weftendpoint-{}-", self.settings.node);
        let dir = &self.settings.manifests_dir;
        for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry
                .with_context(|| format!("reading {}", dir.display()))?
                .path();
            let ours = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".yaml"));
            if ours && !wanted.contains(&path) && remove_if_present(&path)? {
                log!("removed stale {}", path.display());
            }
        }
        Ok(())
    }

    // ---- reconcile ----

    /// Brings the node to the desired state, level-triggered: its `WeftNode` file and
    /// `weft_node`, the ipcache from the store, endpoints map and attachments from the
    /// registered endpoints, `WeftEndpoint` files.
    /// Every step is tried even when an earlier one fails; failures are in the report.
    pub fn reconcile(&mut self) -> ReconcileReport {
        let mut report = ReconcileReport::default();
        if let Err(e) = self.publish_weft_node() {
            report.errors.push(format!("WeftNode: {e:#}"));
        }
        if let Err(e) = self.write_node_config() {
            report.errors.push(format!("weft_node: {e:#}"));
        }
        if let Err(e) = self.reconcile_ipcache(&mut report) {
            report.errors.push(format!("ipcache: {e:#}"));
        }
        if let Err(e) = self.reconcile_prefilter(&mut report) {
            report.errors.push(format!("prefilter: {e:#}"));
        }
        if let Err(e) = self.reconcile_endpoints(&mut report) {
            report.errors.push(format!("endpoints: {e:#}"));
        }
        if let Err(e) = self.reconcile_attachments(&mut report) {
            report.errors.push(format!("attachments: {e:#}"));
        }
        self.reconcile_services(&mut report);
        self.reconcile_health_checks(&mut report);
        let (site, socket_lb) = (&self.settings.socket_lb, &self.settings.cluster.socket_lb);
        if let Err(e) =
            crate::socket_lb::reconcile(&mut self.datapath, site, socket_lb, &mut report)
        {
            report.errors.push(format!("socket LB: {e:#}"));
        }
        if let Err(e) = self.sync_weft_endpoints() {
            report.errors.push(format!("WeftEndpoints: {e:#}"));
        }
        self.update_readiness();
        for error in &report.errors {
            log!("reconcile: {error}");
        }
        self.last_errors.clone_from(&report.errors);
        report
    }

    fn reconcile_ipcache(&mut self, report: &mut ReconcileReport) -> anyhow::Result<()> {
        let desired = desired_ipcache(&self.store, &self.settings.node);
        let MapChanges { put, delete } = map_changes(&desired, &self.datapath.ipcache()?);
        for cidr in delete {
            self.datapath.delete_ipcache(cidr)?;
            log!("ipcache: deleted {cidr}");
            report.ipcache_deletes += 1;
        }
        for (cidr, entry) in put {
            self.datapath.put_ipcache(cidr, entry)?;
            log!(
                "ipcache: {cidr} -> identity {} tunnel {}",
                entry.identity,
                Ipv4Addr::from(entry.tunnel_endpoint)
            );
            report.ipcache_puts += 1;
        }
        Ok(())
    }

    /// `weft_prefilter4` holds exactly `prefilter.cidrs`: stale prefixes go, missing ones are
    /// added, the others are left alone.
    fn reconcile_prefilter(&mut self, report: &mut ReconcileReport) -> anyhow::Result<()> {
        let desired = &self.settings.cluster.prefilter.cidrs;
        let current = self.datapath.prefilter()?;
        for &cidr in current.difference(desired) {
            self.datapath.delete_prefilter(cidr)?;
            log!("prefilter: deleted {cidr}");
            report.prefilter_deletes += 1;
        }
        for &cidr in desired.difference(&current) {
            self.datapath.put_prefilter(cidr)?;
            log!("prefilter: dropping packets from {cidr}");
            report.prefilter_puts += 1;
        }
        Ok(())
    }

    fn reconcile_services(&mut self, report: &mut ReconcileReport) {
        let result = self.services.reconcile(
            &mut self.datapath,
            &self.store,
            &self.settings.node,
            &self.settings.cluster,
        );
        match result {
            Ok(services) => {
                if services.changed() {
                    log!(
                        "services: {} frontends; {} entries written, {} deleted, {} Maglev tables written, {} flows purged",
                        services.frontends,
                        services.entries_written,
                        services.entries_deleted,
                        services.maglev_tables_written,
                        services.flows_purged
                    );
                }
                report.services = services;
            }
            Err(e) => report.errors.push(format!("services: {e:#}")),
        }
        let refusal = self.services.refusal_reason();
        if refusal != self.logged_refusal {
            match &refusal {
                Some(reason) => log!("services: {reason}"),
                None => log!("services: every Service is programmed"),
            }
            self.logged_refusal = refusal;
        }
    }

    /// The `healthCheckNodePort`s of this node's `externalTrafficPolicy: Local` services.
    fn reconcile_health_checks(&mut self, report: &mut ReconcileReport) {
        let wanted = self
            .services
            .health_checks()
            .map(|h| {
                let check = HealthCheck {
                    namespace: h.service.namespace.clone(),
                    name: h.service.name.clone(),
                    local_endpoints: h.local_endpoints,
                };
                (h.port, check)
            })
            .collect();
        report.errors.extend(self.health.reconcile(&wanted));
    }

    fn reconcile_endpoints(&mut self, report: &mut ReconcileReport) -> anyhow::Result<()> {
        let locals: Vec<LocalEndpoint> = self
            .registered()
            .filter_map(|ep| self.local_endpoint(ep))
            .collect();
        let desired = desired_endpoints(&locals);
        let MapChanges { put, delete } = map_changes(&desired, &self.datapath.endpoints()?);
        for key in delete {
            self.datapath.delete_endpoint(key)?;
            log!("endpoints: deleted {}", Ipv4Addr::from(key.addr));
            report.endpoint_deletes += 1;
        }
        for (key, info) in put {
            self.datapath.put_endpoint(key, info)?;
            log!(
                "endpoints: {} -> ifindex {} identity {}",
                Ipv4Addr::from(key.addr),
                info.ifindex,
                info.identity
            );
            report.endpoint_puts += 1;
        }
        Ok(())
    }

    fn endpoints(&self) -> Vec<desired::Endpoint> {
        self.registered()
            .map(|ep| desired::Endpoint {
                name: ep.attachment.container_id.clone(),
                host_ifname: local_ifname(ep),
            })
            .collect()
    }

    fn reconcile_attachments(&mut self, report: &mut ReconcileReport) -> anyhow::Result<()> {
        let endpoints = self.endpoints();
        let external = self.external_device();
        let outcome = reconcile_attachments(&mut self.datapath, &external, &endpoints)?;
        for a in &outcome.applied.detach {
            log!("detached {}", hook_name(a));
            report.detached.push(hook_name(a));
        }
        for a in &outcome.applied.attach {
            log!("attached {}", hook_name(a));
            report.attached.push(hook_name(a));
        }
        report.errors.extend(outcome.failures);
        Ok(())
    }

    fn external_device(&self) -> ExternalDevice {
        ExternalDevice::new(
            &self.settings.external_device,
            self.settings.cluster.load_balancer.acceleration,
        )
    }

    /// Ready once `weft_node` is written and the external device carries the programs it cannot
    /// run without.
    fn update_readiness(&mut self) {
        let node_ok = self.datapath.node().is_ok_and(|n| n.is_configured());
        let external = required_attachments(&self.external_device());
        let attached_ok = self
            .datapath
            .attachments()
            .is_ok_and(|current| external.is_subset(&current));
        let ready = node_ok && attached_ok;
        if ready != self.ready {
            log!("{}", if ready { "ready" } else { "not ready" });
        }
        self.ready = ready;
    }
}

fn local_ifname(ep: &EndpointState) -> String {
    ep.registration
        .as_ref()
        .map(|r| r.host_ifname.clone())
        .unwrap_or_default()
}

/// The saved allocations that fit the node's CIDR; the others are dropped with a log line.
fn restore_endpoints(
    cidr: Ipv4Cidr,
    saved: AgentState,
) -> (PodIpam<Attachment>, BTreeMap<Attachment, EndpointState>) {
    let mut endpoints = saved.by_attachment();
    let (ipam, refused) =
        PodIpam::restore(cidr, endpoints.iter().map(|(a, e)| (a.clone(), e.address)));
    for (attachment, address) in refused {
        log!(
            "dropping saved allocation {address} of {} {}: not usable in {cidr}",
            attachment.container_id,
            attachment.ifname
        );
        endpoints.remove(&attachment);
    }
    (ipam, endpoints)
}

/// Writes a manifest only when its contents change, so that watchers see no spurious event.
fn write_if_changed(path: &Path, contents: &str) -> anyhow::Result<()> {
    if read_if_present(path)?.as_deref() == Some(contents) {
        return Ok(());
    }
    write_atomically(path, contents.as_bytes())?;
    log!("wrote {}", path.display());
    Ok(())
}
