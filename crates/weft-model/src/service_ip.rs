//! ClusterIP allocation, the part of the apiserver whoever plays it (the lab's `apply`) needs:
//! a Service's explicit `clusterIP` is checked, one without gets a free address of the service
//! CIDR.
//!
//! As in Kubernetes (KEP-3070), the CIDR's low addresses form a static band kept for explicit
//! choices (10.43.0.1 for the `kubernetes` Service, 10.43.0.10 for DNS in K3s): allocation tries
//! the addresses above it first and the band only when those are all taken. The band is
//! min(max(16, size / 16), 256) addresses from the first host (10.43.0.1 ..= 10.43.1.0 for
//! 10.43.0.0/16), none for a CIDR of 16 addresses or fewer.
//!
//! Allocation is deterministic rather than random: a hash of the Service's namespace and name
//! gives the first candidate, then the next addresses in turn. The caller stores the address it
//! got in the Service (as the apiserver does), so that it never changes afterwards.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    ops::Range,
};

use crate::{
    Ipv4Cidr,
    hash::Fnv1a,
    k8s::{ClusterIp, Service, service::ServiceType},
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceIpError {
    #[error("Service {service}: clusterIP {ip} is outside the service CIDR {cidr}")]
    OutsideCidr {
        service: String,
        ip: Ipv4Addr,
        cidr: Ipv4Cidr,
    },
    #[error("Service {service}: clusterIP {ip} is the network or broadcast address of {cidr}")]
    NotAHost {
        service: String,
        ip: Ipv4Addr,
        cidr: Ipv4Cidr,
    },
    #[error("clusterIP {ip} is claimed by both Service {first} and Service {second}")]
    Duplicate {
        ip: Ipv4Addr,
        first: String,
        second: String,
    },
    #[error("Service {service}: no free clusterIP left in {cidr}")]
    Exhausted { service: String, cidr: Ipv4Cidr },
}

/// A free address of `cidr` for Service `namespace/name`, never the network or broadcast
/// address nor one of `taken`: the first free one from a hash of the name, above the static
/// band, then in it.
pub fn allocate_cluster_ip(
    namespace: &str,
    name: &str,
    cidr: Ipv4Cidr,
    taken: &BTreeSet<Ipv4Addr>,
) -> Result<Ipv4Addr, ServiceIpError> {
    let hosts = host_range(cidr);
    let band_end = hosts.start + static_band_size(cidr).min(hosts.end - hosts.start);
    let start = name_hash(namespace, name);
    let network = u64::from(u32::from(cidr.network()));
    [band_end..hosts.end, hosts.start..band_end]
        .into_iter()
        .find_map(|band| {
            probe(band, start, |offset| {
                !taken.contains(&address(network, offset))
            })
        })
        .map(|offset| address(network, offset))
        .ok_or_else(|| ServiceIpError::Exhausted {
            service: format!("{namespace}/{name}"),
            cidr,
        })
}

/// Checks an explicit clusterIP: an address of the service CIDR that is not its network or
/// broadcast address.
pub fn validate_cluster_ip(
    namespace: &str,
    name: &str,
    ip: Ipv4Addr,
    cidr: Ipv4Cidr,
) -> Result<(), ServiceIpError> {
    let service = || format!("{namespace}/{name}");
    if !cidr.contains(ip) {
        return Err(ServiceIpError::OutsideCidr {
            service: service(),
            ip,
            cidr,
        });
    }
    let offset = u64::from(u32::from(ip) - u32::from(cidr.network()));
    if !host_range(cidr).contains(&offset) {
        return Err(ServiceIpError::NotAHost {
            service: service(),
            ip,
            cidr,
        });
    }
    Ok(())
}

/// The clusterIP of every Service that has or needs one (not headless, not ExternalName), by
/// (namespace, name): explicit ones checked and unique, the others allocated in (namespace,
/// name) order around them.
pub fn cluster_ips<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    cidr: Ipv4Cidr,
) -> Result<BTreeMap<(String, String), Ipv4Addr>, ServiceIpError> {
    let mut wanting = BTreeSet::new();
    let mut explicit = BTreeMap::new();
    for svc in services {
        let key = (
            svc.metadata.namespace().to_string(),
            svc.metadata.name.clone(),
        );
        match (svc.spec.service_type, svc.spec.cluster_ip) {
            (ServiceType::ExternalName, _) | (_, Some(ClusterIp::Headless)) => {}
            (_, Some(ClusterIp::V4(ip))) => {
                explicit.insert(key, ip);
            }
            (_, None) => {
                wanting.insert(key);
            }
        }
    }
    let mut owner: BTreeMap<Ipv4Addr, &(String, String)> = BTreeMap::new();
    for (key, ip) in &explicit {
        validate_cluster_ip(&key.0, &key.1, *ip, cidr)?;
        if let Some(first) = owner.insert(*ip, key) {
            return Err(ServiceIpError::Duplicate {
                ip: *ip,
                first: format!("{}/{}", first.0, first.1),
                second: format!("{}/{}", key.0, key.1),
            });
        }
    }
    let mut taken: BTreeSet<Ipv4Addr> = owner.into_keys().collect();
    let mut out = explicit.clone();
    for key in wanting {
        let ip = allocate_cluster_ip(&key.0, &key.1, cidr, &taken)?;
        taken.insert(ip);
        out.insert(key, ip);
    }
    Ok(out)
}

/// Offsets from the network address that are host addresses.
fn host_range(cidr: Ipv4Cidr) -> Range<u64> {
    if cidr.prefix_len() >= 31 {
        0..cidr.size()
    } else {
        1..cidr.size() - 1
    }
}

/// Kubernetes' static band: min(max(16, size / 16), 256), none for 16 addresses or fewer.
fn static_band_size(cidr: Ipv4Cidr) -> u64 {
    let size = cidr.size();
    if size <= 16 {
        0
    } else {
        (size / 16).clamp(16, 256)
    }
}

fn name_hash(namespace: &str, name: &str) -> u64 {
    let mut h = Fnv1a::new();
    h.field(namespace.as_bytes());
    h.field(name.as_bytes());
    h.finish()
}

/// The first offset of `band`, from the one `start` picks and wrapping around, that is `free`.
fn probe(band: Range<u64>, start: u64, free: impl Fn(u64) -> bool) -> Option<u64> {
    let len = band.end.checked_sub(band.start).filter(|l| *l > 0)?;
    let first = start % len;
    (0..len)
        .map(|i| band.start + (first + i) % len)
        .find(|&offset| free(offset))
}

fn address(network: u64, offset: u64) -> Ipv4Addr {
    // Offsets are below the CIDR's size, so the sum is an address of the CIDR.
    Ipv4Addr::from((network + offset) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn allocation_is_deterministic_above_the_static_band() {
        let c = cidr("10.43.0.0/16");
        let none = BTreeSet::new();
        let a = allocate_cluster_ip("shop", "web", c, &none).unwrap();
        assert_eq!(allocate_cluster_ip("shop", "web", c, &none).unwrap(), a);
        assert!(
            c.contains(a) && a > ip("10.43.1.0") && a < ip("10.43.255.255"),
            "{a}"
        );
        let b = allocate_cluster_ip("shop", "db", c, &none).unwrap();
        assert_ne!(a, b);
        // A taken candidate moves the allocation to the next address.
        let next = allocate_cluster_ip("shop", "web", c, &BTreeSet::from([a])).unwrap();
        assert_eq!(u32::from(next), u32::from(a) + 1);
    }

    #[test]
    fn probing_wraps_within_the_upper_band_then_uses_the_static_band() {
        // A /27 has 32 addresses: static band 16 (offsets 1..17), dynamic 17..31.
        let c = cidr("10.43.0.0/27");
        let dynamic: BTreeSet<Ipv4Addr> = (17..31).map(|i| ip(&format!("10.43.0.{i}"))).collect();
        let mut taken = dynamic.clone();
        taken.remove(&ip("10.43.0.17"));
        assert_eq!(
            allocate_cluster_ip("a", "b", c, &taken).unwrap(),
            ip("10.43.0.17"),
            "the only free address of the upper band, whatever the start"
        );
        let got = allocate_cluster_ip("a", "b", c, &dynamic).unwrap();
        assert!(
            (1..17).contains(&(u32::from(got) - u32::from(c.network()))),
            "{got}"
        );
    }

    #[test]
    fn never_network_nor_broadcast_and_an_error_when_full() {
        let c = cidr("10.43.0.0/29");
        let mut taken = BTreeSet::new();
        for _ in 0..6 {
            let got = allocate_cluster_ip("ns", "svc", c, &taken).unwrap();
            assert!(got != ip("10.43.0.0") && got != ip("10.43.0.7"), "{got}");
            assert!(taken.insert(got));
        }
        assert_eq!(
            allocate_cluster_ip("ns", "svc", c, &taken),
            Err(ServiceIpError::Exhausted {
                service: "ns/svc".into(),
                cidr: c
            })
        );
    }

    #[test]
    fn explicit_addresses_must_be_hosts_of_the_cidr() {
        let c = cidr("10.43.0.0/16");
        assert_eq!(validate_cluster_ip("a", "b", ip("10.43.0.10"), c), Ok(()));
        let err = validate_cluster_ip("a", "b", ip("10.96.0.10"), c).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Service a/b: clusterIP 10.96.0.10 is outside the service CIDR 10.43.0.0/16"
        );
        for edge in ["10.43.0.0", "10.43.255.255"] {
            assert!(matches!(
                validate_cluster_ip("a", "b", ip(edge), c),
                Err(ServiceIpError::NotAHost { .. })
            ));
        }
    }

    fn services(text: &str) -> Store {
        Store::from_manifests([("svc.yaml", text)]).unwrap()
    }

    fn svc(ns: &str, name: &str, spec: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n---\n"
        )
    }

    #[test]
    fn cluster_ips_keep_explicit_ones_and_allocate_the_rest_around_them() {
        let text = [
            svc("kube-system", "dns", "{clusterIP: 10.43.0.10}"),
            svc("shop", "web", "{}"),
            svc("shop", "db", "{clusterIP: \"\"}"),
            svc("shop", "headless", "{clusterIP: None}"),
            svc("shop", "alias", "{type: ExternalName}"),
        ]
        .concat();
        let store = services(&text);
        let c = cidr("10.43.0.0/16");
        let ips = cluster_ips(store.services.values(), c).unwrap();
        let key = |ns: &str, n: &str| (ns.to_string(), n.to_string());
        assert_eq!(ips.len(), 3, "{ips:?}");
        assert_eq!(ips[&key("kube-system", "dns")], ip("10.43.0.10"));
        let none = BTreeSet::new();
        assert_eq!(
            ips[&key("shop", "web")],
            allocate_cluster_ip("shop", "web", c, &none).unwrap()
        );
        assert_ne!(ips[&key("shop", "web")], ips[&key("shop", "db")]);
        assert_eq!(cluster_ips(store.services.values(), c).unwrap(), ips);
    }

    #[test]
    fn duplicate_or_foreign_explicit_addresses_are_refused() {
        let c = cidr("10.43.0.0/16");
        let dup = services(
            &[
                svc("a", "one", "{clusterIP: 10.43.0.20}"),
                svc("b", "two", "{clusterIP: 10.43.0.20}"),
            ]
            .concat(),
        );
        assert_eq!(
            cluster_ips(dup.services.values(), c)
                .unwrap_err()
                .to_string(),
            "clusterIP 10.43.0.20 is claimed by both Service a/one and Service b/two"
        );
        let foreign = services(&svc("a", "one", "{clusterIP: 10.96.0.1}"));
        assert!(matches!(
            cluster_ips(foreign.services.values(), c),
            Err(ServiceIpError::OutsideCidr { .. })
        ));
    }
}
