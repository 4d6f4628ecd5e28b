//! One pass over a Deployment, step for step as upstream's `sync.go`, `rolling.go` and
//! `recreate.go`: find or create the new ReplicaSet (revision annotations, collision count),
//! scale new up and old down within maxSurge / maxUnavailable, or old to 0 before new
//! (Recreate), scale proportionally on a scaling event, clean up past
//! `revisionHistoryLimit`, and write the status.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::ResourceExt as _;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

use super::{Context, Error, annotations, hash, replicas, status};
use crate::controllers::events::EventType;
use crate::controllers::ownership;

/// Oldest first, then by name (upstream's `ReplicaSetsByCreationTimestamp`).
pub(super) fn by_creation(list: &mut [ReplicaSet]) {
    list.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .cmp(&b.metadata.creation_timestamp)
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
}

/// Whether two templates are the same but for the `pod-template-hash` label.
pub fn equal_ignore_hash(a: Option<&PodTemplateSpec>, b: Option<&PodTemplateSpec>) -> bool {
    let strip = |template: Option<&PodTemplateSpec>| {
        let mut value = serde_json::to_value(template).unwrap_or_default();
        if let Some(labels) = value
            .pointer_mut("/metadata/labels")
            .and_then(serde_json::Value::as_object_mut)
        {
            labels.remove(hash::POD_TEMPLATE_HASH);
        }
        value
    };
    strip(a) == strip(b)
}

pub(super) fn is_active(replicaset: &ReplicaSet) -> bool {
    replicas::spec_replicas(replicaset) > 0
}

/// The state of one pass: the Deployment as last written and its ReplicaSets.
pub struct Sync<'a> {
    pub(super) context: &'a Context,
    pub deployment: Deployment,
    pub(super) replicasets: Vec<ReplicaSet>,
    pub(super) replicaset_api: Api<ReplicaSet>,
    deployment_api: Api<Deployment>,
    pub(super) key: String,
}

impl<'a> Sync<'a> {
    pub fn new(context: &'a Context, deployment: Deployment, replicasets: Vec<ReplicaSet>) -> Self {
        let namespace = deployment.namespace().unwrap_or_default();
        let key = format!("{namespace}/{}", deployment.name_any());
        Self {
            replicaset_api: Api::namespaced(context.client.clone(), &namespace),
            deployment_api: Api::namespaced(context.client.clone(), &namespace),
            context,
            deployment,
            replicasets,
            key,
        }
    }

    pub(super) fn api_error(
        &self,
        verb: &'static str,
    ) -> impl FnOnce(kube::Error) -> Error + use<> {
        let deployment = self.key.clone();
        move |source| Error::Api {
            verb,
            deployment,
            source,
        }
    }

    pub(super) fn paused(&self) -> bool {
        self.deployment
            .spec
            .as_ref()
            .and_then(|spec| spec.paused)
            .unwrap_or(false)
    }

    pub(super) fn template(&self) -> Option<&PodTemplateSpec> {
        self.deployment.spec.as_ref().map(|spec| &spec.template)
    }

    /// The new ReplicaSet (the oldest whose template is the deployment's) and the others.
    pub(super) fn split(&self) -> (Option<ReplicaSet>, Vec<ReplicaSet>) {
        let mut all = self.replicasets.clone();
        by_creation(&mut all);
        let new = all
            .iter()
            .position(|rs| {
                equal_ignore_hash(
                    rs.spec.as_ref().and_then(|s| s.template.as_ref()),
                    self.template(),
                )
            })
            .map(|index| all.remove(index));
        (new, all)
    }

    pub(super) fn store(&mut self, updated: ReplicaSet) -> ReplicaSet {
        match self
            .replicasets
            .iter_mut()
            .find(|rs| rs.metadata.uid == updated.metadata.uid)
        {
            Some(slot) => *slot = updated.clone(),
            None => self.replicasets.push(updated.clone()),
        }
        updated
    }

    pub(super) async fn record(&self, reason: &str, message: String) {
        self.context
            .events
            .record(&self.deployment, EventType::Normal, reason, message)
            .await;
    }

    /// Writes `status` if it differs from the deployment's.
    pub(super) async fn write_status(&mut self, status: DeploymentStatus) -> Result<(), Error> {
        if self.deployment.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let mut updated = self.deployment.clone();
        updated.status = Some(status);
        self.deployment = self
            .deployment_api
            .replace_status(&updated.name_any(), &PostParams::default(), &updated)
            .await
            .map_err(self.api_error("updating status"))?;
        Ok(())
    }

    /// Sets the deployment's revision annotation (upstream's `SetDeploymentRevision`).
    pub(super) async fn set_revision(&mut self, revision: String) -> Result<(), Error> {
        let current = self
            .deployment
            .annotations()
            .get(annotations::REVISION)
            .cloned();
        if current.as_deref() == Some(revision.as_str()) {
            return Ok(());
        }
        let patch = json!({"metadata": {
            "annotations": {annotations::REVISION: revision},
            "resourceVersion": self.deployment.resource_version(),
        }});
        self.deployment = self
            .deployment_api
            .patch(
                &self.deployment.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(self.api_error("setting the revision"))?;
        Ok(())
    }

    /// Upstream's `getAllReplicaSetsAndSyncRevision`: the new ReplicaSet (created when
    /// `create` and missing) with its revision synced, and all old ones.
    pub async fn new_and_old(
        &mut self,
        create: bool,
    ) -> Result<(Option<ReplicaSet>, Vec<ReplicaSet>), Error> {
        let (existing, old) = self.split();
        let new_revision = annotations::max_revision(&old) + 1;
        let surge = replicas::max_surge(&self.deployment)?;
        let max = replicas::desired(&self.deployment) + surge;
        if let Some(existing) = existing {
            let mut copy = existing.clone();
            let mut changed = annotations::set_new_replicaset(
                &self.deployment,
                &mut copy,
                new_revision,
                true,
                max,
            );
            let min_ready = self
                .deployment
                .spec
                .as_ref()
                .and_then(|s| s.min_ready_seconds);
            let spec = copy.spec.get_or_insert_default();
            if spec.min_ready_seconds.unwrap_or(0) != min_ready.unwrap_or(0) {
                spec.min_ready_seconds = min_ready;
                changed = true;
            }
            let new = if changed {
                self.update_replicaset(copy).await?
            } else {
                existing
            };
            let revision = new.annotations().get(annotations::REVISION).cloned();
            if let Some(revision) = revision {
                self.set_revision(revision).await?;
            }
            let mut current = self.deployment.status.clone().unwrap_or_default();
            if status::has_progress_deadline(&self.deployment)
                && status::get(&current, status::PROGRESSING).is_none()
            {
                status::set(
                    &mut current,
                    status::condition(
                        status::PROGRESSING,
                        "True",
                        status::FOUND_NEW_RS,
                        format!("Found new replica set {:?}", new.name_any()),
                    ),
                );
                self.write_status(current).await?;
            }
            return Ok((Some(new), old));
        }
        if !create {
            return Ok((None, old));
        }
        let created = self.create_new(&old, new_revision, max).await?;
        Ok((Some(created), old))
    }

    pub(super) async fn create_new(
        &mut self,
        old: &[ReplicaSet],
        new_revision: i64,
        max: i32,
    ) -> Result<ReplicaSet, Error> {
        let deployment = self.deployment.clone();
        let spec = deployment.spec.clone().unwrap_or_default();
        let collisions = deployment.status.as_ref().and_then(|s| s.collision_count);
        let template_hash = hash::compute(&spec.template, collisions);
        let mut template = spec.template.clone();
        template
            .metadata
            .get_or_insert_default()
            .labels
            .get_or_insert_default()
            .insert(hash::POD_TEMPLATE_HASH.to_owned(), template_hash.clone());
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_default()
            .insert(hash::POD_TEMPLATE_HASH.to_owned(), template_hash.clone());
        let name = format!("{}-{template_hash}", deployment.name_any());
        let mut new = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: deployment.namespace(),
                owner_references: Some(vec![ownership::controller_reference(&deployment)]),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        let all: Vec<&ReplicaSet> = old.iter().chain(std::iter::once(&new)).collect();
        let count = replicas::new_rs_new_replicas(&deployment, &all, &new)?;
        if let Some(spec) = new.spec.as_mut() {
            spec.replicas = Some(count);
        }
        annotations::set_new_replicaset(&deployment, &mut new, new_revision, false, max);
        let (created, already_existed) = match self
            .replicaset_api
            .create(&PostParams::default(), &new)
            .await
        {
            Ok(created) => (created, false),
            Err(kube::Error::Api(status)) if status.reason == "AlreadyExists" => {
                let existing = self
                    .replicaset_api
                    .get(&name)
                    .await
                    .map_err(self.api_error("getting a replicaset"))?;
                let ours = ownership::controller_of(&existing)
                    .is_some_and(|owner| Some(&owner.uid) == deployment.metadata.uid.as_ref());
                let same = equal_ignore_hash(
                    existing.spec.as_ref().and_then(|s| s.template.as_ref()),
                    self.template(),
                );
                if !(ours && same) {
                    // A hash collision: bump the count so the next pass hashes anew.
                    let mut current = deployment.status.clone().unwrap_or_default();
                    current.collision_count = Some(current.collision_count.unwrap_or(0) + 1);
                    self.write_status(current).await?;
                    return Err(Error::Collision(name));
                }
                (existing, true)
            }
            Err(error) => {
                if status::has_progress_deadline(&deployment) {
                    let mut current = deployment.status.clone().unwrap_or_default();
                    status::set(
                        &mut current,
                        status::condition(
                            status::PROGRESSING,
                            "False",
                            status::FAILED_RS_CREATE,
                            format!("Failed to create new replica set {name:?}: {error}"),
                        ),
                    );
                    self.write_status(current).await?;
                }
                return Err(self.api_error("creating a replicaset")(error));
            }
        };
        let created = self.store(created);
        if !already_existed && count > 0 {
            self.record(
                "ScalingReplicaSet",
                format!("Scaled up replica set {name} from 0 to {count}"),
            )
            .await;
        }
        self.set_revision(new_revision.to_string()).await?;
        if !already_existed && status::has_progress_deadline(&self.deployment) {
            let mut current = self.deployment.status.clone().unwrap_or_default();
            status::set(
                &mut current,
                status::condition(
                    status::PROGRESSING,
                    "True",
                    status::NEW_RS_CREATED,
                    format!("Created new replica set {name:?}"),
                ),
            );
            self.write_status(current).await?;
        }
        Ok(created)
    }

    pub(super) async fn update_replicaset(
        &mut self,
        replicaset: ReplicaSet,
    ) -> Result<ReplicaSet, Error> {
        let updated = self
            .replicaset_api
            .replace(&replicaset.name_any(), &PostParams::default(), &replicaset)
            .await
            .map_err(self.api_error("updating a replicaset"))?;
        Ok(self.store(updated))
    }

    /// Upstream's `scaleReplicaSetAndRecordEvent`: whether it scaled.
    pub(super) async fn scale_and_record(
        &mut self,
        replicaset: &ReplicaSet,
        to: i32,
    ) -> Result<bool, Error> {
        let from = replicas::spec_replicas(replicaset);
        if from == to {
            return Ok(false);
        }
        let operation = if from > to { "down" } else { "up" };
        self.scale(replicaset, to, operation).await?;
        Ok(true)
    }

    /// Upstream's `scaleReplicaSet`: the size and the replicas annotations, an event when the
    /// size changed.
    pub(super) async fn scale(
        &mut self,
        replicaset: &ReplicaSet,
        to: i32,
        operation: &str,
    ) -> Result<(), Error> {
        let from = replicas::spec_replicas(replicaset);
        let desired = replicas::desired(&self.deployment);
        let max = desired + replicas::max_surge(&self.deployment)?;
        let mut copy = replicaset.clone();
        let annotations_changed = annotations::set_replicas(&mut copy, desired, max);
        if from == to && !annotations_changed {
            return Ok(());
        }
        copy.spec.get_or_insert_default().replicas = Some(to);
        self.update_replicaset(copy).await?;
        if from != to {
            self.record(
                "ScalingReplicaSet",
                format!(
                    "Scaled {operation} replica set {} from {from} to {to}",
                    replicaset.name_any()
                ),
            )
            .await;
        }
        Ok(())
    }

    pub(super) fn all_refs(&self) -> Vec<&ReplicaSet> {
        self.replicasets.iter().collect()
    }

    /// Upstream's `syncRolloutStatus` with the ReplicaSets as they are now.
    pub(super) async fn rollout_status(&mut self) -> Result<Option<Duration>, Error> {
        let (new, _) = self.split();
        let (status, requeue) = status::rollout(&self.all_refs(), new.as_ref(), &self.deployment)?;
        self.write_status(status).await?;
        Ok(requeue)
    }

    /// Upstream's `syncDeploymentStatus` (no Progressing bookkeeping).
    pub async fn sync_status(&mut self) -> Result<(), Error> {
        let (new, _) = self.split();
        let status = status::calculate(&self.all_refs(), new.as_ref(), &self.deployment)?;
        self.write_status(status).await
    }

    /// Upstream's `checkPausedConditions`.
    pub async fn check_paused_conditions(&mut self) -> Result<(), Error> {
        if !status::has_progress_deadline(&self.deployment) {
            return Ok(());
        }
        let mut current = self.deployment.status.clone().unwrap_or_default();
        let reason = status::get(&current, status::PROGRESSING).and_then(|c| c.reason.clone());
        if reason.as_deref() == Some(status::TIMED_OUT) {
            return Ok(());
        }
        let paused_already = reason.as_deref() == Some(status::PAUSED);
        let paused = self.paused();
        let condition = if paused && !paused_already {
            status::condition(
                status::PROGRESSING,
                "Unknown",
                status::PAUSED,
                "Deployment is paused".into(),
            )
        } else if !paused && paused_already {
            status::condition(
                status::PROGRESSING,
                "Unknown",
                status::RESUMED,
                "Deployment is resumed".into(),
            )
        } else {
            return Ok(());
        };
        status::set(&mut current, condition);
        self.write_status(current).await
    }

    /// The deployment is going away: only its status is kept current.
    pub async fn status_only(&mut self) -> Result<(), Error> {
        self.new_and_old(false).await?;
        self.sync_status().await
    }
}
