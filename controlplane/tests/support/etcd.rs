//! A real, throwaway etcd for tests: `/usr/bin/etcd` on free loopback ports with its data in a
//! `keel-etcd-*` temp dir. [`TestEtcd`] kills the process and removes the directory when
//! dropped, also when the test panics; the process also gets SIGKILL if the test thread that
//! started it dies without unwinding.
//!
//! A missing etcd binary is a test failure naming the Debian package, never a skip.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use tempfile::TempDir;

const ETCD_BIN: &str = "/usr/bin/etcd";
const START_ATTEMPTS: usize = 5;
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const LOG_FILE: &str = "etcd.log";

/// One etcd member serving on `endpoint`.
#[derive(Debug)]
pub struct TestEtcd {
    child: Child,
    endpoint: String,
    peer: String,
    data_dir: TempDir,
}

impl TestEtcd {
    /// Starts etcd and waits until it answers a read.
    pub async fn start() -> anyhow::Result<Self> {
        assert!(
            Path::new(ETCD_BIN).exists(),
            "{ETCD_BIN} is missing: these tests need a real etcd; install the Debian package \
             `etcd-server` (apt-get install etcd-server)"
        );
        let mut last_error = anyhow!("etcd never started");
        // Free ports are found by binding port 0 and letting go, so another process can take
        // one before etcd does; a member that dies at start is retried on new ports.
        for _ in 0..START_ATTEMPTS {
            match Self::try_start().await {
                Ok(etcd) => return Ok(etcd),
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }

    async fn try_start() -> anyhow::Result<Self> {
        let data_dir = tempfile::Builder::new()
            .prefix("keel-etcd-")
            .tempdir()
            .context("creating etcd data dir")?;
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let endpoint = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let child = spawn_etcd(data_dir.path(), &endpoint, &peer)?;
        let mut etcd = Self {
            child,
            endpoint,
            peer,
            data_dir,
        };
        etcd.wait_ready().await?;
        Ok(etcd)
    }

    /// Kills etcd and starts it again on the same ports and data (a crash and recovery, as
    /// clients see it).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let _ = self.child.kill();
        self.child.wait()?;
        self.child = spawn_etcd(self.data_dir.path(), &self.endpoint, &self.peer)?;
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let log_path = &self.data_dir.path().join(LOG_FILE);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "etcd exited at start ({status}); log:\n{}",
                    log_tail(log_path)
                );
            }
            if let Ok(Ok(mut client)) = tokio::time::timeout(
                Duration::from_secs(2),
                etcd_client::Client::connect([&self.endpoint], None),
            )
            .await
                && let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_secs(2), client.get("/", None)).await
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd did not answer on {} within {READY_TIMEOUT:?}; log:\n{}",
                    self.endpoint,
                    log_tail(log_path)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The client URL, such as `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A plain etcd client, for what the store under test must not do itself.
    pub async fn client(&self) -> anyhow::Result<etcd_client::Client> {
        Ok(etcd_client::Client::connect([&self.endpoint], None).await?)
    }

    /// Compacts etcd's history up to `revision` and waits until the compaction is applied.
    pub async fn compact(&self, revision: i64) -> anyhow::Result<()> {
        let options = etcd_client::CompactionOptions::new().with_physical();
        self.client()
            .await?
            .compact(revision, Some(options))
            .await?;
        Ok(())
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        // Already exited is fine; the directory goes when `data_dir` drops after this.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the etcd process; its output goes to `etcd.log` in `data_dir` (appended across
/// restarts).
fn spawn_etcd(data_dir: &Path, endpoint: &str, peer: &str) -> anyhow::Result<Child> {
    let log = File::options()
        .create(true)
        .append(true)
        .open(data_dir.join(LOG_FILE))
        .context("opening etcd log")?;
    let mut command = Command::new(ETCD_BIN);
    command
        .arg("--name=default")
        .arg(format!("--data-dir={}", data_dir.join("data").display()))
        .arg(format!("--listen-client-urls={endpoint}"))
        .arg(format!("--advertise-client-urls={endpoint}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=default={peer}"))
        // Lets watch-cache tests see the revision move without writes.
        .arg("--experimental-watch-progress-notify-interval=500ms")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    die_with_parent(&mut command);
    command.spawn().context("spawning etcd")
}

/// Makes the child get SIGKILL when the thread that spawned it dies, so a test that aborts
/// without unwinding leaves no process behind.
pub fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl,
    // which is async-signal-safe; it touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
