//! Helpers shared by the agent's integration tests.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the support code"
)]

pub mod packet;

/// Fails the test, loudly, when not root: these tests load eBPF programs.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (eBPF); run it with `sudo -E cargo xtask test`"
    );
}
