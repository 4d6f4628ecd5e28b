//! Reflector stores shared by the controllers that look at whole sets of objects at once.

use futures::StreamExt as _;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};

/// A reflector store of `api`'s objects and the task that keeps it current (`what` names the
/// watch in the log).
pub fn store<K>(
    api: Api<K>,
    what: &'static str,
) -> (
    Store<K>,
    impl std::future::Future<Output = ()> + Send + 'static,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    let task = async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(error) = event {
                log::debug!("{what} watch: {}", super::chain(&error));
            }
        }
    };
    (reader, task)
}
