//! The watch cache's state, always used under one lock: the current objects by key, a bounded
//! ring of the most recent changes, and the registered watchers.
//!
//! Invariant: every change with a revision after `oldest` is in the ring, so a watch that
//! starts after any revision `>= oldest` can be replayed from it; an older start is `Expired`.
//! Registering a watcher (replay + channel) and dispatching a change both happen under the
//! lock, so a watcher sees each change exactly once, in revision order.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::storage::event::{Change, ChangeKind};
use crate::storage::{KeyPrefix, Predicate, StorageError, WatchEvent};

/// Where a new watcher starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StartFrom {
    /// Replay the current objects as `ADDED`, then follow.
    Current,
    /// Every change after this revision.
    After(i64),
}

#[derive(Debug)]
struct Watcher {
    prefix: KeyPrefix,
    predicate: Predicate,
    bookmarks: bool,
    /// Changes at or before this revision are not for this watcher.
    start_after: i64,
    /// Revision of the last bookmark sent, so idle ticks send none twice.
    last_bookmark: i64,
    sender: mpsc::Sender<WatchEvent>,
}

impl Watcher {
    /// Queues an event without blocking the cache; `false` when the watcher must go (gone,
    /// or too slow to keep its buffer from filling, as upstream's cacher drops slow watchers).
    fn offer(&self, event: WatchEvent) -> bool {
        match self.sender.try_send(event) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                log::warn!(
                    "watch cache: dropping a watcher of {} that fell {} events behind",
                    self.prefix,
                    self.sender.max_capacity()
                );
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }
}

#[derive(Debug)]
pub(super) struct CacheState {
    objects: BTreeMap<String, Arc<Value>>,
    ring: VecDeque<Change>,
    ring_capacity: usize,
    oldest: i64,
    revision: i64,
    ready: bool,
    watchers: HashMap<u64, Watcher>,
    next_watcher_id: u64,
}

impl CacheState {
    pub fn new(ring_capacity: usize) -> Self {
        Self {
            objects: BTreeMap::new(),
            ring: VecDeque::with_capacity(ring_capacity),
            ring_capacity: ring_capacity.max(1),
            oldest: 0,
            revision: 0,
            ready: false,
            watchers: HashMap::new(),
            next_watcher_id: 0,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Revision after which every change is still in the ring.
    pub fn oldest(&self) -> i64 {
        self.oldest
    }

    /// Watchers whose stream is still open.
    pub fn watcher_count(&self) -> usize {
        self.watchers
            .values()
            .filter(|watcher| !watcher.sender.is_closed())
            .count()
    }

    /// Replaces everything with a fresh listing taken at `revision`. Existing watchers are
    /// ended: they may have missed changes while the cache was not following etcd.
    pub fn replace(&mut self, entries: Vec<(String, Arc<Value>)>, revision: i64) {
        self.objects = entries.into_iter().collect();
        self.ring.clear();
        self.oldest = revision;
        self.revision = revision;
        self.ready = true;
        self.watchers.clear();
    }

    /// Marks the cache as not following etcd and ends every watcher.
    pub fn invalidate(&mut self) {
        self.ready = false;
        self.watchers.clear();
    }

    /// Applies one change from etcd and hands it to every interested watcher.
    pub fn apply(&mut self, change: Change) {
        match change.kind {
            ChangeKind::Created | ChangeKind::Updated => {
                self.objects
                    .insert(change.key.clone(), change.object.clone());
            }
            ChangeKind::Deleted => {
                self.objects.remove(&change.key);
            }
        }
        self.revision = self.revision.max(change.revision);
        self.watchers.retain(|_, watcher| {
            if change.revision <= watcher.start_after || !watcher.prefix.contains(&change.key) {
                return true;
            }
            match change.to_event(&watcher.predicate) {
                Some(event) => watcher.offer(event),
                None => true,
            }
        });
        if self.ring.len() == self.ring_capacity
            && let Some(evicted) = self.ring.pop_front()
        {
            self.oldest = evicted.revision;
        }
        self.ring.push_back(change);
    }

    /// etcd reported that every change up to `revision` has been delivered.
    pub fn advance(&mut self, revision: i64) {
        self.revision = self.revision.max(revision);
    }

    /// Sends a `BOOKMARK` at the current revision to each watcher that asked for them and has
    /// not had one at this revision yet. A full buffer skips the bookmark (it is a hint).
    pub fn send_bookmarks(&mut self) {
        let revision = self.revision;
        self.watchers.retain(|_, watcher| {
            if !watcher.bookmarks
                || revision <= watcher.start_after
                || revision <= watcher.last_bookmark
            {
                return !watcher.sender.is_closed();
            }
            let bookmark = WatchEvent::Bookmark {
                resource_version: revision,
            };
            match watcher.sender.try_send(bookmark) {
                Ok(()) => {
                    watcher.last_bookmark = revision;
                    true
                }
                Err(TrySendError::Full(_)) => true,
                Err(TrySendError::Closed(_)) => false,
            }
        });
    }

    /// The current objects under `prefix` that match `predicate`, in key order.
    pub fn list(&self, prefix: &KeyPrefix, predicate: &Predicate) -> Vec<Arc<Value>> {
        self.objects
            .range(prefix.as_str().to_owned()..)
            .take_while(|(key, _)| prefix.contains(key))
            .filter(|(_, object)| predicate.matches(object))
            .map(|(_, object)| object.clone())
            .collect()
    }

    /// Registers a watcher and returns the events it must see before live ones.
    pub fn register(
        &mut self,
        prefix: &KeyPrefix,
        predicate: Predicate,
        bookmarks: bool,
        start: StartFrom,
        buffer: usize,
    ) -> Result<(VecDeque<WatchEvent>, mpsc::Receiver<WatchEvent>), StorageError> {
        let (replay, start_after) = match start {
            StartFrom::Current => {
                let replay = self
                    .list(prefix, &predicate)
                    .into_iter()
                    .map(WatchEvent::Added)
                    .collect();
                (replay, self.revision)
            }
            StartFrom::After(revision) if revision < self.oldest => {
                return Err(StorageError::Expired {
                    prefix: prefix.to_string(),
                    requested: revision,
                    oldest: Some(self.oldest),
                    inconsistent_continue: None,
                });
            }
            StartFrom::After(revision) => {
                let replay = self
                    .ring
                    .iter()
                    .filter(|change| change.revision > revision && prefix.contains(&change.key))
                    .filter_map(|change| change.to_event(&predicate))
                    .collect();
                (replay, revision.max(self.revision))
            }
        };
        let (sender, receiver) = mpsc::channel(buffer.max(1));
        let id = self.next_watcher_id;
        self.next_watcher_id += 1;
        self.watchers.insert(
            id,
            Watcher {
                prefix: prefix.clone(),
                predicate,
                bookmarks,
                start_after,
                last_bookmark: 0,
                sender,
            },
        );
        Ok((replay, receiver))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::storage::Resource;
    use crate::storage::object;

    fn pods() -> KeyPrefix {
        Resource::core("pods").unwrap().prefix()
    }

    fn change(name: &str, revision: i64, kind: ChangeKind) -> Change {
        let mut value = json!({"metadata": {"name": name, "namespace": "ns"}});
        object::set_resource_version(&mut value, revision);
        Change {
            key: format!("/registry/pods/ns/{name}"),
            revision,
            kind,
            object: Arc::new(value),
            previous: None,
        }
    }

    #[test]
    fn ring_eviction_moves_the_oldest_revision() {
        let mut state = CacheState::new(2);
        state.replace(Vec::new(), 10);
        for revision in 11..=14 {
            state.apply(change(
                &format!("p{revision}"),
                revision,
                ChangeKind::Created,
            ));
        }
        // 13 and 14 are in the ring: a watch after 12 is served, one after 11 is not.
        assert_eq!(state.oldest(), 12);
        let (replay, _rx) = state
            .register(
                &pods(),
                Predicate::everything(),
                false,
                StartFrom::After(12),
                8,
            )
            .unwrap();
        assert_eq!(replay.len(), 2);
        let expired = state.register(
            &pods(),
            Predicate::everything(),
            false,
            StartFrom::After(11),
            8,
        );
        assert!(matches!(
            expired,
            Err(StorageError::Expired {
                requested: 11,
                oldest: Some(12),
                ..
            })
        ));
    }

    #[test]
    fn watcher_sees_each_change_once_after_replay() {
        let mut state = CacheState::new(10);
        state.replace(Vec::new(), 1);
        state.apply(change("a", 2, ChangeKind::Created));
        let (replay, mut rx) = state
            .register(
                &pods(),
                Predicate::everything(),
                false,
                StartFrom::After(1),
                8,
            )
            .unwrap();
        state.apply(change("a", 3, ChangeKind::Updated));
        assert_eq!(replay.len(), 1);
        assert_eq!(replay[0].resource_version(), Some(2));
        let live = rx.try_recv().unwrap();
        assert_eq!(live.type_name(), "MODIFIED");
        assert_eq!(live.resource_version(), Some(3));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn slow_watcher_is_dropped_not_blocking() {
        let mut state = CacheState::new(10);
        state.replace(Vec::new(), 1);
        let (_, mut rx) = state
            .register(
                &pods(),
                Predicate::everything(),
                false,
                StartFrom::After(1),
                1,
            )
            .unwrap();
        state.apply(change("a", 2, ChangeKind::Created));
        state.apply(change("b", 3, ChangeKind::Created));
        assert_eq!(state.watcher_count(), 0);
        assert!(rx.try_recv().is_ok());
    }

    #[test]
    fn bookmarks_only_for_watchers_that_asked_and_only_once_per_revision() {
        let mut state = CacheState::new(10);
        state.replace(Vec::new(), 5);
        let (_, mut plain) = state
            .register(
                &pods(),
                Predicate::everything(),
                false,
                StartFrom::Current,
                8,
            )
            .unwrap();
        let (_, mut wants) = state
            .register(
                &pods(),
                Predicate::everything(),
                true,
                StartFrom::After(5),
                8,
            )
            .unwrap();
        state.advance(7);
        state.send_bookmarks();
        state.send_bookmarks();
        assert!(plain.try_recv().is_err());
        assert_eq!(wants.try_recv().unwrap().resource_version(), Some(7));
        assert!(wants.try_recv().is_err());
    }
}
