//! Traffic: the servers in the backend pods, and the clients — the connect-latency and follow
//! probes (`weft-kpbench probe-connect|probe-follow`), `weft-netbench` and `iperf3` — as child
//! processes placed in the client pod's netns and its node's cgroup, where socket LB applies.

use std::{
    io::{BufRead, BufReader, Read as _, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use weft_lab::{exec::placed_command, netns::run_in};

use crate::{results::Latency, stats};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A pod as the bench uses it: where it is and how to put a process in it.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    pub netns: String,
    /// Its node's cgroup, relative to the cgroup2 root (the lab's `down` kills what is in it).
    pub cgroup: PathBuf,
}

/// How the clients run.
#[derive(Debug, Clone)]
pub struct Tools {
    pub netbench: PathBuf,
    /// CPU the rr/crr clients and servers and the connect loop are pinned to.
    pub pin_cpu: Option<usize>,
}

impl Tools {
    fn pinned(&self, argv: Vec<String>) -> Vec<String> {
        match self.pin_cpu {
            Some(cpu) => ["taskset", "--cpu-list", &cpu.to_string()]
                .into_iter()
                .map(String::from)
                .chain(argv)
                .collect(),
            None => argv,
        }
    }
}

/// Server processes started by the bench; killed (by their own PIDs) when dropped.
#[derive(Default)]
pub struct Servers {
    children: Vec<Child>,
}

impl Servers {
    /// `weft-netbench server` on `port` and `iperf3 --server` on `iperf_port` in `pod`.
    pub fn start(
        &mut self,
        tools: &Tools,
        pod: &Pod,
        port: u16,
        iperf_port: u16,
    ) -> anyhow::Result<()> {
        let netbench = tools.pinned(vec![
            tools.netbench.display().to_string(),
            "server".into(),
            "--listen".into(),
            format!("{}:{port}", pod.ip),
            "--exit-after".into(),
            "3600".into(),
        ]);
        self.spawn(pod, &netbench)?;
        let iperf: Vec<String> = ["iperf3", "--server", "--bind"]
            .into_iter()
            .map(String::from)
            .chain([pod.ip.to_string(), "--port".into(), iperf_port.to_string()])
            .collect();
        self.spawn(pod, &iperf)?;
        wait_listening(pod, port)?;
        wait_listening(pod, iperf_port)
    }

    fn spawn(&mut self, pod: &Pod, argv: &[String]) -> anyhow::Result<()> {
        let child = placed_command(&pod.netns, &pod.cgroup, argv, false)?
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} in {}", argv[0], pod.name))?;
        self.children.push(child);
        Ok(())
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_listening(pod: &Pod, port: u16) -> anyhow::Result<()> {
    for _ in 0..100 {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", pod.netns))
            .args(["ss", "-Hltn", &format!("sport = :{port}")])
            .output()
            .context("running ss")?;
        if !out.stdout.is_empty() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {}:{port} in {}", pod.ip, pod.name)
}

/// A server thread in `pod` answering every connection on `port` with the pod's name. It lives
/// as long as this process (its netns goes with the lab).
pub fn start_name_server(pod: &Pod, port: u16) -> anyhow::Result<()> {
    let addr = SocketAddrV4::new(pod.ip, port);
    let listener = run_in(&pod.netns, || TcpListener::bind(addr))?
        .with_context(|| format!("binding {addr} in {}", pod.name))?;
    let name = pod.name.clone();
    thread::Builder::new()
        .name(format!("name server {name}"))
        .spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let _ = conn.write_all(name.as_bytes());
            }
        })
        .context("spawning a name server")?;
    Ok(())
}

/// Pins the calling thread to `cpu`.
fn pin_thread(cpu: Option<usize>) {
    let Some(cpu) = cpu else { return };
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only
    // touch it and the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Connect latency from `client` to `first` and to `last`, `count` connections to each, in
/// batches of 100 taking turns; each connection is closed at once. Measured by
/// [`probe_connects`] in a child placed in the client.
pub fn connect_latency(
    client: &Pod,
    first: SocketAddr,
    last: SocketAddr,
    count: usize,
    pin_cpu: Option<usize>,
) -> anyhow::Result<(Latency, Latency)> {
    let mut argv = probe_argv(
        "probe-connect",
        &[
            ("--first", first.to_string()),
            ("--last", last.to_string()),
            ("--count", count.to_string()),
        ],
    )?;
    if let Some(cpu) = pin_cpu {
        argv.extend(["--pin-cpu".to_string(), cpu.to_string()]);
    }
    serde_json::from_str(&run_client(client, &argv)?).context("probe-connect's report")
}

/// The probe's side of [`connect_latency`], in the calling process.
pub fn probe_connects(
    first: SocketAddr,
    last: SocketAddr,
    count: usize,
    pin_cpu: Option<usize>,
) -> anyhow::Result<(Latency, Latency)> {
    pin_thread(pin_cpu);
    let (mut a, mut b) = (Connects::new(count), Connects::new(count));
    while a.tried < count {
        let batch = (count - a.tried).min(100);
        a.batch(first, batch)?;
        b.batch(last, batch)?;
    }
    Ok((a.latency(), b.latency()))
}

/// More connects timing out than this is a broken path, not a lost SYN.
const TIMEOUTS_TOLERATED: usize = 10;

/// Connect samples to one address, and those that timed out.
struct Connects {
    samples_us: Vec<f64>,
    tried: usize,
    timed_out: usize,
}

impl Connects {
    fn new(count: usize) -> Connects {
        Connects {
            samples_us: Vec::with_capacity(count),
            tried: 0,
            timed_out: 0,
        }
    }

    fn batch(&mut self, to: SocketAddr, n: usize) -> anyhow::Result<()> {
        for _ in 0..n {
            self.tried += 1;
            let started = Instant::now();
            match TcpStream::connect_timeout(&to, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    self.samples_us.push(started.elapsed().as_secs_f64() * 1e6);
                    drop(stream);
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    self.timed_out += 1;
                    if self.timed_out > TIMEOUTS_TOLERATED {
                        bail!("{} connects to {to} timed out", self.timed_out);
                    }
                }
                Err(e) => return Err(e).with_context(|| format!("connecting to {to}")),
            }
        }
        Ok(())
    }

    fn latency(&self) -> Latency {
        Latency {
            timed_out: self.timed_out,
            ..latency(&self.samples_us)
        }
    }
}

/// `weft-kpbench <subcommand> <args>`: this program again, as a client.
fn probe_argv(subcommand: &str, args: &[(&str, String)]) -> anyhow::Result<Vec<String>> {
    let exe = std::env::current_exe().context("finding weft-kpbench itself")?;
    let mut argv = vec![exe.display().to_string(), subcommand.to_string()];
    for (flag, value) in args {
        argv.extend([flag.to_string(), value.clone()]);
    }
    Ok(argv)
}

fn latency(samples: &[f64]) -> Latency {
    let s = stats::sorted(samples);
    Latency {
        count: s.len(),
        p50_us: stats::percentile(&s, 50.0),
        p90_us: stats::percentile(&s, 90.0),
        p99_us: stats::percentile(&s, 99.0),
        timed_out: 0,
    }
}

/// What a follow probe saw: the connections answered by the stale pod from the go on, all
/// attempts, and when the wanted pod answered ([`monotonic_ns`]).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Followed {
    pub stale: u32,
    pub attempts: u32,
    pub answered_ns: u64,
}

/// A follow probe: a `weft-kpbench probe-follow` child placed in the client, which has reached
/// the service once (so its start-up is behind it) and waits for [`FollowProbe::go`]; then it
/// connects every millisecond until the wanted pod answers. The child is killed if dropped
/// before it reported.
pub struct FollowProbe {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl FollowProbe {
    /// Starts the probe of `to` from `client` (for at most `timeout` after the go) and waits
    /// until it is ready: answered once, and not by `want` yet.
    pub fn start(
        client: &Pod,
        to: SocketAddr,
        want: &str,
        stale: &str,
        timeout: Duration,
    ) -> anyhow::Result<FollowProbe> {
        let argv = probe_argv(
            "probe-follow",
            &[
                ("--to", to.to_string()),
                ("--want", want.to_string()),
                ("--stale", stale.to_string()),
                ("--timeout-ms", timeout.as_millis().to_string()),
            ],
        )?;
        let mut child = placed_command(&client.netns, &client.cgroup, &argv, false)?
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", argv.join(" ")))?;
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
        let mut probe = FollowProbe {
            child,
            stdin,
            stdout: BufReader::new(stdout.context("the probe's stdout")?),
        };
        let line = probe.next_line()?;
        if line.trim() != READY {
            bail!("probe-follow said {line:?} instead of {READY:?}");
        }
        Ok(probe)
    }

    /// Lets the probe start connecting; its counts start here.
    pub fn go(&mut self) -> anyhow::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .context("the probe was let go already")?;
        writeln!(stdin, "{GO}").context("letting probe-follow go")?;
        Ok(())
    }

    /// Waits until the wanted pod answered (or the probe gave up).
    pub fn finish(mut self) -> anyhow::Result<Followed> {
        let line = self.next_line()?;
        let followed = serde_json::from_str(&line)
            .with_context(|| format!("probe-follow's report {line:?}"))?;
        let status = self.child.wait().context("waiting for probe-follow")?;
        if !status.success() {
            bail!("probe-follow reported {line:?} but ended {status}");
        }
        Ok(followed)
    }

    /// The probe's next line on stdout; its exit status and stderr if it ended instead.
    fn next_line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .context("reading probe-follow's output")?;
        if line.is_empty() {
            let status = self.child.wait().context("waiting for probe-follow")?;
            let mut stderr = String::new();
            if let Some(mut err) = self.child.stderr.take() {
                let _ = err.read_to_string(&mut stderr);
            }
            bail!("probe-follow ended ({status}): {}", stderr.trim());
        }
        Ok(line)
    }
}

impl Drop for FollowProbe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const READY: &str = "ready";
const GO: &str = "go";

/// The probe's side of [`FollowProbe`], in the calling process: once `to` answered (by any
/// pod but `want`), says [`READY`] on `report` and waits for [`GO`] on `control` (the child's
/// stdout and stdin); then connects every millisecond until `want` answers, for at most
/// `timeout`.
pub fn probe_follow(
    to: SocketAddr,
    want: &str,
    stale: &str,
    timeout: Duration,
    control: &mut impl BufRead,
    report: &mut impl Write,
) -> anyhow::Result<Followed> {
    let first = first_answer(to, timeout)?;
    if first == want {
        bail!("{want} answered through {to} before the change");
    }
    writeln!(report, "{READY}")?;
    report.flush()?;
    let mut line = String::new();
    control.read_line(&mut line)?;
    if line.trim() != GO {
        bail!("expected {GO:?}, got {line:?}");
    }
    let deadline = Instant::now() + timeout;
    let (mut stale_seen, mut attempts) = (0, 0);
    while Instant::now() < deadline {
        attempts += 1;
        match ask(to).as_deref() {
            Ok(name) if name == want => {
                return Ok(Followed {
                    stale: stale_seen,
                    attempts,
                    answered_ns: monotonic_ns(),
                });
            }
            Ok(name) if name == stale => stale_seen += 1,
            _ => {}
        }
        thread::sleep(Duration::from_millis(1));
    }
    bail!("{want} did not answer through {to} within {timeout:?}")
}

/// The first pod that answers through `to`, trying every millisecond for at most `timeout`.
fn first_answer(to: SocketAddr, timeout: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        match ask(to) {
            Ok(name) => return Ok(name),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("nothing answered through {to}"));
            }
            Err(_) => thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// CLOCK_MONOTONIC in ns: one clock for the bench and its probes (processes of one machine and
/// time namespace), so a probe's instant can be set against the bench's.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// The name of the pod that answers a connection to `to`.
fn ask(to: SocketAddr) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    let mut name = String::new();
    stream.read_to_string(&mut name)?;
    Ok(name)
}

/// `weft-netbench rr|crr --to to --duration seconds` from `client`: its JSON report.
pub fn netbench(
    tools: &Tools,
    client: &Pod,
    mode: &str,
    to: SocketAddr,
    seconds: f64,
) -> anyhow::Result<serde_json::Value> {
    let argv = tools.pinned(vec![
        tools.netbench.display().to_string(),
        mode.into(),
        "--to".into(),
        to.to_string(),
        "--duration".into(),
        seconds.to_string(),
    ]);
    serde_json::from_str(&run_client(client, &argv)?)
        .with_context(|| format!("weft-netbench {mode}'s report"))
}

/// iperf3 from `client` to `to` for `seconds`: Gbit/s received.
pub fn iperf(client: &Pod, to: SocketAddr, seconds: f64) -> anyhow::Result<f64> {
    let argv: Vec<String> = [
        "iperf3".to_string(),
        "--client".into(),
        to.ip().to_string(),
        "--port".into(),
        to.port().to_string(),
        "--time".into(),
        seconds.to_string(),
        "--json".into(),
    ]
    .into();
    let report: serde_json::Value =
        serde_json::from_str(&run_client(client, &argv)?).context("iperf3's JSON report")?;
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bps| bps / 1e9)
        .with_context(|| {
            format!(
                "iperf3 to {to}: no end.sum_received.bits_per_second: {}",
                report["error"]
            )
        })
}

fn run_client(client: &Pod, argv: &[String]) -> anyhow::Result<String> {
    let out = placed_command(&client.netns, &client.cgroup, argv, false)?
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", argv.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}{}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `path`'s parent must exist; used to check binaries before a long run.
pub fn require_file(path: &Path) -> anyhow::Result<()> {
    if path.is_file() {
        Ok(())
    } else {
        bail!("{} is missing (built by bench/compare)", path.display())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A name server on loopback answering with whatever `name` holds at the time.
    fn name_server() -> (SocketAddr, Arc<Mutex<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let name = Arc::new(Mutex::new("c".to_string()));
        let answer = Arc::clone(&name);
        thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let now = answer.lock().map(|n| n.clone()).unwrap_or_default();
                let _ = conn.write_all(now.as_bytes());
            }
        });
        (addr, name)
    }

    /// [`probe_follow`] of `addr` waiting for `a` (stale: `c`), with `control` as its stdin;
    /// the outcome and what it said on its stdout.
    fn follow_a(addr: SocketAddr, control: &str) -> (anyhow::Result<Followed>, String) {
        let mut said = Vec::new();
        let followed = probe_follow(
            addr,
            "a",
            "c",
            Duration::from_secs(5),
            &mut control.as_bytes(),
            &mut said,
        );
        (followed, String::from_utf8_lossy(&said).into_owned())
    }

    #[test]
    fn the_follow_probe_is_ready_before_the_go_and_counts_from_it() {
        let (addr, name) = name_server();
        let changer = Arc::clone(&name);
        let before = monotonic_ns();
        // The go line arrives at once; the change a little after it.
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(30));
            *changer.lock().expect("lock") = "a".into();
        });
        let (followed, said) = follow_a(addr, "go\n");
        let followed = followed.expect("a answers");
        assert_eq!(said, "ready\n");
        assert!(followed.stale > 0 && followed.attempts > followed.stale);
        assert!(followed.answered_ns >= before + 30_000_000);
    }

    #[test]
    fn the_follow_probe_refuses_a_change_made_before_it_started() {
        let (addr, name) = name_server();
        *name.lock().expect("lock") = "a".into();
        let (followed, said) = follow_a(addr, "go\n");
        let err = followed.expect_err("a answered before the change");
        assert!(said.is_empty(), "not ready");
        assert!(err.to_string().contains("before the change"), "{err}");
    }

    #[test]
    fn the_follow_probe_waits_for_the_go() {
        let (addr, _name) = name_server();
        let (followed, said) = follow_a(addr, "");
        let err = followed.expect_err("no go");
        assert_eq!(said, "ready\n");
        assert!(err.to_string().contains("expected"), "{err}");
    }
}
