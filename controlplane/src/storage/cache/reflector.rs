//! The task behind a [`WatchCache`](super::WatchCache): list the prefix, open one etcd watch
//! from the list's revision, apply every change to the state, move the revision forward on
//! etcd's progress notifications, send bookmarks on a ticker; after any error, end all
//! watchers and start over with a new list.
//!
//! The cache's revision only moves on information etcd delivers in order on the watch stream
//! (changes and periodic progress notifications, `--experimental-watch-progress-notify-interval`
//! on the etcd side; kubeadm runs etcd with 5s). It does not use on-demand `RequestProgress`:
//! before etcd 3.4.31 / 3.5.13 such an answer can overtake events still queued for the stream
//! (etcd-io/etcd#15220), and Debian ships 3.4.23. kube-apiserver falls back the same way on
//! those versions: consistent lists go to etcd instead of the cache.

use std::sync::Arc;

use tokio::time::{MissedTickBehavior, interval_at, sleep};

use super::cacher::Shared;
use crate::storage::ListOptions;
use crate::storage::StorageError;
use crate::storage::watch::{WatchMessage, interpret};

/// Runs until the cache is dropped (the task is aborted then).
pub(super) async fn run(shared: Arc<Shared>) {
    loop {
        let error = follow(&shared).await;
        log::warn!(
            "watch cache for {}: {error}; re-listing in {:?}",
            shared.prefix,
            shared.config.relist_backoff
        );
        shared.invalidate();
        sleep(shared.config.relist_backoff).await;
    }
}

/// One list + watch cycle; returns why it ended.
async fn follow(shared: &Shared) -> StorageError {
    let listing = match shared
        .store
        .list_keyed(&shared.prefix, &ListOptions::default())
        .await
    {
        Ok(listing) => listing,
        Err(error) => return error,
    };
    let listed_at = listing.resource_version;
    let stream = match shared
        .store
        .open_etcd_watch(&shared.prefix, listed_at + 1, true)
        .await
    {
        Ok(stream) => stream,
        Err(error) => return error,
    };
    // Keep the request half alive: closing it would end the watch on some etcd versions.
    let (_requests, mut responses) = stream.split();
    shared.with_state(|state| state.replace(listing.entries, listed_at));
    shared.publish();

    let period = shared.config.bookmark_interval;
    let mut bookmarks = interval_at(tokio::time::Instant::now() + period, period);
    bookmarks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = responses.message() => {
                let response = match message {
                    Ok(Some(response)) => response,
                    Ok(None) => {
                        return StorageError::WatchCanceled {
                            prefix: shared.prefix.to_string(),
                            reason: "etcd closed the watch stream".to_owned(),
                        };
                    }
                    Err(source) => {
                        return StorageError::etcd("watch", shared.prefix.as_str(), source);
                    }
                };
                match interpret(&shared.prefix, listed_at, &response) {
                    Ok(WatchMessage::Created) => {}
                    Ok(WatchMessage::Changes(changes)) => {
                        shared.with_state(|state| {
                            for change in changes {
                                state.apply(change);
                            }
                        });
                        shared.publish();
                    }
                    Ok(WatchMessage::Progress(revision)) => {
                        shared.with_state(|state| state.advance(revision));
                        shared.publish();
                    }
                    Err(error) => return error,
                }
            }
            _ = bookmarks.tick() => {
                shared.with_state(|state| state.send_bookmarks());
            }
        }
    }
}
