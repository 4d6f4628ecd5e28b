//! The two rollout strategies (upstream's `rolling.go` and `recreate.go`): RollingUpdate
//! scales the new ReplicaSet up within maxSurge and old ones down within maxUnavailable;
//! Recreate scales old ones to 0 and waits for their pods to be gone before the new one.

use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt as _;
use kube::api::{Api, ListParams};

use super::rollout::{Sync, by_creation, is_active};
use super::{Error, replicas, status};
use crate::controllers::ownership;

impl Sync<'_> {
    /// Upstream's `rolloutRolling`. Returns when to look again.
    pub async fn rolling(&mut self) -> Result<Option<Duration>, Error> {
        let (new, old) = self.new_and_old(true).await?;
        let Some(new) = new else {
            return self.rollout_status().await;
        };
        // Scale up the new ReplicaSet as far as maxSurge allows.
        let desired = replicas::desired(&self.deployment);
        let new_replicas = replicas::spec_replicas(&new);
        if new_replicas > desired {
            self.scale_and_record(&new, desired).await?;
            return self.rollout_status().await;
        }
        if new_replicas < desired {
            let all: Vec<&ReplicaSet> = old.iter().chain(std::iter::once(&new)).collect();
            let count = replicas::new_rs_new_replicas(&self.deployment, &all, &new)?;
            if self.scale_and_record(&new, count).await? {
                return self.rollout_status().await;
            }
        }
        if self.reconcile_old(&new, old.clone()).await? {
            return self.rollout_status().await;
        }
        let (status, _) = status::rollout(&self.all_refs(), Some(&new), &self.deployment)?;
        if status::complete(&self.deployment, &status) {
            self.cleanup(&old).await?;
        }
        self.rollout_status().await
    }

    /// Upstream's `reconcileOldReplicaSets`: scale old ReplicaSets down without going below
    /// `replicas - maxUnavailable` available pods.
    async fn reconcile_old(
        &mut self,
        new: &ReplicaSet,
        old: Vec<ReplicaSet>,
    ) -> Result<bool, Error> {
        let active_old: Vec<ReplicaSet> = old.into_iter().filter(is_active).collect();
        let old_count: i32 = active_old.iter().map(replicas::spec_replicas).sum();
        if old_count == 0 {
            return Ok(false);
        }
        let all_count = old_count + replicas::spec_replicas(new);
        let desired = replicas::desired(&self.deployment);
        let min_available = desired - replicas::max_unavailable(&self.deployment)?;
        let new_unavailable = replicas::spec_replicas(new) - replicas::available_replicas(new);
        let max_scaled_down = all_count - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        // First the old pods that are not available: removing them costs no availability.
        let mut sorted = active_old;
        by_creation(&mut sorted);
        let mut cleaned = 0;
        let mut remaining = Vec::new();
        for replicaset in sorted {
            let spec = replicas::spec_replicas(&replicaset);
            let available = replicas::available_replicas(&replicaset);
            if cleaned >= max_scaled_down || spec == 0 || spec == available {
                remaining.push(replicaset);
                continue;
            }
            let down = (max_scaled_down - cleaned).min(spec - available);
            self.scale_and_record(&replicaset, spec - down).await?;
            cleaned += down;
            let current = self
                .replicasets
                .iter()
                .find(|rs| rs.metadata.uid == replicaset.metadata.uid)
                .cloned()
                .unwrap_or(replicaset);
            remaining.push(current);
        }
        // Then available ones, as far as availability allows.
        let available: i32 = self
            .replicasets
            .iter()
            .filter(|rs| {
                rs.metadata.uid == new.metadata.uid
                    || remaining
                        .iter()
                        .any(|old| old.metadata.uid == rs.metadata.uid)
            })
            .map(replicas::available_replicas)
            .sum();
        let mut scaled = 0;
        if available > min_available {
            let total = available - min_available;
            for replicaset in &remaining {
                let spec = replicas::spec_replicas(replicaset);
                if scaled >= total {
                    break;
                }
                if spec == 0 {
                    continue;
                }
                let down = spec.min(total - scaled);
                self.scale_and_record(replicaset, spec - down).await?;
                scaled += down;
            }
        }
        Ok(cleaned + scaled > 0)
    }

    /// Upstream's `rolloutRecreate`. Returns when to look again.
    pub async fn recreate(&mut self) -> Result<Option<Duration>, Error> {
        let (new, old) = self.new_and_old(false).await?;
        let mut scaled_down = false;
        for replicaset in old.iter().filter(|rs| is_active(rs)) {
            scaled_down |= self.scale_and_record(replicaset, 0).await?;
        }
        if scaled_down {
            return self.rollout_status().await;
        }
        if self.old_pods_running(new.as_ref(), &old).await? {
            let after = self.rollout_status().await?;
            // Pods going away change no ReplicaSet: look again soon.
            return Ok(Some(after.map_or(Duration::from_secs(1), |after| {
                after.min(Duration::from_secs(1))
            })));
        }
        let new = match new {
            Some(new) => new,
            None => match self.new_and_old(true).await?.0 {
                Some(new) => new,
                None => return self.rollout_status().await,
            },
        };
        let desired = replicas::desired(&self.deployment);
        self.scale_and_record(&new, desired).await?;
        let (status, _) = status::rollout(&self.all_refs(), Some(&new), &self.deployment)?;
        if status::complete(&self.deployment, &status) {
            self.cleanup(&old).await?;
        }
        self.rollout_status().await
    }

    /// Whether pods of old ReplicaSets still exist and have not finished (upstream's
    /// `oldPodsRunning`).
    async fn old_pods_running(
        &self,
        new: Option<&ReplicaSet>,
        old: &[ReplicaSet],
    ) -> Result<bool, Error> {
        if old.iter().map(replicas::status_replicas).sum::<i32>() > 0 {
            return Ok(true);
        }
        let selector =
            ownership::selector(self.deployment.spec.as_ref().map(|spec| &spec.selector))
                .map_err(|error| Error::Selector(self.key.clone(), error))?;
        let Some(selector) = selector else {
            return Ok(false);
        };
        let pods: Api<Pod> = Api::namespaced(
            self.context.client.clone(),
            &self.deployment.namespace().unwrap_or_default(),
        );
        let list = pods
            .list(&ListParams::default().labels(&selector.to_string()))
            .await
            .map_err(self.api_error("listing pods"))?;
        let new_uid = new.and_then(|new| new.metadata.uid.clone());
        Ok(list.items.iter().any(|pod| {
            let owner = ownership::controller_of(pod).map(|owner| owner.uid.clone());
            let of_old = owner.is_some_and(|uid| {
                Some(&uid) != new_uid.as_ref()
                    && self
                        .replicasets
                        .iter()
                        .any(|rs| rs.metadata.uid.as_ref() == Some(&uid))
            });
            let phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .unwrap_or("");
            of_old && phase != "Succeeded" && phase != "Failed"
        }))
    }
}
