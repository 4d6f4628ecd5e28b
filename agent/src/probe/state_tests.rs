//! The probe schedule and thresholds against a fake clock (instants built from one origin).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Container;

use super::ContainerProbes;
use crate::probe::outcome::{ProbeAction, ProbeKind, ProbeResult};

fn container(yaml: &str) -> Container {
    serde_yaml_ng::from_str(yaml).expect("container yaml")
}

fn at(origin: Instant, seconds: u64) -> Instant {
    origin + Duration::from_secs(seconds)
}

fn fail() -> ProbeResult {
    ProbeResult::Failure("HTTP probe failed with statuscode: 500".into())
}

#[test]
fn no_probes_means_started_ready_and_nothing_due() {
    let t0 = Instant::now();
    let probes = ContainerProbes::new(&container("{name: c}"), t0);
    assert!(probes.started());
    assert!(probes.ready());
    assert!(probes.due(at(t0, 100)).is_empty());
    assert_eq!(probes.next_due(), None);
}

#[test]
fn defaults_run_at_start_then_every_ten_seconds_and_restart_after_three_failures() {
    let t0 = Instant::now();
    let mut probes = ContainerProbes::new(
        &container("{name: c, livenessProbe: {tcpSocket: {port: 80}}}"),
        t0,
    );
    assert!(probes.ready(), "liveness starts as success");
    assert_eq!(probes.due(t0), [ProbeKind::Liveness], "initial delay 0");
    assert_eq!(
        probes.record(ProbeKind::Liveness, &fail(), t0),
        ProbeAction::None
    );
    assert_eq!(probes.next_due(), Some(at(t0, 10)), "period 10");
    assert!(probes.due(at(t0, 9)).is_empty());
    assert_eq!(
        probes.record(ProbeKind::Liveness, &fail(), at(t0, 10)),
        ProbeAction::None
    );
    let action = probes.record(ProbeKind::Liveness, &fail(), at(t0, 20));
    assert_eq!(
        action,
        ProbeAction::Restart {
            kind: ProbeKind::Liveness,
            failure: "HTTP probe failed with statuscode: 500".into()
        },
        "failureThreshold 3"
    );
    assert!(probes.on_hold());
    assert!(
        probes.due(at(t0, 1000)).is_empty(),
        "no probing of a doomed instance"
    );
    assert_eq!(probes.next_due(), None);
}

#[test]
fn initial_delay_and_period_set_the_grid_and_slow_attempts_skip_ticks() {
    let t0 = Instant::now();
    let c = container(
        "{name: c, livenessProbe: {exec: {command: [x]}, initialDelaySeconds: 5, periodSeconds: 3}}",
    );
    let mut probes = ContainerProbes::new(&c, t0);
    assert!(probes.due(t0).is_empty());
    assert!(probes.due(at(t0, 4)).is_empty());
    assert_eq!(probes.next_due(), Some(at(t0, 5)));
    assert_eq!(probes.due(at(t0, 5)), [ProbeKind::Liveness]);
    probes.record(ProbeKind::Liveness, &ProbeResult::Success, at(t0, 5));
    assert_eq!(probes.next_due(), Some(at(t0, 8)));
    // An attempt that ends at 15 (a long timeout) skips the ticks at 11 and 14.
    probes.record(ProbeKind::Liveness, &ProbeResult::Success, at(t0, 15));
    assert_eq!(probes.next_due(), Some(at(t0, 17)));
}

#[test]
fn failures_must_come_in_a_row() {
    let t0 = Instant::now();
    let c = container("{name: c, livenessProbe: {exec: {command: [x]}, failureThreshold: 2}}");
    let mut probes = ContainerProbes::new(&c, t0);
    assert_eq!(
        probes.record(ProbeKind::Liveness, &fail(), t0),
        ProbeAction::None
    );
    probes.record(ProbeKind::Liveness, &ProbeResult::Success, at(t0, 10));
    assert_eq!(
        probes.record(ProbeKind::Liveness, &fail(), at(t0, 20)),
        ProbeAction::None
    );
    assert!(matches!(
        probes.record(ProbeKind::Liveness, &fail(), at(t0, 30)),
        ProbeAction::Restart {
            kind: ProbeKind::Liveness,
            ..
        }
    ));
}

#[test]
fn readiness_starts_failed_and_needs_its_success_threshold() {
    let t0 = Instant::now();
    let c = container(
        "{name: c, readinessProbe: {tcpSocket: {port: 80}, periodSeconds: 2, successThreshold: 2, failureThreshold: 2}}",
    );
    let mut probes = ContainerProbes::new(&c, t0);
    assert!(probes.started());
    assert!(!probes.ready(), "readiness starts as failure");
    probes.record(ProbeKind::Readiness, &ProbeResult::Success, t0);
    assert!(!probes.ready(), "one success of two");
    let warning = ProbeResult::Warning("Probe terminated redirects, Response body: ".into());
    probes.record(ProbeKind::Readiness, &warning, at(t0, 2));
    assert!(probes.ready(), "a warning counts as a success");
    probes.record(ProbeKind::Readiness, &fail(), at(t0, 4));
    assert!(probes.ready(), "one failure of two");
    let action = probes.record(ProbeKind::Readiness, &fail(), at(t0, 6));
    assert_eq!(action, ProbeAction::None, "readiness never restarts");
    assert!(!probes.ready());
    assert!(!probes.on_hold());
    assert_eq!(
        probes.due(at(t0, 8)),
        [ProbeKind::Readiness],
        "and keeps probing"
    );
    probes.record(ProbeKind::Readiness, &ProbeResult::Success, at(t0, 8));
    assert!(!probes.ready(), "two successes in a row again");
    probes.record(ProbeKind::Readiness, &ProbeResult::Success, at(t0, 10));
    assert!(probes.ready());
}

#[test]
fn startup_gates_liveness_and_readiness_then_stops() {
    let t0 = Instant::now();
    let c = container(
        "{name: c, startupProbe: {exec: {command: [s]}, periodSeconds: 1, failureThreshold: 30}, \
         livenessProbe: {exec: {command: [l]}, periodSeconds: 5}, \
         readinessProbe: {exec: {command: [r]}, periodSeconds: 5}}",
    );
    let mut probes = ContainerProbes::new(&c, t0);
    assert!(!probes.started(), "startup is unknown until it succeeds");
    assert!(!probes.ready());
    assert_eq!(
        probes.due(at(t0, 7)),
        [ProbeKind::Startup],
        "the others wait"
    );
    assert_eq!(
        probes.record(ProbeKind::Startup, &fail(), t0),
        ProbeAction::None
    );
    assert_eq!(probes.next_due(), Some(at(t0, 1)));
    probes.record(ProbeKind::Startup, &ProbeResult::Success, at(t0, 1));
    assert!(probes.started());
    assert!(!probes.ready(), "readiness still has to pass");
    // Liveness and readiness were due since t0: they run at once; startup never again.
    assert_eq!(
        probes.due(at(t0, 1)),
        [ProbeKind::Liveness, ProbeKind::Readiness]
    );
    assert!(!probes.due(at(t0, 100)).contains(&ProbeKind::Startup));
    probes.record(ProbeKind::Readiness, &ProbeResult::Success, at(t0, 1));
    assert!(probes.ready());
    assert_eq!(
        probes.spec(ProbeKind::Liveness).unwrap().period_seconds,
        Some(5)
    );
}

#[test]
fn startup_failures_restart_and_success_threshold_is_one_for_it() {
    let t0 = Instant::now();
    let c = container(
        "{name: c, startupProbe: {exec: {command: [s]}, failureThreshold: 2, successThreshold: 3}}",
    );
    let mut probes = ContainerProbes::new(&c, t0);
    probes.record(ProbeKind::Startup, &fail(), t0);
    let action = probes.record(ProbeKind::Startup, &fail(), at(t0, 10));
    assert!(matches!(
        action,
        ProbeAction::Restart {
            kind: ProbeKind::Startup,
            ..
        }
    ));
    let mut probes = ContainerProbes::new(&c, t0);
    probes.record(ProbeKind::Startup, &ProbeResult::Success, t0);
    assert!(
        probes.started(),
        "successThreshold is 1 for startup whatever the spec says"
    );
}

#[test]
fn results_of_missing_probes_are_ignored() {
    let t0 = Instant::now();
    let mut probes = ContainerProbes::new(
        &container("{name: c, readinessProbe: {exec: {command: [r]}}}"),
        t0,
    );
    assert_eq!(
        probes.record(ProbeKind::Liveness, &fail(), t0),
        ProbeAction::None
    );
    assert!(!probes.on_hold());
}
