//! A real `keel-controlplane apiserver` process for tests, on a free loopback port with its
//! data dir (CA, certificates, admin.kubeconfig) in a `keel-cp-*` temp dir, next to a
//! [`TestEtcd`]; and the preinstalled `kubectl` pointed at it. Killed (and the directory
//! removed) on drop, also when the test panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tempfile::TempDir;

use super::etcd::{TestEtcd, die_with_parent, free_port};

const KUBECTL: &str = "/usr/local/bin/kubectl";
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct TestApiServer {
    child: Child,
    pub port: u16,
    data_dir: TempDir,
    pub etcd: TestEtcd,
    /// More `keel-controlplane all` flags, kept for restarts.
    extra_args: Vec<String>,
    /// `all` or `apiserver`.
    component: &'static str,
}

impl TestApiServer {
    /// The whole control plane (`keel-controlplane all`).
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_component("all", &[]).await
    }

    /// Starts it with more `keel-controlplane all` flags.
    #[allow(dead_code, reason = "not every test binary passes flags")]
    pub async fn start_with(extra_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_component("all", extra_args).await
    }

    /// The API server alone (`keel-controlplane apiserver`): no controllers, no scheduler.
    #[allow(dead_code, reason = "not every test binary runs the API server alone")]
    pub async fn start_apiserver_only() -> anyhow::Result<Self> {
        Self::start_component("apiserver", &[]).await
    }

    async fn start_component(component: &'static str, extra_args: &[&str]) -> anyhow::Result<Self> {
        let extra_args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
        let kubectl = kubectl_path();
        assert!(
            kubectl.exists(),
            "kubectl is missing at {}: these tests drive the API server with the real kubectl",
            kubectl.display()
        );
        let etcd = TestEtcd::start().await?;
        let data_dir = tempfile::Builder::new().prefix("keel-cp-").tempdir()?;
        let port = free_port()?;
        let child = spawn(
            component,
            data_dir.path(),
            etcd.endpoint(),
            port,
            &extra_args,
        )?;
        let mut server = Self {
            child,
            port,
            data_dir,
            etcd,
            extra_args,
            component,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// Kills the API server with SIGKILL and starts it again on the same port and data.
    pub fn restart_killed(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.start_again()
    }

    /// Kills the API server with SIGKILL.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Starts the API server again on the same port and data.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.child = spawn(
            self.component,
            self.data_dir.path(),
            self.etcd.endpoint(),
            self.port,
            &self.extra_args,
        )?;
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("keel-controlplane exited with {status}:\n{}", self.log());
            }
            if self.kubeconfig().exists() {
                let output = self.kubectl(&["get", "--raw", "/readyz"]);
                if output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "ok"
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "keel-controlplane not ready after {READY_TIMEOUT:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("controlplane.log")).unwrap_or_default()
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.path().join("admin.kubeconfig")
    }

    /// A kube-rs client with the admin kubeconfig.
    #[allow(dead_code, reason = "not every test binary uses kube-rs")]
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(self.kubeconfig())?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(kubectl_path())
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", self.data_dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("running kubectl")
    }

    /// Runs kubectl with `stdin` as its input.
    pub fn kubectl_with_input(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write as _;
        let mut child = Command::new(kubectl_path())
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", self.data_dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running kubectl");
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(stdin.as_bytes())
            .expect("writing kubectl's input");
        child.wait_with_output().expect("waiting for kubectl")
    }

    /// kubectl that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        checked(args, self.kubectl(args))
    }

    pub fn ok_with_input(&self, args: &[&str], stdin: &str) -> String {
        checked(args, self.kubectl_with_input(args, stdin))
    }

    /// kubectl that must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let output = self.kubectl(args);
        assert!(
            !output.status.success(),
            "kubectl {args:?} should have failed, printed:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    pub fn fails_with_input(&self, args: &[&str], stdin: &str) -> String {
        let output = self.kubectl_with_input(args, stdin);
        assert!(
            !output.status.success(),
            "kubectl {args:?} should have failed, printed:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }
}

fn checked(args: &[&str], output: Output) -> String {
    assert!(
        output.status.success(),
        "kubectl {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn kubectl_path() -> PathBuf {
    ["/usr/local/bin/kubectl", "/usr/bin/kubectl"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from(KUBECTL))
}

fn spawn(
    component: &str,
    data_dir: &Path,
    etcd: &str,
    port: u16,
    extra_args: &[String],
) -> anyhow::Result<Child> {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(data_dir.join("controlplane.log"))?;
    let mut command = Command::new(env!("CARGO_BIN_EXE_keel-controlplane"));
    command
        // `all`: the whole control plane, as `cargo xtask up` runs it (the namespace
        // controller empties deleted namespaces, the scheduler binds pods).
        .arg(component)
        .arg(format!("--etcd-servers={etcd}"))
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--secure-port={port}"))
        .args(extra_args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    die_with_parent(&mut command);
    command.spawn().context("spawning keel-controlplane")
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
