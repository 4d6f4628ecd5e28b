//! Maglev consistent hashing for Service frontends reached from outside the cluster.
//!
//! - [`table`]: the lookup table of a backend set, pure and the same on every node.
//! - [`murmur3`]: the permutation hash.
//! - [`tables`]: the tables in the kernel (`MAGLEV`), swapped atomically per service, and
//!   which frontends get one ([`LoadBalancing`]).

pub mod murmur3;
pub mod table;
pub mod tables;

pub use table::{TableBackend, TableSize, TableSizeError, lookup_table};
pub use tables::{LbAlgorithm, LoadBalancing};
