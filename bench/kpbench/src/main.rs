//! weft-kpbench: Weft against kube-proxy's iptables (nft and legacy backends) and nftables
//! modes in the lab, one stack per `run`, and the report of all of them (`report`).

mod measure;
mod memory;
mod objects;
mod report;
mod results;
mod run;
mod stack;
mod stats;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "weft-kpbench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One stack's lab, measured at each number of services; writes its JSON to --out.
    Run {
        /// Where the results go (JSON).
        #[arg(long)]
        out: PathBuf,
        /// weft, weft-socklb, iptables, iptables-legacy or nftables.
        #[arg(long)]
        stack: stack::Stack,
        /// The lab's name (unique, at most 12 characters).
        #[arg(long)]
        lab: String,
        /// A scratch directory for the manifests applied.
        #[arg(long)]
        work: PathBuf,
        /// Numbers of services, ascending.
        #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
        services: Vec<u32>,
        #[arg(long)]
        netbench: PathBuf,
        /// CPU for the rr/crr clients and servers and the connect loop (none: unpinned).
        #[arg(long)]
        pin_cpu: Option<usize>,
        /// Connections to each of the first and last services.
        #[arg(long, default_value_t = 1000)]
        connects: usize,
        #[arg(long, default_value_t = 3)]
        repeat: u32,
        #[arg(long, default_value_t = 1.0)]
        rr_seconds: f64,
        #[arg(long, default_value_t = 1.0)]
        crr_seconds: f64,
        #[arg(long, default_value_t = 2.0)]
        tput_seconds: f64,
    },
    /// (Run by `run` inside the client pod.) Connect latency to --first and --last, as JSON.
    #[command(hide = true)]
    ProbeConnect {
        #[arg(long)]
        first: SocketAddr,
        #[arg(long)]
        last: SocketAddr,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        pin_cpu: Option<usize>,
    },
    /// (Run by `run` inside the client pod.) Once --to answered, says `ready` and waits for
    /// `go` on stdin; then connects to --to until --want answers; JSON {stale, attempts,
    /// answered_ns}.
    #[command(hide = true)]
    ProbeFollow {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        want: String,
        #[arg(long)]
        stale: String,
        #[arg(long)]
        timeout_ms: u64,
    },
    /// A kube-proxy baseline lab, left up: hand-wired pods routed by the kernel, no Weft, and
    /// kube-proxy's start-up rules in --mode (iptables, iptables-legacy, nftables). Remove it
    /// with `weft lab down --name LAB`.
    Baseline {
        /// The lab's name (at most 12 characters of a-z and 0-9).
        #[arg(long)]
        lab: String,
        #[arg(long)]
        mode: weft_kpbench::kube_proxy::ProxyMode,
        #[arg(long, default_value_t = 2)]
        nodes: u32,
        #[arg(long, default_value_t = 2)]
        pods_per_node: u32,
    },
    /// The Markdown report of the results directory (`<stack>.json`, `testrun.jsonl`,
    /// `northsouth.json`, `run.json`).
    Report {
        #[arg(long)]
        results: PathBuf,
    },
}

fn main() -> ExitCode {
    match run_cli(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-kpbench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_cli(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            out,
            stack,
            lab,
            work,
            services,
            netbench,
            pin_cpu,
            connects,
            repeat,
            rr_seconds,
            crr_seconds,
            tput_seconds,
        } => {
            anyhow::ensure!(
                services.windows(2).all(|w| w[0] < w[1]),
                "--services must ascend"
            );
            let plan = run::Plan {
                stack,
                lab,
                work,
                services,
                tools: measure::Tools { netbench, pin_cpu },
                connects: connects.max(1),
                repeat: repeat.max(1),
                rr_seconds,
                crr_seconds,
                tput_seconds,
            };
            let result = run::run(&plan)?;
            std::fs::write(&out, serde_json::to_string_pretty(&result)? + "\n")
                .with_context(|| format!("writing {}", out.display()))?;
        }
        Command::ProbeConnect {
            first,
            last,
            count,
            pin_cpu,
        } => {
            let latencies = measure::probe_connects(first, last, count.max(1), pin_cpu)?;
            println!("{}", serde_json::to_string(&latencies)?);
        }
        Command::ProbeFollow {
            to,
            want,
            stale,
            timeout_ms,
        } => {
            let timeout = std::time::Duration::from_millis(timeout_ms);
            let followed = measure::probe_follow(
                to,
                &want,
                &stale,
                timeout,
                &mut std::io::stdin().lock(),
                &mut std::io::stdout().lock(),
            )?;
            println!("{}", serde_json::to_string(&followed)?);
        }
        Command::Baseline {
            lab,
            mode,
            nodes,
            pods_per_node,
        } => {
            let topology = weft_kpbench::baseline::up(&lab, mode, nodes, pods_per_node)?;
            println!(
                "lab {} is up: {} nodes, {} kernel-routed pods, kube-proxy's start-up rules \
                 ({mode}), no Service yet",
                topology.name,
                topology.nodes.len(),
                topology.pods().count()
            );
        }
        Command::Report { results } => {
            let inputs = report::Inputs::read(&results)
                .with_context(|| format!("reading {}", results.display()))?;
            print!("{}", report::render(&inputs));
        }
    }
    Ok(())
}
