//! The eBPF dataplane: the only module of the agent that makes bpf(2) calls.
//!
//! - [`object`]: the eBPF object embedded at build time, and loading it.
//! - [`conntrack`]: collecting idle tracked flows; forgetting flows of removed backends.
//! - [`maglev`]: Maglev lookup tables for frontends reached from outside the cluster.
//! - [`services`]: Service frontends and backends, and socket-level load-balancing.
//! - [`stats`]: per-interface packet/byte counters and per-reason drop counters.
//! - [`test_run`]: runs a loaded program on a crafted packet with `BPF_PROG_TEST_RUN`.

pub mod conntrack;
pub mod maglev;
pub mod object;
pub mod services;
pub mod stats;
pub mod test_run;

pub use conntrack::{CtCollection, CtTimeouts};
pub use maglev::{LbAlgorithm, LoadBalancing, TableSize};
pub use object::{DataplaneError, load_object};
pub use services::{Backends, Frontend, Protocol, ServiceDataplane};
pub use stats::{Direction, IfaceStats, StatsDataplane, XdpAttachMode};
