//! The controller manager: controllers that are clients of the API (kube-rs), never of etcd,
//! each a watcher feeding an idempotent reconcile, as upstream's kube-controller-manager.
//!
//! * [`namespace`]: empties namespaces being deleted, then finalizes them.
//! * [`endpointslice`]: the EndpointSlices of Services with a selector.
//! * [`garbagecollector`]: deletes objects whose owners are gone; foreground and orphan
//!   deletion.
//! * [`serviceaccount`]: a `default` ServiceAccount in every namespace.

pub mod endpointslice;
pub mod garbagecollector;
pub mod namespace;
pub mod serviceaccount;

/// The controller manager's flags (upstream's names).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Most endpoints in one EndpointSlice.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub max_endpoints_per_slice: u16,
}

/// Runs every controller on `client`, concurrently, until one of them stops.
pub async fn run(client: kube::Client, options: Options) {
    let endpointslice = endpointslice::Settings {
        max_endpoints_per_slice: usize::from(options.max_endpoints_per_slice),
    };
    tokio::select! {
        () = namespace::run(client.clone()) => log::error!("the namespace controller stopped"),
        () = endpointslice::run(client.clone(), endpointslice) => log::error!("the endpointslice controller stopped"),
        () = garbagecollector::run(client.clone()) => log::error!("the garbage collector stopped"),
        () = serviceaccount::run(client) => log::error!("the serviceaccount controller stopped"),
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
