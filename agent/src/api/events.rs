//! Pod events to the API as `v1` Events, aggregated as kubelet's recorder does: the same
//! reason and message about the same object again bumps `count` and `lastTimestamp` instead of
//! making a new Event.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::mpsc;

use crate::pods::events::PodEvent;

/// What makes two events the same: pod UID, field path, reason, message.
type EventKey = (String, Option<String>, &'static str, String);

/// Posts the events it receives until the channel closes.
pub async fn record(
    client: kube::Client,
    node_name: String,
    mut events: mpsc::UnboundedReceiver<PodEvent>,
) {
    // -> (event name, count)
    let mut seen: HashMap<EventKey, (String, i32)> = HashMap::new();
    while let Some(event) = events.recv().await {
        let api: Api<Event> = Api::namespaced(client.clone(), &event.namespace);
        let key = (
            event.uid.clone(),
            event.field_path.clone(),
            event.reason,
            event.message.clone(),
        );
        let now = Time(jiff::Timestamp::now());
        if let Some((name, count)) = seen.get_mut(&key) {
            *count += 1;
            let patch = json!({"count": *count, "lastTimestamp": now});
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => continue,
                Err(error) => log::debug!("cannot update event {name}: {error}"),
            }
        }
        let name = format!("{}.{:x}", event.pod, jiff::Timestamp::now().as_nanosecond());
        let object = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(event.namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                namespace: Some(event.namespace.clone()),
                name: Some(event.pod.clone()),
                uid: Some(event.uid.clone()),
                field_path: event.field_path.clone(),
                ..ObjectReference::default()
            },
            reason: Some(event.reason.to_owned()),
            message: Some(event.message.clone()),
            type_: Some(if event.warning { "Warning" } else { "Normal" }.to_owned()),
            source: Some(EventSource {
                component: Some("kubelet".to_owned()),
                host: Some(node_name.clone()),
            }),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            event_time: None::<MicroTime>,
            count: Some(1),
            reporting_component: Some("kubelet".to_owned()),
            reporting_instance: Some(node_name.clone()),
            ..Event::default()
        };
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => {
                seen.insert(key, (name, 1));
            }
            Err(error) => log::warn!(
                "cannot record event {} for pod {}: {error}",
                event.reason,
                event.pod
            ),
        }
        if seen.len() > 10_000 {
            seen.clear();
        }
    }
}
