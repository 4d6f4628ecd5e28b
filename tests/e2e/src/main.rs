//! Keel's end-to-end suite: what a user does first, through the README's commands, on this
//! host. `cargo xtask test` runs it after the cargo tests (`cargo test` holds cargo's build
//! lock while tests run, so a test could not run `cargo xtask up` itself); by hand, as root:
//! `cargo run -p keel-e2e [single-node] [nodes]`.
//!
//! - **single-node**: `cargo xtask up` (socket load-balancing on a cgroup2 group of the
//!   suite's own); `manifests/examples/web.yaml` gives 3 Running pods; 30 `curl`s from the
//!   host to the ClusterIP and 30 to the NodePort are answered by all 3; `kubectl logs`,
//!   `logs -f`, `exec -- hostname`, `port-forward`; a pod reaches the Service by its DNS name;
//!   the Job completes; the DaemonSet's pod reports its node; `cargo xtask down` leaves nothing.
//! - **nodes**: `cargo xtask up --nodes 3`: web's pods spread over the 3 nodes; a pod on node 1
//!   reaches a pod on node 3 by its IP and the Service by name (`wget
//!   web.default.svc.cluster.local`), answered by backends on all nodes; 30 `curl`s from the
//!   host to node 1's NodePort are answered by all 3 (SNAT to nodes 2 and 3); node 3's agent is
//!   killed: the node goes NotReady, its pod is replaced on the others after the toleration,
//!   and the Service answers a client throughout; `down` leaves nothing.
//!
//! The cluster runs with a placement of its own ([`cluster::placement`]: state dir
//! `target/e2e/state`, bridge `keel-e2e0`, 198.19.254.0/24, other ports, cgroup and bpffs
//! roots), so a user's cluster on this host is never touched. Before it starts, the suite
//! takes down what an interrupted earlier run of its own left, then refuses to run if
//! anything of that placement is still on the host. The examples name the image of `up`'s
//! default registry (198.18.0.1:5000); the suite applies them with its registry's address.
//! In pods, `wget` is bounded with `timeout`: the `-T` option of Debian's static busybox
//! 1.35 crashes it (SIGSEGV), even on the host.

mod cluster;
mod leftovers;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use cluster::{Cluster, Workspace, log, placement, wait_for};

/// The image the examples name (`cargo xtask up`'s registry with its default placement).
const EXAMPLES_IMAGE: &str = "198.18.0.1:5000/busybox:stable";
/// web.yaml's container port.
const WEB_PORT: u16 = 8080;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    SingleNode,
    Nodes,
}

impl Phase {
    const ALL: [Phase; 2] = [Phase::SingleNode, Phase::Nodes];

    fn name(self) -> &'static str {
        match self {
            Phase::SingleNode => "single-node",
            Phase::Nodes => "nodes",
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("keel-e2e: FAILED: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let mut phases = Vec::new();
    for arg in std::env::args().skip(1) {
        match Phase::ALL.into_iter().find(|phase| phase.name() == arg) {
            Some(phase) => phases.push(phase),
            None => bail!(
                "unknown phase `{arg}`: give any of {}",
                Phase::ALL.map(Phase::name).join(", ")
            ),
        }
    }
    if phases.is_empty() {
        phases = Phase::ALL.to_vec();
    }
    keel_testhost::require_root();
    let workspace = Workspace::discover()?;
    preflight(&workspace)?;
    let started = Instant::now();
    for phase in phases {
        log(&format!("== {}", phase.name()));
        let result = match phase {
            Phase::SingleNode => single_node(&workspace),
            Phase::Nodes => nodes(&workspace),
        };
        result.with_context(|| format!("phase {}", phase.name()))?;
        let left = leftovers::find(&workspace.state_dir);
        ensure!(
            left.is_empty(),
            "phase {}: `cargo xtask down` left behind:\n{}",
            phase.name(),
            left.join("\n")
        );
        log(&format!("== {}: ok, and down left nothing", phase.name()));
    }
    log(&format!("all phases passed in {:.0?}", started.elapsed()));
    Ok(())
}

/// Takes down what an interrupted run of the suite left, then refuses to go on if anything of
/// the suite's placement is on the host: it is not ours to remove.
fn preflight(workspace: &Workspace) -> anyhow::Result<()> {
    if workspace.has_cluster() {
        log("an earlier run left its cluster up: taking it down first");
        workspace.down()?;
    }
    let found = leftovers::find(&workspace.state_dir);
    ensure!(
        found.is_empty(),
        "refusing to run: the suite's placement (bridge {}, {}, cgroup {}, {}) is in use on this \
         host by something the suite did not start (another cluster?):\n{}",
        placement::BRIDGE,
        placement::NODE_SUBNET,
        placement::CGROUP_ROOT,
        placement::BPF_ROOT,
        found.join("\n")
    );
    Ok(())
}

/// An example manifest with the suite's registry in place of `up`'s default one, and
/// `edit` applied.
fn example(workspace: &Workspace, name: &str) -> anyhow::Result<String> {
    let path = workspace.root.join("manifests/examples").join(name);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    ensure!(
        text.contains(EXAMPLES_IMAGE),
        "{} no longer runs {EXAMPLES_IMAGE}: update the suite",
        path.display()
    );
    Ok(text.replace(
        EXAMPLES_IMAGE,
        &format!("{}/busybox:stable", placement::registry()),
    ))
}

/// A pod of web's: name, IP, node.
#[derive(Debug, Clone)]
struct Pod {
    name: String,
    ip: String,
    node: String,
}

/// web's pods that are Running and Ready and not being deleted.
fn web_pods(cluster: &Cluster) -> anyhow::Result<Vec<Pod>> {
    let list: serde_json::Value =
        serde_json::from_str(&cluster.kubectl(&["get", "pods", "-l", "app=web", "-o", "json"])?)
            .context("kubectl get pods -o json")?;
    let pods = list["items"].as_array().cloned().unwrap_or_default();
    Ok(pods
        .iter()
        .filter(|pod| pod["metadata"]["deletionTimestamp"].is_null())
        .filter(|pod| pod["status"]["phase"] == "Running")
        .filter(|pod| {
            pod["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .map(|pod| Pod {
            name: pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            ip: pod["status"]["podIP"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            node: pod["spec"]["nodeName"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        })
        .collect())
}

/// Applies web (its manifest `manifest`) and waits for its 3 pods.
fn start_web(cluster: &Cluster, manifest: &str) -> anyhow::Result<Vec<Pod>> {
    cluster.kubectl_stdin(&["apply", "-f", "-"], Some(manifest))?;
    let pods = wait_for(
        "web's 3 pods Running and Ready",
        Duration::from_secs(240),
        || {
            let pods = web_pods(cluster)?;
            Ok((pods.len() == 3).then_some(pods))
        },
    )
    .with_context(|| cluster.diagnostics())?;
    log(&format!(
        "web: {}",
        pods.iter()
            .map(|p| format!("{} {} on {}", p.name, p.ip, p.node))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(pods)
}

/// The `web` Service's NodePort.
fn web_node_port(cluster: &Cluster) -> anyhow::Result<String> {
    cluster.kubectl(&[
        "get",
        "service",
        "web",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ])
}

fn names(pods: &[Pod]) -> BTreeSet<String> {
    pods.iter().map(|pod| pod.name.clone()).collect()
}

/// Asks `url` 30 times with curl (placed in the cgroup2 group `cgroup` when given); every
/// answer, by count.
fn curl_30(url: &str, cgroup: Option<&Path>) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut answers = BTreeMap::new();
    for _ in 0..30 {
        let mut curl = Command::new("curl");
        curl.args(["-sS", "--max-time", "5", url]);
        if let Some(cgroup) = cgroup {
            keel_testhost::cgroup::place_in(cgroup, &mut curl)?;
        }
        let output = curl.output().context("cannot run curl")?;
        ensure!(
            output.status.success(),
            "curl {url} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        *answers
            .entry(String::from_utf8_lossy(&output.stdout).trim().to_owned())
            .or_default() += 1;
    }
    Ok(answers)
}

fn single_node(workspace: &Workspace) -> anyhow::Result<()> {
    // Socket load-balancing for the cluster's own cgroup2 group only (the pods', which `up`
    // makes and `down` removes; curl joins it): the host's other processes keep theirs.
    let lb = keel_testhost::cgroup::cgroup2_mount()?.join(placement::CGROUP_ROOT);
    let cluster = Cluster::up(workspace, &[format!("--socket-lb-cgroup={}", lb.display())])?;
    let pods = start_web(&cluster, &example(workspace, "web.yaml")?)?;
    let all = names(&pods);

    let cluster_ip =
        cluster.kubectl(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"])?;
    let node_port = web_node_port(&cluster)?;
    for url in [
        format!("http://{}/", cluster_ip.trim()),
        format!("http://{}:{}/", placement::HOST_IP, node_port.trim()),
    ] {
        let answers = curl_30(&url, Some(&lb))?;
        log(&format!("30 x curl {url}: {answers:?}"));
        ensure!(
            answers.keys().cloned().collect::<BTreeSet<_>>() == all,
            "30 requests to {url} were answered by {answers:?}, not by each of {all:?}"
        );
    }

    let pod = &pods[0];
    let logs = cluster.kubectl(&["logs", &pod.name])?;
    ensure!(
        logs.contains(&format!("serving {}", pod.name)),
        "kubectl logs {}: {logs}",
        pod.name
    );
    // `logs -f` shows the start, then a request made while it follows.
    let mut follow = cluster.kubectl_stream(&["logs", "-f", &pod.name])?;
    follow.until(Duration::from_secs(30), |line| line.contains("serving"))?;
    let direct = format!("http://{}:{WEB_PORT}/", pod.ip);
    let answers = curl_30(&direct, None)?;
    ensure!(
        answers.keys().eq([&pod.name]),
        "{direct} answered {answers:?}"
    );
    follow.until(Duration::from_secs(30), |line| {
        line.contains("response:200")
    })?;
    drop(follow);
    log("kubectl logs and logs -f: ok");

    let hostname = cluster.kubectl(&["exec", &pod.name, "--", "hostname"])?;
    ensure!(
        hostname.trim() == pod.name,
        "kubectl exec {} -- hostname printed {hostname}",
        pod.name
    );
    log("kubectl exec: ok");

    let mut forward = cluster.kubectl_stream(&[
        "port-forward",
        &format!("pod/{}", pod.name),
        &format!(":{WEB_PORT}"),
    ])?;
    let lines = forward.until(Duration::from_secs(30), |line| {
        line.starts_with("Forwarding from 127.0.0.1:")
    })?;
    let port = lines
        .last()
        .and_then(|line| line.strip_prefix("Forwarding from 127.0.0.1:"))
        .and_then(|rest| rest.split_whitespace().next())
        .context("port-forward printed no local port")?
        .to_owned();
    let answers = curl_30(&format!("http://127.0.0.1:{port}/"), None)?;
    ensure!(
        answers.keys().eq([&pod.name]),
        "port-forward to {} answered {answers:?}",
        pod.name
    );
    drop(forward);
    log("kubectl port-forward: ok");

    let by_name = cluster.kubectl(&[
        "exec",
        &pod.name,
        "--",
        "timeout",
        "10",
        "wget",
        "-qO-",
        "http://web.default.svc.cluster.local/",
    ])?;
    ensure!(
        all.contains(by_name.trim()),
        "wget web.default.svc.cluster.local from {} got {by_name:?}",
        pod.name
    );
    log("a pod reaches web.default.svc.cluster.local: ok");

    cluster.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&example(workspace, "job.yaml")?),
    )?;
    cluster
        .kubectl(&[
            "wait",
            "--for=condition=complete",
            "job/pi",
            "--timeout=240s",
        ])
        .with_context(|| cluster.diagnostics())?;
    let succeeded = cluster.kubectl(&["get", "job", "pi", "-o", "jsonpath={.status.succeeded}"])?;
    ensure!(
        succeeded.trim() == "5",
        "job pi succeeded {succeeded} times, not 5"
    );
    let output = cluster.kubectl(&["logs", "job/pi"])?;
    ensure!(
        output.contains("22/7 = 3.14286"),
        "kubectl logs job/pi: {output}"
    );
    log("the Job completed 5 times: ok");

    cluster.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&example(workspace, "daemonset.yaml")?),
    )?;
    cluster
        .kubectl(&[
            "rollout",
            "status",
            "daemonset/node-reporter",
            "--timeout=180s",
        ])
        .with_context(|| cluster.diagnostics())?;
    let node = cluster.kubectl(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"])?;
    let report = wait_for("the DaemonSet's report", Duration::from_secs(60), || {
        let logs = cluster.kubectl(&["logs", "daemonset/node-reporter"])?;
        Ok(logs.contains(&format!("{}: ", node.trim())).then_some(logs))
    })?;
    log(&format!("the DaemonSet reports: {}", report.trim()));

    cluster.down()?;
    Ok(())
}

/// The tolerations web gets on several nodes so that a lost node's pod is replaced after
/// seconds, not the default five minutes.
const SHORT_TOLERATIONS: &str = "      tolerations:\n      \
    - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 5}\n      \
    - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 5}\n";

fn nodes(workspace: &Workspace) -> anyhow::Result<()> {
    let cluster = Cluster::up(workspace, &["--nodes=3".to_owned()])?;
    let web = example(workspace, "web.yaml")?;
    let anchor = "      terminationGracePeriodSeconds: 5\n";
    ensure!(
        web.contains(anchor),
        "web.yaml changed its pod spec: update the suite"
    );
    let web = web.replacen(anchor, &format!("{anchor}{SHORT_TOLERATIONS}"), 1);
    let pods = start_web(&cluster, &web)?;
    let spread: BTreeSet<&str> = pods.iter().map(|pod| pod.node.as_str()).collect();
    ensure!(
        spread.len() == 3,
        "web's 3 pods are not spread over the 3 nodes: {pods:?}"
    );

    let on = |k: u8| {
        let node = placement::node(k);
        pods.iter()
            .find(|pod| pod.node == node)
            .with_context(|| format!("no web pod on {node}: {pods:?}"))
    };
    let (first, third) = (on(1)?, on(3)?);
    let across = cluster.kubectl(&[
        "exec",
        &first.name,
        "--",
        "timeout",
        "10",
        "wget",
        "-qO-",
        &format!("http://{}:{WEB_PORT}/", third.ip),
    ])?;
    ensure!(
        across.trim() == third.name,
        "{} on node 1 asked {} on node 3 by its IP and got {across:?}",
        first.name,
        third.name
    );
    log("pod to pod across nodes: ok");

    let script = "for i in $(seq 30); do timeout 10 wget -qO- http://web.default.svc.cluster.local/ || echo FAILED; done";
    let asked = cluster.kubectl(&["exec", &first.name, "--", "sh", "-c", script])?;
    let answers: BTreeSet<String> = asked.lines().map(str::to_owned).collect();
    ensure!(
        answers == names(&pods),
        "30 x wget web.default.svc.cluster.local from {} got {answers:?}, not each of {:?}",
        first.name,
        names(&pods)
    );
    log("the Service by name from a pod, answered on all nodes: ok");

    // From the host, outside every node: node 1's NodePort reaches the backends on nodes 2
    // and 3 only SNATed (their replies must come back through node 1), which the agent
    // switches on from the pod CIDR the control plane assigned to node 1.
    let node_port = web_node_port(&cluster)?;
    let url = format!("http://{}:{}/", placement::node_ip(1), node_port.trim());
    let answers = curl_30(&url, None)?;
    log(&format!("30 x curl {url}: {answers:?}"));
    ensure!(
        answers.keys().cloned().collect::<BTreeSet<_>>() == names(&pods),
        "30 requests to node 1's NodePort {url} were answered by {answers:?}, not by each of {:?}",
        names(&pods)
    );

    lose_a_node(workspace, &cluster, first, third)?;
    cluster.down()?;
    Ok(())
}

/// Kills node 3's agent: its Node goes NotReady, its pod is replaced on the other nodes after
/// the toleration, and a client on node 1 asking the Service every second gets every answer.
fn lose_a_node(
    workspace: &Workspace,
    cluster: &Cluster,
    client: &Pod,
    lost: &Pod,
) -> anyhow::Result<()> {
    let node = placement::node(3);
    let stop = Arc::new(AtomicBool::new(false));
    let asker = {
        let stop = Arc::clone(&stop);
        let pod = client.name.clone();
        let kubeconfig = cluster.kubeconfig().to_owned();
        std::thread::spawn(move || ask_every_second(&kubeconfig, &pod, &stop))
    };
    std::thread::sleep(Duration::from_secs(3));
    let pid_file = workspace.state_dir.join("run").join(format!("{node}.pid"));
    let pid = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("cannot read {}", pid_file.display()))?;
    let killed = Command::new("kill").args(["-KILL", pid.trim()]).status()?;
    ensure!(
        killed.success(),
        "cannot kill {node}'s agent (pid {})",
        pid.trim()
    );
    log(&format!("killed {node}'s agent (pid {})", pid.trim()));

    let ready = "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}";
    wait_for(
        &format!("{node} to go NotReady"),
        Duration::from_secs(120),
        || {
            let status = cluster.kubectl(&["get", "node", &node, "-o", ready])?;
            Ok((status.trim() != "True").then_some(()))
        },
    )
    .with_context(|| cluster.diagnostics())?;
    log(&format!("{node} is NotReady"));
    let replaced = wait_for(
        "web's pod on the lost node to be replaced on the others",
        Duration::from_secs(180),
        || {
            let pods = web_pods(cluster)?;
            Ok((pods.len() == 3 && pods.iter().all(|pod| pod.node != node)).then_some(pods))
        },
    )
    .with_context(|| cluster.diagnostics())?;
    ensure!(
        replaced.iter().all(|pod| pod.name != lost.name),
        "{} is still counted: {replaced:?}",
        lost.name
    );
    log(&format!(
        "{} replaced: {}",
        lost.name,
        replaced
            .iter()
            .map(|p| format!("{} on {}", p.name, p.node))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    // A few more asks against the new set of backends.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let asks = asker.join().expect("the asking thread")?;
    let unanswered: Vec<&Ask> = asks.iter().filter(|ask| ask.answer.is_none()).collect();
    log(&format!(
        "{} asks of the Service while the node was lost; answered by {:?}",
        asks.len(),
        asks.iter()
            .filter_map(|ask| ask.answer.clone())
            .collect::<BTreeSet<_>>()
    ));
    ensure!(
        unanswered.is_empty() && asks.len() >= 10,
        "the Service did not answer throughout: {} of {} asks unanswered:\n{}",
        unanswered.len(),
        asks.len(),
        unanswered
            .iter()
            .map(|ask| ask.errors.join(" | "))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

/// One question to the Service: its answer (a pod name) or the errors of every try.
#[derive(Debug)]
struct Ask {
    answer: Option<String>,
    errors: Vec<String>,
}

/// Asks web.default.svc.cluster.local from `pod` once a second until `stop`, each ask tried
/// up to 3 times as a retrying client would (a connection to a backend that just went away
/// fails once; the next goes elsewhere).
fn ask_every_second(
    kubeconfig: &std::path::Path,
    pod: &str,
    stop: &AtomicBool,
) -> anyhow::Result<Vec<Ask>> {
    let mut asks = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let mut ask = Ask {
            answer: None,
            errors: Vec::new(),
        };
        for _ in 0..3 {
            let output = Command::new("kubectl")
                .env("KUBECONFIG", kubeconfig)
                .args([
                    "--request-timeout=10s",
                    "exec",
                    pod,
                    "--",
                    "timeout",
                    "3",
                    "wget",
                    "-qO-",
                    "http://web.default.svc.cluster.local/",
                ])
                .output()
                .context("cannot run kubectl")?;
            let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            if output.status.success() && !stdout.is_empty() {
                ask.answer = Some(stdout);
                break;
            }
            ask.errors
                .push(String::from_utf8_lossy(&output.stderr).trim().to_owned());
        }
        asks.push(ask);
        std::thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
    }
    Ok(asks)
}
