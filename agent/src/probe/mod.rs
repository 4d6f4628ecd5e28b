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
//! the result to [`ContainerProbes::record`], sleep until [`ContainerProbes::next_due`].

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
