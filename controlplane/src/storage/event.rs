//! Watch events, per-watcher filtering, and the stream a watcher reads.
//!
//! Both the direct etcd watch and the watch cache turn each stored change into a [`Change`] and
//! run it through [`Change::to_event`] for every watcher, which applies that watcher's
//! [`Predicate`] the way upstream's `watchChan.transform` does: an update that moves an object
//! into the filter is `ADDED`, one that moves it out is `DELETED` (carrying the old state).

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::StorageError;
use super::object;

/// One event of a watch, as the REST layer will encode it (`{"type": ..., "object": ...}`).
#[derive(Debug)]
pub enum WatchEvent {
    Added(Arc<Value>),
    Modified(Arc<Value>),
    /// The object's last state, with its resourceVersion set to the revision of the delete.
    Deleted(Arc<Value>),
    /// No object changed; the watcher has seen everything up to `resource_version`.
    Bookmark {
        resource_version: i64,
    },
    /// The watch cannot go on (for example [`StorageError::Expired`]); the stream ends after it.
    Error(StorageError),
}

impl WatchEvent {
    /// The `type` field of the event on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            WatchEvent::Added(_) => "ADDED",
            WatchEvent::Modified(_) => "MODIFIED",
            WatchEvent::Deleted(_) => "DELETED",
            WatchEvent::Bookmark { .. } => "BOOKMARK",
            WatchEvent::Error(_) => "ERROR",
        }
    }

    /// The object of an `ADDED`, `MODIFIED` or `DELETED` event.
    pub fn object(&self) -> Option<&Value> {
        match self {
            WatchEvent::Added(object)
            | WatchEvent::Modified(object)
            | WatchEvent::Deleted(object) => Some(object),
            WatchEvent::Bookmark { .. } | WatchEvent::Error(_) => None,
        }
    }

    /// The resourceVersion the event carries (of its object, or of the bookmark).
    pub fn resource_version(&self) -> Option<i64> {
        match self {
            WatchEvent::Bookmark { resource_version } => Some(*resource_version),
            _ => self
                .object()
                .and_then(|object| object::resource_version(object).ok().flatten()),
        }
    }
}

type MatchFn = dyn Fn(&Value) -> bool + Send + Sync;

/// A watcher's or list's filter (label and field selectors will compile to one).
#[derive(Clone, Default)]
pub struct Predicate(Option<Arc<MatchFn>>);

impl Predicate {
    /// Matches every object.
    pub fn everything() -> Self {
        Self(None)
    }

    pub fn new(matches: impl Fn(&Value) -> bool + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(matches)))
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.as_ref().is_none_or(|matches| matches(object))
    }

    pub fn is_everything(&self) -> bool {
        self.0.is_none()
    }
}

impl fmt::Debug for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_everything() {
            "Predicate(everything)"
        } else {
            "Predicate(fn)"
        })
    }
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Created,
    Updated,
    Deleted,
}

/// One stored change, before any watcher's filter is applied.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub key: String,
    pub revision: i64,
    pub kind: ChangeKind,
    /// The new state; for a delete, the last state stamped with the delete's revision.
    pub object: Arc<Value>,
    /// The state before an update, as it was stored (with its own revision), when known.
    pub previous: Option<Arc<Value>>,
}

impl Change {
    /// The event a watcher with `predicate` sees for this change, if any.
    pub fn to_event(&self, predicate: &Predicate) -> Option<WatchEvent> {
        match self.kind {
            ChangeKind::Created => predicate
                .matches(&self.object)
                .then(|| WatchEvent::Added(self.object.clone())),
            ChangeKind::Deleted => predicate
                .matches(&self.object)
                .then(|| WatchEvent::Deleted(self.object.clone())),
            ChangeKind::Updated if predicate.is_everything() => {
                Some(WatchEvent::Modified(self.object.clone()))
            }
            ChangeKind::Updated => {
                let now = predicate.matches(&self.object);
                let before = self
                    .previous
                    .as_deref()
                    .is_some_and(|previous| predicate.matches(previous));
                match (before, now) {
                    (true, true) => Some(WatchEvent::Modified(self.object.clone())),
                    (false, true) => Some(WatchEvent::Added(self.object.clone())),
                    (true, false) => {
                        // Leaving the filter looks like a delete at this change's revision.
                        let mut last = self.previous.as_deref().cloned().unwrap_or_default();
                        object::set_resource_version(&mut last, self.revision);
                        Some(WatchEvent::Deleted(Arc::new(last)))
                    }
                    (false, false) => None,
                }
            }
        }
    }
}

/// The receiving end of a watch. Dropping it stops the watch.
#[derive(Debug)]
pub struct WatchStream {
    pending: VecDeque<WatchEvent>,
    receiver: mpsc::Receiver<WatchEvent>,
    producer: Option<JoinHandle<()>>,
}

impl WatchStream {
    pub(crate) fn new(
        pending: VecDeque<WatchEvent>,
        receiver: mpsc::Receiver<WatchEvent>,
        producer: Option<JoinHandle<()>>,
    ) -> Self {
        Self {
            pending,
            receiver,
            producer,
        }
    }

    /// The next event; `None` once the watch has ended (after an `Error` event, when the
    /// server stopped it, or when a slow watcher was dropped). Clients then watch again.
    pub async fn next(&mut self) -> Option<WatchEvent> {
        if let Some(event) = self.pending.pop_front() {
            return Some(event);
        }
        self.receiver.recv().await
    }

    /// Poll form of [`WatchStream::next`], for adapters such as `futures::stream::poll_fn`
    /// (a streaming HTTP body).
    pub fn poll_next(&mut self, context: &mut Context<'_>) -> Poll<Option<WatchEvent>> {
        if let Some(event) = self.pending.pop_front() {
            return Poll::Ready(Some(event));
        }
        self.receiver.poll_recv(context)
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        if let Some(producer) = self.producer.take() {
            producer.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, app: &str, revision: i64) -> Arc<Value> {
        let mut object = json!({"metadata": {"name": name, "labels": {"app": app}}});
        object::set_resource_version(&mut object, revision);
        Arc::new(object)
    }

    fn web_only() -> Predicate {
        Predicate::new(|object| object.pointer("/metadata/labels/app") == Some(&json!("web")))
    }

    fn update(previous: Arc<Value>, object: Arc<Value>) -> Change {
        Change {
            key: "/registry/pods/ns/a".into(),
            revision: 9,
            kind: ChangeKind::Updated,
            object,
            previous: Some(previous),
        }
    }

    #[test]
    fn update_into_filter_is_added() {
        let change = update(pod("a", "db", 5), pod("a", "web", 9));
        assert!(matches!(
            change.to_event(&web_only()),
            Some(WatchEvent::Added(_))
        ));
        assert!(matches!(
            change.to_event(&Predicate::everything()),
            Some(WatchEvent::Modified(_))
        ));
    }

    #[test]
    fn update_out_of_filter_is_deleted_at_the_update_revision() {
        let change = update(pod("a", "web", 5), pod("a", "db", 9));
        let Some(WatchEvent::Deleted(last)) = change.to_event(&web_only()) else {
            panic!("expected DELETED");
        };
        assert_eq!(last["metadata"]["labels"]["app"], "web");
        assert_eq!(last["metadata"]["resourceVersion"], "9");
    }

    #[test]
    fn update_outside_filter_is_invisible() {
        let change = update(pod("a", "db", 5), pod("a", "db", 9));
        assert!(change.to_event(&web_only()).is_none());
    }
}
