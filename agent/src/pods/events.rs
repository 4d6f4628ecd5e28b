//! Pod events as kubelet records them (`Pulling`, `Pulled`, `Created`, `Started`, `Killing`,
//! `BackOff`, `Failed`, `FailedMount`, `Unhealthy`), so `kubectl describe pod` reads as
//! upstream. Workers send them to an [`EventSink`]; with an API server they become `v1` Events
//! ([`crate::api::events`]), without one they are logged.

use k8s_openapi::api::core::v1::Pod;

/// One event about a pod (and one of its containers, if `container` is set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEvent {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    /// `spec.containers{name}` / `spec.initContainers{name}`.
    pub field_path: Option<String>,
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

pub type EventSink = tokio::sync::mpsc::UnboundedSender<PodEvent>;

/// Builds events about one pod.
#[derive(Debug, Clone)]
pub struct PodEvents {
    sink: Option<EventSink>,
    namespace: String,
    pod: String,
    uid: String,
}

impl PodEvents {
    pub fn new(sink: Option<EventSink>, pod: &Pod) -> PodEvents {
        PodEvents {
            sink,
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned()),
            pod: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
        }
    }

    fn send(
        &self,
        container: Option<&str>,
        init: bool,
        warning: bool,
        reason: &'static str,
        message: String,
    ) {
        let field_path = container.map(|name| {
            let list = if init { "initContainers" } else { "containers" };
            format!("spec.{list}{{{name}}}")
        });
        let event = PodEvent {
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            uid: self.uid.clone(),
            field_path,
            warning,
            reason,
            message,
        };
        match &self.sink {
            Some(sink) => {
                let _ = sink.send(event);
            }
            None => log::info!(
                "event {} {}/{}: {} {}",
                if event.warning { "Warning" } else { "Normal" },
                event.namespace,
                event.pod,
                event.reason,
                event.message
            ),
        }
    }

    /// A normal event about a container.
    pub fn normal(&self, container: &str, init: bool, reason: &'static str, message: String) {
        self.send(Some(container), init, false, reason, message);
    }

    /// A warning about a container.
    pub fn warning(&self, container: &str, init: bool, reason: &'static str, message: String) {
        self.send(Some(container), init, true, reason, message);
    }

    /// A warning about the pod as a whole.
    pub fn pod_warning(&self, reason: &'static str, message: String) {
        self.send(None, false, true, reason, message);
    }
}
