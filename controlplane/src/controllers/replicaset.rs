//! The ReplicaSet controller, as upstream's: keeps `spec.replicas` active pods per
//! ReplicaSet, made from its template with a controller reference, adopts matching orphans
//! and releases owned pods that no longer match, deletes surplus pods in upstream's order,
//! waits for its own creations and deletions to show in its cache before counting again
//! (expectations), and reports replicas, fully labeled, ready and available pods.

mod pods;
mod status;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};

use super::events::{EventRecorder, EventType};
use super::expectations::{Expectations, Seen};
use super::ownership::{self, Claim};

/// The most pods one pass creates or deletes (upstream's `BurstReplicas`).
const BURST_REPLICAS: usize = 500;
/// How often every ReplicaSet is looked at again without a change (a resync).
const RESYNC: Duration = Duration::from_secs(300);

/// Why one pass over a ReplicaSet could not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the pod cache stopped")]
    CacheStopped,
    #[error("replicaset {0} has an invalid selector: {1}")]
    Selector(String, String),
    #[error("{verb} for replicaset {replicaset} failed")]
    Api {
        verb: &'static str,
        replicaset: String,
        #[source]
        source: kube::Error,
    },
}

struct Context {
    client: Client,
    pods: Store<Pod>,
    expectations: Expectations,
    events: EventRecorder,
}

/// Runs the controller until its watches end (they do not, short of a panic).
pub async fn run(client: Client) {
    let replicasets: Api<ReplicaSet> = Api::all(client.clone());
    let (pods, pod_writer) = reflector::store();
    let pod_events = reflector::reflector(
        pod_writer,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()).default_backoff(),
    )
    .touched_objects();
    let controller = Controller::new(replicasets, watcher::Config::default());
    let owners = controller.store();
    let context = Arc::new(Context {
        events: EventRecorder::new(client.clone(), "replicaset-controller"),
        client,
        pods,
        expectations: Expectations::default(),
    });
    controller
        .watches_stream(pod_events, move |pod: Pod| owners_of(&owners, &pod))
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                log::debug!("replicaset controller: {}", super::chain(&error));
            }
        })
        .await;
}

/// The ReplicaSets a pod event concerns: its controller, or for an orphan every ReplicaSet
/// in its namespace whose selector matches it (one may adopt it).
fn owners_of(replicasets: &Store<ReplicaSet>, pod: &Pod) -> Vec<ObjectRef<ReplicaSet>> {
    let namespace = pod.namespace().unwrap_or_default();
    if let Some(owner) = ownership::controller_of(pod) {
        if owner.kind == "ReplicaSet" && owner.api_version == "apps/v1" {
            return vec![ObjectRef::new(&owner.name).within(&namespace)];
        }
        return Vec::new();
    }
    replicasets
        .state()
        .iter()
        .filter(|replicaset| replicaset.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|replicaset| {
            let selector = replicaset.spec.as_ref().map(|spec| &spec.selector);
            ownership::selector(selector)
                .ok()
                .flatten()
                .is_some_and(|selector| ownership::selects(Some(&selector), pod))
        })
        .map(|replicaset| ObjectRef::from_obj(replicaset.as_ref()))
        .collect()
}

fn error_policy(_: Arc<ReplicaSet>, error: &Error, _: Arc<Context>) -> Action {
    log::warn!("replicaset controller: {}", super::chain(error));
    Action::requeue(Duration::from_secs(1))
}

fn key(replicaset: &ReplicaSet) -> String {
    format!(
        "{}/{}",
        replicaset.namespace().unwrap_or_default(),
        replicaset.name_any()
    )
}

async fn reconcile(replicaset: Arc<ReplicaSet>, context: Arc<Context>) -> Result<Action, Error> {
    context
        .pods
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheStopped)?;
    let name = replicaset.name_any();
    let namespace = replicaset.namespace().unwrap_or_default();
    let key = key(&replicaset);
    let uid = replicaset.uid().unwrap_or_default();
    let spec = replicaset.spec.clone().unwrap_or_default();
    let selector = ownership::selector(Some(&spec.selector))
        .map_err(|error| Error::Selector(key.clone(), error))?;
    let pod_api: Api<Pod> = Api::namespaced(context.client.clone(), &namespace);
    let api_error = |verb| {
        let replicaset = key.clone();
        move |source| Error::Api {
            verb,
            replicaset,
            source,
        }
    };

    let expectations_met = context.expectations.satisfied(
        &key,
        |pod_name| match context
            .pods
            .get(&ObjectRef::new(pod_name).within(&namespace))
        {
            None => Seen::Absent,
            Some(pod) if pod.metadata.deletion_timestamp.is_some() => Seen::Deleting,
            Some(_) => Seen::Present,
        },
        |pod_uid| match context
            .pods
            .find(|pod| pod.metadata.uid.as_deref() == Some(pod_uid))
        {
            None => Seen::Absent,
            Some(pod) if pod.metadata.deletion_timestamp.is_some() => Seen::Deleting,
            Some(_) => Seen::Present,
        },
    );

    // Claim: adopt matching orphans, release owned pods that no longer match.
    let deleting = replicaset.metadata.deletion_timestamp.is_some();
    let mut owned = Vec::new();
    let mut recheck_done = false;
    let candidates = context.pods.state_filter(|pod| {
        pod.metadata.namespace.as_deref() == Some(namespace.as_str()) && pods::is_active(pod)
    });
    for pod in candidates {
        let matches = ownership::selects(selector.as_ref(), pod.as_ref());
        match ownership::claim_decision(pod.as_ref(), &uid, deleting, matches) {
            Claim::Keep => owned.push(pod),
            Claim::Ignore => {}
            Claim::Release => {
                ownership::release(&pod_api, pod.as_ref(), &uid)
                    .await
                    .map_err(api_error("releasing a pod"))?;
            }
            Claim::Adopt => {
                if !recheck_done {
                    // Upstream's RecheckDeletionTimestamp: adopt only for a live owner.
                    let fresh = Api::<ReplicaSet>::namespaced(context.client.clone(), &namespace)
                        .get_opt(&name)
                        .await
                        .map_err(api_error("getting the replicaset"))?;
                    if fresh.is_none_or(|fresh| {
                        fresh.uid().as_deref() != Some(uid.as_str())
                            || fresh.metadata.deletion_timestamp.is_some()
                    }) {
                        return Ok(Action::await_change());
                    }
                    recheck_done = true;
                }
                let adopted = ownership::adopt(
                    &pod_api,
                    pod.as_ref(),
                    ownership::controller_reference(replicaset.as_ref()),
                )
                .await
                .map_err(api_error("adopting a pod"))?;
                if let Some(adopted) = adopted {
                    owned.push(Arc::new(adopted));
                }
            }
        }
    }

    let mut failure = None;
    if expectations_met && !deleting {
        failure = manage_replicas(&replicaset, &owned, &pod_api, &context).await;
    }
    let requeue = status::update(&context.client, &replicaset, &owned, failure)
        .await
        .map_err(api_error("updating status"))?;
    Ok(match requeue {
        Some(after) => Action::requeue(after),
        None if !expectations_met => Action::requeue(Duration::from_secs(2)),
        None => Action::requeue(RESYNC),
    })
}

/// Creates or deletes pods toward `spec.replicas`. Returns the reason and message of a failed
/// create or delete (the `ReplicaFailure` condition).
async fn manage_replicas(
    replicaset: &ReplicaSet,
    owned: &[Arc<Pod>],
    pod_api: &Api<Pod>,
    context: &Context,
) -> Option<(&'static str, String)> {
    let key = key(replicaset);
    let spec = replicaset.spec.clone().unwrap_or_default();
    let wanted = usize::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
    let have = owned.len();
    if have < wanted {
        let Some(template) = spec.template.as_ref() else {
            return Some(("FailedCreate", "the replicaset has no pod template".into()));
        };
        let prefix = format!("{}-", replicaset.name_any());
        let pod = pods::from_template(template, replicaset, &prefix);
        let params = PostParams::default();
        let mut remaining = (wanted - have).min(BURST_REPLICAS);
        // Slow start (upstream's slowStartBatch): 1, 2, 4, ... at once, stop at an error.
        let mut batch = 1;
        while remaining > 0 {
            let size = batch.min(remaining);
            let results =
                futures::future::join_all((0..size).map(|_| pod_api.create(&params, &pod))).await;
            let mut created = Vec::new();
            let mut error = None;
            for result in results {
                match result {
                    Ok(pod) => created.push(pod),
                    Err(failed) => error = Some(failed),
                }
            }
            context.expectations.expect(
                &key,
                created.iter().map(kube::ResourceExt::name_any).collect(),
                Vec::new(),
            );
            for pod in &created {
                context
                    .events
                    .record(
                        replicaset,
                        EventType::Normal,
                        "SuccessfulCreate",
                        format!("Created pod: {}", pod.name_any()),
                    )
                    .await;
            }
            if let Some(error) = error {
                let message = format!("Error creating: {}", api_message(&error));
                context
                    .events
                    .record(
                        replicaset,
                        EventType::Warning,
                        "FailedCreate",
                        message.clone(),
                    )
                    .await;
                return Some(("FailedCreate", message));
            }
            remaining -= size;
            batch *= 2;
        }
    } else if have > wanted {
        let count = (have - wanted).min(BURST_REPLICAS);
        let candidates: Vec<&Pod> = owned.iter().map(Arc::as_ref).collect();
        let victims = pods::pods_to_delete(&candidates, count, jiff::Timestamp::now());
        let results = futures::future::join_all(victims.iter().map(|pod| {
            let params = DeleteParams {
                preconditions: pod
                    .metadata
                    .uid
                    .clone()
                    .map(|uid| kube::api::Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }),
                ..DeleteParams::default()
            };
            async move { (pod, pod_api.delete(&pod.name_any(), &params).await) }
        }))
        .await;
        let mut failure = None;
        let mut deleted = Vec::new();
        for (pod, result) in results {
            match result {
                Ok(_) => {
                    deleted.extend(pod.metadata.uid.clone());
                    context
                        .events
                        .record(
                            replicaset,
                            EventType::Normal,
                            "SuccessfulDelete",
                            format!("Deleted pod: {}", pod.name_any()),
                        )
                        .await;
                }
                Err(kube::Error::Api(status)) if status.is_not_found() => {}
                Err(error) => {
                    let message = format!("Error deleting: {}", api_message(&error));
                    context
                        .events
                        .record(
                            replicaset,
                            EventType::Warning,
                            "FailedDelete",
                            message.clone(),
                        )
                        .await;
                    failure = Some(("FailedDelete", message));
                }
            }
        }
        context.expectations.expect(&key, Vec::new(), deleted);
        return failure;
    }
    None
}

/// The API's message for a failed request, or the error itself.
fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.message.clone(),
        other => super::chain(other),
    }
}
