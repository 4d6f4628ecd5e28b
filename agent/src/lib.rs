//! keel-agent: Keel's node agent.
//!
//! Today it owns the eBPF dataplane's base: loading the embedded programs, attaching them to
//! interfaces and reading their counters ([`dataplane`]). Pods, Services and NetworkPolicy
//! build on it.

pub mod dataplane;
pub mod image;
pub mod services;
