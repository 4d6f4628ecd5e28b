//! The scheduling queue (upstream's `PriorityQueue`): pods waiting for a node in three
//! places. *Active* pods are tried in priority order, then oldest first. A pod that did not
//! fit waits as *unschedulable* until a cluster change could help (a node added or updated,
//! a placed pod deleted), then goes back through *backoff* (1 s, doubling per failed attempt,
//! at most 10 s). Unschedulable pods are retried after 5 minutes regardless.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::Notify;

/// Upstream's `podInitialBackoffDuration`.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Upstream's `podMaxBackoffDuration`.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Upstream's `podMaxInUnschedulablePodsDuration`.
pub const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Active,
    Backoff,
    Unschedulable,
    InFlight,
    /// Assumed on a node; its binding is being written. It stays until the watch shows it
    /// bound (or deleted), so a failed binding keeps counting its attempts.
    Binding,
}

#[derive(Debug)]
struct Entry {
    pod: Arc<Pod>,
    place: Place,
    attempts: u32,
    /// When the pod was last tried (backoff counts from here).
    last_try: Option<Instant>,
    /// Bumped on every push to the active heap: older heap items for the pod are stale.
    generation: u64,
    /// The cycle the pod was popped in (to see moves that happened while it was tried).
    cycle: u64,
}

#[derive(Debug, PartialEq, Eq)]
struct Ready {
    priority: i32,
    sequence: u64,
    uid: String,
    generation: u64,
}

impl Ord for Ready {
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.sequence.cmp(&self.sequence))
    }
}

impl PartialOrd for Ready {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    active: BinaryHeap<Ready>,
    sequence: u64,
    cycle: u64,
    /// The cycle of the last cluster change that could help unschedulable pods.
    moved_at_cycle: u64,
    /// Whether a pod went to backoff or unschedulable since the last scan of the entries.
    rescan: bool,
    /// From the last scan: when the first waiting pod becomes due (backoff over, or
    /// unschedulable too long), and when the first backoff ends. Until then, and unless
    /// `rescan`, a scan would promote nothing, so `pop` skips it (no O(pods) walk per pod).
    next_due: Option<Instant>,
    next_backoff: Option<Instant>,
}

/// Pods waiting for a node.
#[derive(Debug, Default)]
pub struct Queue {
    state: Mutex<State>,
    wake: Notify,
}

/// How long a pod that failed `attempts` times waits before its next try.
pub fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    INITIAL_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF)
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a pending pod, or records its new version. A changed spec or labels of an
    /// unschedulable pod may make it fit: it is tried again.
    pub fn add_or_update(&self, pod: Arc<Pod>) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let mut state = self.lock();
        match state.entries.get_mut(&uid) {
            Some(entry) => {
                let changed =
                    entry.pod.spec != pod.spec || entry.pod.metadata.labels != pod.metadata.labels;
                entry.pod = pod;
                if changed && entry.place == Place::Unschedulable {
                    entry.place = Place::Backoff;
                    state.rescan = true;
                    drop(state);
                    self.wake.notify_one();
                }
            }
            None => {
                state.entries.insert(
                    uid.clone(),
                    Entry {
                        pod,
                        place: Place::Active,
                        attempts: 0,
                        last_try: None,
                        generation: 0,
                        cycle: 0,
                    },
                );
                push_active(&mut state, &uid);
                drop(state);
                self.wake.notify_one();
            }
        }
    }

    /// Drops a pod that was deleted, bound or is no longer this scheduler's.
    pub fn remove(&self, uid: &str) {
        self.lock().entries.remove(uid);
    }

    /// Keeps only the pods `keep` accepts (after a relist).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.lock().entries.retain(|uid, _| keep(uid));
    }

    /// Whether the pod is queued or being tried.
    pub fn contains(&self, uid: &str) -> bool {
        self.lock().entries.contains_key(uid)
    }

    /// A cluster change that could help: every unschedulable pod goes back through backoff.
    pub fn move_all_unschedulable(&self) {
        let mut state = self.lock();
        state.moved_at_cycle = state.cycle;
        let mut moved = false;
        for entry in state.entries.values_mut() {
            if entry.place == Place::Unschedulable {
                entry.place = Place::Backoff;
                moved = true;
            }
        }
        state.rescan |= moved;
        drop(state);
        if moved {
            self.wake.notify_one();
        }
    }

    /// Waits for the next pod to try and marks it in flight.
    pub async fn pop(&self) -> Arc<Pod> {
        loop {
            let wait = {
                let mut state = self.lock();
                let now = Instant::now();
                let wait = promote(&mut state, now);
                while let Some(ready) = state.active.pop() {
                    let cycle = state.cycle + 1;
                    let Some(entry) = state.entries.get_mut(&ready.uid) else {
                        continue;
                    };
                    if entry.place != Place::Active || entry.generation != ready.generation {
                        continue;
                    }
                    entry.place = Place::InFlight;
                    entry.cycle = cycle;
                    entry.last_try = Some(now);
                    let pod = entry.pod.clone();
                    state.cycle = cycle;
                    return pod;
                }
                wait
            };
            let notified = self.wake.notified();
            match wait {
                Some(wait) => {
                    let _ = tokio::time::timeout(wait, notified).await;
                }
                None => notified.await,
            }
        }
    }

    /// The pod fit nowhere: it waits for a cluster change (or, if one came while it was
    /// being tried, only for its backoff).
    pub fn unschedulable(&self, uid: &str) {
        let mut state = self.lock();
        let moved_at = state.moved_at_cycle;
        if let Some(entry) = state.entries.get_mut(uid) {
            entry.attempts += 1;
            entry.place = if moved_at >= entry.cycle {
                Place::Backoff
            } else {
                Place::Unschedulable
            };
        }
        state.rescan = true;
        drop(state);
        self.wake.notify_one();
    }

    /// The attempt failed for another reason (the binding, the API): retry after backoff.
    pub fn retry(&self, pod: Arc<Pod>) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let mut state = self.lock();
        let entry = state.entries.entry(uid).or_insert(Entry {
            pod: pod.clone(),
            place: Place::Backoff,
            attempts: 0,
            last_try: Some(Instant::now()),
            generation: 0,
            cycle: 0,
        });
        entry.pod = pod;
        entry.attempts += 1;
        entry.place = Place::Backoff;
        state.rescan = true;
        drop(state);
        self.wake.notify_one();
    }

    /// The pod was assumed on a node: it waits for its binding.
    pub fn binding(&self, uid: &str) {
        if let Some(entry) = self.lock().entries.get_mut(uid) {
            entry.place = Place::Binding;
        }
    }

    /// Pods per place, for tests and logs: (active, backoff, unschedulable, in flight).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let state = self.lock();
        let count = |place| {
            state
                .entries
                .values()
                .filter(|entry| entry.place == place)
                .count()
        };
        (
            count(Place::Active),
            count(Place::Backoff),
            count(Place::Unschedulable),
            count(Place::InFlight),
        )
    }
}

fn push_active(state: &mut State, uid: &str) {
    state.sequence += 1;
    let sequence = state.sequence;
    let Some(entry) = state.entries.get_mut(uid) else {
        return;
    };
    entry.generation += 1;
    entry.place = Place::Active;
    let ready = Ready {
        priority: entry
            .pod
            .spec
            .as_ref()
            .and_then(|spec| spec.priority)
            .unwrap_or(0),
        sequence,
        uid: uid.to_owned(),
        generation: entry.generation,
    };
    state.active.push(ready);
}

/// Moves pods whose backoff is over (and long-unschedulable ones) to active; returns how
/// long until the next backoff ends.
fn promote(state: &mut State, now: Instant) -> Option<Duration> {
    let scan = state.rescan || state.next_due.is_some_and(|due| now >= due);
    if !scan {
        return state
            .next_backoff
            .map(|at| at.saturating_duration_since(now));
    }
    state.rescan = false;
    let mut due = Vec::new();
    let mut next: Option<Duration> = None;
    let mut next_due: Option<Duration> = None;
    let earliest = |slot: &mut Option<Duration>, left: Duration| {
        *slot = Some(slot.map_or(left, |current| current.min(left)));
    };
    for (uid, entry) in &state.entries {
        let since = entry
            .last_try
            .map_or(Duration::MAX, |at| now.saturating_duration_since(at));
        match entry.place {
            Place::Backoff => {
                let wait = backoff(entry.attempts);
                if since >= wait || entry.attempts == 0 {
                    due.push(uid.clone());
                } else {
                    earliest(&mut next, wait - since);
                    earliest(&mut next_due, wait - since);
                }
            }
            Place::Unschedulable if since >= MAX_UNSCHEDULABLE => due.push(uid.clone()),
            Place::Unschedulable => earliest(&mut next_due, MAX_UNSCHEDULABLE - since),
            _ => {}
        }
    }
    for uid in due {
        push_active(state, &uid);
    }
    state.next_due = next_due.map(|left| now + left);
    state.next_backoff = next.map(|left| now + left);
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(uid: &str, priority: i32) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": uid, "uid": uid},
                "spec": {"priority": priority, "containers": []}}))
            .expect("pod"),
        )
    }

    fn uid(pod: &Arc<Pod>) -> &str {
        pod.metadata.uid.as_deref().unwrap_or_default()
    }

    #[test]
    fn backoff_doubles_to_ten_seconds() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(5), Duration::from_secs(10));
        assert_eq!(backoff(60), Duration::from_secs(10));
    }

    #[tokio::test]
    async fn higher_priority_first_then_oldest() {
        let queue = Queue::default();
        queue.add_or_update(pod("a", 0));
        queue.add_or_update(pod("b", 10));
        queue.add_or_update(pod("c", 0));
        assert_eq!(uid(&queue.pop().await), "b");
        assert_eq!(uid(&queue.pop().await), "a");
        assert_eq!(uid(&queue.pop().await), "c");
    }

    #[tokio::test]
    async fn unschedulable_pods_wait_for_a_move_then_their_backoff() {
        let queue = Queue::default();
        queue.add_or_update(pod("a", 0));
        let first = queue.pop().await;
        queue.unschedulable(uid(&first));
        assert_eq!(queue.counts(), (0, 0, 1, 0));
        // An unrelated update (status only) leaves it waiting.
        queue.add_or_update(first.clone());
        assert_eq!(queue.counts(), (0, 0, 1, 0));
        queue.move_all_unschedulable();
        assert_eq!(queue.counts(), (0, 1, 0, 0));
        let again = tokio::time::timeout(Duration::from_secs(5), queue.pop())
            .await
            .expect("back after its 1 s backoff");
        assert_eq!(uid(&again), "a");
    }

    #[tokio::test]
    async fn failed_bindings_back_off_longer_each_time() {
        let queue = Queue::default();
        queue.add_or_update(pod("a", 0));
        for attempt in 1..=3 {
            let popped = queue.pop().await;
            queue.binding(uid(&popped));
            assert_eq!(queue.counts(), (0, 0, 0, 0), "waiting for its binding");
            // A cluster change does not disturb a pod whose binding is in flight.
            queue.move_all_unschedulable();
            queue.retry(popped);
            let state = queue.lock();
            assert_eq!(state.entries["a"].attempts, attempt);
            drop(state);
            assert_eq!(queue.counts(), (0, 1, 0, 0));
        }
        // Bound at last: the watch removes it.
        queue.remove("a");
        assert!(!queue.contains("a"));
    }

    #[tokio::test]
    async fn a_move_during_the_attempt_sends_the_pod_to_backoff() {
        let queue = Queue::default();
        queue.add_or_update(pod("a", 0));
        let first = queue.pop().await;
        queue.move_all_unschedulable();
        queue.unschedulable(uid(&first));
        assert_eq!(queue.counts(), (0, 1, 0, 0));
        queue.remove("a");
        assert!(!queue.contains("a"));
    }
}
