//! `weft bpf lb list` and `weft bpf ct list`: the service load-balancer and conntrack maps of a
//! node, like `cilium bpf lb list` and `cilium bpf ct list global`.

use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::Serialize;
use weft_common::{
    CtEntry4, CtKey4, Lb4Backend, Lb4Key, Lb4Service,
    ct::{
        CT_FLAG_FORWARD_CLOSING, CT_FLAG_FROM_SOCKET, CT_FLAG_LOOPBACK, CT_FLAG_NORTH_SOUTH,
        CT_FLAG_REPLY_CLOSING, CT_FLAG_RESET, CT_FLAG_SEEN_NON_SYN, CT_KIND_DSR, CT_KIND_REPLY,
        CT_KIND_SERVICE,
    },
    lb::{
        LB_ALG_MAGLEV, LB_SCOPE_EXTERNAL, LB_SCOPE_INTERNAL, SVC_FLAG_AFFINITY, SVC_FLAG_DSR,
        SVC_FLAG_EXT_LOCAL, SVC_FLAG_EXTERNAL_IP, SVC_FLAG_LOADBALANCER, SVC_FLAG_LOCAL_ONLY,
        SVC_FLAG_NODEPORT, SVC_FLAG_TWO_SCOPES, is_north_south,
    },
    net::l4_proto_name,
};
use weft_datapath::LbMaps;

use crate::bpf::{Row, age_text};

pub const LB_HEADERS: &[&str] = &[
    "FRONTEND",
    "SCOPE",
    "SERVICE ID",
    "ALGORITHM",
    "FLAGS",
    "BACKENDS",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LbRow {
    pub node: String,
    pub frontend: String,
    /// `external` (traffic from outside, and the only entry of a one-scope frontend) or
    /// `internal` (traffic from pods and nodes to a two-scope frontend).
    pub scope: String,
    pub service_id: u16,
    pub algorithm: String,
    pub flags: Vec<String>,
    /// Active backends, slot order: `ip:port (id N)`.
    pub backends: Vec<String>,
}

impl Row for LbRow {
    fn cells(&self) -> Vec<String> {
        let backends = if self.backends.is_empty() {
            "(none: refused)".to_string()
        } else {
            self.backends.join(", ")
        };
        vec![
            self.frontend.clone(),
            self.scope.clone(),
            self.service_id.to_string(),
            self.algorithm.clone(),
            self.flags.join(","),
            backends,
        ]
    }
}

fn endpoint(addr: [u8; 4], port: u16) -> String {
    format!("{}:{port}", Ipv4Addr::from(addr))
}

/// One row per frontend, from its service entry, its slots and the backends they name.
pub fn lb_rows(
    node: &str,
    services: &[(Lb4Key, Lb4Service)],
    backends: &BTreeMap<u32, Lb4Backend>,
) -> Vec<LbRow> {
    let slot_key = |k: &Lb4Key| (k.address, k.port, k.proto, k.scope);
    let mut slots: BTreeMap<_, BTreeMap<u16, u32>> = BTreeMap::new();
    for (key, value) in services.iter().filter(|(k, _)| k.slot != 0) {
        slots
            .entry(slot_key(key))
            .or_default()
            .insert(key.slot, value.backend_id);
    }
    let mut rows: Vec<LbRow> = services
        .iter()
        .filter(|(k, _)| k.slot == 0)
        .map(|(key, svc)| {
            let named = slots.get(&slot_key(key)).cloned().unwrap_or_default();
            LbRow {
                node: node.to_string(),
                frontend: format!(
                    "{}/{}",
                    endpoint(key.address, key.port),
                    l4_proto_name(key.proto)
                ),
                scope: scope_name(key.scope),
                service_id: svc.rev_nat_index,
                algorithm: algorithm(svc),
                flags: service_flags(svc, key.scope),
                backends: named
                    .values()
                    .map(|id| match backends.get(id) {
                        Some(b) => format!("{} (id {id})", endpoint(b.address, b.port)),
                        None => format!("missing (id {id})"),
                    })
                    .collect(),
            }
        })
        .collect();
    rows.sort_by(|a, b| (&a.frontend, &a.scope).cmp(&(&b.frontend, &b.scope)));
    rows
}

fn scope_name(scope: u8) -> String {
    match scope {
        LB_SCOPE_EXTERNAL => "external".to_string(),
        LB_SCOPE_INTERNAL => "internal".to_string(),
        other => format!("scope {other}"),
    }
}

fn algorithm(svc: &Lb4Service) -> String {
    if svc.algorithm == LB_ALG_MAGLEV {
        format!("maglev (M={})", svc.maglev_size)
    } else {
        "random".to_string()
    }
}

/// The entry's flags by name: its kind (a clusterIP has none), how north-south flows are
/// forwarded (`dsr` or `snat`), then the policies.
fn service_flags(svc: &Lb4Service, scope: u8) -> Vec<String> {
    let set = |flag: u16| svc.flags & flag != 0;
    let mut flags: Vec<String> = [
        (SVC_FLAG_NODEPORT, "nodeport"),
        (SVC_FLAG_EXTERNAL_IP, "external-ip"),
        (SVC_FLAG_LOADBALANCER, "loadbalancer"),
    ]
    .into_iter()
    .filter(|(flag, _)| set(*flag))
    .map(|(_, name)| name.to_string())
    .collect();
    let two_scopes = set(SVC_FLAG_TWO_SCOPES);
    // The internal entry of a two-scope frontend is never taken by traffic from outside.
    if is_north_south(svc.flags) && scope != LB_SCOPE_INTERNAL {
        flags.push(if set(SVC_FLAG_DSR) { "dsr" } else { "snat" }.to_string());
    }
    if set(SVC_FLAG_EXT_LOCAL) {
        flags.push("ext-local".to_string());
    }
    if two_scopes {
        flags.push("two-scopes".to_string());
    }
    if set(SVC_FLAG_AFFINITY) {
        flags.push(format!("affinity={}s", svc.affinity_timeout_s));
    }
    if set(SVC_FLAG_LOCAL_ONLY) {
        flags.push("local-only".to_string());
    }
    flags
}

pub fn lb_rows_of(node: &str, maps: &LbMaps) -> anyhow::Result<Vec<LbRow>> {
    let backends = maps.backends()?.into_iter().collect();
    Ok(lb_rows(node, &maps.services()?, &backends))
}

pub const CT_HEADERS: &[&str] = &[
    "KIND",
    "PROTO",
    "TUPLE",
    "BACKEND",
    "SERVICE ID",
    "STATE",
    "EXPIRES",
    "PACKETS",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CtRow {
    pub node: String,
    /// `service`, `reply` or `dsr` (see [`ct_kind_name`]).
    pub kind: &'static str,
    pub proto: &'static str,
    pub source: String,
    pub destination: String,
    pub backend_id: u32,
    pub service_id: u16,
    pub state: Vec<&'static str>,
    /// Seconds until the entry expires; 0 once expired (garbage until collected).
    pub expires_in_secs: u32,
    pub packets_forward: u32,
    pub packets_reply: u32,
}

impl Row for CtRow {
    fn cells(&self) -> Vec<String> {
        vec![
            self.kind.to_string(),
            self.proto.to_string(),
            format!("{} -> {}", self.source, self.destination),
            self.backend_id.to_string(),
            self.service_id.to_string(),
            self.state.join(","),
            if self.expires_in_secs == 0 {
                "expired".to_string()
            } else {
                age_text(u64::from(self.expires_in_secs))
            },
            format!("{}/{}", self.packets_forward, self.packets_reply),
        ]
    }
}

pub fn ct_row(node: &str, key: &CtKey4, entry: &CtEntry4, now_s: u32) -> CtRow {
    CtRow {
        node: node.to_string(),
        kind: ct_kind_name(key.kind),
        proto: l4_proto_name(key.proto),
        source: endpoint(key.saddr, key.sport),
        destination: endpoint(key.daddr, key.dport),
        backend_id: entry.backend_id,
        service_id: entry.rev_nat_index,
        state: ct_state(entry.flags),
        expires_in_secs: entry.expires_s.saturating_sub(now_s),
        packets_forward: entry.packets_forward,
        packets_reply: entry.packets_reply,
    }
}

/// `service` (client -> frontend), `reply` (backend -> client), `dsr` (on a DSR backend's
/// node: backend -> client, with the frontend its replies leave from).
fn ct_kind_name(kind: u8) -> &'static str {
    match kind {
        CT_KIND_SERVICE => "service",
        CT_KIND_REPLY => "reply",
        CT_KIND_DSR => "dsr",
        _ => "unknown",
    }
}

fn ct_state(flags: u16) -> Vec<&'static str> {
    let named = [
        (CT_FLAG_NORTH_SOUTH, "north-south"),
        (CT_FLAG_LOOPBACK, "hairpin"),
        (CT_FLAG_SEEN_NON_SYN, "established"),
        (CT_FLAG_FORWARD_CLOSING, "client-fin"),
        (CT_FLAG_REPLY_CLOSING, "backend-fin"),
        (CT_FLAG_RESET, "reset"),
        (CT_FLAG_FROM_SOCKET, "socket-lb"),
    ];
    named
        .into_iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| name)
        .collect()
}

pub fn ct_rows_of(node: &str, maps: &LbMaps, now_s: u32) -> anyhow::Result<Vec<CtRow>> {
    let mut rows: Vec<CtRow> = maps
        .ct()?
        .iter()
        .map(|(k, e)| ct_row(node, k, e, now_s))
        .collect();
    rows.sort_by(|a, b| {
        (a.kind, &a.source, &a.destination).cmp(&(b.kind, &b.source, &b.destination))
    });
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use weft_common::{
        lb::LB_SCOPE_EXTERNAL,
        net::{IPPROTO_TCP, IPPROTO_UDP},
    };

    use super::*;

    fn key(port: u16, proto: u8, slot: u16) -> Lb4Key {
        Lb4Key {
            address: [10, 43, 0, 10],
            port,
            proto,
            scope: LB_SCOPE_EXTERNAL,
            slot,
            _pad: [0; 2],
        }
    }

    #[test]
    fn lb_rows_join_frontends_slots_and_backends() {
        let services = vec![
            (
                key(80, IPPROTO_TCP, 0),
                Lb4Service {
                    count: 2,
                    rev_nat_index: 3,
                    flags: SVC_FLAG_AFFINITY,
                    affinity_timeout_s: 10800,
                    algorithm: LB_ALG_MAGLEV,
                    maglev_size: 16381,
                    ..Lb4Service::default()
                },
            ),
            (
                key(80, IPPROTO_TCP, 2),
                Lb4Service {
                    backend_id: 9,
                    ..Default::default()
                },
            ),
            (
                key(80, IPPROTO_TCP, 1),
                Lb4Service {
                    backend_id: 4,
                    ..Default::default()
                },
            ),
            (
                key(53, IPPROTO_UDP, 0),
                Lb4Service {
                    rev_nat_index: 5,
                    ..Default::default()
                },
            ),
        ];
        let backends = BTreeMap::from([(
            4,
            Lb4Backend {
                address: [10, 42, 0, 10],
                port: 8080,
                proto: IPPROTO_TCP,
                flags: 0,
            },
        )]);
        let rows = lb_rows("vps1", &services, &backends);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].frontend, "10.43.0.10:53/UDP");
        assert_eq!(rows[0].cells()[5], "(none: refused)");
        assert_eq!(rows[0].scope, "external");
        assert_eq!(rows[1].frontend, "10.43.0.10:80/TCP");
        assert_eq!(rows[1].algorithm, "maglev (M=16381)");
        assert_eq!(rows[1].flags, ["affinity=10800s"]);
        assert_eq!(
            rows[1].backends,
            ["10.42.0.10:8080 (id 4)", "missing (id 9)"]
        );
    }

    fn north_south_key(port: u16, proto: u8, scope: u8) -> Lb4Key {
        Lb4Key {
            address: [198, 51, 100, 1],
            scope,
            ..key(port, proto, 0)
        }
    }

    fn service(id: u16, count: u16, flags: u16) -> Lb4Service {
        Lb4Service {
            count,
            rev_nat_index: id,
            flags,
            ..Lb4Service::default()
        }
    }

    #[test]
    fn north_south_rows_name_their_kind_forwarding_policy_and_scope() {
        use weft_common::lb::SVC_FLAG_LOCAL_ONLY as LOCAL;
        let services = vec![
            (
                north_south_key(30080, IPPROTO_TCP, LB_SCOPE_EXTERNAL),
                service(
                    7,
                    0,
                    SVC_FLAG_NODEPORT | SVC_FLAG_DSR | SVC_FLAG_EXT_LOCAL | SVC_FLAG_TWO_SCOPES,
                ),
            ),
            (
                north_south_key(30080, IPPROTO_TCP, LB_SCOPE_INTERNAL),
                service(8, 0, SVC_FLAG_NODEPORT | LOCAL),
            ),
            (
                north_south_key(53, IPPROTO_UDP, LB_SCOPE_EXTERNAL),
                service(9, 0, SVC_FLAG_EXTERNAL_IP),
            ),
            (
                Lb4Key {
                    address: [192, 0, 2, 10],
                    ..key(443, IPPROTO_TCP, 0)
                },
                service(
                    10,
                    0,
                    SVC_FLAG_LOADBALANCER | SVC_FLAG_DSR | SVC_FLAG_AFFINITY,
                ),
            ),
            (key(80, IPPROTO_TCP, 0), service(11, 0, 0)),
        ];
        let rows = lb_rows("vps1", &services, &BTreeMap::new());
        let shown: Vec<(String, String, String)> = rows
            .iter()
            .map(|r| (r.frontend.clone(), r.scope.clone(), r.flags.join(",")))
            .collect();
        let row = |f: &str, s: &str, flags: &str| (f.to_string(), s.to_string(), flags.to_string());
        assert_eq!(
            shown,
            [
                row("10.43.0.10:80/TCP", "external", ""),
                row(
                    "192.0.2.10:443/TCP",
                    "external",
                    "loadbalancer,dsr,affinity=0s"
                ),
                row(
                    "198.51.100.1:30080/TCP",
                    "external",
                    "nodeport,dsr,ext-local,two-scopes"
                ),
                row("198.51.100.1:30080/TCP", "internal", "nodeport,local-only"),
                row("198.51.100.1:53/UDP", "external", "external-ip,snat"),
            ]
        );
        assert_eq!(
            rows[3].cells()[..3],
            ["198.51.100.1:30080/TCP", "internal", "8"]
        );
        assert_eq!(rows[2].cells()[5], "(none: refused)");
        assert_eq!(LB_HEADERS.len(), rows[0].cells().len());
    }

    #[test]
    fn ct_rows_name_the_state_and_count_down_to_expiry() {
        let key = CtKey4 {
            saddr: [10, 42, 0, 11],
            daddr: [10, 42, 0, 10],
            sport: 8080,
            dport: 40000,
            proto: IPPROTO_TCP,
            kind: CT_KIND_REPLY,
            _pad: [0; 2],
        };
        let entry = CtEntry4 {
            expires_s: 1100,
            backend_id: 4,
            rev_nat_index: 3,
            flags: CT_FLAG_SEEN_NON_SYN | CT_FLAG_FORWARD_CLOSING,
            packets_forward: 5,
            packets_reply: 7,
            ..CtEntry4::default()
        };
        let row = ct_row("vps1", &key, &entry, 1000);
        assert_eq!(row.kind, "reply");
        assert_eq!(row.state, ["established", "client-fin"]);
        let dsr = CtKey4 {
            kind: CT_KIND_DSR,
            ..key
        };
        let marked = CtEntry4 {
            flags: CT_FLAG_NORTH_SOUTH | CT_FLAG_LOOPBACK,
            ..entry
        };
        let dsr_row = ct_row("vps1", &dsr, &marked, 1000);
        assert_eq!(dsr_row.kind, "dsr");
        assert_eq!(dsr_row.state, ["north-south", "hairpin"]);
        assert_eq!(row.expires_in_secs, 100);
        assert_eq!(row.cells()[6], "1m40s");
        assert_eq!(ct_row("vps1", &key, &entry, 2000).cells()[6], "expired");
    }
}
