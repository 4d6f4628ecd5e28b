//! A ReplicaSet's status as upstream's `calculateStatus` computes it, written through
//! `replicasets/status` only when it changed.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt as _};

use super::pods;

/// The condition a failed create or delete sets.
const REPLICA_FAILURE: &str = "ReplicaFailure";

/// The status `replicaset` should have with `owned` active pods at `now`; `failure` is the
/// reason and message of a failed create or delete in this pass.
pub fn calculate(
    replicaset: &ReplicaSet,
    owned: &[Arc<Pod>],
    failure: Option<(&'static str, String)>,
    now: jiff::Timestamp,
) -> ReplicaSetStatus {
    let spec = replicaset.spec.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|template| template.metadata.as_ref())
        .and_then(|metadata| metadata.labels.clone())
        .unwrap_or_default();
    let count = |predicate: &dyn Fn(&Pod) -> bool| {
        i32::try_from(owned.iter().filter(|pod| predicate(pod)).count()).unwrap_or(i32::MAX)
    };
    let old = replicaset.status.clone().unwrap_or_default();
    let mut conditions: Vec<ReplicaSetCondition> = old.conditions.clone().unwrap_or_default();
    match failure {
        Some((reason, message)) => {
            let existing = conditions
                .iter()
                .position(|condition| condition.type_ == REPLICA_FAILURE);
            let condition = ReplicaSetCondition {
                type_: REPLICA_FAILURE.to_owned(),
                status: "True".to_owned(),
                reason: Some(reason.to_owned()),
                message: Some(message),
                last_transition_time: Some(Time(now)),
            };
            match existing {
                Some(index) if conditions[index].status == "True" => {
                    let since = conditions[index].last_transition_time.clone();
                    conditions[index] = ReplicaSetCondition {
                        last_transition_time: since,
                        ..condition
                    };
                }
                Some(index) => conditions[index] = condition,
                None => conditions.push(condition),
            }
        }
        None => conditions.retain(|condition| condition.type_ != REPLICA_FAILURE),
    }
    ReplicaSetStatus {
        replicas: count(&|_| true),
        // `omitempty` upstream: 0 is left out.
        fully_labeled_replicas: nonzero(count(&|pod| pods::fully_labeled(pod, &template_labels))),
        ready_replicas: nonzero(count(&pods::is_ready)),
        available_replicas: nonzero(count(&|pod| pods::is_available(pod, min_ready, now))),
        observed_generation: replicaset.metadata.generation,
        conditions: (!conditions.is_empty()).then_some(conditions),
        terminating_replicas: old.terminating_replicas,
    }
}

fn nonzero(count: i32) -> Option<i32> {
    (count != 0).then_some(count)
}

/// Writes the status if it changed. Returns when to look again for pods that are ready but
/// not yet available (`minReadySeconds`).
pub async fn update(
    client: &Client,
    replicaset: &ReplicaSet,
    owned: &[Arc<Pod>],
    failure: Option<(&'static str, String)>,
) -> Result<Option<Duration>, kube::Error> {
    let now = jiff::Timestamp::now();
    let status = calculate(replicaset, owned, failure, now);
    if replicaset.status.as_ref().map(normalized) != Some(normalized(&status)) {
        let mut updated = replicaset.clone();
        updated.status = Some(status);
        let api: Api<ReplicaSet> =
            Api::namespaced(client.clone(), &replicaset.namespace().unwrap_or_default());
        api.replace_status(&replicaset.name_any(), &PostParams::default(), &updated)
            .await?;
    }
    let min_ready = replicaset
        .spec
        .as_ref()
        .and_then(|spec| spec.min_ready_seconds)
        .unwrap_or(0);
    Ok(owned
        .iter()
        .filter_map(|pod| pods::until_available(pod, min_ready, now))
        .min()
        .map(|left| left + Duration::from_secs(1)))
}

/// A status with upstream's zero values filled in, for comparison (the API drops zeros).
fn normalized(status: &ReplicaSetStatus) -> ReplicaSetStatus {
    ReplicaSetStatus {
        fully_labeled_replicas: Some(status.fully_labeled_replicas.unwrap_or(0)),
        ready_replicas: Some(status.ready_replicas.unwrap_or(0)),
        available_replicas: Some(status.available_replicas.unwrap_or(0)),
        conditions: status.conditions.clone().filter(|list| !list.is_empty()),
        ..status.clone()
    }
}
