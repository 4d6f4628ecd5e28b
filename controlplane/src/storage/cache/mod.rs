//! The watch cache (upstream's `cacher`): one etcd watch per resource prefix feeds an in-memory
//! copy of the resource, from which lists and any number of watches are served.
//!
//! * `cacher.rs`: [`WatchCache`], the public face: which requests it serves itself and which
//!   it hands to etcd, waiting for freshness, registering watchers.
//! * `state.rs`: the guarded state: current objects, the bounded ring of recent changes,
//!   and the watchers with their filters and channels.
//! * `reflector.rs`: the task that lists, watches etcd, applies changes and sends bookmarks,
//!   and re-lists after an error.

mod cacher;
mod reflector;
mod state;

pub use cacher::{CacheConfig, WatchCache};
