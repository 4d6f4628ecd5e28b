//! The workload controllers (DaemonSet, StatefulSet, Job, CronJob) against a real etcd and the
//! real `keel-controlplane all`, with kubectl creating objects and [`FakeKubelet`] playing the
//! scheduler and kubelet (there is none in these tests).

#[path = "../support/etcd.rs"]
mod etcd;
// A kubelet the test steps by hand (run, finish, finish deletions); the workloads binary
// uses the background `support/kubelet.rs` one.
mod kubelet;
#[path = "../support/apiserver.rs"]
mod server;

mod cronjob;
mod daemonset;
mod job;
mod statefulset;

use std::time::{Duration, Instant};

pub use kubelet::FakeKubelet;
pub use server::TestApiServer;

/// A control plane and a fake kubelet on its admin client.
pub async fn start() -> anyhow::Result<(TestApiServer, FakeKubelet)> {
    let server = TestApiServer::start().await?;
    let kubelet = FakeKubelet::new(&server.kubeconfig()).await?;
    Ok((server, kubelet))
}

/// Creates nodes with kubectl (optionally labelled).
pub fn create_nodes(server: &TestApiServer, names: &[&str], labels: &str) {
    for name in names {
        let manifest = format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{{labels}}}\n"
        );
        server.ok_with_input(&["apply", "-f", "-"], &manifest);
    }
}

/// A polling deadline that fails with what was awaited and the control plane's log.
#[derive(Debug)]
pub struct Deadline<'a> {
    server: &'a TestApiServer,
    what: &'a str,
    timeout: Duration,
    end: Instant,
}

impl<'a> Deadline<'a> {
    pub fn new(server: &'a TestApiServer, what: &'a str, timeout: Duration) -> Self {
        Self {
            server,
            what,
            timeout,
            end: Instant::now() + timeout,
        }
    }

    /// Fails once the deadline passed; otherwise sleeps a little before the next poll.
    pub async fn tick(&self) -> anyhow::Result<()> {
        if Instant::now() > self.end {
            let log = self.server.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            anyhow::bail!(
                "{}: not reached within {:?}; control plane log (newest first):\n{}",
                self.what,
                self.timeout,
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(())
    }
}

/// kubectl's JSON output of `args`, parsed.
pub fn get_json(server: &TestApiServer, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&server.ok(&all)).expect("kubectl printed JSON")
}
