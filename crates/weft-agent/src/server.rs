//! The agent's main loop and its local API.
//!
//! The loop polls the source, reconciles, collects garbage and answers API requests, one thing
//! at a time; it never touches a client's socket. The API is served by threads of its own: an
//! acceptor, and a thread per connection (at most [`MAX_CONNECTIONS`]) that reads the request
//! and writes the answer with timeouts ([`weft_api::SERVER_TIMEOUT`]). A connection thread
//! hands its request to the loop as an [`ApiCall`] through a channel and waits for the answer
//! on a channel of its own; `Status` it answers itself from the status the loop last published
//! ([`ApiSocket::publish`]), so that `weft status` answers during a long reconcile too. A client
//! that connects and says nothing costs one thread until its timeout, and delays no one.

use std::{
    fs,
    os::unix::{
        fs::PermissionsExt as _,
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use weft_api::{AgentStatus, ApiFailure, Request, Response, SERVER_TIMEOUT};
use weft_datapath::Datapath;

use crate::{
    agent::{Agent, codes},
    files::remove_if_present,
    log,
    source::Source,
};

/// How often the source is polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often the datapath is reconciled when nothing changed (it may have drifted).
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(5);
/// How long the loop waits for a request when there is nothing else to do.
const TICK: Duration = Duration::from_millis(20);
/// How often the status is published when nothing happened (attachments may change under it).
const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);
/// Connections served at once; more are answered "try again later" and closed.
pub const MAX_CONNECTIONS: usize = 64;
/// A request for the loop, and where its answer goes.
pub struct ApiCall {
    request: Request,
    reply: SyncSender<Response>,
}

/// The status the loop last published; `None` until it has.
#[derive(Clone, Default)]
struct StatusBoard(Arc<Mutex<Option<AgentStatus>>>);

impl StatusBoard {
    fn set(&self, status: AgentStatus) {
        if let Ok(mut board) = self.0.lock() {
            *board = Some(status);
        }
    }

    fn get(&self) -> Option<AgentStatus> {
        self.0.lock().ok().and_then(|board| board.clone())
    }
}

/// Connections being served, bounded: a slot is taken for each and given back when its
/// thread ends.
#[derive(Clone, Default)]
pub(crate) struct Connections(Arc<AtomicUsize>);

/// A taken slot of [`Connections`].
pub(crate) struct Slot(Arc<AtomicUsize>);

impl Connections {
    pub(crate) fn take(&self, max: usize) -> Option<Slot> {
        let taken = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        taken.ok().map(|_| Slot(self.0.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The listening socket and its acceptor thread; both go when it is dropped.
pub struct ApiSocket {
    path: PathBuf,
    calls: Receiver<ApiCall>,
    status: StatusBoard,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl ApiSocket {
    /// Binds `path` (mode 0600), creating its directory and replacing a stale socket file, and
    /// starts accepting connections.
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
        let (calls_in, calls) = mpsc::channel();
        let status = StatusBoard::default();
        let stopping = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (status, stopping) = (status.clone(), stopping.clone());
            thread::Builder::new()
                .name("api-accept".into())
                .spawn(move || accept(&listener, &calls_in, &status, &stopping))
                .context("starting the API's acceptor")?
        };
        log!("listening on {}", path.display());
        Ok(ApiSocket {
            path: path.to_path_buf(),
            calls,
            status,
            stopping,
            acceptor: Some(acceptor),
        })
    }

    /// The next request, waiting at most `wait` for one.
    pub fn next_call(&self, wait: Duration) -> Option<ApiCall> {
        match self.calls.recv_timeout(wait) {
            Ok(call) => Some(call),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                // No acceptor any more: still pace the loop.
                thread::sleep(wait);
                None
            }
        }
    }

    /// What `Status` requests are answered with from now on.
    pub fn publish(&self, status: AgentStatus) {
        self.status.set(status);
    }
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        // The acceptor waits in accept(): a connection of our own wakes it to see the flag.
        let _ = UnixStream::connect(&self.path);
        if let Some(acceptor) = self.acceptor.take()
            && acceptor.join().is_err()
        {
            log!("api: the acceptor panicked");
        }
        match remove_if_present(&self.path) {
            Ok(_) => log!("removed socket {}", self.path.display()),
            Err(e) => log!("{e:#}"),
        }
    }
}

/// Accepts connections until `stopping`, each served by a thread of its own.
fn accept(
    listener: &UnixListener,
    calls: &Sender<ApiCall>,
    status: &StatusBoard,
    stopping: &AtomicBool,
) {
    let connections = Connections::default();
    for stream in listener.incoming() {
        if stopping.load(Ordering::Relaxed) {
            return;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                log!("api: accept: {e}");
                // Out of descriptors, most likely: let connections finish.
                thread::sleep(TICK);
                continue;
            }
        };
        let Some(slot) = connections.take(MAX_CONNECTIONS) else {
            refuse_busy(&stream);
            continue;
        };
        let (calls, status) = (calls.clone(), status.clone());
        let spawned = thread::Builder::new()
            .name("api-conn".into())
            .spawn(move || {
                serve_connection(&stream, &calls, &status);
                drop(slot);
            });
        if let Err(e) = spawned {
            log!("api: cannot start a connection's thread: {e}");
        }
    }
}

fn failure(code: u32, msg: &str, details: &str) -> Response {
    Response::Error(ApiFailure {
        code,
        msg: msg.into(),
        details: details.into(),
    })
}

/// Answers "try again later" without waiting for the client.
fn refuse_busy(stream: &UnixStream) {
    let busy = failure(
        codes::TRY_AGAIN_LATER,
        "the Weft agent is busy",
        &format!("{MAX_CONNECTIONS} connections are being served"),
    );
    if stream.set_nonblocking(true).is_ok() {
        let _ = weft_api::write_response(stream, &busy, SERVER_TIMEOUT);
    }
}

/// Reads the request, has it answered, writes the answer; every step within its timeout.
fn serve_connection(stream: &UnixStream, calls: &Sender<ApiCall>, status: &StatusBoard) {
    let response = match weft_api::read_request(stream, SERVER_TIMEOUT) {
        Ok(Ok(Request::Status)) => match status.get() {
            Some(status) => Response::Status(status),
            None => ask_the_loop(calls, Request::Status),
        },
        Ok(Ok(request)) => ask_the_loop(calls, request),
        Ok(Err(bad)) => Response::Error(bad),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
        Err(e) => {
            log!("api: no request from a client within {SERVER_TIMEOUT:?}: {e}");
            return;
        }
    };
    if let Err(e) = weft_api::write_response(stream, &response, SERVER_TIMEOUT) {
        log!("api: answering a client: {e}");
    }
}

/// Hands `request` to the loop and waits for its answer.
fn ask_the_loop(calls: &Sender<ApiCall>, request: Request) -> Response {
    let (reply, answer) = mpsc::sync_channel(1);
    // The connection waits as long as its client does (`Request::answer_within`).
    let within = request.answer_within();
    if calls.send(ApiCall { request, reply }).is_err() {
        return failure(codes::TRY_AGAIN_LATER, "the Weft agent is stopping", "");
    }
    answer.recv_timeout(within).unwrap_or_else(|_| {
        failure(
            codes::TRY_AGAIN_LATER,
            "the Weft agent did not answer in time",
            "it is busy reconciling; try again",
        )
    })
}

/// Runs until `stop` is set: polls the source, reconciles on every change and every
/// [`RESYNC_INTERVAL`], answers the API's requests in between. Maps and links stay pinned
/// when it returns.
pub fn run<D: Datapath>(
    agent: &mut Agent<D>,
    source: &mut dyn Source,
    socket: &ApiSocket,
    stop: &AtomicBool,
) {
    socket.publish(agent.status());
    let mut last_poll = Instant::now();
    let mut last_reconcile = Instant::now();
    let mut last_publish = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let mut changed = false;
        if last_poll.elapsed() >= POLL_INTERVAL {
            last_poll = Instant::now();
            match source.poll() {
                Ok(Some(store)) => {
                    agent.update_store(store);
                    last_reconcile = Instant::now();
                    changed = true;
                }
                Ok(None) => {}
                Err(e) => log!("keeping the previous cluster state: {e:#}"),
            }
        }
        if last_reconcile.elapsed() >= RESYNC_INTERVAL {
            agent.reconcile();
            last_reconcile = Instant::now();
            changed = true;
        }
        agent.collect_garbage_if_due(Instant::now());
        if changed || last_publish.elapsed() >= PUBLISH_INTERVAL {
            socket.publish(agent.status());
            last_publish = Instant::now();
        }
        let mut wait = TICK;
        while let Some(call) = socket.next_call(wait) {
            answer(agent, socket, call);
            last_publish = Instant::now();
            wait = Duration::ZERO;
        }
    }
    log!("stopping; maps and links stay pinned");
}

/// Handles one request; publishes the status it leaves before the client hears the answer,
/// so that a `Status` after it sees its effect.
fn answer<D: Datapath>(agent: &mut Agent<D>, socket: &ApiSocket, call: ApiCall) {
    let response = agent.handle(call.request);
    socket.publish(agent.status());
    // The client may have given up waiting: no error of the loop's.
    let _ = call.reply.send(response);
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
