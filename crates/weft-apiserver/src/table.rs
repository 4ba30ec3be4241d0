//! `meta.k8s.io/v1` Tables, what `kubectl get` asks for: the columns kubectl shows for Pods,
//! Services, Nodes, Namespaces, EndpointSlices and CRDs (from Kubernetes' own printers), a
//! CRD's additionalPrinterColumns, NAME and AGE for the rest.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::{
    meta,
    registry::{KindRules, PrinterColumn, ResourceDef},
    store::StoredObject,
};

/// `includeObject`: what each row carries besides its cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(text: Option<&str>) -> IncludeObject {
        match text {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

#[derive(Clone)]
pub(crate) struct TableRenderer {
    pub def: Arc<ResourceDef>,
    pub version: String,
    pub include: IncludeObject,
}

struct Column {
    name: String,
    type_: &'static str,
    format: &'static str,
    priority: i32,
    description: String,
}

fn column(name: &str, priority: i32) -> Column {
    let format = if name == "Name" { "name" } else { "" };
    Column {
        name: name.to_string(),
        type_: "string",
        format,
        priority,
        description: String::new(),
    }
}

impl TableRenderer {
    fn columns(&self) -> Vec<Column> {
        let named = |names: &[(&str, i32)]| names.iter().map(|(n, p)| column(n, *p)).collect();
        match self.def.rules {
            KindRules::Pod => named(&[
                ("Name", 0),
                ("Ready", 0),
                ("Status", 0),
                ("Restarts", 0),
                ("Age", 0),
                ("IP", 1),
                ("Node", 1),
                ("Nominated Node", 1),
                ("Readiness Gates", 1),
            ]),
            KindRules::Service => named(&[
                ("Name", 0),
                ("Type", 0),
                ("Cluster-IP", 0),
                ("External-IP", 0),
                ("Port(s)", 0),
                ("Age", 0),
                ("Selector", 1),
            ]),
            KindRules::Node => named(&[
                ("Name", 0),
                ("Status", 0),
                ("Roles", 0),
                ("Age", 0),
                ("Version", 0),
                ("Internal-IP", 1),
                ("External-IP", 1),
                ("OS-Image", 1),
                ("Kernel-Version", 1),
                ("Container-Runtime", 1),
            ]),
            KindRules::Namespace => named(&[("Name", 0), ("Status", 0), ("Age", 0)]),
            KindRules::EndpointSlice => named(&[
                ("Name", 0),
                ("AddressType", 0),
                ("Ports", 0),
                ("Endpoints", 0),
                ("Age", 0),
            ]),
            KindRules::Crd => named(&[("Name", 0), ("Created At", 0)]),
            KindRules::Custom => {
                let printer = self.printer_columns();
                let mut columns = vec![column("Name", 0)];
                columns.extend(printer.iter().map(|c| Column {
                    name: c.name.clone(),
                    type_: match c.type_.as_str() {
                        "integer" => "integer",
                        "number" => "number",
                        "boolean" => "boolean",
                        "date" => "date",
                        _ => "string",
                    },
                    format: "",
                    priority: c.priority,
                    description: c.description.clone(),
                }));
                if printer.is_empty() {
                    columns.push(column("Age", 0));
                }
                columns
            }
            KindRules::Generic => named(&[("Name", 0), ("Age", 0)]),
        }
    }

    fn printer_columns(&self) -> Vec<PrinterColumn> {
        self.def
            .version(&self.version)
            .map(|v| v.printer_columns.clone())
            .unwrap_or_default()
    }

    fn cells(&self, object: &Value) -> Vec<Value> {
        let name = json!(meta::name(object));
        let age = json!(age(object));
        match self.def.rules {
            KindRules::Pod => pod_cells(object, name, age),
            KindRules::Service => service_cells(object, name, age),
            KindRules::Node => node_cells(object, name, age),
            KindRules::Namespace => vec![
                name,
                json!(meta::get_str(object, "status.phase").unwrap_or("")),
                age,
            ],
            KindRules::EndpointSlice => endpoint_slice_cells(object, name, age),
            KindRules::Crd => vec![
                name,
                json!(meta::get_str(object, "metadata.creationTimestamp").unwrap_or("")),
            ],
            KindRules::Custom => {
                let printer = self.printer_columns();
                let mut cells = vec![name];
                cells.extend(printer.iter().map(|c| custom_cell(object, c)));
                if printer.is_empty() {
                    cells.push(age);
                }
                cells
            }
            KindRules::Generic => vec![name, age],
        }
    }

    /// The Table of `objects`, at list resourceVersion `rv`.
    pub fn render_objects<'a>(
        &self,
        objects: impl IntoIterator<Item = &'a StoredObject>,
        rv: u64,
        continue_token: Option<&str>,
    ) -> Bytes {
        let columns: Vec<Value> = self
            .columns()
            .iter()
            .map(|c| json!({"name": c.name, "type": c.type_, "format": c.format, "description": c.description, "priority": c.priority}))
            .collect();
        let rows: Vec<Value> = objects
            .into_iter()
            .filter_map(|o| o.value().ok())
            .map(|value| {
                let mut row = json!({"cells": self.cells(&value)});
                match self.include {
                    IncludeObject::None => {}
                    IncludeObject::Metadata => {
                        row["object"] = json!({
                            "kind": "PartialObjectMetadata",
                            "apiVersion": "meta.k8s.io/v1",
                            "metadata": value.get("metadata").cloned().unwrap_or(json!({})),
                        });
                    }
                    IncludeObject::Object => {
                        let mut value = value;
                        value["apiVersion"] = json!(self.def.api_version(&self.version));
                        row["object"] = value;
                    }
                }
                row
            })
            .collect();
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if let Some(token) = continue_token {
            metadata["continue"] = json!(token);
        }
        let table = json!({
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": metadata,
            "columnDefinitions": columns,
            "rows": rows,
        });
        Bytes::from(serde_json::to_vec(&table).unwrap_or_default())
    }
}

fn age(object: &Value) -> String {
    match meta::get_str(object, "metadata.creationTimestamp").and_then(meta::seconds_since) {
        Some(seconds) => human_duration(seconds),
        None => "<unknown>".to_string(),
    }
}

/// Kubernetes' `duration.HumanDuration`, which kubectl's AGE column uses.
pub(crate) fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    if seconds < 0 {
        return "0s".to_string();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        let years = hours / 24 / 365;
        return if days == 0 {
            format!("{years}y")
        } else {
            format!("{years}y{days}d")
        };
    }
    format!("{}y", hours / 24 / 365)
}

fn or_none(value: Option<&str>) -> String {
    match value {
        Some(v) if !v.is_empty() => v.to_string(),
        _ => "<none>".to_string(),
    }
}

fn list<'a>(object: &'a Value, path: &str) -> &'a [Value] {
    meta::get(object, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Kubernetes' `printPod`, without the details of init containers beyond `Init:n/m`.
fn pod_cells(pod: &Value, name: Value, age: Value) -> Vec<Value> {
    let total = list(pod, "spec.containers").len();
    let mut reason = meta::get_str(pod, "status.reason")
        .or_else(|| meta::get_str(pod, "status.phase"))
        .unwrap_or("")
        .to_string();
    let mut restarts = 0i64;
    let mut ready = 0usize;
    let mut last_restart: Option<i64> = None;
    let init_specs = list(pod, "spec.initContainers").len();
    let mut initializing = false;
    for (i, status) in list(pod, "status.initContainerStatuses").iter().enumerate() {
        restarts += status
            .get("restartCount")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let terminated = meta::get(status, "state.terminated");
        if terminated
            .and_then(|t| t.get("exitCode"))
            .and_then(Value::as_i64)
            == Some(0)
        {
            continue;
        }
        initializing = true;
        reason = match (terminated, meta::get_str(status, "state.waiting.reason")) {
            (Some(t), _) => format!(
                "Init:{}",
                t.get("reason").and_then(Value::as_str).unwrap_or("Error")
            ),
            (None, Some(waiting)) if waiting != "PodInitializing" => format!("Init:{waiting}"),
            _ => format!("Init:{i}/{init_specs}"),
        };
        break;
    }
    if !initializing {
        restarts = 0;
        let mut has_running = false;
        for status in list(pod, "status.containerStatuses").iter().rev() {
            restarts += status
                .get("restartCount")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if let Some(finished) = meta::get_str(status, "lastState.terminated.finishedAt")
                .and_then(meta::seconds_since)
            {
                last_restart = Some(last_restart.map_or(finished, |l| l.min(finished)));
            }
            if let Some(waiting) =
                meta::get_str(status, "state.waiting.reason").filter(|r| !r.is_empty())
            {
                reason = waiting.to_string();
            } else if let Some(terminated) = meta::get(status, "state.terminated") {
                reason = match terminated
                    .get("reason")
                    .and_then(Value::as_str)
                    .filter(|r| !r.is_empty())
                {
                    Some(r) => r.to_string(),
                    None => match terminated
                        .get("signal")
                        .and_then(Value::as_i64)
                        .filter(|s| *s != 0)
                    {
                        Some(signal) => format!("Signal:{signal}"),
                        None => format!(
                            "ExitCode:{}",
                            terminated
                                .get("exitCode")
                                .and_then(Value::as_i64)
                                .unwrap_or(0)
                        ),
                    },
                };
            } else if status.get("ready").and_then(Value::as_bool) == Some(true)
                && meta::get(status, "state.running").is_some()
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            let pod_ready = list(pod, "status.conditions").iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Ready")
                    && c.get("status").and_then(Value::as_str) == Some("True")
            });
            reason = if pod_ready { "Running" } else { "NotReady" }.to_string();
        }
    }
    if meta::is_deleting(pod) {
        reason = if meta::get_str(pod, "status.reason") == Some("NodeLost") {
            "Unknown"
        } else {
            "Terminating"
        }
        .to_string();
    }
    let restarts = match last_restart {
        Some(ago) if restarts != 0 => format!("{restarts} ({} ago)", human_duration(ago)),
        _ => restarts.to_string(),
    };
    let gates = list(pod, "spec.readinessGates");
    let readiness_gates = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let conditions = list(pod, "status.conditions");
        let true_gates = gates
            .iter()
            .filter(|g| {
                let gate = g.get("conditionType");
                conditions.iter().any(|c| {
                    c.get("type") == gate && c.get("status").and_then(Value::as_str) == Some("True")
                })
            })
            .count();
        format!("{true_gates}/{}", gates.len())
    };
    vec![
        name,
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts),
        age,
        json!(or_none(meta::get_str(pod, "status.podIP"))),
        json!(or_none(meta::get_str(pod, "spec.nodeName"))),
        json!(or_none(meta::get_str(pod, "status.nominatedNodeName"))),
        json!(readiness_gates),
    ]
}

fn service_cells(svc: &Value, name: Value, age: Value) -> Vec<Value> {
    let type_ = meta::get_str(svc, "spec.type").unwrap_or("ClusterIP");
    let external_ips: Vec<String> = list(svc, "spec.externalIPs")
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    let external = match type_ {
        "LoadBalancer" => {
            let mut ips: Vec<String> = list(svc, "status.loadBalancer.ingress")
                .iter()
                .filter_map(|i| {
                    i.get("ip")
                        .or_else(|| i.get("hostname"))
                        .and_then(Value::as_str)
                })
                .map(str::to_string)
                .collect();
            ips.extend(external_ips);
            if ips.is_empty() {
                "<pending>".to_string()
            } else {
                ips.join(",")
            }
        }
        "ExternalName" => meta::get_str(svc, "spec.externalName")
            .unwrap_or("")
            .to_string(),
        _ if external_ips.is_empty() => "<none>".to_string(),
        _ => external_ips.join(","),
    };
    let ports: Vec<String> = list(svc, "spec.ports")
        .iter()
        .map(|p| {
            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(node_port) => format!("{port}:{node_port}/{protocol}"),
                None => format!("{port}/{protocol}"),
            }
        })
        .collect();
    let selector = meta::get(svc, "spec.selector")
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty())
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        });
    vec![
        name,
        json!(type_),
        json!(or_none(meta::get_str(svc, "spec.clusterIP"))),
        json!(external),
        json!(if ports.is_empty() {
            "<none>".to_string()
        } else {
            ports.join(",")
        }),
        age,
        json!(or_none(selector.as_deref())),
    ]
}

fn node_cells(node: &Value, name: Value, age: Value) -> Vec<Value> {
    let ready = list(node, "status.conditions")
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        .and_then(|c| c.get("status").and_then(Value::as_str));
    let mut status = match ready {
        Some("True") => "Ready",
        Some("False") => "NotReady",
        _ => "Unknown",
    }
    .to_string();
    if meta::get(node, "spec.unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<String> = meta::get(node, "metadata.labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| match k.strip_prefix("node-role.kubernetes.io/") {
                    Some(role) if !role.is_empty() => Some(role.to_string()),
                    _ if k == "kubernetes.io/role" => v.as_str().map(str::to_string),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    let address = |kind: &str| {
        list(node, "status.addresses")
            .iter()
            .find(|a| a.get("type").and_then(Value::as_str) == Some(kind))
            .and_then(|a| a.get("address").and_then(Value::as_str))
            .map(str::to_string)
    };
    vec![
        name,
        json!(status),
        json!(if roles.is_empty() {
            "<none>".to_string()
        } else {
            roles.join(",")
        }),
        age,
        json!(meta::get_str(node, "status.nodeInfo.kubeletVersion").unwrap_or("")),
        json!(or_none(address("InternalIP").as_deref())),
        json!(or_none(address("ExternalIP").as_deref())),
        json!(meta::get_str(node, "status.nodeInfo.osImage").unwrap_or("<unknown>")),
        json!(meta::get_str(node, "status.nodeInfo.kernelVersion").unwrap_or("<unknown>")),
        json!(
            meta::get_str(node, "status.nodeInfo.containerRuntimeVersion").unwrap_or("<unknown>")
        ),
    ]
}

fn endpoint_slice_cells(slice: &Value, name: Value, age: Value) -> Vec<Value> {
    let ports: Vec<String> = list(slice, "ports")
        .iter()
        .map(|p| {
            p.get("port")
                .and_then(Value::as_i64)
                .map_or("<unset>".to_string(), |n| n.to_string())
        })
        .collect();
    let addresses: Vec<&str> = list(slice, "endpoints")
        .iter()
        .flat_map(|e| {
            e.get("addresses")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[])
        })
        .filter_map(Value::as_str)
        .collect();
    let endpoints = match addresses.len() {
        0 => "<unset>".to_string(),
        n if n <= 3 => addresses.join(","),
        n => format!("{} + {} more...", addresses[..3].join(","), n - 3),
    };
    vec![
        name,
        json!(meta::get_str(slice, "addressType").unwrap_or("")),
        json!(if ports.is_empty() {
            "<unset>".to_string()
        } else {
            ports.join(",")
        }),
        json!(endpoints),
        age,
    ]
}

/// An additionalPrinterColumn's cell: simple `.a.b` JSON paths are read, others left empty.
fn custom_cell(object: &Value, column: &PrinterColumn) -> Value {
    let path = column.json_path.trim_start_matches('.');
    let value = meta::get(object, path).cloned().unwrap_or(Value::Null);
    match (column.type_.as_str(), &value) {
        ("date", Value::String(s)) => json!(
            meta::seconds_since(s)
                .map(human_duration)
                .unwrap_or_default()
        ),
        (_, Value::Null) => Value::Null,
        (_, Value::String(_) | Value::Number(_) | Value::Bool(_)) => value,
        _ => json!(value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_as_kubectl_prints_them() {
        let cases = [
            (-5, "<invalid>"),
            (5, "5s"),
            (119, "119s"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (9 * 3600, "9h"),
            (50 * 3600, "2d2h"),
            (10 * 86400, "10d"),
            (800 * 86400, "2y70d"),
        ];
        for (seconds, want) in cases {
            assert_eq!(human_duration(seconds), want, "{seconds}");
        }
    }

    #[test]
    fn pod_status_cells() {
        let pod = json!({
            "metadata": {"name": "p"},
            "spec": {"nodeName": "n1", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 1, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ]}
        });
        let cells = pod_cells(&pod, json!("p"), json!("1m"));
        assert_eq!(
            cells,
            vec![
                json!("p"),
                json!("1/2"),
                json!("CrashLoopBackOff"),
                json!("1"),
                json!("1m"),
                json!("10.0.0.5"),
                json!("n1"),
                json!("<none>"),
                json!("<none>")
            ]
        );
    }
}
