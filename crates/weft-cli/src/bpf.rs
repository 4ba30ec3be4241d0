//! `weft bpf endpoint|ipcache|nat|lb|ct list` (and `maglev list`, in [`bpf_maglev`]): a node's pinned datapath maps as tables, like
//! `cilium bpf ... list`.

use std::{net::Ipv4Addr, process::ExitCode};

use anyhow::Context as _;
use clap::Subcommand;
use serde::Serialize;
use weft_common::{
    EndpointInfo, EndpointKey, IpcacheEntry, Mac, NatEntry4, NatKey4,
    ct::{CT_FLAG_FORWARD_CLOSING, CT_FLAG_REPLY_CLOSING, CT_FLAG_RESET, CT_FLAG_SEEN_NON_SYN},
    ipcache::identity,
    nat::NAT_DIR_INGRESS,
    net::{IPPROTO_TCP, l4_proto_name},
};
use weft_datapath::{DatapathMaps, LbMaps, events::interface_name, monotonic_ns};
use weft_model::Ipv4Cidr;

use crate::{
    address::{self, Node},
    bpf_lb, bpf_maglev,
    nodes::{NodeArgs, Output, table},
};

#[derive(Subcommand)]
pub enum BpfCommand {
    /// The node's local endpoints (`weft_endpoints`).
    Endpoint {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// What the node knows of every address: identity and tunnel endpoint (`weft_ipcache4`).
    Ipcache {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// Masquerade entries (`weft_snat4`).
    Nat {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// Service frontends and their backends (`weft_lb4_services`, `weft_lb4_backends`).
    Lb {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// Load-balanced flows (`weft_ct4`).
    Ct {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// Source prefixes dropped before anything else (`weft_prefilter4`, `prefilter.cidrs`).
    Prefilter {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// A Service's Maglev tables (`weft_lb4_maglev`).
    Maglev {
        #[command(subcommand)]
        command: bpf_maglev::MaglevCommand,
    },
}

#[derive(Subcommand)]
pub enum ListCommand {
    /// List the map's entries.
    List(NodeArgs),
}

pub fn run(command: BpfCommand) -> anyhow::Result<ExitCode> {
    let (map, ListCommand::List(args)) = match command {
        BpfCommand::Endpoint { command } => (Map::Endpoint, command),
        BpfCommand::Ipcache { command } => (Map::Ipcache, command),
        BpfCommand::Nat { command } => (Map::Nat, command),
        BpfCommand::Lb { command } => (Map::Lb, command),
        BpfCommand::Ct { command } => (Map::Ct, command),
        BpfCommand::Prefilter { command } => (Map::Prefilter, command),
        BpfCommand::Maglev { command } => return bpf_maglev::run(command),
    };
    let nodes = address::resolve(&args.address)?;
    let mut json = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let open_error = || format!("opening the datapath maps of node {}", node.name);
        let pins = node.pins()?;
        let maps = DatapathMaps::from_pins(pins).with_context(open_error)?;
        let (headers, rows, values) = match map {
            Map::Endpoint => listing(ENDPOINT_HEADERS, endpoint_rows(node, &maps)?),
            Map::Ipcache => listing(IPCACHE_HEADERS, ipcache_rows(&node.name, &maps)?),
            Map::Nat => listing(NAT_HEADERS, nat_rows(&node.name, &maps)?),
            Map::Lb => {
                let lb = LbMaps::from_pins(pins).with_context(open_error)?;
                listing(bpf_lb::LB_HEADERS, bpf_lb::lb_rows_of(&node.name, &lb)?)
            }
            Map::Prefilter => listing(PREFILTER_HEADERS, prefilter_rows(&node.name, &maps)?),
            Map::Ct => {
                let lb = LbMaps::from_pins(pins).with_context(open_error)?;
                let now_s = monotonic_ns().map_or(0, |ns| (ns / 1_000_000_000) as u32);
                listing(
                    bpf_lb::CT_HEADERS,
                    bpf_lb::ct_rows_of(&node.name, &lb, now_s)?,
                )
            }
        };
        match args.output {
            Output::Json => json.extend(values?),
            Output::Text => {
                if nodes.len() > 1 {
                    if i > 0 {
                        println!();
                    }
                    println!("Node {}:", node.name);
                }
                print!("{}", table(headers, &rows));
                if rows.is_empty() {
                    println!("(no entries)");
                }
            }
        }
    }
    if args.output == Output::Json {
        println!("{}", json_array(&json));
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Clone, Copy)]
enum Map {
    Endpoint,
    Ipcache,
    Nat,
    Lb,
    Ct,
    Prefilter,
}

/// A row type's table cells.
pub(crate) trait Row: Serialize {
    fn cells(&self) -> Vec<String>;
}

/// Headers, table cells, and each row as a JSON object (fields in declaration order).
type Listing<'h> = (&'h [&'h str], Vec<Vec<String>>, anyhow::Result<Vec<String>>);

fn listing<'h, R: Row>(headers: &'h [&'h str], rows: Vec<R>) -> Listing<'h> {
    let cells = rows.iter().map(Row::cells).collect();
    let values = rows
        .iter()
        .map(|r| serde_json::to_string_pretty(r).context("serializing a row"))
        .collect();
    (headers, cells, values)
}

/// A JSON array of already serialized (pretty) objects, indented like `to_string_pretty`.
pub fn json_array(objects: &[String]) -> String {
    if objects.is_empty() {
        return "[]".to_string();
    }
    let items: Vec<String> = objects
        .iter()
        .map(|o| {
            o.lines()
                .map(|l| format!("  {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    format!("[\n{}\n]", items.join(",\n"))
}

// ---- prefilter -------------------------------------------------------------------------------

const PREFILTER_HEADERS: &[&str] = &["PREFIX", "ACTION"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrefilterRow {
    pub node: String,
    pub prefix: String,
}

impl Row for PrefilterRow {
    fn cells(&self) -> Vec<String> {
        vec![self.prefix.clone(), "drop".to_string()]
    }
}

fn prefilter_rows(node: &str, maps: &DatapathMaps) -> anyhow::Result<Vec<PrefilterRow>> {
    Ok(maps
        .prefilter()?
        .into_iter()
        .map(|cidr| PrefilterRow {
            node: node.to_string(),
            prefix: cidr.to_string(),
        })
        .collect())
}

// ---- endpoints -------------------------------------------------------------------------------

const ENDPOINT_HEADERS: &[&str] = &[
    "IP ADDRESS",
    "IFINDEX",
    "IFNAME",
    "IDENTITY",
    "MAC",
    "HOST MAC",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointRow {
    pub node: String,
    pub ip: Ipv4Addr,
    pub ifindex: u32,
    /// The host-side interface, when the node's namespace has it.
    pub ifname: Option<String>,
    pub identity: u32,
    pub mac: String,
    pub host_mac: String,
}

pub fn endpoint_row(
    node: &str,
    key: &EndpointKey,
    info: &EndpointInfo,
    ifname: Option<String>,
) -> EndpointRow {
    EndpointRow {
        node: node.to_string(),
        ip: Ipv4Addr::from(key.addr),
        ifindex: info.ifindex,
        ifname,
        identity: info.identity,
        mac: Mac(info.mac).to_string(),
        host_mac: Mac(info.host_mac).to_string(),
    }
}

impl Row for EndpointRow {
    fn cells(&self) -> Vec<String> {
        vec![
            self.ip.to_string(),
            self.ifindex.to_string(),
            self.ifname.clone().unwrap_or_else(|| "-".into()),
            identity_text(self.identity),
            self.mac.clone(),
            self.host_mac.clone(),
        ]
    }
}

fn endpoint_rows(node: &Node, maps: &DatapathMaps) -> anyhow::Result<Vec<EndpointRow>> {
    let endpoints = maps.endpoints()?;
    let ifindexes: Vec<u32> = endpoints.values().map(|i| i.ifindex).collect();
    // Interface names are per namespace: resolve them in the node's. A lab node whose namespace
    // is gone still lists its map, without names.
    let names = node
        .run(|| {
            ifindexes
                .iter()
                .map(|&i| interface_name(i))
                .collect::<Vec<_>>()
        })
        .unwrap_or_else(|_| vec![None; ifindexes.len()]);
    Ok(endpoints
        .iter()
        .zip(names)
        .map(|((key, info), name)| endpoint_row(&node.name, key, info, name))
        .collect())
}

// ---- ipcache ---------------------------------------------------------------------------------

const IPCACHE_HEADERS: &[&str] = &["IP PREFIX/ADDRESS", "IDENTITY", "TUNNEL ENDPOINT"];

/// Cilium's name of a reserved identity.
pub fn identity_name(id: u32) -> Option<&'static str> {
    match id {
        identity::UNKNOWN => Some("unknown"),
        identity::HOST => Some("host"),
        identity::WORLD => Some("world"),
        identity::UNMANAGED => Some("unmanaged"),
        4 => Some("health"),
        5 => Some("init"),
        identity::REMOTE_NODE => Some("remote-node"),
        _ => None,
    }
}

/// `1 (host)`, `256`.
pub fn identity_text(id: u32) -> String {
    match identity_name(id) {
        Some(name) => format!("{id} ({name})"),
        None => id.to_string(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IpcacheRow {
    pub node: String,
    pub cidr: String,
    pub identity: u32,
    /// The reserved identity's name, for reserved identities.
    pub identity_name: Option<&'static str>,
    /// The underlay address of the owning node, for addresses behind a tunnel.
    pub tunnel_endpoint: Option<Ipv4Addr>,
}

pub fn ipcache_row(node: &str, cidr: &Ipv4Cidr, entry: &IpcacheEntry) -> IpcacheRow {
    IpcacheRow {
        node: node.to_string(),
        cidr: cidr.to_string(),
        identity: entry.identity,
        identity_name: identity_name(entry.identity),
        tunnel_endpoint: entry
            .has_tunnel()
            .then(|| Ipv4Addr::from(entry.tunnel_endpoint)),
    }
}

impl Row for IpcacheRow {
    fn cells(&self) -> Vec<String> {
        vec![
            self.cidr.clone(),
            identity_text(self.identity),
            self.tunnel_endpoint
                .map_or_else(|| "-".to_string(), |a| a.to_string()),
        ]
    }
}

fn ipcache_rows(node: &str, maps: &DatapathMaps) -> anyhow::Result<Vec<IpcacheRow>> {
    Ok(maps
        .ipcache()?
        .iter()
        .map(|(cidr, entry)| ipcache_row(node, cidr, entry))
        .collect())
}

// ---- nat -------------------------------------------------------------------------------------

const NAT_HEADERS: &[&str] = &[
    "PROTO",
    "DIR",
    "ORIGINAL",
    "XLATE",
    "TRANSLATED",
    "STATE",
    "EXPIRES",
    "AGE",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NatRow {
    pub node: String,
    pub proto: &'static str,
    /// `egress` (keyed by the pod's tuple) or `ingress` (keyed by the reply's).
    pub direction: &'static str,
    pub source: String,
    pub destination: String,
    /// What is rewritten: the source (egress) or the destination (ingress).
    pub translates: &'static str,
    pub translated: String,
    /// The flow's TCP state (see [`nat_state`]); empty for other protocols.
    pub state: Vec<&'static str>,
    /// Seconds until the translation expires and its port is free; 0 once expired (garbage
    /// until a new flow takes the port or the collector deletes it). `None` when the clock is
    /// not readable.
    pub expires_in_secs: Option<u32>,
    pub last_seen_ns: u64,
    /// Seconds since the last packet of the flow, when the clock allows.
    pub age_secs: Option<u64>,
}

/// One entry, its expiry and age taken against `now_ns` (CLOCK_MONOTONIC, as
/// bpf_ktime_get_ns).
pub fn nat_row(node: &str, key: &NatKey4, entry: &NatEntry4, now_ns: Option<u64>) -> NatRow {
    let ingress = key.direction == NAT_DIR_INGRESS;
    let now_s = now_ns.map(|ns| u32::try_from(ns / 1_000_000_000).unwrap_or(u32::MAX));
    NatRow {
        node: node.to_string(),
        proto: l4_proto_name(key.proto),
        direction: if ingress { "ingress" } else { "egress" },
        source: format!("{}:{}", Ipv4Addr::from(key.saddr), key.sport),
        destination: format!("{}:{}", Ipv4Addr::from(key.daddr), key.dport),
        translates: if ingress { "dst" } else { "src" },
        translated: format!("{}:{}", Ipv4Addr::from(entry.addr), entry.port),
        state: if key.proto == IPPROTO_TCP {
            nat_state(entry.flags)
        } else {
            Vec::new()
        },
        expires_in_secs: now_s.map(|now| entry.expires_s.saturating_sub(now)),
        last_seen_ns: entry.last_seen_ns,
        age_secs: now_ns.map(|now| now.saturating_sub(entry.last_seen_ns) / 1_000_000_000),
    }
}

/// A masqueraded TCP flow's state by name: `syn-sent` until a packet other than a bare SYN
/// passed, then `established`; `fin-out` / `fin-in` once the side that opened it (the pod, or
/// the client of a north-south flow) / the other side sent a FIN; `reset`.
pub fn nat_state(flags: u16) -> Vec<&'static str> {
    let opened = if flags & CT_FLAG_SEEN_NON_SYN != 0 {
        "established"
    } else {
        "syn-sent"
    };
    let closing = [
        (CT_FLAG_FORWARD_CLOSING, "fin-out"),
        (CT_FLAG_REPLY_CLOSING, "fin-in"),
        (CT_FLAG_RESET, "reset"),
    ];
    std::iter::once(opened)
        .chain(
            closing
                .into_iter()
                .filter(|(bit, _)| flags & bit != 0)
                .map(|(_, name)| name),
        )
        .collect()
}

/// `42s`, `3m12s`, `2h05m`.
pub fn age_text(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

impl Row for NatRow {
    fn cells(&self) -> Vec<String> {
        vec![
            self.proto.to_string(),
            self.direction.to_string(),
            format!("{} -> {}", self.source, self.destination),
            self.translates.to_string(),
            self.translated.clone(),
            if self.state.is_empty() {
                "-".to_string()
            } else {
                self.state.join(",")
            },
            match self.expires_in_secs {
                None => "-".to_string(),
                Some(0) => "expired".to_string(),
                Some(secs) => age_text(u64::from(secs)),
            },
            self.age_secs.map_or_else(|| "-".to_string(), age_text),
        ]
    }
}

fn nat_rows(node: &str, maps: &DatapathMaps) -> anyhow::Result<Vec<NatRow>> {
    let now = monotonic_ns();
    let mut rows: Vec<NatRow> = maps
        .snat()?
        .iter()
        .map(|(key, entry)| nat_row(node, key, entry, now))
        .collect();
    rows.sort_by(|a, b| {
        (a.direction, &a.source, &a.destination).cmp(&(b.direction, &b.source, &b.destination))
    });
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use weft_common::{
        nat::NAT_DIR_EGRESS,
        net::{IPPROTO_TCP, IPPROTO_UDP},
    };

    use super::*;

    #[test]
    fn endpoints_show_addresses_macs_and_the_host_interface() {
        let key = EndpointKey {
            addr: [10, 42, 1, 10],
        };
        let info = EndpointInfo {
            ifindex: 7,
            identity: 4711,
            mac: [0x02, 0xab, 1, 2, 3, 4],
            host_mac: [0x02, 0xcd, 0, 0, 0, 0xff],
            _pad: 0,
        };
        let row = endpoint_row("vps1", &key, &info, Some("lxc1234".into()));
        assert_eq!(
            row.cells(),
            [
                "10.42.1.10",
                "7",
                "lxc1234",
                "4711",
                "02:ab:01:02:03:04",
                "02:cd:00:00:00:ff"
            ]
        );
        assert_eq!(endpoint_row("vps1", &key, &info, None).cells()[2], "-");
        let json = serde_json::to_value(&row).expect("json");
        assert_eq!(json["ip"], "10.42.1.10");
        assert_eq!(json["identity"], 4711);
        assert_eq!(json["node"], "vps1");
    }

    #[test]
    fn reserved_identities_are_named() {
        assert_eq!(identity_text(identity::HOST), "1 (host)");
        assert_eq!(identity_text(identity::WORLD), "2 (world)");
        assert_eq!(identity_text(identity::UNMANAGED), "3 (unmanaged)");
        assert_eq!(identity_text(identity::REMOTE_NODE), "6 (remote-node)");
        assert_eq!(identity_text(identity::FIRST_POD), "256");
    }

    #[test]
    fn ipcache_rows_show_the_tunnel_endpoint_or_a_dash() {
        let remote = ipcache_row(
            "vps1",
            &Ipv4Cidr::new(Ipv4Addr::new(10, 42, 2, 10), 32).expect("cidr"),
            &IpcacheEntry {
                identity: 300,
                tunnel_endpoint: [198, 51, 100, 2],
            },
        );
        assert_eq!(remote.cells(), ["10.42.2.10/32", "300", "198.51.100.2"]);
        let host = ipcache_row(
            "vps1",
            &Ipv4Cidr::new(Ipv4Addr::new(198, 51, 100, 1), 32).expect("cidr"),
            &IpcacheEntry {
                identity: identity::HOST,
                tunnel_endpoint: [0; 4],
            },
        );
        assert_eq!(host.cells(), ["198.51.100.1/32", "1 (host)", "-"]);
        let json = serde_json::to_value(&host).expect("json");
        assert_eq!(json["identity_name"], "host");
        assert_eq!(json["tunnel_endpoint"], serde_json::Value::Null);
    }

    #[test]
    fn nat_rows_show_both_tuples_direction_state_expiry_and_age() {
        let key = NatKey4 {
            saddr: [10, 42, 1, 10],
            daddr: [203, 0, 113, 4],
            sport: 40000,
            dport: 80,
            proto: IPPROTO_TCP,
            direction: NAT_DIR_EGRESS,
            _pad: [0; 2],
        };
        let entry = NatEntry4 {
            addr: [198, 51, 100, 1],
            port: 33000,
            flags: CT_FLAG_SEEN_NON_SYN | CT_FLAG_FORWARD_CLOSING,
            last_seen_ns: 1_000_000_000,
            expires_s: 8076,
            ..NatEntry4::default()
        };
        let row = nat_row("vps1", &key, &entry, Some(76_500_000_000));
        assert_eq!(
            row.cells(),
            [
                "TCP",
                "egress",
                "10.42.1.10:40000 -> 203.0.113.4:80",
                "src",
                "198.51.100.1:33000",
                "established,fin-out",
                "2h13m",
                "1m15s"
            ]
        );
        let reply = NatKey4 {
            saddr: [203, 0, 113, 4],
            daddr: [198, 51, 100, 1],
            sport: 53,
            dport: 33001,
            proto: IPPROTO_UDP,
            direction: NAT_DIR_INGRESS,
            _pad: [0; 2],
        };
        let row = nat_row("vps1", &reply, &entry, None);
        assert_eq!((row.direction, row.translates), ("ingress", "dst"));
        assert_eq!(
            row.cells()[5..],
            ["-", "-", "-"],
            "UDP has no state; no clock"
        );
        let expired = nat_row("vps1", &key, &entry, Some(9_000_000_000_000));
        assert_eq!(expired.cells()[6], "expired");
        let json = serde_json::to_value(&expired).expect("json");
        assert_eq!(json["expires_in_secs"], 0);
        assert_eq!(json["state"][1], "fin-out");
    }

    #[test]
    fn masqueraded_tcp_states_are_named() {
        assert_eq!(nat_state(0), ["syn-sent"]);
        assert_eq!(nat_state(CT_FLAG_SEEN_NON_SYN), ["established"]);
        assert_eq!(
            nat_state(CT_FLAG_SEEN_NON_SYN | CT_FLAG_FORWARD_CLOSING | CT_FLAG_REPLY_CLOSING),
            ["established", "fin-out", "fin-in"]
        );
        assert_eq!(nat_state(CT_FLAG_RESET), ["syn-sent", "reset"]);
    }

    #[test]
    fn rows_become_a_json_array_that_parses() {
        let rows = [
            ipcache_row(
                "vps1",
                &Ipv4Cidr::new(Ipv4Addr::new(10, 42, 0, 0), 24).expect("cidr"),
                &IpcacheEntry {
                    identity: identity::UNMANAGED,
                    tunnel_endpoint: [198, 51, 100, 2],
                },
            ),
            ipcache_row(
                "vps2",
                &Ipv4Cidr::new(Ipv4Addr::new(198, 51, 100, 2), 32).expect("cidr"),
                &IpcacheEntry {
                    identity: identity::HOST,
                    tunnel_endpoint: [0; 4],
                },
            ),
        ];
        let objects: Vec<String> = rows
            .iter()
            .map(|r| serde_json::to_string_pretty(r).expect("json"))
            .collect();
        let text = json_array(&objects);
        assert!(
            text.starts_with("[\n  {\n    \"node\": \"vps1\",\n    \"cidr\""),
            "{text}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&text).expect("parses");
        assert_eq!(parsed[1]["identity_name"], "host");
        assert_eq!(parsed[0]["tunnel_endpoint"], "198.51.100.2");
        assert_eq!(json_array(&[]), "[]");
    }

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age_text(0), "0s");
        assert_eq!(age_text(59), "59s");
        assert_eq!(age_text(192), "3m12s");
        assert_eq!(age_text(7500), "2h05m");
    }
}
