//! `weft lab apply -f` and `weft lab delete -f`: Kubernetes objects into and out of the lab's
//! manifests directory, as kubectl puts them into a cluster, and the lab acting as kubelet for
//! the Pods among them. `apply` is all or nothing: every file is parsed and checked before
//! anything changes (one bad document refuses the whole request), and when a Pod then fails to
//! start, what the request wrote is put back and the pods it started are stopped.

use std::{
    collections::BTreeMap,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use weft_model::{
    ClusterConfig, Ipv4Cidr, ManifestCache,
    endpointslice::is_derived,
    external_address::ExternalAddressRules,
    k8s::{ClusterIp, Object, Pod, Service, parse_manifest, with_cluster_ip},
    store::Store,
};

use crate::{
    cluster_ip::settle_cluster_ips,
    host,
    north_south::{settle_north_south, with_north_south},
    runtime::{self, Binaries, PodRecord, PodRequest},
    slices::{SliceChanges, sync_slices_of},
    topology::Topology,
};

/// One object of a request: its file name in the manifests directory and its YAML text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Document {
    /// The file it was read from, for errors.
    origin: String,
    file_name: String,
    text: String,
    object: Object,
}

/// What `apply` or `delete` changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// "Pod default/web", ... in the order written or removed.
    pub objects: Vec<String>,
    pub started: Vec<PodRecord>,
    pub stopped: Vec<PodRecord>,
    /// The derived EndpointSlices written or removed after the pods changed.
    pub slices: SliceChanges,
    /// What was stored but is not complete (a LoadBalancer Service without an address).
    pub warnings: Vec<String>,
}

/// The YAML files named by `paths`: files as given, directories' `*.yaml`/`*.yml` sorted.
fn yaml_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut files: Vec<PathBuf> = fs::read_dir(path)
                .with_context(|| format!("reading {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect();
            files.sort();
            out.extend(files);
        } else if path.is_file() {
            out.push(path.clone());
        } else {
            bail!("{}: no such file or directory", path.display());
        }
    }
    if out.is_empty() {
        bail!("no manifests given");
    }
    Ok(out)
}

/// Splits a YAML stream into its documents' texts.
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            docs.push(String::new());
            continue;
        }
        if let Some(doc) = docs.last_mut() {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.retain(|d| {
        d.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    docs
}

fn object_file_name(object: &Object) -> String {
    let (namespace, name) = match object {
        Object::Pod(p) => (p.metadata.namespace(), p.metadata.name.as_str()),
        Object::Namespace(n) => ("", n.metadata.name.as_str()),
        Object::Node(n) => ("", n.metadata.name.as_str()),
        Object::WeftNode(n) => ("", n.metadata.name.as_str()),
        Object::WeftEndpoint(e) => (e.metadata.namespace(), e.metadata.name.as_str()),
        Object::Service(s) => (s.metadata.namespace(), s.metadata.name.as_str()),
        Object::EndpointSlice(s) => (s.metadata.namespace(), s.metadata.name.as_str()),
        Object::LoadBalancerIpPool(p) => ("", p.metadata.name.as_str()),
    };
    format!("{}_{namespace}_{name}.yaml", object.kind().to_lowercase())
}

fn describe(object: &Object) -> String {
    let file = object_file_name(object);
    let mut parts = file.trim_end_matches(".yaml").splitn(3, '_');
    let _kind = parts.next();
    let ns = parts.next().unwrap_or_default();
    let name = parts.next().unwrap_or_default();
    if ns.is_empty() {
        format!("{} {name}", object.kind())
    } else {
        format!("{} {ns}/{name}", object.kind())
    }
}

/// Parses every document of every file; the first error refuses them all.
fn read_documents(paths: &[PathBuf]) -> anyhow::Result<Vec<Document>> {
    let mut out = Vec::new();
    for file in yaml_files(paths)? {
        let text =
            fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let label = file.display().to_string();
        for (i, doc) in split_documents(&text).into_iter().enumerate() {
            let origin = format!("{label} (document {})", i + 1);
            let objects = parse_manifest(&origin, &doc)?;
            for object in objects {
                refuse_lab_written(&label, &object)?;
                out.push(Document {
                    origin: origin.clone(),
                    file_name: object_file_name(&object),
                    text: doc.clone(),
                    object,
                });
            }
        }
    }
    Ok(out)
}

/// Objects the lab's agents or the lab itself write may not be applied: the writer would
/// overwrite or remove them.
fn refuse_lab_written(origin: &str, object: &Object) -> anyhow::Result<()> {
    match object {
        Object::WeftNode(_) | Object::WeftEndpoint(_) => bail!(
            "{origin}: {} objects are written by the agents, not applied",
            object.kind()
        ),
        Object::EndpointSlice(slice) if is_derived(slice) => bail!(
            "{origin}: EndpointSlice {}/{} is labelled as derived by the lab, which writes \
             those itself from the Services' selectors",
            slice.metadata.namespace(),
            slice.metadata.name
        ),
        _ => Ok(()),
    }
}

/// The files of lab `lab`'s manifests directory, by name, with their text.
pub fn manifest_files(lab: &str) -> anyhow::Result<BTreeMap<String, String>> {
    current_files(&runtime::manifests_dir(lab))
}

pub fn current_files(dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if path.is_file() && (name.ends_with(".yaml") || name.ends_with(".yml")) {
            out.insert(name.to_string(), fs::read_to_string(&path)?);
        }
    }
    Ok(out)
}

/// What is refused before anything changes: an object given twice, a Pod the lab cannot run
/// or that would change an immutable field.
fn check_request(
    t: &Topology,
    docs: &[Document],
    stored: &Store,
    running: &[PodRecord],
) -> anyhow::Result<()> {
    refuse_duplicates(docs)?;
    for doc in docs {
        validate_pod(t, &doc.object, stored, running)
            .with_context(|| format!("{} ({})", doc.origin, describe(&doc.object)))?;
    }
    Ok(())
}

/// One object twice in one request would leave the last one applied: refused, as the same
/// file of the manifests directory.
fn refuse_duplicates(docs: &[Document]) -> anyhow::Result<()> {
    let mut seen: BTreeMap<&str, &Document> = BTreeMap::new();
    for doc in docs {
        if let Some(first) = seen.insert(&doc.file_name, doc) {
            bail!(
                "{} is given twice: in {} and in {}",
                describe(&doc.object),
                first.origin,
                doc.origin
            );
        }
    }
    Ok(())
}

/// Checks what the lab can run: containers with a command and an `env` it can resolve, a node
/// that exists, names that fit a namespace name; and that a Pod applied again changes none of
/// the fields Kubernetes keeps immutable (where it runs, its containers).
fn validate_pod(
    t: &Topology,
    object: &Object,
    stored: &Store,
    running: &[PodRecord],
) -> anyhow::Result<()> {
    let Object::Pod(pod) = object else {
        return Ok(());
    };
    let name = &pod.metadata.name;
    let valid_name = !name.is_empty()
        && name.len() <= 40
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid_name {
        bail!("pod name `{name}`: the lab needs 1 to 40 characters of a-z, 0-9 and -");
    }
    if pod.spec.containers.is_empty() {
        bail!("pod {name} has no containers");
    }
    if let Some(c) = pod.spec.containers.iter().find(|c| c.command.is_empty()) {
        bail!(
            "container {} of pod {name} has no command (the lab runs commands on the host \
             filesystem; there are no images)",
            c.name
        );
    }
    if let Some(node) = &pod.spec.node_name
        && t.node(node).is_none()
    {
        bail!(
            "pod {name} names node {node}, which lab {} does not have",
            t.name
        );
    }
    for container in &pod.spec.containers {
        for var in &container.env {
            var.check_supported()
                .with_context(|| format!("container {} of pod {name}", container.name))?;
        }
    }
    refuse_immutable_changes(pod, stored, running)
}

/// A Pod's spec cannot change once it exists (Kubernetes refuses such an update): it would
/// otherwise be stored changed while the old one keeps running.
fn refuse_immutable_changes(
    pod: &Pod,
    stored: &Store,
    running: &[PodRecord],
) -> anyhow::Result<()> {
    let (namespace, name) = (pod.metadata.namespace(), pod.metadata.name.as_str());
    let recreate = "a Pod's spec is immutable: delete the Pod, then apply it again";
    let runs_on = running
        .iter()
        .find(|r| r.namespace == namespace && r.name == name)
        .map(|r| r.node.as_str());
    let old = stored.pod(namespace, name);
    let placed = runs_on.or_else(|| old.and_then(|p| p.spec.node_name.as_deref()));
    if let (Some(wanted), Some(placed)) = (pod.spec.node_name.as_deref(), placed)
        && wanted != placed
    {
        bail!(
            "pod {namespace}/{name} is on node {placed}; spec.nodeName {wanted} would move it \
             ({recreate})"
        );
    }
    if let Some(old) = old
        && old.spec.containers != pod.spec.containers
    {
        bail!("pod {namespace}/{name}: spec.containers differ from the stored Pod's ({recreate})");
    }
    Ok(())
}

pub(crate) fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("yaml.tmp");
    fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// The manifests directory as one command sees it: read once, parsed once, and kept up to date
/// with what the command writes (each later [`Manifests::store`] parses only changed files).
pub(crate) struct Manifests {
    dir: PathBuf,
    files: BTreeMap<String, String>,
    cache: ManifestCache,
    dir_made: bool,
}

impl Manifests {
    pub(crate) fn read(dir: &Path) -> anyhow::Result<Manifests> {
        Ok(Manifests {
            dir: dir.to_path_buf(),
            files: current_files(dir)?,
            cache: ManifestCache::default(),
            dir_made: false,
        })
    }

    /// Reads the files again (others write into the directory too), keeping the parses.
    fn read_again(&mut self) -> anyhow::Result<()> {
        self.files = current_files(&self.dir)?;
        Ok(())
    }

    pub(crate) fn files(&self) -> &BTreeMap<String, String> {
        &self.files
    }

    /// The objects of the directory as it is now.
    pub(crate) fn store(&mut self) -> anyhow::Result<Store> {
        let files = self.files.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        self.cache
            .store(files)
            .with_context(|| format!("loading the objects of {}", self.dir.display()))
    }

    /// The objects the directory would hold with `changes` written, without writing them.
    fn store_with(&mut self, changes: &[(String, String)]) -> anyhow::Result<Store> {
        let changes: BTreeMap<&str, &str> = changes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let kept = self.files.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let kept = kept.filter(|(name, _)| !changes.contains_key(name));
        Ok(self
            .cache
            .store(kept.chain(changes.iter().map(|(k, v)| (*k, *v))))?)
    }

    pub(crate) fn write(&mut self, file: &str, text: &str) -> anyhow::Result<()> {
        if !self.dir_made {
            host::create_dir_all(&self.dir)?;
            self.dir_made = true;
        }
        write_atomically(&self.dir.join(file), text)?;
        self.files.insert(file.to_string(), text.to_string());
        Ok(())
    }

    /// Removes `file`; false when it was not there.
    pub(crate) fn remove(&mut self, file: &str) -> anyhow::Result<bool> {
        self.files.remove(file);
        match fs::remove_file(self.dir.join(file)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("removing {file}")),
        }
    }
}

/// Puts the objects of `paths` into the lab and starts the Pods among them; all or nothing.
pub fn apply(t: &Topology, bins: &Binaries, paths: &[PathBuf]) -> anyhow::Result<ApplyReport> {
    let docs = read_documents(paths)?;
    let mut manifests = Manifests::read(&runtime::manifests_dir(&t.name))?;
    let stored = manifests.store().context("the lab's objects do not load")?;
    let running = runtime::running_pods(&t.name)?;
    check_request(t, &docs, &stored, &running)?;
    let config = runtime::cluster_config(&t.name)?;
    let nodes: Vec<Ipv4Addr> = t.nodes.iter().map(|n| n.underlay_ip).collect();
    let settled = settle_documents(&mut manifests, &stored, docs, &config, &nodes)?;
    let pods = plan_pods(t, &settled.store, &running)?;
    for node in pods.nodes_starting() {
        runtime::ensure_agent_answers(&t.name, node)?;
    }
    let mut report = ApplyReport {
        objects: settled.described,
        warnings: settled.warnings,
        ..ApplyReport::default()
    };
    let previous = previous_texts(&manifests, &settled.changes);
    let applied = write_all(&mut manifests, &settled.changes)
        .and_then(|()| carry_out(t, bins, &pods, &mut report));
    if let Err(err) = applied {
        return Err(undo(t, bins, &mut manifests, previous, &mut report, err));
    }
    report.slices = sync_slices_after(&mut manifests, &report, settled.store)?;
    Ok(report)
}

/// What a request comes to once Services have their addresses: the files to write, the
/// objects as described to the user, warnings, and the directory's objects with them.
struct Settled {
    changes: Vec<(String, String)>,
    described: Vec<String>,
    warnings: Vec<String>,
    store: Store,
}

/// Gives the Services among `docs` their clusterIP, node ports and ingress address, and checks
/// that the whole directory with them loads; nothing is written. `nodes` are the lab's node
/// addresses.
fn settle_documents(
    manifests: &mut Manifests,
    stored: &Store,
    mut docs: Vec<Document>,
    config: &ClusterConfig,
    nodes: &[Ipv4Addr],
) -> anyhow::Result<Settled> {
    give_cluster_ips(&mut docs, stored, config.service_cidr)?;
    let warnings = give_north_south(&mut docs, stored, config, nodes)?;
    let changes: Vec<(String, String)> = docs
        .iter()
        .map(|d| (d.file_name.clone(), d.text.clone()))
        .collect();
    let store = manifests
        .store_with(&changes)
        .context("the lab's objects with these applied would not load")?;
    Ok(Settled {
        changes,
        described: docs.iter().map(|d| describe(&d.object)).collect(),
        warnings,
        store,
    })
}

/// Writes `docs` into the manifests directory, Services with the clusterIP, node ports and
/// ingress address they get, once the whole directory with them is known to load; what was
/// written, described, and warnings.
#[cfg(test)]
fn put_documents(
    manifests: &mut Manifests,
    docs: Vec<Document>,
    config: &ClusterConfig,
    nodes: &[Ipv4Addr],
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let stored = manifests.store().context("the lab's objects do not load")?;
    let settled = settle_documents(manifests, &stored, docs, config, nodes)?;
    write_all(manifests, &settled.changes)?;
    Ok((settled.described, settled.warnings))
}

fn write_all(manifests: &mut Manifests, changes: &[(String, String)]) -> anyhow::Result<()> {
    changes
        .iter()
        .try_for_each(|(file, text)| manifests.write(file, text))
}

/// The text each file of `changes` has now; `None` where there is no such file.
fn previous_texts(
    manifests: &Manifests,
    changes: &[(String, String)],
) -> Vec<(String, Option<String>)> {
    changes
        .iter()
        .map(|(file, _)| (file.clone(), manifests.files().get(file).cloned()))
        .collect()
}

/// Takes back a failed apply: stops the pods it started, puts the files it wrote back as they
/// were, and brings the derived slices to what runs. The error says what failed and whether
/// taking it back did too.
fn undo(
    t: &Topology,
    bins: &Binaries,
    manifests: &mut Manifests,
    previous: Vec<(String, Option<String>)>,
    report: &mut ApplyReport,
    err: anyhow::Error,
) -> anyhow::Error {
    let mut failures = Vec::new();
    for record in std::mem::take(&mut report.started) {
        if let Err(e) = runtime::stop_pod(t, bins, &record) {
            failures.push(format!("{e:#}"));
        }
    }
    for (file, text) in previous.iter().rev() {
        let restored = match text {
            Some(text) => manifests.write(file, text),
            None => manifests.remove(file).map(drop),
        };
        if let Err(e) = restored {
            failures.push(format!("restoring {file}: {e:#}"));
        }
    }
    let store = manifests.read_again().and_then(|()| manifests.store());
    if let Err(e) = store.and_then(|store| sync_slices_of(manifests, &store)) {
        failures.push(format!("EndpointSlices: {e:#}"));
    }
    if failures.is_empty() {
        err.context("nothing of the request was kept: its objects are as they were")
    } else {
        err.context(format!(
            "taking the request back failed too: {}",
            failures.join("; ")
        ))
    }
}

/// Sets the node ports and ingress address of every north-south Service among `docs`, in its
/// object and in the text written; the warnings of those left without an address.
fn give_north_south(
    docs: &mut [Document],
    stored: &Store,
    config: &ClusterConfig,
    nodes: &[Ipv4Addr],
) -> anyhow::Result<Vec<String>> {
    let mut pools = stored.lb_ip_pools.clone();
    for doc in docs.iter() {
        if let Object::LoadBalancerIpPool(pool) = &doc.object {
            pools.insert(pool.metadata.name.clone(), pool.clone());
        }
    }
    let services: Vec<&Service> = docs.iter().filter_map(|d| service_of(d)).collect();
    let published = stored.weft_nodes.values().map(|n| n.spec.underlay_ip);
    let rules = ExternalAddressRules::new(config, nodes.iter().copied().chain(published));
    let (settled, warnings) =
        settle_north_south(&services, stored, &pools, config.node_port.range, &rules)?;
    let service_docs = docs.iter_mut().filter(|d| service_of(d).is_some());
    for (doc, settled) in service_docs.zip(settled) {
        let Object::Service(svc) = &mut doc.object else {
            continue;
        };
        if !svc.spec.has_node_ports() {
            continue;
        }
        for (port, node_port) in svc.spec.ports.iter_mut().zip(&settled.node_ports) {
            port.node_port = *node_port;
        }
        svc.spec.health_check_node_port = settled.health_check_node_port;
        doc.text = with_north_south(&doc.text, &settled).with_context(|| {
            format!(
                "{}: writing the node ports of {}",
                doc.origin, doc.file_name
            )
        })?;
    }
    Ok(warnings)
}

/// Sets the clusterIP of every Service among `docs`, in its object and in the text written.
fn give_cluster_ips(
    docs: &mut [Document],
    stored: &Store,
    service_cidr: Ipv4Cidr,
) -> anyhow::Result<()> {
    let services: Vec<&Service> = docs.iter().filter_map(|d| service_of(d)).collect();
    let addresses = settle_cluster_ips(&services, stored, service_cidr)?;
    let service_docs = docs.iter_mut().filter(|d| service_of(d).is_some());
    for (doc, address) in service_docs.zip(addresses) {
        let (Some(ip), Object::Service(svc)) = (address, &mut doc.object) else {
            continue;
        };
        svc.spec.cluster_ip = Some(ClusterIp::V4(ip));
        doc.text = with_cluster_ip(&doc.text, ip).with_context(|| {
            format!("{}: writing the clusterIP of {}", doc.origin, doc.file_name)
        })?;
    }
    Ok(())
}

fn service_of(doc: &Document) -> Option<&Service> {
    match &doc.object {
        Object::Service(svc) => Some(svc),
        _ => None,
    }
}

/// Removes the objects of `paths` from the lab, stopping the Pods among them.
pub fn delete(t: &Topology, bins: &Binaries, paths: &[PathBuf]) -> anyhow::Result<ApplyReport> {
    let docs = read_documents(paths)?;
    let mut manifests = Manifests::read(&runtime::manifests_dir(&t.name))?;
    let mut report = ApplyReport::default();
    for doc in &docs {
        if manifests.remove(&doc.file_name)? {
            report.objects.push(describe(&doc.object));
        }
    }
    reconcile_pods_of(t, bins, &mut manifests, &mut report)?;
    Ok(report)
}

/// Brings the running pods to the Pods in the manifests: stops those whose Pod is gone, starts
/// the missing ones (on their `nodeName`, else on the node running the fewest pods); then
/// brings the derived EndpointSlices to the pods that run (also when some failed to start or
/// stop).
pub fn reconcile_pods(
    t: &Topology,
    bins: &Binaries,
    report: &mut ApplyReport,
) -> anyhow::Result<()> {
    let mut manifests = Manifests::read(&runtime::manifests_dir(&t.name))?;
    reconcile_pods_of(t, bins, &mut manifests, report)
}

fn reconcile_pods_of(
    t: &Topology,
    bins: &Binaries,
    manifests: &mut Manifests,
    report: &mut ApplyReport,
) -> anyhow::Result<()> {
    let store = manifests.store()?;
    let pods = runtime::running_pods(&t.name)
        .and_then(|running| plan_pods(t, &store, &running))
        .and_then(|plan| carry_out(t, bins, &plan, report));
    let slices = sync_slices_after(manifests, report, store);
    pods?;
    report.slices = slices?;
    Ok(())
}

/// Brings the derived EndpointSlices to the pods that run; `store` holds the directory's
/// objects from before pods started or stopped.
fn sync_slices_after(
    manifests: &mut Manifests,
    report: &ApplyReport,
    store: Store,
) -> anyhow::Result<SliceChanges> {
    // Pods that started or stopped wrote or removed their WeftEndpoints.
    let store = if report.started.is_empty() && report.stopped.is_empty() {
        store
    } else {
        manifests.read_again()?;
        manifests.store()?
    };
    sync_slices_of(manifests, &store)
}

/// The pods to stop (their Pod is gone) and to start (their Pod does not run), each on its
/// `nodeName`, else on the node running the fewest pods.
struct PodPlan {
    stop: Vec<PodRecord>,
    start: Vec<PodRequest>,
}

impl PodPlan {
    fn nodes_starting(&self) -> std::collections::BTreeSet<&str> {
        self.start.iter().map(|p| p.node.as_str()).collect()
    }
}

fn plan_pods(t: &Topology, store: &Store, running: &[PodRecord]) -> anyhow::Result<PodPlan> {
    let stop: Vec<PodRecord> = running
        .iter()
        .filter(|r| store.pod(&r.namespace, &r.name).is_none())
        .cloned()
        .collect();
    let mut load: BTreeMap<String, usize> = t.nodes.iter().map(|n| (n.name.clone(), 0)).collect();
    for record in running.iter().filter(|r| !stop.contains(r)) {
        *load.entry(record.node.clone()).or_default() += 1;
    }
    let mut start = Vec::new();
    for ((namespace, name), pod) in &store.pods {
        if running
            .iter()
            .any(|r| &r.namespace == namespace && &r.name == name)
        {
            continue;
        }
        let node = match &pod.spec.node_name {
            Some(node) => node.clone(),
            None => least_loaded(&load).ok_or_else(|| anyhow!("lab {} has no nodes", t.name))?,
        };
        *load.entry(node.clone()).or_default() += 1;
        start.push(PodRequest {
            namespace: namespace.clone(),
            name: name.clone(),
            node,
            containers: pod.spec.containers.clone(),
        });
    }
    Ok(PodPlan { stop, start })
}

/// Stops and starts the pods of `plan`, recording each in `report`. Every stop is tried; the
/// first pod that fails to start ends the starting (what started is in `report`).
fn carry_out(
    t: &Topology,
    bins: &Binaries,
    plan: &PodPlan,
    report: &mut ApplyReport,
) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for record in &plan.stop {
        match runtime::stop_pod(t, bins, record) {
            Ok(()) => report.stopped.push(record.clone()),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    for request in &plan.start {
        match runtime::run_pod(t, bins, request) {
            Ok(record) => report.started.push(record),
            Err(e) => {
                errors.push(format!(
                    "pod {}/{} on {}: {e:#}",
                    request.namespace, request.name, request.node
                ));
                break;
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("{}", errors.join("; "))
    }
}

fn least_loaded(load: &BTreeMap<String, usize>) -> Option<String> {
    load.iter()
        .min_by_key(|(name, count)| (**count, name.len(), (*name).clone()))
        .map(|(name, _)| name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::temp_dir::TempDir;

    #[test]
    fn documents_are_split_on_separator_lines_and_empty_ones_dropped() {
        let text = "# c\n---\napiVersion: v1\nkind: Pod\n---\n\n--- \nkind: Namespace\n";
        let docs = split_documents(text);
        assert_eq!(docs.len(), 2, "{docs:?}");
        assert!(docs[0].contains("kind: Pod"));
        assert!(docs[1].contains("kind: Namespace"));
    }

    fn service_cidr() -> Ipv4Cidr {
        "10.43.0.0/16".parse().expect("cidr")
    }

    /// Applies `text` (as file `request.yaml`) to manifests directory `dir`.
    fn put(dir: &TempDir, text: &str) -> anyhow::Result<Vec<String>> {
        put_warned(dir, text).map(|(described, _)| described)
    }

    /// [`put`] with node ports from 30000-30002.
    fn put_narrow(dir: &TempDir, text: &str) -> anyhow::Result<Vec<String>> {
        put_in_range(dir, text, "30000,30002").map(|(described, _)| described)
    }

    /// [`put`], with the warnings.
    fn put_warned(dir: &TempDir, text: &str) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        put_in_range(dir, text, "30000-32767")
    }

    fn put_in_range(
        dir: &TempDir,
        text: &str,
        range: &str,
    ) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let request = TempDir::new();
        request.write("request.yaml", text);
        let docs = read_documents(&[request.0.join("request.yaml")])?;
        let config = ClusterConfig::from_yaml(&format!(
            "serviceCIDR: 10.43.0.0/16\nnodePort: {{range: \"{range}\"}}\n"
        ))?;
        let nodes = ["198.51.100.1".parse()?, "198.51.100.2".parse()?];
        put_documents(&mut Manifests::read(&dir.0)?, docs, &config, &nodes)
    }

    fn node_ports(svc: &Service) -> Vec<Option<u16>> {
        svc.spec.ports.iter().map(|p| p.node_port).collect()
    }

    #[test]
    fn node_ports_are_allocated_from_the_range_kept_on_reapply_and_unique() {
        let dir = TempDir::new();
        let web = service(
            "web",
            "{type: NodePort, ports: [{port: 80}, {port: 53, protocol: UDP, nodePort: 30000}]}",
        );
        put_narrow(&dir, &web).expect("applied");
        let stored = stored_service(&dir, "web");
        assert_eq!(node_ports(&stored), [Some(30001), Some(30000)]);
        let text = dir.read("service_default_web.yaml").expect("file");
        assert!(text.contains("nodePort: 30001"), "{text}");
        let again = service(
            "web",
            "{type: NodePort, ports: [{port: 80}, {port: 53, protocol: UDP}]}",
        );
        put_narrow(&dir, &again).expect("re-applied");
        assert_eq!(
            node_ports(&stored_service(&dir, "web")),
            [Some(30001), Some(30000)],
            "kept"
        );
        let before = current_files(&dir.0).expect("files");
        for (request, says) in [
            (
                service(
                    "db",
                    "{type: NodePort, ports: [{port: 5432, nodePort: 30001}]}",
                ),
                "node port 30001 is already allocated to Service default/web",
            ),
            (
                service(
                    "db",
                    "{type: NodePort, ports: [{port: 5432, nodePort: 31000}]}",
                ),
                "node port 31000 is outside nodePort.range 30000-30002",
            ),
            (
                service("db", "{type: NodePort, ports: [{port: 1}, {port: 2}]}"),
                "no free node port in nodePort.range 30000-30002 for port 2",
            ),
        ] {
            let err = put_narrow(&dir, &request).unwrap_err();
            assert!(format!("{err:#}").contains(says), "{err:#}");
            assert_eq!(
                current_files(&dir.0).expect("files"),
                before,
                "nothing written"
            );
        }
        put(
            &dir,
            &service("db", "{type: NodePort, ports: [{port: 5432}]}"),
        )
        .expect("the last port");
        assert_eq!(node_ports(&stored_service(&dir, "db")), [Some(30002)]);
        put_narrow(&dir, &service("plain", "{ports: [{port: 80}]}")).expect("a ClusterIP Service");
        assert_eq!(node_ports(&stored_service(&dir, "plain")), [None]);
    }

    const POOL: &str = "apiVersion: cilium.io/v2alpha1\nkind: CiliumLoadBalancerIPPool\n\
        metadata: {name: public}\nspec: {blocks: [{start: 192.0.2.10, stop: 192.0.2.11}]}\n---\n";

    fn ingress(dir: &TempDir, name: &str) -> Vec<std::net::Ipv4Addr> {
        stored_service(dir, name).ingress_ips()
    }

    #[test]
    fn load_balancers_get_pool_addresses_health_check_ports_and_wait_when_none_is_free() {
        use std::net::Ipv4Addr;
        let dir = TempDir::new();
        let (_, warnings) = put_warned(
            &dir,
            &format!(
                "{POOL}{}",
                service(
                    "a",
                    "{type: LoadBalancer, ports: [{port: 443}], externalTrafficPolicy: Local}"
                )
            ),
        )
        .expect("applied");
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(ingress(&dir, "a"), [Ipv4Addr::new(192, 0, 2, 10)]);
        let a = stored_service(&dir, "a");
        assert_eq!(
            (node_ports(&a), a.spec.health_check_node_port),
            (vec![Some(30000)], Some(30001))
        );
        let text = dir.read("service_default_a.yaml").expect("file");
        assert!(
            text.contains("status:\n  loadBalancer:\n    ingress:\n    - ip: 192.0.2.10"),
            "{text}"
        );

        put(
            &dir,
            &service(
                "b",
                "{type: LoadBalancer, loadBalancerIP: 192.0.2.11, ports: [{port: 80}]}",
            ),
        )
        .expect("asked for");
        assert_eq!(ingress(&dir, "b"), [Ipv4Addr::new(192, 0, 2, 11)]);
        put(
            &dir,
            &service("a", "{type: LoadBalancer, ports: [{port: 443}]}"),
        )
        .expect("re-applied");
        assert_eq!(ingress(&dir, "a"), [Ipv4Addr::new(192, 0, 2, 10)], "kept");
        assert_eq!(
            stored_service(&dir, "a").spec.health_check_node_port,
            None,
            "eTP Cluster now"
        );

        let (_, warnings) = put_warned(
            &dir,
            &service("c", "{type: LoadBalancer, ports: [{port: 80}]}"),
        )
        .expect("stored");
        assert!(ingress(&dir, "c").is_empty());
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0]
                .contains("Service default/c: no CiliumLoadBalancerIPPool has a free address"),
            "{warnings:?}"
        );
        let selective = POOL.replace("{name: public}", "{name: other}").replace(
            "192.0.2.10, stop: 192.0.2.11}]",
            "198.51.100.50, stop: 198.51.100.50}], serviceSelector: {matchLabels: {tier: edge}}",
        );
        put(&dir, &selective).expect("pool");
        put(
            &dir,
            &service("d", "{type: LoadBalancer, ports: [{port: 80}]}"),
        )
        .expect("unlabelled");
        assert!(
            ingress(&dir, "d").is_empty(),
            "the pool selects other Services"
        );
        let labelled = service("e", "{type: LoadBalancer, ports: [{port: 80}]}")
            .replace("{name: e}", "{name: e, labels: {tier: edge}}");
        put(&dir, &labelled).expect("labelled");
        assert_eq!(ingress(&dir, "e"), [Ipv4Addr::new(198, 51, 100, 50)]);
    }

    fn stored_service(dir: &TempDir, name: &str) -> Service {
        let text = dir
            .read(&format!("service_default_{name}.yaml"))
            .expect("service file");
        match parse_manifest("s.yaml", &text).expect("parses").pop() {
            Some(Object::Service(svc)) => svc,
            other => panic!("{other:?}"),
        }
    }

    fn service(name: &str, spec: &str) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {spec}\n")
    }

    #[test]
    fn an_applied_service_is_stored_with_an_allocated_cluster_ip_it_keeps() {
        let dir = TempDir::new();
        put(&dir, &service("web", "{ports: [{port: 80}]}")).expect("applied");
        let ip = stored_service(&dir, "web")
            .spec
            .cluster_ipv4()
            .expect("allocated");
        assert!(service_cidr().contains(ip));
        let text = dir.read("service_default_web.yaml").expect("file");
        assert!(text.contains(&format!("clusterIPs:\n  - {ip}")), "{text}");
        put(&dir, &service("web", "{ports: [{port: 8080}]}")).expect("re-applied");
        let again = stored_service(&dir, "web");
        assert_eq!(again.spec.cluster_ipv4(), Some(ip), "kept");
        assert_eq!(again.spec.ports[0].port, 8080);
        put(&dir, &service("dns", "{clusterIP: None}")).expect("headless");
        assert_eq!(
            stored_service(&dir, "dns").spec.cluster_ip,
            Some(ClusterIp::Headless)
        );
    }

    #[test]
    fn a_taken_or_foreign_cluster_ip_refuses_the_whole_request() {
        let dir = TempDir::new();
        put(&dir, &service("db", "{clusterIP: 10.43.0.20}")).expect("applied");
        let before = current_files(&dir.0).expect("files");
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n\
                   spec: {containers: [{name: c, command: [sleep]}]}\n---\n";
        let err = put(
            &dir,
            &format!("{pod}{}", service("web", "{clusterIP: 10.43.0.20}")),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("10.43.0.20 is already allocated to Service default/db"),
            "{err:#}"
        );
        let err = put(&dir, &service("web", "{clusterIP: 10.96.0.1}")).unwrap_err();
        assert!(
            format!("{err:#}").contains("outside the service CIDR"),
            "{err:#}"
        );
        assert_eq!(
            current_files(&dir.0).expect("files"),
            before,
            "nothing written"
        );
    }

    #[test]
    fn external_addresses_that_would_hijack_traffic_refuse_the_whole_request() {
        let dir = TempDir::new();
        put(&dir, &service("db", "{clusterIP: 10.43.0.20}")).expect("applied");
        let before = current_files(&dir.0).expect("files");
        for (spec, why) in [
            (
                "{externalIPs: [10.42.1.10], ports: [{port: 80}]}",
                "Service default/web: externalIPs 10.42.1.10 is inside the pod CIDR 10.42.0.0/16",
            ),
            (
                "{externalIPs: [10.43.0.20], ports: [{port: 80}]}",
                "externalIPs 10.43.0.20 is inside the service CIDR",
            ),
            (
                "{externalIPs: [192.0.2.7, 169.254.42.1], ports: [{port: 80}]}",
                "externalIPs 169.254.42.1 is a link-local address",
            ),
            (
                "{type: LoadBalancer, loadBalancerIP: 198.51.100.2, ports: [{port: 80}]}",
                "LoadBalancer address 198.51.100.2 is a node's address",
            ),
        ] {
            let err = put(&dir, &format!("{POOL}{}", service("web", spec))).unwrap_err();
            assert!(format!("{err:#}").contains(why), "{spec}: {err:#}");
            assert_eq!(current_files(&dir.0).expect("files"), before, "{spec}");
        }
        put(
            &dir,
            &service(
                "edge",
                "{externalIPs: [198.51.100.1, 198.51.100.2], ports: [{port: 80}]}",
            ),
        )
        .expect("node addresses as externalIPs, as the seed does");
    }

    #[test]
    fn a_pool_overlapping_the_nodes_never_hands_out_a_node_address() {
        use std::net::Ipv4Addr;
        let dir = TempDir::new();
        let overlapping = POOL.replace(
            "192.0.2.10, stop: 192.0.2.11",
            "198.51.100.1, stop: 198.51.100.3",
        );
        put(&dir, &overlapping).expect("pool");
        put(
            &dir,
            &service("a", "{type: LoadBalancer, ports: [{port: 80}]}"),
        )
        .expect("stored");
        assert_eq!(ingress(&dir, "a"), [Ipv4Addr::new(198, 51, 100, 3)]);
    }

    #[test]
    fn derived_slices_cannot_be_applied() {
        let dir = TempDir::new();
        let slice = format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: web-weft, labels: {{endpointslice.kubernetes.io/managed-by: {}}}}}\n\
             addressType: IPv4\n",
            weft_model::endpointslice::WEFT_SLICE_MANAGER
        );
        let err = put(&dir, &slice).unwrap_err();
        assert!(format!("{err:#}").contains("derived by the lab"), "{err:#}");
    }

    /// The request `text` (as file `request.yaml`) checked against the objects of `dir`, on a
    /// planned 2-node lab where `running` pods run.
    fn check(dir: &TempDir, text: &str, running: &[PodRecord]) -> anyhow::Result<()> {
        let request = TempDir::new();
        request.write("request.yaml", text);
        let docs = read_documents(&[request.0.join("request.yaml")])?;
        let t = crate::plan(&crate::LabSpec::with_size("chk", 2, 0))?;
        let stored = Manifests::read(&dir.0)?.store()?;
        check_request(&t, &docs, &stored, running)
    }

    fn pod(name: &str, spec: &str) -> String {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec: {spec}\n---\n")
    }

    fn record(name: &str, node: &str) -> PodRecord {
        PodRecord {
            namespace: "default".into(),
            name: name.into(),
            node: node.into(),
            netns: format!("chk-{node}-{name}"),
            container_id: String::new(),
            address: None,
            pids: vec![],
        }
    }

    const SLEEP: &str = "containers: [{name: c, command: [sleep, '60']}]";

    #[test]
    fn an_object_given_twice_in_one_request_is_refused() {
        let dir = TempDir::new();
        let web = pod("web", &format!("{{{SLEEP}}}"));
        let other = pod("other", &format!("{{{SLEEP}}}"));
        check(&dir, &format!("{web}{other}"), &[]).expect("distinct names");
        let err = format!(
            "{:#}",
            check(&dir, &format!("{web}{other}{web}"), &[]).unwrap_err()
        );
        assert!(
            err.starts_with("Pod default/web is given twice: in "),
            "{err}"
        );
        assert!(
            err.contains("request.yaml (document 1) and in ")
                && err.ends_with("request.yaml (document 3)"),
            "{err}"
        );
        let svc = service("web", "{ports: [{port: 80}]}");
        let err = check(&dir, &format!("{svc}---\n{svc}"), &[]).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("Service default/web is given twice"),
            "{err:#}"
        );
    }

    #[test]
    fn a_pod_applied_again_may_not_move_or_change_its_containers() {
        let dir = TempDir::new();
        put(&dir, &pod("web", &format!("{{nodeName: vps1, {SLEEP}}}"))).expect("stored");
        put(&dir, &pod("free", &format!("{{{SLEEP}}}"))).expect("stored");
        let running = [record("web", "vps1"), record("free", "vps2")];
        check(
            &dir,
            &pod("web", &format!("{{nodeName: vps1, {SLEEP}}}")),
            &running,
        )
        .expect("the same Pod again");
        check(&dir, &pod("web", &format!("{{{SLEEP}}}")), &running)
            .expect("no nodeName: it stays where it is");
        let moved = check(
            &dir,
            &pod("web", &format!("{{nodeName: vps2, {SLEEP}}}")),
            &running,
        );
        let err = format!("{:#}", moved.unwrap_err());
        assert!(
            err.contains("pod default/web is on node vps1; spec.nodeName vps2 would move it"),
            "{err}"
        );
        assert!(err.contains("delete the Pod, then apply it again"), "{err}");
        // Placed by the lab (no nodeName stored): where it runs counts.
        let moved = check(
            &dir,
            &pod("free", &format!("{{nodeName: vps1, {SLEEP}}}")),
            &running,
        );
        assert!(
            format!("{:#}", moved.unwrap_err()).contains("is on node vps2"),
            "placed by the lab"
        );
        let changed = pod(
            "web",
            "{nodeName: vps1, containers: [{name: c, command: [sleep, '61']}]}",
        );
        let err = format!("{:#}", check(&dir, &changed, &running).unwrap_err());
        assert!(err.contains("spec.containers differ"), "{err}");
    }

    #[test]
    fn an_env_the_lab_cannot_resolve_is_refused_before_anything_changes() {
        let dir = TempDir::new();
        let with_env = |env: &str| {
            pod(
                "web",
                &format!("{{containers: [{{name: c, command: [sleep, '60'], env: [{env}]}}]}}"),
            )
        };
        check(
            &dir,
            &with_env(
                "{name: A, value: a}, {name: IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}",
            ),
            &[],
        )
        .expect("supported");
        for (env, says) in [
            (
                "{name: T, valueFrom: {secretKeyRef: {name: s, key: k}}}",
                "container c of pod web: env T: valueFrom.secretKeyRef is not supported",
            ),
            (
                "{name: U, valueFrom: {fieldRef: {fieldPath: metadata.uid}}}",
                "env U: fieldRef `metadata.uid` is not supported",
            ),
        ] {
            let err = format!("{:#}", check(&dir, &with_env(env), &[]).unwrap_err());
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn the_least_loaded_node_wins_and_ties_go_to_the_first() {
        let load: BTreeMap<String, usize> = [("vps1", 2), ("vps2", 1), ("vps3", 1)]
            .into_iter()
            .map(|(n, c)| (n.to_string(), c))
            .collect();
        assert_eq!(least_loaded(&load).as_deref(), Some("vps2"));
    }
}
