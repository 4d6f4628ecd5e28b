//! The API server's storage layer: Kubernetes objects (JSON) in etcd, the way kube-apiserver's
//! `storage/etcd3` store and `cacher` keep them.
//!
//! * [`key`]: the `/registry/<group>/<resource>/<namespace>/<name>` layout.
//! * [`object`]: `metadata.resourceVersion` = etcd mod revision, never stored.
//! * [`Store`] (`store.rs`, `list.rs`, `watch.rs`): create / get / update /
//!   `guaranteed_update` / delete as etcd transactions, paginated consistent lists, watches.
//! * [`WatchCache`] (`cache/`): one etcd watch per resource feeding an in-memory copy that
//!   serves lists and any number of watchers, with bookmarks and per-watcher filters.
//! * [`StorageError`] (`error.rs`): every failure, with its Kubernetes `Status` mapping.

pub mod cache;
mod continue_token;
mod error;
mod event;
pub mod key;
mod list;
pub mod object;
mod store;
mod watch;

pub use cache::{CacheConfig, WatchCache};
pub use error::{ApiStatus, StorageError};
pub use event::{Predicate, WatchEvent, WatchStream};
pub use key::{KeyPrefix, REGISTRY_ROOT, Resource, ResourceKey};
pub use list::{ListOptions, ListResult, ResourceVersionMatch};
pub use store::{Preconditions, Store};
pub use watch::WatchOptions;
