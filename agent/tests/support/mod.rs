//! Helpers shared by the agent's integration tests.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the support code"
)]

pub mod cluster;
pub mod node;
pub mod packet;
pub mod servers;
