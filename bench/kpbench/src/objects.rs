//! The Services and EndpointSlices every stack is given: `aaa-first` and `zzz-last` (the
//! measured ones, first and last in kube-proxy's sorted order) and `fill-<i>` in between, each
//! with two ready endpoints. Pure text, the same for Weft (`weft lab apply`) and for the
//! kube-proxy baseline (`Store::from_manifests`).

use std::net::Ipv4Addr;

pub const FIRST: &str = "aaa-first";
pub const LAST: &str = "zzz-last";
/// `weft-netbench server` (rr, crr) behind the services; the direct path uses its own port so
/// that it never meets a 4-tuple the service path just closed.
pub const NETBENCH_PORT: u16 = 5400;
pub const DIRECT_NETBENCH_PORT: u16 = 5401;
pub const IPERF_PORT: u16 = 5399;
pub const DIRECT_IPERF_PORT: u16 = 5398;
/// The bench's own name servers: each answers a connection with its pod's name.
pub const NAME_PORT: u16 = 5402;
/// Filler ports: targets that never carry traffic.
const FILLER_PORT: u16 = 80;
const FILLER_TARGET: u16 = 8080;

const FIRST_IP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 100);
const LAST_IP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 101);
/// Fillers' ClusterIPs: 10.43.1.0 on, up to the end of the lab's 10.43.0.0/16.
const FILLER_IPS: u32 = u32::from_be_bytes([10, 43, 1, 0]);
/// Fillers' endpoints: two consecutive addresses each from 10.45.0.0, outside every pod CIDR.
const FILLER_BACKENDS: u32 = u32::from_be_bytes([10, 45, 0, 0]);
/// The most services the lab's /16 service CIDR holds with this layout.
pub const SERVICES_MAX: u32 = 65_536 - 256 - 1 + 2;

pub fn first_ip() -> Ipv4Addr {
    FIRST_IP
}

pub fn last_ip() -> Ipv4Addr {
    LAST_IP
}

/// A measured service: the netbench, iperf3 and name ports, endpoints `backends`.
pub fn measured(name: &str, backends: &[Ipv4Addr]) -> String {
    let ip = if name == FIRST { FIRST_IP } else { LAST_IP };
    let ports = [
        ("rr", NETBENCH_PORT),
        ("tput", IPERF_PORT),
        ("name", NAME_PORT),
    ];
    let service_ports: String = ports
        .iter()
        .map(|(n, p)| format!("  - {{name: {n}, port: {p}, targetPort: {p}, protocol: TCP}}\n"))
        .collect();
    let slice_ports: String = ports
        .iter()
        .filter(|(_, p)| *p != IPERF_PORT)
        .map(|(n, p)| format!("- {{name: {n}, port: {p}, protocol: TCP}}\n"))
        .collect();
    let tput = format!("- {{name: tput, port: {IPERF_PORT}, protocol: TCP}}\n");
    // iperf3's control and data connections must meet the same server: its port has one
    // endpoint, in a slice of its own.
    let tput_backends = &backends[..backends.len().min(1)];
    service(name, ip, &service_ports)
        + "---\n"
        + &slice(&format!("{name}-1"), name, &slice_ports, backends)
        + "---\n"
        + &slice(&format!("{name}-2"), name, &tput, tput_backends)
}

fn service(name: &str, ip: Ipv4Addr, ports: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  clusterIP: {ip}\n  ports:\n{ports}"
    )
}

fn slice(slice_name: &str, service: &str, ports: &str, backends: &[Ipv4Addr]) -> String {
    let endpoints: String = backends
        .iter()
        .map(|ip| format!("- addresses: [{ip}]\n  conditions: {{ready: true}}\n"))
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {slice_name}\n  \
         namespace: default\n  labels: {{kubernetes.io/service-name: {service}}}\n\
         addressType: IPv4\nports:\n{ports}endpoints:\n{endpoints}"
    )
}

/// Filler `i`: one port, two endpoints that never carry traffic.
pub fn filler(i: u32) -> String {
    let name = format!("fill-{i:06}");
    let ip = Ipv4Addr::from(FILLER_IPS + i);
    let backends = [
        Ipv4Addr::from(FILLER_BACKENDS + 2 * i),
        Ipv4Addr::from(FILLER_BACKENDS + 2 * i + 1),
    ];
    let service_ports = format!(
        "  - {{name: http, port: {FILLER_PORT}, targetPort: {FILLER_TARGET}, protocol: TCP}}\n"
    );
    let slice_ports = format!("- {{name: http, port: {FILLER_TARGET}, protocol: TCP}}\n");
    let slice_name = format!("{name}-1");
    service(&name, ip, &service_ports)
        + "---\n"
        + &slice(&slice_name, &name, &slice_ports, &backends)
}

/// Fillers `from..to`, one YAML stream.
pub fn fillers(from: u32, to: u32) -> String {
    (from..to).map(filler).collect::<Vec<_>>().join("---\n")
}

/// The fillers among `services` services in all (the two measured ones are the rest).
pub fn filler_count(services: u32) -> anyhow::Result<u32> {
    anyhow::ensure!(
        (2..=SERVICES_MAX).contains(&services),
        "{services} services: between 2 and {SERVICES_MAX} fit the lab's 10.43.0.0/16"
    );
    Ok(services - 2)
}

/// Every object for `services` services, the measured ones with `first` and `last` endpoints.
pub fn all(services: u32, first: &[Ipv4Addr], last: &[Ipv4Addr]) -> anyhow::Result<String> {
    let fill = filler_count(services)?;
    let mut text = measured(FIRST, first) + "---\n" + &measured(LAST, last);
    if fill > 0 {
        text = text + "---\n" + &fillers(0, fill);
    }
    Ok(text)
}

/// Frontends (service ports) of `services` services: three for each measured one, one each
/// for the fillers — what the agent logs once it has programmed them.
pub fn frontends(services: u32) -> anyhow::Result<u32> {
    Ok(filler_count(services)? + 6)
}

#[cfg(test)]
mod tests {
    use weft_kpbench::kube_proxy::service_ports;
    use weft_model::Store;

    use super::*;

    #[test]
    fn objects_load_and_sort_first_and_last() {
        let a = Ipv4Addr::new(10, 42, 2, 10);
        let b = Ipv4Addr::new(10, 42, 2, 11);
        let text = all(5, &[a, b], &[a, b]).expect("fits");
        let store = Store::from_manifests([("all.yaml", text.as_str())]).expect("loads");
        let ports = service_ports(&store, "vps1");
        assert_eq!(ports.len() as u32, frontends(5).expect("fits"));
        assert_eq!(ports[0].service.name, FIRST);
        assert_eq!(ports[ports.len() - 1].service.name, LAST);
        let tput: Vec<_> = ports.iter().filter(|p| p.port == IPERF_PORT).collect();
        assert!(tput.iter().all(|p| p.endpoints.len() == 1), "{tput:?}");
        let others = ports.iter().filter(|p| p.port != IPERF_PORT);
        assert!(others.clone().all(|p| p.endpoints.len() == 2), "{ports:?}");
        assert_eq!(ports[3].cluster_ip, Ipv4Addr::new(10, 43, 1, 0));
    }

    #[test]
    fn sizes_outside_the_service_cidr_are_refused() {
        assert!(filler_count(1).is_err());
        assert!(filler_count(100_000).is_err());
        assert_eq!(filler_count(10_000).expect("fits"), 9_998);
        let last = Ipv4Addr::from(FILLER_IPS + filler_count(SERVICES_MAX).expect("fits") - 1);
        assert_eq!(last, Ipv4Addr::new(10, 43, 255, 254));
    }
}
