//! A watch response: newline-delimited `{"type":...,"object":...}` events streamed as one
//! chunked body, filtered per watch, with bookmarks and a timeout.

use std::{collections::VecDeque, convert::Infallible, sync::Arc, time::Duration};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use http_body::Frame;
use serde_json::json;
use tokio::{sync::mpsc, time::Instant};

use crate::{
    error::ApiError,
    registry::ResourceDef,
    server::Inner,
    state::{ListOptions, WatchStart, matches},
    store::{Event, EventType, StoredObject},
    table::TableRenderer,
};

/// Frames are cut at about this size when many events are ready at once.
const FRAME_BYTES: usize = 64 * 1024;

/// How each event's object is written.
#[derive(Clone)]
pub(crate) enum EventFormat {
    Object,
    /// `as=PartialObjectMetadata`: metadata only.
    Metadata,
    /// `kubectl get -w`: each object as a one-row Table.
    Table(TableRenderer),
}

pub(crate) struct WatchParams {
    pub def: Arc<ResourceDef>,
    pub version: String,
    pub namespace: Option<String>,
    pub filter: ListOptions,
    pub bookmarks: bool,
    pub timeout: Duration,
    pub format: EventFormat,
}

struct WatchState {
    inner: Arc<Inner>,
    params: WatchParams,
    pending: VecDeque<Bytes>,
    events: mpsc::Receiver<Arc<Event>>,
    bookmark: Option<tokio::time::Interval>,
    deadline: Instant,
    /// The newest event seen (delivered or filtered out).
    last_rv: u64,
    done: bool,
}

/// The body of a watch that started.
pub(crate) fn stream(
    inner: Arc<Inner>,
    params: WatchParams,
    start: WatchStart,
) -> impl Stream<Item = Result<Frame<Bytes>, Infallible>> + Send {
    let bookmark = params.bookmarks.then(|| {
        let period = inner
            .config
            .bookmark_interval
            .max(Duration::from_millis(10));
        tokio::time::interval_at(Instant::now() + period, period)
    });
    let deadline = Instant::now() + params.timeout;
    let mut state = WatchState {
        inner,
        params,
        pending: VecDeque::new(),
        events: start.events,
        bookmark,
        deadline,
        last_rv: 0,
        done: false,
    };
    for event in &start.initial {
        state.push_event(event);
    }
    if let Some(rv) = start.initial_end {
        state.last_rv = state.last_rv.max(rv);
        state.push_bookmark(rv, true);
    }
    futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(frame) = state.next_frame() {
                return Some((Ok(Frame::data(frame)), state));
            }
            if state.done {
                return None;
            }
            state.wait().await;
        }
    })
}

/// The body of a watch that could not start from its resourceVersion: one ERROR event, as the
/// apiserver answers a watch from a compacted resourceVersion (200 with a 410 Status inside).
pub(crate) fn error_stream(error: &ApiError) -> Bytes {
    let status = serde_json::to_value(error.to_status()).unwrap_or_else(|_| json!({}));
    let mut line =
        serde_json::to_vec(&json!({"type": "ERROR", "object": status})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

impl WatchState {
    fn next_frame(&mut self) -> Option<Bytes> {
        let first = self.pending.pop_front()?;
        if self.pending.is_empty() || first.len() >= FRAME_BYTES {
            return Some(first);
        }
        let mut frame = BytesMut::from(&first[..]);
        while frame.len() < FRAME_BYTES {
            let Some(next) = self.pending.pop_front() else {
                break;
            };
            frame.put_slice(&next);
        }
        Some(frame.freeze())
    }

    async fn wait(&mut self) {
        let bookmark = async {
            match self.bookmark.as_mut() {
                Some(interval) => {
                    interval.tick().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            event = self.events.recv() => match event {
                Some(event) => {
                    self.push_event(&event);
                    // Whatever else is already queued goes in the same frame.
                    while let Ok(event) = self.events.try_recv() {
                        self.push_event(&event);
                    }
                }
                None => self.done = true,
            },
            () = bookmark => self.send_bookmark(),
            () = tokio::time::sleep_until(self.deadline) => self.done = true,
        }
    }

    /// A bookmark at the newest resourceVersion this watch has everything up to: every event
    /// of the resource at or below the server's current one is in the queue already (events
    /// are queued while the state is locked), so the queue is drained first.
    fn send_bookmark(&mut self) {
        let current = self.inner.lock().rv;
        while let Ok(event) = self.events.try_recv() {
            self.push_event(&event);
        }
        let rv = current.max(self.last_rv);
        self.last_rv = rv;
        self.push_bookmark(rv, false);
    }

    fn push_bookmark(&mut self, rv: u64, initial_end: bool) {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({
            "kind": self.params.def.kind,
            "apiVersion": self.params.def.api_version(&self.params.version),
            "metadata": metadata,
        });
        let mut line =
            serde_json::to_vec(&json!({"type": "BOOKMARK", "object": object})).unwrap_or_default();
        line.push(b'\n');
        self.pending.push_back(Bytes::from(line));
    }

    fn push_event(&mut self, event: &Event) {
        self.last_rv = self.last_rv.max(event.rv);
        let Some(type_) = self.classify(event) else {
            return;
        };
        let object = match &self.params.format {
            EventFormat::Object => {
                crate::state::render(&self.params.def, &self.params.version, &event.object)
            }
            EventFormat::Metadata => crate::http::metadata_object(&event.object),
            EventFormat::Table(renderer) => {
                renderer.render_objects([event.object.as_ref()], event.rv, None)
            }
        };
        self.pending.push_back(event_line(type_, &object));
    }

    /// What the event is for this watch: an object that starts matching its selectors is
    /// ADDED, one that stops matching is DELETED, as the apiserver sends them.
    fn classify(&self, event: &Event) -> Option<EventType> {
        if self
            .params
            .namespace
            .as_ref()
            .is_some_and(|ns| *ns != event.object.namespace)
        {
            return None;
        }
        let now = self.matches(&event.object);
        match event.type_ {
            EventType::Added | EventType::Deleted => now.then_some(event.type_),
            EventType::Modified => {
                let before = event.old.as_ref().is_some_and(|old| self.matches(old));
                match (before, now) {
                    (true, true) => Some(EventType::Modified),
                    (false, true) => Some(EventType::Added),
                    (true, false) => Some(EventType::Deleted),
                    (false, false) => None,
                }
            }
        }
    }

    fn matches(&self, object: &StoredObject) -> bool {
        matches(object, &self.params.filter)
    }
}

fn event_line(type_: EventType, object: &[u8]) -> Bytes {
    let prefix = format!("{{\"type\":\"{}\",\"object\":", type_.name());
    let mut line = BytesMut::with_capacity(prefix.len() + object.len() + 2);
    line.put_slice(prefix.as_bytes());
    line.put_slice(object);
    line.put_slice(b"}\n");
    line.freeze()
}
