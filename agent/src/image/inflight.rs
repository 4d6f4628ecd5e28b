//! Per-key async locks: whoever holds the lock for a blob or snapshot is the one that fetches
//! or unpacks it; the others wait and then find it done. Entries go away when nobody holds or
//! waits for them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

type KeyLock = Arc<tokio::sync::Mutex<()>>;

#[derive(Debug, Default)]
pub struct InFlight {
    locks: Mutex<HashMap<String, KeyLock>>,
}

impl InFlight {
    fn map(&self) -> MutexGuard<'_, HashMap<String, KeyLock>> {
        // The map stays consistent even if a holder panicked: every change is one insert or
        // one remove.
        self.locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub async fn lock(&self, key: String) -> InFlightGuard<'_> {
        let lock = self.map().entry(key.clone()).or_default().clone();
        let guard = lock.clone().lock_owned().await;
        InFlightGuard {
            owner: self,
            key,
            lock,
            guard: Some(guard),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map().len()
    }
}

#[derive(Debug)]
pub struct InFlightGuard<'a> {
    owner: &'a InFlight,
    key: String,
    lock: KeyLock,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = self.owner.map();
        // Only the map and this guard still refer to the lock: nobody waits for it.
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_holder_at_a_time_and_entries_go_away() {
        let in_flight = Arc::new(InFlight::default());
        let inside = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (in_flight, inside) = (in_flight.clone(), inside.clone());
            tasks.push(tokio::spawn(async move {
                let _guard = in_flight.lock("blob a".to_owned()).await;
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(in_flight.len(), 0);
    }
}
