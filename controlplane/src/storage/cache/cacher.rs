//! [`WatchCache`]: serves lists and watches of one resource prefix from memory.
//!
//! What it serves itself and what goes to etcd follows upstream's cacher
//! (`shouldDelegateList`):
//!
//! | request                                   | served by                                  |
//! | ----------------------------------------- | ------------------------------------------ |
//! | list, resourceVersion `""`                | etcd (a consistent read)                   |
//! | list with `continue`, or `Exact` match    | etcd                                       |
//! | list with `limit` and resourceVersion ≠ 0 | etcd                                       |
//! | list, resourceVersion `"0"`               | cache, as it is (`limit` ignored, as upstream) |
//! | list, resourceVersion `"N"`               | cache, once it has reached N (else 504 after `freshness_timeout`) |
//! | watch, resourceVersion `""` / `"0"`       | cache: current objects as `ADDED`, then live |
//! | watch, resourceVersion `"N"`              | cache: changes after N from the ring, then live; N older than the ring → 410 Expired |
//!
//! A list at `""` stays on etcd because taking it from the cache needs etcd's on-demand
//! progress notifications, which only etcd 3.4.31+ / 3.5.13+ order with events (see
//! `reflector.rs`); kube-apiserver makes the same choice on older etcd.
//!
//! A watch that starts before the ring fails at once with [`StorageError::Expired`]; the REST
//! layer sends it as the single `ERROR` event of a 200 response, as upstream's cacher does.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::reflector;
use super::state::{CacheState, StartFrom};
use crate::storage::object;
use crate::storage::{
    KeyPrefix, ListOptions, ListResult, ResourceVersionMatch, StorageError, Store, WatchOptions,
    WatchStream,
};

/// Tunables of a [`WatchCache`].
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Recent changes kept for watches that start in the past.
    pub ring_capacity: usize,
    /// Events a watcher may fall behind before it is dropped (its stream ends; clients
    /// re-watch from their last resourceVersion).
    pub watcher_buffer: usize,
    /// How often watchers that asked for bookmarks get one.
    pub bookmark_interval: Duration,
    /// How long a request at a resourceVersion the cache has not reached yet waits.
    pub freshness_timeout: Duration,
    /// Pause before re-listing after the etcd watch failed.
    pub relist_backoff: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ring_capacity: 1024,
            watcher_buffer: 1024,
            bookmark_interval: Duration::from_secs(60),
            // Upstream's `blockTimeout` for `waitUntilFreshAndBlock`.
            freshness_timeout: Duration::from_secs(3),
            relist_backoff: Duration::from_secs(1),
        }
    }
}

/// What the reflector task and the request paths share.
#[derive(Debug)]
pub(super) struct Shared {
    pub store: Store,
    pub prefix: KeyPrefix,
    pub config: CacheConfig,
    state: Mutex<CacheState>,
    /// The cache's revision, or -1 while it is not following etcd.
    revision: watch::Sender<i64>,
}

impl Shared {
    pub fn with_state<R>(&self, apply: impl FnOnce(&mut CacheState) -> R) -> R {
        // A panic while holding the lock leaves the state as consistent as any single step.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        apply(&mut state)
    }

    /// Tells waiters the current revision.
    pub fn publish(&self) {
        let revision = self.with_state(|state| {
            if state.is_ready() {
                state.revision()
            } else {
                -1
            }
        });
        self.revision.send_replace(revision);
    }

    pub fn invalidate(&self) {
        self.with_state(CacheState::invalidate);
        self.publish();
    }
}

/// An in-memory copy of one resource prefix, kept current by a single etcd watch.
#[derive(Debug)]
pub struct WatchCache {
    shared: Arc<Shared>,
    reflector: JoinHandle<()>,
}

impl Drop for WatchCache {
    fn drop(&mut self) {
        self.reflector.abort();
    }
}

impl WatchCache {
    /// Starts caching `prefix` (must be called inside a tokio runtime). Requests wait until
    /// the first list has been loaded.
    pub fn start(store: Store, prefix: KeyPrefix, config: CacheConfig) -> Self {
        let shared = Arc::new(Shared {
            store,
            prefix,
            state: Mutex::new(CacheState::new(config.ring_capacity)),
            config,
            revision: watch::Sender::new(-1),
        });
        let reflector = tokio::spawn(reflector::run(shared.clone()));
        Self { shared, reflector }
    }

    pub fn prefix(&self) -> &KeyPrefix {
        &self.shared.prefix
    }

    /// The revision the cache has caught up to, or `None` while it is (re)loading.
    pub fn resource_version(&self) -> Option<i64> {
        let revision = *self.shared.revision.borrow();
        (revision >= 0).then_some(revision)
    }

    /// The oldest revision a watch can start after.
    pub fn oldest_resource_version(&self) -> i64 {
        self.shared.with_state(|state| state.oldest())
    }

    /// Watchers currently registered (each is served from the one etcd watch).
    pub fn watcher_count(&self) -> usize {
        self.shared.with_state(|state| state.watcher_count())
    }

    /// Waits until the cache has seen everything up to `revision` (0: until it is loaded).
    pub async fn wait_until_fresh(&self, revision: i64) -> Result<i64, StorageError> {
        let mut updates = self.shared.revision.subscribe();
        let target = revision.max(0);
        match timeout(
            self.shared.config.freshness_timeout,
            updates.wait_for(|current| *current >= target),
        )
        .await
        {
            Ok(Ok(current)) => Ok(*current),
            Ok(Err(_)) | Err(_) => match self.resource_version() {
                Some(current) => Err(StorageError::TooLargeResourceVersion {
                    prefix: self.shared.prefix.to_string(),
                    requested: revision,
                    current,
                }),
                None => Err(StorageError::CacheStopped {
                    prefix: self.shared.prefix.to_string(),
                }),
            },
        }
    }

    /// Lists objects under `prefix` (inside the cached prefix); see the module table for which
    /// requests are answered from memory.
    pub async fn list(
        &self,
        prefix: &KeyPrefix,
        options: &ListOptions,
    ) -> Result<ListResult, StorageError> {
        self.check_prefix(prefix)?;
        let requested = object::parse_resource_version(&options.resource_version)?;
        let delegate = match requested {
            None => true,
            Some(revision) => {
                options.continue_token.is_some()
                    || options.resource_version_match == ResourceVersionMatch::Exact
                    || (options.limit > 0 && revision != 0)
            }
        };
        if delegate {
            return self.shared.store.list(prefix, options).await;
        }
        self.wait_until_fresh(requested.unwrap_or(0)).await?;
        self.shared.with_state(|state| {
            if !state.is_ready() {
                return Err(self.stopped());
            }
            Ok(ListResult {
                items: state.list(prefix, &options.predicate),
                resource_version: state.revision(),
                continue_token: None,
                remaining_item_count: None,
            })
        })
    }

    /// Watches objects under `prefix` (inside the cached prefix) without a new etcd watch.
    pub async fn watch(
        &self,
        prefix: &KeyPrefix,
        options: &WatchOptions,
    ) -> Result<WatchStream, StorageError> {
        self.check_prefix(prefix)?;
        let start = match object::parse_resource_version(&options.resource_version)? {
            None | Some(0) => StartFrom::Current,
            Some(revision) => StartFrom::After(revision),
        };
        // A start in the future is fine (changes after it will come); only loading is awaited.
        self.wait_until_fresh(0).await?;
        let (replay, receiver) = self.shared.with_state(|state| {
            if !state.is_ready() {
                return Err(self.stopped());
            }
            state.register(
                prefix,
                options.predicate.clone(),
                options.bookmarks,
                start,
                self.shared.config.watcher_buffer,
            )
        })?;
        Ok(WatchStream::new(replay, receiver, None))
    }

    fn check_prefix(&self, prefix: &KeyPrefix) -> Result<(), StorageError> {
        if self.shared.prefix.covers(prefix) {
            Ok(())
        } else {
            Err(StorageError::InvalidKey {
                segment: prefix.to_string(),
                reason: "outside the prefix this watch cache holds",
            })
        }
    }

    fn stopped(&self) -> StorageError {
        StorageError::CacheStopped {
            prefix: self.shared.prefix.to_string(),
        }
    }
}
