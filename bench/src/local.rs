//! A throwaway etcd and `target/release/keel-controlplane` on free loopback ports, without
//! root or network namespaces (the API benchmarks' cluster); both killed and their directory
//! removed on drop. Also the concurrent-operation driver those benchmarks share.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A child process killed on drop.
#[derive(Debug)]
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP port on loopback that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn_logged(command: &mut Command, log: &Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log)?;
    Ok(command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?)
}

/// etcd plus one `keel-controlplane` process.
#[derive(Debug)]
pub struct LocalControlPlane {
    // Field order: the control plane stops before etcd, both before their directory goes.
    controlplane: Process,
    _etcd: Process,
    /// etcd's client URL.
    pub endpoint: String,
    pub dir: tempfile::TempDir,
}

impl LocalControlPlane {
    /// Starts etcd and `keel-controlplane <component> <args>` (`component`: `apiserver` or
    /// `all`) with its etcd, data directory, address and port filled in; `RUST_LOG=warn`.
    /// The binary is `target/release/keel-controlplane`, or `$KEEL_CONTROLPLANE`.
    pub fn start(component: &str, args: &[&str]) -> anyhow::Result<Self> {
        // `KEEL_CONTROLPLANE` names another build (e.g. a copy from before a change).
        let binary = std::env::var_os("KEEL_CONTROLPLANE").map_or_else(
            || {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../target/release/keel-controlplane")
            },
            PathBuf::from,
        );
        if !binary.exists() {
            bail!(
                "{} is missing: run `cargo build --release -p keel-controlplane` first",
                binary.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("keel-bench-controlplane-")
            .tempdir()?;
        let (client_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
        let endpoint = format!("http://127.0.0.1:{client_port}");
        let etcd = Process(
            spawn_logged(
                Command::new("etcd")
                    .arg(format!("--data-dir={}", dir.path().join("etcd").display()))
                    .arg(format!("--listen-client-urls={endpoint}"))
                    .arg(format!("--advertise-client-urls={endpoint}"))
                    .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
                    .arg(format!(
                        "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
                    ))
                    .arg(format!(
                        "--initial-cluster=default=http://127.0.0.1:{peer_port}"
                    )),
                &dir.path().join("etcd.log"),
            )
            .context("starting etcd (Debian package etcd-server)")?,
        );
        let controlplane = Process(spawn_logged(
            Command::new(&binary)
                .arg(component)
                .arg(format!("--etcd-servers={endpoint}"))
                .arg(format!("--data-dir={}", dir.path().join("cp").display()))
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--secure-port={api_port}"))
                .args(args)
                .env("RUST_LOG", "warn"),
            &dir.path().join("controlplane.log"),
        )?);
        Ok(Self {
            controlplane,
            _etcd: etcd,
            endpoint,
            dir,
        })
    }

    /// The `keel-controlplane` process id.
    pub fn pid(&self) -> u32 {
        self.controlplane.0.id()
    }

    /// An admin client, once the API server answers (60 s at most); the logs otherwise.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = self.dir.path().join("cp/admin.kubeconfig");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::from("no kubeconfig written yet");
        loop {
            if kubeconfig.exists() {
                let config = kube::Config::from_custom_kubeconfig(
                    kube::config::Kubeconfig::read_from(&kubeconfig)?,
                    &Default::default(),
                )
                .await?;
                let client = kube::Client::try_from(config)?;
                match client.apiserver_version().await {
                    Ok(_) => return Ok(client),
                    Err(error) => last = format!("{:#}", anyhow::Error::from(error)),
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the API server did not answer within 60s (last: {last})\n\
                     keel-controlplane's log:\n{}\netcd's log:\n{}",
                    self.log("controlplane.log"),
                    self.log("etcd.log")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One of the logs (`controlplane.log`, `etcd.log`).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }
}

/// Runs `operation(0..count)` on `concurrency` tasks; each operation's latency.
pub async fn run_concurrently<F, Fut>(
    concurrency: usize,
    count: usize,
    operation: F,
) -> anyhow::Result<Vec<Duration>>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let next = next.clone();
        let operation = operation.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let started = Instant::now();
                operation(index).await?;
                latencies.push(started.elapsed());
            }
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(all)
}
