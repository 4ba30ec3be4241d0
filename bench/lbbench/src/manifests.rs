//! The Services and EndpointSlices of the bench: filler services `lbfill-<i>`, each with an
//! explicit ClusterIP, no selector, and one ready endpoint of its own (addresses that never
//! carry traffic), as `weft lab apply` takes them.

use std::net::Ipv4Addr;

/// First ClusterIP of the fillers (10.43.64.0 on: clear of the bench's own service and of
/// the lab's allocator's low addresses); fillers i = 0.. take consecutive addresses.
const FILLER_CLUSTER_IPS: u32 = u32::from_be_bytes([10, 43, 64, 0]);
/// Fillers' backends: consecutive addresses from 10.45.0.0, outside every pod CIDR.
const FILLER_BACKENDS: u32 = u32::from_be_bytes([10, 45, 0, 0]);
/// The fillers that fit between 10.43.64.0 and the end of 10.43.0.0/16.
pub const FILLERS_MAX: u32 = 48 * 1024;

pub fn filler_cluster_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(FILLER_CLUSTER_IPS + i)
}

pub fn filler_backend(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(FILLER_BACKENDS + i)
}

/// The Service and its EndpointSlice for filler `i`, one YAML stream.
pub fn filler(i: u32) -> String {
    format!("{}---\n{}", filler_service(i), filler_slice(i))
}

pub fn filler_service(i: u32) -> String {
    let ip = filler_cluster_ip(i);
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: lbfill-{i}, namespace: default}}
spec:
  clusterIP: {ip}
  ports:
  - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}
"
    )
}

pub fn filler_slice(i: u32) -> String {
    let (name, backend) = (format!("lbfill-{i}"), filler_backend(i));
    format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: default
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports:
- {{name: http, port: 8080, protocol: TCP}}
endpoints:
- addresses: [{backend}]
  conditions: {{ready: true}}
"
    )
}

/// Fillers `from..to` as one multi-document YAML stream.
pub fn fillers(from: u32, to: u32) -> anyhow::Result<String> {
    anyhow::ensure!(
        to <= FILLERS_MAX,
        "at most {FILLERS_MAX} fillers fit in 10.43.64.0-10.43.255.255"
    );
    Ok((from..to).map(filler).collect::<Vec<_>>().join("---\n"))
}
