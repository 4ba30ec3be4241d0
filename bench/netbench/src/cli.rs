//! Command-line arguments.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// The longest run a client or server accepts: a guard against a typo, not a real limit.
const MAX_SECONDS: f64 = 3600.0;

#[derive(Debug, Parser)]
#[command(
    name = "weft-netbench",
    version,
    about = "TCP request/response latency and connection-rate load tool"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand, PartialEq)]
pub enum Command {
    /// Serve rr and crr clients until killed (or --exit-after).
    Server {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Threads accepting and serving connections, one connection at a time each.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
        workers: u16,
        /// Exit after this many seconds, a safety net against a server left running.
        #[arg(long, value_parser = parse_seconds)]
        exit_after: Option<Duration>,
    },
    /// Ping-pong of --size byte messages on one connection; prints transactions/s and latency.
    Rr {
        /// The server's address.
        #[arg(long)]
        to: SocketAddr,
        /// Seconds to measure for.
        #[arg(long, value_parser = parse_seconds)]
        duration: Duration,
        /// Bytes per request and per response.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1 << 20))]
        size: u32,
    },
    /// Connect, send 1 byte, read 1 byte, close, repeatedly; prints connections/s and latency.
    Crr {
        /// The server's address.
        #[arg(long)]
        to: SocketAddr,
        /// Seconds to measure for.
        #[arg(long, value_parser = parse_seconds)]
        duration: Duration,
        /// Connections in flight at once, one thread each.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
        parallel: u16,
    },
    /// Answer every TCP connection with the client address this server sees, then close.
    Whoami {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// One TCP connection (or, with --udp, one datagram from an unconnected socket) to a plain
    /// echo server; prints the peer address the socket shows (getpeername / recvfrom).
    Probe {
        /// The address to reach (a service address, say).
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        udp: bool,
    },
}

/// A positive, finite number of seconds (fractions allowed) up to [`MAX_SECONDS`].
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(seconds > 0.0 && seconds <= MAX_SECONDS) {
        return Err(format!(
            "`{text}` seconds is out of range (0, {MAX_SECONDS}]"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("weft-netbench").chain(args.iter().copied()))
            .map(|cli| cli.command)
    }

    #[test]
    fn seconds_accept_fractions_and_reject_nonsense() {
        assert_eq!(parse_seconds("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        for bad in ["0", "-1", "nan", "inf", "3601", "", "5s"] {
            assert!(parse_seconds(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn rr_defaults_to_one_byte() {
        let command = parse(&["rr", "--to", "10.0.0.1:5400", "--duration", "3"]).unwrap();
        assert_eq!(
            command,
            Command::Rr {
                to: "10.0.0.1:5400".parse().unwrap(),
                duration: Duration::from_secs(3),
                size: 1,
            }
        );
    }

    #[test]
    fn crr_takes_parallel() {
        let command = parse(&[
            "crr",
            "--to",
            "10.0.0.1:5400",
            "--duration",
            "1.5",
            "--parallel",
            "4",
        ])
        .unwrap();
        assert_eq!(
            command,
            Command::Crr {
                to: "10.0.0.1:5400".parse().unwrap(),
                duration: Duration::from_millis(1500),
                parallel: 4,
            }
        );
    }

    #[test]
    fn server_defaults() {
        let command = parse(&["server", "--listen", "0.0.0.0:5400"]).unwrap();
        assert_eq!(
            command,
            Command::Server {
                listen: "0.0.0.0:5400".parse().unwrap(),
                workers: 8,
                exit_after: None,
            }
        );
    }

    #[test]
    fn rejects_bad_arguments() {
        let bad: &[&[&str]] = &[
            &["rr", "--to", "10.0.0.1", "--duration", "3"],
            &["rr", "--to", "10.0.0.1:5400"],
            &[
                "rr",
                "--to",
                "10.0.0.1:5400",
                "--duration",
                "3",
                "--size",
                "0",
            ],
            &[
                "crr",
                "--to",
                "10.0.0.1:5400",
                "--duration",
                "3",
                "--parallel",
                "0",
            ],
            &["server", "--listen", "0.0.0.0:5400", "--workers", "0"],
            &["server"],
        ];
        for args in bad {
            assert!(parse(args).is_err(), "{args:?} accepted");
        }
    }
}
