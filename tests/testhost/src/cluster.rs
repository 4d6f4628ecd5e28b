//! A real control plane for agent tests and benchmarks: etcd and `keel-controlplane all`, both
//! inside a test node's network namespace (so the agent there reaches them on its loopback),
//! or inside a test host of their own with the API server on one of its addresses (for agents
//! in other hosts), with kubectl pointed at them. Killed, and their directories removed, on drop.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::node::TestNode;
use crate::{Host, HostProcess};

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
        TestControlPlane::start_in(&node.host, Ipv4Addr::LOCALHOST, &[])
    }

    /// etcd on the loopback of `host` and the API server on `address` (one of the host's
    /// addresses: agents in other hosts reach it there), `keel-controlplane all` with
    /// `extra_args` added (e.g. `--cluster-cidr`).
    pub fn start_in(host: &Host, address: Ipv4Addr, extra_args: &[String]) -> TestControlPlane {
        crate::require_tool("etcd", "etcd-server");
        let dir = tempfile::Builder::new()
            .prefix("kt-cp-")
            .tempdir()
            .expect("temp dir");
        let netns = host.netns().to_owned();
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
        let mut args = vec![
            "all".into(),
            "--etcd-servers=http://127.0.0.1:2379".into(),
            format!("--data-dir={}", dir.path().join("cp").display()),
            format!("--bind-address={address}"),
            "--secure-port=6443".into(),
        ];
        args.extend_from_slice(extra_args);
        let apiserver = spawn(
            &workspace_binary("keel-controlplane"),
            &args,
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
