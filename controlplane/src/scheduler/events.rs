//! Events about pods as the scheduler reports them: core/v1 Events with `source.component`,
//! `reportingComponent` `default-scheduler` and action `Scheduling` (the API serves no
//! `events.k8s.io/v1` yet). A repeat of the same event within six minutes raises the first
//! one's `count` and `lastTimestamp` instead of creating another, as client-go's correlator
//! does.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource as _};
use serde_json::json;

use super::COMPONENT;

const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);
/// How often expired series are dropped (not on every event: that is O(n) each time).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// A series: the pod's uid, the reason and the message.
type SeriesKey = (String, String, String);

#[derive(Debug)]
struct Sent {
    name: String,
    count: i32,
    at: Instant,
}

/// Publishes the scheduler's events.
#[expect(missing_debug_implementations, reason = "kube::Client is not Debug")]
pub struct Recorder {
    client: Client,
    instance: String,
    /// Series sent within the window, and when expired ones were last dropped.
    sent: Mutex<(HashMap<SeriesKey, Sent>, Instant)>,
}

impl Recorder {
    /// A recorder reporting as `default-scheduler-<hostname>`.
    pub fn new(client: Client) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .unwrap_or_else(|_| "localhost".to_owned());
        Self {
            client,
            instance: format!("{COMPONENT}-{host}"),
            sent: Mutex::new((HashMap::new(), Instant::now())),
        }
    }

    /// Records `reason` / `message` about `pod` (`kind`: `Normal` or `Warning`).
    pub async fn publish(
        &self,
        pod: &Pod,
        kind: &str,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let key = (uid, reason.to_owned(), message.to_owned());
        let now = Timestamp::now();
        // The lock is never held across a request: publishing is concurrent, and a repeat
        // patches the series of the first event seen.
        let repeat = {
            let mut guard = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
            let (sent, pruned) = &mut *guard;
            if pruned.elapsed() > PRUNE_EVERY {
                sent.retain(|_, event| event.at.elapsed() < SERIES_WINDOW);
                *pruned = Instant::now();
            }
            sent.get_mut(&key)
                .filter(|previous| previous.at.elapsed() < SERIES_WINDOW)
                .map(|previous| {
                    previous.count += 1;
                    previous.at = Instant::now();
                    (previous.name.clone(), previous.count)
                })
        };
        if let Some((name, count)) = repeat {
            let patch = json!({"count": count, "lastTimestamp": Time(now)});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                // The first event is gone (expired or deleted): start again.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(error),
            }
        }
        let name = format!(
            "{}.{:x}",
            pod.metadata.name.as_deref().unwrap_or("pod"),
            now.as_nanosecond()
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace),
                ..Default::default()
            },
            involved_object: reference(pod),
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            type_: Some(kind.to_owned()),
            action: Some("Scheduling".to_owned()),
            source: Some(EventSource {
                component: Some(COMPONENT.to_owned()),
                host: None,
            }),
            reporting_component: Some(COMPONENT.to_owned()),
            reporting_instance: Some(self.instance.clone()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            count: Some(1),
            ..Default::default()
        };
        api.create(&PostParams::default(), &event).await?;
        self.sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .insert(
                key,
                Sent {
                    name,
                    count: 1,
                    at: Instant::now(),
                },
            );
        Ok(())
    }
}

fn reference(pod: &Pod) -> ObjectReference {
    let mut reference = pod.object_ref(&());
    reference.resource_version = pod.metadata.resource_version.clone();
    reference
}
