//! `weft observe`: the datapath's events of a lab node, one line each or JSON lines.

use std::{process::ExitCode, time::Duration};

use clap::{Args, ValueEnum};
use weft_lab::datapath::drain_events;

pub use crate::nodes::Output;
use crate::nodes::select_nodes;

#[derive(Args)]
pub struct ObserveArgs {
    /// The lab.
    #[arg(long, default_value = "weft")]
    pub lab: String,
    /// The node whose events to show (all nodes when omitted).
    #[arg(long)]
    pub node: Option<String>,
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
    let topology = weft_lab::load(&args.lab)?;
    let nodes = select_nodes(&topology, args.node.as_deref())?;
    loop {
        for node in &nodes {
            for event in drain_events(node)? {
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
