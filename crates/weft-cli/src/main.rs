//! `weft`: the command line of the Weft datapath and its netns lab. `status`, `bpf`, `observe`
//! and `doctor` address a node by its agent's socket and pin directory (see [`address`]).

mod address;
mod bpf;
mod bpf_lb;
mod bpf_maglev;
mod doctor;
mod lab;
mod nodes;
mod observe;
mod status;

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
    /// Print the datapath's events (drops, traces) of the node.
    Observe(observe::ObserveArgs),
    /// The health of the node's agent: reachable, ready, what it programmed.
    Status(nodes::NodeArgs),
    /// Read a node's pinned datapath maps.
    Bpf {
        #[command(subcommand)]
        command: bpf::BpfCommand,
    },
    /// Find what fights the datapath on the node (kube-proxy or svclb rules, masquerade of
    /// pod-to-pod traffic, foreign programs, an MTU too small) and say what to do.
    Doctor(doctor::DoctorArgs),
}

fn main() -> std::process::ExitCode {
    // Die quietly of a closed pipe (`weft bpf ipcache list | head`) like other command-line
    // tools, instead of panicking in println!.
    // SAFETY: restoring the default disposition of a signal has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Lab { command } => lab::run(command),
        Command::Observe(args) => observe::run(&args),
        Command::Status(args) => status::run(&args),
        Command::Bpf { command } => bpf::run(command),
        Command::Doctor(args) => doctor::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weft: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
