//! The Job controller's decisions as pure functions: completed-index sets, how many pods
//! should be active, the pod failure back-off, and the finished conditions.

use std::collections::BTreeSet;

use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// The first delay after a pod failure (upstream's `DefaultJobPodFailureBackOff`).
pub const BACKOFF_BASE: SignedDuration = SignedDuration::from_secs(10);
/// The longest delay (upstream's `MaxJobPodFailureBackOff`).
pub const BACKOFF_MAX: SignedDuration = SignedDuration::from_secs(600);

/// Parses `status.completedIndexes` (`"1,3-5"`); malformed pieces are skipped, as upstream.
pub fn parse_indexes(text: &str) -> BTreeSet<i32> {
    let mut indexes = BTreeSet::new();
    for piece in text.split(',').filter(|piece| !piece.is_empty()) {
        match piece.split_once('-') {
            Some((first, last)) => {
                if let (Ok(first), Ok(last)) = (first.parse::<i32>(), last.parse::<i32>()) {
                    indexes.extend(first..=last);
                }
            }
            None => {
                if let Ok(index) = piece.parse() {
                    indexes.insert(index);
                }
            }
        }
    }
    indexes
}

/// Formats an index set as `status.completedIndexes` spells it: ascending, runs as ranges.
pub fn format_indexes(indexes: &BTreeSet<i32>) -> String {
    let mut pieces = Vec::new();
    let mut run: Option<(i32, i32)> = None;
    for &index in indexes {
        run = match run {
            Some((first, last)) if index == last + 1 => Some((first, index)),
            Some(done) => {
                pieces.push(format_run(done));
                Some((index, index))
            }
            None => Some((index, index)),
        };
    }
    if let Some(done) = run {
        pieces.push(format_run(done));
    }
    pieces.join(",")
}

fn format_run((first, last): (i32, i32)) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}-{last}")
    }
}

/// How many pods should be active for a NonIndexed Job with `succeeded` completions so far.
pub fn wanted_active(parallelism: i32, completions: Option<i32>, succeeded: i32) -> i32 {
    match completions {
        Some(completions) => parallelism.min(completions - succeeded).max(0),
        // Without completions the Job is done once any pod succeeded: start no more.
        None if succeeded > 0 => 0,
        None => parallelism.max(0),
    }
}

/// The indexes an Indexed Job still needs pods for: not completed, not held by an active pod.
pub fn missing_indexes(
    completions: i32,
    completed: &BTreeSet<i32>,
    active: &BTreeSet<i32>,
) -> Vec<i32> {
    (0..completions)
        .filter(|index| !completed.contains(index) && !active.contains(index))
        .collect()
}

/// The delay before new pods after `failures` consecutive failed pods (10 s doubling, capped).
pub fn backoff_delay(failures: u32) -> SignedDuration {
    if failures == 0 {
        return SignedDuration::ZERO;
    }
    let factor = 1_i64 << failures.saturating_sub(1).min(16);
    let delay = SignedDuration::from_secs(BACKOFF_BASE.as_secs().saturating_mul(factor));
    delay.min(BACKOFF_MAX)
}

/// When a pod finished: its containers' latest `finishedAt`, else its deletion time, else
/// when it was created.
pub fn finish_time(pod: &Pod) -> Option<Timestamp> {
    let status = pod.status.as_ref();
    let terminated = status
        .and_then(|status| status.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|container| {
            container
                .state
                .as_ref()?
                .terminated
                .as_ref()?
                .finished_at
                .as_ref()
        })
        .map(|time| time.0)
        .max();
    terminated
        .or_else(|| pod.metadata.deletion_timestamp.as_ref().map(|time| time.0))
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|time| time.0))
}

/// Whether the Job has a condition of `type_` that is true.
pub fn has_condition(job: &Job, type_: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|condition| condition.type_ == type_ && condition.status == "True")
}

/// `conditions` with `type_` set true (kept as is when it already is).
pub fn with_condition(
    mut conditions: Vec<JobCondition>,
    type_: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> Vec<JobCondition> {
    if let Some(existing) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if existing.status != "True" {
            existing.status = "True".into();
            existing.reason = Some(reason.into());
            existing.message = Some(message.into());
            existing.last_transition_time = Some(Time(now));
            existing.last_probe_time = Some(Time(now));
        }
        return conditions;
    }
    conditions.push(JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    });
    conditions
}

/// Why a Job ends, and the wording upstream gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Complete,
    BackoffLimitExceeded,
    DeadlineExceeded,
}

impl Outcome {
    /// The interim condition (`SuccessCriteriaMet` / `FailureTarget`) and the final one.
    pub fn conditions(self) -> (&'static str, &'static str) {
        match self {
            Self::Complete => ("SuccessCriteriaMet", "Complete"),
            _ => ("FailureTarget", "Failed"),
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Self::Complete => "CompletionsReached",
            Self::BackoffLimitExceeded => "BackoffLimitExceeded",
            Self::DeadlineExceeded => "DeadlineExceeded",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Self::Complete => "Reached expected number of succeeded pods",
            Self::BackoffLimitExceeded => "Job has reached the specified backoff limit",
            Self::DeadlineExceeded => "Job was active longer than specified deadline",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_round_trip_with_ranges() {
        let set = parse_indexes("0,2-4,7");
        assert_eq!(set, BTreeSet::from([0, 2, 3, 4, 7]));
        assert_eq!(format_indexes(&set), "0,2-4,7");
        assert_eq!(format_indexes(&BTreeSet::new()), "");
        assert_eq!(parse_indexes(""), BTreeSet::new());
        assert_eq!(format_indexes(&BTreeSet::from([1, 2])), "1-2");
    }

    #[test]
    fn wanted_active_respects_parallelism_and_remaining_completions() {
        assert_eq!(wanted_active(2, Some(5), 0), 2);
        assert_eq!(wanted_active(2, Some(5), 4), 1);
        assert_eq!(wanted_active(2, Some(5), 5), 0);
        assert_eq!(wanted_active(3, None, 0), 3);
        assert_eq!(wanted_active(3, None, 1), 0);
    }

    #[test]
    fn missing_indexes_skip_completed_and_active() {
        let missing = missing_indexes(5, &BTreeSet::from([0, 3]), &BTreeSet::from([1]));
        assert_eq!(missing, vec![2, 4]);
    }

    #[test]
    fn backoff_doubles_from_ten_seconds_up_to_the_cap() {
        assert_eq!(backoff_delay(0), SignedDuration::ZERO);
        assert_eq!(backoff_delay(1), SignedDuration::from_secs(10));
        assert_eq!(backoff_delay(2), SignedDuration::from_secs(20));
        assert_eq!(backoff_delay(3), SignedDuration::from_secs(40));
        assert_eq!(backoff_delay(30), BACKOFF_MAX);
    }

    #[test]
    fn conditions_are_set_once() {
        let now = Timestamp::UNIX_EPOCH;
        let conditions = with_condition(Vec::new(), "Complete", "CompletionsReached", "m", now);
        let again = with_condition(conditions.clone(), "Complete", "Other", "x", now);
        assert_eq!(conditions, again);
        assert_eq!(again.len(), 1);
    }
}
