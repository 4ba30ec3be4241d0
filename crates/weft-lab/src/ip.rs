//! Running iproute2's `ip` in batch mode, with errors that name the namespace, the failing
//! command and what `ip` said.

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// The `ip` binary: found in the usual sbin directories so a PATH without them still works.
fn ip_binary() -> &'static str {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("ip")
}

/// Runs `ip [-n netns] [-force] -batch -` with `commands` on stdin. Without `force`, `ip` stops
/// at the first failing command, which the error quotes.
pub(crate) fn batch(netns: Option<&str>, commands: &[String], force: bool) -> anyhow::Result<()> {
    if commands.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new(ip_binary());
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    if force {
        cmd.arg("-force");
    }
    cmd.args(["-batch", "-"]);
    let shown = describe(netns, force);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{shown}`"))?;
    let mut input = commands.join("\n");
    input.push('\n');
    let written = child
        .stdin
        .take()
        .context("stdin of ip")?
        .write_all(input.as_bytes());
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{shown}`"))?;
    if output.status.success() {
        written.with_context(|| format!("feeding `{shown}`"))?;
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let failed = failing_command(&stderr, commands)
        .map(|c| format!(" at `{c}`"))
        .unwrap_or_default();
    bail!(
        "`{shown}` failed ({}){failed}: {}",
        output.status,
        stderr.trim()
    )
}

fn describe(netns: Option<&str>, force: bool) -> String {
    let ns = netns.map(|n| format!(" -n {n}")).unwrap_or_default();
    let force = if force { " -force" } else { "" };
    format!("ip{ns}{force} -batch -")
}

/// `ip -batch -` reports `Command failed -:<line>`.
fn failing_command<'a>(stderr: &str, commands: &'a [String]) -> Option<&'a str> {
    let (_, rest) = stderr.split_once("Command failed -:")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let line: usize = digits.parse().ok()?;
    commands.get(line.checked_sub(1)?).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_failing_command_in_ips_report() {
        let commands = [
            "link set lo up".to_string(),
            "link add x type y".to_string(),
        ];
        let stderr = "Error: unknown link type.\nCommand failed -:2\n";
        assert_eq!(
            failing_command(stderr, &commands),
            Some("link add x type y")
        );
        assert_eq!(failing_command("Command failed -:9", &commands), None);
        assert_eq!(failing_command("other", &commands), None);
    }

    #[test]
    fn describes_the_invocation() {
        assert_eq!(describe(Some("a-inet"), false), "ip -n a-inet -batch -");
        assert_eq!(describe(None, true), "ip -force -batch -");
    }
}
