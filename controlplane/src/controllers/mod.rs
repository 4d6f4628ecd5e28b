//! The controller manager: controllers that are clients of the API (kube-rs), never of etcd,
//! each a watcher feeding an idempotent reconcile, as upstream's kube-controller-manager.
//!
//! * [`namespace`]: empties namespaces being deleted, then finalizes them.
//! * [`replicaset`]: keeps each ReplicaSet's pods at its replica count.
//! * [`deployment`]: rolls Deployments out through ReplicaSets.

pub mod deployment;
mod events;
mod expectations;
pub mod namespace;
mod ownership;
pub mod replicaset;

/// Runs every controller on `client`, concurrently, until all of them stop.
pub async fn run(client: kube::Client) {
    tokio::join!(
        namespace::run(client.clone()),
        replicaset::run(client.clone()),
        deployment::run(client.clone()),
    );
}

/// An error and its sources on one line: `what failed: why: root cause`.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}
