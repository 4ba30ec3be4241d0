//! L3: `weft lab up --config` with a values.yaml Weft refuses says why at once and makes
//! nothing. Needs root.

use std::process::Command;

use weft_lab::{
    leftovers,
    testing::{running_as_root, unique_lab_name},
};

#[test]
fn up_with_a_config_weft_refuses_prints_the_error_and_makes_nothing() {
    if !running_as_root("up_with_a_config_weft_refuses_prints_the_error_and_makes_nothing") {
        return;
    }
    let name = unique_lab_name("cfg");
    let dir = std::env::temp_dir().join(format!("weft-cli-test-{name}"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let values = dir.join("values.yaml");
    std::fs::write(&values, "loadBalancer: {mode: dsr}\nnotAWeftKey: true\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["lab", "up", "--name", &name, "--nodes", "2", "--config"])
        .arg(&values)
        .output()
        .expect("weft lab up runs");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let found = leftovers(&name);
    if !found.is_empty() {
        let _ = weft_lab::down(&name);
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success(), "refused");
    assert!(err.contains(&values.display().to_string()), "{err}");
    assert!(err.contains("unknown field `notAWeftKey`"), "{err}");
    assert!(!err.contains("agent"), "no agent was started: {err}");
    assert_eq!(found, Vec::<String>::new(), "nothing was made");
}
