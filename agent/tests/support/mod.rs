//! Helpers shared by the agent's integration tests.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the support code"
)]

pub mod cluster;
pub mod curl;
pub mod metrics;
pub mod packet;
pub mod pinned;
pub mod servers;

/// The `keel-agent` binary cargo built for these tests.
pub fn agent_binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_keel-agent"))
}
