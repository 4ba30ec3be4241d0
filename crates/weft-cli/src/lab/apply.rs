//! `weft lab apply -f` / `weft lab delete -f`: kubectl-like lines of what changed.

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use weft_lab::{
    apply::{ApplyReport, manifest_files},
    runtime::{self, Binaries, PodRecord},
};

/// The manifests directory's YAML files and their text, by file name.
type Snapshot = BTreeMap<String, String>;

pub fn apply(lab: &str, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let topology = weft_lab::load(lab)?;
    let bins = Binaries::locate()?;
    let before = manifest_files(lab)?;
    let report = weft_lab::apply::apply(&topology, &bins, files)
        .with_context(|| format!("applying {} to lab {lab}", list(files)))?;
    let after = manifest_files(lab)?;
    let running = runtime::running_pods(lab)?;
    for line in applied_lines(&report, &before, &after, &running) {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn delete(lab: &str, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let topology = weft_lab::load(lab)?;
    let bins = Binaries::locate()?;
    let report = weft_lab::apply::delete(&topology, &bins, files)
        .with_context(|| format!("deleting {} from lab {lab}", list(files)))?;
    let lines = deleted_lines(&report);
    if lines.is_empty() {
        println!("no object of those manifests is in lab {lab}");
    }
    for line in lines {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

fn list(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// An object as the lab's report names it (`Pod default/web`, `Namespace team`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    pub fn parse(described: &str) -> ObjectRef {
        let (kind, rest) = described.split_once(' ').unwrap_or((described, ""));
        let (namespace, name) = match rest.split_once('/') {
            Some((ns, name)) => (Some(ns.to_string()), name.to_string()),
            None => (None, rest.to_string()),
        };
        ObjectRef {
            kind: kind.to_lowercase(),
            namespace,
            name,
        }
    }

    /// `pod/default/web`, `namespace/team`.
    pub fn display(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{ns}/{}", self.kind, self.name),
            None => format!("{}/{}", self.kind, self.name),
        }
    }

    /// Its file in the manifests directory.
    fn file_name(&self) -> String {
        format!(
            "{}_{}_{}.yaml",
            self.kind,
            self.namespace.as_deref().unwrap_or(""),
            self.name
        )
    }

    fn is_pod(&self, record: &PodRecord) -> bool {
        self.kind == "pod"
            && self.namespace.as_deref() == Some(record.namespace.as_str())
            && self.name == record.name
    }
}

fn pod_ref(record: &PodRecord) -> String {
    format!("pod/{}/{}", record.namespace, record.name)
}

fn placement(record: &PodRecord) -> String {
    format!(
        "on {} {}",
        record.node,
        record.address.as_deref().unwrap_or("(no address)")
    )
}

/// One line per applied object (`created`, `configured` or `unchanged`, and where a pod runs),
/// then the pods the lab started or stopped besides.
pub fn applied_lines(
    report: &ApplyReport,
    before: &Snapshot,
    after: &Snapshot,
    running: &[PodRecord],
) -> Vec<String> {
    let mut lines = Vec::new();
    for described in &report.objects {
        let object = ObjectRef::parse(described);
        let file = object.file_name();
        let verb = match (before.get(&file), after.get(&file)) {
            (None, _) => "created",
            (Some(old), Some(new)) if old == new => "unchanged",
            (Some(_), _) => "configured",
        };
        let mut line = format!("{} {verb}", object.display());
        if let Some(pod) = running.iter().find(|r| object.is_pod(r)) {
            line.push(' ');
            line.push_str(&placement(pod));
        }
        lines.push(line);
    }
    lines.extend(side_effects(report));
    lines.extend(report.warnings.iter().map(|w| format!("warning: {w}")));
    lines
}

/// One line per deleted object, with the node a deleted pod was stopped on.
pub fn deleted_lines(report: &ApplyReport) -> Vec<String> {
    let mut lines = Vec::new();
    for described in &report.objects {
        let object = ObjectRef::parse(described);
        let mut line = format!("{} deleted", object.display());
        if let Some(pod) = report.stopped.iter().find(|r| object.is_pod(r)) {
            line.push_str(&format!(" (stopped on {})", pod.node));
        }
        lines.push(line);
    }
    lines.extend(side_effects(report));
    lines
}

/// Pods started or stopped that no object of the request names (the lab catching up), and the
/// EndpointSlices the lab derived.
fn side_effects(report: &ApplyReport) -> Vec<String> {
    let named = |r: &PodRecord| report.objects.iter().any(|d| ObjectRef::parse(d).is_pod(r));
    let started = report
        .started
        .iter()
        .filter(|r| !named(r))
        .map(|r| format!("{} started {}", pod_ref(r), placement(r)));
    let stopped = report
        .stopped
        .iter()
        .filter(|r| !named(r))
        .map(|r| format!("{} stopped on {}", pod_ref(r), r.node));
    let slices_written = report
        .slices
        .written
        .iter()
        .map(|s| format!("endpointslice/{s} written"));
    let slices_removed = report
        .slices
        .removed
        .iter()
        .map(|s| format!("endpointslice/{s} removed"));
    started
        .chain(stopped)
        .chain(slices_written)
        .chain(slices_removed)
        .collect()
}

#[cfg(test)]
mod tests {
    use weft_lab::slices::SliceChanges;

    use super::*;

    fn record(name: &str, node: &str, address: &str) -> PodRecord {
        PodRecord {
            namespace: "default".into(),
            name: name.into(),
            node: node.into(),
            netns: format!("lab-{node}-{name}"),
            container_id: format!("lab-default-{name}"),
            address: Some(address.into()),
            pids: vec![42],
        }
    }

    fn snap(files: &[(&str, &str)]) -> Snapshot {
        files
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn objects_are_named_like_kubectl() {
        assert_eq!(
            ObjectRef::parse("Pod default/web").display(),
            "pod/default/web"
        );
        assert_eq!(
            ObjectRef::parse("Namespace team").display(),
            "namespace/team"
        );
        assert_eq!(
            ObjectRef::parse("Pod default/web").file_name(),
            "pod_default_web.yaml"
        );
        assert_eq!(
            ObjectRef::parse("Namespace team").file_name(),
            "namespace__team.yaml"
        );
    }

    #[test]
    fn applied_objects_say_what_changed_and_where_pods_run() {
        let web = record("web", "vps1", "10.42.1.10/32");
        let report = ApplyReport {
            objects: vec![
                "Namespace team".into(),
                "Pod default/web".into(),
                "Pod default/db".into(),
            ],
            started: vec![web.clone()],
            stopped: vec![record("old", "vps2", "10.42.2.10/32")],
            slices: SliceChanges {
                written: vec!["default/web-weft".into()],
                removed: vec!["default/old-weft".into()],
            },
            warnings: vec![
                "Service default/lb: no CiliumLoadBalancerIPPool has a free address".into(),
            ],
        };
        let before = snap(&[("namespace__team.yaml", "a"), ("pod_default_db.yaml", "x")]);
        let after = snap(&[
            ("namespace__team.yaml", "a"),
            ("pod_default_db.yaml", "y"),
            ("pod_default_web.yaml", "z"),
        ]);
        let db = record("db", "vps2", "10.42.2.11/32");
        assert_eq!(
            applied_lines(&report, &before, &after, &[web, db]),
            [
                "namespace/team unchanged",
                "pod/default/web created on vps1 10.42.1.10/32",
                "pod/default/db configured on vps2 10.42.2.11/32",
                "pod/default/old stopped on vps2",
                "endpointslice/default/web-weft written",
                "endpointslice/default/old-weft removed",
                "warning: Service default/lb: no CiliumLoadBalancerIPPool has a free address",
            ]
        );
    }

    #[test]
    fn deleted_pods_say_where_they_were_stopped() {
        let report = ApplyReport {
            objects: vec!["Pod default/web".into()],
            started: vec![],
            stopped: vec![record("web", "vps1", "10.42.1.10/32")],
            ..ApplyReport::default()
        };
        assert_eq!(
            deleted_lines(&report),
            ["pod/default/web deleted (stopped on vps1)"]
        );
    }
}
