//! The controller manager: controllers that are clients of the API (kube-rs), never of etcd,
//! each a watcher feeding an idempotent reconcile, as upstream's kube-controller-manager.
//!
//! * [`namespace`]: empties namespaces being deleted, then finalizes them.

pub mod namespace;

/// Runs every controller on `client` until one of them stops.
pub async fn run(client: kube::Client) {
    namespace::run(client).await;
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
