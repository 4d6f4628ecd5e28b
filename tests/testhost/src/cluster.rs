//! A real control plane for agent tests and benchmarks: etcd and `keel-controlplane all`, both
//! inside a test node's network namespace (so the agent there reaches them on its loopback),
//! with kubectl pointed at them. Killed, and their directories removed, on drop.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::HostProcess;
use crate::node::TestNode;

#[derive(Debug)]
pub struct TestControlPlane {
    // Field order: the API server stops before etcd, both before their directory goes.
    _apiserver: HostProcess,
    _etcd: HostProcess,
    pub dir: tempfile::TempDir,
    netns: String,
}

/// A binary of the workspace, beside the running test's or benchmark's executable
/// (`target/<profile>/`, or its parent when the executable is in `deps/`).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    let mut dir = exe.parent().expect("a directory").to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build -p {name}`; `cargo xtask test` does)",
        path.display()
    );
    path
}

impl TestControlPlane {
    pub fn start(node: &TestNode) -> TestControlPlane {
        crate::require_tool("etcd", "etcd-server");
        let dir = tempfile::Builder::new()
            .prefix("kt-cp-")
            .tempdir()
            .expect("temp dir");
        let netns = node.host.netns().to_owned();
        let spawn = |program: &std::path::Path, args: &[String], log: &str| {
            let log = std::fs::File::create(dir.path().join(log)).unwrap();
            HostProcess::spawn(
                Command::new("nsenter")
                    .arg(format!("--net=/run/netns/{netns}"))
                    .arg(program)
                    .args(args)
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log),
            )
            .expect("spawn")
        };
        let etcd_dir = dir.path().join("etcd");
        let etcd = spawn(
            std::path::Path::new("/usr/bin/etcd"),
            &[
                format!("--data-dir={}", etcd_dir.display()),
                "--listen-client-urls=http://127.0.0.1:2379".into(),
                "--advertise-client-urls=http://127.0.0.1:2379".into(),
                "--listen-peer-urls=http://127.0.0.1:2380".into(),
                "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
                "--initial-cluster=default=http://127.0.0.1:2380".into(),
            ],
            "etcd.log",
        );
        let apiserver = spawn(
            &workspace_binary("keel-controlplane"),
            &[
                "all".into(),
                "--etcd-servers=http://127.0.0.1:2379".into(),
                format!("--data-dir={}", dir.path().join("cp").display()),
                "--bind-address=127.0.0.1".into(),
                "--secure-port=6443".into(),
            ],
            "controlplane.log",
        );
        let control_plane = TestControlPlane {
            _apiserver: apiserver,
            _etcd: etcd,
            dir,
            netns,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if control_plane.kubeconfig().exists() {
                let output = control_plane.kubectl(&["get", "--raw", "/readyz"]);
                if output.status.success() {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "control plane not ready:\n{}",
                control_plane.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        control_plane
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("cp/admin.kubeconfig")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("controlplane.log")).unwrap_or_default()
    }

    /// kubectl, run in the node's network namespace.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .output()
            .expect("kubectl")
    }

    /// kubectl with `stdin` as input; panics with its stderr unless it succeeds.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        if let Some(input) = stdin {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}
