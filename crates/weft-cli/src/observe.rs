//! `weft observe`: the datapath's events of a node (a lab's: every node's), one line each or JSON
//! lines.

use std::{process::ExitCode, time::Duration};

use clap::{Args, ValueEnum};
use weft_datapath::events::drain_pinned;

use crate::address::{self, Address};
pub use crate::nodes::Output;

#[derive(Args)]
pub struct ObserveArgs {
    #[command(flatten)]
    pub address: Address,
    /// Only events of this type.
    #[arg(long = "type", value_enum)]
    pub kind: Option<EventType>,
    /// Keep printing new events until interrupted.
    #[arg(short, long)]
    pub follow: bool,
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum EventType {
    Drop,
    Trace,
}

pub fn run(args: &ObserveArgs) -> anyhow::Result<ExitCode> {
    let nodes = address::resolve(&args.address)?;
    loop {
        for node in &nodes {
            let pins = node.pins()?;
            // Interface names are the node's: read them in its namespace.
            for event in node.run(|| drain_pinned(&node.name, pins))?? {
                let wanted = match args.kind {
                    None => true,
                    Some(EventType::Drop) => event.kind == "drop",
                    Some(EventType::Trace) => event.kind == "trace",
                };
                if !wanted {
                    continue;
                }
                match args.output {
                    Output::Text => println!("{}", event.line()),
                    Output::Json => println!("{}", serde_json::to_string(&event)?),
                }
            }
        }
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
