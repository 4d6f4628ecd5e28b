//! Watches straight from etcd: [`Store::watch`], and the decoding of etcd watch responses
//! that the watch cache shares.
//!
//! A watch from resourceVersion N asks etcd for every change after N (`start_revision =
//! N + 1`) with `prev_kv`, so a delete carries the object's last state (upstream stamps it with
//! the delete's revision, and so do we). `""` and `"0"` first list the prefix and replay it as
//! `ADDED`, then follow from the list's revision, as upstream's `watchChan.sync`. A start
//! revision etcd has compacted ends the watch with an `Expired` error event.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use etcd_client::{EventType, WatchResponse};
use tokio::sync::mpsc;

use super::event::{Change, ChangeKind};
use super::object;
use super::{KeyPrefix, ListOptions, Predicate, StorageError, Store, WatchEvent, WatchStream};

/// Events a direct watch buffers before it stops reading etcd (back-pressure, not loss).
const WATCH_BUFFER: usize = 128;

/// Parameters of a watch.
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    /// `""` or `"0"`: replay the current state as `ADDED`, then follow. `"N"`: every change
    /// after N.
    pub resource_version: String,
    pub predicate: Predicate,
    /// Deliver `BOOKMARK` events (from etcd progress notifications, or the cache's ticker).
    pub bookmarks: bool,
}

/// One decoded etcd watch response.
#[derive(Debug)]
pub(crate) enum WatchMessage {
    /// The watch was registered.
    Created,
    /// Changes in revision order.
    Changes(Vec<Change>),
    /// Progress notification: every change up to this revision has been delivered.
    Progress(i64),
}

impl Store {
    /// Watches the objects under `prefix`.
    pub async fn watch(
        &self,
        prefix: &KeyPrefix,
        options: &WatchOptions,
    ) -> Result<WatchStream, StorageError> {
        let requested = object::parse_resource_version(&options.resource_version)?.unwrap_or(0);
        let mut pending = VecDeque::new();
        let start_after = if requested == 0 {
            let current = self.list(prefix, &ListOptions::default()).await?;
            pending.extend(
                current
                    .items
                    .into_iter()
                    .filter(|item| options.predicate.matches(item))
                    .map(WatchEvent::Added),
            );
            current.resource_version
        } else {
            requested
        };

        let stream = self
            .open_etcd_watch(prefix, start_after + 1, options.bookmarks)
            .await?;
        let (sender, receiver) = mpsc::channel(WATCH_BUFFER);
        let producer = tokio::spawn(forward(
            stream,
            prefix.clone(),
            start_after,
            options.clone(),
            sender,
        ));
        Ok(WatchStream::new(pending, receiver, Some(producer)))
    }

    /// Opens one etcd watch on `prefix` from `start_revision` with `prev_kv`; counted in
    /// [`Store::etcd_watches_opened`].
    pub(crate) async fn open_etcd_watch(
        &self,
        prefix: &KeyPrefix,
        start_revision: i64,
        progress_notify: bool,
    ) -> Result<etcd_client::WatchStream, StorageError> {
        let mut options = etcd_client::WatchOptions::new()
            .with_range(prefix.range_end())
            .with_start_revision(start_revision)
            .with_prev_key();
        if progress_notify {
            options = options.with_progress_notify();
        }
        let stream = self
            .client
            .watch_client()
            .watch(prefix.as_str(), Some(options))
            .await
            .map_err(|source| StorageError::etcd("watch", prefix.as_str(), source))?;
        self.etcd_watches_opened.fetch_add(1, Ordering::Relaxed);
        Ok(stream)
    }
}

/// Pumps one etcd watch into a watcher's channel until either side ends.
async fn forward(
    mut stream: etcd_client::WatchStream,
    prefix: KeyPrefix,
    start_after: i64,
    options: WatchOptions,
    sender: mpsc::Sender<WatchEvent>,
) {
    loop {
        let message = match stream.message().await {
            Ok(Some(response)) => interpret(&prefix, start_after, &response),
            Ok(None) => return,
            Err(source) => Err(StorageError::etcd("watch", prefix.as_str(), source)),
        };
        let events = match message {
            Ok(WatchMessage::Created) => continue,
            Ok(WatchMessage::Progress(revision)) if options.bookmarks => {
                vec![WatchEvent::Bookmark {
                    resource_version: revision,
                }]
            }
            Ok(WatchMessage::Progress(_)) => continue,
            Ok(WatchMessage::Changes(changes)) => changes
                .iter()
                .filter_map(|change| change.to_event(&options.predicate))
                .collect(),
            Err(error) => {
                // The receiver may be gone already; the watch ends either way.
                let _ = sender.send(WatchEvent::Error(error)).await;
                return;
            }
        };
        for event in events {
            if sender.send(event).await.is_err() {
                return;
            }
        }
    }
}

/// Decodes one etcd watch response. `requested` is the revision the watch started after, for
/// the `Expired` error.
pub(crate) fn interpret(
    prefix: &KeyPrefix,
    requested: i64,
    response: &WatchResponse,
) -> Result<WatchMessage, StorageError> {
    if response.compact_revision() != 0 {
        return Err(StorageError::Expired {
            prefix: prefix.to_string(),
            requested,
            oldest: Some(response.compact_revision()),
            inconsistent_continue: None,
        });
    }
    if response.canceled() {
        return Err(StorageError::WatchCanceled {
            prefix: prefix.to_string(),
            reason: response.cancel_reason().to_owned(),
        });
    }
    if response.created() {
        return Ok(WatchMessage::Created);
    }
    if response.events().is_empty() {
        let revision = response.header().map_or(0, |header| header.revision());
        return Ok(WatchMessage::Progress(revision));
    }
    response
        .events()
        .iter()
        .map(|event| change_from_event(prefix, event))
        .collect::<Result<Vec<_>, _>>()
        .map(WatchMessage::Changes)
}

fn change_from_event(
    prefix: &KeyPrefix,
    event: &etcd_client::Event,
) -> Result<Change, StorageError> {
    let malformed = |reason: &str| StorageError::InvalidObject {
        key: prefix.to_string(),
        reason: reason.to_owned(),
    };
    let kv = event
        .kv()
        .ok_or_else(|| malformed("etcd watch event without a key-value"))?;
    let key = String::from_utf8_lossy(kv.key()).into_owned();
    let revision = kv.mod_revision();
    match event.event_type() {
        EventType::Put => {
            let object = object::decode(kv.key(), kv.value(), revision)?;
            let previous = event
                .prev_kv()
                .map(|prev| object::decode(prev.key(), prev.value(), prev.mod_revision()))
                .transpose()?
                .map(Arc::new);
            let kind = if kv.create_revision() == revision {
                ChangeKind::Created
            } else {
                ChangeKind::Updated
            };
            Ok(Change {
                key,
                revision,
                kind,
                object: Arc::new(object),
                previous,
            })
        }
        EventType::Delete => {
            let prev = event
                .prev_kv()
                .ok_or_else(|| malformed("etcd delete event without the previous value"))?;
            let last = object::decode(prev.key(), prev.value(), revision)?;
            Ok(Change {
                key,
                revision,
                kind: ChangeKind::Deleted,
                object: Arc::new(last),
                previous: None,
            })
        }
    }
}
