//! What probes report and what the worker does with it: results, actions, and the text of the
//! events kubelet records (`Unhealthy`, `ProbeWarning`, `Killing`).

/// Which of a container's probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    /// The word kubelet's event messages start with (`Liveness probe failed: ...`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }

    /// The lowercase word of `Killing` messages (`failed liveness probe`).
    pub fn lowercase(self) -> &'static str {
        match self {
            ProbeKind::Startup => "startup",
            ProbeKind::Liveness => "liveness",
            ProbeKind::Readiness => "readiness",
        }
    }
}

/// One probe attempt's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    Success,
    /// Counts as a success; kubelet records a `ProbeWarning` event with the text. An `httpGet`
    /// answered with a redirect to another host (not followed) ends so.
    Warning(String),
    /// The text kubelet would put after `Liveness probe failed: `, e.g.
    /// `HTTP probe failed with statuscode: 500` or
    /// `dial tcp 198.18.64.1:81: connect: connection refused`.
    Failure(String),
    /// The probe could not be run (a port name the container does not have, no handler,
    /// `runc exec` unable to enter the container, gRPC): a failure for the thresholds, reported
    /// as `Liveness probe errored: ...`.
    Errored(String),
}

impl ProbeResult {
    /// Whether the result counts as a success for the thresholds.
    pub fn is_success(&self) -> bool {
        matches!(self, ProbeResult::Success | ProbeResult::Warning(_))
    }

    /// The text of a failure, a warning or an error.
    pub fn text(&self) -> Option<&str> {
        match self {
            ProbeResult::Success => None,
            ProbeResult::Warning(text)
            | ProbeResult::Failure(text)
            | ProbeResult::Errored(text) => Some(text),
        }
    }
}

/// What the worker must do after [`ContainerProbes::record`](super::ContainerProbes::record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAction {
    None,
    /// A liveness or startup probe failed `failureThreshold` times in a row: kubelet kills the
    /// container (and restarts it as the pod's restartPolicy says). `failure` is the last
    /// failure's (or error's) text. The container's probes stop until a new instance gets new ones.
    Restart {
        kind: ProbeKind,
        failure: String,
    },
}

/// An event kubelet records for a probe result, on the container's field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeEvent {
    /// `Unhealthy` or `ProbeWarning`; both are `Warning` events.
    pub reason: &'static str,
    pub message: String,
}

/// `Liveness probe failed: HTTP probe failed with statuscode: 500`: the `Unhealthy` event's
/// message for a failure text.
pub fn unhealthy_message(kind: ProbeKind, failure: &str) -> String {
    format!("{} probe failed: {failure}", kind.as_str())
}

/// The event kubelet records for `result` (every failure and warning, not only the one that
/// crosses the threshold); `None` for a plain success.
pub fn probe_event(kind: ProbeKind, result: &ProbeResult) -> Option<ProbeEvent> {
    match result {
        ProbeResult::Success => None,
        ProbeResult::Warning(text) => Some(ProbeEvent {
            reason: "ProbeWarning",
            message: format!("{} probe warning: {text}", kind.as_str()),
        }),
        ProbeResult::Failure(text) => Some(ProbeEvent {
            reason: "Unhealthy",
            message: unhealthy_message(kind, text),
        }),
        ProbeResult::Errored(text) => Some(ProbeEvent {
            reason: "Unhealthy",
            message: format!("{} probe errored: {text}", kind.as_str()),
        }),
    }
}

/// The `Killing` event's message for a container killed after `kind` failed:
/// `Container app failed liveness probe, will be restarted` (without the tail when the pod's
/// restartPolicy does not restart it).
pub fn killing_message(container: &str, kind: ProbeKind, will_restart: bool) -> String {
    let mut message = format!("Container {container} failed {} probe", kind.lowercase());
    if will_restart {
        message.push_str(", will be restarted");
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_texts_are_kubelets() {
        let failed = ProbeResult::Failure("HTTP probe failed with statuscode: 500".into());
        assert_eq!(
            probe_event(ProbeKind::Liveness, &failed),
            Some(ProbeEvent {
                reason: "Unhealthy",
                message: "Liveness probe failed: HTTP probe failed with statuscode: 500".into(),
            })
        );
        let warned = ProbeResult::Warning("Probe terminated redirects, Response body: ".into());
        assert!(warned.is_success());
        assert_eq!(
            probe_event(ProbeKind::Readiness, &warned).unwrap().message,
            "Readiness probe warning: Probe terminated redirects, Response body: "
        );
        assert_eq!(probe_event(ProbeKind::Startup, &ProbeResult::Success), None);
        let errored = ProbeResult::Errored("couldn't find port: web in container app".into());
        assert!(!errored.is_success());
        assert_eq!(
            probe_event(ProbeKind::Startup, &errored).unwrap().message,
            "Startup probe errored: couldn't find port: web in container app"
        );
        assert_eq!(
            killing_message("app", ProbeKind::Startup, true),
            "Container app failed startup probe, will be restarted"
        );
        assert_eq!(
            killing_message("app", ProbeKind::Liveness, false),
            "Container app failed liveness probe"
        );
    }
}
