//! The workload controllers with everything real but the containers: etcd, `keel-controlplane
//! all` (API server, controller manager, scheduler) and simulated nodes (`keel-agent
//! simulate`, whose pods report Running and Ready through `pods/status` as the agent does,
//! and end when annotated `keel.dev/simulate-exit-code`). kubectl creates the workloads; a
//! kube-rs watch records every pod change in etcd order, so the ordering and concurrency
//! claims are checked on every state the cluster went through, not on samples.

#[path = "support/etcd.rs"]
#[allow(
    dead_code,
    reason = "shared with the apiserver tests, which use all of it"
)]
mod etcd;
#[path = "support/apiserver.rs"]
#[allow(
    dead_code,
    reason = "shared with the apiserver tests, which use all of it"
)]
mod server;
#[path = "support/simulator.rs"]
#[allow(dead_code, reason = "shared with the nodes tests")]
mod simulator;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt as _;
use kube::api::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::Value;

use server::TestApiServer;
use simulator::{Simulator, get, wait_for, wait_for_ready_nodes, wait_longer};

/// Every pod change a label selector saw, in the order the API server sent them (etcd
/// revision order); deleted pods are recorded with `deleted`.
#[derive(Default)]
struct PodHistory {
    changes: Arc<Mutex<Vec<(Pod, bool)>>>,
    /// The watch task; aborted on drop, so it never outlives the control plane it watches
    /// (a watch retrying a dead server would keep the test's runtime from shutting down).
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for PodHistory {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl PodHistory {
    /// Starts watching pods matching `selector` in `default`; returns once the watch listed.
    async fn start(server: &TestApiServer, selector: &str) -> PodHistory {
        let client = server.client().await.expect("a kube client");
        let pods: Api<Pod> = Api::namespaced(client, "default");
        let mut history = PodHistory::default();
        let (listed, ready) = tokio::sync::oneshot::channel();
        let changes = Arc::clone(&history.changes);
        let config = watcher::Config::default().labels(selector);
        history.task = Some(tokio::spawn(async move {
            let mut listed = Some(listed);
            let mut stream = watcher(pods, config).default_backoff().boxed();
            while let Some(event) = stream.next().await {
                let mut changes = changes.lock().expect("pod history");
                match event {
                    Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                        changes.push((pod, false))
                    }
                    Ok(watcher::Event::Delete(pod)) => changes.push((pod, true)),
                    Ok(watcher::Event::InitDone) => {
                        if let Some(listed) = listed.take() {
                            let _ = listed.send(());
                        }
                    }
                    Ok(watcher::Event::Init) => {}
                    Err(error) => eprintln!("pod watch: {error}"),
                }
            }
        }));
        tokio::time::timeout(Duration::from_secs(60), ready)
            .await
            .expect("the pod watch listed within a minute")
            .expect("the pod watch listed");
        history
    }

    fn changes(&self) -> Vec<(Pod, bool)> {
        self.changes.lock().expect("pod history").clone()
    }

    /// The state after each change: pods by name (deleted ones removed).
    fn states(&self) -> Vec<BTreeMap<String, Pod>> {
        let mut state = BTreeMap::new();
        let mut states = Vec::new();
        for (pod, deleted) in self.changes() {
            if deleted {
                state.remove(&pod.name_any());
            } else {
                state.insert(pod.name_any(), pod);
            }
            states.push(state.clone());
        }
        states
    }
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Not finished and not being deleted: what a Job counts as active.
fn active(pod: &Pod) -> bool {
    !matches!(phase(pod), "Succeeded" | "Failed") && pod.metadata.deletion_timestamp.is_none()
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

/// kubectl's JSON for `args`, when kubectl succeeds.
fn get_json(server: &TestApiServer, args: &[&str]) -> Option<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&get(server, &all)?).ok()
}

fn true_condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_ && c["status"] == "True")
}

async fn cluster(prefix: &str, nodes: u32) -> (TestApiServer, Simulator) {
    let server = TestApiServer::start().await.expect("control plane");
    let sim = Simulator::start(&server, prefix, nodes, &[]);
    wait_for_ready_nodes(&server, &[&sim], nodes as usize);
    (server, sim)
}

const DAEMONSET: &str = r#"apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: default}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers: [{name: agent, image: registry.local/agent:1}]
"#;

/// The DaemonSet's pods once every one is Running and Ready, one per node of `nodes`.
fn daemon_pods_on(server: &TestApiServer, sims: &[&Simulator], nodes: &[&str]) {
    wait_for(
        &format!("a Ready agent pod on each of {nodes:?}"),
        server,
        sims,
        || {
            let pods = get_json(server, &["get", "pods", "-l", "app=agent"])?;
            let placed: Vec<(String, bool)> = pods["items"]
                .as_array()?
                .iter()
                .map(|pod| {
                    let pod: Pod = serde_json::from_value(pod.clone()).unwrap_or_default();
                    (node_of(&pod), ready(&pod) && phase(&pod) == "Running")
                })
                .collect();
            let on: BTreeSet<&str> = placed.iter().map(|(node, _)| node.as_str()).collect();
            (placed.len() == nodes.len()
                && on == nodes.iter().copied().collect()
                && placed.iter().all(|(_, ok)| *ok))
            .then_some(())
        },
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemonset_runs_one_pod_per_node_including_a_node_added_later() {
    let (server, sim) = cluster("ds-", 2).await;
    let history = PodHistory::start(&server, "app=agent").await;
    server.ok_with_input(&["apply", "-f", "-"], DAEMONSET);
    daemon_pods_on(&server, &[&sim], &["ds-0", "ds-1"]);

    // Another node joins (a second simulator): the DaemonSet follows it there.
    let late = Simulator::start(&server, "late-", 1, &[]);
    daemon_pods_on(&server, &[&sim, &late], &["ds-0", "ds-1", "late-0"]);
    let status = wait_for("DaemonSet status of 3", &server, &[&sim, &late], || {
        let status = get_json(&server, &["get", "daemonset", "agent"])?["status"].clone();
        (status["numberReady"] == 3 && status["numberAvailable"] == 3).then_some(status)
    });
    assert_eq!(status["desiredNumberScheduled"], 3, "{status}");
    assert_eq!(status["currentNumberScheduled"], 3, "{status}");
    assert_eq!(status["updatedNumberScheduled"], 3, "{status}");
    assert_eq!(status["numberMisscheduled"], 0, "{status}");

    // The scheduler placed them (the controller pins each pod to its node by affinity, as
    // upstream's does, and leaves the binding to the scheduler).
    for (pod, _) in history
        .changes()
        .iter()
        .filter(|(pod, _)| !node_of(pod).is_empty())
    {
        let affinity = pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|required| serde_json::to_value(required).unwrap_or_default())
            .unwrap_or_default();
        let pinned = &affinity["nodeSelectorTerms"][0]["matchFields"][0];
        assert_eq!(pinned["key"], "metadata.name", "{}", pod.name_any());
        assert_eq!(pinned["values"][0], node_of(pod), "{}", pod.name_any());
    }
    // Never two live daemon pods for one node, at any point.
    for state in history.states() {
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        for pod in state.values().filter(|pod| active(pod)) {
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.affinity.as_ref())
                .map(|a| serde_json::to_value(a).unwrap_or_default())
                .and_then(|a| {
                    a.pointer("/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchFields/0/values/0")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| node_of(pod));
            *per_node.entry(node).or_default() += 1;
        }
        assert!(per_node.values().all(|count| *count == 1), "{per_node:?}");
    }
}

const WORK: &str = r#"apiVersion: batch/v1
kind: Job
metadata: {name: work, namespace: default}
spec:
  completions: 5
  parallelism: 2
  template:
    metadata:
      annotations: {keel.dev/simulate-exit-code: "0", keel.dev/simulate-run-seconds: "2"}
    spec:
      restartPolicy: Never
      containers: [{name: main, image: registry.local/busybox:1.36}]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_job_completes_five_pods_never_more_than_two_at_once() {
    let (server, sim) = cluster("job-", 2).await;
    let history = PodHistory::start(&server, "job-name=work").await;
    server.ok_with_input(&["apply", "-f", "-"], WORK);
    let job = wait_for("job work Complete", &server, &[&sim], || {
        let job = get_json(&server, &["get", "job", "work"])?;
        true_condition(&job, "Complete").is_some().then_some(job)
    });
    assert_eq!(job["status"]["succeeded"], 5, "{job}");
    assert!(job["status"].get("failed").is_none(), "{job}");
    assert!(job["status"].get("active").is_none(), "{job}");
    assert!(job["status"]["completionTime"].is_string(), "{job}");
    assert!(
        true_condition(&job, "SuccessCriteriaMet").is_some(),
        "{job}"
    );

    let most_active = history
        .states()
        .iter()
        .map(|state| state.values().filter(|pod| active(pod)).count())
        .max()
        .unwrap_or(0);
    assert_eq!(
        most_active, 2,
        "at most (and at some point exactly) parallelism 2 active"
    );
    // Five pods, each run by a simulated node and ended Succeeded with exit code 0.
    let pods = get_json(&server, &["get", "pods", "-l", "job-name=work"]).expect("pods");
    let pods: Vec<Pod> = serde_json::from_value(pods["items"].clone()).expect("pods");
    assert_eq!(pods.len(), 5);
    for pod in &pods {
        assert_eq!(phase(pod), "Succeeded", "{}", pod.name_any());
        assert!(node_of(pod).starts_with("job-"), "{}", pod.name_any());
        let code = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c[0].state.as_ref())
            .and_then(|s| s.terminated.as_ref())
            .map(|t| t.exit_code);
        assert_eq!(code, Some(0), "{}", pod.name_any());
        assert!(
            pod.finalizers().is_empty(),
            "counted pods lose the tracking finalizer"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_pods_fail_stops_at_its_backoff_limit() {
    let (server, sim) = cluster("fail-", 1).await;
    let manifest = WORK
        .replace("name: work", "name: crash")
        .replace("completions: 5\n  parallelism: 2", "backoffLimit: 1")
        .replace("simulate-exit-code: \"0\"", "simulate-exit-code: \"3\"");
    server.ok_with_input(&["apply", "-f", "-"], &manifest);
    let job = wait_for("job crash Failed", &server, &[&sim], || {
        let job = get_json(&server, &["get", "job", "crash"])?;
        true_condition(&job, "Failed").cloned().map(|c| (job, c))
    });
    let (job, condition) = job;
    assert_eq!(condition["reason"], "BackoffLimitExceeded", "{job}");
    assert_eq!(job["status"]["failed"], 2, "{job}");
    let pods = get_json(&server, &["get", "pods", "-l", "job-name=crash"]).expect("pods");
    let pods: Vec<Pod> = serde_json::from_value(pods["items"].clone()).expect("pods");
    assert_eq!(pods.len(), 2, "backoffLimit 1: two pods, no third");
    assert!(pods.iter().all(|pod| phase(pod) == "Failed"));
}

const TICK: &str = r#"apiVersion: batch/v1
kind: CronJob
metadata: {name: tick, namespace: default}
spec:
  schedule: "*/1 * * * *"
  successfulJobsHistoryLimit: 1
  jobTemplate:
    spec:
      template:
        metadata:
          labels: {app: tick}
          annotations: {keel.dev/simulate-exit-code: "0", keel.dev/simulate-run-seconds: "1"}
        spec:
          restartPolicy: Never
          containers: [{name: main, image: registry.local/busybox:1.36}]
"#;

/// The CronJob's Jobs: name -> complete.
fn tick_jobs(server: &TestApiServer) -> Option<BTreeMap<String, bool>> {
    let jobs = get_json(server, &["get", "jobs"])?;
    Some(
        jobs["items"]
            .as_array()?
            .iter()
            .filter(|job| job["metadata"]["ownerReferences"][0]["name"] == "tick")
            .map(|job| {
                let name = job["metadata"]["name"].as_str().unwrap_or_default();
                (name.to_owned(), true_condition(job, "Complete").is_some())
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cronjob_starts_a_job_each_minute_and_keeps_one_success() {
    let (server, sim) = cluster("cron-", 1).await;
    server.ok_with_input(&["apply", "-f", "-"], TICK);
    // On the real clock: the first run is at most a minute away, the second a minute later.
    let mut seen: BTreeSet<String> = BTreeSet::new();
    wait_longer(
        "a second Job complete and the first deleted",
        Duration::from_secs(150),
        &server,
        &[&sim],
        || {
            let jobs = tick_jobs(&server)?;
            assert!(
                jobs.len() <= 2,
                "one kept and one running at most: {jobs:?}"
            );
            seen.extend(jobs.keys().cloned());
            let newest = seen.iter().max()?;
            (seen.len() >= 2 && jobs.len() == 1 && jobs.get(newest) == Some(&true)).then_some(())
        },
    );
    let minutes: Vec<i64> = seen
        .iter()
        .map(|name| {
            name.trim_start_matches("tick-")
                .parse()
                .expect("tick-<minutes>")
        })
        .collect();
    assert_eq!(minutes[1] - minutes[0], 1, "one Job a minute: {seen:?}");
    let status = wait_for("the CronJob's status", &server, &[&sim], || {
        let status = get_json(&server, &["get", "cronjob", "tick"])?["status"].clone();
        (status["lastSuccessfulTime"].is_string() && status.get("active").is_none())
            .then_some(status)
    });
    assert!(status["lastScheduleTime"].is_string(), "{status}");
    // The deleted Job's pod goes with it (garbage collector); the kept one's stays.
    let oldest = seen.iter().next().expect("a first job").clone();
    wait_for("the first Job's pod gone", &server, &[&sim], || {
        let pods = get_json(
            &server,
            &["get", "pods", "-l", &format!("job-name={oldest}")],
        )?;
        pods["items"].as_array()?.is_empty().then_some(())
    });
    let events = server.ok(&["get", "events", "--field-selector=involvedObject.name=tick"]);
    for wanted in ["SuccessfulCreate", "SawCompletedJob", "SuccessfulDelete"] {
        assert!(events.contains(wanted), "no {wanted} event:\n{events}");
    }
}

const WEB: &str = r#"apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 80}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web, namespace: default}
spec:
  replicas: 3
  serviceName: web
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: registry.local/web:1, ports: [{containerPort: 80}]}]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_statefulset_starts_its_pods_in_order_behind_a_headless_service() {
    let (server, sim) = cluster("sts-", 2).await;
    let history = PodHistory::start(&server, "app=web").await;
    server.ok_with_input(&["apply", "-f", "-"], WEB);
    wait_for("StatefulSet web ready", &server, &[&sim], || {
        let status = get_json(&server, &["get", "statefulset", "web"])?["status"].clone();
        (status["readyReplicas"] == 3 && status["availableReplicas"] == 3).then_some(())
    });

    // web-N appears only once web-(N-1) is Running and Ready, in every state the watch saw.
    let mut ready_seen: BTreeSet<String> = BTreeSet::new();
    let mut created: Vec<String> = Vec::new();
    for (pod, _) in history.changes() {
        let name = pod.name_any();
        if !created.contains(&name) {
            let ordinal: usize = name.trim_start_matches("web-").parse().expect("web-<n>");
            if ordinal > 0 {
                let previous = format!("web-{}", ordinal - 1);
                assert!(
                    ready_seen.contains(&previous),
                    "{name} was created before {previous} was Running and Ready"
                );
            }
            created.push(name.clone());
        }
        if phase(&pod) == "Running" && ready(&pod) {
            ready_seen.insert(name);
        }
    }
    assert_eq!(created, ["web-0", "web-1", "web-2"]);

    // Stable identities under the headless Service: hostname, subdomain, and the
    // EndpointSlice lists each pod by hostname.
    for ordinal in 0..3 {
        let name = format!("web-{ordinal}");
        let pod = get_json(&server, &["get", "pod", &name]).expect("pod");
        assert_eq!(pod["spec"]["hostname"], name.as_str());
        assert_eq!(pod["spec"]["subdomain"], "web");
        assert!(node_of(&serde_json::from_value(pod).expect("a pod")).starts_with("sts-"));
    }
    let hostnames = wait_for("the headless Service's endpoints", &server, &[&sim], || {
        let slices = get_json(
            &server,
            &[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=web",
            ],
        )?;
        let mut names: Vec<String> = slices["items"]
            .as_array()?
            .iter()
            .flat_map(|slice| slice["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|endpoint| endpoint["conditions"]["ready"] == true)
            .filter_map(|endpoint| endpoint["hostname"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        (names.len() == 3).then_some(names)
    });
    assert_eq!(hostnames, ["web-0", "web-1", "web-2"]);
    let cluster_ip = get(
        &server,
        &["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"],
    );
    assert_eq!(cluster_ip.as_deref(), Some("None"));
}
