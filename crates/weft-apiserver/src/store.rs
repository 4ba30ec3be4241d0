//! Objects of one resource, kept as serialized JSON (what lists and watches send, so a list of
//! 20,000 objects copies no object), with the events that made them, for watch resume and
//! for lists at an older resourceVersion.

use std::{
    collections::{BTreeMap, VecDeque},
    ops::{Bound, ControlFlow},
    sync::Arc,
};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::{error::ApiError, meta, registry::ResourceDef};

/// `(namespace, name)`; the namespace is "" for cluster-scoped objects. Ordered as etcd keys
/// are, which is the order lists come in and what `continue` tokens point into.
pub(crate) type ObjKey = (String, String);

#[derive(Debug)]
pub(crate) struct StoredObject {
    pub namespace: String,
    pub name: String,
    pub rv: u64,
    pub json: Bytes,
    /// Sorted by key.
    pub labels: Vec<(String, String)>,
    /// Values of the resource's extra field selector keys, in their order.
    pub fields: Vec<String>,
}

impl StoredObject {
    /// `value` must already carry `metadata.resourceVersion` = `rv`.
    pub fn new(def: &ResourceDef, value: &Value, rv: u64) -> Result<Self, ApiError> {
        let json = serde_json::to_vec(value)
            .map_err(|e| ApiError::internal(format!("serializing: {e}")))?;
        Ok(StoredObject {
            namespace: meta::namespace(value).to_string(),
            name: meta::name(value).to_string(),
            rv,
            json: Bytes::from(json),
            labels: meta::labels(value),
            fields: def
                .field_keys
                .iter()
                .map(|key| meta::field_value(value, key))
                .collect(),
        })
    }

    pub fn key(&self) -> ObjKey {
        (self.namespace.clone(), self.name.clone())
    }

    pub fn value(&self) -> Result<Value, ApiError> {
        serde_json::from_slice(&self.json)
            .map_err(|e| ApiError::internal(format!("stored object: {e}")))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn name(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change. `old` is the object before it (none for ADDED); a DELETED event's `object` is
/// the last state with the deletion's resourceVersion.
#[derive(Debug)]
pub(crate) struct Event {
    pub rv: u64,
    pub type_: EventType,
    pub object: Arc<StoredObject>,
    pub old: Option<Arc<StoredObject>>,
}

/// One open watch: events go to it unless its namespace differs.
#[derive(Debug)]
struct Watcher {
    namespace: Option<String>,
    tx: mpsc::Sender<Arc<Event>>,
}

/// The objects of a collection as they were at a past resourceVersion: the keys that changed
/// since, with their state then (`None`: did not exist).
pub(crate) type Overlay = BTreeMap<ObjKey, Option<Arc<StoredObject>>>;

#[derive(Debug, Default)]
pub(crate) struct Collection {
    pub objects: BTreeMap<ObjKey, Arc<StoredObject>>,
    history: VecDeque<Arc<Event>>,
    /// Events at or below this were dropped from the history.
    compacted_rv: u64,
    last_event_rv: u64,
    watchers: Vec<Watcher>,
}

impl Collection {
    pub fn get(&self, namespace: &str, name: &str) -> Option<&Arc<StoredObject>> {
        self.objects.get(&(namespace.to_string(), name.to_string()))
    }

    /// Records a change: the object map, the history (trimmed to `history_size`), and every
    /// watcher's queue. A watcher whose queue is full is dropped (its stream ends; the client
    /// resumes from its last resourceVersion).
    pub fn record(&mut self, event: Event, history_size: usize) {
        let key = event.object.key();
        match event.type_ {
            EventType::Deleted => {
                self.objects.remove(&key);
            }
            EventType::Added | EventType::Modified => {
                self.objects.insert(key, event.object.clone());
            }
        }
        self.last_event_rv = event.rv;
        let event = Arc::new(event);
        self.history.push_back(event.clone());
        while self.history.len() > history_size {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted_rv = dropped.rv;
            }
        }
        self.watchers.retain(|w| {
            if w.namespace
                .as_ref()
                .is_some_and(|ns| *ns != event.object.namespace)
            {
                return !w.tx.is_closed();
            }
            match w.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(rv = event.rv, "closing a watch that does not keep up");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    /// A queue for a new watch; the caller sends it nothing older than now.
    pub fn subscribe(
        &mut self,
        namespace: Option<String>,
        limit: usize,
    ) -> mpsc::Receiver<Arc<Event>> {
        let (tx, rx) = mpsc::channel(limit.max(1));
        self.watchers.push(Watcher { namespace, tx });
        rx
    }

    pub fn watcher_count(&self) -> usize {
        self.watchers.iter().filter(|w| !w.tx.is_closed()).count()
    }

    /// Whether the history still covers everything after `rv`.
    fn covers(&self, rv: u64) -> bool {
        rv >= self.compacted_rv
    }

    /// The events after `rv`, oldest first; 410 Expired when some were already dropped.
    pub fn events_after(&self, rv: u64, current: u64) -> Result<Vec<Arc<Event>>, ApiError> {
        if !self.covers(rv) {
            return Err(too_old(rv, current));
        }
        let start = self.history.partition_point(|e| e.rv <= rv);
        Ok(self.history.range(start..).cloned().collect())
    }

    /// How the collection looked at `rv`: `None` when nothing changed since, else the keys
    /// that changed with their state then. 410 Expired when the history no longer reaches.
    pub fn overlay_at(&self, rv: u64, current: u64) -> Result<Option<Overlay>, ApiError> {
        if rv >= self.last_event_rv {
            return Ok(None);
        }
        if !self.covers(rv) {
            return Err(too_old(rv, current));
        }
        let mut overlay = Overlay::new();
        for event in self.history.iter().rev().take_while(|e| e.rv > rv) {
            overlay.insert(event.object.key(), event.old.clone());
        }
        Ok(Some(overlay))
    }

    /// Calls `f` on each object in key order, in `namespace` if given, after key `after` if
    /// given, as the collection was at the overlay's resourceVersion if given, until `f`
    /// breaks.
    pub fn scan(
        &self,
        namespace: Option<&str>,
        after: Option<&ObjKey>,
        overlay: Option<&Overlay>,
        mut f: impl FnMut(&Arc<StoredObject>) -> ControlFlow<()>,
    ) {
        let start: Bound<ObjKey> = match (after, namespace) {
            (Some(key), _) => Bound::Excluded(key.clone()),
            (None, Some(ns)) => Bound::Included((ns.to_string(), String::new())),
            (None, None) => Bound::Unbounded,
        };
        let in_scope = |key: &ObjKey| namespace.is_none_or(|ns| key.0 == ns);
        let empty = Overlay::new();
        let overlay = overlay.unwrap_or(&empty);
        let mut current = self
            .objects
            .range((start.clone(), Bound::Unbounded))
            .peekable();
        let mut past = overlay.range((start, Bound::Unbounded)).peekable();
        loop {
            let take_past = match (current.peek(), past.peek()) {
                (None, None) => return,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((now_key, _)), Some((past_key, _))) => past_key <= now_key,
            };
            let (key, object) = if take_past {
                let Some((key, then)) = past.next() else {
                    return;
                };
                if current.peek().is_some_and(|(now_key, _)| *now_key == key) {
                    current.next();
                }
                (key, then.clone())
            } else {
                let Some((key, object)) = current.next() else {
                    return;
                };
                (key, Some(object.clone()))
            };
            if !in_scope(key) {
                return;
            }
            if let Some(object) = object
                && f(&object).is_break()
            {
                return;
            }
        }
    }
}

fn too_old(rv: u64, current: u64) -> ApiError {
    ApiError::expired(format!("too old resource version: {rv} ({current})"))
}
