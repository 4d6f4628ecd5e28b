//! Keel's benchmarks. Each binary under `src/bin/` measures one figure of Keel beside a
//! baseline measured in the same run on the same machine, and prints both and their ratio:
//! the machine is shared and noisy, so only ratios carry from one run to another. Nothing
//! here is a test and nothing gates CI on a number.

use std::time::Duration;

pub mod kube_proxy;
pub mod local;
pub mod runc;

/// Rate of `count` operations done in `elapsed`, per second.
pub fn per_second(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(f64::EPSILON)
}

/// The value at `fraction` (0.5: p50, 0.99: p99) of `samples`, which it sorts.
pub fn percentile(samples: &mut [Duration], fraction: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 * fraction) as usize).min(samples.len().saturating_sub(1));
    samples.get(index).copied().unwrap_or_default()
}

/// Resident set size of a process (`VmRSS`), in KiB.
pub fn rss_kib(pid: u32) -> std::io::Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// Peak resident set size of a process (`VmHWM`), in KiB.
pub fn peak_rss_kib(pid: u32) -> std::io::Result<u64> {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> std::io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no {field} in /proc/{pid}/status")))
}

/// The workspace binary `name` beside this benchmark's executable (`target/release/`), or an
/// error saying how to build it.
pub fn sibling_binary(name: &str, package: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::current_exe()?
        .parent()
        .ok_or_else(|| anyhow::anyhow!("the benchmark's executable has no directory"))?
        .join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: cargo build --release -p {package}",
        path.display()
    );
    Ok(path)
}

/// Runs `work` with a kube client of `kubeconfig`, on a current-thread runtime inside `host`
/// (whose network namespace holds the API server's address), and returns its result.
pub fn with_client_in<T: Send>(
    host: &keel_testhost::Host,
    kubeconfig: &std::path::Path,
    work: impl AsyncFnOnce(kube::Client) -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    host.enter(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let config = kube::Config::from_custom_kubeconfig(
                kube::config::Kubeconfig::read_from(kubeconfig)?,
                &kube::config::KubeConfigOptions::default(),
            )
            .await?;
            work(kube::Client::try_from(config)?).await
        })
    })
    .map_err(|error| anyhow::anyhow!("{error}"))?
}
