//! A Deployment's status and conditions as upstream computes them (`calculateStatus`,
//! `syncRolloutStatus`, `deployment/util`'s condition helpers): replica counts summed over
//! its ReplicaSets, `Available` from maxUnavailable, `Progressing` with its reasons and the
//! progress deadline.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt as _;

use super::replicas::{self, InvalidIntOrPercent};

pub const AVAILABLE: &str = "Available";
pub const PROGRESSING: &str = "Progressing";
pub const REPLICA_FAILURE: &str = "ReplicaFailure";

pub const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
pub const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
pub const RS_UPDATED: &str = "ReplicaSetUpdated";
pub const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
pub const TIMED_OUT: &str = "ProgressDeadlineExceeded";
pub const PAUSED: &str = "DeploymentPaused";
pub const RESUMED: &str = "DeploymentResumed";
pub const FAILED_RS_CREATE: &str = "ReplicaSetCreateError";
pub const MIN_AVAILABLE: &str = "MinimumReplicasAvailable";
pub const MIN_UNAVAILABLE: &str = "MinimumReplicasUnavailable";

/// A condition stamped `now` (upstream's `NewDeploymentCondition`).
pub fn condition(type_: &str, status: &str, reason: &str, message: String) -> DeploymentCondition {
    let now = Time(Timestamp::now());
    DeploymentCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

/// The condition of `type_`, if any.
pub fn get<'a>(status: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|condition| condition.type_ == type_)
}

/// Upstream's `SetDeploymentCondition`: nothing changes if status and reason are the same;
/// the transition time is kept if only the reason changed.
pub fn set(status: &mut DeploymentStatus, mut condition: DeploymentCondition) {
    if let Some(current) = get(status, &condition.type_) {
        if current.status == condition.status && current.reason == condition.reason {
            return;
        }
        if current.status == condition.status {
            condition.last_transition_time = current.last_transition_time.clone();
        }
    }
    remove(status, &condition.type_.clone());
    status.conditions.get_or_insert_default().push(condition);
}

/// Removes the condition of `type_`.
pub fn remove(status: &mut DeploymentStatus, type_: &str) {
    if let Some(conditions) = status.conditions.as_mut() {
        conditions.retain(|condition| condition.type_ != type_);
    }
}

/// Whether `progressDeadlineSeconds` is set (and not "forever").
pub fn has_progress_deadline(deployment: &Deployment) -> bool {
    deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.progress_deadline_seconds)
        .is_some_and(|seconds| seconds != i32::MAX)
}

/// Upstream's `calculateStatus`.
pub fn calculate(
    all: &[&ReplicaSet],
    new: Option<&ReplicaSet>,
    deployment: &Deployment,
) -> Result<DeploymentStatus, InvalidIntOrPercent> {
    let available: i32 = all.iter().map(|rs| replicas::available_replicas(rs)).sum();
    let total: i32 = all.iter().map(|rs| replicas::spec_replicas(rs)).sum();
    let ready: i32 = all
        .iter()
        .map(|rs| {
            rs.status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0)
        })
        .sum();
    let old = deployment.status.clone().unwrap_or_default();
    let mut status = DeploymentStatus {
        observed_generation: deployment.metadata.generation,
        replicas: nonzero(all.iter().map(|rs| replicas::status_replicas(rs)).sum()),
        updated_replicas: nonzero(new.map_or(0, replicas::status_replicas)),
        ready_replicas: nonzero(ready),
        available_replicas: nonzero(available),
        unavailable_replicas: nonzero((total - available).max(0)),
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
        terminating_replicas: old.terminating_replicas,
    };
    let wanted = replicas::desired(deployment) - replicas::max_unavailable(deployment)?;
    if available >= wanted {
        set(
            &mut status,
            condition(
                AVAILABLE,
                "True",
                MIN_AVAILABLE,
                "Deployment has minimum availability.".into(),
            ),
        );
    } else {
        set(
            &mut status,
            condition(
                AVAILABLE,
                "False",
                MIN_UNAVAILABLE,
                "Deployment does not have minimum availability.".into(),
            ),
        );
    }
    Ok(status)
}

/// Counts as upstream writes them: `omitempty`, so 0 is left out.
fn nonzero(count: i32) -> Option<i32> {
    (count != 0).then_some(count)
}

/// Upstream's `DeploymentComplete`.
pub fn complete(deployment: &Deployment, status: &DeploymentStatus) -> bool {
    let desired = replicas::desired(deployment);
    status.updated_replicas.unwrap_or(0) == desired
        && status.replicas.unwrap_or(0) == desired
        && status.available_replicas.unwrap_or(0) == desired
        && status.observed_generation.unwrap_or(0) >= deployment.metadata.generation.unwrap_or(0)
}

/// Upstream's `DeploymentProgressing`: more updated, fewer old, or more ready / available
/// replicas than the last status said.
pub fn progressing(deployment: &Deployment, new: &DeploymentStatus) -> bool {
    let old = deployment.status.clone().unwrap_or_default();
    let count = |value: Option<i32>| value.unwrap_or(0);
    let old_old = count(old.replicas) - count(old.updated_replicas);
    let new_old = count(new.replicas) - count(new.updated_replicas);
    count(new.updated_replicas) > count(old.updated_replicas)
        || new_old < old_old
        || count(new.ready_replicas) > count(old.ready_replicas)
        || count(new.available_replicas) > count(old.available_replicas)
}

/// Upstream's `DeploymentTimedOut`: no progress for `progressDeadlineSeconds` since the
/// Progressing condition was last updated.
pub fn timed_out(deployment: &Deployment, status: &DeploymentStatus, now: Timestamp) -> bool {
    if !has_progress_deadline(deployment) {
        return false;
    }
    let Some(condition) = get(status, PROGRESSING) else {
        return false;
    };
    match condition.reason.as_deref() {
        Some(NEW_RS_AVAILABLE) => return false,
        Some(TIMED_OUT) => return true,
        _ => {}
    }
    let Some(from) = condition.last_update_time.as_ref() else {
        return false;
    };
    deadline_from(deployment, from.0).is_some_and(|deadline| deadline < now)
}

fn deadline_from(deployment: &Deployment, from: Timestamp) -> Option<Timestamp> {
    let seconds = deployment.spec.as_ref()?.progress_deadline_seconds?;
    from.checked_add(jiff::SignedDuration::from_secs(i64::from(seconds)))
        .ok()
}

/// The status after a rollout step (upstream's `syncRolloutStatus`, without the write), and
/// when to look again for the progress deadline.
pub fn rollout(
    all: &[&ReplicaSet],
    new: Option<&ReplicaSet>,
    deployment: &Deployment,
) -> Result<(DeploymentStatus, Option<Duration>), InvalidIntOrPercent> {
    let mut status = calculate(all, new, deployment)?;
    if !has_progress_deadline(deployment) {
        remove(&mut status, PROGRESSING);
    }
    let old_status = deployment.status.clone().unwrap_or_default();
    let current = get(&old_status, PROGRESSING).cloned();
    let complete_already = status.replicas == status.updated_replicas
        && current
            .as_ref()
            .is_some_and(|condition| condition.reason.as_deref() == Some(NEW_RS_AVAILABLE));
    let name = deployment.name_any();
    let subject = |suffix: &str| match new {
        Some(new) => format!("ReplicaSet {:?} {suffix}", new.name_any()),
        None => format!("Deployment {name:?} {suffix}"),
    };
    if has_progress_deadline(deployment) && !complete_already {
        if complete(deployment, &status) {
            set(
                &mut status,
                condition(
                    PROGRESSING,
                    "True",
                    NEW_RS_AVAILABLE,
                    subject("has successfully progressed."),
                ),
            );
        } else if progressing(deployment, &status) {
            let mut update = condition(PROGRESSING, "True", RS_UPDATED, subject("is progressing."));
            // Progress moves the update time; the transition time stays while it is True.
            if let Some(current) = current.as_ref().filter(|current| current.status == "True") {
                update.last_transition_time = current.last_transition_time.clone();
            }
            remove(&mut status, PROGRESSING);
            set(&mut status, update);
        } else if timed_out(deployment, &status, Timestamp::now()) {
            set(
                &mut status,
                condition(
                    PROGRESSING,
                    "False",
                    TIMED_OUT,
                    subject("has timed out progressing."),
                ),
            );
        }
    }
    remove(&mut status, REPLICA_FAILURE);
    // Upstream's requeueStuckDeployment: look again when the deadline passes.
    let requeue = get(&status, PROGRESSING)
        .filter(|condition| {
            condition.status == "True"
                && !complete(deployment, &status)
                && has_progress_deadline(deployment)
        })
        .and_then(|condition| condition.last_update_time.as_ref())
        .and_then(|from| deadline_from(deployment, from.0))
        .map(|deadline| {
            let left = Timestamp::now().duration_until(deadline);
            Duration::try_from(left).unwrap_or(Duration::ZERO) + Duration::from_secs(1)
        });
    Ok((status, requeue))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_the_same_status_and_reason_changes_nothing() {
        let mut status = DeploymentStatus::default();
        let first = condition(PROGRESSING, "True", NEW_RS_CREATED, "a".into());
        set(&mut status, first.clone());
        set(
            &mut status,
            condition(PROGRESSING, "True", NEW_RS_CREATED, "b".into()),
        );
        assert_eq!(get(&status, PROGRESSING), Some(&first));
        let mut later = condition(PROGRESSING, "True", RS_UPDATED, "c".into());
        later.last_transition_time = Some(Time(Timestamp::UNIX_EPOCH));
        set(&mut status, later);
        let now = get(&status, PROGRESSING).cloned().unwrap_or_default();
        assert_eq!(now.reason.as_deref(), Some(RS_UPDATED));
        assert_eq!(now.last_transition_time, first.last_transition_time);
        assert_eq!(status.conditions.as_ref().map(Vec::len), Some(1));
    }
}
