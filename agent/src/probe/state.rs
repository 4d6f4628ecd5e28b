//! The probes of one container instance as kubelet's probe workers keep them: when each is
//! due, how results cross `successThreshold` / `failureThreshold`, and what the container's
//! `started` and `ready` are. Pure: the caller passes the time, so tests use a fake clock.
//!
//! Upstream's rules kept here:
//! - the first attempt is `initialDelaySeconds` after the container started, then every
//!   `periodSeconds` on that grid (a slow attempt skips the ticks it overran);
//! - the published result of readiness starts as failure, of liveness as success; startup is
//!   unknown, so the container is not started until its first success;
//! - liveness and readiness do not run until startup succeeded; startup then stops;
//! - a result is published once the same verdict came `successThreshold` (successes, always 1
//!   for liveness and startup) or `failureThreshold` (failures) times in a row;
//! - a published liveness or startup failure means kill and restart; every probe of this
//!   instance then stays on hold (the next instance gets a new [`ContainerProbes`]).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Probe};

use super::outcome::{ProbeAction, ProbeKind, ProbeResult};

const DEFAULT_PERIOD_SECONDS: i32 = 10;
const DEFAULT_SUCCESS_THRESHOLD: i32 = 1;
const DEFAULT_FAILURE_THRESHOLD: i32 = 3;

/// One probe of the instance and where it stands.
#[derive(Debug, Clone)]
struct ProbeSchedule {
    kind: ProbeKind,
    spec: Probe,
    period: Duration,
    success_threshold: u32,
    failure_threshold: u32,
    /// When the next attempt is due.
    next: Instant,
    /// The last attempt's verdict (success or not) and how many in a row gave it.
    last: Option<bool>,
    run: u32,
    /// The published result; `None` for startup before its first published one.
    published: Option<bool>,
}

impl ProbeSchedule {
    fn new(kind: ProbeKind, spec: &Probe, started_at: Instant) -> ProbeSchedule {
        let threshold = |value: Option<i32>, default: i32| {
            u32::try_from(value.unwrap_or(default)).unwrap_or(1).max(1)
        };
        ProbeSchedule {
            kind,
            period: seconds(spec.period_seconds, DEFAULT_PERIOD_SECONDS)
                .max(Duration::from_secs(1)),
            // The API rejects anything but 1 for liveness and startup; kubelet never sees it.
            success_threshold: match kind {
                ProbeKind::Readiness => {
                    threshold(spec.success_threshold, DEFAULT_SUCCESS_THRESHOLD)
                }
                ProbeKind::Liveness | ProbeKind::Startup => 1,
            },
            failure_threshold: threshold(spec.failure_threshold, DEFAULT_FAILURE_THRESHOLD),
            next: started_at + seconds(spec.initial_delay_seconds, 0),
            last: None,
            run: 0,
            published: match kind {
                ProbeKind::Readiness => Some(false),
                ProbeKind::Liveness => Some(true),
                ProbeKind::Startup => None,
            },
            spec: spec.clone(),
        }
    }
}

/// A probe field in seconds; negative values (rejected by the API) count as 0.
fn seconds(value: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(u64::try_from(value.unwrap_or(default)).unwrap_or(0))
}

/// The probes of one running container instance: create it when the instance starts, drop it
/// when the instance ends.
#[derive(Debug, Clone)]
pub struct ContainerProbes {
    /// In the order startup, liveness, readiness; only those the container has.
    probes: Vec<ProbeSchedule>,
    /// Set once a liveness or startup failure was published: kubelet stops probing an
    /// instance it is about to kill.
    on_hold: bool,
}

impl ContainerProbes {
    /// The probes of `container`, whose instance started at `started_at`.
    pub fn new(container: &Container, started_at: Instant) -> ContainerProbes {
        let probes = [
            (ProbeKind::Startup, &container.startup_probe),
            (ProbeKind::Liveness, &container.liveness_probe),
            (ProbeKind::Readiness, &container.readiness_probe),
        ]
        .into_iter()
        .filter_map(|(kind, spec)| {
            spec.as_ref()
                .map(|spec| ProbeSchedule::new(kind, spec, started_at))
        })
        .collect();
        ContainerProbes {
            probes,
            on_hold: false,
        }
    }

    fn find(&self, kind: ProbeKind) -> Option<&ProbeSchedule> {
        self.probes.iter().find(|p| p.kind == kind)
    }

    /// The spec of probe `kind`, to hand to [`run_probe`](super::run_probe).
    pub fn spec(&self, kind: ProbeKind) -> Option<&Probe> {
        self.find(kind).map(|p| &p.spec)
    }

    /// Whether the startup probe has succeeded (true when there is none).
    pub fn started(&self) -> bool {
        self.find(ProbeKind::Startup)
            .is_none_or(|p| p.published == Some(true))
    }

    /// The container's readiness: started, and the readiness probe's published result (true
    /// when there is none).
    pub fn ready(&self) -> bool {
        self.started()
            && self
                .find(ProbeKind::Readiness)
                .is_none_or(|p| p.published == Some(true))
    }

    /// Whether a liveness or startup failure was published: the instance must be killed and
    /// no probe of it runs any more.
    pub fn on_hold(&self) -> bool {
        self.on_hold
    }

    /// The probes that would run next, whatever the time: none on hold; startup alone until
    /// it succeeded; then liveness and readiness.
    fn active(&self) -> impl Iterator<Item = &ProbeSchedule> {
        let started = self.started();
        self.probes
            .iter()
            .filter(move |p| !self.on_hold && ((p.kind == ProbeKind::Startup) != started))
    }

    /// Which probes are due at `now`, in the order startup, liveness, readiness.
    pub fn due(&self, now: Instant) -> Vec<ProbeKind> {
        self.active()
            .filter(|p| p.next <= now)
            .map(|p| p.kind)
            .collect()
    }

    /// When the next probe is due (maybe already past); `None` when none will run.
    pub fn next_due(&self) -> Option<Instant> {
        self.active().map(|p| p.next).min()
    }

    /// Records the result of an attempt of probe `kind` that ended at `now`, and says what
    /// the worker must do. Results of probes the container does not have are ignored.
    pub fn record(&mut self, kind: ProbeKind, result: &ProbeResult, now: Instant) -> ProbeAction {
        if self.on_hold {
            return ProbeAction::None;
        }
        let Some(probe) = self.probes.iter_mut().find(|p| p.kind == kind) else {
            return ProbeAction::None;
        };
        // The next tick of the period grid strictly after `now`.
        while probe.next <= now {
            probe.next += probe.period;
        }
        let success = result.is_success();
        if probe.last == Some(success) {
            probe.run = probe.run.saturating_add(1);
        } else {
            probe.last = Some(success);
            probe.run = 1;
        }
        let threshold = if success {
            probe.success_threshold
        } else {
            probe.failure_threshold
        };
        if probe.run < threshold {
            return ProbeAction::None;
        }
        probe.published = Some(success);
        match (kind, result) {
            (ProbeKind::Liveness | ProbeKind::Startup, _) if !success => {
                self.on_hold = true;
                ProbeAction::Restart {
                    kind,
                    failure: result.text().unwrap_or_default().to_owned(),
                }
            }
            _ => ProbeAction::None,
        }
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
