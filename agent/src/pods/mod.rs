//! Pods on this node: where they come from ([`source`]: static manifests), one worker per pod
//! that converges its sandbox and containers ([`worker`], [`container`]), what is kept on disk
//! across agent restarts ([`record`]), and the status they report ([`status`]).

pub mod container;
pub mod dns;
pub mod env;
pub mod events;
pub mod manager;
pub mod node;
pub mod record;
pub mod refs;
pub mod source;
pub mod status;
pub mod volumes;
pub mod worker;

pub use manager::PodManager;
pub use node::NodeContext;
