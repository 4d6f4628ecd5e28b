//! Core `v1` Events from controllers, as upstream's controller-manager records them through
//! its broadcaster: `source.component` and `reportingComponent` name the controller
//! (`replicaset-controller`), `involvedObject` the object the event is about.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};
use kube::{Client, Resource, ResourceExt as _};

/// `Normal` or `Warning`, upstream's two event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// Posts events for one controller. Failing to record an event is logged, never an error of
/// the reconcile that wanted it recorded (upstream drops them too).
#[derive(Clone)]
pub struct EventRecorder {
    client: Client,
    component: &'static str,
}

impl std::fmt::Debug for EventRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRecorder")
            .field("component", &self.component)
            .finish_non_exhaustive()
    }
}

impl EventRecorder {
    /// A recorder whose events name `component` as their source.
    pub fn new(client: Client, component: &'static str) -> Self {
        Self { client, component }
    }

    /// Records an event about `object`.
    pub async fn record<K>(&self, object: &K, kind: EventType, reason: &str, message: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let namespace = object.namespace().unwrap_or_else(|| "default".to_owned());
        let name = object.name_any();
        let now = jiff::Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some(K::api_version(&()).into_owned()),
                kind: Some(K::kind(&()).into_owned()),
                namespace: object.namespace(),
                name: Some(name.clone()),
                uid: object.uid(),
                resource_version: object.resource_version(),
                ..ObjectReference::default()
            },
            reason: Some(reason.to_owned()),
            message: Some(message),
            type_: Some(
                match kind {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_owned(),
            ),
            source: Some(EventSource {
                component: Some(self.component.to_owned()),
                host: None,
            }),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            reporting_component: Some(self.component.to_owned()),
            reporting_instance: Some(self.component.to_owned()),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        if let Err(error) = api.create(&PostParams::default(), &event).await {
            log::debug!(
                "{}: cannot record event {reason} for {name}: {}",
                self.component,
                super::chain(&error)
            );
        }
    }
}
