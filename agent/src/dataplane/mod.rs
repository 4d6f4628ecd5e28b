//! The eBPF dataplane: the only module of the agent that makes bpf(2) calls. One loaded
//! object per agent ([`Dataplane`]): counters, Services and conntrack share its maps.
//!
//! - [`object`]: the eBPF object embedded at build time, and loading it.
//! - [`instance`]: loading the programs, unpinned or on an instance's pins.
//! - [`pins`]: the maps and links pinned in bpffs, so the dataplane outlives the agent.
//! - [`attach`]: attaching counters and load-balancing to interfaces and cgroups.
//! - [`adopt`]: taking over the Service maps a previous agent left pinned.
//! - [`conntrack`]: collecting idle tracked flows; forgetting flows of removed backends.
//! - [`nat`]: SNAT of external flows to backends on other nodes.
//! - [`maglev`]: Maglev lookup tables for frontends reached from outside the cluster.
//! - [`services`]: Service frontends and backends, and socket-level load-balancing.
//! - [`stats`]: per-interface packet/byte counters and per-reason drop counters.
//! - [`test_run`]: runs a loaded program on a crafted packet with `BPF_PROG_TEST_RUN`.

pub mod adopt;
pub mod attach;
pub mod conntrack;
pub mod instance;
pub mod maglev;
pub mod nat;
pub mod object;
pub mod pins;
pub mod services;
pub mod stats;
pub mod test_run;

pub use adopt::Adopted;
pub use conntrack::{CtCollection, CtTimeouts};
pub use maglev::{LbAlgorithm, LoadBalancing, TableSize};
pub use nat::SnatConfig;
pub use object::{DataplaneError, load_object};
pub use pins::{DEFAULT_BPF_ROOT, MapSizes, remove_pins};
pub use services::{Backends, Dataplane, Frontend, Protocol};
pub use stats::{Direction, IfaceStats, XdpAttachMode};
