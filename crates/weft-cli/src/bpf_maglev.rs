//! `weft bpf maglev list <namespace/service>`: the Maglev tables of a Service's frontends on a
//! node, like `cilium bpf lb maglev list`: per frontend the table size and each backend's
//! share of the slots, and with `--slots` (always in JSON) the whole table.
//!
//! The node is addressed as by every `weft bpf` command ([`crate::address`]). The Service's
//! clusterIP comes from the lab's manifests directory (or `--manifests`); its
//! frontends are the service entries (slot 0) of `weft_lb4_services` with that address, whose
//! `rev_nat_index` keys the table in `weft_lb4_maglev`.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use weft_common::{
    Lb4Backend, Lb4Key, Lb4Service,
    lb::{LB_ALG_MAGLEV, LB_SCOPE_INTERNAL},
    net::l4_proto_name,
};
use weft_datapath::LbMaps;
use weft_lab::{apply::current_files, runtime};
use weft_model::Store;

use crate::{
    address::{self, Address, Node},
    bpf::json_array,
    nodes::{Output, table},
};

#[derive(Subcommand)]
pub enum MaglevCommand {
    /// Each frontend's table size and its backends' shares of the slots.
    List(MaglevArgs),
}

#[derive(Args, Clone, Debug)]
pub struct MaglevArgs {
    /// `namespace/name` (`name` alone: namespace `default`), or a clusterIP.
    pub service: String,
    #[command(flatten)]
    pub address: Address,
    /// Read the Service from this manifests directory instead of the lab's.
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// Print every slot of the tables as well.
    #[arg(long)]
    pub slots: bool,
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// One backend's part of a Maglev table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackendShare {
    pub backend_id: u32,
    /// `address:port/proto`; `None` when `weft_lb4_backends` lacks the id.
    pub backend: Option<String>,
    pub slots: usize,
    /// Fraction of the table's slots, 0..=1.
    pub share: f64,
}

/// The Maglev table of one frontend on one node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MaglevTable {
    pub node: String,
    pub service: String,
    /// `address:port/proto`, with ` (internal)` for the in-cluster scope of a frontend whose
    /// traffic policies differ.
    pub frontend: String,
    pub service_id: u16,
    pub table_size: usize,
    pub backends: Vec<BackendShare>,
    /// Backend id of every slot; left out of the text output unless `--slots`.
    pub slots: Vec<u32>,
}

/// How many slots each backend id holds, by backend: the backends found in `backends` first,
/// by address, then unknown ids.
pub fn backend_shares(table: &[u32], backends: &BTreeMap<u32, Lb4Backend>) -> Vec<BackendShare> {
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for id in table {
        *counts.entry(*id).or_default() += 1;
    }
    let total = table.len().max(1) as f64;
    let mut shares: Vec<BackendShare> = counts
        .into_iter()
        .map(|(id, slots)| BackendShare {
            backend_id: id,
            backend: backends.get(&id).map(backend_text),
            slots,
            share: slots as f64 / total,
        })
        .collect();
    shares.sort_by_key(|s| {
        let address = backends.get(&s.backend_id).map(|b| (b.address, b.port));
        (address.is_none(), address, s.backend_id)
    });
    shares
}

fn backend_text(b: &Lb4Backend) -> String {
    format!(
        "{}:{}/{}",
        Ipv4Addr::from(b.address),
        b.port,
        l4_proto_name(b.proto)
    )
}

fn frontend_text(key: &Lb4Key) -> String {
    let scope = if key.scope == LB_SCOPE_INTERNAL {
        " (internal)"
    } else {
        ""
    };
    format!(
        "{}:{}/{}{scope}",
        Ipv4Addr::from(key.address),
        key.port,
        l4_proto_name(key.proto)
    )
}

/// The service entries (slot 0) of `address`, by frontend. Refuses a Service with no frontend
/// on the node, or one whose frontends do not use Maglev.
pub fn maglev_frontends(
    service: &str,
    address: Ipv4Addr,
    entries: &[(Lb4Key, Lb4Service)],
) -> anyhow::Result<Vec<(Lb4Key, Lb4Service)>> {
    let mut frontends: Vec<(Lb4Key, Lb4Service)> = entries
        .iter()
        .filter(|(k, _)| k.slot == 0 && Ipv4Addr::from(k.address) == address)
        .copied()
        .collect();
    if frontends.is_empty() {
        bail!("no frontend of Service {service} ({address}) in weft_lb4_services");
    }
    frontends.retain(|(_, v)| v.algorithm == LB_ALG_MAGLEV);
    if frontends.is_empty() {
        bail!(
            "Service {service} does not use Maglev (its frontends use random selection; set \
             loadBalancer.algorithm: maglev)"
        );
    }
    frontends.sort_by_key(|(k, _)| (k.port, k.proto, k.scope));
    Ok(frontends)
}

/// The text of one table: a heading line, then a line per backend, then every slot with
/// `slots`.
pub fn table_text(t: &MaglevTable, slots: bool) -> String {
    let mut out = format!(
        "{} {}  service id {}  {} slots\n",
        t.service, t.frontend, t.service_id, t.table_size
    );
    let rows: Vec<Vec<String>> = t
        .backends
        .iter()
        .map(|b| {
            vec![
                b.backend
                    .clone()
                    .unwrap_or_else(|| "missing from weft_lb4_backends".to_string()),
                b.backend_id.to_string(),
                b.slots.to_string(),
                format!("{:.1}%", b.share * 100.0),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("  (no backend: the table is empty, new flows are refused)\n");
    } else {
        for line in table(&["BACKEND", "ID", "SLOTS", "SHARE"], &rows).lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    if slots {
        out.push_str("  SLOT  BACKEND ID\n");
        for (slot, id) in t.slots.iter().enumerate() {
            out.push_str(&format!("  {slot:<5} {id}\n"));
        }
    }
    out
}

pub fn run(command: MaglevCommand) -> anyhow::Result<ExitCode> {
    let MaglevCommand::List(args) = command;
    let (service, address) = service_address(&args)?;
    let mut tables = Vec::new();
    for node in address::resolve(&args.address)? {
        tables.extend(
            node_tables(&node, &service, address).with_context(|| format!("node {}", node.name))?,
        );
    }
    match args.output {
        Output::Json => {
            let objects = tables
                .iter()
                .map(|t| serde_json::to_string_pretty(t).context("serializing a table"))
                .collect::<anyhow::Result<Vec<_>>>()?;
            println!("{}", json_array(&objects));
        }
        Output::Text => print_tables(&tables, args.slots),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_tables(tables: &[MaglevTable], slots: bool) {
    let mut node = None;
    for t in tables {
        if node != Some(&t.node) {
            if node.is_some() {
                println!();
            }
            println!("Node {}:", t.node);
            node = Some(&t.node);
        }
        print!("{}", table_text(t, slots));
    }
}

/// `namespace/name` and the clusterIP to look for: the argument itself when it is an address,
/// else the Service's from the manifests.
fn service_address(args: &MaglevArgs) -> anyhow::Result<(String, Ipv4Addr)> {
    if let Ok(address) = args.service.parse::<Ipv4Addr>() {
        return Ok((address.to_string(), address));
    }
    let (namespace, name) = args
        .service
        .split_once('/')
        .unwrap_or(("default", args.service.as_str()));
    let dir = match (&args.manifests, &args.address.lab) {
        (Some(dir), _) if !dir.is_dir() => bail!("no manifests directory {}", dir.display()),
        (Some(dir), _) => dir.clone(),
        (None, Some(lab)) => {
            let dir = runtime::manifests_dir(lab);
            if !dir.is_dir() {
                bail!(
                    "lab {lab} has no manifests directory {} (is it up? else name one with \
                     --manifests)",
                    dir.display()
                );
            }
            dir
        }
        (None, None) => bail!(
            "Service {}: give its clusterIP, or where to look it up (--manifests DIR, or --lab \
             NAME)",
            args.service
        ),
    };
    let service = format!("{namespace}/{name}");
    let address = cluster_ip_of(&dir, namespace, name)?;
    Ok((service, address))
}

fn cluster_ip_of(dir: &Path, namespace: &str, name: &str) -> anyhow::Result<Ipv4Addr> {
    let files = current_files(dir)?;
    let store = Store::from_manifests(files.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .with_context(|| format!("reading {}", dir.display()))?;
    let service = store.service(namespace, name).ok_or_else(|| {
        anyhow!(
            "unknown Service {namespace}/{name} (not in {})",
            dir.display()
        )
    })?;
    service.spec.cluster_ipv4().ok_or_else(|| {
        anyhow!(
            "Service {namespace}/{name} has no clusterIP to load-balance (headless, \
             ExternalName or not allocated)"
        )
    })
}

fn node_tables(node: &Node, service: &str, address: Ipv4Addr) -> anyhow::Result<Vec<MaglevTable>> {
    let pins = node.pins()?;
    let maps = LbMaps::from_pins(pins)
        .with_context(|| format!("opening the maps pinned in {}", pins.display()))?;
    let backends: BTreeMap<u32, Lb4Backend> = maps.backends()?.into_iter().collect();
    let mut out = Vec::new();
    for (key, entry) in maglev_frontends(service, address, &maps.services()?)? {
        let id = entry.rev_nat_index;
        let slots = maps
            .maglev(id)?
            .ok_or_else(|| anyhow!("service id {id} has no table in weft_lb4_maglev"))?;
        out.push(MaglevTable {
            node: node.name.clone(),
            service: service.to_string(),
            frontend: frontend_text(&key),
            service_id: id,
            table_size: slots.len(),
            backends: backend_shares(&slots, &backends),
            slots,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use weft_common::{
        lb::{LB_ALG_RANDOM, LB_SCOPE_EXTERNAL},
        net::{IPPROTO_TCP, IPPROTO_UDP},
    };

    use super::*;

    const CLUSTER_IP: [u8; 4] = [10, 43, 0, 20];

    fn key(address: [u8; 4], port: u16, proto: u8, slot: u16) -> Lb4Key {
        Lb4Key {
            address,
            port,
            proto,
            scope: LB_SCOPE_EXTERNAL,
            slot,
            _pad: [0; 2],
        }
    }

    fn entry(id: u16, algorithm: u8) -> Lb4Service {
        Lb4Service {
            rev_nat_index: id,
            algorithm,
            maglev_size: 7,
            ..Lb4Service::default()
        }
    }

    fn backend(last: u8, port: u16) -> Lb4Backend {
        Lb4Backend {
            address: [10, 42, 0, last],
            port,
            proto: IPPROTO_TCP,
            flags: 0,
        }
    }

    #[test]
    fn shares_count_each_backends_slots_in_address_order() {
        let backends = BTreeMap::from([(9, backend(10, 8080)), (4, backend(11, 8080))]);
        let shares = backend_shares(&[4, 9, 4, 9, 4, 13, 9, 4], &backends);
        let view: Vec<(u32, Option<&str>, usize)> = shares
            .iter()
            .map(|s| (s.backend_id, s.backend.as_deref(), s.slots))
            .collect();
        assert_eq!(
            view,
            [
                (9, Some("10.42.0.10:8080/TCP"), 3),
                (4, Some("10.42.0.11:8080/TCP"), 4),
                (13, None, 1),
            ]
        );
        assert_eq!(shares[1].share, 0.5);
        assert!(backend_shares(&[], &backends).is_empty());
    }

    #[test]
    fn frontends_are_the_service_entries_of_the_address() {
        let entries = [
            (key(CLUSTER_IP, 80, IPPROTO_TCP, 0), entry(3, LB_ALG_MAGLEV)),
            (key(CLUSTER_IP, 80, IPPROTO_TCP, 1), entry(0, 0)),
            (key(CLUSTER_IP, 53, IPPROTO_UDP, 0), entry(5, LB_ALG_MAGLEV)),
            (
                key([10, 43, 0, 21], 80, IPPROTO_TCP, 0),
                entry(6, LB_ALG_MAGLEV),
            ),
        ];
        let found =
            maglev_frontends("shop/web", Ipv4Addr::from(CLUSTER_IP), &entries).expect("frontends");
        let ids: Vec<u16> = found.iter().map(|(_, v)| v.rev_nat_index).collect();
        assert_eq!(ids, [5, 3], "by port, slot 0 only, this address only");
        assert_eq!(frontend_text(&found[0].0), "10.43.0.20:53/UDP");
    }

    #[test]
    fn an_absent_or_random_service_is_refused_clearly() {
        let address = Ipv4Addr::from(CLUSTER_IP);
        let err = maglev_frontends("shop/web", address, &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no frontend of Service shop/web (10.43.0.20) in weft_lb4_services"
        );
        let random = [(key(CLUSTER_IP, 80, IPPROTO_TCP, 0), entry(3, LB_ALG_RANDOM))];
        let err = maglev_frontends("shop/web", address, &random).unwrap_err();
        assert!(err.to_string().contains("does not use Maglev"), "{err}");
    }

    #[test]
    fn the_text_shows_size_and_shares_and_slots_on_demand() {
        let backends = BTreeMap::from([(4, backend(10, 8080)), (9, backend(11, 8080))]);
        let slots = vec![4, 9, 4, 9, 4, 4, 9];
        let t = MaglevTable {
            node: "vps1".into(),
            service: "shop/web".into(),
            frontend: "10.43.0.20:80/TCP".into(),
            service_id: 3,
            table_size: slots.len(),
            backends: backend_shares(&slots, &backends),
            slots,
        };
        assert_eq!(
            table_text(&t, false),
            "shop/web 10.43.0.20:80/TCP  service id 3  7 slots\n\
             \x20 BACKEND              ID  SLOTS  SHARE\n\
             \x20 10.42.0.10:8080/TCP  4   4      57.1%\n\
             \x20 10.42.0.11:8080/TCP  9   3      42.9%\n"
        );
        let full = table_text(&t, true);
        assert!(full.ends_with("  SLOT  BACKEND ID\n  0     4\n  1     9\n  2     4\n  3     9\n  4     4\n  5     4\n  6     9\n"), "{full}");
        let empty = MaglevTable {
            backends: vec![],
            slots: vec![],
            table_size: 0,
            ..t
        };
        assert!(table_text(&empty, false).contains("no backend"));
    }
}
