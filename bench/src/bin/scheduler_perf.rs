//! Scheduling throughput shaped like upstream's `scheduler_perf` (test/integration/
//! scheduler_perf): Nodes created through the API (no kubelets), pods from upstream's
//! templates, bindings persisted by the real `keel-controlplane all` in a real etcd, and the
//! throughput measured as upstream measures it: a watch counts the measured pods whose
//! `spec.nodeName` is set, sampled once a second from the first bound pod on; the average of
//! those samples is printed beside upstream's CI floor (`threshold`) for the same workload.
//! Then the controller manager's time from a Deployment created to all its pods bound, and
//! the control plane's RSS (sampled throughout, peak and at the end) for every phase.
//!
//! Run: `cargo build --release -p keel-controlplane -p keel-bench &&
//! ./target/release/scheduler-perf [--nodes N] [--scale F] [--only CASE,...]`.
//! Defaults are upstream's sizes (5,000 nodes, every case); `--scale 0.1` scales every pod
//! count; cases: SchedulingBasic, TopologySpreading, PodAntiAffinity, PodAffinity, Deployment.
//! Each phase gets a fresh etcd and control plane, as each upstream workload gets its own.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use keel_bench::local::{LocalControlPlane, run_concurrently};
use keel_bench::{peak_rss_kib, rss_kib};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};

const CREATE_CONCURRENCY: usize = 50;
/// A phase that binds no pod for this long has failed (e.g. too few nodes for the pods).
const STALL: Duration = Duration::from_secs(180);
/// Node lifecycle must not taint kubelet-less Nodes during the run; node IPAM needs room
/// for 5,000 `/24`s.
const CONTROLLER_ARGS: [&str; 4] = [
    "--node-monitor-grace-period=24h",
    "--node-startup-grace-period=24h",
    "--cluster-cidr=10.128.0.0/9",
    "--node-cidr-mask-size=24",
];

#[derive(Debug, Clone, Copy)]
enum Template {
    Default,
    TopologySpreading,
    PodAntiAffinity,
    PodAffinity,
}

/// One upstream workload: its `5000Nodes_*` parameters and CI threshold (pods/s).
#[derive(Debug)]
struct Workload {
    name: &'static str,
    floor: f64,
    zones: &'static [&'static str],
    init_pods: usize,
    init: Template,
    measure_pods: usize,
    measure: Template,
}

const WORKLOADS: [Workload; 4] = [
    Workload {
        name: "SchedulingBasic",
        floor: 680.0,
        zones: &[],
        init_pods: 1000,
        init: Template::Default,
        measure_pods: 10_000,
        measure: Template::Default,
    },
    Workload {
        name: "TopologySpreading",
        floor: 460.0,
        zones: &["moon-1", "moon-2", "moon-3"],
        init_pods: 5000,
        init: Template::Default,
        measure_pods: 5000,
        measure: Template::TopologySpreading,
    },
    Workload {
        name: "PodAntiAffinity",
        floor: 60.0,
        zones: &[],
        init_pods: 1000,
        init: Template::PodAntiAffinity,
        measure_pods: 2000,
        measure: Template::PodAntiAffinity,
    },
    Workload {
        name: "PodAffinity",
        floor: 35.0,
        zones: &["zone1"],
        init_pods: 5000,
        init: Template::PodAffinity,
        measure_pods: 5000,
        measure: Template::PodAffinity,
    },
];
const DEPLOYMENT: &str = "Deployment";
const REPLICAS: usize = 1000;

#[derive(Debug)]
struct Options {
    nodes: usize,
    scale: f64,
    only: Option<Vec<String>>,
}

impl Options {
    fn parse() -> anyhow::Result<Self> {
        let mut options = Options {
            nodes: 5000,
            scale: 1.0,
            only: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut value =
                |name: &str| args.next().with_context(|| format!("{name} needs a value"));
            match flag.as_str() {
                "--nodes" => {
                    let text = value("--nodes")?;
                    options.nodes = text
                        .parse()
                        .with_context(|| format!("--nodes: `{text}` is not a number"))?;
                }
                "--scale" => {
                    let text = value("--scale")?;
                    options.scale = text
                        .parse()
                        .ok()
                        .filter(|scale: &f64| *scale > 0.0)
                        .with_context(|| format!("--scale: `{text}` is not a positive number"))?;
                }
                "--only" => {
                    let known: Vec<&str> = WORKLOADS
                        .iter()
                        .map(|workload| workload.name)
                        .chain([DEPLOYMENT])
                        .collect();
                    let cases: Vec<String> =
                        value("--only")?.split(',').map(str::to_owned).collect();
                    if let Some(unknown) = cases.iter().find(|case| !known.contains(&case.as_str()))
                    {
                        bail!(
                            "--only: unknown case `{unknown}` (known: {})",
                            known.join(", ")
                        );
                    }
                    options.only = Some(cases);
                }
                other => bail!(
                    "unknown argument `{other}` (usage: scheduler-perf [--nodes N] [--scale F] \
                     [--only CASE,...])"
                ),
            }
        }
        Ok(options)
    }

    fn wants(&self, case: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|name| name == case))
    }

    fn scaled(&self, count: usize) -> usize {
        ((count as f64 * self.scale).round() as usize).max(1)
    }
}

/// Upstream's `node-default.yaml` (4 CPUs, 32Gi, 110 pods) with the `kubernetes.io/hostname`
/// label its node preparer adds and the zone its label strategy sets.
fn node(name: &str, zone: Option<&str>) -> anyhow::Result<Node> {
    let mut labels = json!({"kubernetes.io/hostname": name});
    if let Some(zone) = zone {
        labels["topology.kubernetes.io/zone"] = json!(zone);
    }
    let resources = json!({"pods": "110", "cpu": "4", "memory": "32Gi"});
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {},
        "status": {"capacity": resources, "allocatable": resources, "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}]}
    }))?)
}

/// Upstream's pod templates: `pod-default.yaml`, `pod-with-topology-spreading.yaml`,
/// `pod-with-pod-anti-affinity.yaml`, `pod-with-pod-affinity.yaml`.
fn pod(template: Template) -> anyhow::Result<Pod> {
    let resources = json!({"cpu": "100m", "memory": "500Mi"});
    let mut pod = json!({
        "metadata": {"name": "template"},
        "spec": {"containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10",
            "ports": [{"containerPort": 80}],
            "resources": {"limits": resources, "requests": resources}}]}
    });
    let term = |color: &str, key: &str| {
        json!([{"labelSelector": {"matchLabels": {"color": color}}, "topologyKey": key,
            "namespaces": ["sched-1", "sched-0"]}])
    };
    let (color, extra): (&str, Value) = match template {
        Template::Default => return Ok(serde_json::from_value(pod)?),
        Template::TopologySpreading => (
            "blue",
            json!({"topologySpreadConstraints": [{"maxSkew": 5,
                "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"color": "blue"}}}]}),
        ),
        Template::PodAntiAffinity => (
            "green",
            json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                term("green", "kubernetes.io/hostname")}}}),
        ),
        Template::PodAffinity => (
            "blue",
            json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                term("blue", "topology.kubernetes.io/zone")}}}),
        ),
    };
    pod["metadata"]["labels"] = json!({"color": color});
    json_merge(&mut pod["spec"], extra);
    Ok(serde_json::from_value(pod)?)
}

fn json_merge(target: &mut Value, extra: Value) {
    if let (Some(target), Value::Object(extra)) = (target.as_object_mut(), extra) {
        target.extend(extra);
    }
}

/// The control plane's RSS, sampled every 100 ms on a thread until [`Memory::stop`].
struct Memory {
    pid: u32,
    peak: Arc<AtomicU64>,
    running: Arc<AtomicBool>,
}

impl Memory {
    fn sample(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let running = Arc::new(AtomicBool::new(true));
        let (max, on) = (peak.clone(), running.clone());
        std::thread::spawn(move || {
            while on.load(Ordering::Relaxed) {
                if let Ok(rss) = rss_kib(pid) {
                    max.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self { pid, peak, running }
    }

    /// (peak, now) in MiB; the peak is the larger of the samples and the kernel's `VmHWM`.
    fn stop(&self) -> (u64, u64) {
        self.running.store(false, Ordering::Relaxed);
        let now = rss_kib(self.pid).unwrap_or(0);
        let hwm = peak_rss_kib(self.pid).unwrap_or(0);
        let peak = self.peak.load(Ordering::Relaxed).max(hwm).max(now);
        (peak / 1024, now / 1024)
    }
}

/// Pods of a namespace seen with `spec.nodeName` set, counted from a watch.
#[derive(Clone)]
struct Bound {
    count: Arc<AtomicUsize>,
    last: Arc<Mutex<Instant>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Bound {
    async fn watch(client: &kube::Client, namespace: &str) -> Self {
        let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let count = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(Mutex::new(Instant::now()));
        let listed = Arc::new(tokio::sync::Notify::new());
        let (counter, changed, ready) = (count.clone(), last.clone(), listed.clone());
        let task = tokio::spawn(async move {
            let mut bound = HashSet::new();
            let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();
            while let Some(event) = stream.next().await {
                let pod = match event {
                    Ok(Event::Apply(pod) | Event::InitApply(pod)) => pod,
                    Ok(Event::InitDone) => {
                        ready.notify_one();
                        continue;
                    }
                    _ => continue,
                };
                let on_node = pod.spec.as_ref().and_then(|spec| spec.node_name.as_deref());
                if on_node.is_some_and(|node| !node.is_empty())
                    && bound.insert(pod.metadata.name.unwrap_or_default())
                {
                    *changed.lock().expect("not poisoned") = Instant::now();
                    counter.store(bound.len(), Ordering::Relaxed);
                }
            }
        });
        listed.notified().await;
        Self {
            count,
            last,
            task: Arc::new(task),
        }
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Waits until `target` pods are bound; when the last of them was seen.
    async fn wait_for(
        &self,
        target: usize,
        what: &str,
        cluster: &LocalControlPlane,
    ) -> anyhow::Result<Instant> {
        let mut progress = (self.count(), Instant::now());
        loop {
            let count = self.count();
            if count >= target {
                self.task.abort();
                return Ok(*self.last.lock().expect("not poisoned"));
            }
            if count != progress.0 {
                progress = (count, Instant::now());
            } else if progress.1.elapsed() > STALL {
                let log = cluster.log("controlplane.log");
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                bail!(
                    "{what}: {count} of {target} pods bound, none for {}s; the control plane's \
                     last log lines (newest first):\n{}",
                    STALL.as_secs(),
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Upstream's throughput collector: the bound count every second, from the first
    /// sample with a pod bound (skipped, as upstream skips it) until `target` is reached
    /// (that last, partial second is left out).
    fn sample(&self, target: usize) -> tokio::task::JoinHandle<Vec<f64>> {
        let bound = self.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut previous = None;
            let mut ticks = tokio::time::interval(Duration::from_secs(1));
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let count = bound.count();
                if count >= target {
                    return samples;
                }
                if count == 0 {
                    continue;
                }
                if let Some(previous) = previous {
                    samples.push((count - previous) as f64);
                }
                previous = Some(count);
            }
        })
    }
}

async fn create_namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    Ok(())
}

/// Creates the Nodes and waits until node IPAM has given each a pod CIDR, so the
/// controller manager's updates are over before pods are measured.
async fn create_nodes(
    client: &kube::Client,
    count: usize,
    zones: &'static [&'static str],
) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let nodes = api.clone();
    run_concurrently(CREATE_CONCURRENCY, count, move |index| {
        let nodes = nodes.clone();
        async move {
            let zone = (!zones.is_empty()).then(|| zones[index % zones.len()]);
            let node = node(&format!("scheduler-perf-{index:05}"), zone)?;
            nodes.create(&PostParams::default(), &node).await?;
            Ok(())
        }
    })
    .await?;
    let deadline = Instant::now() + STALL;
    loop {
        let list = api.list(&ListParams::default()).await?;
        let with_cidr = list
            .items
            .iter()
            .filter(|node| {
                node.spec
                    .as_ref()
                    .and_then(|spec| spec.pod_cidr.as_ref())
                    .is_some()
            })
            .count();
        if with_cidr >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {with_cidr} of {count} nodes got a pod CIDR");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn create_pods(
    client: &kube::Client,
    namespace: &str,
    template: Template,
    count: usize,
) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let template = Arc::new(pod(template)?);
    let prefix = format!("{namespace}-pod-");
    run_concurrently(CREATE_CONCURRENCY, count, move |index| {
        let (api, template) = (api.clone(), template.clone());
        let name = format!("{prefix}{index}");
        async move {
            let mut pod = (*template).clone();
            pod.metadata.name = Some(name);
            api.create(&PostParams::default(), &pod).await?;
            Ok(())
        }
    })
    .await?;
    Ok(())
}

struct Throughput {
    average: f64,
    p50: f64,
    overall: f64,
    seconds: f64,
    memory: (u64, u64),
}

async fn run_workload(options: &Options, workload: &Workload) -> anyhow::Result<Throughput> {
    let cluster = LocalControlPlane::start("all", &CONTROLLER_ARGS)?;
    let memory = Memory::sample(cluster.pid());
    let client = cluster.client().await?;
    create_nodes(&client, options.nodes, workload.zones).await?;
    for namespace in ["sched-0", "sched-1"] {
        create_namespace(&client, namespace).await?;
    }
    let init_pods = options.scaled(workload.init_pods);
    let init = Bound::watch(&client, "sched-0").await;
    create_pods(&client, "sched-0", workload.init, init_pods).await?;
    init.wait_for(init_pods, "initial pods", &cluster).await?;

    let measure_pods = options.scaled(workload.measure_pods);
    let measured = Bound::watch(&client, "sched-1").await;
    let sampler = measured.sample(measure_pods);
    let started = Instant::now();
    create_pods(&client, "sched-1", workload.measure, measure_pods).await?;
    let last = measured
        .wait_for(measure_pods, "measured pods", &cluster)
        .await?;
    let mut samples = sampler.await?;
    let seconds = last.duration_since(started).as_secs_f64();
    let overall = measure_pods as f64 / seconds.max(f64::EPSILON);
    samples.sort_by(f64::total_cmp);
    let (average, p50) = if samples.is_empty() {
        (overall, overall)
    } else {
        (
            samples.iter().sum::<f64>() / samples.len() as f64,
            samples[samples.len() / 2],
        )
    };
    Ok(Throughput {
        average,
        p50,
        overall,
        seconds,
        memory: memory.stop(),
    })
}

/// A Deployment of `replicas` (upstream's default pod) created; until every pod is bound.
async fn run_deployment(options: &Options, replicas: usize) -> anyhow::Result<(f64, (u64, u64))> {
    let cluster = LocalControlPlane::start("all", &CONTROLLER_ARGS)?;
    let memory = Memory::sample(cluster.pid());
    let client = cluster.client().await?;
    create_nodes(&client, options.nodes, &[]).await?;
    create_namespace(&client, "deploy").await?;
    let mut template = serde_json::to_value(pod(Template::Default)?)?;
    template["metadata"] = json!({"labels": {"app": "perf"}});
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "perf"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "perf"}},
            "template": template}
    }))?;
    let bound = Bound::watch(&client, "deploy").await;
    let started = Instant::now();
    Api::<Deployment>::namespaced(client.clone(), "deploy")
        .create(&PostParams::default(), &deployment)
        .await?;
    let last = bound
        .wait_for(replicas, "Deployment pods", &cluster)
        .await?;
    Ok((last.duration_since(started).as_secs_f64(), memory.stop()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // kube's TLS uses whichever rustls provider the process installs; Keel uses ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let options = Options::parse()?;
    println!(
        "scheduler-perf: {} nodes, pod counts x{} (upstream's 5000Nodes workloads at x1), \
         a fresh etcd + keel-controlplane all per phase\n",
        options.nodes, options.scale
    );
    println!(
        "{:<18} {:>6} {:>6} {:>8} {:>9} {:>7} {:>8} {:>7} {:>6} {:>7} {:>13}",
        "workload",
        "nodes",
        "init",
        "measured",
        "pods/s",
        "p50",
        "overall",
        "floor",
        "ratio",
        "seconds",
        "RSS peak/end"
    );
    let mut basic = None;
    for workload in WORKLOADS
        .iter()
        .filter(|workload| options.wants(workload.name))
    {
        let result = run_workload(&options, workload)
            .await
            .with_context(|| workload.name)?;
        if workload.name == "SchedulingBasic" {
            basic = Some(result.average);
        }
        println!(
            "{:<18} {:>6} {:>6} {:>8} {:>9.0} {:>7.0} {:>8.0} {:>7.0} {:>5.2}x {:>7.1} {:>6} / {:>3} MiB",
            workload.name,
            options.nodes,
            options.scaled(workload.init_pods),
            options.scaled(workload.measure_pods),
            result.average,
            result.p50,
            result.overall,
            workload.floor,
            result.average / workload.floor,
            result.seconds,
            result.memory.0,
            result.memory.1,
        );
    }
    println!(
        "\npods/s: the average of 1 s samples of bound measured pods (upstream's \"Average\"); \
         p50 of those samples; overall: measured pods / (last bound - first created);\n\
         floor: upstream's CI threshold for the same 5000Nodes workload; ratio = pods/s / floor"
    );
    if options.wants(DEPLOYMENT) {
        let replicas = options.scaled(REPLICAS);
        let (seconds, memory) = run_deployment(&options, replicas)
            .await
            .context(DEPLOYMENT)?;
        let rate = replicas as f64 / seconds.max(f64::EPSILON);
        let against = basic.map_or(String::new(), |basic| {
            format!(
                ", {:.2}x SchedulingBasic's pods/s in this run",
                rate / basic
            )
        });
        println!(
            "\ncontroller manager: Deployment of {replicas} replicas created -> all pods bound in \
             {seconds:.1} s ({rate:.0} pods/s{against}), {} nodes; RSS peak {} / end {} MiB",
            options.nodes, memory.0, memory.1
        );
    }
    Ok(())
}
