//! The Deployment controller, as upstream's: it owns ReplicaSets named
//! `<deployment>-<pod-template-hash>`, rolls a changed template out with RollingUpdate
//! (within maxSurge / maxUnavailable) or Recreate, keeps revision annotations so
//! `kubectl rollout undo` finds old templates, scales proportionally, honours `paused`,
//! tracks `progressDeadlineSeconds` in the `Progressing` condition, cleans up past
//! `revisionHistoryLimit`, and reports status so `kubectl rollout status` returns.

mod annotations;
mod hash;
mod replicas;
mod rollout;
mod scaling;
mod status;
mod strategy;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};

use super::events::{EventRecorder, EventType};
use super::ownership::{self, Claim};

/// How often every Deployment is looked at again without a change (a resync).
const RESYNC: Duration = Duration::from_secs(300);

/// Why one pass over a Deployment could not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the replicaset cache stopped")]
    CacheStopped,
    #[error("deployment {0} has an invalid selector: {1}")]
    Selector(String, String),
    #[error(transparent)]
    IntOrPercent(#[from] replicas::InvalidIntOrPercent),
    #[error("replicaset {0} exists with another template (hash collision); retrying")]
    Collision(String),
    #[error("{verb} for deployment {deployment} failed")]
    Api {
        verb: &'static str,
        deployment: String,
        #[source]
        source: kube::Error,
    },
}

struct Context {
    client: Client,
    replicasets: Store<ReplicaSet>,
    events: EventRecorder,
}

/// Runs the controller until its watches end (they do not, short of a panic).
pub async fn run(client: Client) {
    let deployments: Api<Deployment> = Api::all(client.clone());
    let (replicasets, writer) = reflector::store();
    let replicaset_events = reflector::reflector(
        writer,
        watcher(
            Api::<ReplicaSet>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .touched_objects();
    let controller = Controller::new(deployments, watcher::Config::default());
    let owners = controller.store();
    let context = Arc::new(Context {
        events: EventRecorder::new(client.clone(), "deployment-controller"),
        client,
        replicasets,
    });
    controller
        .watches_stream(replicaset_events, move |replicaset: ReplicaSet| {
            owners_of(&owners, &replicaset)
        })
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                log::debug!("deployment controller: {}", super::chain(&error));
            }
        })
        .await;
}

/// The Deployments a ReplicaSet event concerns: its controller, or for an orphan every
/// Deployment in its namespace whose selector matches it.
fn owners_of(
    deployments: &Store<Deployment>,
    replicaset: &ReplicaSet,
) -> Vec<ObjectRef<Deployment>> {
    let namespace = replicaset.namespace().unwrap_or_default();
    if let Some(owner) = ownership::controller_of(replicaset) {
        if owner.kind == "Deployment" && owner.api_version == "apps/v1" {
            return vec![ObjectRef::new(&owner.name).within(&namespace)];
        }
        return Vec::new();
    }
    deployments
        .state()
        .iter()
        .filter(|deployment| deployment.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|deployment| {
            let selector = deployment.spec.as_ref().map(|spec| &spec.selector);
            ownership::selector(selector)
                .ok()
                .flatten()
                .is_some_and(|selector| ownership::selects(Some(&selector), replicaset))
        })
        .map(|deployment| ObjectRef::from_obj(deployment.as_ref()))
        .collect()
}

fn error_policy(_: Arc<Deployment>, error: &Error, _: Arc<Context>) -> Action {
    match error {
        // A lost race with a newer version: the cache catches up at once.
        Error::Api {
            source: kube::Error::Api(status),
            ..
        } if status.code == 409 => {
            log::debug!("deployment controller: {}", super::chain(error));
            Action::requeue(Duration::from_millis(250))
        }
        _ => {
            log::warn!("deployment controller: {}", super::chain(error));
            Action::requeue(Duration::from_secs(1))
        }
    }
}

async fn reconcile(deployment: Arc<Deployment>, context: Arc<Context>) -> Result<Action, Error> {
    context
        .replicasets
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheStopped)?;
    let namespace = deployment.namespace().unwrap_or_default();
    let key = format!("{namespace}/{}", deployment.name_any());
    let spec = deployment.spec.clone().unwrap_or_default();
    if spec
        .selector
        .match_labels
        .as_ref()
        .is_none_or(|labels| labels.is_empty())
        && spec
            .selector
            .match_expressions
            .as_ref()
            .is_none_or(|exprs| exprs.is_empty())
    {
        context
            .events
            .record(
                deployment.as_ref(),
                EventType::Warning,
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.".into(),
            )
            .await;
        return Ok(Action::await_change());
    }
    let replicasets = claim(&deployment, &context, &key).await?;
    let mut sync = rollout::Sync::new(&context, (*deployment).clone(), replicasets);
    if deployment.metadata.deletion_timestamp.is_some() {
        sync.status_only().await?;
        return Ok(Action::await_change());
    }
    sync.check_paused_conditions().await?;
    let requeue = if spec.paused.unwrap_or(false) || sync.is_scaling_event().await? {
        sync.sync_scale().await?;
        None
    } else if spec
        .strategy
        .as_ref()
        .and_then(|strategy| strategy.type_.as_deref())
        == Some("Recreate")
    {
        sync.recreate().await?
    } else {
        sync.rolling().await?
    };
    Ok(Action::requeue(
        requeue.map_or(RESYNC, |after| after.min(RESYNC)),
    ))
}

/// Upstream's `getReplicaSetsForDeployment`: the ReplicaSets the deployment controls after
/// adopting matching orphans and releasing those that stopped matching.
async fn claim(
    deployment: &Deployment,
    context: &Context,
    key: &str,
) -> Result<Vec<ReplicaSet>, Error> {
    let namespace = deployment.namespace().unwrap_or_default();
    let uid = deployment.uid().unwrap_or_default();
    let selector = ownership::selector(deployment.spec.as_ref().map(|spec| &spec.selector))
        .map_err(|error| Error::Selector(key.to_owned(), error))?;
    let deleting = deployment.metadata.deletion_timestamp.is_some();
    let api: Api<ReplicaSet> = Api::namespaced(context.client.clone(), &namespace);
    let api_error = |verb| {
        let deployment = key.to_owned();
        move |source| Error::Api {
            verb,
            deployment,
            source,
        }
    };
    let mut owned = Vec::new();
    let mut rechecked = false;
    let candidates = context
        .replicasets
        .state_filter(|rs| rs.metadata.namespace.as_deref() == Some(namespace.as_str()));
    for replicaset in candidates {
        let matches = ownership::selects(selector.as_ref(), replicaset.as_ref());
        match ownership::claim_decision(replicaset.as_ref(), &uid, deleting, matches) {
            Claim::Keep => owned.push((*replicaset).clone()),
            Claim::Ignore => {}
            Claim::Release => {
                ownership::release(&api, replicaset.as_ref(), &uid)
                    .await
                    .map_err(api_error("releasing a replicaset"))?;
            }
            Claim::Adopt => {
                if !rechecked {
                    let fresh = Api::<Deployment>::namespaced(context.client.clone(), &namespace)
                        .get_opt(&deployment.name_any())
                        .await
                        .map_err(api_error("getting the deployment"))?;
                    if fresh.is_none_or(|fresh| {
                        fresh.uid().as_deref() != Some(uid.as_str())
                            || fresh.metadata.deletion_timestamp.is_some()
                    }) {
                        return Ok(owned);
                    }
                    rechecked = true;
                }
                let adopted = ownership::adopt(
                    &api,
                    replicaset.as_ref(),
                    ownership::controller_reference(deployment),
                )
                .await
                .map_err(api_error("adopting a replicaset"))?;
                owned.extend(adopted);
            }
        }
    }
    Ok(owned)
}
