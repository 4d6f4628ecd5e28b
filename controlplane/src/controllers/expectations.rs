//! What a controller is waiting to see in its watch cache after its own writes (upstream's
//! `UIDTrackingControllerExpectations`): the names of the objects it created and the UIDs of
//! those it deleted. Until the cache shows them, the controller must not count again, or a
//! burst of watch events would make it create (or delete) twice.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// After this long, unseen writes are given up on (upstream's `ExpectationsTimeout`).
pub const TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Writes not yet observed, per controller key (`namespace/name`).
#[derive(Debug, Default)]
pub struct Expectations {
    pending: Mutex<HashMap<String, Pending>>,
}

#[derive(Debug)]
struct Pending {
    creations: HashSet<String>,
    deletions: HashSet<String>,
    since: Instant,
}

/// How an object the controller wrote looks in its cache now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not in the cache.
    Absent,
    /// In the cache.
    Present,
    /// In the cache with a deletion timestamp.
    Deleting,
}

impl Expectations {
    /// Remembers objects created (by name) and deleted (by UID) for `key`.
    pub fn expect(&self, key: &str, created: Vec<String>, deleted: Vec<String>) {
        if created.is_empty() && deleted.is_empty() {
            return;
        }
        let mut pending = self.lock();
        let entry = pending.entry(key.to_owned()).or_insert_with(|| Pending {
            creations: HashSet::new(),
            deletions: HashSet::new(),
            since: Instant::now(),
        });
        entry.creations.extend(created);
        entry.deletions.extend(deleted);
        entry.since = Instant::now();
    }

    /// Whether every write of `key` has been observed: each created name is in the cache and
    /// each deleted UID is gone or being deleted. `by_name` and `by_uid` look into the cache.
    pub fn satisfied(
        &self,
        key: &str,
        by_name: impl Fn(&str) -> Seen,
        by_uid: impl Fn(&str) -> Seen,
    ) -> bool {
        let mut pending = self.lock();
        let Some(entry) = pending.get_mut(key) else {
            return true;
        };
        entry.creations.retain(|name| by_name(name) == Seen::Absent);
        entry.deletions.retain(|uid| by_uid(uid) == Seen::Present);
        if entry.creations.is_empty() && entry.deletions.is_empty()
            || entry.since.elapsed() > TIMEOUT
        {
            pending.remove(key);
            return true;
        }
        false
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        // A panic while holding the lock leaves the map consistent: every update is one call.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_creations_and_deletions_to_show() {
        let expectations = Expectations::default();
        assert!(expectations.satisfied("ns/a", |_| Seen::Absent, |_| Seen::Present));
        expectations.expect(
            "ns/a",
            vec!["a-1".into(), "a-2".into()],
            vec!["uid-3".into()],
        );
        // Nothing seen yet.
        assert!(!expectations.satisfied("ns/a", |_| Seen::Absent, |_| Seen::Present));
        // a-1 created and the pod being deleted seen, a-2 not yet: still waiting.
        let seen_a1 = |name: &str| {
            if name == "a-1" {
                Seen::Present
            } else {
                Seen::Absent
            }
        };
        assert!(!expectations.satisfied("ns/a", seen_a1, |_| Seen::Deleting));
        // a-2 shows; what was seen before is not asked about again.
        assert!(expectations.satisfied("ns/a", |_| Seen::Present, |_| Seen::Present));
        assert!(expectations.satisfied("ns/b", |_| Seen::Absent, |_| Seen::Present));
    }
}
