//! Container probes as kubelet runs them: `startup`, `liveness` and `readiness`.
//!
//! - [`state`]: [`ContainerProbes`], the per-container-instance schedule and thresholds (pure,
//!   driven by the caller's clock): `initialDelaySeconds`, `periodSeconds`,
//!   `successThreshold`, `failureThreshold`, startup gating, readiness starting failed.
//! - [`run`]: [`run_probe`], one probe attempt against a [`ProbeTarget`] within
//!   `timeoutSeconds`, through the handler the probe names: [`http`] (`httpGet`), [`tcp`]
//!   (`tcpSocket`), [`exec`] (`runc exec`). `grpc` is reported as unsupported.
//! - [`outcome`]: what a probe and a record return ([`ProbeResult`], [`ProbeAction`]) and the
//!   event texts kubelet uses (`Unhealthy`, `ProbeWarning`, `Killing`).
//!
//! The worker owns the loop: ask [`ContainerProbes::due`], run each with [`run_probe`], hand
//! the result to [`ContainerProbes::record`], sleep until [`ContainerProbes::next_due`]:
//!
//! ```no_run
//! use std::time::Instant;
//! use keel_agent::probe::{ContainerProbes, ProbeAction, ProbeTarget, probe_event, run_probe};
//!
//! async fn probe_once(probes: &mut ContainerProbes, target: &ProbeTarget) -> Option<String> {
//!     for kind in probes.due(Instant::now()) {
//!         let spec = probes.spec(kind)?.clone();
//!         let result = run_probe(kind, &spec, target).await;
//!         if let Some(event) = probe_event(kind, &result) {
//!             // A Warning event on the container: reason "Unhealthy" or "ProbeWarning".
//!             eprintln!("{}: {}", event.reason, event.message);
//!         }
//!         if let ProbeAction::Restart { kind, .. } =
//!             probes.record(kind, &result, Instant::now())
//!         {
//!             // Kill the container with a Killing event, then start a new instance (and a
//!             // new ContainerProbes for it).
//!             let restart = true; // as the pod's restartPolicy says
//!             return Some(keel_agent::probe::killing_message(&target.container.name, kind, restart));
//!         }
//!     }
//!     // Readiness for the pod's status: probes.ready(); started: probes.started().
//!     None
//! }
//! ```

pub mod error;
pub mod exec;
pub mod http;
pub mod outcome;
pub mod run;
pub mod state;
pub mod tcp;
pub mod wire;

pub use error::ProbeError;
pub use outcome::{
    ProbeAction, ProbeEvent, ProbeKind, ProbeResult, killing_message, probe_event,
    unhealthy_message,
};
pub use run::{ProbeTarget, run_probe};
pub use state::ContainerProbes;
