//! The agent's main loop: answers the local API on a unix socket, polls the source, reconciles.
//! One thread: requests are handled one at a time, between source polls.

use std::{
    fs,
    io::ErrorKind,
    os::unix::{fs::PermissionsExt as _, net::UnixListener},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use weft_datapath::Datapath;

use crate::{agent::Agent, files::remove_if_present, log, source::Source};

/// How often the source is polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often the datapath is reconciled when nothing changed (it may have drifted).
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(5);
/// How long the loop sleeps when there is nothing to do.
const TICK: Duration = Duration::from_millis(20);

/// The listening socket; removed when dropped.
pub struct ApiSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ApiSocket {
    /// Binds `path` (mode 0600), creating its directory and replacing a stale socket file.
    pub fn bind(path: &Path) -> anyhow::Result<ApiSocket> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        if remove_if_present(path)? {
            log!("removed stale socket {}", path.display());
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", path.display()))?;
        listener
            .set_nonblocking(true)
            .context("making the API socket non-blocking")?;
        log!("listening on {}", path.display());
        Ok(ApiSocket {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Answers every connection waiting now; returns how many.
    pub fn serve_pending<D: Datapath>(&self, agent: &mut Agent<D>) -> usize {
        let mut served = 0;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    served += 1;
                    if let Err(e) = stream.set_nonblocking(false) {
                        log!("api: {e}");
                        continue;
                    }
                    if let Err(e) = weft_api::serve(&stream, |request| agent.handle(request)) {
                        log!("api: {e}");
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return served,
                Err(e) => {
                    log!("api: accept: {e}");
                    return served;
                }
            }
        }
    }
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        match remove_if_present(&self.path) {
            Ok(_) => log!("removed socket {}", self.path.display()),
            Err(e) => log!("{e:#}"),
        }
    }
}

/// Runs until `stop` is set: serves the API, polls the source, reconciles on every change and
/// every [`RESYNC_INTERVAL`]. Maps and links stay pinned when it returns.
pub fn run<D: Datapath>(
    agent: &mut Agent<D>,
    source: &mut dyn Source,
    socket: &ApiSocket,
    stop: &AtomicBool,
) {
    let mut last_poll = Instant::now();
    let mut last_reconcile = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let served = socket.serve_pending(agent) + agent.serve_health_checks();
        if last_poll.elapsed() >= POLL_INTERVAL {
            last_poll = Instant::now();
            match source.poll() {
                Ok(Some(store)) => {
                    agent.update_store(store);
                    last_reconcile = Instant::now();
                }
                Ok(None) => {}
                Err(e) => log!("keeping the previous cluster state: {e:#}"),
            }
        }
        if last_reconcile.elapsed() >= RESYNC_INTERVAL {
            agent.reconcile();
            last_reconcile = Instant::now();
        }
        agent.collect_garbage_if_due(Instant::now());
        if served == 0 {
            thread::sleep(TICK);
        }
    }
    log!("stopping; maps and links stay pinned");
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Makes SIGTERM and SIGINT set the returned flag instead of killing the process.
pub fn stop_on_signals() -> anyhow::Result<&'static AtomicBool> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
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
