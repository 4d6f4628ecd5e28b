//! The controller manager: controllers that are clients of the API (kube-rs), never of etcd,
//! each a watcher feeding an idempotent reconcile, as upstream's kube-controller-manager.
//!
//! * [`namespace`]: empties namespaces being deleted, then finalizes them.
//! * [`endpointslice`]: the EndpointSlices of Services with a selector.
//! * [`garbagecollector`]: deletes objects whose owners are gone; foreground and orphan
//!   deletion.
//! * [`serviceaccount`]: a `default` ServiceAccount in every namespace.
//! * [`node_lifecycle`]: marks nodes that stopped reporting Unknown and taints them.
//! * [`taint_eviction`]: deletes pods from nodes whose `NoExecute` taints they do not tolerate.
//! * [`node_ipam`]: gives each node a pod CIDR from the cluster CIDR.
//! * [`replicaset`]: keeps each ReplicaSet's pods at its replica count.
//! * [`deployment`]: rolls Deployments out through ReplicaSets.
//! * [`daemonset`], [`statefulset`], [`job`], [`cronjob`]: workload controllers, sharing
//!   [`workload`].

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpointslice;
mod events;
mod expectations;
pub mod garbagecollector;
pub mod job;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
mod ownership;
mod reflect;
pub mod replicaset;
pub mod serviceaccount;
pub mod statefulset;
pub mod taint_eviction;
pub mod workload;

/// What the controllers are configured with (kube-controller-manager's flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// `--cluster-cidr` and `--node-cidr-mask-size`, checked; `None`: no node IPAM.
    pub node_cidrs: Option<node_ipam::CidrSet>,
    /// `--node-monitor-period`, `--node-monitor-grace-period`.
    pub node_monitor: node_lifecycle::Timing,
    /// `--max-endpoints-per-slice`.
    pub endpointslice: endpointslice::Settings,
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
        () = namespace::run(client.clone()) => log::error!("the namespace controller stopped"),
        () = endpointslice::run(client.clone(), config.endpointslice) => log::error!("the endpointslice controller stopped"),
        () = garbagecollector::run(client.clone()) => log::error!("the garbage collector stopped"),
        () = serviceaccount::run(client.clone()) => log::error!("the serviceaccount controller stopped"),
        () = node_lifecycle::run(client.clone(), config.node_monitor) => log::error!("the node lifecycle controller stopped"),
        () = taint_eviction::run(client.clone()) => log::error!("the taint eviction controller stopped"),
        () = node_ipam => log::error!("the node IPAM controller stopped"),
        () = replicaset::run(client.clone()) => log::error!("the replicaset controller stopped"),
        () = deployment::run(client.clone()) => log::error!("the deployment controller stopped"),
        () = daemonset::run(client.clone()) => log::error!("the daemonset controller stopped"),
        () = statefulset::run(client.clone()) => log::error!("the statefulset controller stopped"),
        () = job::run(client.clone()) => log::error!("the job controller stopped"),
        () = cronjob::run(client.clone()) => log::error!("the cronjob controller stopped"),
    }
}

/// Drives a controller's stream of results to its end, logging failed reconciles at debug
/// level (each controller's error policy already warns about them).
pub(crate) async fn drive<T, E: std::error::Error>(
    controller: &str,
    results: impl futures::Stream<Item = Result<T, E>>,
) {
    use futures::StreamExt as _;
    results
        .for_each(|result| async move {
            if let Err(error) = result {
                log::debug!("{controller}: {}", chain(&error));
            }
        })
        .await;
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
