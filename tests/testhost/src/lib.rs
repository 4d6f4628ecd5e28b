//! Test hosts: isolated "machines" as Linux network namespaces, wired by veth pairs or a
//! bridge, addressed from 198.18.0.0/15 (the range reserved for benchmarks), for Keel's
//! integration tests and benchmarks.
//!
//! ```no_run
//! use keel_testhost::{LinkOptions, TestNet};
//!
//! let mut net = TestNet::new("example").unwrap();
//! let client = net.add_host("client").unwrap();
//! let server = net.add_host("server").unwrap();
//! let link = net.connect(&client, &server, LinkOptions::default()).unwrap();
//! client.run(&["ping", "-c", "1", &link.b.ip.to_string()]).unwrap();
//! // Dropping `net` kills what runs in the hosts and deletes every namespace.
//! ```
//!
//! - [`net`]: [`TestNet`], [`Host`], links and switches, and cleanup on drop.
//! - [`process`]: commands and long-lived processes inside a host.
//! - [`cgroup`]: a cgroup2 group of the test's own for cgroup eBPF programs.
//! - [`bpffs`]: a bpf filesystem of the test's own, for agents to pin their dataplane in.
//! - [`run`]: the per-run name prefix, the run lock, and the sweeper for crashed runs.
//! - [`registry`]: a real OCI registry with busybox test images; [`node`]: a test node running
//!   `keel-agent` with static pods (and, given a kubeconfig, pods from an API server);
//!   [`cluster`]: etcd and `keel-controlplane` inside a test node; [`multinode`]: a control
//!   plane and several agents, each in a test host of its own, on one switch.
//!
//! Nothing here touches the root network namespace: veth ends are created directly inside the
//! test's namespaces, and every name starts with [`run::PREFIX`].

pub mod bpffs;
pub mod cgroup;
pub mod cluster;
pub mod multinode;
pub mod net;
pub mod node;
pub mod process;
pub mod registry;
pub mod run;

pub use bpffs::{BpffsError, TestBpffs};
pub use cgroup::{CgroupError, TestCgroup};
pub use net::{Endpoint, Host, Link, LinkOptions, Switch, TestNet, TestNetError};
pub use process::{HostProcess, ProcessError};
pub use run::{RunError, leftovers, sweep};

/// Fails the calling test, loudly, unless it runs as root. Keel's tests that need root never
/// skip quietly.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test needs root (network namespaces, eBPF, cgroups); run the suite with \
         `sudo -E cargo xtask test`"
    );
}

/// Fails the calling test, loudly, unless `tool` is on the PATH; names the Debian package.
pub fn require_tool(tool: &str, debian_package: &str) {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "this test needs `{tool}`: install the Debian package `{debian_package}` (`cargo xtask \
         setup` does, as root)"
    );
}

/// Polls `check` every 200 ms until it gives `Some`; after `timeout`, fails the test with a
/// message naming `what`, followed by `context()` (logs, diagnostics).
pub fn wait_until<T>(
    what: &str,
    timeout: std::time::Duration,
    mut check: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
