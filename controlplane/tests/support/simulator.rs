//! Simulated nodes for control-plane tests: `keel-agent simulate` (the real agent binary,
//! KWOK-like: Nodes, Leases and pod statuses through the agent's own API calls, no
//! containers) against a [`TestApiServer`], killed on drop; and [`wait_for`], which polls
//! until a deadline and then fails with the control plane's and the simulators' logs.
//!
//! `keel-agent` is taken from beside the test's executable (`target/<profile>/keel-agent`):
//! `cargo test` of the whole workspace builds it; alone, run `cargo build -p keel-agent` first.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::etcd::die_with_parent;
use super::server::TestApiServer;

/// How long [`wait_for`] waits by default.
pub const DEADLINE: Duration = Duration::from_secs(90);

fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    let mut dir = exe.parent().expect("a directory").to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join("keel-agent");
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build -p keel-agent`)",
        path.display()
    );
    path
}

/// A `keel-agent simulate` process serving `nodes` nodes `<prefix>0`, `<prefix>1`, ...;
/// killed on drop.
pub struct Simulator {
    child: Child,
    log: PathBuf,
}

impl Simulator {
    /// Starts it with more `keel-agent simulate` flags (`--cpu=2`, `--labels=pool=a`, ...).
    pub fn start(server: &TestApiServer, prefix: &str, nodes: u32, extra: &[&str]) -> Simulator {
        let log = server.data_dir().join(format!("simulate-{prefix}log"));
        let file = std::fs::File::create(&log).expect("simulator log");
        let mut command = Command::new(agent_binary());
        command
            .arg("simulate")
            .arg("--kubeconfig")
            .arg(server.kubeconfig())
            .arg(format!("--nodes={nodes}"))
            .arg(format!("--name-prefix={prefix}"))
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        die_with_parent(&mut command);
        let child = command.spawn().expect("spawning keel-agent simulate");
        Simulator { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the process (SIGKILL): its nodes stop renewing their Leases.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `probe` every 200 ms until it gives a value; panics with `what` and the logs after
/// [`DEADLINE`].
pub fn wait_for<T>(
    what: &str,
    server: &TestApiServer,
    sims: &[&Simulator],
    probe: impl FnMut() -> Option<T>,
) -> T {
    wait_longer(what, DEADLINE, server, sims, probe)
}

/// [`wait_for`] with another deadline.
pub fn wait_longer<T>(
    what: &str,
    deadline: Duration,
    server: &TestApiServer,
    sims: &[&Simulator],
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if Instant::now() > end {
            let logs: Vec<String> = sims.iter().map(|s| s.log()).collect();
            panic!(
                "timed out after {deadline:?} waiting for {what}\ncontrol plane log:\n{}\nsimulator logs:\n{}",
                server.log(),
                logs.join("\n---\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until `count` nodes report Ready True.
pub fn wait_for_ready_nodes(server: &TestApiServer, sims: &[&Simulator], count: usize) {
    wait_for(&format!("{count} Ready nodes"), server, sims, || {
        let ready = "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}";
        get(server, &["get", "nodes", "-o", ready])
            .filter(|out| out.split_whitespace().filter(|s| *s == "True").count() == count)
    });
}

/// kubectl's output, when kubectl succeeds.
pub fn get(server: &TestApiServer, args: &[&str]) -> Option<String> {
    let output = server.kubectl(args);
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
