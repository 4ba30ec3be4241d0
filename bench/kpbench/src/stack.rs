//! One stack's lab: Weft (agents, socket LB off or on) or a kube-proxy baseline, with the bench's four
//! pods — the client and a spare backend `a` on vps1, the two endpoints `b` and `c` of the
//! measured services on vps2 — and the way that stack is given services and endpoint changes.

use std::{
    fmt, fs,
    io::{Read as _, Seek as _, SeekFrom},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    str::FromStr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use weft_common::ct::CT_KIND_SERVICE;
use weft_datapath::LbMaps;
use weft_kpbench::{
    baseline,
    kube_proxy::{NodeProxy, ProxyMode, SyncReport},
};
use weft_lab::{
    LabSpec, NodeSpec, Topology,
    apply::apply,
    runtime::{self, Binaries},
    testing::LabGuard,
};
use weft_model::Store;

use crate::{measure::Pod, objects, results::Program};

/// How long the agents may take to program a step.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(900);
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// Socket LB off: services balanced per packet in tc.
    Weft,
    /// Socket LB on: `connect()` given the backend in the node cgroup's hook.
    WeftSocketLb,
    KubeProxy(ProxyMode),
}

impl Stack {
    pub fn is_weft(self) -> bool {
        matches!(self, Stack::Weft | Stack::WeftSocketLb)
    }
}

impl fmt::Display for Stack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stack::Weft => f.write_str("weft"),
            Stack::WeftSocketLb => f.write_str("weft-socklb"),
            Stack::KubeProxy(mode) => write!(f, "{mode}"),
        }
    }
}

impl FromStr for Stack {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "weft" => return Ok(Stack::Weft),
            "weft-socklb" => return Ok(Stack::WeftSocketLb),
            _ => {}
        }
        s.parse().map(Stack::KubeProxy)
    }
}

/// Which pods of a baseline lab (hand-wired `vpsN/podK`) play which part.
const BASELINE_PODS: [(&str, &str); 4] = [
    ("client", "vps1/pod1"),
    ("a", "vps1/pod2"),
    ("b", "vps2/pod1"),
    ("c", "vps2/pod2"),
];

const WEFT_PODS: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: client}\n\
spec: {nodeName: vps1, containers: [{name: main, command: [sleep, \"7200\"]}]}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n\
spec: {nodeName: vps1, containers: [{name: main, command: [sleep, \"7200\"]}]}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: b}\n\
spec: {nodeName: vps2, containers: [{name: main, command: [sleep, \"7200\"]}]}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: c}\n\
spec: {nodeName: vps2, containers: [{name: main, command: [sleep, \"7200\"]}]}\n";

pub struct Pods {
    pub client: Pod,
    pub a: Pod,
    pub b: Pod,
    pub c: Pod,
}

enum Driver {
    Weft {
        bins: Binaries,
        dir: PathBuf,
    },
    KubeProxy {
        proxies: Vec<NodeProxy>,
        /// The objects of a change the other nodes have not synced yet.
        pending: Option<Store>,
    },
}

/// A lab of one stack, taken down when dropped.
pub struct StackLab {
    pub stack: Stack,
    pub lab: LabGuard,
    pub pods: Pods,
    driver: Driver,
    /// Services loaded now.
    services: u32,
}

impl StackLab {
    pub fn up(stack: Stack, name: &str, work: &Path) -> anyhow::Result<StackLab> {
        match stack {
            Stack::Weft | Stack::WeftSocketLb => up_weft(stack, name, work),
            Stack::KubeProxy(mode) => up_baseline(mode, name),
        }
    }

    pub fn client_node(&self) -> anyhow::Result<&NodeSpec> {
        self.lab.node("vps1").context("the lab has no vps1")
    }

    fn backends(&self) -> [Ipv4Addr; 2] {
        [self.pods.b.ip, self.pods.c.ip]
    }

    /// Loads services until there are `to` in all (more than now).
    pub fn program(&mut self, to: u32) -> anyhow::Result<Program> {
        let from = self.services;
        if to <= from {
            bail!("services only grow: {from} -> {to}");
        }
        let [b, c] = self.backends();
        let program = match &mut self.driver {
            Driver::Weft { bins, dir } => {
                let text = if from == 0 {
                    objects::all(to, &[b, c], &[b, c])?
                } else {
                    objects::fillers(objects::filler_count(from)?, objects::filler_count(to)?)
                };
                let path = dir.join(format!("services-{to}.yaml"));
                fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
                program_weft(&self.lab, bins, &path, objects::frontends(to)?)?
            }
            Driver::KubeProxy { proxies, .. } => {
                let text = objects::all(to, &[b, c], &[b, c])?;
                let store = Store::from_manifests([("services.yaml", text.as_str())])
                    .context("the bench's objects do not load")?;
                program_kube_proxy(proxies, &store)?
            }
        };
        self.services = to;
        Ok(Program {
            added: to - from,
            ..program
        })
    }

    /// The input of replacing endpoint `c` of the last service by `new` (`b` stays), made
    /// ready so that [`StackLab::make_change`] times only the change itself. Weft: the
    /// EndpointSlice's manifest written; kube-proxy: the objects loaded.
    pub fn prepare_change(&self, new: Ipv4Addr) -> anyhow::Result<Change> {
        let b = self.pods.b.ip;
        match &self.driver {
            Driver::Weft { dir, .. } => {
                let path = dir.join(format!("last-{new}.yaml"));
                fs::write(&path, objects::measured(objects::LAST, &[b, new]))
                    .with_context(|| format!("writing {}", path.display()))?;
                Ok(Change::Weft(path))
            }
            Driver::KubeProxy { .. } => {
                let (first, last) = ([b, self.pods.c.ip], [b, new]);
                let text = objects::all(self.services, &first, &last)?;
                Ok(Change::KubeProxy(Store::from_manifests([(
                    "services.yaml",
                    text.as_str(),
                )])?))
            }
        }
    }

    /// Makes a prepared change; how long it took. Weft: `weft lab apply` of the slice (the
    /// agents follow on their own); kube-proxy: the partial sync of the client's node that the
    /// changed slice sets off, whose rules the client's packets meet (the other node's follows
    /// in [`StackLab::finish_change`]).
    pub fn make_change(&mut self, change: Change) -> anyhow::Result<Duration> {
        let started = Instant::now();
        match (&mut self.driver, change) {
            (Driver::Weft { bins, .. }, Change::Weft(path)) => {
                apply(&self.lab, bins, &[path])?;
            }
            (Driver::KubeProxy { proxies, pending }, Change::KubeProxy(store)) => {
                let report = proxies
                    .first_mut()
                    .context("no node")?
                    .sync_store_changes(&store)?;
                if report.full || report.services_written != 1 {
                    bail!("an endpoint change was not one service's partial sync: {report:?}");
                }
                *pending = Some(store);
            }
            _ => bail!("a change prepared for another stack"),
        }
        Ok(started.elapsed())
    }

    /// kube-proxy: the other nodes' partial sync of the last change (untimed); Weft: nothing.
    pub fn finish_change(&mut self) -> anyhow::Result<()> {
        if let Driver::KubeProxy { proxies, pending } = &mut self.driver
            && let Some(store) = pending.take()
        {
            for proxy in proxies.iter_mut().skip(1) {
                proxy.sync_store_changes(&store)?;
            }
        }
        Ok(())
    }

    /// Weft: the service conntrack entries of flows from the client pod on its node — one per
    /// recent connection balanced in tc, none when socket LB gave `connect()` the backend.
    /// kube-proxy: None.
    pub fn client_service_flows(&self) -> anyhow::Result<Option<usize>> {
        if !self.stack.is_weft() {
            return Ok(None);
        }
        let node = self.client_node()?;
        let maps = LbMaps::from_pins(&node.pin_dir)
            .with_context(|| format!("opening the maps in {}", node.pin_dir.display()))?;
        let client = self.pods.client.ip.octets();
        let flows = maps
            .ct()?
            .iter()
            .filter(|(key, _)| key.kind == CT_KIND_SERVICE && key.saddr == client)
            .count();
        Ok(Some(flows))
    }
}

/// An endpoint change ready to be made ([`StackLab::prepare_change`]).
pub enum Change {
    Weft(PathBuf),
    KubeProxy(Store),
}

fn up_weft(stack: Stack, name: &str, work: &Path) -> anyhow::Result<StackLab> {
    let bins = Binaries::locate()?;
    let dir = work.join(name);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let values = dir.join("values.yaml");
    let socket_lb = stack == Stack::WeftSocketLb;
    fs::write(&values, format!("socketLB: {{enabled: {socket_lb}}}\n"))?;
    let spec = LabSpec::with_size(name, 2, 0);
    let lab = LabGuard::new(runtime::up_cluster(&spec, &bins, Some(&values))?);
    let pods_path = dir.join("pods.yaml");
    fs::write(&pods_path, WEFT_PODS)?;
    apply(&lab, &bins, &[pods_path])?;
    let records = runtime::running_pods(name)?;
    let pod = |pod_name: &str| -> anyhow::Result<Pod> {
        let record = records
            .iter()
            .find(|r| r.name == pod_name)
            .with_context(|| format!("pod {pod_name} is not running"))?;
        let address = record.address.as_deref().context("a pod without address")?;
        let ip = address.split('/').next().unwrap_or(address).parse()?;
        Ok(Pod {
            name: pod_name.into(),
            ip,
            netns: record.netns.clone(),
            cgroup: node_cgroup(&lab, &record.node)?,
        })
    };
    let pods = Pods {
        client: pod("client")?,
        a: pod("a")?,
        b: pod("b")?,
        c: pod("c")?,
    };
    Ok(StackLab {
        stack,
        lab,
        pods,
        driver: Driver::Weft { bins, dir },
        services: 0,
    })
}

fn node_cgroup(t: &Topology, node: &str) -> anyhow::Result<PathBuf> {
    Ok(t.node(node)
        .with_context(|| format!("no node {node}"))?
        .cgroup
        .clone())
}

fn up_baseline(mode: ProxyMode, name: &str) -> anyhow::Result<StackLab> {
    let lab = LabGuard::new(baseline::up(name, mode, 2, 2)?);
    let pod = |(role, target): (&str, &str)| -> anyhow::Result<Pod> {
        let (node, spec) = lab
            .find_pod(target)
            .with_context(|| format!("no {target}"))?;
        Ok(Pod {
            name: role.into(),
            ip: spec.ip,
            netns: spec.netns.clone(),
            cgroup: node.cgroup.clone(),
        })
    };
    let [client, a, b, c] = BASELINE_PODS;
    let pods = Pods {
        client: pod(client)?,
        a: pod(a)?,
        b: pod(b)?,
        c: pod(c)?,
    };
    let proxies = lab.nodes.iter().map(|n| NodeProxy::new(n, mode)).collect();
    Ok(StackLab {
        stack: Stack::KubeProxy(mode),
        lab,
        pods,
        driver: Driver::KubeProxy {
            proxies,
            pending: None,
        },
        services: 0,
    })
}

/// `weft lab apply` of `path`, then until every node's agent has logged `frontends` frontends.
fn program_weft(
    lab: &Topology,
    bins: &Binaries,
    path: &Path,
    frontends: u32,
) -> anyhow::Result<Program> {
    let logs: Vec<PathBuf> = lab
        .nodes
        .iter()
        .map(|n| runtime::node_dir(&lab.name, &n.name).join("agent.log"))
        .collect();
    let marks: Vec<u64> = logs
        .iter()
        .map(|l| fs::metadata(l).map(|m| m.len()).unwrap_or(0))
        .collect();
    let started = Instant::now();
    apply(lab, bins, &[path.to_path_buf()])?;
    let applied = started.elapsed();
    let needle = format!("services: {frontends} frontends");
    for (log, mark) in logs.iter().zip(&marks) {
        wait_for_line(log, *mark, &needle, PROGRAM_TIMEOUT)?;
    }
    let total = started.elapsed();
    Ok(Program {
        prepare_ms: ms(applied),
        apply_ms: ms(total - applied),
        total_ms: ms(total),
        ..Program::default()
    })
}

/// Waits until `log`, after byte `mark`, contains `needle`.
fn wait_for_line(log: &Path, mark: u64, needle: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if tail_since(log, mark)?.contains(needle) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let tail = tail_since(log, mark)?;
            let last: Vec<&str> = tail.lines().rev().take(5).collect();
            bail!(
                "no `{needle}` in {} within {timeout:?}; last: {last:?}",
                log.display()
            );
        }
        thread::sleep(POLL);
    }
}

fn tail_since(log: &Path, mark: u64) -> anyhow::Result<String> {
    let mut file = fs::File::open(log).with_context(|| format!("opening {}", log.display()))?;
    file.seek(SeekFrom::Start(mark))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

/// A full sync of `store` on every node, all at once (each node has its own kube-proxy); the
/// client node's figures, and as total the slowest node's.
fn program_kube_proxy(proxies: &mut [NodeProxy], store: &Store) -> anyhow::Result<Program> {
    let reports: Vec<anyhow::Result<SyncReport>> = thread::scope(|s| {
        let syncs: Vec<_> = proxies
            .iter_mut()
            .map(|proxy| s.spawn(move || proxy.sync_store(store)))
            .collect();
        syncs
            .into_iter()
            .map(|sync| {
                sync.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a node's sync panicked")))
            })
            .collect()
    });
    let mut program = Program::default();
    for (i, report) in reports.into_iter().enumerate() {
        let report = report?;
        let total = ms(report.generate + report.apply);
        if i == 0 {
            program.prepare_ms = ms(report.generate);
            program.apply_ms = ms(report.apply);
            program.rules = report.rules;
            program.bytes = report.bytes;
        }
        program.total_ms = program.total_ms.max(total);
    }
    Ok(program)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_parse_and_print() {
        for name in [
            "weft",
            "weft-socklb",
            "iptables",
            "iptables-legacy",
            "nftables",
        ] {
            let stack: Stack = name.parse().expect("known");
            assert_eq!(stack.to_string(), name);
        }
        assert!("ipvs".parse::<Stack>().is_err());
    }
}
