//! The controller manager: controllers that are clients of the API (kube-rs), never of etcd,
//! each a watcher feeding an idempotent reconcile, as upstream's kube-controller-manager.
//!
//! * [`namespace`]: empties namespaces being deleted, then finalizes them.
//! * [`node_lifecycle`]: marks nodes that stopped reporting Unknown and taints them.
//! * [`taint_eviction`]: deletes pods from nodes whose `NoExecute` taints they do not tolerate.
//! * [`node_ipam`]: gives each node a pod CIDR from the cluster CIDR.

pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
mod reflect;
pub mod taint_eviction;

/// What the controllers are configured with (kube-controller-manager's flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// `--cluster-cidr` and `--node-cidr-mask-size`, checked; `None`: no node IPAM.
    pub node_cidrs: Option<node_ipam::CidrSet>,
    /// `--node-monitor-period`, `--node-monitor-grace-period`.
    pub node_monitor: node_lifecycle::Timing,
}

/// Runs every controller on `client`, concurrently, until one of them stops.
pub async fn run(client: kube::Client, config: Config) {
    let node_ipam = async {
        match config.node_cidrs {
            Some(cidrs) => node_ipam::run(client.clone(), cidrs).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = namespace::run(client.clone()) => {}
        () = node_lifecycle::run(client.clone(), config.node_monitor) => {}
        () = taint_eviction::run(client.clone()) => {}
        () = node_ipam => {}
    }
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
