//! Applying the generated rules inside a node's network namespace (entered with `setns` in the
//! child, never `ip netns exec`), and one node's kube-proxy sync state.

use std::{
    collections::BTreeSet,
    io::Write as _,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use weft_model::Store;

use super::{
    ProxyMode, Scope, ServicePort, changed_services, iptables,
    nftables::{self, NftState},
    service_ports,
};
use weft_lab::{NodeSpec, Topology, exec::placed_command};

/// The program and arguments that load a ruleset of `mode` from stdin, as kube-proxy runs them.
fn loader(mode: ProxyMode) -> [&'static str; 5] {
    match mode {
        ProxyMode::Iptables => ["iptables-nft-restore", "-w", "5", "--noflush", "--counters"],
        ProxyMode::IptablesLegacy => [
            "iptables-legacy-restore",
            "-w",
            "5",
            "--noflush",
            "--counters",
        ],
        ProxyMode::Nftables => ["nft", "-f", "-", "", ""],
    }
}

/// Loads `text` with `mode`'s loader inside `node`'s network namespace (and cgroup, so `down`
/// finds a loader that hangs); returns how long the loader took, start to exit.
pub fn apply_rules(node: &NodeSpec, mode: ProxyMode, text: &str) -> anyhow::Result<Duration> {
    let argv: Vec<String> = loader(mode)
        .into_iter()
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect();
    let mut command = placed_command(&node.netns, &node.cgroup, &argv, false)?;
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {} in {}", argv[0], node.netns))?;
    let written = child
        .stdin
        .take()
        .context("the loader's stdin")?
        .write_all(text.as_bytes());
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for {} in {}", argv[0], node.netns))?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        bail!(
            "{} in {} failed ({}): {}",
            argv.join(" "),
            node.netns,
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    written.with_context(|| format!("feeding {} in {}", argv[0], node.netns))?;
    Ok(elapsed)
}

/// What one sync of one node did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub node: String,
    /// False for a partial sync.
    pub full: bool,
    pub service_ports: usize,
    /// Services whose chains were written: all of them in a full sync.
    pub services_written: usize,
    /// Rules in the text handed to the loader.
    pub rules: usize,
    pub bytes: usize,
    /// Generating the text.
    pub generate: Duration,
    /// Running the loader(s): what kube-proxy's `sync_proxy_rules_duration` mostly is.
    pub apply: Duration,
}

/// One node's kube-proxy: the mode, and what the previous sync left for the next one.
#[derive(Debug, Clone)]
pub struct NodeProxy {
    pub mode: ProxyMode,
    node: NodeSpec,
    iptables_chains: BTreeSet<String>,
    nft: NftState,
    /// The input of the last sync that succeeded: what a partial sync compares with.
    synced: Option<Vec<ServicePort>>,
}

impl NodeProxy {
    /// A proxy that has not synced yet (its first sync writes everything).
    pub fn new(node: &NodeSpec, mode: ProxyMode) -> NodeProxy {
        NodeProxy {
            mode,
            node: node.clone(),
            iptables_chains: BTreeSet::new(),
            nft: NftState::default(),
            synced: None,
        }
    }

    pub fn node(&self) -> &NodeSpec {
        &self.node
    }

    /// A full sync of the Services and EndpointSlices of `store`.
    pub fn sync_store(&mut self, store: &Store) -> anyhow::Result<SyncReport> {
        let started = Instant::now();
        let ports = service_ports(store, &self.node.name);
        self.sync_ports(&ports, started)
    }

    /// A partial sync to `store`: the chains of the services that changed since the last sync,
    /// as kube-proxy syncs after an informer event. Full when nothing was synced yet.
    pub fn sync_store_changes(&mut self, store: &Store) -> anyhow::Result<SyncReport> {
        let started = Instant::now();
        let ports = service_ports(store, &self.node.name);
        let Some(synced) = &self.synced else {
            return self.sync_ports(&ports, started);
        };
        let changed = changed_services(synced, &ports);
        self.sync(&ports, Scope::Changed(&changed), started)
    }

    /// A full sync of `ports` (from [`service_ports`]); `started` is when the work began, so
    /// the report's `generate` can include computing the ports.
    pub fn sync_ports(
        &mut self,
        ports: &[ServicePort],
        started: Instant,
    ) -> anyhow::Result<SyncReport> {
        self.sync(ports, Scope::Full, started)
    }

    fn sync(
        &mut self,
        ports: &[ServicePort],
        scope: Scope,
        started: Instant,
    ) -> anyhow::Result<SyncReport> {
        // A failed sync leaves the kernel unknown: the next one must be full, as in kube-proxy.
        self.synced = None;
        let (rules, bytes, generate, apply) = match self.mode {
            ProxyMode::Iptables | ProxyMode::IptablesLegacy => {
                let sync = iptables::sync_rules(ports, &self.iptables_chains, scope);
                let generate = started.elapsed();
                let apply = apply_rules(&self.node, self.mode, &sync.text)?;
                self.iptables_chains = sync.service_chains;
                (sync.rules, sync.text.len(), generate, apply)
            }
            ProxyMode::Nftables => self.sync_nftables(ports, scope, started)?,
        };
        self.synced = Some(ports.to_vec());
        let services: BTreeSet<_> = ports.iter().map(|p| &p.service).collect();
        Ok(SyncReport {
            node: self.node.name.clone(),
            full: scope.is_full(),
            service_ports: ports.len(),
            services_written: services.iter().filter(|s| scope.writes(s)).count(),
            rules,
            bytes,
            generate,
            apply,
        })
    }

    fn sync_nftables(
        &mut self,
        ports: &[ServicePort],
        scope: Scope,
        started: Instant,
    ) -> anyhow::Result<(usize, usize, Duration, Duration)> {
        let sync = nftables::sync_rules(ports, self.node.underlay_ip, &self.nft, scope);
        let generate = started.elapsed();
        let mut apply = Duration::ZERO;
        if let Some(delete) = &sync.delete_stale {
            // kube-proxy retries a failed deletion later; so does the next sync here.
            if let Ok(took) = apply_rules(&self.node, self.mode, delete) {
                apply += took;
            }
        }
        apply += apply_rules(&self.node, self.mode, &sync.text)?;
        self.nft = sync.state;
        Ok((sync.rules, sync.text.len(), generate, apply))
    }
}

/// Prepares `node` of a baseline lab: the jump rules kube-proxy and kubelet ensure at start and
/// the CNI's pod masquerade (iptables modes), or the pod masquerade table (nftables mode).
pub fn setup_node(node: &NodeSpec, mode: ProxyMode) -> anyhow::Result<()> {
    let text = match mode {
        ProxyMode::Iptables | ProxyMode::IptablesLegacy => iptables::jump_rules(),
        ProxyMode::Nftables => pod_masquerade_nft(),
    };
    apply_rules(node, mode, &text)
        .map(|_| ())
        .with_context(|| format!("kube-proxy's start-up rules on {}", node.name))
}

/// [`setup_node`] on every node of `t`, then an empty first sync, as a kube-proxy that has seen
/// no Service yet writes it.
pub fn setup_nodes(t: &Topology, mode: ProxyMode) -> anyhow::Result<()> {
    for node in &t.nodes {
        setup_node(node, mode)?;
        NodeProxy::new(node, mode)
            .sync_ports(&[], Instant::now())
            .with_context(|| format!("the first kube-proxy sync on {}", node.name))?;
    }
    Ok(())
}

/// The CNI's masquerade of pod traffic leaving the cluster, in a table of its own.
fn pod_masquerade_nft() -> String {
    let cidr = super::CLUSTER_CIDR;
    format!(
        "add table ip lab-pod-nat\n\
         add chain ip lab-pod-nat postrouting {{ type nat hook postrouting priority srcnat ; }}\n\
         add rule ip lab-pod-nat postrouting ip saddr {cidr} ip daddr != {cidr} masquerade \
         comment \"lab: pod traffic to the world\"\n"
    )
}
