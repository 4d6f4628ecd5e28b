//! The pods of the simulated nodes: one watch of all pods, filtered on the nodes this process
//! owns (not one watch per node). A pod bound to a simulated node is reported Running and
//! Ready through `pods/status` with the status kubelet computes for running containers
//! ([`crate::pods::status::pod_status`]); one marked for deletion is deleted with grace 0, as
//! the real agent does once it has stopped a pod. See [`super`] for the annotations that make
//! a pod's containers end.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use sha2::Digest as _;
use tokio::sync::Semaphore;

use super::{EXIT_CODE_ANNOTATION, Fleet, RUN_SECONDS_ANNOTATION};
use crate::api::pods as api_pods;
use crate::cgroups::resources::qos_class;
use crate::pods::record::{ContainerRecord, Instance, Termination};
use crate::pods::status::{StatusInput, pod_status};

/// Status writes and deletions in flight at once.
pub const WRITE_CONCURRENCY: usize = 64;
/// Tries of one status write or deletion before it waits for the pod's next event.
const WRITE_ATTEMPTS: u32 = 5;

/// How far the simulator has taken a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Not started yet (or its Running status could not be written).
    Starting,
    /// Its Running status is written (or being written).
    Running,
    /// Its Running status is being written again (something else marked it not ready).
    Refreshing,
    /// Its containers are ending (exit-code annotation).
    Ending,
    Finished,
    Deleting,
}

#[derive(Debug)]
struct Tracked {
    node: String,
    stage: Stage,
    ip: Option<Ipv4Addr>,
    /// When the containers started (seconds since the epoch).
    started_at: i64,
}

/// The pods of the simulated nodes, by UID.
#[derive(Debug)]
pub struct SimPods {
    fleet: Arc<Fleet>,
    pods: Mutex<HashMap<String, Tracked>>,
    permits: Arc<Semaphore>,
}

/// What one pod event calls for.
enum Step {
    None,
    Start,
    Refresh,
    End(i32, u64),
    Delete,
}

impl SimPods {
    pub fn new(fleet: Arc<Fleet>) -> Arc<SimPods> {
        Arc::new(SimPods {
            fleet,
            pods: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(WRITE_CONCURRENCY)),
        })
    }

    fn pods(&self) -> MutexGuard<'_, HashMap<String, Tracked>> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watches every pod and acts on those of the simulated nodes, forever.
    pub async fn run(self: Arc<Self>) {
        let pods: Api<Pod> = Api::all(self.fleet.client().clone());
        let stream = watcher(pods, watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                    self.observe(pod).await;
                }
                Ok(watcher::Event::Delete(pod)) => self.forget(&pod),
                Ok(_) => {}
                Err(error) => log::warn!("simulated pods watch: {error}"),
            }
        }
    }

    async fn observe(self: &Arc<Self>, pod: Pod) {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            return;
        };
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        if !self.fleet.owns(&node) {
            return;
        }
        let step = self.next_step(&pod, &uid, &node);
        if matches!(step, Step::None) {
            return;
        }
        let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
            return;
        };
        let pods = Arc::clone(self);
        tokio::spawn(async move {
            match step {
                Step::Start => pods.start(&pod, &uid, &node).await,
                Step::End(code, after) => {
                    // Waits without holding a write slot.
                    drop(permit);
                    tokio::time::sleep(Duration::from_secs(after)).await;
                    let Ok(permit) = Arc::clone(&pods.permits).acquire_owned().await else {
                        return;
                    };
                    pods.end(&pod, &uid, code).await;
                    drop(permit);
                    return;
                }
                Step::Delete => pods.delete(&pod).await,
                Step::Refresh => pods.refresh(&pod, &uid).await,
                Step::None => {}
            }
            drop(permit);
        });
    }

    /// Decides what `pod` needs and marks it as under way, so that events seen before the
    /// write lands do not repeat it.
    fn next_step(&self, pod: &Pod, uid: &str, node: &str) -> Step {
        let mut pods = self.pods();
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        let tracked = pods.entry(uid.to_owned()).or_insert_with(|| {
            // Already Running (a previous simulator started it): keep its address.
            let ip = status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse().ok())
                .filter(|_| phase != "Pending");
            if let Some(ip) = ip {
                self.fleet.claim_pod_ip(node, ip);
            }
            Tracked {
                node: node.to_owned(),
                stage: match phase {
                    "Pending" => Stage::Starting,
                    "Running" => Stage::Running,
                    _ => Stage::Finished,
                },
                ip,
                started_at: status
                    .and_then(|s| s.start_time.as_ref())
                    .map_or_else(now, |t| t.0.as_second()),
            }
        });
        if pod.metadata.deletion_timestamp.is_some() {
            if tracked.stage == Stage::Deleting {
                return Step::None;
            }
            tracked.stage = Stage::Deleting;
            return Step::Delete;
        }
        if tracked.stage == Stage::Starting && phase == "Pending" {
            // Marked before the write: the watch may show the Running pod before it returns.
            tracked.stage = Stage::Running;
            return Step::Start;
        }
        if tracked.stage == Stage::Running
            && phase == "Running"
            && let Some(code) = exit_code(pod)
        {
            tracked.stage = Stage::Ending;
            return Step::End(code, run_seconds(pod));
        }
        if tracked.stage == Stage::Running && phase == "Running" && !ready(pod) {
            // The node lifecycle controller marks the pods of a node it lost not ready; the
            // node reports them again as kubelet would.
            tracked.stage = Stage::Refreshing;
            return Step::Refresh;
        }
        Step::None
    }

    fn set_stage(&self, uid: &str, stage: Stage) {
        if let Some(tracked) = self.pods().get_mut(uid) {
            tracked.stage = stage;
        }
    }

    async fn start(&self, pod: &Pod, uid: &str, node: &str) {
        let Some((host_ip, pod_ip)) = self.fleet.assign_pod_ip(node) else {
            log::warn!(
                "no pod address left on simulated node {node} for pod {}",
                name(pod)
            );
            // Tried again on the pod's next event.
            self.set_stage(uid, Stage::Starting);
            return;
        };
        let started_at = now();
        if let Some(tracked) = self.pods().get_mut(uid) {
            tracked.ip = Some(pod_ip);
            tracked.started_at = started_at;
        }
        let status = simulated_status(pod, host_ip, pod_ip, started_at, None);
        for attempt in 1..=WRITE_ATTEMPTS {
            match api_pods::write_status(self.fleet.client(), pod, &status).await {
                // Written, or gone from the API (its Delete event releases the address).
                Ok(_) => return,
                Err(error) if attempt < WRITE_ATTEMPTS => {
                    log::debug!("cannot write pod {}'s status: {error}; retrying", name(pod));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(error) => {
                    log::warn!("cannot write pod {}'s status: {error}", name(pod));
                    self.fleet.release_pod_ip(node, pod_ip);
                    if let Some(tracked) = self.pods().get_mut(uid) {
                        tracked.ip = None;
                        tracked.stage = Stage::Starting;
                    }
                }
            }
        }
    }

    async fn refresh(&self, pod: &Pod, uid: &str) {
        let (node, ip, started_at) = {
            let pods = self.pods();
            let Some(tracked) = pods.get(uid) else { return };
            (tracked.node.clone(), tracked.ip, tracked.started_at)
        };
        let (Some(host_ip), Some(pod_ip)) = (self.fleet.host_ip(&node), ip) else {
            return;
        };
        let status = simulated_status(pod, host_ip, pod_ip, started_at, None);
        if let Err(error) = api_pods::write_status(self.fleet.client(), pod, &status).await {
            log::warn!("cannot write pod {}'s status: {error}", name(pod));
        }
        self.set_stage(uid, Stage::Running);
    }

    async fn delete(&self, pod: &Pod) {
        for attempt in 1..=WRITE_ATTEMPTS {
            match api_pods::delete_finished(self.fleet.client(), pod).await {
                Ok(()) => return,
                Err(error) if attempt < WRITE_ATTEMPTS => {
                    log::debug!("cannot delete pod {}: {error}; retrying", name(pod));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(error) => log::warn!("cannot delete pod {}: {error}", name(pod)),
            }
        }
    }

    async fn end(&self, pod: &Pod, uid: &str, code: i32) {
        let (node, ip, started_at) = {
            let pods = self.pods();
            let Some(tracked) = pods.get(uid) else { return };
            if tracked.stage != Stage::Ending {
                return;
            }
            (tracked.node.clone(), tracked.ip, tracked.started_at)
        };
        let (Some(host_ip), Some(pod_ip)) = (self.fleet.host_ip(&node), ip) else {
            return;
        };
        let status = simulated_status(pod, host_ip, pod_ip, started_at, Some(code));
        match api_pods::write_status(self.fleet.client(), pod, &status).await {
            Ok(_) => self.set_stage(uid, Stage::Finished),
            Err(error) => {
                log::warn!("cannot write pod {}'s status: {error}", name(pod));
                self.set_stage(uid, Stage::Running);
            }
        }
    }

    fn forget(&self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.as_deref() else {
            return;
        };
        if let Some(tracked) = self.pods().remove(uid)
            && let Some(ip) = tracked.ip
        {
            self.fleet.release_pod_ip(&tracked.node, ip);
        }
    }
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// The exit code the pod's containers end with, when its restart policy lets that end the pod.
fn exit_code(pod: &Pod) -> Option<i32> {
    let code: i32 = annotation(pod, EXIT_CODE_ANNOTATION)?.trim().parse().ok()?;
    let policy = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    match (policy, code) {
        ("Never", _) | ("OnFailure", 0) => Some(code),
        _ => None,
    }
}

fn run_seconds(pod: &Pod) -> u64 {
    annotation(pod, RUN_SECONDS_ANNOTATION)
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// A made-up but well-formed image digest.
fn digest(image: &str) -> String {
    let hash = sha2::Sha256::digest(image.as_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The status kubelet would report for the pod with every init container completed and every
/// container running (or, with `exit`, ended with that code).
pub fn simulated_status(
    pod: &Pod,
    host_ip: Ipv4Addr,
    pod_ip: Ipv4Addr,
    started_at: i64,
    exit: Option<i32>,
) -> PodStatus {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let spec = pod.spec.as_ref();
    let now = now();
    let mut records = BTreeMap::new();
    let mut ready = BTreeMap::new();
    let init = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default();
    let regular = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    for (index, container) in init.iter().chain(regular).enumerate() {
        let is_init = index < init.len();
        let image = container.image.clone().unwrap_or_default();
        let id = format!("{}{index:04x}", uid.replace('-', ""));
        let code = if is_init { Some(0) } else { exit };
        let terminated = code.map(|exit_code| Termination {
            exit_code,
            signal: None,
            reason: if exit_code == 0 { "Completed" } else { "Error" }.to_owned(),
            message: None,
            started_at,
            finished_at: now,
            container_id: id.clone(),
        });
        records.insert(
            container.name.clone(),
            ContainerRecord {
                name: container.name.clone(),
                current: Some(Instance {
                    id,
                    pid: 0,
                    started_at,
                    image_id: digest(&image),
                    image_ref: image,
                    terminated,
                }),
                ..ContainerRecord::default()
            },
        );
        ready.insert(container.name.clone(), true);
    }
    let qos = qos_class(pod).map_or("BestEffort", |q| q.as_str());
    pod_status(&StatusInput {
        pod,
        records: &records,
        waiting: &BTreeMap::new(),
        ready: &ready,
        pod_ip: Some(pod_ip.to_string()),
        host_ip: Some(host_ip.to_string()),
        sandbox_ready: true,
        start_time: Some(started_at),
        qos_class: qos,
        previous: pod.status.as_ref(),
        now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(restart_policy: &str, annotations: &[(&str, &str)]) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "p", "namespace": "default", "uid": "1234-5678",
                "annotations": annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            },
            "spec": {
                "nodeName": "sim-0",
                "restartPolicy": restart_policy,
                "initContainers": [{"name": "init", "image": "busybox:1.36"}],
                "containers": [{"name": "app", "image": "nginx:1.27"}],
            },
        }))
        .unwrap()
    }

    #[test]
    fn a_started_pod_is_running_and_ready() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let status = simulated_status(
            &pod("Always", &[]),
            ip("100.64.0.9"),
            ip("10.244.3.2"),
            1000,
            None,
        );
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.244.3.2"));
        assert_eq!(status.host_ip.as_deref(), Some("100.64.0.9"));
        let conditions: BTreeMap<String, String> = status
            .conditions
            .unwrap()
            .into_iter()
            .map(|c| (c.type_, c.status))
            .collect();
        for type_ in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
            assert_eq!(conditions[type_], "True", "{type_}");
        }
        let app = &status.container_statuses.unwrap()[0];
        assert_eq!(app.image, "nginx:1.27");
        assert!(app.ready);
        assert!(app.image_id.starts_with("nginx@sha256:"));
        assert!(app.state.as_ref().unwrap().running.is_some());
        let init = &status.init_container_statuses.unwrap()[0];
        let terminated = init.state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(
            (terminated.exit_code, terminated.reason.as_deref()),
            (0, Some("Completed"))
        );
    }

    #[test]
    fn exit_codes_end_the_pod_as_its_restart_policy_allows() {
        let ip = "10.0.0.1".parse().unwrap();
        let ended = |policy, code: i32| {
            let code = code.to_string();
            let pod = pod(policy, &[(EXIT_CODE_ANNOTATION, &code)]);
            exit_code(&pod).map(|c| simulated_status(&pod, ip, ip, 1000, Some(c)).phase.unwrap())
        };
        assert_eq!(ended("Never", 0).as_deref(), Some("Succeeded"));
        assert_eq!(ended("Never", 3).as_deref(), Some("Failed"));
        assert_eq!(ended("OnFailure", 0).as_deref(), Some("Succeeded"));
        assert_eq!(ended("OnFailure", 1), None);
        assert_eq!(ended("Always", 0), None);
        assert_eq!(exit_code(&pod("Never", &[])), None);
    }
}
