//! The suite's cluster: `cargo xtask up` / `down` with a placement of its own, and kubectl
//! against it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use keel_testhost::process::OutputLines;

/// Where the suite's cluster lives on the host: every name, address and port differs from
/// `cargo xtask up`'s defaults, so a user's cluster on the same host is never touched.
pub mod placement {
    pub const BRIDGE: &str = "keel-e2e0";
    pub const NODE_SUBNET: &str = "198.19.254.0/24";
    /// The host's address on the bridge: API server, registry, the single node.
    pub const HOST_IP: &str = "198.19.254.1";
    /// The start of every node address of `--nodes` (`.11`, `.12`, ...) and of the host's.
    pub const SUBNET_PREFIX: &str = "198.19.254.";
    pub const API_PORT: u16 = 16443;
    pub const ETCD_CLIENT_PORT: u16 = 12379;
    pub const ETCD_PEER_PORT: u16 = 12380;
    pub const REGISTRY_PORT: u16 = 15000;
    pub const CLUSTER_CIDR: &str = "198.19.192.0/20";
    pub const CLUSTER_DNS: &str = "169.254.20.11";
    pub const CGROUP_ROOT: &str = "keel-e2e";
    pub const BPF_ROOT: &str = "/sys/fs/bpf/keel-e2e";
    pub const NODE_PREFIX: &str = "keel-e2e-";

    /// `up`'s flags for this placement.
    pub fn flags() -> Vec<String> {
        vec![
            format!("--bridge={BRIDGE}"),
            format!("--node-subnet={NODE_SUBNET}"),
            format!("--api-port={API_PORT}"),
            format!("--etcd-client-port={ETCD_CLIENT_PORT}"),
            format!("--etcd-peer-port={ETCD_PEER_PORT}"),
            format!("--registry-port={REGISTRY_PORT}"),
            format!("--cluster-cidr={CLUSTER_CIDR}"),
            format!("--cluster-dns={CLUSTER_DNS}"),
            format!("--cgroup-root={CGROUP_ROOT}"),
            format!("--bpf-root={BPF_ROOT}"),
            format!("--node-prefix={NODE_PREFIX}"),
        ]
    }

    /// Where pods pull the examples' image from.
    pub fn registry() -> String {
        format!("{HOST_IP}:{REGISTRY_PORT}")
    }

    /// The address of node `k` of `--nodes`.
    pub fn node_ip(k: u8) -> String {
        format!("{SUBNET_PREFIX}{}", 10 + u16::from(k))
    }

    /// The name of node `k` of `--nodes`.
    pub fn node(k: u8) -> String {
        format!("{NODE_PREFIX}node{k}")
    }
}

/// The workspace: `cargo xtask` runs there.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub root: PathBuf,
    /// The suite's cluster state (`--state-dir`).
    pub state_dir: PathBuf,
}

impl Workspace {
    pub fn discover() -> anyhow::Result<Workspace> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .nth(2)
            .context("tests/e2e has no workspace above it")?
            .to_owned();
        Ok(Workspace {
            state_dir: root.join("target").join("e2e").join("state"),
            root,
        })
    }

    fn xtask(&self, task: &str) -> Command {
        let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cargo
            .current_dir(&self.root)
            .args(["xtask", task, "--state-dir"])
            .arg(&self.state_dir);
        cargo
    }

    /// `cargo xtask down` of the suite's cluster.
    pub fn down(&self) -> anyhow::Result<()> {
        let mut down = self.xtask("down");
        log(&format!("+ {}", describe(&down)));
        let status = down.status().context("cannot run cargo xtask down")?;
        if !status.success() {
            bail!("`{}` failed: {status}", describe(&down));
        }
        Ok(())
    }

    /// Whether an `up` of the suite's cluster left its placement behind (a run that stopped
    /// before its `down`).
    pub fn has_cluster(&self) -> bool {
        self.state_dir.join("run").join("placement").exists()
    }
}

/// A cluster `cargo xtask up` started; `down` on drop if the suite did not get there.
#[derive(Debug)]
pub struct Cluster {
    workspace: Workspace,
    kubeconfig: PathBuf,
    up: bool,
}

impl Cluster {
    /// `cargo xtask up --fresh` with the suite's placement and `extra` flags; checks that it
    /// prints `export KUBECONFIG=...` on a line of its own.
    pub fn up(workspace: &Workspace, extra: &[String]) -> anyhow::Result<Cluster> {
        let mut up = workspace.xtask("up");
        up.arg("--fresh").args(placement::flags()).args(extra);
        log(&format!("+ {}", describe(&up)));
        // Its progress (stderr) shows in the suite's output; stdout is what a shell evaluates.
        let output = up
            .stderr(Stdio::inherit())
            .output()
            .context("cannot run cargo xtask up")?;
        // From here the cluster may be partly up: dropping this handle takes it down.
        let mut cluster = Cluster {
            workspace: workspace.clone(),
            kubeconfig: PathBuf::new(),
            up: true,
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "`cargo xtask up` failed ({}); its stdout:\n{stdout}",
                output.status
            );
        }
        let kubeconfig = stdout
            .lines()
            .find_map(|line| line.strip_prefix("export KUBECONFIG="))
            .with_context(|| {
                format!("`cargo xtask up` printed no `export KUBECONFIG=...` line; its stdout:\n{stdout}")
            })?;
        cluster.kubeconfig = PathBuf::from(kubeconfig.trim());
        anyhow::ensure!(
            cluster.kubeconfig.is_file(),
            "`cargo xtask up` exported KUBECONFIG={}, which is no file",
            cluster.kubeconfig.display()
        );
        Ok(cluster)
    }

    /// The kubeconfig `up` exported.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `cargo xtask down`.
    pub fn down(mut self) -> anyhow::Result<()> {
        self.up = false;
        self.workspace.down()
    }

    fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut kubectl = Command::new("kubectl");
        kubectl.env("KUBECONFIG", &self.kubeconfig).args(args);
        kubectl
    }

    /// kubectl's stdout; an error with its stderr if it fails.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_stdin(args, None)
    }

    /// kubectl with `stdin` on its standard input.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        use std::io::Write as _;
        let mut command = self.kubectl_command(&[]);
        command
            .arg("--request-timeout=60s")
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().context("cannot run kubectl")?;
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(text.as_bytes())
                .context("cannot write to kubectl")?;
        }
        let output = child.wait_with_output().context("kubectl")?;
        if !output.status.success() {
            bail!(
                "`kubectl {}` failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// kubectl running in the background, its stdout's lines arriving as it prints them.
    pub fn kubectl_stream(&self, args: &[&str]) -> anyhow::Result<Stream> {
        let lines = OutputLines::spawn(&mut self.kubectl_command(args), false)
            .context("cannot run kubectl")?;
        Ok(Stream {
            lines,
            what: format!("kubectl {}", args.join(" ")),
        })
    }

    /// What the cluster looks like, for a failure's message.
    pub fn diagnostics(&self) -> String {
        let mut text = String::new();
        for args in [
            &["get", "nodes", "-o", "wide"][..],
            &["get", "pods", "-A", "-o", "wide"],
            &["get", "events", "-A", "--sort-by=.lastTimestamp"],
        ] {
            text.push_str(&format!("$ kubectl {}\n", args.join(" ")));
            match self.kubectl(args) {
                Ok(out) => text.push_str(&out),
                Err(error) => text.push_str(&format!("{error:#}\n")),
            }
        }
        let logs = self.workspace.state_dir.join("logs");
        for entry in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
            let content = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let lines: Vec<&str> = content.lines().collect();
            text.push_str(&format!(
                "--- the end of {}\n{}\n",
                entry.path().display(),
                lines[lines.len().saturating_sub(15)..].join("\n")
            ));
        }
        text
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.up
            && let Err(error) = self.workspace.down()
        {
            eprintln!("keel-e2e: taking the cluster down after a failure failed too: {error:#}");
        }
    }
}

/// A background kubectl; killed on drop.
#[derive(Debug)]
pub struct Stream {
    lines: OutputLines,
    what: String,
}

impl Stream {
    /// The lines up to and including the first that `wanted` accepts, within `timeout`.
    pub fn until(
        &mut self,
        timeout: Duration,
        wanted: impl FnMut(&str) -> bool,
    ) -> anyhow::Result<Vec<String>> {
        self.lines.read_until(timeout, wanted).or_else(|seen| {
            let stderr = self.lines.kill();
            bail!(
                "`{}` did not print the line wanted within {timeout:?}; it printed:\n{}\nstderr: {}",
                self.what,
                seen.join("\n"),
                stderr.trim()
            )
        })
    }
}

/// Polls `check` every half second until it returns a value, for up to `timeout`; the error
/// names `what` and `check`'s last error.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => last.clear(),
            Err(error) => last = format!("{error:#}"),
        }
        if Instant::now() > deadline {
            bail!(
                "gave up waiting for {what} after {timeout:?}{}",
                if last.is_empty() {
                    String::new()
                } else {
                    format!(" (last error: {last})")
                }
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|arg| arg.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A progress line, with the time since the suite started.
pub fn log(text: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(Instant::now);
    eprintln!("[e2e {:>6.1}s] {text}", start.elapsed().as_secs_f64());
}
