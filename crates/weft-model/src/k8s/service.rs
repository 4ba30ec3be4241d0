//! `Service` (v1) and `EndpointSlice` (discovery.k8s.io/v1), and the port fields they share
//! with pods. Values Kubernetes' own validation refuses (port 0, an unknown protocol, an
//! affinity timeout out of range, a clusterIP that is neither IPv4 nor `None`) are refused here
//! too, so that the lab never holds a Service a real apiserver would not.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use super::ObjectMeta;

/// Label that ties an EndpointSlice to its Service (in the slice's namespace).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages an EndpointSlice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when absent (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
/// The largest affinity timeout Kubernetes accepts (one day).
pub const MAX_AFFINITY_TIMEOUT_S: u32 = 86_400;

/// Transport protocol of a port, as Kubernetes spells it; TCP when a manifest names none.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum Protocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// The IP protocol number (the `proto` of the datapath's map keys).
    pub fn ip_proto(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// The protocol of an IP protocol number, for the three a Service may name.
    pub fn from_ip_proto(number: u8) -> Option<Protocol> {
        match number {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            132 => Some(Protocol::Sctp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn port_number(n: impl Into<i128>) -> Result<u16, String> {
    let n = n.into();
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {n} is not in 1..=65535"))
}

/// A port number field: 1..=65535.
pub(crate) fn port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    port_number(i64::deserialize(d)?).map_err(de::Error::custom)
}

fn optional_port<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    Option::<i64>::deserialize(d)?
        .map(port_number)
        .transpose()
        .map_err(de::Error::custom)
}

/// A Service port's `targetPort`: a number, or the name of a container port of the backing
/// pods.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

impl Serialize for TargetPort {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TargetPort::Number(n) => s.serialize_u16(*n),
            TargetPort::Name(name) => s.serialize_str(name),
        }
    }
}

impl<'de> Deserialize<'de> for TargetPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TargetPortVisitor)
    }
}

struct TargetPortVisitor;

impl de::Visitor<'_> for TargetPortVisitor {
    type Value = TargetPort;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a port number or a port name")
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<TargetPort, E> {
        port_number(n).map(TargetPort::Number).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<TargetPort, E> {
        port_number(n).map(TargetPort::Number).map_err(E::custom)
    }

    // Kubernetes port names hold at least one letter, which tells a name from a quoted number.
    fn visit_str<E: de::Error>(self, name: &str) -> Result<TargetPort, E> {
        if !name.chars().any(|c| c.is_ascii_alphabetic()) {
            return Err(E::custom(format!(
                "targetPort `{name}` is neither a number nor a port name (a name has a letter)"
            )));
        }
        Ok(TargetPort::Name(name.to_string()))
    }
}

/// `spec.clusterIP` when present: an IPv4 address, or `None` for a headless Service (DNS
/// only, no load balancing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClusterIp {
    Headless,
    V4(Ipv4Addr),
}

impl Serialize for ClusterIp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ClusterIp::Headless => s.serialize_str("None"),
            ClusterIp::V4(ip) => s.collect_str(ip),
        }
    }
}

/// Absent and `""` both mean "not allocated yet", as in Kubernetes.
fn optional_cluster_ip<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ClusterIp>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    match text.as_str() {
        "" => Ok(None),
        "None" => Ok(Some(ClusterIp::Headless)),
        _ => text.parse().map(|ip| Some(ClusterIp::V4(ip))).map_err(|_| {
            de::Error::custom(format!(
                "clusterIP `{text}` is neither an IPv4 address nor `None`"
            ))
        }),
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
    /// A DNS alias: no address, no load balancing.
    ExternalName,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionAffinity {
    #[default]
    None,
    #[serde(rename = "ClientIP")]
    ClientIp,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    /// Only endpoints on the node the traffic enters.
    Local,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceSpec,
    #[serde(default, skip_serializing_if = "ServiceStatus::is_empty")]
    pub status: ServiceStatus,
}

impl Service {
    /// Checks what serde cannot, as Kubernetes' validation does: no port (or port name) twice,
    /// node ports only where the type opens them, and no node port twice for one protocol.
    pub(crate) fn check(&self) -> Result<(), String> {
        let spec = &self.spec;
        check_ports_unique(&spec.ports)?;
        let mut seen = std::collections::BTreeSet::new();
        for (i, port) in spec.ports.iter().enumerate() {
            let Some(node_port) = port.node_port else {
                continue;
            };
            if !spec.has_node_ports() {
                return Err(format!(
                    "ports[{i}].nodePort {node_port}: a {:?} Service has no node ports",
                    spec.service_type
                ));
            }
            if !seen.insert((node_port, port.protocol)) {
                return Err(format!(
                    "ports[{i}].nodePort {node_port}/{} is given twice",
                    port.protocol
                ));
            }
        }
        if let Some(port) = spec.health_check_node_port
            && !spec.wants_health_check_node_port()
        {
            return Err(format!(
                "healthCheckNodePort {port} needs type LoadBalancer or NodePort and \
                 externalTrafficPolicy Local"
            ));
        }
        Ok(())
    }

    /// The addresses a LoadBalancer Service was given (`status.loadBalancer.ingress[].ip`);
    /// none for another type.
    pub fn ingress_ips(&self) -> Vec<Ipv4Addr> {
        if self.spec.service_type != ServiceType::LoadBalancer {
            return Vec::new();
        }
        self.status
            .load_balancer
            .ingress
            .iter()
            .filter_map(|i| i.ip)
            .collect()
    }
}

/// One frontend per (port, protocol) and one port per name: a port listed twice would be two
/// frontends of one address, and EndpointSlice ports are matched by name.
fn check_ports_unique(ports: &[ServicePort]) -> Result<(), String> {
    let mut numbers = std::collections::BTreeSet::new();
    let mut names = std::collections::BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        if !numbers.insert((port.port, port.protocol)) {
            return Err(format!(
                "ports[{i}]: port {}/{} is given twice",
                port.port, port.protocol
            ));
        }
        if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty())
            && !names.insert(name)
        {
            return Err(format!("ports[{i}]: port name `{name}` is given twice"));
        }
    }
    Ok(())
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    #[serde(default)]
    pub load_balancer: LoadBalancerStatus,
}

impl ServiceStatus {
    pub fn is_empty(&self) -> bool {
        self.load_balancer.ingress.is_empty()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancerStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<LoadBalancerIngress>,
}

/// One address of a LoadBalancer; a hostname-only ingress (a cloud's DNS name) has no `ip`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancerIngress {
    #[serde(
        default,
        deserialize_with = "optional_ipv4",
        skip_serializing_if = "Option::is_none"
    )]
    pub ip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

fn ipv4_of(text: &str, field: &str) -> Result<Ipv4Addr, String> {
    text.parse()
        .map_err(|_| format!("{field} `{text}` is not an IPv4 address"))
}

/// An IPv4 address field; absent and `""` are none.
fn optional_ipv4<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv4Addr>, D::Error> {
    match Option::<String>::deserialize(d)?.as_deref() {
        None | Some("") => Ok(None),
        Some(text) => ipv4_of(text, "address")
            .map(Some)
            .map_err(de::Error::custom),
    }
}

fn ipv4_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Ipv4Addr>, D::Error> {
    Option::<Vec<String>>::deserialize(d)?
        .unwrap_or_default()
        .iter()
        .map(|text| ipv4_of(text, "externalIPs:"))
        .collect::<Result<_, _>>()
        .map_err(de::Error::custom)
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(rename = "type", default)]
    pub service_type: ServiceType,
    /// `None` when the manifest has none yet (whoever plays the apiserver allocates one).
    #[serde(
        rename = "clusterIP",
        default,
        deserialize_with = "optional_cluster_ip",
        skip_serializing_if = "Option::is_none"
    )]
    pub cluster_ip: Option<ClusterIp>,
    /// Pods (of the Service's namespace) whose labels hold all of these. `None` (or empty, which
    /// the apiserver stores as absent): a selector-less Service, whose EndpointSlices are
    /// applied by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub session_affinity: SessionAffinity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_config: Option<SessionAffinityConfig>,
    #[serde(default)]
    pub internal_traffic_policy: TrafficPolicy,
    #[serde(default)]
    pub external_traffic_policy: TrafficPolicy,
    /// Addresses outside the cluster's control routed to the nodes; each is a frontend on
    /// every port.
    #[serde(
        rename = "externalIPs",
        default,
        deserialize_with = "ipv4_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub external_ips: Vec<Ipv4Addr>,
    /// With `externalTrafficPolicy: Local` on a LoadBalancer or NodePort Service: the port
    /// every node answers with its count of local endpoints.
    #[serde(
        default,
        deserialize_with = "optional_port",
        skip_serializing_if = "Option::is_none"
    )]
    pub health_check_node_port: Option<u16>,
    /// The address a LoadBalancer asks for (deprecated in Kubernetes, still honoured).
    #[serde(
        rename = "loadBalancerIP",
        default,
        deserialize_with = "optional_ipv4",
        skip_serializing_if = "Option::is_none"
    )]
    pub load_balancer_ip: Option<Ipv4Addr>,
}

impl ServiceSpec {
    /// The selector, unless the Service has none (absent or empty).
    pub fn selector(&self) -> Option<&BTreeMap<String, String>> {
        self.selector.as_ref().filter(|s| !s.is_empty())
    }

    /// The IPv4 address to load-balance, if any: not for a headless or ExternalName Service,
    /// nor for one whose clusterIP is not allocated yet.
    pub fn cluster_ipv4(&self) -> Option<Ipv4Addr> {
        match (self.service_type, self.cluster_ip) {
            (ServiceType::ExternalName, _) => None,
            (_, Some(ClusterIp::V4(ip))) => Some(ip),
            _ => None,
        }
    }

    /// NodePort and LoadBalancer Services open a node port per port.
    pub fn has_node_ports(&self) -> bool {
        matches!(
            self.service_type,
            ServiceType::NodePort | ServiceType::LoadBalancer
        )
    }

    /// `externalTrafficPolicy: Local` on a Service reached from outside: north-south traffic
    /// goes to the endpoints of the node it enters only.
    pub fn external_local(&self) -> bool {
        self.external_traffic_policy == TrafficPolicy::Local
            && (self.has_node_ports() || !self.external_ips.is_empty())
    }

    /// Whether the Service needs a `healthCheckNodePort` (Kubernetes allocates one then).
    pub fn wants_health_check_node_port(&self) -> bool {
        self.has_node_ports() && self.external_traffic_policy == TrafficPolicy::Local
    }

    /// The `sessionAffinity: ClientIP` timeout in seconds; `None` without affinity.
    pub fn affinity_timeout(&self) -> Option<u32> {
        if self.session_affinity != SessionAffinity::ClientIp {
            return None;
        }
        let configured = self
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds);
        Some(configured.unwrap_or(DEFAULT_AFFINITY_TIMEOUT_S))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(deserialize_with = "port")]
    pub port: u16,
    /// Absent: the same number as `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<TargetPort>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(
        default,
        deserialize_with = "optional_port",
        skip_serializing_if = "Option::is_none"
    )]
    pub node_port: Option<u16>,
}

impl ServicePort {
    /// The port's name; `""` when it has none (what EndpointSlice ports are matched by).
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    pub fn target_port(&self) -> TargetPort {
        self.target_port
            .clone()
            .unwrap_or(TargetPort::Number(self.port))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionAffinityConfig {
    #[serde(rename = "clientIP", default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<ClientIpConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientIpConfig {
    #[serde(
        default,
        deserialize_with = "affinity_timeout",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout_seconds: Option<u32>,
}

fn affinity_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let Some(seconds) = Option::<i64>::deserialize(d)? else {
        return Ok(None);
    };
    u32::try_from(seconds)
        .ok()
        .filter(|s| (1..=MAX_AFFINITY_TIMEOUT_S).contains(s))
        .map(Some)
        .ok_or_else(|| {
            de::Error::custom(format!(
                "sessionAffinityConfig.clientIP.timeoutSeconds {seconds} is not in \
                 1..={MAX_AFFINITY_TIMEOUT_S}"
            ))
        })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AddressType {
    IPv4,
    IPv6,
    #[serde(rename = "FQDN")]
    Fqdn,
}

/// An EndpointSlice: some of the endpoints of the Service named by its
/// [`SERVICE_NAME_LABEL`] label. Only `IPv4` slices feed the load balancer; the others are
/// parsed and left alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    pub metadata: ObjectMeta,
    pub address_type: AddressType,
    #[serde(default)]
    pub endpoints: Vec<SliceEndpoint>,
    #[serde(default)]
    pub ports: Vec<EndpointPort>,
}

impl EndpointSlice {
    /// The name of the Service this slice belongs to.
    pub fn service_name(&self) -> Option<&str> {
        self.metadata
            .labels
            .get(SERVICE_NAME_LABEL)
            .map(String::as_str)
    }

    /// Checks what serde cannot: the addresses of an IPv4 slice are IPv4 addresses.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.address_type != AddressType::IPv4 {
            return Ok(());
        }
        for (i, ep) in self.endpoints.iter().enumerate() {
            if ep.addresses.is_empty() {
                return Err(format!("endpoints[{i}] has no address"));
            }
            if let Some(bad) = ep.addresses.iter().find(|a| a.parse::<Ipv4Addr>().is_err()) {
                return Err(format!(
                    "endpoints[{i}]: address `{bad}` of an IPv4 slice is not an IPv4 address"
                ));
            }
        }
        Ok(())
    }
}

/// One endpoint of an EndpointSlice (Kubernetes' `Endpoint`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SliceEndpoint {
    /// Fungible addresses of one endpoint; like kube-proxy, Weft uses the first.
    pub addresses: Vec<String>,
    #[serde(default)]
    pub conditions: EndpointConditions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<ObjectReference>,
}

impl SliceEndpoint {
    /// The address the load balancer uses, for an IPv4 slice.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.addresses.first().and_then(|a| a.parse().ok())
    }
}

/// The conditions as written; read them through the methods, which apply Kubernetes' meaning
/// of an absent value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointConditions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminating: Option<bool>,
}

impl EndpointConditions {
    /// Ready for new traffic; an unknown state counts as ready.
    pub fn is_ready(&self) -> bool {
        self.ready.unwrap_or(true)
    }

    /// Able to serve even while terminating; unknown: as ready.
    pub fn is_serving(&self) -> bool {
        self.serving.unwrap_or_else(|| self.is_ready())
    }

    pub fn is_terminating(&self) -> bool {
        self.terminating.unwrap_or(false)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EndpointPort {
    /// Matches the `name` of the Service port it serves; absent and `""` are the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Absent: the endpoints serve no port of their own (nothing to load-balance to).
    #[serde(
        default,
        deserialize_with = "optional_port",
        skip_serializing_if = "Option::is_none"
    )]
    pub port: Option<u16>,
    #[serde(default)]
    pub protocol: Protocol,
}

impl EndpointPort {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use crate::k8s::{ManifestError, Object, parse_manifest};

    use super::*;

    const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, annotations: {ignored: "yes"}}
spec:
  type: NodePort
  selector: {app: web}
  clusterIP: 10.43.0.20
  clusterIPs: [10.43.0.20]
  ipFamilies: [IPv4]
  ports:
    - {name: http, port: 80, targetPort: http}
    - {name: dns, port: 53, targetPort: 5353, protocol: UDP}
    - {name: dns-tcp, port: 53, protocol: TCP, nodePort: 30053}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  internalTrafficPolicy: Local
"#;

    fn service(text: &str) -> Result<Service, ManifestError> {
        match parse_manifest("svc.yaml", text)?.pop() {
            Some(Object::Service(s)) => Ok(s),
            other => panic!("{other:?}"),
        }
    }

    fn service_with_spec(spec: &str) -> Result<Service, ManifestError> {
        service(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\nspec: {spec}\n"
        ))
    }

    fn invalid_message(spec: &str) -> String {
        let err = service_with_spec(spec).unwrap_err();
        assert!(
            matches!(&err, ManifestError::Invalid { kind, at, .. } if kind == "Service" && at.file == "svc.yaml"),
            "{err:?}"
        );
        err.to_string()
    }

    #[test]
    fn a_service_parses_with_its_ports_affinity_and_policies() {
        let svc = service(SERVICE).unwrap();
        let spec = &svc.spec;
        assert_eq!(spec.service_type, ServiceType::NodePort);
        assert_eq!(spec.cluster_ipv4(), Some(Ipv4Addr::new(10, 43, 0, 20)));
        assert_eq!(spec.selector().unwrap()["app"], "web");
        assert_eq!(spec.ports.len(), 3);
        assert_eq!(spec.ports[0].target_port(), TargetPort::Name("http".into()));
        assert_eq!(spec.ports[0].protocol, Protocol::Tcp);
        assert_eq!(spec.ports[1].target_port(), TargetPort::Number(5353));
        assert_eq!(spec.ports[1].protocol, Protocol::Udp);
        assert_eq!(spec.ports[2].target_port(), TargetPort::Number(53));
        assert_eq!(spec.ports[2].node_port, Some(30053));
        assert_eq!(spec.affinity_timeout(), Some(60));
        assert_eq!(spec.internal_traffic_policy, TrafficPolicy::Local);
        assert_eq!(spec.external_traffic_policy, TrafficPolicy::Cluster);
    }

    const LOAD_BALANCER: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: edge, namespace: web}
spec:
  type: LoadBalancer
  clusterIP: 10.43.0.30
  ports:
    - {name: https, port: 443, nodePort: 30443}
    - {name: quic, port: 443, protocol: UDP, nodePort: 30443}
  externalIPs: [198.51.100.1, 198.51.100.2]
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  loadBalancerIP: 192.0.2.10
status:
  loadBalancer:
    ingress:
      - {ip: 192.0.2.10, ipMode: VIP}
      - {hostname: lb.example.com}
"#;

    #[test]
    fn a_load_balancer_service_parses_with_its_north_south_fields() {
        let svc = service(LOAD_BALANCER).unwrap();
        let spec = &svc.spec;
        assert_eq!(spec.service_type, ServiceType::LoadBalancer);
        assert_eq!(
            (spec.ports[0].node_port, spec.ports[1].node_port),
            (Some(30443), Some(30443)),
            "one node port for TCP and UDP is allowed"
        );
        assert_eq!(
            spec.external_ips,
            [
                Ipv4Addr::new(198, 51, 100, 1),
                Ipv4Addr::new(198, 51, 100, 2)
            ]
        );
        assert_eq!(spec.external_traffic_policy, TrafficPolicy::Local);
        assert!(spec.external_local() && spec.wants_health_check_node_port());
        assert_eq!(spec.health_check_node_port, Some(32000));
        assert_eq!(spec.load_balancer_ip, Some(Ipv4Addr::new(192, 0, 2, 10)));
        assert_eq!(svc.ingress_ips(), [Ipv4Addr::new(192, 0, 2, 10)]);
        assert_eq!(
            svc.status.load_balancer.ingress[1].hostname.as_deref(),
            Some("lb.example.com")
        );
        let again = service(&svc.to_yaml().unwrap()).unwrap();
        assert_eq!(again, svc, "round-trips through the YAML Weft writes");
    }

    #[test]
    fn north_south_fields_default_and_apply_only_where_kubernetes_applies_them() {
        let plain = service_with_spec("{ports: [{port: 80}]}").unwrap();
        assert!(plain.spec.external_ips.is_empty());
        assert_eq!(plain.spec.external_traffic_policy, TrafficPolicy::Cluster);
        assert!(!plain.spec.has_node_ports() && !plain.spec.external_local());
        assert!(plain.status.is_empty());
        assert!(!plain.to_yaml().unwrap().contains("status"));
        let local = "{ports: [{port: 80}], externalTrafficPolicy: Local";
        let cluster_ip = service_with_spec(&format!("{local}}}")).unwrap();
        assert!(!cluster_ip.spec.external_local(), "no way in from outside");
        let external = service_with_spec(&format!("{local}, externalIPs: [192.0.2.1]}}")).unwrap();
        assert!(external.spec.external_local());
        assert!(!external.spec.wants_health_check_node_port());
        let node_port = service_with_spec(&format!("{local}, type: NodePort}}")).unwrap();
        assert!(node_port.spec.wants_health_check_node_port());
        let stale = service(&LOAD_BALANCER.replace("type: LoadBalancer", "type: NodePort"));
        assert!(
            stale.unwrap().ingress_ips().is_empty(),
            "status of a former LoadBalancer"
        );
        let empty = service_with_spec("{type: LoadBalancer, loadBalancerIP: \"\"}").unwrap();
        assert_eq!(empty.spec.load_balancer_ip, None);
    }

    #[test]
    fn north_south_fields_kubernetes_refuses_are_refused() {
        for (spec, says) in [
            (
                "{ports: [{port: 80, nodePort: 30080}]}",
                "a ClusterIP Service has no node ports",
            ),
            (
                "{type: NodePort, ports: [{port: 80, nodePort: 30080}, {port: 81, nodePort: 30080}]}",
                "ports[1].nodePort 30080/TCP is given twice",
            ),
            (
                "{ports: [{port: 80}, {port: 53, protocol: UDP}, {port: 80, targetPort: 8080}]}",
                "ports[2]: port 80/TCP is given twice",
            ),
            (
                "{ports: [{name: web, port: 80}, {name: web, port: 81}]}",
                "ports[1]: port name `web` is given twice",
            ),
            (
                "{type: NodePort, ports: [{port: 80, nodePort: 0}]}",
                "port 0 is not in",
            ),
            (
                "{type: NodePort, healthCheckNodePort: 32000}",
                "healthCheckNodePort 32000 needs",
            ),
            (
                "{externalIPs: [2001:db8::1]}",
                "externalIPs: `2001:db8::1` is not an IPv4 address",
            ),
            (
                "{type: LoadBalancer, loadBalancerIP: x}",
                "address `x` is not an IPv4 address",
            ),
        ] {
            let err = invalid_message(spec);
            assert!(err.contains(says), "{spec}: {err}");
        }
    }

    #[test]
    fn defaults_follow_kubernetes() {
        let svc = service_with_spec("{ports: [{port: 80}], sessionAffinity: ClientIP}").unwrap();
        assert_eq!(svc.spec.cluster_ip, None);
        assert_eq!(svc.spec.ports[0].name(), "");
        assert_eq!(svc.spec.ports[0].protocol, Protocol::Tcp);
        assert_eq!(
            svc.spec.affinity_timeout(),
            Some(DEFAULT_AFFINITY_TIMEOUT_S)
        );
        let none = service_with_spec("{clusterIP: \"\", selector: {}}").unwrap();
        assert_eq!(none.spec.cluster_ip, None);
        assert_eq!(
            none.spec.selector(),
            None,
            "an empty selector selects nothing"
        );
        assert_eq!(none.spec.affinity_timeout(), None);
    }

    #[test]
    fn headless_and_external_name_services_have_no_address_to_balance() {
        let headless = service_with_spec("{clusterIP: None}").unwrap();
        assert_eq!(headless.spec.cluster_ip, Some(ClusterIp::Headless));
        assert_eq!(headless.spec.cluster_ipv4(), None);
        let alias = service_with_spec("{type: ExternalName, clusterIP: 10.43.0.9}").unwrap();
        assert_eq!(alias.spec.cluster_ipv4(), None);
        let lb = service_with_spec("{type: LoadBalancer, externalTrafficPolicy: Local}").unwrap();
        assert_eq!(lb.spec.service_type, ServiceType::LoadBalancer);
        assert_eq!(lb.spec.external_traffic_policy, TrafficPolicy::Local);
    }

    #[test]
    fn bad_values_are_refused_with_the_file_and_a_reason() {
        for (spec, reason) in [
            ("{ports: [{port: 0}]}", "port 0 is not in 1..=65535"),
            ("{ports: [{port: 70000}]}", "port 70000 is not in 1..=65535"),
            ("{ports: [{port: 80, targetPort: -1}]}", "port -1 is not in"),
            ("{ports: [{port: 80, nodePort: 0}]}", "port 0 is not in"),
            (
                "{ports: [{port: 80, targetPort: \"8080\"}]}",
                "neither a number",
            ),
            ("{ports: [{port: 80, protocol: ICMP}]}", "ICMP"),
            ("{clusterIP: fd00::1}", "clusterIP `fd00::1` is neither"),
            ("{clusterIP: 10.43.0.300}", "neither an IPv4 address"),
            (
                "{sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}}",
                "timeoutSeconds 0 is not in 1..=86400",
            ),
            (
                "{sessionAffinityConfig: {clientIP: {timeoutSeconds: 86401}}}",
                "timeoutSeconds 86401",
            ),
            ("{sessionAffinity: Sticky}", "Sticky"),
            ("{internalTrafficPolicy: Nearby}", "Nearby"),
            ("{type: Ingress}", "Ingress"),
        ] {
            let msg = invalid_message(spec);
            assert!(msg.contains(reason), "{spec}: {msg}");
            assert!(msg.starts_with("svc.yaml document 1"), "{msg}");
        }
    }

    #[test]
    fn endpoint_conditions_read_absent_values_as_kubernetes_does() {
        let c = |ready, serving, terminating| EndpointConditions {
            ready,
            serving,
            terminating,
        };
        let unknown = c(None, None, None);
        assert!(unknown.is_ready() && unknown.is_serving() && !unknown.is_terminating());
        let not_ready = c(Some(false), None, None);
        assert!(!not_ready.is_serving(), "serving defaults to ready");
        let draining = c(Some(false), Some(true), Some(true));
        assert!(!draining.is_ready() && draining.is_serving() && draining.is_terminating());
    }

    const SLICE: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
  - addresses: [10.42.0.10]
    conditions: {ready: true}
    nodeName: vps1
    targetRef: {kind: Pod, namespace: shop, name: web-1, uid: abc}
    zone: a
  - addresses: [10.42.1.10, 10.42.1.11]
    conditions: {ready: false, serving: true, terminating: true}
ports:
  - {name: http, port: 8080, protocol: TCP, appProtocol: http}
  - {port: 53, protocol: UDP}
"#;

    #[test]
    fn an_endpoint_slice_parses_and_names_its_service() {
        let Some(Object::EndpointSlice(slice)) = parse_manifest("s.yaml", SLICE).unwrap().pop()
        else {
            panic!()
        };
        assert_eq!(slice.service_name(), Some("web"));
        assert_eq!(slice.address_type, AddressType::IPv4);
        assert_eq!(
            slice.endpoints[0].ipv4(),
            Some(Ipv4Addr::new(10, 42, 0, 10))
        );
        assert_eq!(slice.endpoints[0].node_name.as_deref(), Some("vps1"));
        assert_eq!(
            slice.endpoints[0]
                .target_ref
                .as_ref()
                .unwrap()
                .name
                .as_deref(),
            Some("web-1")
        );
        assert_eq!(
            slice.endpoints[1].ipv4(),
            Some(Ipv4Addr::new(10, 42, 1, 10))
        );
        assert!(slice.endpoints[1].conditions.is_terminating());
        assert_eq!(slice.ports[0].name(), "http");
        assert_eq!(slice.ports[1].name(), "");
        assert_eq!(slice.ports[1].protocol, Protocol::Udp);
    }

    #[test]
    fn bad_slices_are_refused_and_other_address_types_kept_as_written() {
        let bad_ip = SLICE.replace("10.42.0.10]", "fd00::10]");
        let err = parse_manifest("s.yaml", &bad_ip).unwrap_err();
        assert!(
            err.to_string()
                .contains("endpoints[0]: address `fd00::10` of an IPv4 slice"),
            "{err}"
        );
        let bad_port = SLICE.replace("port: 8080", "port: 0");
        let err = parse_manifest("s.yaml", &bad_port).unwrap_err();
        assert!(err.to_string().contains("port 0 is not in"), "{err}");
        let no_address = SLICE.replace("[10.42.0.10]", "[]");
        let err = parse_manifest("s.yaml", &no_address).unwrap_err();
        assert!(
            err.to_string().contains("endpoints[0] has no address"),
            "{err}"
        );
        let v6 = bad_ip.replace("IPv4", "IPv6");
        let Some(Object::EndpointSlice(slice)) = parse_manifest("s.yaml", &v6).unwrap().pop()
        else {
            panic!()
        };
        assert_eq!(slice.address_type, AddressType::IPv6);
        assert_eq!(slice.endpoints[0].ipv4(), None);
    }

    #[test]
    fn services_round_trip_through_yaml() {
        let svc = service(SERVICE).unwrap();
        let yaml = svc.to_yaml().unwrap();
        assert!(yaml.contains("kind: Service"), "{yaml}");
        assert!(yaml.contains("clusterIP: 10.43.0.20"), "{yaml}");
        assert_eq!(service(&yaml).unwrap(), svc);
        let headless = service_with_spec("{clusterIP: None, ports: [{port: 80}]}").unwrap();
        assert_eq!(service(&headless.to_yaml().unwrap()).unwrap(), headless);
    }
}
