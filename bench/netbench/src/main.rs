//! `weft-netbench`: the TCP load tool of `bench/pod-network`. A server that echoes and answers
//! connect-request-response-close, and two clients: `rr` (round-trip latency on one connection)
//! and `crr` (new connections per second); `probe` shows what a socket sees of its peer. Each
//! client prints one JSON object.

mod cli;
mod client;
mod probe;
mod protocol;
mod server;
mod stats;
mod watchdog;
mod whoami;

use clap::Parser;
use cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-netbench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Server {
            listen,
            workers,
            exit_after,
        } => {
            if let Some(limit) = exit_after {
                watchdog::spawn(limit, "server");
            }
            server::serve(listen, workers)
        }
        Command::Rr { to, duration, size } => {
            watchdog::spawn(duration + watchdog::GRACE, "rr client");
            let report = client::request_response(to, duration, size)?;
            println!("{}", report.to_json());
            Ok(())
        }
        Command::Crr {
            to,
            duration,
            parallel,
        } => {
            watchdog::spawn(duration + watchdog::GRACE, "crr client");
            let report = client::connect_request_response(to, duration, parallel)?;
            println!("{}", report.to_json());
            Ok(())
        }
        Command::Whoami { listen } => whoami::serve(listen),
        Command::Probe { to, udp } => {
            let payload = b"weft probe";
            let report = if udp {
                probe::udp(to, payload)?
            } else {
                probe::tcp(to, payload)?
            };
            println!("{}", report.to_json());
            Ok(())
        }
    }
}
