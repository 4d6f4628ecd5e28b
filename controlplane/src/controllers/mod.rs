//! The controller manager: controllers that are clients of the API (kube-rs), never of etcd,
//! each a watcher feeding an idempotent reconcile, as upstream's kube-controller-manager.
//!
//! * [`namespace`]: empties namespaces being deleted, then finalizes them.
//! * [`daemonset`], [`statefulset`], [`job`], [`cronjob`]: workload controllers, sharing
//!   [`workload`].

pub mod cronjob;
pub mod daemonset;
pub mod job;
pub mod namespace;
pub mod statefulset;
pub mod workload;

/// Runs every controller on `client`, concurrently, until one of them stops.
pub async fn run(client: kube::Client) {
    let controllers: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>> = vec![
        Box::pin(namespace::run(client.clone())),
        Box::pin(daemonset::run(client.clone())),
        Box::pin(statefulset::run(client.clone())),
        Box::pin(job::run(client.clone())),
        Box::pin(cronjob::run(client.clone())),
    ];
    futures::future::select_all(controllers).await;
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
