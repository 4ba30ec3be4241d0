//! `weft`: the command line of the Weft datapath and its netns lab.

mod lab;
mod observe;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "Weft: an eBPF datapath for Kubernetes networking"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The netns lab: a cluster of network namespaces on this machine.
    Lab {
        #[command(subcommand)]
        command: lab::LabCommand,
    },
    /// Print the datapath's events (drops, traces) of a lab node.
    Observe(observe::ObserveArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Lab { command } => lab::run(command),
        Command::Observe(args) => observe::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weft: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
