//! The API server's latency, throughput and memory, beside `etcdctl check perf` on the same
//! etcd in the same run (the floor: what the storage itself gives).
//!
//! Run: `cargo build --release -p keel-controlplane && cargo run --release -p keel-bench --bin
//! apiserver [-- OBJECTS]`. It starts a throwaway etcd and `target/release/keel-controlplane`
//! on free loopback ports, then with 1 and with 50 concurrent kube-rs clients measures
//! create, get and list latency percentiles and throughput and the delay from a create to
//! its `ADDED` event on a watch; last, the API server's RSS idle and holding 10,000 Pods.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use keel_bench::{per_second, rss_kib};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

const CONCURRENCY: [usize; 2] = [1, 50];
const PODS: usize = 10_000;

/// A child process killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn quiet(command: &mut Command, log: &Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log)?;
    Ok(command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // kube's TLS uses whichever rustls provider the process installs; Keel uses ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let objects: usize = match std::env::args().nth(1) {
        Some(text) => text
            .parse()
            .with_context(|| format!("objects: `{text}` is not a number"))?,
        None => 2_000,
    };
    let binary =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/keel-controlplane");
    if !binary.exists() {
        bail!(
            "{} is missing: run `cargo build --release -p keel-controlplane` first",
            binary.display()
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("keel-bench-apiserver-")
        .tempdir()?;
    let (client_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
    let endpoint = format!("http://127.0.0.1:{client_port}");
    let _etcd = Process(quiet(
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
    )?);
    let controlplane = Process(quiet(
        Command::new(&binary)
            .arg("apiserver")
            .arg(format!("--etcd-servers={endpoint}"))
            .arg(format!("--data-dir={}", dir.path().join("cp").display()))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={api_port}"))
            .env("RUST_LOG", "warn"),
        &dir.path().join("controlplane.log"),
    )?);
    let client = match wait_for_client(&dir.path().join("cp/admin.kubeconfig")).await {
        Ok(client) => client,
        Err(error) => {
            let log =
                std::fs::read_to_string(dir.path().join("controlplane.log")).unwrap_or_default();
            let etcd = std::fs::read_to_string(dir.path().join("etcd.log")).unwrap_or_default();
            bail!("{error:#}\nkeel-controlplane's log:\n{log}\netcd's log:\n{etcd}");
        }
    };

    // The floor: what etcd itself sustains, measured by etcd's own tool on the same etcd.
    let mut floor = Vec::new();
    for load in ["s", "l"] {
        println!("floor: etcdctl check perf --load={load} on the same etcd");
        floor.push((load, etcd_check_perf(&endpoint, load)?));
    }
    let mut create_rates = Vec::new();
    let pid = controlplane.0.id();
    let idle = rss_kib(pid)?;

    println!(
        "\n{objects} ConfigMaps per phase; latency p50 / p99 / max in ms, throughput per second"
    );
    for concurrency in CONCURRENCY {
        let namespace = format!("bench-{concurrency}");
        create_namespace(&client, &namespace).await?;
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
        let watch_delays = watch_delays(api.clone()).await?;
        let started = Instant::now();
        let creates = run_concurrently(concurrency, objects, {
            let api = api.clone();
            let delays = watch_delays.clone();
            move |index| {
                let api = api.clone();
                let delays = delays.clone();
                async move {
                    let name = format!("cm-{index}");
                    delays
                        .lock()
                        .expect("not poisoned")
                        .0
                        .insert(name.clone(), Instant::now());
                    let object = serde_json::from_value(
                        json!({"metadata": {"name": name}, "data": {"index": index.to_string()}}),
                    )?;
                    api.create(&PostParams::default(), &object).await?;
                    Ok(())
                }
            }
        })
        .await?;
        let elapsed = started.elapsed();
        report(&format!("create  c={concurrency:>2}"), &creates, elapsed);
        create_rates.push((concurrency, per_second(creates.len(), elapsed)));
        let started = Instant::now();
        let gets = run_concurrently(concurrency, objects, {
            let api = api.clone();
            move |index| {
                let api = api.clone();
                async move {
                    api.get(&format!("cm-{index}")).await?;
                    Ok(())
                }
            }
        })
        .await?;
        report(
            &format!("get     c={concurrency:>2}"),
            &gets,
            started.elapsed(),
        );
        let lists = (objects / 100).max(10);
        let started = Instant::now();
        let listed = run_concurrently(concurrency, lists, {
            let api = api.clone();
            move |_| {
                let api = api.clone();
                async move {
                    api.list(&ListParams::default()).await?;
                    Ok(())
                }
            }
        })
        .await?;
        report(
            &format!("list    c={concurrency:>2} ({objects} items)"),
            &listed,
            started.elapsed(),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let delays: Vec<Duration> = watch_delays.lock().expect("not poisoned").1.clone();
        report(
            &format!("watch   c={concurrency:>2} create->ADDED"),
            &delays,
            Duration::ZERO,
        );
    }

    let loaded = rss_kib(pid)?;
    create_namespace(&client, "pods").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "pods");
    run_concurrently(50, PODS, move |index| {
        let pods = pods.clone();
        async move {
            let pod = serde_json::from_value(json!({
                "metadata": {"name": format!("pod-{index}"), "labels": {"app": "bench"}},
                "spec": {"containers": [{"name": "c", "image": "registry.local/busybox:1.36"}]}}))?;
            pods.create(&PostParams::default(), &pod).await?;
            Ok(())
        }
    })
    .await?;
    let full = rss_kib(pid)?;
    println!(
        "\nRSS of the API server: idle {} MiB, after the ConfigMap phases {} MiB, \
         holding {PODS} Pods more {} MiB",
        idle / 1024,
        loaded / 1024,
        full / 1024
    );
    println!("\nAPI server creates against etcd's own writes (etcdctl check perf) in this run:");
    for (concurrency, rate) in create_rates {
        for (load, etcd) in &floor {
            if let Some(etcd) = etcd {
                println!(
                    "  create c={concurrency:>2} {rate:>7.0}/s = {:.2} x etcdctl --load={load} ({etcd:.0} writes/s)",
                    rate / etcd
                );
            }
        }
    }
    Ok(())
}

/// Runs `etcdctl check perf` and prints its verdict lines; the writes per second it measured.
fn etcd_check_perf(endpoint: &str, load: &str) -> anyhow::Result<Option<f64>> {
    let perf = Command::new("etcdctl")
        .args([
            "check",
            "perf",
            &format!("--load={load}"),
            &format!("--endpoints={endpoint}"),
            // Leave etcd as compact as it was, so the API server's figures start clean.
            "--auto-compact",
            "--auto-defrag",
        ])
        .output()
        .context("running etcdctl (Debian package etcd-client)")?;
    let stdout = String::from_utf8_lossy(&perf.stdout);
    for line in stdout.lines().filter(|line| !line.contains('%')) {
        println!("  {line}");
    }
    // "PASS: Throughput is 151 writes/s" or "FAIL: Throughput too low: 5223 writes/s".
    Ok(stdout.lines().find_map(|line| {
        let rest = line.split_once("Throughput ")?.1;
        let figure = &rest[rest.find(|c: char| c.is_ascii_digit())?..];
        figure.split_whitespace().next()?.parse().ok()
    }))
}

async fn wait_for_client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::from("no kubeconfig written yet");
    loop {
        if kubeconfig.exists() {
            let config = kube::Config::from_custom_kubeconfig(
                kube::config::Kubeconfig::read_from(kubeconfig)?,
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
            bail!("the API server did not answer within 60s (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn create_namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    api.create(&PostParams::default(), &namespace).await?;
    Ok(())
}

type Delays = Arc<Mutex<(HashMap<String, Instant>, Vec<Duration>)>>;

/// Opens a watch that records, for each ADDED object, the time since its create was sent.
async fn watch_delays(api: Api<ConfigMap>) -> anyhow::Result<Delays> {
    let delays: Delays = Arc::default();
    let mut stream = api
        .watch(&WatchParams::default().timeout(290), "0")
        .await?
        .boxed();
    let recorder = delays.clone();
    tokio::spawn(async move {
        while let Ok(Some(event)) = stream.try_next().await {
            if let WatchEvent::Added(object) = event {
                let mut state = recorder.lock().expect("not poisoned");
                if let Some(sent) = object
                    .metadata
                    .name
                    .as_ref()
                    .and_then(|name| state.0.get(name).copied())
                {
                    state.1.push(sent.elapsed());
                }
            }
        }
    });
    Ok(delays)
}

/// Runs `operation(0..count)` on `concurrency` tasks; each operation's latency.
async fn run_concurrently<F, Fut>(
    concurrency: usize,
    count: usize,
    operation: F,
) -> anyhow::Result<Vec<Duration>>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let next = next.clone();
        let operation = operation.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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

fn report(label: &str, latencies: &[Duration], elapsed: Duration) {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let at = |fraction: f64| {
        sorted
            .get(((sorted.len() as f64 * fraction) as usize).min(sorted.len().saturating_sub(1)))
            .map_or(0.0, |duration| duration.as_secs_f64() * 1000.0)
    };
    let throughput = if elapsed.is_zero() {
        String::new()
    } else {
        format!("  {:>8.0}/s", per_second(sorted.len(), elapsed))
    };
    println!(
        "  {label:<34} {:>7.2} {:>7.2} {:>7.2}{throughput}",
        at(0.5),
        at(0.99),
        sorted
            .last()
            .map_or(0.0, |duration| duration.as_secs_f64() * 1000.0)
    );
}
