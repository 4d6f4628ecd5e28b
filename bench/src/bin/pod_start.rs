//! Pod start latency and the agent's memory, beside `runc run` of the same container in the
//! same run (the floor: what the OCI runtime alone costs).
//!
//! Run as root: `cargo build --release -p keel-agent -p keel-bench && ./target/release/pod-start
//! [PODS]`. It makes a test node (`keel_testhost::node`: a network namespace with a registry on
//! its loopback), starts `target/release/keel-agent` there with a static-pod directory, pulls
//! the image once, then
//! writes PODS (default 50) pod manifests one after another and times each from the file
//! appearing to the container's first command running (the container touches a file on a
//! hostPath volume). The baseline runs the same busybox command with `runc run --detach` from
//! a prepared bundle, PODS times. Then the agent's RSS idle, with 10 and with 100 pods, and the
//! node's keeper process.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use keel_bench::runc::{RuncFloor, print_latency};
use keel_bench::{percentile, rss_kib};
use keel_testhost::cluster::TestControlPlane;
use keel_testhost::node::{TestNode, keeper_pid};
use keel_testhost::require_root;

fn manifest(name: &str, image: &str, marks: &Path) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  \
         volumes: [{{name: marks, hostPath: {{path: {}}}}}]\n  containers:\n  - name: c\n    image: {image}\n    \
         command: [sh, -c, 'touch /marks/{name}; exec sleep 3600']\n    volumeMounts: [{{name: marks, mountPath: /marks}}]\n",
        marks.display()
    )
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

fn remove_all(node: &TestNode) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(node.manifests.path())?.flatten() {
        std::fs::remove_file(entry.path())?;
    }
    wait_for("the pods to go", Duration::from_secs(300), || {
        node.pod_uids().is_empty()
    })
    .with_context(|| node.agent_log())
}

/// Creates `count` Pods bound to the node one after another through the API and times each
/// to `phase: Running` and to `Ready`, seen on a watch. Runs inside the node's network
/// namespace (where the API server listens).
async fn api_pods(
    client: kube::Client,
    image: &str,
    count: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    use futures::StreamExt as _;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, DeleteParams, PostParams, WatchEvent, WatchParams};

    let pods: Api<Pod> = Api::namespaced(client, "default");
    // The node registers first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut running = Vec::with_capacity(count);
    let mut ready = Vec::with_capacity(count);
    for n in 0..count {
        let name = format!("api{n}");
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"nodeName": "node1", "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": image, "command": ["sleep", "3600"]}]}
        }))?;
        let params = WatchParams::default().fields(&format!("metadata.name={name}"));
        let watch = pods.watch(&params, "0").await?;
        futures::pin_mut!(watch);
        let started = Instant::now();
        pods.create(&PostParams::default(), &pod).await?;
        let (mut seen_running, mut seen_ready) = (None, None);
        while seen_ready.is_none() {
            let event = tokio::time::timeout(Duration::from_secs(60), watch.next())
                .await?
                .context("watch ended")??;
            let (WatchEvent::Added(pod) | WatchEvent::Modified(pod)) = event else {
                continue;
            };
            let status = pod.status.unwrap_or_default();
            if seen_running.is_none() && status.phase.as_deref() == Some("Running") {
                seen_running = Some(started.elapsed());
            }
            let is_ready = status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if is_ready {
                seen_ready = Some(started.elapsed());
            }
        }
        running.push(seen_running.unwrap_or_default());
        ready.push(seen_ready.unwrap_or_default());
    }
    for n in 0..count {
        let _ = pods
            .delete(&format!("api{n}"), &DeleteParams::default())
            .await;
    }
    Ok((running, ready))
}

fn main() -> anyhow::Result<()> {
    require_root();
    let count: usize = std::env::args()
        .nth(1)
        .map_or(Ok(50), |a| a.parse())
        .context("PODS")?;
    let agent_path = std::env::current_exe()?
        .parent()
        .context("no directory")?
        .join("keel-agent");
    if !agent_path.exists() {
        bail!(
            "{} is missing: cargo build --release -p keel-agent",
            agent_path.display()
        );
    }
    let mut node = TestNode::new("podbench", &agent_path);
    node.start_agent();
    let agent_pid = node.agent_pid().context("no agent")?;
    std::thread::sleep(Duration::from_secs(2));
    let idle = rss_kib(agent_pid)?;

    // The image is pulled once; every measured pod finds it present.
    let marks = node.root.path().join("marks");
    std::fs::create_dir_all(&marks)?;
    let image = node.image.clone();
    node.write_manifest("warm.yaml", &manifest("warm", &image, &marks));
    wait_for("the warm-up pod", Duration::from_secs(120), || {
        marks.join("warm").exists()
    })?;
    remove_all(&node)?;

    println!("pod start, {count} pods one after another (image present):");
    let mut keel = Vec::with_capacity(count);
    let mut rss_10 = 0;
    for n in 0..count {
        let name = format!("p{n}");
        let started = Instant::now();
        node.write_manifest(&format!("{name}.yaml"), &manifest(&name, &image, &marks));
        wait_for(&name, Duration::from_secs(60), || {
            marks.join(&name).exists()
        })?;
        keel.push(started.elapsed());
        if n + 1 == 10 {
            std::thread::sleep(Duration::from_secs(2));
            rss_10 = rss_kib(agent_pid)?;
        }
    }
    for n in count..100 {
        let name = format!("p{n}");
        node.write_manifest(&format!("{name}.yaml"), &manifest(&name, &image, &marks));
    }
    wait_for("100 pods", Duration::from_secs(600), || {
        (0..100).all(|n| marks.join(format!("p{n}")).exists())
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let rss_100 = rss_kib(agent_pid)?;
    let keeper_rss = keeper_pid(&node.state_dir().join("keeper"))
        .map(rss_kib)
        .transpose()?
        .unwrap_or(0);
    let removal = Instant::now();
    remove_all(&node)?;
    let removal = removal.elapsed();

    // Through the API: the same agent, now with a control plane; Pods created with kube-rs.
    let control_plane = TestControlPlane::start(&node);
    node.kill_agent();
    node.extra_args = vec![
        "--kubeconfig".into(),
        control_plane.kubeconfig().display().to_string(),
    ];
    node.start_agent();
    let kubeconfig = control_plane.kubeconfig();
    let (mut api_running, mut api_ready) =
        keel_bench::with_client_in(&node.host, &kubeconfig, async |client| {
            api_pods(client, &image, count).await
        })?;
    remove_all(&node)?;

    let work = tempfile::Builder::new()
        .prefix("kt-podbench-runc-")
        .tempdir()?;
    let mut floor = RuncFloor::new(work.path())?.sequential(count)?;
    let floor_p50 = percentile(&mut floor, 0.5);
    print_latency("runc run --detach (floor)", &mut floor, None);
    print_latency(
        "keel-agent: manifest -> container running",
        &mut keel,
        Some(floor_p50),
    );
    print_latency(
        "API: Pod created -> status Running",
        &mut api_running,
        Some(floor_p50),
    );
    print_latency(
        "API: Pod created -> Ready condition True",
        &mut api_ready,
        Some(floor_p50),
    );
    println!(
        "  removing 100 pods (grace 1 s): {:.1} s",
        removal.as_secs_f64()
    );
    println!("memory:");
    println!("  keel-agent RSS idle           {idle:>7} KiB");
    println!("  keel-agent RSS, 10 pods       {rss_10:>7} KiB");
    println!(
        "  keel-agent RSS, 100 pods      {rss_100:>7} KiB ({:.0} KiB per pod over idle)",
        rss_100.saturating_sub(idle) as f64 / 100.0
    );
    println!(
        "  keeper RSS (one per node)     {keeper_rss:>7} KiB with 100 pods; no process per pod"
    );
    Ok(())
}
