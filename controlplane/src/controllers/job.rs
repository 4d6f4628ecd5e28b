//! The Job controller, as upstream's `pkg/controller/job`: keeps `parallelism` pods active
//! until `completions` pods succeeded (NonIndexed) or every index in `0..completions` has a
//! succeeded pod (Indexed), counts pod failures against `backoffLimit` with an exponential
//! back-off between failures, enforces `activeDeadlineSeconds`, and tracks finished pods
//! with the `batch.kubernetes.io/job-tracking` finalizer (recorded in
//! `status.uncountedTerminatedPods`, finalizer removed, then folded into the counters, so a
//! pod is never counted twice or lost).

mod logic;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};
use serde_json::{Value, json};

use super::workload::{self, Error, PodControl};
use logic::Outcome;

/// The finalizer that keeps a Job's finished pods until they are counted.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// The label (and annotation) with an Indexed Job pod's index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
pub use crate::api::job::{CONTROLLER_UID, JOB_NAME, LEGACY_CONTROLLER_UID, LEGACY_JOB_NAME};

/// Runs the Job controller until its watch streams end.
pub async fn run(client: Client) {
    let context = Arc::new(PodControl::new(client.clone(), "job-controller"));
    let controller = Controller::new(Api::<Job>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Pod>::all(client), watcher::Config::default())
        .run(reconcile, workload::error_policy, context);
    workload::drain("job controller", controller).await;
}

/// What one pass learned about the Job's pods.
struct Pods {
    all: Vec<Pod>,
    /// Running or pending, not being deleted.
    active: Vec<Pod>,
}

async fn reconcile(cached: Arc<Job>, context: Arc<PodControl>) -> Result<Action, Error> {
    let client = &context.client;
    let namespace = cached.namespace().unwrap_or_default();
    // Counting against counters older than this controller's last status write would lose
    // pods: the Job is read fresh.
    let Some((jobs, job)) = workload::fresh(client, &*cached).await? else {
        return Ok(Action::await_change());
    };
    let uid = job.uid().unwrap_or_default();
    let spec = job.spec.clone().unwrap_or_default();
    let selector = spec.selector.as_ref().map_or_else(
        || format!("{CONTROLLER_UID}={uid}"),
        workload::selector_query,
    );
    let all = workload::owned_pods(client, &namespace, &selector, &uid).await?;
    let now = Timestamp::now();
    let status = job.status.clone().unwrap_or_default();
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");

    // Finished pods still holding the finalizer: recorded as uncounted first.
    let mut uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
    let mut uncounted_succeeded = uncounted.succeeded.take().unwrap_or_default();
    let mut uncounted_failed = uncounted.failed.take().unwrap_or_default();
    let mut completed = logic::parse_indexes(status.completed_indexes.as_deref().unwrap_or(""));
    let mut recorded = false;
    // Pods removed after the Job met its success criteria are released, not counted as
    // failures (upstream since success policies).
    let succeeded_already =
        logic::has_condition(&job, "SuccessCriteriaMet") || logic::has_condition(&job, "Complete");
    let mut released: Vec<String> = Vec::new();
    for pod in all.iter().filter(|pod| holds_finalizer(pod)) {
        let pod_uid = pod.uid().unwrap_or_default();
        if uncounted_succeeded.contains(&pod_uid) || uncounted_failed.contains(&pod_uid) {
            continue;
        }
        if workload::phase(pod) == "Succeeded" {
            uncounted_succeeded.push(pod_uid);
            if let Some(index) = pod_index(pod) {
                completed.insert(index);
            }
            recorded = true;
        } else if succeeded_already
            && workload::terminating(pod)
            && workload::phase(pod) != "Failed"
        {
            released.push(pod_uid);
        } else if pod_failed(pod) {
            uncounted_failed.push(pod_uid);
            recorded = true;
        }
    }
    if recorded {
        workload::patch_status(
            &jobs,
            &job,
            json!({
                "uncountedTerminatedPods": uncounted_json(&uncounted_succeeded, &uncounted_failed),
                "completedIndexes": indexed.then(|| logic::format_indexes(&completed)),
            }),
        )
        .await?;
    }
    for pod in all.iter().filter(|pod| holds_finalizer(pod)) {
        let pod_uid = pod.uid().unwrap_or_default();
        if uncounted_succeeded.contains(&pod_uid)
            || uncounted_failed.contains(&pod_uid)
            || released.contains(&pod_uid)
        {
            remove_finalizer(client, pod).await?;
        }
    }
    // Every uncounted pod has lost its finalizer now (or is gone): fold into the counters.
    let mut succeeded = status.succeeded.unwrap_or(0) + count(&uncounted_succeeded);
    let failed = status.failed.unwrap_or(0) + count(&uncounted_failed);
    if indexed {
        succeeded = succeeded.max(count(&completed));
    }
    let pods = Pods {
        active: all
            .iter()
            .filter(|pod| !workload::finished(pod) && !workload::terminating(pod))
            .cloned()
            .collect(),
        all,
    };

    let mut conditions = status.conditions.clone().unwrap_or_default();
    let start_time = status.start_time.as_ref().map_or(now, |time| time.0);
    let suspended = spec.suspend == Some(true);
    let outcome = finished_outcome(&job, &pods, succeeded, failed, &completed, start_time, now);
    let mut requeue = None;
    let mut completion_time = status.completion_time.clone();
    if let Some(outcome) = outcome {
        let (interim, final_type) = outcome.conditions();
        conditions = logic::with_condition(
            conditions,
            interim,
            outcome.reason(),
            outcome.message(),
            now,
        );
        for pod in &pods.active {
            context.delete(&job, pod).await?;
        }
        let tracking = pods.all.iter().any(holds_finalizer);
        if pods.active.is_empty() && !tracking && !logic::has_condition(&job, final_type) {
            conditions = logic::with_condition(
                conditions,
                final_type,
                outcome.reason(),
                outcome.message(),
                now,
            );
            if outcome == Outcome::Complete {
                completion_time = Some(Time(now));
                context
                    .recorder
                    .normal(&job, "Completed", "Job completed".into())
                    .await;
            } else {
                context
                    .recorder
                    .warning(&job, outcome.reason(), outcome.message().into())
                    .await;
            }
        } else if !pods.active.is_empty() || tracking {
            requeue = Some(Duration::from_secs(1));
        }
    } else {
        requeue =
            manage_active(&context, &job, &pods, succeeded, &completed, suspended, now).await?;
        if let Some(deadline) = spec.active_deadline_seconds
            && !suspended
        {
            let left = (start_time + SignedDuration::from_secs(deadline)).duration_since(now);
            let left = Duration::try_from(left).unwrap_or_default() + Duration::from_millis(100);
            requeue = Some(requeue.map_or(left, |other: Duration| other.min(left)));
        }
        conditions = suspended_conditions(conditions, suspended, now);
    }

    let active: Vec<&Pod> = pods
        .all
        .iter()
        .filter(|pod| !workload::finished(pod) && !workload::terminating(pod))
        .collect();
    let ready = active.iter().filter(|pod| workload::ready(pod)).count();
    let terminating = pods
        .all
        .iter()
        .filter(|pod| workload::terminating(pod) && !workload::finished(pod))
        .count();
    let start = (!suspended || status.start_time.is_some()).then(|| json!(Time(start_time)));
    workload::patch_status(
        &jobs,
        &job,
        json!({
            "active": nonzero(active.len()),
            "ready": ready,
            "terminating": nonzero(terminating),
            "succeeded": (succeeded > 0).then_some(succeeded),
            "failed": (failed > 0).then_some(failed),
            "startTime": start,
            "completionTime": completion_time,
            "completedIndexes": indexed.then(|| logic::format_indexes(&completed)),
            "conditions": (!conditions.is_empty()).then_some(&conditions),
            "uncountedTerminatedPods": uncounted_json(&[], &[]),
        }),
    )
    .await?;
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// Whether (and how) the Job ends now.
fn finished_outcome(
    job: &Job,
    pods: &Pods,
    succeeded: i32,
    failed: i32,
    completed: &BTreeSet<i32>,
    start_time: Timestamp,
    now: Timestamp,
) -> Option<Outcome> {
    let spec = job.spec.clone().unwrap_or_default();
    if logic::has_condition(job, "Failed") || logic::has_condition(job, "FailureTarget") {
        return Some(failure_of(job));
    }
    if logic::has_condition(job, "Complete") || logic::has_condition(job, "SuccessCriteriaMet") {
        return Some(Outcome::Complete);
    }
    if failed > spec.backoff_limit.unwrap_or(6) {
        return Some(Outcome::BackoffLimitExceeded);
    }
    if let Some(deadline) = spec.active_deadline_seconds
        && spec.suspend != Some(true)
        && now.duration_since(start_time) >= SignedDuration::from_secs(deadline)
    {
        return Some(Outcome::DeadlineExceeded);
    }
    let complete = match (spec.completion_mode.as_deref(), spec.completions) {
        (Some("Indexed"), Some(completions)) => count(completed) >= completions,
        (_, Some(completions)) => succeeded >= completions,
        (_, None) => succeeded > 0 && pods.active.is_empty(),
    };
    complete.then_some(Outcome::Complete)
}

fn failure_of(job: &Job) -> Outcome {
    let reason = job
        .status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| (c.type_ == "FailureTarget" || c.type_ == "Failed") && c.status == "True")
        .and_then(|c| c.reason.clone());
    match reason.as_deref() {
        Some("DeadlineExceeded") => Outcome::DeadlineExceeded,
        _ => Outcome::BackoffLimitExceeded,
    }
}

/// Creates or deletes pods so the wanted number is active; returns when to look again if
/// the failure back-off holds creations back.
async fn manage_active(
    context: &PodControl,
    job: &Job,
    pods: &Pods,
    succeeded: i32,
    completed: &BTreeSet<i32>,
    suspended: bool,
    now: Timestamp,
) -> Result<Option<Duration>, Error> {
    let spec = job.spec.clone().unwrap_or_default();
    let parallelism = if suspended {
        0
    } else {
        spec.parallelism.unwrap_or(1)
    };
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let active = count(&pods.active);
    let wanted = if indexed {
        let held: BTreeSet<i32> = pods.active.iter().filter_map(pod_index).collect();
        let missing = logic::missing_indexes(spec.completions.unwrap_or(0), completed, &held);
        parallelism.min(active + count(&missing))
    } else {
        logic::wanted_active(parallelism, spec.completions, succeeded)
    };
    if active > wanted {
        let mut excess: Vec<&Pod> = pods.active.iter().collect();
        // Not-ready and newest pods go first, as upstream's ActivePods ordering.
        excess.sort_by_key(|pod| (workload::ready(pod), std::cmp::Reverse(created(pod))));
        for pod in excess
            .into_iter()
            .take(usize::try_from(active - wanted).unwrap_or(0))
        {
            context.delete(job, pod).await?;
        }
        return Ok(None);
    }
    if active == wanted {
        return Ok(None);
    }
    let wait = backoff_remaining(&pods.all, now);
    if wait > Duration::ZERO {
        return Ok(Some(wait));
    }
    let creations = usize::try_from(wanted - active).unwrap_or(0);
    let indexes: Vec<Option<i32>> = if indexed {
        let held: BTreeSet<i32> = pods.active.iter().filter_map(pod_index).collect();
        logic::missing_indexes(spec.completions.unwrap_or(0), completed, &held)
            .into_iter()
            .take(creations)
            .map(Some)
            .collect()
    } else {
        vec![None; creations]
    };
    for index in indexes {
        context.create(job, &new_pod(job, index)).await?;
    }
    Ok(None)
}

/// How long the failure back-off still holds new pods back: failures after the last
/// success, from the newest failure.
fn backoff_remaining(pods: &[Pod], now: Timestamp) -> Duration {
    let last_success = pods
        .iter()
        .filter(|pod| workload::phase(pod) == "Succeeded")
        .filter_map(logic::finish_time)
        .max();
    let failures: Vec<Timestamp> = pods
        .iter()
        .filter(|pod| pod_failed(pod))
        .filter_map(logic::finish_time)
        .filter(|time| last_success.is_none_or(|success| *time > success))
        .collect();
    let Some(last_failure) = failures.iter().max() else {
        return Duration::ZERO;
    };
    let delay = logic::backoff_delay(u32::try_from(failures.len()).unwrap_or(u32::MAX));
    let left = (*last_failure + delay).duration_since(now);
    Duration::try_from(left).unwrap_or_default()
}

/// A pod for `job` (and `index` for Indexed Jobs), as upstream's pod control makes it.
fn new_pod(job: &Job, index: Option<i32>) -> Pod {
    let spec = job.spec.clone().unwrap_or_default();
    let name = job.name_any();
    let uid = job.uid().unwrap_or_default();
    let mut pod = workload::pod_from_template(&spec.template, job);
    pod.metadata.generate_name = Some(match index {
        Some(index) => format!("{name}-{index}-"),
        None => format!("{name}-"),
    });
    for (key, value) in [
        (CONTROLLER_UID, &uid),
        (JOB_NAME, &name),
        (LEGACY_CONTROLLER_UID, &uid),
        (LEGACY_JOB_NAME, &name),
    ] {
        workload::set_label(&mut pod.metadata, key, value.clone());
    }
    pod.metadata
        .finalizers
        .get_or_insert_with(Vec::new)
        .push(TRACKING_FINALIZER.into());
    if let Some(index) = index {
        workload::set_label(&mut pod.metadata, COMPLETION_INDEX, index.to_string());
        pod.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(COMPLETION_INDEX.into(), index.to_string());
        if let Some(pod_spec) = pod.spec.as_mut() {
            if pod_spec.hostname.is_none() {
                pod_spec.hostname = Some(format!("{name}-{index}"));
            }
            let env = EnvVar {
                name: "JOB_COMPLETION_INDEX".into(),
                value: None,
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        api_version: None,
                        field_path: format!("metadata.labels['{COMPLETION_INDEX}']"),
                    }),
                    ..EnvVarSource::default()
                }),
            };
            for container in pod_spec
                .init_containers
                .iter_mut()
                .flatten()
                .chain(pod_spec.containers.iter_mut())
            {
                container.env.get_or_insert_with(Vec::new).push(env.clone());
            }
        }
    }
    pod
}

async fn remove_finalizer(client: &Client, pod: &Pod) -> Result<(), Error> {
    let namespace = pod.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let kept: Vec<&String> = pod
        .finalizers()
        .iter()
        .filter(|finalizer| *finalizer != TRACKING_FINALIZER)
        .collect();
    let patch = json!({"metadata": {
        "finalizers": kept,
        "resourceVersion": pod.resource_version(),
    }});
    match pods
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(source) => Err(Error::Api {
            action: format!(
                "removing the job-tracking finalizer of pod {namespace}/{}",
                pod.name_any()
            ),
            source,
        }),
    }
}

fn suspended_conditions(
    mut conditions: Vec<JobCondition>,
    suspended: bool,
    now: Timestamp,
) -> Vec<JobCondition> {
    if suspended {
        return logic::with_condition(
            conditions,
            "Suspended",
            "JobSuspended",
            "Job suspended",
            now,
        );
    }
    if let Some(condition) = conditions
        .iter_mut()
        .find(|c| c.type_ == "Suspended" && c.status == "True")
    {
        condition.status = "False".into();
        condition.reason = Some("JobResumed".into());
        condition.message = Some("Job resumed".into());
        condition.last_transition_time = Some(Time(now));
    }
    conditions
}

/// Upstream's `isPodFailed` under `podReplacementPolicy: TerminatingOrFailed`: a failed pod,
/// or one being deleted that did not succeed.
fn pod_failed(pod: &Pod) -> bool {
    workload::phase(pod) == "Failed"
        || (workload::terminating(pod) && workload::phase(pod) != "Succeeded")
}

fn holds_finalizer(pod: &Pod) -> bool {
    pod.finalizers().iter().any(|f| f == TRACKING_FINALIZER)
}

fn pod_index(pod: &Pod) -> Option<i32> {
    pod.annotations()
        .get(COMPLETION_INDEX)
        .or_else(|| pod.labels().get(COMPLETION_INDEX))?
        .parse()
        .ok()
}

fn created(pod: &Pod) -> Timestamp {
    pod.metadata
        .creation_timestamp
        .as_ref()
        .map_or(Timestamp::UNIX_EPOCH, |time| time.0)
}

fn count<T>(items: impl IntoIterator<Item = T>) -> i32 {
    i32::try_from(items.into_iter().count()).unwrap_or(i32::MAX)
}

fn nonzero(value: usize) -> Option<usize> {
    (value > 0).then_some(value)
}

fn uncounted_json(succeeded: &[String], failed: &[String]) -> Value {
    let list = |uids: &[String]| (!uids.is_empty()).then(|| json!(uids));
    json!({"succeeded": list(succeeded), "failed": list(failed)})
}
