//! A pod's `status` from what the agent knows: phase as kubelet's `getPhase` decides it,
//! conditions (PodReadyToStartContainers, Initialized, ContainersReady, Ready, PodScheduled)
//! with transition times kept while a condition holds, and container statuses.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::record::{ContainerRecord, Termination};

/// Why a container has no running instance right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    pub message: Option<String>,
}

/// Everything status is computed from.
#[derive(Debug)]
pub struct StatusInput<'a> {
    pub pod: &'a Pod,
    pub records: &'a BTreeMap<String, ContainerRecord>,
    pub waiting: &'a BTreeMap<String, Waiting>,
    /// Readiness per container name (readiness probes; true when there is none and it runs).
    pub ready: &'a BTreeMap<String, bool>,
    pub pod_ip: Option<String>,
    pub host_ip: Option<String>,
    pub sandbox_ready: bool,
    pub start_time: Option<i64>,
    pub qos_class: &'a str,
    pub previous: Option<&'a PodStatus>,
    pub now: i64,
}

pub fn time(seconds: i64) -> Time {
    Time(jiff::Timestamp::from_second(seconds).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
}

fn terminated(t: &Termination) -> ContainerStateTerminated {
    ContainerStateTerminated {
        container_id: Some(container_id(&t.container_id)),
        exit_code: t.exit_code,
        signal: t.signal,
        reason: Some(t.reason.clone()),
        message: t.message.clone(),
        started_at: Some(time(t.started_at)),
        finished_at: Some(time(t.finished_at)),
    }
}

/// The `containerID` form: `<runtime>://<id>`.
pub fn container_id(id: &str) -> String {
    format!("runc://{id}")
}

fn container_status(
    name: &str,
    image: &str,
    input: &StatusInput<'_>,
) -> (ContainerStatus, ContainerKind) {
    let record = input.records.get(name);
    let waiting = input.waiting.get(name);
    let current = record.and_then(|r| r.current.as_ref());
    let ready = input.ready.get(name).copied().unwrap_or(false);
    let (state, kind) =
        match (current, waiting) {
            (Some(instance), None) if instance.terminated.is_none() => (
                ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(time(instance.started_at)),
                    }),
                    ..ContainerState::default()
                },
                ContainerKind::Running,
            ),
            (Some(instance), None) => {
                let t = instance.terminated.as_ref().expect("terminated");
                let kind = if t.exit_code == 0 {
                    ContainerKind::Succeeded
                } else {
                    ContainerKind::Failed
                };
                (
                    ContainerState {
                        terminated: Some(terminated(t)),
                        ..ContainerState::default()
                    },
                    kind,
                )
            }
            (_, waiting) => {
                let restarted = record.is_some_and(|r| r.last_termination.is_some());
                (
                    ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some(waiting.map_or_else(
                                || "ContainerCreating".to_owned(),
                                |w| w.reason.clone(),
                            )),
                            message: waiting.and_then(|w| w.message.clone()),
                        }),
                        ..ContainerState::default()
                    },
                    if restarted {
                        ContainerKind::Restarting
                    } else {
                        ContainerKind::Waiting
                    },
                )
            }
        };
    let last_state = record
        .and_then(|r| r.last_termination.as_ref())
        .map(|t| ContainerState {
            terminated: Some(terminated(t)),
            ..ContainerState::default()
        });
    let status = ContainerStatus {
        name: name.to_owned(),
        image: image.to_owned(),
        image_id: current
            .map(|i| image_id(&i.image_ref, &i.image_id))
            .unwrap_or_default(),
        container_id: current.map(|i| container_id(&i.id)),
        ready: ready && kind == ContainerKind::Running,
        started: Some(kind == ContainerKind::Running),
        restart_count: record.map_or(0, |r| i32::try_from(r.restart_count).unwrap_or(i32::MAX)),
        state: Some(state),
        last_state: Some(last_state.unwrap_or_default()),
        ..ContainerStatus::default()
    };
    (status, kind)
}

/// `imageID` as containerd reports it: the repository and the manifest digest.
fn image_id(reference: &str, digest: &str) -> String {
    let repository = reference
        .rsplit_once('@')
        .map(|(r, _)| r)
        .unwrap_or(reference);
    let repository = match repository.rsplit_once(':') {
        Some((r, tag)) if !tag.contains('/') => r,
        _ => repository,
    };
    format!("{repository}@{digest}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ContainerKind {
    Waiting,
    Restarting,
    Running,
    Succeeded,
    Failed,
}

/// The pod's status.
pub fn pod_status(input: &StatusInput<'_>) -> PodStatus {
    let spec = input.pod.spec.as_ref();
    let restart_policy = spec
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    let init: Vec<(ContainerStatus, ContainerKind)> = spec
        .and_then(|s| s.init_containers.as_ref())
        .into_iter()
        .flatten()
        .map(|c| container_status(&c.name, c.image.as_deref().unwrap_or(""), input))
        .collect();
    let regular: Vec<(ContainerStatus, ContainerKind)> = spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| container_status(&c.name, c.image.as_deref().unwrap_or(""), input))
        .collect();
    let initialized = init.iter().all(|(_, k)| *k == ContainerKind::Succeeded);
    let init_failed = init.iter().any(|(_, k)| *k == ContainerKind::Failed);
    let phase = phase(restart_policy, initialized, init_failed, &regular);
    let containers_ready = initialized && regular.iter().all(|(s, _)| s.ready);

    let previous_conditions = input
        .previous
        .and_then(|s| s.conditions.as_ref())
        .cloned()
        .unwrap_or_default();
    let condition = |type_: &str, holds: bool, reason: Option<&str>| {
        let status = if holds { "True" } else { "False" };
        let since = previous_conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| time(input.now));
        PodCondition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            last_transition_time: Some(since),
            reason: (!holds).then(|| reason.map(str::to_owned)).flatten(),
            ..PodCondition::default()
        }
    };
    let finished = matches!(phase, "Succeeded" | "Failed");
    let conditions = vec![
        condition("PodReadyToStartContainers", input.sandbox_ready, None),
        condition("Initialized", initialized, Some("ContainersNotInitialized")),
        condition(
            "Ready",
            containers_ready && !finished,
            Some(if finished {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            }),
        ),
        condition(
            "ContainersReady",
            containers_ready && !finished,
            Some(if finished {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            }),
        ),
        condition("PodScheduled", true, None),
    ];
    PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(conditions),
        host_ip: input.host_ip.clone(),
        host_ips: input
            .host_ip
            .clone()
            .map(|ip| vec![k8s_openapi::api::core::v1::HostIP { ip }]),
        pod_ip: input.pod_ip.clone(),
        pod_ips: input.pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        start_time: input.start_time.map(time),
        qos_class: Some(input.qos_class.to_owned()),
        init_container_statuses: (!init.is_empty())
            .then(|| init.into_iter().map(|(s, _)| s).collect()),
        container_statuses: Some(regular.into_iter().map(|(s, _)| s).collect()),
        ..PodStatus::default()
    }
}

/// kubelet's `getPhase`.
fn phase(
    restart_policy: &str,
    initialized: bool,
    init_failed: bool,
    containers: &[(ContainerStatus, ContainerKind)],
) -> &'static str {
    if init_failed && restart_policy == "Never" {
        return "Failed";
    }
    if !initialized {
        return "Pending";
    }
    let count = |kind| containers.iter().filter(|(_, k)| *k == kind).count();
    let waiting = count(ContainerKind::Waiting);
    let running = count(ContainerKind::Running);
    let succeeded = count(ContainerKind::Succeeded);
    let stopped = succeeded + count(ContainerKind::Failed) + count(ContainerKind::Restarting);
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        match restart_policy {
            "Always" => "Running",
            _ if stopped == succeeded => "Succeeded",
            "Never" => "Failed",
            _ => "Running",
        }
    } else {
        "Pending"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::record::Instance;

    fn pod(restart_policy: &str) -> Pod {
        serde_yaml_ng::from_str(&format!(
            "spec: {{restartPolicy: {restart_policy}, containers: [{{name: a, image: busybox}}]}}"
        ))
        .unwrap()
    }

    fn record(terminated: Option<i32>, restarts: u32) -> ContainerRecord {
        ContainerRecord {
            name: "a".into(),
            restart_count: restarts,
            current: Some(Instance {
                id: "id1".into(),
                pid: 5,
                started_at: 100,
                image_id: "sha256:ab".into(),
                image_ref: "127.0.0.1:5000/busybox:1".into(),
                terminated: terminated.map(|code| Termination {
                    exit_code: code,
                    signal: None,
                    reason: if code == 0 { "Completed" } else { "Error" }.into(),
                    message: None,
                    started_at: 100,
                    finished_at: 110,
                    container_id: "id1".into(),
                }),
            }),
            ..ContainerRecord::default()
        }
    }

    fn status_of(
        pod: &Pod,
        record: Option<ContainerRecord>,
        waiting: Option<Waiting>,
    ) -> PodStatus {
        let records = record.into_iter().map(|r| (r.name.clone(), r)).collect();
        let waiting = waiting.into_iter().map(|w| ("a".to_owned(), w)).collect();
        let ready = BTreeMap::from([("a".to_owned(), true)]);
        pod_status(&StatusInput {
            pod,
            records: &records,
            waiting: &waiting,
            ready: &ready,
            pod_ip: Some("198.18.0.2".into()),
            host_ip: None,
            sandbox_ready: true,
            start_time: Some(90),
            qos_class: "BestEffort",
            previous: None,
            now: 120,
        })
    }

    #[test]
    fn phases_follow_containers_and_restart_policy() {
        let phase = |p: &str, r, w| status_of(&pod(p), r, w).phase.unwrap();
        assert_eq!(phase("Always", None, None), "Pending");
        assert_eq!(phase("Always", Some(record(None, 0)), None), "Running");
        assert_eq!(phase("Never", Some(record(Some(0), 0)), None), "Succeeded");
        assert_eq!(phase("Never", Some(record(Some(1), 0)), None), "Failed");
        assert_eq!(
            phase("OnFailure", Some(record(Some(0), 0)), None),
            "Succeeded"
        );
        let mut looping = record(None, 3);
        looping.last_termination = looping.current.take().map(|_| Termination {
            exit_code: 1,
            signal: None,
            reason: "Error".into(),
            message: None,
            started_at: 1,
            finished_at: 2,
            container_id: "old".into(),
        });
        let back_off = Waiting {
            reason: "CrashLoopBackOff".into(),
            message: Some("back-off 10s".into()),
        };
        let status = status_of(&pod("Always"), Some(looping), Some(back_off));
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let container = &status.container_statuses.unwrap()[0];
        assert_eq!(container.restart_count, 3);
        let waiting = container.state.as_ref().unwrap().waiting.as_ref().unwrap();
        assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
        let last = container
            .last_state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap();
        assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
        assert!(!container.ready);
    }

    #[test]
    fn running_container_status_and_conditions() {
        let status = status_of(&pod("Always"), Some(record(None, 0)), None);
        let container = &status.container_statuses.as_ref().unwrap()[0];
        assert_eq!(container.container_id.as_deref(), Some("runc://id1"));
        assert_eq!(container.image_id, "127.0.0.1:5000/busybox@sha256:ab");
        assert!(container.ready);
        let conditions = status.conditions.unwrap();
        let ready = conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(status.pod_ips.unwrap()[0].ip, "198.18.0.2");
    }
}
