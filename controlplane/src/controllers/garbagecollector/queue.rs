//! A work queue of uids with client-go's workqueue semantics: an item is queued at most
//! once, never handed to two workers at once (an item added while it is processed is queued
//! again when it is done), and retried with a per-item exponential backoff.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use super::graph::Uid;

const FIRST_RETRY: Duration = Duration::from_millis(5);
const LONGEST_RETRY: Duration = Duration::from_secs(60);

/// The queue.
#[derive(Debug, Default)]
pub struct WorkQueue {
    state: Mutex<State>,
    ready: Notify,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Uid>,
    dirty: HashSet<Uid>,
    processing: HashSet<Uid>,
    failures: HashMap<Uid, u32>,
}

impl WorkQueue {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `uid` unless it is queued already.
    pub fn add(&self, uid: Uid) {
        let mut state = self.state();
        if !state.dirty.insert(uid.clone()) {
            return;
        }
        if !state.processing.contains(&uid) {
            state.queue.push_back(uid);
            drop(state);
            self.ready.notify_one();
        }
    }

    /// Queues `uid` after its backoff, which doubles with each failure.
    pub fn add_after_failure(self: &Arc<Self>, uid: Uid) {
        let failures = {
            let mut state = self.state();
            let failures = state.failures.entry(uid.clone()).or_default();
            *failures = failures.saturating_add(1);
            *failures
        };
        let delay = FIRST_RETRY
            .saturating_mul(1 << failures.saturating_sub(1).min(20))
            .min(LONGEST_RETRY);
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(uid);
        });
    }

    /// Forgets the failures of `uid`.
    pub fn forget(&self, uid: &str) {
        self.state().failures.remove(uid);
    }

    /// The next item; it belongs to the caller until [`WorkQueue::done`].
    pub async fn next(&self) -> Uid {
        loop {
            {
                let mut state = self.state();
                if let Some(uid) = state.queue.pop_front() {
                    state.dirty.remove(&uid);
                    state.processing.insert(uid.clone());
                    if !state.queue.is_empty() {
                        self.ready.notify_one();
                    }
                    return uid;
                }
            }
            self.ready.notified().await;
        }
    }

    /// Ends the processing of `uid`: queued again if it was added meanwhile.
    pub fn done(&self, uid: &str) {
        let mut state = self.state();
        state.processing.remove(uid);
        if state.dirty.contains(uid) {
            state.queue.push_back(uid.to_owned());
            drop(state);
            self.ready.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_item_added_while_processed_comes_back_once_done() {
        let queue = WorkQueue::default();
        queue.add("a".into());
        queue.add("a".into());
        assert_eq!(queue.next().await, "a");
        queue.add("a".into());
        queue.add("b".into());
        assert_eq!(queue.next().await, "b");
        queue.done("a");
        assert_eq!(queue.next().await, "a");
        queue.done("a");
        queue.done("b");
        assert!(queue.state().queue.is_empty());
    }
}
