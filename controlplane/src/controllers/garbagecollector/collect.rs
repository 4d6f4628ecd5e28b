//! The workers (upstream's `attemptToDeleteItem` and `attemptToOrphanWorker`): every decision
//! to delete rests on live GETs of the object and its owners (uid compared), never on the
//! graph alone, which may lag behind the API.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Client;
use kube::api::{
    Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::core::PartialObjectMeta;
use serde_json::json;
use tokio::sync::mpsc::UnboundedSender;

use super::graph::{Change, FOREGROUND, Graph, Identity, Node, ORPHAN, Uid};
use super::queue::WorkQueue;
use super::resources::{Resources, ResourcesError};

/// Why an item could not be processed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(transparent)]
    Resources(#[from] ResourcesError),
    #[error("{verb} {object} failed")]
    Api {
        verb: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
}

/// What to do with an item after processing it.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Look again after a backoff (an owner that exists but is not observed yet).
    Retry,
}

/// What the workers share.
pub(crate) struct Collector {
    pub client: Client,
    pub graph: Arc<Mutex<Graph>>,
    pub resources: Arc<Resources>,
    pub changes: UnboundedSender<Change>,
    /// The attempt-to-delete queue.
    pub queue: Arc<WorkQueue>,
    /// Owners found absent by a live GET (upstream's `absentOwnerCache`), by uid.
    absent: Mutex<HashSet<Uid>>,
}

/// How many absent owners are remembered before the cache starts over.
const ABSENT_CACHE: usize = 10_000;

enum Reference {
    Solid,
    Dangling,
    WaitingForDependents,
}

impl Collector {
    /// Workers over `graph`, sending what they learn to `changes`.
    pub fn new(
        client: Client,
        graph: Arc<Mutex<Graph>>,
        resources: Arc<Resources>,
        changes: UnboundedSender<Change>,
        queue: Arc<WorkQueue>,
    ) -> Self {
        Self {
            client,
            graph,
            resources,
            changes,
            queue,
            absent: Mutex::new(HashSet::new()),
        }
    }

    fn node(&self, uid: &str) -> Option<Node> {
        self.graph().node(uid).cloned()
    }

    fn graph(&self) -> std::sync::MutexGuard<'_, Graph> {
        self.graph
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn api(&self, identity: &Identity) -> Result<(Api<DynamicObject>, bool), CollectError> {
        let (resource, namespaced) = self
            .resources
            .resolve(&identity.api_version, &identity.kind)
            .await?;
        let api = match (&identity.namespace, namespaced) {
            (Some(namespace), true) => {
                Api::namespaced_with(self.client.clone(), namespace, &resource)
            }
            _ => Api::all_with(self.client.clone(), &resource),
        };
        Ok((api, namespaced))
    }

    /// The object as the API has it now, if it is the one with this uid.
    async fn live(
        &self,
        identity: &Identity,
    ) -> Result<Option<PartialObjectMeta<DynamicObject>>, CollectError> {
        let (api, _) = self.api(identity).await?;
        match api.get_metadata_opt(&identity.name).await {
            Ok(Some(object)) if object.metadata.uid.as_deref() == Some(identity.uid.as_str()) => {
                Ok(Some(object))
            }
            Ok(_) => Ok(None),
            Err(source) => Err(api_error("get", identity, source)),
        }
    }

    /// Upstream's `attemptToDeleteItem`.
    pub async fn attempt_to_delete(&self, uid: &str) -> Result<Outcome, CollectError> {
        let Some(node) = self.node(uid) else {
            return Ok(Outcome::Done);
        };
        // Being deleted is a one-way trip: its dependents are handled when it is gone.
        if node.being_deleted && !node.deleting_dependents {
            return Ok(Outcome::Done);
        }
        let Some(latest) = self.live(&node.identity).await? else {
            // Gone (or replaced by a namesake): the graph learns it, dependents follow.
            let _ = self.changes.send(Change::Absent(node.identity.clone()));
            return Ok(Outcome::Done);
        };
        // The live object decides, the graph may lag: deleting its dependents first, or
        // already on its way out.
        if latest.metadata.deletion_timestamp.is_some() {
            let foreground = latest
                .metadata
                .finalizers
                .iter()
                .flatten()
                .any(|held| held == FOREGROUND);
            if foreground {
                self.delete_dependents_first(&node, &latest).await?;
            }
            return Ok(Outcome::Done);
        }
        let references = latest.metadata.owner_references.clone().unwrap_or_default();
        if references.is_empty() {
            return Ok(self.unless_unobserved(uid));
        }
        let mut solid = Vec::new();
        let mut dangling = Vec::new();
        let mut waiting = Vec::new();
        for reference in references {
            match self.classify(&reference, &node.identity).await? {
                Reference::Solid => solid.push(reference),
                Reference::Dangling => dangling.push(reference),
                Reference::WaitingForDependents => waiting.push(reference),
            }
        }
        if !solid.is_empty() {
            if dangling.is_empty() && waiting.is_empty() {
                return Ok(self.unless_unobserved(uid));
            }
            // Keep the object; drop the references to owners that are gone or waiting for
            // their dependents to go (they would wait for this one forever).
            let gone: Vec<&str> = dangling
                .iter()
                .chain(&waiting)
                .map(|owner| owner.uid.as_str())
                .collect();
            self.patch_owner_references(
                &node.identity,
                &latest,
                |owner| !gone.contains(&owner.uid.as_str()),
                |owner| owner,
            )
            .await?;
            return Ok(Outcome::Done);
        }
        let has_dependents = !self.graph().dependents(uid).is_empty();
        let policy = if !waiting.is_empty() && has_dependents {
            // An owner waits for this one, which has dependents itself: if one of those is
            // also deleting its dependents, stop blocking (upstream's cycle breaking).
            let cycle = self
                .graph()
                .dependents(uid)
                .iter()
                .any(|dependent| dependent.deleting_dependents);
            if cycle {
                self.patch_owner_references(
                    &node.identity,
                    &latest,
                    |_| true,
                    |mut owner| {
                        owner.block_owner_deletion = Some(false);
                        owner
                    },
                )
                .await?;
            }
            PropagationPolicy::Foreground
        } else {
            let finalizers = latest.metadata.finalizers.clone().unwrap_or_default();
            if finalizers.iter().any(|held| held == ORPHAN) {
                PropagationPolicy::Orphan
            } else if finalizers.iter().any(|held| held == FOREGROUND) {
                PropagationPolicy::Foreground
            } else {
                PropagationPolicy::Background
            }
        };
        self.delete(&node.identity, &latest, policy).await?;
        Ok(Outcome::Done)
    }

    /// A virtual node that exists is looked at again until a monitor observes it.
    fn unless_unobserved(&self, uid: &str) -> Outcome {
        match self.node(uid) {
            Some(node) if !node.observed => Outcome::Retry,
            _ => Outcome::Done,
        }
    }

    /// Upstream's `processDeletingDependentsItem`.
    async fn delete_dependents_first(
        &self,
        node: &Node,
        latest: &PartialObjectMeta<DynamicObject>,
    ) -> Result<(), CollectError> {
        let blocking = self.graph().blocking_dependents(&node.identity.uid);
        if blocking.is_empty() {
            return self
                .remove_finalizer(&node.identity, latest, FOREGROUND)
                .await;
        }
        for dependent in blocking {
            if !dependent.deleting_dependents {
                self.queue.add(dependent.identity.uid);
            }
        }
        Ok(())
    }

    async fn classify(
        &self,
        reference: &OwnerReference,
        dependent: &Identity,
    ) -> Result<Reference, CollectError> {
        if self.is_absent(&reference.uid) {
            return Ok(Reference::Dangling);
        }
        let owner = Identity {
            api_version: reference.api_version.clone(),
            kind: reference.kind.clone(),
            namespace: dependent.namespace.clone(),
            name: reference.name.clone(),
            uid: reference.uid.clone(),
        };
        let (_, namespaced) = self.api(&owner).await?;
        if namespaced && dependent.namespace.is_none() {
            // A cluster-scoped object cannot be owned by a namespaced one: never collected.
            log::warn!("garbage collector: {dependent} names a namespaced owner {owner}");
            return Ok(Reference::Solid);
        }
        let Some(live) = self.live(&owner).await? else {
            self.remember_absent(&reference.uid);
            return Ok(Reference::Dangling);
        };
        let waiting = live.metadata.deletion_timestamp.is_some()
            && live
                .metadata
                .finalizers
                .iter()
                .flatten()
                .any(|held| held == FOREGROUND);
        Ok(if waiting {
            Reference::WaitingForDependents
        } else {
            Reference::Solid
        })
    }

    fn is_absent(&self, uid: &str) -> bool {
        self.absent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(uid)
    }

    fn remember_absent(&self, uid: &str) {
        let mut absent = self
            .absent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if absent.len() >= ABSENT_CACHE {
            absent.clear();
        }
        absent.insert(uid.to_owned());
    }

    /// Upstream's `attemptToOrphanWorker`: removes the owner's references from its dependents,
    /// then the `orphan` finalizer.
    pub async fn attempt_to_orphan(&self, uid: &str) -> Result<Outcome, CollectError> {
        let Some(node) = self.node(uid) else {
            return Ok(Outcome::Done);
        };
        let dependents = self.graph().dependents(uid);
        for dependent in dependents {
            let Some(latest) = self.live(&dependent.identity).await? else {
                continue;
            };
            self.patch_owner_references(
                &dependent.identity,
                &latest,
                |owner| owner.uid != uid,
                |owner| owner,
            )
            .await?;
        }
        let Some(latest) = self.live(&node.identity).await? else {
            return Ok(Outcome::Done);
        };
        self.remove_finalizer(&node.identity, &latest, ORPHAN)
            .await?;
        Ok(Outcome::Done)
    }

    /// Rewrites the object's owner references (a merge patch pinned to the resourceVersion
    /// it was read at, so a concurrent change makes it fail and retry).
    async fn patch_owner_references(
        &self,
        identity: &Identity,
        latest: &PartialObjectMeta<DynamicObject>,
        keep: impl Fn(&OwnerReference) -> bool,
        change: impl Fn(OwnerReference) -> OwnerReference,
    ) -> Result<(), CollectError> {
        let current = latest.metadata.owner_references.clone().unwrap_or_default();
        let wanted: Vec<OwnerReference> = current
            .iter()
            .filter(|owner| keep(owner))
            .cloned()
            .map(change)
            .collect();
        if wanted == current {
            return Ok(());
        }
        let references = if wanted.is_empty() {
            serde_json::Value::Null
        } else {
            json!(wanted)
        };
        let patch = json!({"metadata": {
            "ownerReferences": references,
            "resourceVersion": latest.metadata.resource_version,
        }});
        self.patch(identity, patch, "patch ownerReferences of")
            .await
    }

    async fn remove_finalizer(
        &self,
        identity: &Identity,
        latest: &PartialObjectMeta<DynamicObject>,
        finalizer: &str,
    ) -> Result<(), CollectError> {
        let current = latest.metadata.finalizers.clone().unwrap_or_default();
        if !current.iter().any(|held| held == finalizer) {
            return Ok(());
        }
        let remaining: Vec<&String> = current.iter().filter(|held| *held != finalizer).collect();
        let patch = json!({"metadata": {
            "finalizers": if remaining.is_empty() { serde_json::Value::Null } else { json!(remaining) },
            "resourceVersion": latest.metadata.resource_version,
        }});
        self.patch(identity, patch, "remove a finalizer of").await?;
        log::info!("garbage collector: removed finalizer {finalizer} of {identity}");
        Ok(())
    }

    async fn patch(
        &self,
        identity: &Identity,
        patch: serde_json::Value,
        verb: &'static str,
    ) -> Result<(), CollectError> {
        let (api, _) = self.api(identity).await?;
        match api
            .patch_metadata(
                &identity.name,
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(source) => Err(api_error(verb, identity, source)),
        }
    }

    async fn delete(
        &self,
        identity: &Identity,
        latest: &PartialObjectMeta<DynamicObject>,
        policy: PropagationPolicy,
    ) -> Result<(), CollectError> {
        let (api, _) = self.api(identity).await?;
        let params = DeleteParams {
            propagation_policy: Some(policy.clone()),
            preconditions: Some(Preconditions {
                uid: Some(identity.uid.clone()),
                resource_version: latest.metadata.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        match api.delete(&identity.name, &params).await {
            Ok(_) => {
                log::info!("garbage collector: deleted {identity} (propagation {policy:?})");
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(source) => Err(api_error("delete", identity, source)),
        }
    }
}

fn api_error(verb: &'static str, identity: &Identity, source: kube::Error) -> CollectError {
    CollectError::Api {
        verb,
        object: identity.to_string(),
        source,
    }
}
