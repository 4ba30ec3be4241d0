//! Services as Kubernetes' apiserver treats them: defaulting, validation, cluster IP and node
//! port allocation (explicit values checked, free ones handed out), kept on update, released
//! when the Service goes.

use std::{
    collections::{BTreeSet, HashSet},
    net::Ipv4Addr,
    ops::RangeInclusive,
};

use serde_json::{Value, json};

use crate::{config::Ipv4Cidr, error::FieldError, meta};

const TYPES: &[&str] = &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];

/// Which cluster IPs and node ports stored Services hold.
#[derive(Debug)]
pub(crate) struct Allocator {
    cidr: Ipv4Cidr,
    ports: RangeInclusive<u16>,
    used_ips: BTreeSet<u32>,
    used_ports: BTreeSet<u16>,
    next_ip: u32,
    next_port: u16,
}

/// What one Service holds.
#[derive(Debug, Default, PartialEq, Eq)]
struct Holdings {
    ips: Vec<u32>,
    ports: Vec<u16>,
}

fn holdings(service: &Value) -> Holdings {
    let ips = meta::get(service, "spec.clusterIPs")
        .and_then(Value::as_array)
        .map(|ips| ips.iter().filter_map(Value::as_str).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(meta::get_str(service, "spec.clusterIP"))
        .filter_map(|ip| ip.parse::<Ipv4Addr>().ok())
        .map(u32::from)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut ports: Vec<u16> = service_ports(service)
        .iter()
        .filter_map(|p| port_number(p, "nodePort"))
        .collect();
    ports.extend(meta::get(service, "spec.healthCheckNodePort").and_then(as_port));
    ports.sort_unstable();
    ports.dedup();
    Holdings { ips, ports }
}

fn service_ports(service: &Value) -> Vec<Value> {
    meta::get(service, "spec.ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn as_port(value: &Value) -> Option<u16> {
    value
        .as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| *n != 0)
}

fn port_number(port: &Value, key: &str) -> Option<u16> {
    port.get(key).and_then(as_port)
}

impl Allocator {
    pub fn new(cidr: Ipv4Cidr, ports: RangeInclusive<u16>) -> Self {
        let next_ip = cidr.network() + 1;
        let next_port = *ports.start();
        Allocator {
            cidr,
            ports,
            used_ips: BTreeSet::new(),
            used_ports: BTreeSet::new(),
            next_ip,
            next_port,
        }
    }

    /// Books what a stored Service changed from `old` to `new` (either may be absent).
    pub fn on_commit(&mut self, old: Option<&Value>, new: Option<&Value>) {
        if let Some(old) = old {
            let held = holdings(old);
            for ip in held.ips {
                self.used_ips.remove(&ip);
            }
            for port in held.ports {
                self.used_ports.remove(&port);
            }
        }
        if let Some(new) = new {
            let held = holdings(new);
            self.used_ips.extend(held.ips);
            self.used_ports.extend(held.ports);
        }
    }

    fn ip_assignable(&self, ip: u32) -> bool {
        ip > self.cidr.network() && ip < self.cidr.broadcast()
    }

    fn free_ip(&mut self) -> Option<u32> {
        let (first, last) = (self.cidr.network() + 1, self.cidr.broadcast() - 1);
        let size = last - first + 1;
        for step in 0..size {
            let ip = first + (self.next_ip.saturating_sub(first) + step) % size;
            if !self.used_ips.contains(&ip) {
                self.next_ip = if ip == last { first } else { ip + 1 };
                return Some(ip);
            }
        }
        None
    }

    fn free_port(&mut self, taken_here: &HashSet<u16>) -> Option<u16> {
        let (first, last) = (*self.ports.start(), *self.ports.end());
        let size = u32::from(last - first) + 1;
        for step in 0..size {
            let offset = (u32::from(self.next_port.saturating_sub(first)) + step) % size;
            let port = first + offset as u16;
            if !self.used_ports.contains(&port) && !taken_here.contains(&port) {
                self.next_port = if port == last { first } else { port + 1 };
                return Some(port);
            }
        }
        None
    }

    /// Defaults, validates and allocates a Service being created (`old` absent) or updated.
    /// Values the old Service held are kept where the new one leaves them out.
    pub fn prepare(
        &mut self,
        service: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), Vec<FieldError>> {
        if let Some(old) = old {
            keep_allocated(service, old);
        }
        let mut errors = Vec::new();
        default_spec(service);
        validate_spec(service, old, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let old_holdings = old.map(holdings).unwrap_or_default();
        self.assign_cluster_ip(service, &old_holdings, &mut errors);
        self.assign_node_ports(service, &old_holdings, &mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn assign_cluster_ip(
        &mut self,
        service: &mut Value,
        old: &Holdings,
        errors: &mut Vec<FieldError>,
    ) {
        let type_ = meta::get_str(service, "spec.type")
            .unwrap_or("ClusterIP")
            .to_string();
        if type_ == "ExternalName" {
            meta::remove(service, "spec.clusterIP");
            meta::remove(service, "spec.clusterIPs");
            return;
        }
        let requested = meta::get_str(service, "spec.clusterIP")
            .unwrap_or("")
            .to_string();
        if requested == "None" {
            meta::set(service, "spec.clusterIPs", json!(["None"]));
            return;
        }
        let ip = if requested.is_empty() {
            match self.free_ip() {
                Some(ip) => ip,
                None => {
                    errors.push(FieldError::invalid(
                        "spec.clusterIPs",
                        "[]",
                        &format!("failed to allocate IP: range is full ({})", self.cidr),
                    ));
                    return;
                }
            }
        } else {
            let Ok(ip) = requested.parse::<Ipv4Addr>() else {
                errors.push(FieldError::invalid(
                    "spec.clusterIPs[0]",
                    format!("\"{requested}\""),
                    "must be a valid IP address",
                ));
                return;
            };
            let ip = u32::from(ip);
            if !self.cidr.contains(Ipv4Addr::from(ip)) || !self.ip_assignable(ip) {
                errors.push(FieldError::invalid(
                    "spec.clusterIPs",
                    format!("[\"{requested}\"]"),
                    &format!("failed to allocate IP {requested}: the provided IP ({requested}) is not in the valid range. The range of valid IPs is {}", self.cidr),
                ));
                return;
            }
            if self.used_ips.contains(&ip) && !old.ips.contains(&ip) {
                errors.push(FieldError::invalid(
                    "spec.clusterIPs",
                    format!("[\"{requested}\"]"),
                    &format!("failed to allocate IP {requested}: provided IP is already allocated"),
                ));
                return;
            }
            ip
        };
        let ip = Ipv4Addr::from(ip).to_string();
        meta::set(service, "spec.clusterIP", json!(ip));
        meta::set(service, "spec.clusterIPs", json!([ip]));
    }

    fn assign_node_ports(
        &mut self,
        service: &mut Value,
        old: &Holdings,
        errors: &mut Vec<FieldError>,
    ) {
        let type_ = meta::get_str(service, "spec.type")
            .unwrap_or("ClusterIP")
            .to_string();
        let external = type_ == "NodePort" || type_ == "LoadBalancer";
        let allocate = type_ == "NodePort"
            || (type_ == "LoadBalancer"
                && meta::get(service, "spec.allocateLoadBalancerNodePorts")
                    .and_then(Value::as_bool)
                    .unwrap_or(true));
        let mut ports = service_ports(service);
        // node port -> protocols using it in this Service (one port may serve TCP and UDP)
        let mut here: Vec<(u16, String)> = Vec::new();
        let mut taken_here: HashSet<u16> = HashSet::new();
        for (i, port) in ports.iter_mut().enumerate() {
            let protocol = port
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP")
                .to_string();
            let field = format!("spec.ports[{i}].nodePort");
            match port_number(port, "nodePort") {
                Some(_) if !external => {
                    errors.push(FieldError::forbidden(
                        field,
                        "may not be used when `type` is 'ClusterIP'",
                    ));
                }
                Some(n) => {
                    if here.iter().any(|(p, proto)| *p == n && *proto == protocol) {
                        errors.push(FieldError::duplicate(field, n));
                    } else if !self.ports.contains(&n) {
                        errors.push(FieldError::invalid(
                            field,
                            n,
                            &format!("provided port is not in the valid range. The range of valid ports is {}-{}", self.ports.start(), self.ports.end()),
                        ));
                    } else if self.used_ports.contains(&n)
                        && !old.ports.contains(&n)
                        && !taken_here.contains(&n)
                    {
                        errors.push(FieldError::invalid(
                            field,
                            n,
                            "provided port is already allocated",
                        ));
                    }
                    here.push((n, protocol));
                    taken_here.insert(n);
                }
                None if allocate => match self.free_port(&taken_here) {
                    Some(n) => {
                        if let Some(map) = port.as_object_mut() {
                            map.insert("nodePort".to_string(), json!(n));
                        }
                        here.push((n, protocol));
                        taken_here.insert(n);
                    }
                    None => errors.push(FieldError::invalid(
                        field,
                        0,
                        "failed to allocate a node port: range is full",
                    )),
                },
                None => {}
            }
        }
        meta::set(service, "spec.ports", Value::Array(ports));
        self.assign_health_check_port(service, &type_, &mut taken_here, old, errors);
    }

    fn assign_health_check_port(
        &mut self,
        service: &mut Value,
        type_: &str,
        taken_here: &mut HashSet<u16>,
        old: &Holdings,
        errors: &mut Vec<FieldError>,
    ) {
        // As in Kubernetes: only a LoadBalancer Service with externalTrafficPolicy Local gets
        // a health check node port.
        let needed = type_ == "LoadBalancer"
            && meta::get_str(service, "spec.externalTrafficPolicy") == Some("Local");
        let field = "spec.healthCheckNodePort";
        match meta::get(service, field).and_then(as_port) {
            Some(n) if !needed => {
                errors.push(FieldError::invalid(field, n, "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"));
            }
            Some(n) => {
                if !self.ports.contains(&n) {
                    errors.push(FieldError::invalid(
                        field,
                        n,
                        "provided port is not in the valid range",
                    ));
                } else if (self.used_ports.contains(&n) && !old.ports.contains(&n))
                    || taken_here.contains(&n)
                {
                    errors.push(FieldError::invalid(
                        field,
                        n,
                        "provided port is already allocated",
                    ));
                }
                taken_here.insert(n);
            }
            None if needed => match self.free_port(taken_here) {
                Some(n) => {
                    meta::set(service, field, json!(n));
                    taken_here.insert(n);
                }
                None => errors.push(FieldError::invalid(
                    field,
                    0,
                    "failed to allocate a node port: range is full",
                )),
            },
            None => {
                meta::remove(service, field);
            }
        }
    }
}

/// On update the apiserver copies allocated values the client left out (kubectl apply and
/// PUTs of a manifest omit them): clusterIP(s), node ports by port entry, healthCheckNodePort.
fn keep_allocated(service: &mut Value, old: &Value) {
    let old_type = meta::get_str(old, "spec.type").unwrap_or("ClusterIP");
    let new_type = meta::get_str(service, "spec.type")
        .unwrap_or("ClusterIP")
        .to_string();
    if new_type != "ExternalName" && old_type != "ExternalName" {
        let new_ip = meta::get_str(service, "spec.clusterIP").unwrap_or("");
        if new_ip.is_empty()
            && let Some(old_ip) = meta::get(old, "spec.clusterIP").cloned()
        {
            meta::set(service, "spec.clusterIP", old_ip);
            if let Some(ips) = meta::get(old, "spec.clusterIPs").cloned() {
                meta::set(service, "spec.clusterIPs", ips);
            }
        }
    }
    let external = new_type == "NodePort" || new_type == "LoadBalancer";
    if !external {
        drop_type_dependent_fields(service, old);
        return;
    }
    let old_ports = service_ports(old);
    let mut ports = service_ports(service);
    for port in ports.iter_mut() {
        if port_number(port, "nodePort").is_some() {
            continue;
        }
        let matching = old_ports.iter().find(|o| same_port(o, port));
        if let Some(n) = matching.and_then(|o| port_number(o, "nodePort"))
            && let Some(map) = port.as_object_mut()
        {
            map.insert("nodePort".to_string(), json!(n));
        }
    }
    if !ports.is_empty() {
        meta::set(service, "spec.ports", Value::Array(ports));
    }
    let local_lb = new_type == "LoadBalancer"
        && meta::get_str(service, "spec.externalTrafficPolicy") == Some("Local");
    let old_check = meta::get(old, "spec.healthCheckNodePort").and_then(as_port);
    let new_check = meta::get(service, "spec.healthCheckNodePort").and_then(as_port);
    match (local_lb, new_check, old_check) {
        (true, None, Some(n)) => meta::set(service, "spec.healthCheckNodePort", json!(n)),
        (false, Some(n), Some(o)) if n == o => {
            meta::remove(service, "spec.healthCheckNodePort");
        }
        _ => {}
    }
}

/// A Service that stops being NodePort/LoadBalancer loses the node ports and health check port
/// it still carries unchanged from before (Kubernetes' `dropTypeDependentFields`).
fn drop_type_dependent_fields(service: &mut Value, old: &Value) {
    let old_ports = service_ports(old);
    let mut ports = service_ports(service);
    for port in ports.iter_mut() {
        let unchanged = old_ports.iter().any(|o| {
            same_port(o, port) && port_number(o, "nodePort") == port_number(port, "nodePort")
        });
        if unchanged && let Some(map) = port.as_object_mut() {
            map.remove("nodePort");
        }
    }
    if !ports.is_empty() {
        meta::set(service, "spec.ports", Value::Array(ports));
    }
    if meta::get(service, "spec.healthCheckNodePort") == meta::get(old, "spec.healthCheckNodePort")
    {
        meta::remove(service, "spec.healthCheckNodePort");
    }
    if meta::get(service, "spec.externalTrafficPolicy")
        == meta::get(old, "spec.externalTrafficPolicy")
    {
        meta::remove(service, "spec.externalTrafficPolicy");
    }
}

fn same_port(a: &Value, b: &Value) -> bool {
    let field = |v: &Value, k: &str| v.get(k).cloned().unwrap_or(Value::Null);
    let protocol = |v: &Value| {
        v.get("protocol")
            .and_then(Value::as_str)
            .unwrap_or("TCP")
            .to_string()
    };
    field(a, "port") == field(b, "port") && protocol(a) == protocol(b)
}

fn default_spec(service: &mut Value) {
    let spec = meta::object_at(service, "spec");
    let type_ = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    spec.insert("type".to_string(), json!(type_));
    spec.entry("sessionAffinity").or_insert(json!("None"));
    if spec.get("sessionAffinity").and_then(Value::as_str) == Some("ClientIP") {
        let config = spec.entry("sessionAffinityConfig").or_insert(json!({}));
        let client = meta::object_at(config, "clientIP");
        client.entry("timeoutSeconds").or_insert(json!(10800));
    }
    if type_ == "ExternalName" {
        return;
    }
    spec.entry("internalTrafficPolicy")
        .or_insert(json!("Cluster"));
    if type_ == "NodePort" || type_ == "LoadBalancer" {
        spec.entry("externalTrafficPolicy")
            .or_insert(json!("Cluster"));
    }
    if type_ == "LoadBalancer" {
        spec.entry("allocateLoadBalancerNodePorts")
            .or_insert(json!(true));
    }
    spec.entry("ipFamilies").or_insert(json!(["IPv4"]));
    spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        for port in ports.iter_mut() {
            let Some(map) = port.as_object_mut() else {
                continue;
            };
            map.entry("protocol").or_insert(json!("TCP"));
            if !map.contains_key("targetPort")
                && let Some(number) = map.get("port").cloned()
            {
                map.insert("targetPort".to_string(), number);
            }
        }
    }
}

fn validate_spec(service: &Value, old: Option<&Value>, errors: &mut Vec<FieldError>) {
    let type_ = meta::get_str(service, "spec.type").unwrap_or("ClusterIP");
    if !TYPES.contains(&type_) {
        errors.push(FieldError::not_supported(
            "spec.type",
            format!("\"{type_}\""),
            TYPES,
        ));
        return;
    }
    let cluster_ip = meta::get_str(service, "spec.clusterIP").unwrap_or("");
    if let Some(ips) = meta::get(service, "spec.clusterIPs").and_then(Value::as_array)
        && let Some(first) = ips.first().and_then(Value::as_str)
        && !cluster_ip.is_empty()
        && first != cluster_ip
    {
        errors.push(FieldError::invalid(
            "spec.clusterIPs[0]",
            format!("\"{first}\""),
            "must match `clusterIP` when both are specified",
        ));
    }
    if let Some(old) = old {
        let old_ip = meta::get_str(old, "spec.clusterIP").unwrap_or("");
        let old_type = meta::get_str(old, "spec.type").unwrap_or("ClusterIP");
        if !old_ip.is_empty()
            && old_type != "ExternalName"
            && type_ != "ExternalName"
            && cluster_ip != old_ip
        {
            errors.push(FieldError::invalid(
                "spec.clusterIPs[0]",
                format!("\"{cluster_ip}\""),
                "field is immutable",
            ));
        }
    }
    if type_ == "ExternalName" {
        let name = meta::get_str(service, "spec.externalName").unwrap_or("");
        if !meta::is_dns_subdomain(&name.to_ascii_lowercase()) {
            errors.push(FieldError::required("spec.externalName", ""));
        }
        return;
    }
    if type_ != "NodePort" && type_ != "LoadBalancer" {
        if let Some(policy) = meta::get_str(service, "spec.externalTrafficPolicy") {
            errors.push(FieldError::invalid(
                "spec.externalTrafficPolicy",
                format!("\"{policy}\""),
                "may only be set for externally-accessible services",
            ));
        }
    } else if let Some(policy) = meta::get_str(service, "spec.externalTrafficPolicy")
        && !["Cluster", "Local"].contains(&policy)
    {
        errors.push(FieldError::not_supported(
            "spec.externalTrafficPolicy",
            format!("\"{policy}\""),
            &["Cluster", "Local"],
        ));
    }
    if let Some(policy) = meta::get_str(service, "spec.internalTrafficPolicy")
        && !["Cluster", "Local"].contains(&policy)
    {
        errors.push(FieldError::not_supported(
            "spec.internalTrafficPolicy",
            format!("\"{policy}\""),
            &["Cluster", "Local"],
        ));
    }
    let affinity = meta::get_str(service, "spec.sessionAffinity").unwrap_or("None");
    if !["None", "ClientIP"].contains(&affinity) {
        errors.push(FieldError::not_supported(
            "spec.sessionAffinity",
            format!("\"{affinity}\""),
            &["ClientIP", "None"],
        ));
    }
    validate_families(service, errors);
    validate_ports(service, cluster_ip == "None", errors);
}

fn validate_families(service: &Value, errors: &mut Vec<FieldError>) {
    if let Some(families) = meta::get(service, "spec.ipFamilies").and_then(Value::as_array) {
        for (i, family) in families.iter().enumerate() {
            let family = family.as_str().unwrap_or("");
            if family != "IPv4" {
                errors.push(FieldError::invalid(
                    format!("spec.ipFamilies[{i}]"),
                    format!("\"{family}\""),
                    "not configured on this cluster",
                ));
            }
        }
    }
    if let Some(policy) = meta::get_str(service, "spec.ipFamilyPolicy") {
        if policy == "RequireDualStack" {
            errors.push(FieldError::invalid(
                "spec.ipFamilyPolicy",
                "\"RequireDualStack\"",
                "this cluster is not configured for dual-stack services",
            ));
        } else if !["SingleStack", "PreferDualStack"].contains(&policy) {
            errors.push(FieldError::not_supported(
                "spec.ipFamilyPolicy",
                format!("\"{policy}\""),
                &["PreferDualStack", "RequireDualStack", "SingleStack"],
            ));
        }
    }
}

fn validate_ports(service: &Value, headless: bool, errors: &mut Vec<FieldError>) {
    let ports = service_ports(service);
    if ports.is_empty() && !headless {
        errors.push(FieldError::required("spec.ports", ""));
        return;
    }
    let mut names: HashSet<String> = HashSet::new();
    let mut keys: HashSet<(u64, String)> = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let name = port.get("name").and_then(Value::as_str).unwrap_or("");
        if ports.len() > 1 && name.is_empty() {
            errors.push(FieldError::required(format!("spec.ports[{i}].name"), ""));
        } else if !name.is_empty() && !names.insert(name.to_string()) {
            errors.push(FieldError::duplicate(
                format!("spec.ports[{i}].name"),
                format!("\"{name}\""),
            ));
        }
        let number = port.get("port").and_then(Value::as_u64).unwrap_or(0);
        if !(1..=65535).contains(&number) {
            errors.push(FieldError::invalid(
                format!("spec.ports[{i}].port"),
                number,
                "must be between 1 and 65535, inclusive",
            ));
        }
        let protocol = port
            .get("protocol")
            .and_then(Value::as_str)
            .unwrap_or("TCP");
        if !PROTOCOLS.contains(&protocol) {
            errors.push(FieldError::not_supported(
                format!("spec.ports[{i}].protocol"),
                format!("\"{protocol}\""),
                PROTOCOLS,
            ));
        }
        if !keys.insert((number, protocol.to_string())) {
            errors.push(FieldError::duplicate(
                format!("spec.ports[{i}]"),
                format!("{{\"port\":{number},\"protocol\":\"{protocol}\"}}"),
            ));
        }
        if let Some(target) = port.get("targetPort") {
            let ok = match target {
                Value::Number(n) => n.as_u64().is_some_and(|n| (1..=65535).contains(&n)),
                Value::String(s) => !s.is_empty() && s.len() <= 15,
                _ => false,
            };
            if !ok {
                errors.push(FieldError::invalid(
                    format!("spec.ports[{i}].targetPort"),
                    target,
                    "must be a port number between 1 and 65535 or a name",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allocator() -> Allocator {
        Allocator::new(
            Ipv4Cidr::new(Ipv4Addr::new(10, 43, 0, 0), 29).unwrap(),
            30000..=30002,
        )
    }

    fn create(alloc: &mut Allocator, spec: Value) -> Result<Value, Vec<FieldError>> {
        let mut svc = json!({"metadata": {"name": "s"}, "spec": spec});
        alloc.prepare(&mut svc, None)?;
        alloc.on_commit(None, Some(&svc));
        Ok(svc)
    }

    #[test]
    fn allocates_until_the_range_is_full_and_reuses_released_addresses() {
        let mut alloc = allocator();
        // a /29 has 6 assignable addresses: .1 to .6
        let mut made = Vec::new();
        for _ in 0..6 {
            let svc = create(&mut alloc, json!({"ports": [{"port": 80}]})).unwrap();
            made.push(svc);
        }
        let ips: Vec<&str> = made
            .iter()
            .map(|s| meta::get_str(s, "spec.clusterIP").unwrap())
            .collect();
        assert_eq!(
            ips,
            [
                "10.43.0.1",
                "10.43.0.2",
                "10.43.0.3",
                "10.43.0.4",
                "10.43.0.5",
                "10.43.0.6"
            ]
        );
        let full = create(&mut alloc, json!({"ports": [{"port": 80}]})).unwrap_err();
        assert!(full[0].message.contains("range is full"), "{full:?}");
        alloc.on_commit(Some(&made[2]), None);
        let again = create(&mut alloc, json!({"ports": [{"port": 80}]})).unwrap();
        assert_eq!(meta::get_str(&again, "spec.clusterIP"), Some("10.43.0.3"));
    }

    #[test]
    fn explicit_addresses_and_ports_are_checked() {
        let mut alloc = allocator();
        create(&mut alloc, json!({"clusterIP": "10.43.0.5", "type": "NodePort", "ports": [{"port": 80, "nodePort": 30001}]})).unwrap();
        let taken = create(
            &mut alloc,
            json!({"clusterIP": "10.43.0.5", "ports": [{"port": 80}]}),
        )
        .unwrap_err();
        assert!(taken[0].message.contains("already allocated"), "{taken:?}");
        let outside = create(
            &mut alloc,
            json!({"clusterIP": "10.44.0.5", "ports": [{"port": 80}]}),
        )
        .unwrap_err();
        assert!(
            outside[0].message.contains("not in the valid range"),
            "{outside:?}"
        );
        let port_taken = create(
            &mut alloc,
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30001}]}),
        )
        .unwrap_err();
        assert_eq!(port_taken[0].field, "spec.ports[0].nodePort");
        let port_outside = create(
            &mut alloc,
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 31000}]}),
        )
        .unwrap_err();
        assert!(
            port_outside[0].message.contains("valid range"),
            "{port_outside:?}"
        );
    }

    #[test]
    fn duplicate_ports_are_refused() {
        let mut alloc = allocator();
        let dup = create(
            &mut alloc,
            json!({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}),
        )
        .unwrap_err();
        assert_eq!(dup[0].field, "spec.ports[1]");
        assert_eq!(dup[0].reason, "FieldValueDuplicate");
        let same_name = create(
            &mut alloc,
            json!({"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]}),
        )
        .unwrap_err();
        assert_eq!(same_name[0].field, "spec.ports[1].name");
        // the same port for TCP and UDP is fine
        create(&mut alloc, json!({"ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53}]})).unwrap();
    }

    #[test]
    fn update_keeps_allocations_and_forbids_a_new_cluster_ip() {
        let mut alloc = allocator();
        let old = create(&mut alloc, json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]})).unwrap();
        assert!(meta::get(&old, "spec.healthCheckNodePort").is_some());
        let mut new = json!({"metadata": {"name": "s"}, "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}});
        alloc.prepare(&mut new, Some(&old)).unwrap();
        assert_eq!(
            meta::get(&new, "spec.clusterIP"),
            meta::get(&old, "spec.clusterIP")
        );
        assert_eq!(meta::get(&new, "spec.ports"), meta::get(&old, "spec.ports"));
        assert_eq!(
            meta::get(&new, "spec.healthCheckNodePort"),
            meta::get(&old, "spec.healthCheckNodePort")
        );
        let mut moved = json!({"metadata": {"name": "s"}, "spec": {"clusterIP": "10.43.0.6", "ports": [{"port": 80}]}});
        let err = alloc.prepare(&mut moved, Some(&old)).unwrap_err();
        assert!(err[0].message.contains("immutable"), "{err:?}");
    }
}
