//! `weft lab test seed`: the seed's production flow on a lab of its own (see
//! `weft_lab::seed`), printed as the seed would want to read it.

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use weft_lab::{
    LabSpec,
    runtime::{self, Binaries, locate_binary},
    seed::{self, Check},
    testing::LabGuard,
};

pub fn run(name: &str, keep: bool) -> anyhow::Result<ExitCode> {
    if weft_lab::load(name).is_ok() {
        bail!("lab {name} is up: take it down first, or give the seed another --name");
    }
    let bins = Binaries::locate()?;
    let netbench = locate_binary("WEFT_NETBENCH", "weft-netbench")?;
    let scratch = std::env::temp_dir().join(format!("weft-seed-{name}"));
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let values = scratch.join("values.yaml");
    std::fs::write(&values, seed::SEED_VALUES)
        .with_context(|| format!("writing {}", values.display()))?;
    println!("the seed's values.yaml:\n{}", indent(seed::SEED_VALUES));
    let result = runtime::up_cluster(&LabSpec::with_size(name, 3, 0), &bins, Some(&values))
        .and_then(|topology| {
            let guard = LabGuard::new(topology);
            let client = guard.client.ip;
            let outcome = seed::apply_objects(&guard, &bins, &netbench, &scratch)
                .and_then(|_| seed::run(&guard));
            if keep {
                std::mem::forget(guard);
                println!("lab {name} is kept (`weft lab down --name {name}` removes it)");
            }
            outcome.map(|checks| (checks, client))
        });
    let _ = std::fs::remove_dir_all(&scratch);
    let (checks, client) = result?;
    let mut code = ExitCode::SUCCESS;
    for check in &checks {
        let passed = check.passed(client);
        println!("{}", line(check, passed));
        if !passed {
            code = ExitCode::FAILURE;
        }
    }
    Ok(code)
}

fn line(check: &Check, passed: bool) -> String {
    format!(
        "{}: the backend saw {}; reply segments on the router: {} from vps1 (the backend's \
         node), {} from vps2 (the entry node) — {}",
        check.when,
        check.seen,
        check.replies_from_backend_node,
        check.replies_from_entry_node,
        if passed { "ok" } else { "FAILED" }
    )
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_line_names_what_the_backend_saw_and_where_the_reply_went() {
        let check = Check {
            when: "first request".into(),
            seen: "203.0.113.4:40000".parse().unwrap(),
            replies_from_backend_node: 5,
            replies_from_entry_node: 0,
        };
        assert_eq!(
            line(&check, true),
            "first request: the backend saw 203.0.113.4:40000; reply segments on the router: 5 \
             from vps1 (the backend's node), 0 from vps2 (the entry node) — ok"
        );
    }
}
