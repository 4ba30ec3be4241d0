//! weft-lbbench: the service load balancer's micro-benchmarks for `bench/services`, each
//! printing JSON lines, and the generator of the bench's filler Services.

mod maglev;
mod manifests;
mod model;
mod northsouth;
mod stats;
mod testrun;

use std::{path::PathBuf, time::Instant};

use clap::{Parser, Subcommand};
use serde_json::json;

#[derive(Parser)]
#[command(name = "weft-lbbench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print filler Services `lbfill-<from>`..`lbfill-<to - 1>` and their EndpointSlices.
    Manifests {
        #[arg(long, default_value_t = 0)]
        from: u32,
        #[arg(long)]
        to: u32,
    },
    /// ns per packet of from_container under BPF_PROG_TEST_RUN at each number of services.
    Testrun {
        #[arg(long, value_delimiter = ',', default_value = "1,10000,100000")]
        services: Vec<u32>,
        /// Packets of each kind at each number of services.
        #[arg(long, default_value_t = 20_000)]
        samples: u32,
        /// Packets of one kind before the next kind's turn.
        #[arg(long, default_value_t = 500)]
        batch: u32,
    },
    /// ns per packet of the north-south path under BPF_PROG_TEST_RUN: tc's from_netdev and
    /// xdp_entry on the same packets (SNAT and DSR, first and established, remote backend).
    Northsouth {
        /// Packets of each kind (at most 16384: first packets take a SNAT port each).
        #[arg(long, default_value_t = 10_000)]
        samples: u32,
        /// Packets of one kind before the next kind's turn.
        #[arg(long, default_value_t = 500)]
        batch: u32,
    },
    /// Maglev table build time for each table size and number of backends.
    Maglev {
        #[arg(long, value_delimiter = ',', default_value = "16381,65521")]
        sizes: Vec<u32>,
        #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
        backends: Vec<u32>,
        #[arg(long, default_value_t = 5)]
        repeat: u32,
    },
    /// The agent's steps for N services, timed one by one in this process.
    Model {
        #[arg(long, default_value_t = 10_000)]
        services: u32,
        /// An empty directory for the manifest files.
        #[arg(long)]
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Manifests { from, to } => print!("{}", manifests::fillers(from, to)?),
        Command::Testrun {
            services,
            samples,
            batch,
        } => run_testrun(&services, samples, batch.max(1))?,
        Command::Northsouth { samples, batch } => run_northsouth(samples, batch.max(1))?,
        Command::Maglev {
            sizes,
            backends,
            repeat,
        } => run_maglev(&sizes, &backends, repeat)?,
        Command::Model { services, dir } => {
            let steps = model::steps(services, &dir)?;
            let steps: Vec<_> = steps
                .iter()
                .map(|(name, ms)| json!({"step": name, "ms": ms}))
                .collect();
            println!("{}", json!({"services": services, "steps": steps}));
        }
    }
    Ok(())
}

fn run_testrun(services: &[u32], samples: u32, batch: u32) -> anyhow::Result<()> {
    for &count in services {
        let start = Instant::now();
        let mut harness = testrun::harness(count)?;
        let fill_ms = stats::ms(start.elapsed());
        let kinds: serde_json::Map<_, _> = testrun::measure(&mut harness, samples, batch)?
            .into_iter()
            .map(|(kind, summary)| (kind.to_string(), summary.json()))
            .collect();
        println!(
            "{}",
            json!({"services": count, "samples": samples, "load_and_fill_ms": fill_ms, "ns": kinds})
        );
    }
    Ok(())
}

fn run_northsouth(samples: u32, batch: u32) -> anyhow::Result<()> {
    let kinds = northsouth::in_underlay(move |ifindex| {
        let mut harness = northsouth::harness(ifindex)?;
        northsouth::measure(&mut harness, ifindex, samples, batch)
    })?;
    println!(
        "{}",
        json!({"samples": samples, "batch": batch, "maglev_size": northsouth::MAGLEV_SIZE,
               "kinds": kinds})
    );
    Ok(())
}

fn run_maglev(sizes: &[u32], backends: &[u32], repeat: u32) -> anyhow::Result<()> {
    for &size in sizes {
        for &n in backends {
            let summary = maglev::build_time(size, n, repeat)?;
            println!(
                "{}",
                json!({"table_size": size, "backends": n, "repeat": repeat, "ms": summary.json()})
            );
        }
    }
    Ok(())
}
