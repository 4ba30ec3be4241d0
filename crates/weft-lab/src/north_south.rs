//! The apiserver's and LB-IPAM's part of `weft lab apply` for north-south Services: the
//! `nodePort` of every port of a NodePort or LoadBalancer Service, the `healthCheckNodePort` of
//! one with `externalTrafficPolicy: Local`, and the `status.loadBalancer.ingress` address of a
//! LoadBalancer Service from a matching `CiliumLoadBalancerIPPool`.
//!
//! Node ports come from `nodePort.range` and are unique across the lab (a port number belongs
//! to one Service, which may use it for TCP and UDP). An explicit one must be in range and
//! free, else the whole request is refused. A port without one keeps what the stored Service
//! had for the same (port, protocol), as a re-apply does with kubectl, or gets the lowest free.
//!
//! An ingress address: the one the Service was stored with while a selecting pool still holds
//! it, else `loadBalancerIP` when a selecting pool holds it and it is free, else the first free
//! address of the selecting pools in name order. None to be had: the Service is stored without
//! one and a warning says so (Cilium leaves it pending likewise).
//!
//! External addresses follow the cluster's rules (`weft_model::external_address`): a Service
//! whose `externalIPs` or `loadBalancerIP` the rules refuse is refused with the request, and a
//! pool's address the rules refuse (a node's address in an overlapping pool) is never handed
//! out.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::bail;
use weft_model::{
    Store,
    config::NodePortRange,
    external_address::{ExternalAddressRules, ExternalKind},
    k8s::{LoadBalancerIpPool, Service, service::ServiceType},
};

type ServiceKey = (String, String);

fn key_of(svc: &Service) -> ServiceKey {
    (
        svc.metadata.namespace().to_string(),
        svc.metadata.name.clone(),
    )
}

/// What a Service is to be stored with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct NorthSouth {
    /// Per port of `spec.ports` (same order): its nodePort; all `None` for a type without.
    pub node_ports: Vec<Option<u16>>,
    pub health_check_node_port: Option<u16>,
    /// `Some` for a LoadBalancer Service: its ingress address, if one could be had.
    pub ingress: Option<Option<Ipv4Addr>>,
}

/// The north-south fields of each of `requested`, in their order, and warnings to print.
/// `pools` are the pools the lab will hold (stored ones and those of the request).
pub(crate) fn settle_north_south(
    requested: &[&Service],
    stored: &Store,
    pools: &BTreeMap<String, LoadBalancerIpPool>,
    range: NodePortRange,
    rules: &ExternalAddressRules,
) -> anyhow::Result<(Vec<NorthSouth>, Vec<String>)> {
    for svc in requested {
        check_external_addresses(svc, rules)?;
    }
    let replaced: BTreeSet<ServiceKey> = requested.iter().map(|s| key_of(s)).collect();
    let kept = || {
        stored
            .services
            .iter()
            .filter(|(key, _)| !replaced.contains(*key))
    };
    let mut ports = PortOwners::default();
    for (key, svc) in kept() {
        for port in stored_node_ports(svc) {
            ports.owners.insert(port, key.clone());
        }
    }
    let mut wanted: Vec<NorthSouth> = Vec::with_capacity(requested.len());
    for svc in requested {
        let want = wanted_ports(svc, stored);
        for port in want
            .node_ports
            .iter()
            .chain(&[want.health_check_node_port])
            .flatten()
        {
            ports.claim(*port, svc, range)?;
        }
        wanted.push(want);
    }
    for (svc, want) in requested.iter().zip(&mut wanted) {
        for (slot, port) in want.node_ports.iter_mut().zip(&svc.spec.ports) {
            if slot.is_none() && svc.spec.has_node_ports() {
                *slot = Some(ports.allocate(svc, range, port.port)?);
            }
        }
        if want.health_check_node_port.is_none() && svc.spec.wants_health_check_node_port() {
            want.health_check_node_port = Some(ports.allocate(svc, range, 0)?);
        }
    }
    let mut addresses: BTreeSet<Ipv4Addr> = kept().flat_map(|(_, s)| s.ingress_ips()).collect();
    let mut warnings = Vec::new();
    for (svc, want) in requested.iter().zip(&mut wanted) {
        if svc.spec.service_type != ServiceType::LoadBalancer {
            continue;
        }
        let ip = ingress_address(svc, stored, pools, &addresses, rules);
        match ip {
            Some(ip) => {
                addresses.insert(ip);
            }
            None => warnings.push(format!(
                "Service {}/{}: no CiliumLoadBalancerIPPool has a free address for it; it \
                 stays without an external address until one has",
                svc.metadata.namespace(),
                svc.metadata.name
            )),
        }
        want.ingress = Some(ip);
    }
    Ok((wanted, warnings))
}

/// Refuses a Service whose `externalIPs` or `loadBalancerIP` the rules refuse, naming it and
/// the address.
fn check_external_addresses(svc: &Service, rules: &ExternalAddressRules) -> anyhow::Result<()> {
    let claims = svc
        .spec
        .external_ips
        .iter()
        .map(|ip| (*ip, ExternalKind::ExternalIp))
        .chain(
            svc.spec
                .load_balancer_ip
                .map(|ip| (ip, ExternalKind::LoadBalancer)),
        );
    for (ip, kind) in claims {
        if let Err(refusal) = rules.check(ip, kind) {
            bail!(
                "Service {}/{}: {kind} {refusal}",
                svc.metadata.namespace(),
                svc.metadata.name
            );
        }
    }
    Ok(())
}

fn stored_node_ports(svc: &Service) -> impl Iterator<Item = u16> + '_ {
    let ports = svc.spec.ports.iter().filter_map(|p| p.node_port);
    ports.chain(svc.spec.health_check_node_port)
}

/// The ports a requested Service names itself or keeps from its stored version.
fn wanted_ports(svc: &Service, stored: &Store) -> NorthSouth {
    if !svc.spec.has_node_ports() {
        return NorthSouth {
            node_ports: vec![None; svc.spec.ports.len()],
            ..NorthSouth::default()
        };
    }
    let previous = stored.service(svc.metadata.namespace(), &svc.metadata.name);
    let previous_port = |port: u16, proto| {
        previous?
            .spec
            .ports
            .iter()
            .find(|p| p.port == port && p.protocol == proto)?
            .node_port
    };
    let node_ports = svc
        .spec
        .ports
        .iter()
        .map(|p| p.node_port.or_else(|| previous_port(p.port, p.protocol)))
        .collect();
    let health_check_node_port = svc.spec.wants_health_check_node_port().then(|| {
        svc.spec
            .health_check_node_port
            .or_else(|| previous?.spec.health_check_node_port)
    });
    NorthSouth {
        node_ports,
        health_check_node_port: health_check_node_port.flatten(),
        ingress: None,
    }
}

#[derive(Default)]
struct PortOwners {
    owners: BTreeMap<u16, ServiceKey>,
}

impl PortOwners {
    fn claim(&mut self, port: u16, svc: &Service, range: NodePortRange) -> anyhow::Result<()> {
        let claimant = key_of(svc);
        if !range.contains(port) {
            bail!(
                "Service {}/{}: node port {port} is outside nodePort.range {range}",
                claimant.0,
                claimant.1
            );
        }
        match self.owners.get(&port) {
            Some(owner) if *owner != claimant => bail!(
                "Service {}/{}: node port {port} is already allocated to Service {}/{}",
                claimant.0,
                claimant.1,
                owner.0,
                owner.1
            ),
            _ => {
                self.owners.insert(port, claimant);
                Ok(())
            }
        }
    }

    fn allocate(&mut self, svc: &Service, range: NodePortRange, port: u16) -> anyhow::Result<u16> {
        let Some(free) = range.ports().find(|p| !self.owners.contains_key(p)) else {
            bail!(
                "Service {}/{}: no free node port in nodePort.range {range} for port {port}",
                svc.metadata.namespace(),
                svc.metadata.name
            );
        };
        self.owners.insert(free, key_of(svc));
        Ok(free)
    }
}

fn ingress_address(
    svc: &Service,
    stored: &Store,
    pools: &BTreeMap<String, LoadBalancerIpPool>,
    taken: &BTreeSet<Ipv4Addr>,
    rules: &ExternalAddressRules,
) -> Option<Ipv4Addr> {
    let selecting: Vec<&LoadBalancerIpPool> = pools.values().filter(|p| p.selects(svc)).collect();
    let pooled = |ip: &Ipv4Addr| selecting.iter().any(|p| p.contains(*ip));
    let previous = stored
        .service(svc.metadata.namespace(), &svc.metadata.name)
        .and_then(|s| s.ingress_ips().into_iter().find(|ip| pooled(ip)));
    if previous.is_some() {
        return previous;
    }
    let free =
        |ip: &Ipv4Addr| !taken.contains(ip) && rules.check(*ip, ExternalKind::LoadBalancer).is_ok();
    if let Some(asked) = svc.spec.load_balancer_ip {
        return (pooled(&asked) && free(&asked)).then_some(asked);
    }
    selecting
        .iter()
        .filter(|p| !p.spec.disabled)
        .flat_map(|p| p.addresses())
        .find(free)
}

/// A Service manifest (one YAML document) with the settled fields written in, every other field
/// kept as written.
pub(crate) fn with_north_south(manifest: &str, settled: &NorthSouth) -> anyhow::Result<String> {
    use serde_norway::{Mapping, Value};
    let mut value: Value = serde_norway::from_str(manifest)?;
    let Some(root) = value.as_mapping_mut() else {
        bail!("the manifest is not a mapping");
    };
    if let Some(spec) = root.get_mut("spec").and_then(Value::as_mapping_mut) {
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_sequence_mut) {
            for (port, node_port) in ports.iter_mut().zip(&settled.node_ports) {
                if let (Some(port), Some(n)) = (port.as_mapping_mut(), node_port) {
                    port.insert("nodePort".into(), Value::from(*n));
                }
            }
        }
        if let Some(n) = settled.health_check_node_port {
            spec.insert("healthCheckNodePort".into(), Value::from(n));
        }
    }
    if let Some(ingress) = settled.ingress {
        let entries: Vec<Value> = ingress
            .iter()
            .map(|ip| {
                let mut entry = Mapping::new();
                entry.insert("ip".into(), Value::String(ip.to_string()));
                Value::Mapping(entry)
            })
            .collect();
        let mut load_balancer = Mapping::new();
        if !entries.is_empty() {
            load_balancer.insert("ingress".into(), Value::Sequence(entries));
        }
        let mut status = Mapping::new();
        status.insert("loadBalancer".into(), Value::Mapping(load_balancer));
        root.insert("status".into(), Value::Mapping(status));
    }
    Ok(serde_norway::to_string(&value)?)
}
