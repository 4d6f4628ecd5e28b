//! What the workload controllers (DaemonSet, StatefulSet, Job, CronJob) share, as upstream's
//! `pkg/controller` helpers: owner references, pods from templates, pod readiness and
//! availability, label selectors as query strings, ControllerRevision hashes and history, the
//! error policy, and core/v1 Events as upstream's event recorder writes them.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Client, Resource, ResourceExt as _};
use serde_json::Value;

/// The label DaemonSet and StatefulSet pods and ControllerRevisions carry with their
/// template's hash.
pub const CONTROLLER_REVISION_HASH: &str = "controller-revision-hash";

/// Why one reconcile of a workload could not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} failed")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("{object} is invalid: {reason}")]
    Invalid { object: String, reason: String },
}

impl Error {
    /// An error of the API call described by `action`.
    pub fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let action = action.into();
        move |source| Self::Api { action, source }
    }
}

/// Requeues a failed reconcile after a pause (the workqueue's rate limiting, simplified).
pub fn error_policy<K>(_: Arc<K>, error: &Error, _: Arc<impl Send + Sync>) -> Action {
    log::warn!("{}", super::chain(error));
    Action::requeue(Duration::from_secs(5))
}

/// Drains a controller's result stream, logging failures, until it ends.
pub async fn drain<T, E: std::error::Error>(
    controller: &'static str,
    results: impl Stream<Item = Result<T, E>>,
) {
    results
        .for_each(|result| async move {
            if let Err(error) = result {
                log::debug!("{controller}: {}", super::chain(&error));
            }
        })
        .await;
}

/// Merge-patches `object`'s status with `status` unless that changes nothing (a write that
/// changes nothing would still wake every watcher, this controller included).
pub async fn patch_status<K>(api: &Api<K>, object: &K, status: Value) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    let current = serde_json::to_value(object)
        .ok()
        .and_then(|value| value.get("status").cloned())
        .unwrap_or_else(|| Value::Object(serde_json::Map::new()));
    let mut merged = current.clone();
    json_patch::merge(&mut merged, &status);
    if merged == current {
        return Ok(());
    }
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": status})),
    )
    .await
    .map_err(Error::api(format!(
        "updating the status of {} {name}",
        K::kind(&()).to_ascii_lowercase()
    )))?;
    Ok(())
}

/// The controller owner reference pointing at `owner`.
pub fn controller_reference<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether `object`'s controller owner reference names the object with `uid`.
pub fn controlled_by(object: &impl Resource, uid: &str) -> bool {
    object
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|reference| reference.controller == Some(true) && reference.uid == uid)
}

/// A label selector as the `labelSelector` query parameter spells it.
pub fn selector_query(selector: &LabelSelector) -> String {
    let mut terms: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    for expression in selector.match_expressions.iter().flatten() {
        let values = expression.values.clone().unwrap_or_default().join(",");
        let key = &expression.key;
        terms.push(match expression.operator.as_str() {
            "In" => format!("{key} in ({values})"),
            "NotIn" => format!("{key} notin ({values})"),
            "DoesNotExist" => format!("!{key}"),
            _ => key.clone(),
        });
    }
    terms.join(",")
}

/// The pods in `namespace` matching `selector` whose controller is the owner with `uid`
/// (a fresh list from the API server, never a cache).
pub async fn owned_pods(
    client: &Client,
    namespace: &str,
    selector: &str,
    uid: &str,
) -> Result<Vec<Pod>, Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(Error::api(format!("listing pods in {namespace}")))?;
    Ok(list
        .items
        .into_iter()
        .filter(|pod| controlled_by(pod, uid))
        .collect())
}

/// A pod made from `template` as upstream's `GetPodFromTemplate`: the template's labels,
/// annotations, finalizers and spec, controlled by `owner`.
pub fn pod_from_template<K: Resource<DynamicType = ()>>(
    template: &PodTemplateSpec,
    owner: &K,
) -> Pod {
    let metadata = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            namespace: owner.meta().namespace.clone(),
            labels: metadata.labels,
            annotations: metadata.annotations,
            finalizers: metadata.finalizers,
            owner_references: Some(vec![controller_reference(owner)]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Sets one label on `pod`.
pub fn set_label(metadata: &mut ObjectMeta, key: &str, value: impl Into<String>) {
    metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(key.into(), value.into());
}

/// Creates and deletes an owner's pods and records both as events, as upstream's
/// `RealPodControl` (`SuccessfulCreate` / `SuccessfulDelete`).
#[derive(Clone)]
pub struct PodControl {
    pub client: Client,
    pub recorder: Recorder,
}

impl Debug for PodControl {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.recorder.fmt(formatter)
    }
}

impl PodControl {
    /// A pod control whose events come from `component` (such as `job-controller`).
    pub fn new(client: Client, component: &'static str) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), component),
            client,
        }
    }

    /// Creates `pod` for `owner` and returns it as the API server stored it.
    pub async fn create<K: Resource<DynamicType = ()>>(
        &self,
        owner: &K,
        pod: &Pod,
    ) -> Result<Pod, Error> {
        self.create_as(owner, pod, |name| format!("Created pod: {name}"))
            .await
    }

    /// Creates `pod`; the `SuccessfulCreate` event's message is `message(pod name)`.
    pub async fn create_as<K: Resource<DynamicType = ()>>(
        &self,
        owner: &K,
        pod: &Pod,
        message: impl FnOnce(&str) -> String,
    ) -> Result<Pod, Error> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let created = pods
            .create(&PostParams::default(), pod)
            .await
            .map_err(Error::api(format!("creating a pod in {namespace}")))?;
        let message = message(&created.name_any());
        self.recorder
            .normal(owner, "SuccessfulCreate", message)
            .await;
        Ok(created)
    }

    /// Deletes one of `owner`'s pods; one that is already gone is not an error.
    pub async fn delete<K: Resource<DynamicType = ()>>(
        &self,
        owner: &K,
        pod: &Pod,
    ) -> Result<(), Error> {
        self.delete_as(owner, pod, |name| format!("Deleted pod: {name}"))
            .await
    }

    /// Deletes a pod; the `SuccessfulDelete` event's message is `message(pod name)`.
    pub async fn delete_as<K: Resource<DynamicType = ()>>(
        &self,
        owner: &K,
        pod: &Pod,
        message: impl FnOnce(&str) -> String,
    ) -> Result<(), Error> {
        let namespace = pod.namespace().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        match pods.delete(&pod.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => return Ok(()),
            Err(source) => {
                return Err(Error::Api {
                    action: format!("deleting pod {namespace}/{}", pod.name_any()),
                    source,
                });
            }
        }
        let message = message(&pod.name_any());
        self.recorder
            .normal(owner, "SuccessfulDelete", message)
            .await;
        Ok(())
    }
}

/// The object as stored now (the cached copy may predate this controller's own last write),
/// and its API; `None` once it is gone.
pub async fn fresh<K>(client: &Client, cached: &K) -> Result<Option<(Api<K>, K)>, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Debug
        + serde::de::DeserializeOwned,
{
    let namespace = cached.meta().namespace.clone().unwrap_or_default();
    let name = cached.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    let object = api.get_opt(&name).await.map_err(Error::api(format!(
        "reading {} {namespace}/{name}",
        K::kind(&()).to_ascii_lowercase()
    )))?;
    Ok(object.map(|object| (api, object)))
}

/// The pod's phase, `Pending` when it has none yet.
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|status| status.phase.as_deref())
        .unwrap_or("Pending")
}

/// Whether the pod is being deleted.
pub fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Whether the pod's phase is Succeeded or Failed.
pub fn finished(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

/// When the pod's `Ready` condition last became true, if it is true.
pub fn ready_since(pod: &Pod) -> Option<Timestamp> {
    pod.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|condition| condition.type_ == "Ready" && condition.status == "True")
        .map(|condition| {
            condition
                .last_transition_time
                .as_ref()
                .map_or(Timestamp::UNIX_EPOCH, |time| time.0)
        })
}

/// Whether the pod's `Ready` condition is true.
pub fn ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Whether the pod is running and ready (upstream's `isRunningAndReady`).
pub fn running_and_ready(pod: &Pod) -> bool {
    phase(pod) == "Running" && ready(pod)
}

/// Whether the pod has been ready for `min_ready_seconds` at `now` (upstream's
/// `IsPodAvailable`).
pub fn available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(since) => since.as_second() + i64::from(min_ready_seconds) <= now.as_second(),
    }
}

/// The hash of a template as upstream's `ComputeHash` spells it: FNV-1a (32 bit) of the
/// object, its decimal digits mapped through `rand.SafeEncodeString`'s alphabet.
pub fn template_hash(template: &Value, collision_count: Option<i32>) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u32::from(*byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    feed(template.to_string().as_bytes());
    // A zero count hashes as none: status writes `collisionCount: 0` after the first pass.
    if let Some(count) = collision_count.filter(|count| *count != 0) {
        feed(&count.to_le_bytes());
    }
    hash.to_string()
        .bytes()
        .map(|digit| char::from(ALPHANUMS[usize::from(digit) % ALPHANUMS.len()]))
        .collect()
}

/// The label a StatefulSet's ControllerRevisions carry with their hash (upstream's
/// `history.ControllerRevisionHashLabel`); DaemonSets use [`CONTROLLER_REVISION_HASH`].
pub const REVISION_HASH_LABEL: &str = "controller.kubernetes.io/hash";

/// The revision history of an owner: its ControllerRevisions, oldest first, and the one
/// matching the current template (created, or renumbered to be the newest, as needed).
#[derive(Debug)]
pub struct History {
    pub revisions: Vec<ControllerRevision>,
    pub current: ControllerRevision,
    /// The hash of `current`.
    pub hash: String,
}

impl History {
    /// The revision named `name`.
    pub fn named(&self, name: &str) -> Option<&ControllerRevision> {
        self.revisions
            .iter()
            .find(|revision| revision.metadata.name.as_deref() == Some(name))
    }
}

/// What a revision stores: `{"spec": {"template": <template>, "$patch": "replace"}}` (the
/// patch upstream's `getPatch` keeps).
pub fn revision_data(template: &PodTemplateSpec) -> Value {
    let mut template = serde_json::to_value(template).unwrap_or_default();
    template["$patch"] = Value::from("replace");
    serde_json::json!({"spec": {"template": template}})
}

/// The pod template a revision stores.
pub fn revision_template(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut template = revision.data.as_ref()?.0.pointer("/spec/template")?.clone();
    if let Some(object) = template.as_object_mut() {
        object.remove("$patch");
    }
    serde_json::from_value(template).ok()
}

/// Brings `owner`'s ControllerRevisions up to date with `template` (stored as
/// [`revision_data`]), labelled with the template's labels and the hash under `hash_label`.
pub async fn sync_history<K: Resource<DynamicType = ()>>(
    client: &Client,
    owner: &K,
    selector: &str,
    template: &PodTemplateSpec,
    hash_label: &str,
    collision_count: Option<i32>,
) -> Result<History, Error> {
    let data = revision_data(template);
    let labels = template
        .metadata
        .as_ref()
        .and_then(|metadata| metadata.labels.clone())
        .unwrap_or_default();
    let namespace = owner.meta().namespace.clone().unwrap_or_default();
    let uid = owner.meta().uid.clone().unwrap_or_default();
    let owner_name = owner.meta().name.clone().unwrap_or_default();
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &namespace);
    let mut revisions: Vec<ControllerRevision> = api
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(Error::api(format!(
            "listing controllerrevisions in {namespace}"
        )))?
        .items
        .into_iter()
        .filter(|revision| controlled_by(revision, &uid))
        .collect();
    revisions.sort_by_key(|revision| revision.revision);
    let hash = template_hash(&data, collision_count);
    let name = format!("{owner_name}-{hash}");
    let next = revisions.last().map_or(1, |last| last.revision + 1);
    let existing = revisions
        .iter()
        .position(|revision| revision.metadata.name.as_deref() == Some(name.as_str()));
    let current = match existing {
        Some(position) if position + 1 == revisions.len() => revisions[position].clone(),
        Some(position) => {
            // A rollback to an older template: the revision becomes the newest again.
            let mut revision = revisions.remove(position);
            revision.revision = next;
            let updated = api
                .replace(&name, &PostParams::default(), &revision)
                .await
                .map_err(Error::api(format!(
                    "renumbering controllerrevision {namespace}/{name}"
                )))?;
            revisions.push(updated.clone());
            updated
        }
        None => {
            let mut revision_labels = labels;
            revision_labels.insert(hash_label.into(), hash.clone());
            let revision = ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(namespace.clone()),
                    labels: Some(revision_labels),
                    owner_references: Some(vec![controller_reference(owner)]),
                    ..ObjectMeta::default()
                },
                data: Some(k8s_openapi::apimachinery::pkg::runtime::RawExtension(data)),
                revision: next,
            };
            let created = api
                .create(&PostParams::default(), &revision)
                .await
                .map_err(Error::api(format!(
                    "creating controllerrevision {namespace}/{name}"
                )))?;
            revisions.push(created.clone());
            created
        }
    };
    Ok(History {
        revisions,
        current,
        hash,
    })
}

/// Deletes the oldest revisions beyond `limit`, except the current one and those named in
/// `in_use` (revisions live pods still run).
pub async fn prune_history(
    client: &Client,
    history: &History,
    in_use: &[String],
    limit: i32,
) -> Result<(), Error> {
    let removable: Vec<&ControllerRevision> = history
        .revisions
        .iter()
        .filter(|revision| {
            let name = revision.metadata.name.clone().unwrap_or_default();
            revision.metadata.uid != history.current.metadata.uid && !in_use.contains(&name)
        })
        .collect();
    let excess = removable
        .len()
        .saturating_sub(usize::try_from(limit).unwrap_or(0));
    for revision in removable.into_iter().take(excess) {
        let namespace = revision.namespace().unwrap_or_default();
        let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &namespace);
        match api
            .delete(&revision.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(source) => {
                return Err(Error::Api {
                    action: format!("deleting controllerrevision {}", revision.name_any()),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Records core/v1 Events for one controller, as upstream's `record.EventRecorder` does
/// (`source.component` is the controller's name, such as `job-controller`).
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    component: &'static str,
}

impl Debug for Recorder {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Recorder")
            .field("component", &self.component)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    pub fn new(client: Client, component: &'static str) -> Self {
        Self { client, component }
    }

    /// Records a `Normal` event about `object`.
    pub async fn normal<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        reason: &str,
        message: String,
    ) {
        self.record(object, "Normal", reason, message).await;
    }

    /// Records a `Warning` event about `object`.
    pub async fn warning<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        reason: &str,
        message: String,
    ) {
        self.record(object, "Warning", reason, message).await;
    }

    async fn record<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        type_: &str,
        reason: &str,
        message: String,
    ) {
        let now = Timestamp::now();
        let involved = object_reference(object);
        let namespace = involved
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = involved.name.clone().unwrap_or_default();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: involved,
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some(type_.into()),
            source: Some(EventSource {
                component: Some(self.component.into()),
                host: None,
            }),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            reporting_component: Some(self.component.into()),
            reporting_instance: Some(self.component.into()),
            ..Event::default()
        };
        let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        if let Err(error) = events.create(&PostParams::default(), &event).await {
            log::warn!(
                "{}: recording event {reason} for {name} failed: {}",
                self.component,
                super::chain(&error)
            );
        }
    }
}

/// An object reference to `object` for events and `status.active`.
pub fn object_reference<K: Resource<DynamicType = ()>>(object: &K) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: object.meta().name.clone(),
        namespace: object.meta().namespace.clone(),
        uid: object.meta().uid.clone(),
        resource_version: object.meta().resource_version.clone(),
        field_path: None,
    }
}

/// The object named in an error for an invalid spec.
pub fn describe<K: Resource<DynamicType = ()> + Debug>(object: &K) -> String {
    format!(
        "{} {}/{}",
        K::kind(&()),
        object.meta().namespace.clone().unwrap_or_default(),
        object.meta().name.clone().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn selector_query_spells_labels_and_expressions() {
        let selector = LabelSelector {
            match_labels: Some(BTreeMap::from([("app".into(), "web".into())])),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: Some(vec!["a".into(), "b".into()]),
                },
                LabelSelectorRequirement {
                    key: "canary".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        };
        assert_eq!(selector_query(&selector), "app=web,tier in (a,b),!canary");
    }

    #[test]
    fn template_hash_is_stable_and_safe_encoded() {
        let one = template_hash(&serde_json::json!({"a": 1}), None);
        assert_eq!(one, template_hash(&serde_json::json!({"a": 1}), None));
        assert_ne!(one, template_hash(&serde_json::json!({"a": 2}), None));
        assert_ne!(one, template_hash(&serde_json::json!({"a": 1}), Some(1)));
        assert_eq!(one, template_hash(&serde_json::json!({"a": 1}), Some(0)));
        assert!(
            one.bytes()
                .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
        );
    }
}
