//! The Kubernetes objects the agent reads, and Weft's own resources (`WeftNode`,
//! `WeftEndpoint`), parsed from YAML manifests (several documents per file allowed). Services
//! and EndpointSlices are in [`service`].
//!
//! Only the fields Weft uses are read; other fields of a Kubernetes object are ignored, as a
//! real object carries many. An unknown `kind` is an error: a manifest Weft cannot act on
//! should not be dropped silently.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::Ipv4Cidr;

pub mod env;
pub mod lb_pool;
pub mod service;

pub use env::{EnvVar, EnvVarSource};
pub use lb_pool::LoadBalancerIpPool;
use service::port;
pub use service::{
    ClusterIp, EndpointPort, EndpointSlice, Protocol, Service, ServicePort, SliceEndpoint,
    TargetPort,
};

/// API group and version of Weft's resources.
pub const WEFT_API_VERSION: &str = "weft.io/v1alpha1";
/// API group and version of EndpointSlices.
pub const DISCOVERY_API_VERSION: &str = "discovery.k8s.io/v1";
/// Namespace of a namespaced object whose manifest names none.
pub const DEFAULT_NAMESPACE: &str = "default";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl ObjectMeta {
    /// The namespace, `default` when the manifest names none.
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Pod {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(default)]
    pub containers: Vec<Container>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Container {
    pub name: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// What a Service's `targetPort` may name.
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
    #[serde(default)]
    pub env: Vec<EnvVar>,
}

impl Pod {
    /// Checks what serde cannot, as Kubernetes' validation does: the containers' `env`.
    fn check(&self) -> Result<(), String> {
        for container in &self.spec.containers {
            for var in &container.env {
                var.check()
                    .map_err(|msg| format!("container {}: {msg}", container.name))?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(deserialize_with = "port")]
    pub container_port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Namespace {
    pub metadata: ObjectMeta,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Node {
    pub metadata: ObjectMeta,
}

/// A node of the cluster as Weft knows it; written by that node's agent. `metadata.name` is the
/// node name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeftNode {
    pub metadata: ObjectMeta,
    pub spec: WeftNodeSpec,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeftNodeSpec {
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Ipv4Cidr,
    #[serde(rename = "underlayIP")]
    pub underlay_ip: Ipv4Addr,
}

/// One registered pod interface; written by the agent of the node the pod runs on.
/// `metadata.namespace` is the pod's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeftEndpoint {
    pub metadata: ObjectMeta,
    pub spec: WeftEndpointSpec,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeftEndpointSpec {
    pub node: String,
    pub pod_name: String,
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub interface: String,
    pub ipv4: Ipv4Addr,
    pub identity: u32,
}

/// Any object a manifest may hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    Pod(Pod),
    Namespace(Namespace),
    Node(Node),
    WeftNode(WeftNode),
    WeftEndpoint(WeftEndpoint),
    Service(Service),
    EndpointSlice(EndpointSlice),
    LoadBalancerIpPool(LoadBalancerIpPool),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Pod(_) => "Pod",
            Object::Namespace(_) => "Namespace",
            Object::Node(_) => "Node",
            Object::WeftNode(_) => "WeftNode",
            Object::WeftEndpoint(_) => "WeftEndpoint",
            Object::Service(_) => "Service",
            Object::EndpointSlice(_) => "EndpointSlice",
            Object::LoadBalancerIpPool(_) => lb_pool::LB_POOL_KIND,
        }
    }
}

/// Where in a set of manifests something is: file, document number (1-based) and, when the
/// YAML parser knows it, line and column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub file: String,
    pub document: usize,
    pub line_column: Option<(usize, usize)>,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} document {}", self.file, self.document)?;
        if let Some((line, column)) = self.line_column {
            write!(f, " line {line} column {column}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("{at}: malformed YAML: {msg}")]
    Malformed { at: Position, msg: String },
    #[error("{at}: the document has no `kind` or `apiVersion`")]
    NoKind { at: Position },
    #[error("{at}: unknown kind `{kind}` of apiVersion `{api_version}`")]
    UnknownKind {
        at: Position,
        kind: String,
        api_version: String,
    },
    #[error("{at}: invalid {kind}: {msg}")]
    Invalid {
        at: Position,
        kind: String,
        msg: String,
    },
}

/// Every object of one manifest file; empty documents are skipped.
pub fn parse_manifest(file: &str, text: &str) -> Result<Vec<Object>, ManifestError> {
    let mut out = Vec::new();
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let at = |e: Option<&serde_norway::Error>| Position {
            file: file.to_string(),
            document: index + 1,
            line_column: e
                .and_then(serde_norway::Error::location)
                .map(|l| (l.line(), l.column())),
        };
        let value =
            serde_norway::Value::deserialize(document).map_err(|e| ManifestError::Malformed {
                at: at(Some(&e)),
                msg: e.to_string(),
            })?;
        if value.is_null() {
            continue;
        }
        out.push(object_of(value, at(None))?);
    }
    Ok(out)
}

fn object_of(value: serde_norway::Value, at: Position) -> Result<Object, ManifestError> {
    let field = |name: &str| value.get(name).and_then(serde_norway::Value::as_str);
    let (Some(kind), Some(api_version)) = (field("kind"), field("apiVersion")) else {
        return Err(ManifestError::NoKind { at });
    };
    let (kind, api_version) = (kind.to_string(), api_version.to_string());
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Pod") => {
            let pod: Pod = typed(value, at.clone(), &kind)?;
            match pod.check() {
                Ok(()) => Ok(Object::Pod(pod)),
                Err(msg) => Err(ManifestError::Invalid { at, kind, msg }),
            }
        }
        ("v1", "Namespace") => typed(value, at, &kind).map(Object::Namespace),
        ("v1", "Node") => typed(value, at, &kind).map(Object::Node),
        ("v1", "Service") => {
            let svc: Service = typed(value, at.clone(), &kind)?;
            match svc.check() {
                Ok(()) => Ok(Object::Service(svc)),
                Err(msg) => Err(ManifestError::Invalid { at, kind, msg }),
            }
        }
        (version, lb_pool::LB_POOL_KIND) if lb_pool::LB_POOL_API_VERSIONS.contains(&version) => {
            typed(value, at, &kind).map(Object::LoadBalancerIpPool)
        }
        (DISCOVERY_API_VERSION, "EndpointSlice") => {
            let slice: EndpointSlice = typed(value, at.clone(), &kind)?;
            match slice.check() {
                Ok(()) => Ok(Object::EndpointSlice(slice)),
                Err(msg) => Err(ManifestError::Invalid { at, kind, msg }),
            }
        }
        (WEFT_API_VERSION, "WeftNode") => typed(value, at, &kind).map(Object::WeftNode),
        (WEFT_API_VERSION, "WeftEndpoint") => typed(value, at, &kind).map(Object::WeftEndpoint),
        _ => Err(ManifestError::UnknownKind {
            at,
            kind,
            api_version,
        }),
    }
}

fn typed<T: DeserializeOwned>(
    value: serde_norway::Value,
    at: Position,
    kind: &str,
) -> Result<T, ManifestError> {
    serde_norway::from_value(value).map_err(|e| ManifestError::Invalid {
        at,
        kind: kind.to_string(),
        msg: e.to_string(),
    })
}

/// The manifest of a resource Weft writes, with its `apiVersion` and `kind`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest<'a, T: Serialize> {
    api_version: &'static str,
    kind: &'static str,
    #[serde(flatten)]
    object: &'a T,
}

impl WeftNode {
    pub fn to_yaml(&self) -> Result<String, serde_norway::Error> {
        serde_norway::to_string(&Manifest {
            api_version: WEFT_API_VERSION,
            kind: "WeftNode",
            object: self,
        })
    }
}

impl WeftEndpoint {
    pub fn to_yaml(&self) -> Result<String, serde_norway::Error> {
        serde_norway::to_string(&Manifest {
            api_version: WEFT_API_VERSION,
            kind: "WeftEndpoint",
            object: self,
        })
    }
}

impl Service {
    /// The manifest of the Service as parsed (fields Weft does not read are not in it).
    pub fn to_yaml(&self) -> Result<String, serde_norway::Error> {
        serde_norway::to_string(&Manifest {
            api_version: "v1",
            kind: "Service",
            object: self,
        })
    }
}

/// A Service manifest (one YAML document) with `spec.clusterIP` and `spec.clusterIPs` set to
/// `ip`, what the apiserver stores once it has allocated the address. Every other field is kept
/// as written, unlike [`Service::to_yaml`], which holds only the fields Weft reads.
pub fn with_cluster_ip(manifest: &str, ip: Ipv4Addr) -> Result<String, serde_norway::Error> {
    use serde::de::Error as _;
    let mut value: serde_norway::Value = serde_norway::from_str(manifest)?;
    let root = value
        .as_mapping_mut()
        .ok_or_else(|| serde_norway::Error::custom("the manifest is not a mapping"))?;
    let spec = root
        .entry("spec".into())
        .or_insert_with(|| serde_norway::Mapping::new().into());
    if spec.is_null() {
        *spec = serde_norway::Mapping::new().into();
    }
    let spec = spec
        .as_mapping_mut()
        .ok_or_else(|| serde_norway::Error::custom("`spec` is not a mapping"))?;
    let address = serde_norway::Value::String(ip.to_string());
    spec.insert("clusterIP".into(), address.clone());
    spec.insert("clusterIPs".into(), vec![address].into());
    serde_norway::to_string(&value)
}

impl EndpointSlice {
    pub fn to_yaml(&self) -> Result<String, serde_norway::Error> {
        serde_norway::to_string(&Manifest {
            api_version: DISCOVERY_API_VERSION,
            kind: "EndpointSlice",
            object: self,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PODS: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: web
  labels: {team: a}
---
apiVersion: v1
kind: Pod
metadata:
  name: traefik
  namespace: web
  labels:
    app: traefik
  annotations: {ignored: "yes"}
spec:
  nodeName: vps1
  containers:
    - name: main
      command: [/bin/httpd]
      args: ["-f", "-p", "80"]
      ports:
        - {name: http, containerPort: 80}
        - {containerPort: 53, protocol: UDP, hostPort: 5353}
---
"#;

    #[test]
    fn multi_document_manifests_parse_and_ignore_foreign_fields() {
        let objects = parse_manifest("pods.yaml", PODS).unwrap();
        assert_eq!(objects.len(), 2);
        let Object::Pod(pod) = &objects[1] else {
            panic!("{objects:?}")
        };
        assert_eq!(pod.metadata.namespace(), "web");
        assert_eq!(pod.metadata.labels["app"], "traefik");
        assert_eq!(pod.spec.node_name.as_deref(), Some("vps1"));
        assert_eq!(pod.spec.containers[0].args, ["-f", "-p", "80"]);
        let ports = &pod.spec.containers[0].ports;
        assert_eq!(
            (ports[0].name.as_deref(), ports[0].container_port),
            (Some("http"), 80)
        );
        assert_eq!(ports[0].protocol, Protocol::Tcp);
        assert_eq!(
            (ports[1].container_port, ports[1].protocol),
            (53, Protocol::Udp)
        );
        let bad = PODS.replace("containerPort: 80", "containerPort: 0");
        let err = parse_manifest("pods.yaml", &bad).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("pods.yaml document 2: invalid Pod: port 0 is not in"),
            "{err}"
        );
    }

    #[test]
    fn a_containers_env_is_read_and_checked() {
        let with_env = PODS.replace(
            "      ports:\n",
            "      env:\n        - {name: MODE, value: fast}\n        \
             - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}\n      ports:\n",
        );
        let objects = parse_manifest("pods.yaml", &with_env).unwrap();
        let Object::Pod(pod) = &objects[1] else {
            panic!("{objects:?}")
        };
        let env = &pod.spec.containers[0].env;
        assert_eq!(
            (env[0].name.as_str(), env[0].value.as_deref()),
            ("MODE", Some("fast"))
        );
        assert_eq!(
            env[1].value_from,
            Some(EnvVarSource::Field("status.podIP".into()))
        );
        let both = with_env.replace(
            "{name: MODE, value: fast}",
            "{name: MODE, value: fast, valueFrom: {fieldRef: {fieldPath: metadata.name}}}",
        );
        let err = parse_manifest("pods.yaml", &both).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "pods.yaml document 2: invalid Pod: container main: env MODE: `value` may not"
            ),
            "{err}"
        );
    }

    #[test]
    fn weft_resources_round_trip_through_yaml() {
        let node = WeftNode {
            metadata: ObjectMeta {
                name: "vps1".into(),
                ..ObjectMeta::default()
            },
            spec: WeftNodeSpec {
                pod_cidr: "10.42.0.0/24".parse().unwrap(),
                underlay_ip: Ipv4Addr::new(198, 51, 100, 1),
            },
        };
        let yaml = node.to_yaml().unwrap();
        assert!(yaml.contains("kind: WeftNode"), "{yaml}");
        assert!(yaml.contains("podCIDR: 10.42.0.0/24"), "{yaml}");
        assert_eq!(
            parse_manifest("n.yaml", &yaml).unwrap(),
            [Object::WeftNode(node)]
        );

        let ep = WeftEndpoint {
            metadata: ObjectMeta {
                name: "vps1-abc".into(),
                namespace: Some("web".into()),
                ..ObjectMeta::default()
            },
            spec: WeftEndpointSpec {
                node: "vps1".into(),
                pod_name: "traefik".into(),
                container_id: "abc".into(),
                interface: "eth0".into(),
                ipv4: Ipv4Addr::new(10, 42, 0, 10),
                identity: 4242,
            },
        };
        let yaml = ep.to_yaml().unwrap();
        assert_eq!(
            parse_manifest("e.yaml", &yaml).unwrap(),
            [Object::WeftEndpoint(ep)]
        );
    }

    #[test]
    fn an_allocated_cluster_ip_is_written_into_the_manifest_keeping_other_fields() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web, annotations: {a: b}}\n\
                    spec: {clusterIP: \"\", ipFamilies: [IPv4], ports: [{port: 80}]}\n";
        let ip = Ipv4Addr::new(10, 43, 7, 9);
        let written = with_cluster_ip(text, ip).unwrap();
        assert!(written.contains("annotations:"), "{written}");
        assert!(written.contains("ipFamilies:"), "{written}");
        assert!(written.contains("clusterIPs:\n  - 10.43.7.9"), "{written}");
        let Some(Object::Service(svc)) = parse_manifest("s.yaml", &written).unwrap().pop() else {
            panic!("{written}")
        };
        assert_eq!(svc.spec.cluster_ipv4(), Some(ip));
        assert_eq!(svc.spec.ports[0].port, 80);
        assert_eq!(with_cluster_ip(&written, ip).unwrap(), written, "stable");

        let bare = "apiVersion: v1\nkind: Service\nmetadata: {name: bare}\n";
        assert!(
            with_cluster_ip(bare, ip)
                .unwrap()
                .contains("clusterIP: 10.43.7.9")
        );
        assert!(with_cluster_ip("- a\n", ip).is_err());
    }

    #[test]
    fn an_unknown_kind_names_file_document_and_kind() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n";
        let err = parse_manifest("cm.yaml", text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cm.yaml document 2: unknown kind `ConfigMap` of apiVersion `v1`"
        );
    }

    #[test]
    fn malformed_yaml_names_file_and_position() {
        let err = parse_manifest("bad.yaml", "apiVersion: v1\nkind: [Pod\n").unwrap_err();
        let ManifestError::Malformed { at, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(at.file, "bad.yaml");
        assert!(at.line_column.is_some(), "{err}");
        assert!(
            err.to_string().starts_with("bad.yaml document 1 line"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_field_or_missing_kind_is_an_error() {
        let bad_ip = "apiVersion: weft.io/v1alpha1\nkind: WeftNode\nmetadata: {name: n}\nspec: {podCIDR: 10.42.0.1/24, underlayIP: 1.2.3.4}\n";
        let err = parse_manifest("n.yaml", bad_ip).unwrap_err();
        assert!(
            matches!(&err, ManifestError::Invalid { kind, .. } if kind == "WeftNode"),
            "{err}"
        );
        assert!(err.to_string().contains("host bits"), "{err}");
        let err = parse_manifest("x.yaml", "metadata: {name: n}\n").unwrap_err();
        assert!(matches!(err, ManifestError::NoKind { .. }), "{err}");
    }
}
