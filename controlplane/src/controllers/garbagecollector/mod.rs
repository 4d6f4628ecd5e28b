//! The garbage collector, as upstream's: a graph of `ownerReferences` over every deletable
//! resource (found by discovery, watched metadata-only), and two queues of workers.
//!
//! * Background: an object whose owners are all gone (checked by live GETs, uid compared) is
//!   deleted, its own dependents after it.
//! * Foreground: an owner deleted with `propagationPolicy: Foreground` carries the
//!   `foregroundDeletion` finalizer; its dependents are deleted (foreground themselves when
//!   they have dependents), and once no dependent with `blockOwnerDeletion` is left the
//!   finalizer goes and the API server removes the owner.
//! * Orphan: an owner with the `orphan` finalizer has its reference removed from every
//!   dependent, then the finalizer.
//!
//! Modules: [`graph`] (the pure graph), [`monitors`] (discovery and watches feeding it),
//! [`collect`] (the decisions, against the API), [`queue`], [`resources`].

pub mod collect;
pub mod graph;
pub mod monitors;
pub mod queue;
pub mod resources;

use std::sync::{Arc, Mutex};

use kube::Client;
use tokio::sync::{mpsc, watch};

use collect::{Collector, Outcome};
use graph::Graph;
use queue::WorkQueue;
use resources::Resources;

/// How long the workers wait for every monitor's first listing.
const SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Workers on each queue (upstream's `--concurrent-gc-syncs` is 20; the API here is local).
const WORKERS: usize = 4;

/// Runs the garbage collector until its tasks end (they do not, short of a panic).
pub async fn run(client: Client) {
    let graph = Arc::new(Mutex::new(Graph::default()));
    let resources = Arc::new(Resources::new(client.clone()));
    let deletes = Arc::new(WorkQueue::default());
    let orphans = Arc::new(WorkQueue::default());
    let (changes, mut incoming) = mpsc::unbounded_channel();
    let (synced_sender, synced) = watch::channel(false);
    let collector = Arc::new(Collector::new(
        client.clone(),
        graph.clone(),
        resources.clone(),
        changes.clone(),
        deletes.clone(),
    ));
    let builder = {
        let (deletes, orphans) = (deletes.clone(), orphans.clone());
        async move {
            while let Some(change) = incoming.recv().await {
                let work = graph
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .apply(change);
                work.delete.into_iter().for_each(|uid| deletes.add(uid));
                work.orphan.into_iter().for_each(|uid| orphans.add(uid));
            }
        }
    };
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        for (queue, orphan) in [(&deletes, false), (&orphans, true)] {
            let worker = work(queue.clone(), collector.clone(), orphan, synced.clone());
            workers.push(tokio::spawn(worker));
        }
    }
    tokio::select! {
        () = builder => {},
        () = monitors::run(client, resources, changes, synced_sender) => {},
    }
    workers.iter().for_each(tokio::task::JoinHandle::abort);
}

async fn work(
    queue: Arc<WorkQueue>,
    collector: Arc<Collector>,
    orphan: bool,
    mut synced: watch::Receiver<bool>,
) {
    // As upstream: no decision on a partial graph (an owner being orphaned or deleted in the
    // foreground before its dependents were listed would lose them), unless listing takes
    // unreasonably long.
    if tokio::time::timeout(SYNC_TIMEOUT, synced.wait_for(|synced| *synced))
        .await
        .is_err()
    {
        log::warn!(
            "garbage collector: not every resource listed within {SYNC_TIMEOUT:?}; collecting anyway"
        );
    }
    loop {
        let uid = queue.next().await;
        let result = if orphan {
            collector.attempt_to_orphan(&uid).await
        } else {
            collector.attempt_to_delete(&uid).await
        };
        match result {
            Ok(Outcome::Done) => queue.forget(&uid),
            Ok(Outcome::Retry) => queue.add_after_failure(uid.clone()),
            Err(error) => {
                log::warn!("garbage collector: {}", super::chain(&error));
                queue.add_after_failure(uid.clone());
            }
        }
        queue.done(&uid);
    }
}
