//! The lab's supervisor: one long-running process per lab run by Weft (`weft lab supervise`,
//! started by [`crate::runtime::up_cluster`]) in the lab's cgroup (`weft-<lab>/supervisor`).
//! It starts every node's agent, one after another so the node CIDRs are claimed in node
//! order, then restarts an agent that exits, after a delay that doubles from
//! [`FIRST_RESTART_DELAY`] to [`MAX_RESTART_DELAY`] while the agent keeps failing, and logs
//! each exit and restart.
//!
//! Under `/run/weft/labs/<lab>/`: `supervisor.pid`, `supervisor.log`, `supervisor.json` (its
//! state: each agent's pid, restarts and last exit, what `weft lab status` shows) and
//! `supervisor.sock`, where [`stop_agent`] and [`start_agent`] ask it to stop an agent and
//! keep it stopped, and to start it again (a deliberate restart the supervisor does not race).

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    process::{Child, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use nix::{
    sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, kill, sigaction},
    unistd::Pid,
};
use serde::{Deserialize, Serialize};
use weft_api::AgentStatus;

use crate::{
    host,
    runtime::{self, AGENT_READY_TIMEOUT, Binaries, STOP_TIMEOUT, lab_dir},
    topology::{NodeSpec, Topology, cgroup_dir_name},
};

/// The delay before the first restart of an agent that exited.
pub const FIRST_RESTART_DELAY: Duration = Duration::from_millis(200);
/// The longest delay between restarts of an agent that keeps exiting.
pub const MAX_RESTART_DELAY: Duration = Duration::from_secs(5);
/// An agent that ran this long before it exited is restarted after the first delay again.
pub const STABLE_UPTIME: Duration = Duration::from_secs(10);
/// How often the supervisor looks for exited agents (when no request wakes it sooner).
const TICK: Duration = Duration::from_millis(100);
/// How long a control request may wait for its answer.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);

pub fn pid_path(lab: &str) -> PathBuf {
    lab_dir(lab).join("supervisor.pid")
}

pub fn state_path(lab: &str) -> PathBuf {
    lab_dir(lab).join("supervisor.json")
}

pub fn log_path(lab: &str) -> PathBuf {
    lab_dir(lab).join("supervisor.log")
}

pub fn socket_path(lab: &str) -> PathBuf {
    lab_dir(lab).join("supervisor.sock")
}

/// The supervisor's cgroup, relative to the cgroup2 root.
fn cgroup(lab: &str) -> PathBuf {
    PathBuf::from(cgroup_dir_name(lab)).join("supervisor")
}

/// What the supervisor is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Starting the agents in node order; `node`'s is awaited.
    Starting { node: String },
    /// Every agent was ready once; exits are restarted.
    Supervising,
    /// An agent did not come up; the supervisor has exited.
    Failed { error: String },
    /// Stopped by a signal; the agents it started run on unsupervised.
    Stopped,
}

/// How one agent is, as the supervisor last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentRun {
    NotStarted,
    Running,
    /// Exited; started again once its delay has passed.
    Restarting,
    /// Stopped on request ([`stop_agent`]); not restarted until [`start_agent`].
    Held,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    pub node: String,
    pub pid: Option<i32>,
    pub run: AgentRun,
    /// Restarts after exits the supervisor saw (not those asked for).
    pub restarts: u32,
    /// How the agent last exited (`exit status: 1`, `signal: 9 (SIGKILL)`), when it has.
    pub last_exit: Option<String>,
}

/// `supervisor.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorState {
    pub pid: i32,
    pub phase: Phase,
    pub agents: Vec<AgentState>,
}

impl SupervisorState {
    pub fn agent(&self, node: &str) -> Option<&AgentState> {
        self.agents.iter().find(|a| a.node == node)
    }
}

/// The supervisor's last recorded state; `None` for a lab without one (hand-wired, or not up).
pub fn read_state(lab: &str) -> anyhow::Result<Option<SupervisorState>> {
    let path = state_path(lab);
    match fs::read_to_string(&path) {
        Ok(json) => serde_json::from_str(&json)
            .map(Some)
            .with_context(|| format!("parsing {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The pid recorded for the lab's supervisor, if that process still runs in the lab's
/// supervisor cgroup (so a recycled pid is never taken for it).
pub fn running_pid(lab: &str) -> Option<i32> {
    let pid: i32 = fs::read_to_string(pid_path(lab))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if !runtime::alive(Pid::from_raw(pid)) {
        return None;
    }
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let ours = Path::new("/").join(cgroup(lab));
    cgroups
        .lines()
        .filter_map(|line| line.strip_prefix("0::"))
        .any(|path| Path::new(path).ends_with(&ours))
        .then_some(pid)
}

/// The delay before each restart of one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: FIRST_RESTART_DELAY,
        }
    }
}

impl Backoff {
    /// The delay before restarting an agent that exited after running `uptime`: doubling
    /// from the first delay up to the longest while it keeps failing, the first again once it
    /// had run [`STABLE_UPTIME`].
    pub fn delay_after(&mut self, uptime: Duration) -> Duration {
        if uptime >= STABLE_UPTIME {
            self.next = FIRST_RESTART_DELAY;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(MAX_RESTART_DELAY);
        delay
    }
}

// ---- the side that starts and stops the supervisor --------------------------------------

/// Starts the supervisor of lab `t` (its state file must exist) and waits until every agent
/// is ready. The error of an agent that did not come up carries the end of its log.
pub fn start(t: &Topology, bins: &Binaries, config: Option<&Path>) -> anyhow::Result<()> {
    let lab = &t.name;
    let cgroup2 = host::ensure_cgroup2_root().context("finding the cgroup2 hierarchy")?;
    host::create_dir_all(&cgroup2.join(cgroup(lab)))?;
    host::create_dir_all(&lab_dir(lab))?;
    let mut argv = vec![
        bins.weft.display().to_string(),
        "lab".into(),
        "supervise".into(),
        "--name".into(),
        lab.clone(),
        "--agent".into(),
        bins.agent.display().to_string(),
    ];
    if let Some(config) = config {
        argv.extend(["--config".into(), config.display().to_string()]);
    }
    let (out, err) = runtime::log_file(&log_path(lab))?;
    let mut child = crate::exec::command_in_cgroup(&cgroup(lab), &argv, true)?
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting the supervisor of lab {lab}: {argv:?}"))?;
    fs::write(pid_path(lab), child.id().to_string()).context("recording the supervisor's pid")?;
    let timeout = AGENT_READY_TIMEOUT * (t.nodes.len() as u32 + 1);
    wait_supervising(lab, &mut child, timeout)
}

fn wait_supervising(lab: &str, child: &mut Child, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match read_state(lab)?.map(|s| s.phase) {
            Some(Phase::Supervising) => return Ok(()),
            Some(Phase::Failed { error }) => bail!("{error}"),
            _ => {}
        }
        if let Some(status) = child.try_wait().context("waiting for the supervisor")? {
            bail!(
                "the supervisor of lab {lab} exited ({status}) before the agents were up:\n{}",
                runtime::log_tail(&log_path(lab), 20)
            );
        }
        if Instant::now() > deadline {
            bail!("the agents of lab {lab} were not all ready after {timeout:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Stops the lab's supervisor (found by its recorded pid, in the lab's cgroup), so that it
/// restarts no agent while the lab is taken down; its pid when it ran.
pub(crate) fn stop(lab: &str) -> anyhow::Result<Option<i32>> {
    let Some(pid) = running_pid(lab) else {
        return Ok(None);
    };
    runtime::stop_process(pid).with_context(|| format!("stopping the supervisor ({pid})"))?;
    Ok(Some(pid))
}

/// Stops the agent of `node` and keeps it stopped (the supervisor does not restart it) until
/// [`start_agent`].
pub fn stop_agent(lab: &str, node: &str) -> anyhow::Result<()> {
    control(
        lab,
        &Control::Stop {
            node: node.to_string(),
        },
    )
    .map(drop)
}

/// Starts the agent of `node` again after [`stop_agent`] (supervised from then on) and waits
/// until it is ready.
pub fn start_agent(lab: &str, node: &str) -> anyhow::Result<AgentStatus> {
    control(
        lab,
        &Control::Start {
            node: node.to_string(),
        },
    )?;
    runtime::wait_ready(&runtime::agent_socket(lab, node), AGENT_READY_TIMEOUT)
        .with_context(|| format!("the agent of {node} did not become ready"))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Control {
    Stop { node: String },
    Start { node: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply {
    Done { pid: Option<i32> },
    Refused { error: String },
}

fn control(lab: &str, request: &Control) -> anyhow::Result<Option<i32>> {
    let socket = socket_path(lab);
    let stream = UnixStream::connect(&socket).with_context(|| {
        format!(
            "the supervisor of lab {lab} does not answer on {}",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(CONTROL_TIMEOUT))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    (&stream).write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .context("reading the supervisor's answer")?;
    match serde_json::from_str(&answer).with_context(|| format!("the supervisor said {answer}"))? {
        Reply::Done { pid } => Ok(pid),
        Reply::Refused { error } => Err(anyhow!("the supervisor of lab {lab}: {error}")),
    }
}

// ---- the supervisor itself ----------------------------------------------------------------

/// `weft lab supervise`: supervises the agents of lab `lab` until SIGTERM or SIGINT.
pub fn run(lab: &str, agent: &Path, config: Option<&Path>) -> anyhow::Result<()> {
    let stop = stop_on_signals()?;
    let topology = crate::lifecycle::load(lab)?;
    if let Some(pid) = running_pid(lab).filter(|pid| *pid != std::process::id() as i32) {
        bail!("lab {lab} has a supervisor already (pid {pid})");
    }
    let requests = serve_control(lab)?;
    let mut supervisor = Supervisor::new(&topology, agent, config);
    supervisor.log(&format!(
        "supervising the agents of lab {lab} (pid {})",
        std::process::id()
    ));
    if let Err(e) = supervisor.start_all(stop) {
        supervisor.phase = Phase::Failed {
            error: format!("{e:#}"),
        };
        supervisor.save();
        return Err(e);
    }
    supervisor.phase = Phase::Supervising;
    supervisor.save();
    while !stop.load(Ordering::SeqCst) {
        match requests.recv_timeout(TICK) {
            Ok((request, reply)) => {
                let answer = supervisor.handle(request);
                // The asker may have given up waiting: nothing to do then.
                let _ = reply.send(answer);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => thread::sleep(TICK),
        }
        supervisor.tend();
    }
    supervisor.log("stopping on a signal; the agents run on unsupervised");
    supervisor.phase = Phase::Stopped;
    supervisor.save();
    let _ = fs::remove_file(socket_path(lab));
    Ok(())
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn stop_on_signals() -> anyhow::Result<&'static AtomicBool> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }.with_context(|| format!("handling {signal}"))?;
    }
    Ok(&STOP)
}

type Request = (Control, mpsc::Sender<Reply>);

/// Listens on the control socket; each request goes to the supervisor's loop, which owns the
/// agents, and its answer back to the asker.
fn serve_control(lab: &str) -> anyhow::Result<mpsc::Receiver<Request>> {
    let path = socket_path(lab);
    let _ = fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("listening on {}", path.display()))?;
    let (requests, received) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            if let Err(e) = answer(&stream, &requests) {
                eprintln!("control request: {e:#}");
            }
        }
    });
    Ok(received)
}

fn answer(stream: &UnixStream, requests: &mpsc::Sender<Request>) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(CONTROL_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    let reply = match serde_json::from_str::<Control>(&line) {
        Ok(request) => {
            let (reply, answered) = mpsc::channel();
            requests
                .send((request, reply))
                .map_err(|_| anyhow!("the supervisor is gone"))?;
            answered
                .recv_timeout(CONTROL_TIMEOUT)
                .context("no answer from the supervisor")?
        }
        Err(e) => Reply::Refused {
            error: format!("not a request: {e}"),
        },
    };
    let mut text = serde_json::to_string(&reply)?;
    text.push('\n');
    let mut writer = stream;
    writer.write_all(text.as_bytes())?;
    Ok(())
}

/// One node's agent under supervision.
struct Agent {
    node: NodeSpec,
    child: Option<Child>,
    since: Instant,
    backoff: Backoff,
    restart_at: Option<Instant>,
    held: bool,
    restarts: u32,
    last_exit: Option<String>,
}

impl Agent {
    fn state(&self) -> AgentState {
        let run = match (&self.child, self.held, self.restart_at) {
            (Some(_), _, _) => AgentRun::Running,
            (None, true, _) => AgentRun::Held,
            (None, false, Some(_)) => AgentRun::Restarting,
            (None, false, None) => AgentRun::NotStarted,
        };
        AgentState {
            node: self.node.name.clone(),
            pid: self.child.as_ref().map(|c| c.id() as i32),
            run,
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

struct Supervisor {
    lab: String,
    agent_binary: PathBuf,
    config: Option<PathBuf>,
    agents: Vec<Agent>,
    phase: Phase,
    born: Instant,
}

impl Supervisor {
    fn new(t: &Topology, agent: &Path, config: Option<&Path>) -> Supervisor {
        let now = Instant::now();
        Supervisor {
            lab: t.name.clone(),
            agent_binary: agent.to_path_buf(),
            config: config.map(Path::to_path_buf),
            agents: t
                .nodes
                .iter()
                .map(|node| Agent {
                    node: node.clone(),
                    child: None,
                    since: now,
                    backoff: Backoff::default(),
                    restart_at: None,
                    held: false,
                    restarts: 0,
                    last_exit: None,
                })
                .collect(),
            phase: Phase::Starting {
                node: t.nodes.first().map(|n| n.name.clone()).unwrap_or_default(),
            },
            born: now,
        }
    }

    fn log(&self, message: &str) {
        eprintln!("[{:>10.3}s] {message}", self.born.elapsed().as_secs_f64());
    }

    /// Records the state where `weft lab status` reads it; a failure is logged, not fatal.
    fn save(&self) {
        let state = SupervisorState {
            pid: std::process::id() as i32,
            phase: self.phase.clone(),
            agents: self.agents.iter().map(Agent::state).collect(),
        };
        let path = state_path(&self.lab);
        let tmp = path.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(&state)
            .map_err(anyhow::Error::from)
            .and_then(|json| fs::write(&tmp, json).map_err(anyhow::Error::from))
            .and_then(|()| fs::rename(&tmp, &path).map_err(anyhow::Error::from));
        if let Err(e) = written {
            self.log(&format!(
                "cannot record the state in {}: {e:#}",
                path.display()
            ));
        }
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<u32> {
        let agent = &mut self.agents[i];
        let child = runtime::spawn_agent(
            &self.lab,
            &agent.node,
            &self.agent_binary,
            self.config.as_deref(),
        )?;
        let pid = child.id();
        agent.child = Some(child);
        agent.since = Instant::now();
        agent.restart_at = None;
        Ok(pid)
    }

    /// Starts the agents one after another, each ready before the next starts.
    fn start_all(&mut self, stop: &AtomicBool) -> anyhow::Result<()> {
        for i in 0..self.agents.len() {
            let node = self.agents[i].node.name.clone();
            self.phase = Phase::Starting { node: node.clone() };
            self.save();
            let pid = self.spawn(i)?;
            self.log(&format!("agent of {node} started (pid {pid})"));
            if let Err(e) = self.wait_ready(i, stop) {
                // The log goes with the lab when `up` fails, so the error carries its end.
                let tail = runtime::log_tail(&runtime::agent_log(&self.lab, &node), 20);
                let log = if tail.trim().is_empty() {
                    "its log is empty".to_string()
                } else {
                    format!("the end of its log:\n{tail}")
                };
                bail!("the agent of {node} did not become ready: {e:#}; {log}");
            }
            self.log(&format!("agent of {node} is ready"));
        }
        Ok(())
    }

    fn wait_ready(&mut self, i: usize, stop: &AtomicBool) -> anyhow::Result<()> {
        let socket = runtime::agent_socket(&self.lab, &self.agents[i].node.name);
        let deadline = Instant::now() + AGENT_READY_TIMEOUT;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            if stop.load(Ordering::SeqCst) {
                bail!("the supervisor was stopped");
            }
            if let Some(child) = self.agents[i].child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.agents[i].child = None;
                self.agents[i].last_exit = Some(status.to_string());
                bail!("it exited ({status})");
            }
            match weft_api::call(&socket, &weft_api::Request::Status) {
                Ok(weft_api::Response::Status(status)) if status.ready => return Ok(()),
                Ok(other) => last = format!("{other:?}"),
                Err(e) => last = e.to_string(),
            }
            thread::sleep(TICK);
        }
        bail!("not ready after {AGENT_READY_TIMEOUT:?}: {last}")
    }

    /// Notes the agents that exited and restarts those whose delay has passed.
    fn tend(&mut self) {
        let now = Instant::now();
        let mut changed = false;
        for i in 0..self.agents.len() {
            if let Some(status) = self.reap(i) {
                self.schedule_restart(i, status, now);
                changed = true;
            }
            if self.agents[i].restart_at.is_some_and(|at| at <= now) {
                self.restart(i);
                changed = true;
            }
        }
        if changed {
            self.save();
        }
    }

    fn reap(&mut self, i: usize) -> Option<ExitStatus> {
        let agent = &mut self.agents[i];
        let status = match agent.child.as_mut()?.try_wait() {
            Ok(status) => status?,
            Err(e) => {
                let message = format!("waiting for the agent of {}: {e}", agent.node.name);
                self.log(&message);
                return None;
            }
        };
        agent.child = None;
        agent.last_exit = Some(status.to_string());
        Some(status)
    }

    fn schedule_restart(&mut self, i: usize, status: ExitStatus, now: Instant) {
        let agent = &mut self.agents[i];
        let uptime = now.duration_since(agent.since);
        let delay = agent.backoff.delay_after(uptime);
        agent.restart_at = Some(now + delay);
        let message = format!(
            "agent of {} exited ({status}) after {:.1}s; restarting it in {delay:?}",
            agent.node.name,
            uptime.as_secs_f64()
        );
        self.log(&message);
    }

    fn restart(&mut self, i: usize) {
        let node = self.agents[i].node.name.clone();
        match self.spawn(i) {
            Ok(pid) => {
                self.agents[i].restarts += 1;
                let restarts = self.agents[i].restarts;
                self.log(&format!(
                    "agent of {node} restarted (pid {pid}, restart {restarts})"
                ));
            }
            Err(e) => {
                let agent = &mut self.agents[i];
                let delay = agent.backoff.delay_after(Duration::ZERO);
                agent.restart_at = Some(Instant::now() + delay);
                self.log(&format!(
                    "restarting the agent of {node} failed: {e:#}; trying again in {delay:?}"
                ));
            }
        }
    }

    fn handle(&mut self, request: Control) -> Reply {
        let node = match &request {
            Control::Stop { node } | Control::Start { node } => node.clone(),
        };
        let Some(i) = self.agents.iter().position(|a| a.node.name == node) else {
            return Reply::Refused {
                error: format!("lab {} has no node {node}", self.lab),
            };
        };
        let outcome = match request {
            Control::Stop { .. } => self.hold(i).map(|()| None),
            Control::Start { .. } => self.release(i).map(Some),
        };
        self.save();
        match outcome {
            Ok(pid) => Reply::Done {
                pid: pid.map(|p| p as i32),
            },
            Err(e) => Reply::Refused {
                error: format!("{e:#}"),
            },
        }
    }

    /// Stops the agent (SIGTERM, SIGKILL after [`STOP_TIMEOUT`]) and keeps it stopped.
    fn hold(&mut self, i: usize) -> anyhow::Result<()> {
        let agent = &mut self.agents[i];
        agent.held = true;
        agent.restart_at = None;
        let Some(mut child) = agent.child.take() else {
            return Ok(());
        };
        let pid = child.id();
        let status = terminate(&mut child)?;
        agent.last_exit = Some(status.to_string());
        let message = format!(
            "agent of {} (pid {pid}) stopped on request ({status}); held until started again",
            agent.node.name
        );
        self.log(&message);
        Ok(())
    }

    /// Starts the agent again if it does not run; its pid.
    fn release(&mut self, i: usize) -> anyhow::Result<u32> {
        self.agents[i].held = false;
        if let Some(pid) = self.agents[i].pid() {
            return Ok(pid);
        }
        self.agents[i].backoff = Backoff::default();
        let pid = self.spawn(i)?;
        let node = self.agents[i].node.name.clone();
        self.log(&format!("agent of {node} started on request (pid {pid})"));
        Ok(pid)
    }
}

/// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]; the exit status.
fn terminate(child: &mut Child) -> anyhow::Result<ExitStatus> {
    let pid = Pid::from_raw(child.id() as i32);
    if let Err(e) = kill(pid, Signal::SIGTERM) {
        return Err(e).with_context(|| format!("signalling {pid}"));
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.kill()?;
    Ok(child.wait()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_doubling_to_the_cap_and_start_over_after_a_stable_run() {
        let mut backoff = Backoff::default();
        let quick = Duration::from_millis(50);
        let delays: Vec<u128> = (0..7)
            .map(|_| backoff.delay_after(quick).as_millis())
            .collect();
        assert_eq!(delays, [200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff.delay_after(STABLE_UPTIME), FIRST_RESTART_DELAY);
        assert_eq!(backoff.delay_after(quick), Duration::from_millis(400));
    }

    #[test]
    fn the_state_file_round_trips() {
        let state = SupervisorState {
            pid: 42,
            phase: Phase::Supervising,
            agents: vec![AgentState {
                node: "vps1".into(),
                pid: Some(43),
                run: AgentRun::Running,
                restarts: 1,
                last_exit: Some("signal: 9 (SIGKILL)".into()),
            }],
        };
        let json = serde_json::to_string(&state).expect("json");
        assert!(json.contains(r#""phase":"supervising""#), "{json}");
        assert_eq!(
            serde_json::from_str::<SupervisorState>(&json).expect("parses"),
            state
        );
        assert_eq!(state.agent("vps1").map(|a| a.restarts), Some(1));
    }

    #[test]
    fn paths_are_in_the_labs_directory() {
        assert_eq!(
            state_path("abc"),
            PathBuf::from("/run/weft/labs/abc/supervisor.json")
        );
        assert_eq!(cgroup("abc"), PathBuf::from("weft-abc/supervisor"));
        assert_eq!(running_pid("nosuchlab"), None);
    }
}
