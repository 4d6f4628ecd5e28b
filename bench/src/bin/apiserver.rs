//! The API server's latency, throughput and memory, beside `etcdctl check perf` on the same
//! etcd in the same run (the floor: what the storage itself gives).
//!
//! Run: `cargo build --release -p keel-controlplane && cargo run --release -p keel-bench --bin
//! apiserver [-- OBJECTS]`. It starts a throwaway etcd and `target/release/keel-controlplane`
//! on free loopback ports, then with 1 and with 50 concurrent kube-rs clients measures
//! create, get and list latency percentiles and throughput and the delay from a create to
//! its `ADDED` event on a watch; last, the API server's RSS idle and holding 10,000 Pods.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use keel_bench::local::{LocalControlPlane, run_concurrently};
use keel_bench::{per_second, rss_kib};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

const CONCURRENCY: [usize; 2] = [1, 50];
const PODS: usize = 10_000;

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
    let cluster = LocalControlPlane::start("apiserver", &[])?;
    let client = cluster.client().await?;
    let endpoint = cluster.endpoint.clone();

    // The floor: what etcd itself sustains, measured by etcd's own tool on the same etcd.
    let mut floor = Vec::new();
    for load in ["s", "l"] {
        println!("floor: etcdctl check perf --load={load} on the same etcd");
        floor.push((load, etcd_check_perf(&endpoint, load)?));
    }
    let mut create_rates = Vec::new();
    let pid = cluster.pid();
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
