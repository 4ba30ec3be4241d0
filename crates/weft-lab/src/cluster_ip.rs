//! The apiserver's part of `weft lab apply` for Services: the clusterIP each applied Service is
//! stored with. An explicit address must lie in the service CIDR and belong to no other
//! Service; a Service without one keeps the address it was stored with (a re-apply, as with
//! kubectl) or gets a free one; headless and ExternalName Services get none.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::bail;
use weft_model::{
    Ipv4Cidr, Store,
    k8s::{ClusterIp, Service, service::ServiceType},
    service_ip::{allocate_cluster_ip, validate_cluster_ip},
};

type ServiceKey = (String, String);

fn key_of(svc: &Service) -> ServiceKey {
    (
        svc.metadata.namespace().to_string(),
        svc.metadata.name.clone(),
    )
}

/// What a requested Service's address comes from, before allocation.
enum Wanted {
    Nothing,
    Address(Ipv4Addr),
    Allocation,
}

/// The clusterIP each of `requested` is to be stored with (`None`: none), in their order.
/// `stored` is the state before the request. Any conflict refuses the whole request.
pub(crate) fn settle_cluster_ips(
    requested: &[&Service],
    stored: &Store,
    cidr: Ipv4Cidr,
) -> anyhow::Result<Vec<Option<Ipv4Addr>>> {
    let replaced: BTreeSet<ServiceKey> = requested.iter().map(|s| key_of(s)).collect();
    let mut owners: BTreeMap<Ipv4Addr, ServiceKey> = stored
        .services
        .iter()
        .filter(|(key, _)| !replaced.contains(*key))
        .filter_map(|(key, svc)| Some((svc.spec.cluster_ipv4()?, key.clone())))
        .collect();
    let mut wanted = Vec::with_capacity(requested.len());
    for svc in requested {
        let want = wanted_address(svc, stored);
        if let Wanted::Address(ip) = want {
            let (namespace, name) = key_of(svc);
            validate_cluster_ip(&namespace, &name, ip, cidr)?;
            claim(&mut owners, ip, key_of(svc))?;
        }
        wanted.push(want);
    }
    let mut out = Vec::with_capacity(requested.len());
    for (svc, want) in requested.iter().zip(wanted) {
        out.push(match want {
            Wanted::Nothing => None,
            Wanted::Address(ip) => Some(ip),
            Wanted::Allocation => {
                let (namespace, name) = key_of(svc);
                let taken = owners.keys().copied().collect();
                let ip = allocate_cluster_ip(&namespace, &name, cidr, &taken)?;
                owners.insert(ip, key_of(svc));
                Some(ip)
            }
        });
    }
    Ok(out)
}

fn wanted_address(svc: &Service, stored: &Store) -> Wanted {
    match (svc.spec.service_type, svc.spec.cluster_ip) {
        (ServiceType::ExternalName, _) | (_, Some(ClusterIp::Headless)) => Wanted::Nothing,
        (_, Some(ClusterIp::V4(ip))) => Wanted::Address(ip),
        (_, None) => {
            let previous = stored
                .service(svc.metadata.namespace(), &svc.metadata.name)
                .and_then(|s| s.spec.cluster_ipv4());
            previous.map_or(Wanted::Allocation, Wanted::Address)
        }
    }
}

fn claim(
    owners: &mut BTreeMap<Ipv4Addr, ServiceKey>,
    ip: Ipv4Addr,
    claimant: ServiceKey,
) -> anyhow::Result<()> {
    match owners.get(&ip) {
        Some(owner) if *owner != claimant => bail!(
            "Service {}/{}: clusterIP {ip} is already allocated to Service {}/{}",
            claimant.0,
            claimant.1,
            owner.0,
            owner.1
        ),
        _ => {
            owners.insert(ip, claimant);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use weft_model::k8s::{Object, parse_manifest};

    use super::*;

    fn cidr() -> Ipv4Cidr {
        "10.43.0.0/16".parse().expect("cidr")
    }

    fn service(ns: &str, name: &str, spec: &str) -> Service {
        let text = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
        );
        match parse_manifest("s.yaml", &text).expect("service").pop() {
            Some(Object::Service(s)) => s,
            other => panic!("{other:?}"),
        }
    }

    fn stored(services: &[Service]) -> Store {
        let mut store = Store::default();
        for s in services {
            store.insert(Object::Service(s.clone()));
        }
        store
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_service_without_an_address_gets_a_free_one_of_the_cidr() {
        let db = service("shop", "db", "{clusterIP: 10.43.0.20}");
        let web = service("shop", "web", "{ports: [{port: 80}]}");
        let empty = service("shop", "empty", "{clusterIP: \"\"}");
        let got = settle_cluster_ips(&[&web, &empty], &stored(&[db]), cidr()).expect("settled");
        let (web_ip, empty_ip) = (got[0].expect("web"), got[1].expect("empty"));
        assert!(cidr().contains(web_ip) && cidr().contains(empty_ip));
        assert_ne!(web_ip, ip("10.43.0.20"));
        assert_ne!(web_ip, empty_ip);
    }

    #[test]
    fn a_reapplied_service_keeps_its_address() {
        let before = service("shop", "web", "{clusterIP: 10.43.9.9}");
        let again = service("shop", "web", "{ports: [{port: 8080}]}");
        let got = settle_cluster_ips(&[&again], &stored(&[before]), cidr()).expect("settled");
        assert_eq!(got, [Some(ip("10.43.9.9"))]);
    }

    #[test]
    fn headless_and_external_name_services_get_no_address() {
        let headless = service("a", "h", "{clusterIP: None}");
        let alias = service("a", "x", "{type: ExternalName}");
        let got = settle_cluster_ips(&[&headless, &alias], &Store::default(), cidr());
        assert_eq!(got.expect("settled"), [None, None]);
    }

    #[test]
    fn an_address_of_another_service_or_outside_the_cidr_is_refused() {
        let db = service("shop", "db", "{clusterIP: 10.43.0.20}");
        let thief = service("shop", "web", "{clusterIP: 10.43.0.20}");
        let err =
            settle_cluster_ips(&[&thief], &stored(std::slice::from_ref(&db)), cidr()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Service shop/web: clusterIP 10.43.0.20 is already allocated to Service shop/db"
        );
        let twin = service("other", "twin", "{clusterIP: 10.43.0.21}");
        let twin2 = service("other", "twin2", "{clusterIP: 10.43.0.21}");
        assert!(settle_cluster_ips(&[&twin, &twin2], &Store::default(), cidr()).is_err());
        let foreign = service("shop", "web", "{clusterIP: 10.96.0.1}");
        let err = settle_cluster_ips(&[&foreign], &Store::default(), cidr()).unwrap_err();
        assert!(
            err.to_string().contains("outside the service CIDR"),
            "{err}"
        );
        // The Service itself may keep (re-apply) the address it holds.
        let same = service(
            "shop",
            "db",
            "{clusterIP: 10.43.0.20, ports: [{port: 5432}]}",
        );
        assert_eq!(
            settle_cluster_ips(&[&same], &stored(&[db]), cidr()).expect("settled"),
            [Some(ip("10.43.0.20"))]
        );
    }

    #[test]
    fn allocation_avoids_addresses_claimed_explicitly_in_the_same_request() {
        let auto = service("a", "auto", "{}");
        let expected = settle_cluster_ips(&[&auto], &Store::default(), cidr()).expect("alone")[0]
            .expect("address");
        let explicit = service("z", "explicit", &format!("{{clusterIP: {expected}}}"));
        let got =
            settle_cluster_ips(&[&auto, &explicit], &Store::default(), cidr()).expect("settled");
        assert_eq!(got[1], Some(expected));
        assert_ne!(got[0], Some(expected));
    }
}
