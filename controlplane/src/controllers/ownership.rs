//! Controller references (`ownerReferences` with `controller: true`) and upstream's
//! `ControllerRefManager`: a controller claims the objects its selector matches, adopting
//! orphans and releasing objects it owns that no longer match.

use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::api::{Api, Patch, PatchParams};
use kube::core::{Selector, SelectorExt as _};
use kube::{Resource, ResourceExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

/// The controller reference of an object, if it has one.
pub fn controller_of<K: Resource>(object: &K) -> Option<&OwnerReference> {
    object
        .meta()
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|owner| owner.controller == Some(true))
}

/// A controller reference to `owner` (`controller` and `blockOwnerDeletion` set), as
/// upstream's `NewControllerRef`.
pub fn controller_reference<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A label selector as a matcher. `None` (no selector) matches nothing, as upstream's
/// `labels.Nothing()`; an invalid one is an error.
pub fn selector(selector: Option<&LabelSelector>) -> Result<Option<Selector>, String> {
    match selector {
        None => Ok(None),
        Some(selector) => Selector::try_from(selector.clone())
            .map(Some)
            .map_err(|error| error.to_string()),
    }
}

/// Whether `selector` (from [`selector`]) selects `object`'s labels.
pub fn selects<K: Resource>(selector: Option<&Selector>, object: &K) -> bool {
    selector.is_some_and(|selector| selector.matches(object.labels()))
}

/// What a claim did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Ours already, and it matches: keep it.
    Keep,
    /// An orphan that matches: adopt it.
    Adopt,
    /// Ours, but it no longer matches: release it.
    Release,
    /// Not ours to touch.
    Ignore,
}

/// Upstream's `ClaimObject` decision for one object, given whether the owner (`owner_uid`)
/// is being deleted and whether its selector matches the object.
pub fn claim_decision<K: Resource>(
    object: &K,
    owner_uid: &str,
    owner_deleting: bool,
    matches: bool,
) -> Claim {
    match controller_of(object) {
        Some(owner) if owner.uid == owner_uid => {
            if matches {
                Claim::Keep
            } else if owner_deleting {
                // Releasing while being deleted would race the garbage collector.
                Claim::Ignore
            } else {
                Claim::Release
            }
        }
        Some(_) => Claim::Ignore,
        None => {
            if owner_deleting || !matches || object.meta().deletion_timestamp.is_some() {
                Claim::Ignore
            } else {
                Claim::Adopt
            }
        }
    }
}

/// Makes `owner` the controller of `object` (guarded by the object's UID and
/// resourceVersion, so a changed object is not adopted blindly).
pub async fn adopt<K>(
    api: &Api<K>,
    object: &K,
    reference: OwnerReference,
) -> Result<Option<K>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let mut owners: Vec<OwnerReference> = object
        .meta()
        .owner_references
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|owner| owner.uid != reference.uid)
        .collect();
    owners.push(reference);
    write_owners(api, object, owners).await
}

/// Removes `owner_uid` from `object`'s owners. A gone object is not an error.
pub async fn release<K>(api: &Api<K>, object: &K, owner_uid: &str) -> Result<Option<K>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let owners: Vec<OwnerReference> = object
        .meta()
        .owner_references
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|owner| owner.uid != owner_uid)
        .collect();
    write_owners(api, object, owners).await
}

async fn write_owners<K>(
    api: &Api<K>,
    object: &K,
    owners: Vec<OwnerReference>,
) -> Result<Option<K>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let patch = json!({
        "metadata": {
            "ownerReferences": owners,
            "uid": object.uid(),
            "resourceVersion": object.resource_version(),
        }
    });
    match api
        .patch(
            &object.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(updated) => Ok(Some(updated)),
        // Gone, or changed since it was read: the next pass decides again.
        Err(kube::Error::Api(status)) if status.is_not_found() || status.code == 409 => Ok(None),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::ObjectMeta;

    fn pod(controller: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                owner_references: controller.map(|uid| {
                    vec![OwnerReference {
                        api_version: "apps/v1".into(),
                        kind: "ReplicaSet".into(),
                        name: "rs".into(),
                        uid: uid.into(),
                        controller: Some(true),
                        block_owner_deletion: Some(true),
                    }]
                }),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    #[test]
    fn claims_as_upstream() {
        assert_eq!(
            claim_decision(&pod(Some("me")), "me", false, true),
            Claim::Keep
        );
        assert_eq!(
            claim_decision(&pod(Some("me")), "me", false, false),
            Claim::Release
        );
        assert_eq!(
            claim_decision(&pod(Some("me")), "me", true, false),
            Claim::Ignore
        );
        assert_eq!(
            claim_decision(&pod(Some("other")), "me", false, true),
            Claim::Ignore
        );
        assert_eq!(claim_decision(&pod(None), "me", false, true), Claim::Adopt);
        assert_eq!(
            claim_decision(&pod(None), "me", false, false),
            Claim::Ignore
        );
        assert_eq!(claim_decision(&pod(None), "me", true, true), Claim::Ignore);
    }
}
