//! The StatefulSet controller, as upstream's `pkg/controller/statefulset`: pods with stable
//! names `<set>-<ordinal>`, hostnames and (with `serviceName`) subdomains, each with its own
//! PersistentVolumeClaims `<claim>-<set>-<ordinal>` from `volumeClaimTemplates` (kept when
//! the set scales down: upstream's default `Retain`), created and removed in order
//! ([`plan`]), updated by rolling update or on delete, templates kept as ControllerRevisions.

mod plan;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};
use serde_json::json;

use super::workload::{self, CONTROLLER_REVISION_HASH, Error, PodControl, REVISION_HASH_LABEL};
use plan::{PodView, SetView, Step};

/// The label with a StatefulSet pod's name.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label with a StatefulSet pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// Runs the StatefulSet controller until its watch streams end.
pub async fn run(client: Client) {
    let context = Arc::new(PodControl::new(client.clone(), "statefulset-controller"));
    let controller = Controller::new(
        Api::<StatefulSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Pod>::all(client), watcher::Config::default())
    .run(reconcile, workload::error_policy, context);
    workload::drain("statefulset controller", controller).await;
}

async fn reconcile(cached: Arc<StatefulSet>, context: Arc<PodControl>) -> Result<Action, Error> {
    let client = &context.client;
    let Some((api, set)) = workload::fresh(client, &*cached).await? else {
        return Ok(Action::await_change());
    };
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = set.namespace().unwrap_or_default();
    let name = set.name_any();
    let uid = set.uid().unwrap_or_default();
    let spec = set.spec.clone().unwrap_or_default();
    let selector = workload::selector_query(&spec.selector);
    let collision = set
        .status
        .as_ref()
        .and_then(|status| status.collision_count);
    let history = workload::sync_history(
        client,
        &set,
        &selector,
        &spec.template,
        REVISION_HASH_LABEL,
        collision,
    )
    .await?;
    let update_revision = history.current.name_any();
    let current_revision = set
        .status
        .as_ref()
        .and_then(|status| status.current_revision.clone())
        .filter(|revision| history.named(revision).is_some())
        .unwrap_or_else(|| update_revision.clone());

    let pods: BTreeMap<i32, Pod> = workload::owned_pods(client, &namespace, &selector, &uid)
        .await?
        .into_iter()
        .filter_map(|pod| Some((ordinal_of(&name, &pod.name_any())?, pod)))
        .collect();
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|strategy| strategy.type_.as_deref())
        .is_none_or(|type_| type_ == "RollingUpdate");
    let view = SetView {
        replicas: spec.replicas.unwrap_or(1),
        start_ordinal: spec
            .ordinals
            .as_ref()
            .and_then(|ordinals| ordinals.start)
            .unwrap_or(0),
        ordered: spec.pod_management_policy.as_deref() != Some("Parallel"),
        rolling_partition: rolling.then(|| {
            spec.update_strategy
                .as_ref()
                .and_then(|strategy| strategy.rolling_update.as_ref())
                .and_then(|update| update.partition)
                .unwrap_or(0)
        }),
        current_revision: current_revision.clone(),
        update_revision: update_revision.clone(),
    };
    let views: Vec<PodView> = pods
        .iter()
        .map(|(ordinal, pod)| PodView {
            ordinal: *ordinal,
            revision: pod
                .labels()
                .get(CONTROLLER_REVISION_HASH)
                .cloned()
                .unwrap_or_default(),
            running_and_ready: workload::running_and_ready(pod),
            finished: workload::finished(pod),
            terminating: workload::terminating(pod),
        })
        .collect();
    for step in plan::plan(&view, &views) {
        match step {
            Step::Create { ordinal, revision } => {
                let template = history
                    .named(&revision)
                    .and_then(workload::revision_template)
                    .unwrap_or_else(|| spec.template.clone());
                create(&context, &set, &template, ordinal, &revision).await?;
            }
            Step::Delete { ordinal } => {
                if let Some(pod) = pods.get(&ordinal) {
                    context
                        .delete_as(&set, pod, |pod| {
                            format!("delete Pod {pod} in StatefulSet {name} successful")
                        })
                        .await?;
                }
            }
        }
    }

    let in_use: Vec<String> = views.iter().map(|view| view.revision.clone()).collect();
    workload::prune_history(
        client,
        &history,
        &[in_use, vec![current_revision.clone()]].concat(),
        spec.revision_history_limit.unwrap_or(10),
    )
    .await?;
    update_status(&api, &set, &pods, &view).await?;
    Ok(Action::await_change())
}

/// Creates the pod's claims that do not exist yet, then the pod.
async fn create(
    context: &PodControl,
    set: &StatefulSet,
    template: &PodTemplateSpec,
    ordinal: i32,
    revision: &str,
) -> Result<(), Error> {
    let set_name = set.name_any();
    let namespace = set.namespace().unwrap_or_default();
    let pod_name = format!("{set_name}-{ordinal}");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(context.client.clone(), &namespace);
    for claim in claims_for(set, ordinal) {
        let claim_name = claim.name_any();
        let existing = claims
            .get_opt(&claim_name)
            .await
            .map_err(Error::api(format!(
                "reading persistentvolumeclaim {namespace}/{claim_name}"
            )))?;
        if existing.is_some() {
            continue;
        }
        match claims.create(&PostParams::default(), &claim).await {
            Ok(_) => {
                let message = format!(
                    "create Claim {claim_name} Pod {pod_name} in StatefulSet {set_name} success"
                );
                context
                    .recorder
                    .normal(set, "SuccessfulCreate", message)
                    .await;
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(source) => {
                let message = format!(
                    "create Claim {claim_name} for Pod {pod_name} in StatefulSet {set_name} failed error: {}",
                    status_message(&source)
                );
                context.recorder.warning(set, "FailedCreate", message).await;
                return Err(Error::Api {
                    action: format!("creating persistentvolumeclaim {namespace}/{claim_name}"),
                    source,
                });
            }
        }
    }
    let pod = new_pod(set, template, ordinal, revision);
    context
        .create_as(set, &pod, |pod| {
            format!("create Pod {pod} in StatefulSet {set_name} successful")
        })
        .await?;
    Ok(())
}

fn status_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

/// The claims of the pod with `ordinal`: each volume claim template named
/// `<claim>-<set>-<ordinal>`, labelled with the set's selector labels.
fn claims_for(set: &StatefulSet, ordinal: i32) -> Vec<PersistentVolumeClaim> {
    let spec = set.spec.clone().unwrap_or_default();
    let selector_labels = spec.selector.match_labels.clone().unwrap_or_default();
    spec.volume_claim_templates
        .unwrap_or_default()
        .into_iter()
        .map(|mut claim| {
            let template_name = claim.name_any();
            claim.metadata.name = Some(claim_name(&template_name, &set.name_any(), ordinal));
            claim.metadata.namespace = set.namespace();
            let labels = claim.metadata.labels.get_or_insert_with(BTreeMap::new);
            labels.extend(selector_labels.clone());
            claim.metadata.resource_version = None;
            claim.metadata.uid = None;
            claim.status = None;
            claim
        })
        .collect()
}

/// A claim's name: `<template>-<set>-<ordinal>`.
pub fn claim_name(template: &str, set: &str, ordinal: i32) -> String {
    format!("{template}-{set}-{ordinal}")
}

/// The pod with `ordinal`, from `template` (the revision's), with its identity and claims.
fn new_pod(set: &StatefulSet, template: &PodTemplateSpec, ordinal: i32, revision: &str) -> Pod {
    let spec = set.spec.clone().unwrap_or_default();
    let set_name = set.name_any();
    let pod_name = format!("{set_name}-{ordinal}");
    let mut pod = workload::pod_from_template(template, set);
    pod.metadata.name = Some(pod_name.clone());
    workload::set_label(&mut pod.metadata, POD_NAME_LABEL, pod_name.clone());
    workload::set_label(&mut pod.metadata, POD_INDEX_LABEL, ordinal.to_string());
    workload::set_label(&mut pod.metadata, CONTROLLER_REVISION_HASH, revision);
    if let Some(pod_spec) = pod.spec.as_mut() {
        pod_spec.hostname = Some(pod_name);
        if let Some(service) = spec.service_name.filter(|service| !service.is_empty()) {
            pod_spec.subdomain = Some(service);
        }
        let volumes = pod_spec.volumes.get_or_insert_with(Vec::new);
        for claim in spec.volume_claim_templates.iter().flatten() {
            let volume_name = claim.name_any();
            volumes.retain(|volume| volume.name != volume_name);
            volumes.push(Volume {
                name: volume_name.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim_name(&volume_name, &set_name, ordinal),
                    read_only: None,
                }),
                ..Volume::default()
            });
        }
    }
    pod
}

async fn update_status(
    api: &Api<StatefulSet>,
    set: &StatefulSet,
    pods: &BTreeMap<i32, Pod>,
    view: &SetView,
) -> Result<(), Error> {
    let min_ready = set
        .spec
        .as_ref()
        .and_then(|spec| spec.min_ready_seconds)
        .unwrap_or(0);
    let now = Timestamp::now();
    let revision_of = |pod: &Pod| pod.labels().get(CONTROLLER_REVISION_HASH).cloned();
    let replicas = pods.len();
    let ready = pods
        .values()
        .filter(|pod| workload::running_and_ready(pod))
        .count();
    let available = pods
        .values()
        .filter(|pod| workload::running_and_ready(pod) && workload::available(pod, min_ready, now))
        .count();
    let mut current = pods
        .values()
        .filter(|pod| revision_of(pod).as_deref() == Some(view.current_revision.as_str()))
        .count();
    let updated = pods
        .values()
        .filter(|pod| revision_of(pod).as_deref() == Some(view.update_revision.as_str()))
        .count();
    let wanted = usize::try_from(view.replicas).unwrap_or(0);
    let mut current_revision = view.current_revision.clone();
    // A finished rolling update: the update revision becomes the current one.
    if view.rolling_partition.is_some() && updated == wanted && ready == wanted {
        current_revision = view.update_revision.clone();
        current = updated;
    }
    workload::patch_status(
        api,
        set,
        json!({
            "observedGeneration": set.metadata.generation,
            "replicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": available,
            "currentReplicas": current,
            "updatedReplicas": updated,
            "currentRevision": current_revision,
            "updateRevision": view.update_revision,
            "collisionCount": set.status.as_ref().and_then(|s| s.collision_count).unwrap_or(0),
        }),
    )
    .await
}

/// The ordinal of a pod named `<set>-<ordinal>`.
fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_come_from_names() {
        assert_eq!(ordinal_of("web", "web-2"), Some(2));
        assert_eq!(ordinal_of("web", "web-x"), None);
        assert_eq!(ordinal_of("web", "webby-1"), None);
        assert_eq!(claim_name("data", "web", 0), "data-web-0");
    }
}
