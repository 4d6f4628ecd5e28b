//! The namespace controller, as upstream's: when a namespace is being deleted it deletes
//! everything in it (every namespaced resource the API serves, found by discovery), reports
//! what is left in the namespace's conditions, and once nothing is left removes the
//! `kubernetes` finalizer through `namespaces/finalize`, which lets the API server delete
//! the namespace.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope, verbs};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};
use serde_json::json;

/// The finalizer the namespace controller owns (`spec.finalizers`).
pub const FINALIZER: &str = "kubernetes";

/// Why one pass over a namespace could not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("discovering the namespaced resources failed")]
    Discovery(#[source] kube::Error),
    #[error("{verb} {resource} in namespace {namespace} failed")]
    Content {
        verb: &'static str,
        resource: String,
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("updating namespace {namespace} failed")]
    Namespace {
        namespace: String,
        #[source]
        source: kube::Error,
    },
}

struct Context {
    client: Client,
}

/// Runs the controller until the watch stream ends (it does not, short of a panic).
pub async fn run(client: Client) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let results = Controller::new(namespaces, watcher::Config::default()).run(
        reconcile,
        error_policy,
        Arc::new(Context { client }),
    );
    super::drive("namespace controller", results).await;
}

fn error_policy(_: Arc<Namespace>, error: &Error, _: Arc<Context>) -> Action {
    log::warn!("namespace controller: {}", super::chain(error));
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(namespace: Arc<Namespace>, context: Arc<Context>) -> Result<Action, Error> {
    if namespace.metadata.deletion_timestamp.is_none() || !holds_finalizer(&namespace) {
        return Ok(Action::await_change());
    }
    let name = namespace.name_any();
    let client = &context.client;
    let resources = namespaced_resources(client).await?;
    let mut remaining = Vec::new();
    let mut finalizers = std::collections::BTreeMap::<String, usize>::new();
    for (resource, capabilities) in &resources {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &name, resource);
        let content = |verb, source| Error::Content {
            verb,
            resource: group_resource(resource),
            namespace: name.clone(),
            source,
        };
        if capabilities.supports_operation(verbs::DELETE_COLLECTION) {
            api.delete_collection(&DeleteParams::background(), &ListParams::default())
                .await
                .map_err(|source| content("deletecollection", source))?;
        }
        let left = api
            .list_metadata(&ListParams::default())
            .await
            .map_err(|source| content("list", source))?;
        if !capabilities.supports_operation(verbs::DELETE_COLLECTION) {
            for object in &left.items {
                let deleted = api
                    .delete(&object.name_any(), &DeleteParams::background())
                    .await;
                match deleted {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.is_not_found() => {}
                    Err(source) => return Err(content("delete", source)),
                }
            }
        }
        if !left.items.is_empty() {
            remaining.push(format!(
                "{} has {} resource instances",
                group_resource(resource),
                left.items.len()
            ));
            for object in &left.items {
                for finalizer in object.finalizers() {
                    *finalizers.entry(finalizer.clone()).or_default() += 1;
                }
            }
        }
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let failed = |source| Error::Namespace {
        namespace: name.clone(),
        source,
    };
    let conditions = deletion_conditions(&namespace, &remaining, &finalizers);
    namespaces
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": conditions}})),
        )
        .await
        .map_err(failed)?;
    if !remaining.is_empty() {
        // Pods go through their grace period on their nodes; look again soon.
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let mut released = (*namespace).clone();
    if let Some(spec) = released.spec.as_mut() {
        spec.finalizers = Some(
            spec.finalizers
                .take()
                .unwrap_or_default()
                .into_iter()
                .filter(|finalizer| finalizer != FINALIZER)
                .collect(),
        );
    }
    match namespaces
        .replace_subresource("finalize", &name, &PostParams::default(), &released)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_not_found() => {}
        Err(source) => return Err(failed(source)),
    }
    log::info!("namespace {name}: content removed, finalized");
    Ok(Action::await_change())
}

fn holds_finalizer(namespace: &Namespace) -> bool {
    namespace
        .spec
        .as_ref()
        .and_then(|spec| spec.finalizers.as_ref())
        .is_some_and(|finalizers| finalizers.iter().any(|finalizer| finalizer == FINALIZER))
}

/// Every namespaced resource the API serves that can be listed and deleted.
async fn namespaced_resources(
    client: &Client,
) -> Result<Vec<(ApiResource, ApiCapabilities)>, Error> {
    let discovery = Discovery::new(client.clone())
        .run_aggregated()
        .await
        .map_err(Error::Discovery)?;
    Ok(discovery
        .groups()
        .flat_map(|group| group.recommended_resources())
        .filter(|(_, capabilities)| {
            capabilities.scope == Scope::Namespaced
                && capabilities.supports_operation(verbs::LIST)
                && capabilities.supports_operation(verbs::DELETE)
        })
        .collect())
}

/// Upstream's `GroupResource` as the namespace controller prints it: `pods.`, `deployments.apps`.
fn group_resource(resource: &ApiResource) -> String {
    format!("{}.{}", resource.plural, resource.group)
}

/// The conditions upstream's namespace controller keeps on a namespace being deleted, with
/// `lastTransitionTime` kept where a condition's status did not change.
fn deletion_conditions(
    namespace: &Namespace,
    remaining: &[String],
    finalizers: &std::collections::BTreeMap<String, usize>,
) -> Vec<NamespaceCondition> {
    let content_remains = !remaining.is_empty();
    let finalizers_remain = !finalizers.is_empty();
    let finalizer_list: Vec<String> = finalizers
        .iter()
        .map(|(finalizer, count)| format!("{finalizer} in {count} resource instances"))
        .collect();
    let wanted = [
        (
            "NamespaceDeletionDiscoveryFailure",
            false,
            "ResourcesDiscovered",
            "All resources successfully discovered".to_owned(),
        ),
        (
            "NamespaceDeletionGroupVersionParsingFailure",
            false,
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed".to_owned(),
        ),
        (
            "NamespaceDeletionContentFailure",
            false,
            "ContentDeleted",
            "All content successfully deleted, may be waiting on finalization".to_owned(),
        ),
        if content_remains {
            (
                "NamespaceContentRemaining",
                true,
                "SomeResourcesRemain",
                format!("Some resources are remaining: {}", remaining.join(", ")),
            )
        } else {
            (
                "NamespaceContentRemaining",
                false,
                "ContentRemoved",
                "All content successfully removed".to_owned(),
            )
        },
        if finalizers_remain {
            (
                "NamespaceFinalizersRemaining",
                true,
                "SomeFinalizersRemain",
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    finalizer_list.join(", ")
                ),
            )
        } else {
            (
                "NamespaceFinalizersRemaining",
                false,
                "ContentHasNoFinalizers",
                "All content-preserving finalizers finished".to_owned(),
            )
        },
    ];
    let existing = namespace
        .status
        .as_ref()
        .and_then(|status| status.conditions.as_deref())
        .unwrap_or_default();
    let now = Time(jiff::Timestamp::now());
    wanted
        .into_iter()
        .map(|(type_, status, reason, message)| {
            let status = if status { "True" } else { "False" }.to_owned();
            let since = existing
                .iter()
                .find(|condition| condition.type_ == type_ && condition.status == status)
                .and_then(|condition| condition.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            NamespaceCondition {
                type_: type_.to_owned(),
                status,
                reason: Some(reason.to_owned()),
                message: Some(message),
                last_transition_time: Some(since),
            }
        })
        .collect()
}
