//! The Service dataplane's desired state, independent of the kernel: where it comes from
//! ([`file`]) and what it means ([`desired`]).

pub mod desired;
pub mod file;

pub use desired::{DesiredState, Node, desired_state};
pub use file::{ServicesFile, ServicesFileError};
