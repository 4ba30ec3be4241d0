//! `weft-cni`: the CNI plugin binary. Reads the environment and stdin, prints the result (or
//! the error) on stdout, and exits 0 on success, 1 on error.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    process::ExitCode,
};

use serde_json::json;
use weft_cni::{IpRoute, SocketAgent, code, config};

fn main() -> ExitCode {
    let vars: BTreeMap<String, String> = std::env::vars().collect();
    let outcome = match read_stdin(&vars) {
        Ok(stdin) => weft_cni::run(&vars, &stdin, &IpRoute, &SocketAgent),
        Err(e) => {
            let error = json!({
                "cniVersion": config::DEFAULT_VERSION,
                "code": code::IO_FAILURE,
                "msg": "error reading the network configuration from stdin",
                "details": e.to_string(),
            });
            weft_cni::Outcome {
                stdout: format!("{error}\n").into_bytes(),
                exit_code: 1,
            }
        }
    };
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(&outcome.stdout)
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    if outcome.exit_code == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// VERSION may be run without stdin; every other command reads its configuration.
fn read_stdin(vars: &BTreeMap<String, String>) -> std::io::Result<Vec<u8>> {
    let mut stdin = Vec::new();
    let is_version = vars.get("CNI_COMMAND").is_some_and(|c| c == "VERSION");
    match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => Ok(stdin),
        Err(_) if is_version => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}
