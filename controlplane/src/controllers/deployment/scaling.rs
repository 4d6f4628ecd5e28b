//! Scaling events and history (upstream's `sync.go`): a changed replica count is spread over
//! the active ReplicaSets in proportion, and old ReplicaSets past `revisionHistoryLimit`
//! are deleted once they have no pods.

use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::ResourceExt as _;
use kube::api::DeleteParams;

use super::rollout::{Sync, by_creation, is_active};
use super::{Error, annotations, replicas};

impl Sync<'_> {
    /// Upstream's `isScalingEvent`: an active ReplicaSet was sized for another replica count.
    pub async fn is_scaling_event(&mut self) -> Result<bool, Error> {
        self.new_and_old(false).await?;
        let desired = replicas::desired(&self.deployment);
        Ok(self
            .replicasets
            .iter()
            .filter(|rs| is_active(rs))
            .filter_map(annotations::desired_replicas)
            .any(|annotated| annotated != desired))
    }

    /// Upstream's `sync`: scaling events and paused deployments.
    pub async fn sync_scale(&mut self) -> Result<(), Error> {
        let (new, old) = self.new_and_old(false).await?;
        self.scale_proportionally(new.as_ref(), &old).await?;
        let paused = self.paused();
        if paused {
            let (_, old) = self.split();
            self.cleanup(&old).await?;
        }
        self.sync_status().await
    }

    /// Upstream's `scale`.
    async fn scale_proportionally(
        &mut self,
        new: Option<&ReplicaSet>,
        old: &[ReplicaSet],
    ) -> Result<(), Error> {
        let desired = replicas::desired(&self.deployment);
        let mut everything: Vec<ReplicaSet> = old.to_vec();
        everything.extend(new.cloned());
        let active: Vec<ReplicaSet> = everything
            .iter()
            .filter(|rs| is_active(rs))
            .cloned()
            .collect();
        // One active ReplicaSet (or none): it takes the whole size.
        let sole = match active.len() {
            0 => {
                let mut newest = old.to_vec();
                by_creation(&mut newest);
                new.cloned().or_else(|| newest.pop())
            }
            1 => active.first().cloned(),
            _ => None,
        };
        if let Some(sole) = sole {
            self.scale_and_record(&sole, desired).await?;
            return Ok(());
        }
        // The new one is saturated: the old ones go.
        if let Some(new) = new
            && replicas::spec_replicas(new) == desired
            && annotations::desired_replicas(new) == Some(desired)
            && replicas::available_replicas(new) == desired
        {
            for replicaset in old.iter().filter(|rs| is_active(rs)) {
                self.scale_and_record(replicaset, 0).await?;
            }
            return Ok(());
        }
        if replicas::max_surge(&self.deployment).is_err() {
            return Ok(());
        }
        let rolling = self
            .deployment
            .spec
            .as_ref()
            .and_then(|s| s.strategy.as_ref())
            .and_then(|s| s.type_.as_deref())
            .is_none_or(|type_| type_ == "RollingUpdate");
        if !rolling {
            return Ok(());
        }
        let surge = replicas::max_surge(&self.deployment)?;
        let current: i32 = active.iter().map(replicas::spec_replicas).sum();
        let allowed = if desired > 0 { desired + surge } else { 0 };
        let to_add = allowed - current;
        let mut sorted = active.clone();
        // Larger first; for growth newer first, for shrinking older first.
        sorted.sort_by(|a, b| {
            replicas::spec_replicas(b)
                .cmp(&replicas::spec_replicas(a))
                .then_with(|| {
                    let order = a
                        .metadata
                        .creation_timestamp
                        .cmp(&b.metadata.creation_timestamp);
                    if to_add > 0 { order.reverse() } else { order }
                })
        });
        let status_replicas = self
            .deployment
            .status
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(0);
        let mut added = 0;
        let mut sizes: Vec<i32> = Vec::new();
        for replicaset in &sorted {
            let size = replicas::spec_replicas(replicaset);
            if to_add == 0 {
                sizes.push(size);
                continue;
            }
            let annotated = annotations::max_replicas(replicaset).unwrap_or(status_replicas);
            let change = replicas::proportion(size, annotated, desired, surge, to_add, added);
            sizes.push(size + change);
            added += change;
        }
        if to_add != 0
            && let Some(first) = sizes.first_mut()
        {
            *first = (*first + to_add - added).max(0);
        }
        let operation = if to_add < 0 { "down" } else { "up" };
        for (replicaset, size) in sorted.iter().zip(sizes) {
            self.scale(replicaset, size, operation).await?;
        }
        Ok(())
    }

    /// Upstream's `cleanupDeployment`: deletes the oldest revisions past
    /// `revisionHistoryLimit` that have no pods left.
    pub(super) async fn cleanup(&mut self, old: &[ReplicaSet]) -> Result<(), Error> {
        let Some(limit) = self
            .deployment
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
        else {
            return Ok(());
        };
        let mut cleanable: Vec<ReplicaSet> = old
            .iter()
            .filter_map(|rs| {
                self.replicasets
                    .iter()
                    .find(|current| current.metadata.uid == rs.metadata.uid)
            })
            .filter(|rs| rs.metadata.deletion_timestamp.is_none())
            .cloned()
            .collect();
        let excess = cleanable
            .len()
            .saturating_sub(usize::try_from(limit).unwrap_or(0));
        if excess == 0 {
            return Ok(());
        }
        cleanable.sort_by(|a, b| {
            annotations::revision(a)
                .cmp(&annotations::revision(b))
                .then_with(|| {
                    a.metadata
                        .creation_timestamp
                        .cmp(&b.metadata.creation_timestamp)
                })
                .then_with(|| a.metadata.name.cmp(&b.metadata.name))
        });
        for replicaset in cleanable.iter().take(excess) {
            let observed = replicaset
                .status
                .as_ref()
                .and_then(|s| s.observed_generation);
            if replicas::status_replicas(replicaset) != 0
                || replicas::spec_replicas(replicaset) != 0
                || replicaset.metadata.generation > observed
            {
                continue;
            }
            let params = DeleteParams {
                preconditions: replicaset.metadata.uid.clone().map(|uid| {
                    kube::api::Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }
                }),
                ..DeleteParams::default()
            };
            match self
                .replicaset_api
                .delete(&replicaset.name_any(), &params)
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.is_not_found() => {}
                Err(error) => return Err(self.api_error("deleting an old replicaset")(error)),
            }
            self.replicasets
                .retain(|rs| rs.metadata.uid != replicaset.metadata.uid);
        }
        Ok(())
    }
}
