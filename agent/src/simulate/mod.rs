//! Simulated nodes (as KWOK does it): many `Node`s served by one process, without containers.
//! Each node is registered and kept alive through exactly the calls the real agent makes
//! ([`crate::api::node`]: the Node, `nodes/status`, the Lease in `kube-node-lease`); pods bound
//! to them are reported Running through `pods/status` with the status kubelet would compute
//! ([`crate::pods::status`]), and deleted with grace 0 once marked for deletion.
//!
//! - [`fleet`]: the nodes, their registration, and one heartbeat task for all of them (Lease
//!   renewals spread over the renewal period, bounded concurrency);
//! - [`pods`]: one pod watch for every simulated node, the pods' statuses and addresses;
//! - [`client`]: an API client that multiplexes requests over HTTP/2.
//!
//! Per-pod behaviour through annotations:
//! - [`EXIT_CODE_ANNOTATION`] (`keel.dev/simulate-exit-code: "0"`): once Running, every
//!   container ends with that code, so the pod ends `Succeeded` (0) or `Failed` (non-zero,
//!   `restartPolicy: Never`) as kubelet decides the phase; ignored where the restart policy
//!   would restart the containers (`Always`, or `OnFailure` with a non-zero code);
//! - [`RUN_SECONDS_ANNOTATION`] (`keel.dev/simulate-run-seconds: "5"`): how long the
//!   containers run before they end (default 0).

pub mod client;
pub mod fleet;
pub mod pods;

use std::path::PathBuf;

pub use fleet::{Fleet, FleetSpec};

/// Ends a simulated pod's containers with this exit code once they run.
pub const EXIT_CODE_ANNOTATION: &str = "keel.dev/simulate-exit-code";
/// Seconds a simulated pod's containers run before [`EXIT_CODE_ANNOTATION`] applies.
pub const RUN_SECONDS_ANNOTATION: &str = "keel.dev/simulate-run-seconds";
/// The label every simulated node carries (value `true`).
pub const SIMULATED_LABEL: &str = "keel.dev/simulated";

/// Why the simulator cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the API server refuses simulated node {node}: {message}")]
    Refused { node: String, message: String },
}
