//! Time from `kubectl apply` of a Deployment of 30 replicas to each of its pods Ready, on one
//! node and on three, beside the floor measured in the same run: `runc run` of the same
//! busybox container, one after another (per container) and 30 at once (what a node starting a
//! Deployment's pods together competes with).
//!
//! Run as root: `cargo build --release -p keel-agent -p keel-controlplane -p keel-bench &&
//! ./target/release/deploy [REPLICAS] [RUNS]` (default 30 and 3). Each cluster is
//! `keel_testhost::multinode::TestCluster`: etcd, `keel-controlplane all` (API server,
//! scheduler, controllers) and a registry in a test host, and real `keel-agent`s with runc in
//! test hosts of their own. Per run: `kubectl apply` of the Deployment (no readiness probe:
//! Ready follows the container running, as kubelet reports it), every pod's Ready condition seen
//! on a watch, then the Deployment deleted and its pods awaited gone. The samples of all runs
//! are pooled.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use keel_bench::percentile;
use keel_bench::runc::{RuncFloor, print_latency};
use keel_testhost::multinode::TestCluster;
use kube::api::{Api, WatchEvent, WatchParams};

fn manifest(name: &str, image: &str, replicas: usize) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  \
         selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      \
         terminationGracePeriodSeconds: 1\n      containers:\n      - name: c\n        image: {image}\n        \
         command: [sh, -c, 'exec sleep 3600']\n        resources: {{requests: {{cpu: 10m, memory: 8Mi}}}}\n"
    )
}

/// One run's figures: each pod's apply -> Ready, the time until all were Ready, pods per node.
struct Run {
    ready: Vec<Duration>,
    all_ready: Duration,
    nodes: BTreeMap<String, usize>,
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// Applies the Deployment `name` and watches its pods until `replicas` are Ready; then deletes
/// it and waits until its pods are gone.
fn run_once(cluster: &TestCluster, name: &str, replicas: usize) -> anyhow::Result<Run> {
    let kubeconfig = cluster.control_plane.kubeconfig();
    let manifest = manifest(name, &cluster.image, replicas);
    let run = keel_bench::with_client_in(&cluster.cp, &kubeconfig, async |client| {
        let pods: Api<Pod> = Api::namespaced(client, "default");
        let selector = format!("app={name}");
        let watch = pods
            .watch(&WatchParams::default().labels(&selector), "0")
            .await?;
        futures::pin_mut!(watch);
        // kubectl runs beside the watch, which must be read while it applies.
        let applied = Instant::now();
        let apply = std::thread::spawn({
            let (manifest, kubectl) = (manifest.clone(), cluster_kubectl(cluster));
            move || kubectl(&["apply", "-f", "-"], &manifest)
        });
        let mut ready: BTreeMap<String, Duration> = BTreeMap::new();
        let mut nodes: BTreeMap<String, String> = BTreeMap::new();
        while ready.len() < replicas {
            let event = tokio::time::timeout(Duration::from_secs(300), watch.next())
                .await
                .context("no pod became Ready within 5 minutes")?
                .context("the watch ended")??;
            let (WatchEvent::Added(pod) | WatchEvent::Modified(pod)) = event else {
                continue;
            };
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            if is_ready(&pod) && !ready.contains_key(&pod_name) {
                ready.insert(pod_name.clone(), applied.elapsed());
                let node = pod.spec.and_then(|spec| spec.node_name).unwrap_or_default();
                nodes.insert(pod_name, node);
            }
        }
        let all_ready = applied.elapsed();
        apply.join().expect("the kubectl thread")?;
        let mut per_node = BTreeMap::new();
        for node in nodes.values() {
            *per_node.entry(node.clone()).or_default() += 1;
        }
        Ok(Run {
            ready: ready.into_values().collect(),
            all_ready,
            nodes: per_node,
        })
    })?;
    let kubectl = cluster_kubectl(cluster);
    kubectl(&["delete", "deployment", name, "--wait=true"], "")?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let left = cluster
            .jsonpath(
                &["get", "pods", "-l", &format!("app={name}")],
                "{.items[*].metadata.name}",
            )
            .unwrap_or_default();
        if left.trim().is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the pods of {name} were not gone within 5 minutes: {left}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(run)
}

/// kubectl against the cluster, as a function another thread can own.
fn cluster_kubectl(
    cluster: &TestCluster,
) -> impl Fn(&[&str], &str) -> anyhow::Result<()> + Send + 'static {
    let kubeconfig = cluster.control_plane.kubeconfig();
    let netns = cluster.cp.netns().to_owned();
    move |args: &[&str], stdin: &str| {
        use std::io::Write as _;
        let mut child = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .arg("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("cannot run kubectl")?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(stdin.as_bytes())?;
        let output = child.wait_with_output()?;
        ensure!(
            output.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let number = |index: usize, default: usize| -> anyhow::Result<usize> {
        std::env::args().nth(index).map_or(Ok(default), |text| {
            text.parse()
                .with_context(|| format!("`{text}` is not a number"))
        })
    };
    let replicas = number(1, 30)?;
    let runs = number(2, 3)?;
    keel_testhost::require_root();
    let agent = keel_bench::sibling_binary("keel-agent", "keel-agent")?;

    // The floor first, on a quiet machine.
    let work = tempfile::Builder::new()
        .prefix("kt-deploybench-runc-")
        .tempdir()?;
    let floor = RuncFloor::new(work.path())?;
    let mut sequential = floor.sequential(replicas)?;
    let (mut concurrent, concurrent_all) = floor.concurrent(replicas)?;
    drop(floor);
    let floor_p50 = percentile(&mut sequential, 0.5);

    let mut results = Vec::new();
    for nodes in [1usize, 3] {
        let cluster = TestCluster::start("deploy", &agent, nodes, &[], &[]);
        // A first Deployment pulls the image onto every node; it is not counted.
        run_once(&cluster, "warm", nodes * 2)?;
        let mut pooled = Vec::new();
        let mut all_ready = Vec::new();
        let mut spread = BTreeSet::new();
        for run in 0..runs {
            let result = run_once(&cluster, &format!("bench{run}"), replicas)?;
            pooled.extend(result.ready);
            all_ready.push(result.all_ready);
            spread.insert(
                result
                    .nodes
                    .iter()
                    .map(|(node, count)| format!("{node}: {count}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }
        results.push((nodes, pooled, all_ready, spread));
    }

    println!(
        "Deployment of {replicas} replicas, kubectl apply -> each pod Ready ({runs} runs pooled; image present):"
    );
    print_latency(
        "runc run --detach, one at a time (floor)",
        &mut sequential,
        None,
    );
    print_latency(
        &format!("runc run --detach, {replicas} at once"),
        &mut concurrent,
        Some(floor_p50),
    );
    println!(
        "  {replicas} runc containers at once: all running after {:.0} ms",
        concurrent_all.as_secs_f64() * 1000.0
    );
    for (nodes, mut pooled, mut all_ready, spread) in results {
        print_latency(
            &format!("Keel, {nodes} node{}", if nodes == 1 { "" } else { "s" }),
            &mut pooled,
            Some(floor_p50),
        );
        let all_p50 = percentile(&mut all_ready, 0.5);
        println!(
            "    all {replicas} Ready after {:.0} ms (median run; {:.2}x {replicas} runc at once); pods per node: {}",
            all_p50.as_secs_f64() * 1000.0,
            all_p50.as_secs_f64() / concurrent_all.as_secs_f64(),
            spread.into_iter().collect::<Vec<_>>().join(" | ")
        );
    }
    Ok(())
}
