//! Traffic: the servers in the backend pods, and the clients — the connect-latency and follow
//! probes (`weft-kpbench probe-connect|probe-follow`), `weft-netbench` and `iperf3` — as child
//! processes placed in the client pod's netns and its node's cgroup, where socket LB applies.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
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

/// Connects to `to` from `client` until the pod named `want` answers (every millisecond, for
/// at most `timeout`); the connections answered by `stale` on the way, and all attempts.
/// Probed by [`probe_follow`] in a child placed in the client.
pub fn follow(
    client: &Pod,
    to: SocketAddr,
    want: &str,
    stale: &str,
    timeout: Duration,
) -> anyhow::Result<(u32, u32)> {
    let argv = probe_argv(
        "probe-follow",
        &[
            ("--to", to.to_string()),
            ("--want", want.to_string()),
            ("--stale", stale.to_string()),
            ("--timeout-ms", timeout.as_millis().to_string()),
        ],
    )?;
    serde_json::from_str(&run_client(client, &argv)?).context("probe-follow's report")
}

/// The probe's side of [`follow`], in the calling process.
pub fn probe_follow(
    to: SocketAddr,
    want: &str,
    stale: &str,
    timeout: Duration,
) -> anyhow::Result<(u32, u32)> {
    let deadline = Instant::now() + timeout;
    let (mut stale_seen, mut attempts) = (0, 0);
    while Instant::now() < deadline {
        attempts += 1;
        match ask(to).as_deref() {
            Ok(name) if name == want => return Ok((stale_seen, attempts)),
            Ok(name) if name == stale => stale_seen += 1,
            _ => {}
        }
        thread::sleep(Duration::from_millis(1));
    }
    bail!("{want} did not answer through {to} within {timeout:?}")
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
