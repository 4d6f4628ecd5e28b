//! A test node whose agent runs against a real control plane, and kubectl processes that run
//! in the background (`logs -f`, `port-forward`) and are killed when dropped.

use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::Duration;

use keel_agent::nodeapi::pty;
use keel_testhost::cluster::TestControlPlane;
use keel_testhost::node::TestNode;
use keel_testhost::process::OutputLines;

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

/// kubectl with `args` (and environment variables `env`) in the node's network namespace,
/// left running.
pub fn background_kubectl(
    node: &TestNode,
    control_plane: &TestControlPlane,
    env: &[(&str, &str)],
    args: &[&str],
) -> OutputLines {
    OutputLines::spawn(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", node.host.netns()))
            .arg("kubectl")
            .arg("--kubeconfig")
            .arg(control_plane.kubeconfig())
            .args(args)
            .envs(env.iter().copied()),
        true,
    )
    .expect("kubectl")
}

/// kubectl run on a pseudo-terminal of the test's own, as a user at a terminal runs it
/// (`exec -it`): what it prints is read from the master end, keystrokes written to it, and a
/// window resize there reaches kubectl as `SIGWINCH`. Killed on drop.
#[derive(Debug)]
pub struct Terminal {
    child: Child,
    master: std::fs::File,
    output: mpsc::Receiver<Vec<u8>>,
    /// Everything read so far.
    pub seen: String,
}

impl Terminal {
    /// Starts kubectl with `args` on a new terminal of `rows` x `cols`.
    pub fn kubectl(
        node: &TestNode,
        control_plane: &TestControlPlane,
        rows: u16,
        cols: u16,
        args: &[&str],
    ) -> Self {
        use std::os::fd::AsFd as _;
        use std::os::unix::process::CommandExt as _;
        let (master, slave) = pty::open_pair().expect("a pseudo-terminal");
        pty::set_window_size(master.as_fd(), rows, cols).unwrap();
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", node.host.netns()))
            .arg("kubectl")
            .arg("--kubeconfig")
            .arg(control_plane.kubeconfig())
            .args(args)
            .stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave);
        // SAFETY: become_terminal_leader makes only async-signal-safe calls; kubectl leads a
        // session whose controlling terminal is the slave end, as a login shell's children do.
        unsafe { command.pre_exec(|| pty::become_terminal_leader()) };
        let child = command.spawn().expect("kubectl");
        drop(command);
        let master = std::fs::File::from(master);
        let mut reader = master.try_clone().unwrap();
        let (sender, output) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::Read as _;
            let mut buffer = [0_u8; 4096];
            // Ends with EIO once kubectl, the only holder of the slave end, is gone.
            while let Ok(n @ 1..) = reader.read(&mut buffer) {
                if sender.send(buffer[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            master,
            output,
            seen: String::new(),
        }
    }

    /// Reads until the output so far contains `wanted`, for at most `timeout`.
    pub fn read_until(&mut self, timeout: Duration, wanted: &str) -> Result<(), String> {
        let deadline = std::time::Instant::now() + timeout;
        while !self.seen.contains(wanted) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.output.recv_timeout(left) {
                Ok(chunk) => self.seen.push_str(&String::from_utf8_lossy(&chunk)),
                Err(_) => return Err(self.seen.clone()),
            }
        }
        Ok(())
    }

    /// Types `keys` at the terminal.
    pub fn type_keys(&mut self, keys: &str) {
        use std::io::Write as _;
        self.master.write_all(keys.as_bytes()).unwrap();
    }

    /// Resizes the terminal window.
    pub fn resize(&self, rows: u16, cols: u16) {
        use std::os::fd::AsFd as _;
        pty::set_window_size(self.master.as_fd(), rows, cols).unwrap();
    }

    /// Waits up to `timeout` for kubectl to exit; its exit code.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
