//! A test node whose agent runs against a real control plane, and kubectl processes that run
//! in the background (`logs -f`, `port-forward`) and are killed when dropped.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use keel_testhost::cluster::TestControlPlane;
use keel_testhost::node::TestNode;

/// A test node whose agent runs against a control plane in the same network namespace, once
/// its Node is registered.
pub fn api_node(tag: &str) -> (TestNode, TestControlPlane) {
    let mut node = TestNode::new(tag, super::agent_binary());
    let control_plane = TestControlPlane::start(&node);
    node.extra_args = vec![
        "--kubeconfig".into(),
        control_plane.kubeconfig().display().to_string(),
    ];
    node.start_agent();
    node.wait_for("node1 registered", Duration::from_secs(60), || {
        control_plane
            .kubectl(&["get", "node", "node1"])
            .status
            .success()
            .then_some(())
    });
    (node, control_plane)
}

/// A kubectl left running; its stdout and stderr lines arrive on `lines`. Killed on drop.
#[derive(Debug)]
pub struct Background {
    child: Child,
    pub lines: mpsc::Receiver<String>,
}

impl Background {
    /// Starts kubectl with `args` in the node's network namespace.
    pub fn kubectl(node: &TestNode, control_plane: &TestControlPlane, args: &[&str]) -> Self {
        Self::kubectl_with_env(node, control_plane, &[], args)
    }

    /// Starts kubectl with `args` and environment variables `env`.
    pub fn kubectl_with_env(
        node: &TestNode,
        control_plane: &TestControlPlane,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Self {
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", node.host.netns()))
            .arg("kubectl")
            .arg("--kubeconfig")
            .arg(control_plane.kubeconfig())
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        let (sender, lines) = mpsc::channel();
        let stdout: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().expect("piped"));
        let stderr: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().expect("piped"));
        for output in [stdout, stderr] {
            let sender = sender.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(output).lines() {
                    let Ok(line) = line else { break };
                    if sender.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Self { child, lines }
    }

    /// Reads lines until one satisfies `wanted`, for at most `timeout`; every line read.
    pub fn read_until(
        &self,
        timeout: Duration,
        mut wanted: impl FnMut(&str) -> bool,
    ) -> Result<Vec<String>, Vec<String>> {
        let deadline = std::time::Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = wanted(&line);
                    seen.push(line);
                    if done {
                        return Ok(seen);
                    }
                }
                Err(_) => return Err(seen),
            }
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
