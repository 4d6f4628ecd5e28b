//! The monitors (upstream's `GraphBuilder` monitors): a metadata-only watch of every
//! deletable resource, found by discovery every 30 s, turned into graph changes. After a
//! watch restarts with a fresh listing, objects the listing no longer holds count as deleted.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::discovery::ApiResource;
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;

use super::graph::{Change, Identity, Observed, Owner, Uid};
use super::resources::Resources;

/// How often discovery runs again to watch new resources (upstream's 30 s).
const DISCOVERY_PERIOD: Duration = Duration::from_secs(30);

/// Keeps one monitor per deletable resource, forever.
pub(crate) async fn run(
    client: Client,
    resources: Arc<Resources>,
    changes: UnboundedSender<Change>,
    synced: watch::Sender<bool>,
) {
    let mut monitors: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut first_round = true;
    loop {
        match resources.refresh().await {
            Ok(deletable) => {
                let keys: Vec<String> = deletable.iter().map(key).collect();
                monitors.retain(|monitored, task| {
                    let keep = keys.contains(monitored);
                    if !keep {
                        log::info!("garbage collector: no longer monitoring {monitored}");
                        task.abort();
                    }
                    keep
                });
                // The graph is synced once every monitor of the first round has listed.
                let pending = Arc::new(AtomicUsize::new(if first_round {
                    deletable.len()
                } else {
                    0
                }));
                if first_round && deletable.is_empty() {
                    synced.send_replace(true);
                }
                for resource in deletable {
                    let listed = first_round.then(|| (pending.clone(), synced.clone()));
                    monitors.entry(key(&resource)).or_insert_with(|| {
                        tokio::spawn(monitor(client.clone(), resource, changes.clone(), listed))
                    });
                }
                first_round = false;
            }
            Err(error) => log::warn!("garbage collector: {}", super::super::chain(&error)),
        }
        tokio::time::sleep(DISCOVERY_PERIOD).await;
    }
}

fn key(resource: &ApiResource) -> String {
    format!("{}/{}", resource.api_version, resource.plural)
}

/// Watches one resource and reports every object to the graph.
async fn monitor(
    client: Client,
    resource: ApiResource,
    changes: UnboundedSender<Change>,
    mut listed: Option<(Arc<AtomicUsize>, watch::Sender<bool>)>,
) {
    let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client, &resource);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut known: HashMap<Uid, Identity> = HashMap::new();
    let mut relisted: HashMap<Uid, Identity> = HashMap::new();
    while let Some(event) = events.next().await {
        let change = match event {
            Ok(watcher::Event::Init) => {
                relisted.clear();
                continue;
            }
            Ok(watcher::Event::InitApply(object)) => {
                let observed = observe(&resource, object);
                relisted.insert(observed.identity.uid.clone(), observed.identity.clone());
                Change::Upsert(observed)
            }
            Ok(watcher::Event::InitDone) => {
                for (uid, identity) in known.drain() {
                    if !relisted.contains_key(&uid)
                        && changes.send(Change::Delete(identity)).is_err()
                    {
                        return;
                    }
                }
                known = std::mem::take(&mut relisted);
                if let Some((pending, synced)) = listed.take()
                    && pending.fetch_sub(1, Ordering::AcqRel) == 1
                {
                    synced.send_replace(true);
                }
                continue;
            }
            Ok(watcher::Event::Apply(object)) => {
                let observed = observe(&resource, object);
                known.insert(observed.identity.uid.clone(), observed.identity.clone());
                Change::Upsert(observed)
            }
            Ok(watcher::Event::Delete(object)) => {
                let identity = observe(&resource, object).identity;
                known.remove(&identity.uid);
                Change::Delete(identity)
            }
            Err(error) => {
                log::debug!(
                    "garbage collector: watching {}: {}",
                    key(&resource),
                    super::super::chain(&error)
                );
                continue;
            }
        };
        if changes.send(change).is_err() {
            return;
        }
    }
}

fn observe(resource: &ApiResource, object: PartialObjectMeta<DynamicObject>) -> Observed {
    let metadata = object.metadata;
    Observed {
        identity: Identity {
            api_version: resource.api_version.clone(),
            kind: resource.kind.clone(),
            namespace: metadata.namespace,
            name: metadata.name.unwrap_or_default(),
            uid: metadata.uid.unwrap_or_default(),
        },
        owners: metadata
            .owner_references
            .unwrap_or_default()
            .into_iter()
            .map(|owner| Owner {
                api_version: owner.api_version,
                kind: owner.kind,
                name: owner.name,
                uid: owner.uid,
                block_owner_deletion: owner.block_owner_deletion.unwrap_or(false),
            })
            .collect(),
        being_deleted: metadata.deletion_timestamp.is_some(),
        finalizers: metadata.finalizers.unwrap_or_default(),
    }
}
