//! The annotations a Deployment keeps on itself and its ReplicaSets (upstream's
//! `deployment/util`): the revision, the revision history, and the desired / max replicas a
//! ReplicaSet was sized for.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};

/// The revision of a ReplicaSet, and the Deployment's current one.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Earlier revisions a ReplicaSet served under, comma separated.
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// The deployment's `spec.replicas` when the ReplicaSet was last sized.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// The deployment's `spec.replicas + maxSurge` when the ReplicaSet was last sized.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// The longest revision history annotation kept (upstream's default flag value).
const MAX_REVISION_HISTORY_CHARS: usize = 2000;

/// Annotations never copied from a Deployment to its ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

/// A ReplicaSet's revision (0 when absent or unreadable).
pub fn revision(replicaset: &ReplicaSet) -> i64 {
    replicaset
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(REVISION))
        .and_then(|revision| revision.parse().ok())
        .unwrap_or(0)
}

/// The highest revision among `replicasets`.
pub fn max_revision<'a>(replicasets: impl IntoIterator<Item = &'a ReplicaSet>) -> i64 {
    replicasets.into_iter().map(revision).max().unwrap_or(0)
}

fn parse(annotations: Option<&BTreeMap<String, String>>, key: &str) -> Option<i32> {
    annotations?.get(key)?.parse().ok()
}

/// The `desired-replicas` annotation, if readable.
pub fn desired_replicas(replicaset: &ReplicaSet) -> Option<i32> {
    parse(replicaset.metadata.annotations.as_ref(), DESIRED_REPLICAS)
}

/// The `max-replicas` annotation, if readable.
pub fn max_replicas(replicaset: &ReplicaSet) -> Option<i32> {
    parse(replicaset.metadata.annotations.as_ref(), MAX_REPLICAS)
}

/// Sets the desired / max replicas annotations; whether anything changed.
pub fn set_replicas(replicaset: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    let annotations = replicaset.metadata.annotations.get_or_insert_default();
    let mut changed = false;
    for (key, value) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
        let value = value.to_string();
        if annotations.get(key) != Some(&value) {
            annotations.insert(key.to_owned(), value);
            changed = true;
        }
    }
    changed
}

/// Upstream's `SetNewReplicaSetAnnotations`: the deployment's own annotations, the new
/// revision (the old one moved to the history), and for a ReplicaSet about to be created the
/// replicas annotations. Whether anything changed.
pub fn set_new_replicaset(
    deployment: &Deployment,
    replicaset: &mut ReplicaSet,
    new_revision: i64,
    exists: bool,
    max: i32,
) -> bool {
    let mut changed = false;
    let annotations = replicaset.metadata.annotations.get_or_insert_default();
    for (key, value) in deployment.metadata.annotations.iter().flatten() {
        if NOT_COPIED.contains(&key.as_str()) || annotations.get(key) == Some(value) {
            continue;
        }
        annotations.insert(key.clone(), value.clone());
        changed = true;
    }
    let old = annotations.get(REVISION).cloned().unwrap_or_default();
    let old_number: i64 = if old.is_empty() {
        0
    } else {
        match old.parse() {
            Ok(number) => number,
            Err(_) => return false,
        }
    };
    if old_number < new_revision {
        annotations.insert(REVISION.to_owned(), new_revision.to_string());
        changed = true;
        if !old.is_empty() {
            let history = match annotations.get(REVISION_HISTORY) {
                Some(history) if !history.is_empty() => format!("{history},{old}"),
                _ => old.clone(),
            };
            // Drop the oldest entries past the limit.
            let mut history = history.as_str();
            while history.len() > MAX_REVISION_HISTORY_CHARS {
                match history.split_once(',') {
                    Some((_, rest)) => history = rest,
                    None => break,
                }
            }
            annotations.insert(REVISION_HISTORY.to_owned(), history.to_owned());
        }
    }
    if !exists && set_replicas(replicaset, super::replicas::desired(deployment), max) {
        changed = true;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn deployment(annotations: &[(&str, &str)]) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..Deployment::default()
        }
    }

    #[test]
    fn new_revision_moves_the_old_one_to_the_history() {
        let deployment = deployment(&[("team", "a"), (REVISION, "7")]);
        let mut replicaset = ReplicaSet::default();
        assert!(set_new_replicaset(
            &deployment,
            &mut replicaset,
            1,
            false,
            4
        ));
        let annotations = replicaset.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(annotations.get("team").map(String::as_str), Some("a"));
        assert_eq!(annotations.get(REVISION).map(String::as_str), Some("1"));
        assert_eq!(
            annotations.get(DESIRED_REPLICAS).map(String::as_str),
            Some("1")
        );
        assert_eq!(annotations.get(MAX_REPLICAS).map(String::as_str), Some("4"));
        assert!(!annotations.contains_key(REVISION_HISTORY));
        // Rolled back to: revision 3, history "1".
        assert!(set_new_replicaset(&deployment, &mut replicaset, 3, true, 4));
        assert_eq!(revision(&replicaset), 3);
        assert!(!set_new_replicaset(
            &deployment,
            &mut replicaset,
            3,
            true,
            4
        ));
        assert!(set_new_replicaset(&deployment, &mut replicaset, 5, true, 4));
        let annotations = replicaset.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations.get(REVISION_HISTORY).map(String::as_str),
            Some("1,3")
        );
        assert_eq!(max_revision([&replicaset, &ReplicaSet::default()]), 5);
    }
}
