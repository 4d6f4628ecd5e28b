//! The CronJob controller, as upstream's `cronjob_controllerv2`: at each time the
//! [`schedule`] names (in `timeZone`, else the controller's local zone) it creates a Job
//! `<cronjob>-<scheduled minutes since the epoch>` from `jobTemplate`, honouring `suspend`,
//! `concurrencyPolicy` (Allow / Forbid / Replace) and `startingDeadlineSeconds` (missed
//! starts: only the most recent one runs; more than 100 missed is `TooManyMissedTimes`),
//! tracks `status.active`, `lastScheduleTime` and `lastSuccessfulTime`, and deletes finished
//! Jobs beyond the history limits. The clock is injected ([`Clock`]) so the schedule logic is
//! tested without waiting.

pub mod schedule;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};
use serde_json::json;

use super::workload::{self, Error, Recorder};
use schedule::Schedule;

/// The annotation with a Job's scheduled time (RFC 3339 in the CronJob's zone).
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Missed start times beyond which upstream warns `TooManyMissedTimes`.
pub const MISSED_LIMIT: u64 = 100;

/// The controller's clock.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

struct Context {
    client: Client,
    recorder: Recorder,
    clock: Clock,
}

/// Runs the CronJob controller on the wall clock until its watch streams end.
pub async fn run(client: Client) {
    run_with_clock(client, Arc::new(Timestamp::now)).await;
}

/// Runs the CronJob controller with `clock` as its idea of now.
pub async fn run_with_clock(client: Client, clock: Clock) {
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), "cronjob-controller"),
        client: client.clone(),
        clock,
    });
    let controller = Controller::new(
        Api::<CronJob>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Job>::all(client), watcher::Config::default())
    .run(reconcile, workload::error_policy, context);
    workload::drain("cronjob controller", controller).await;
}

/// The start times missed since `earliest`, up to `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missed {
    /// The most recent one, which is the one that runs.
    pub most_recent: Timestamp,
    /// How many (estimated from the interval when there are more than [`MISSED_LIMIT`]).
    pub count: u64,
}

/// The start times after `earliest` that are not after `now` (upstream's
/// `mostRecentScheduleTime`): `None` when there is none yet.
pub fn missed(
    schedule: &Schedule,
    zone: &TimeZone,
    earliest: Timestamp,
    now: Timestamp,
) -> Option<Missed> {
    let first = schedule.next(earliest, zone).filter(|time| *time <= now)?;
    let mut most_recent = first;
    let mut count = 1;
    while let Some(next) = schedule.next(most_recent, zone).filter(|time| *time <= now) {
        most_recent = next;
        count += 1;
        if count > MISSED_LIMIT {
            return Some(many_missed(schedule, zone, first, now));
        }
    }
    Some(Missed { most_recent, count })
}

/// More than the limit missed: the count from the first interval, as upstream estimates it,
/// and the most recent time found by searching back from `now` in growing windows.
fn many_missed(schedule: &Schedule, zone: &TimeZone, first: Timestamp, now: Timestamp) -> Missed {
    let interval = schedule
        .next(first, zone)
        .map_or(1, |second| second.duration_since(first).as_secs().max(1));
    let elapsed = now.duration_since(first).as_secs().max(0);
    let count = u64::try_from(elapsed / interval + 1).unwrap_or(u64::MAX);
    let mut window = SignedDuration::from_mins(1);
    loop {
        let start = now.checked_sub(window).unwrap_or(first).max(first);
        if let Some(mut found) = schedule.next(start, zone).filter(|time| *time <= now) {
            while let Some(next) = schedule.next(found, zone).filter(|time| *time <= now) {
                found = next;
            }
            return Missed {
                most_recent: found,
                count,
            };
        }
        if start == first {
            return Missed {
                most_recent: first,
                count,
            };
        }
        window = window.saturating_mul(2);
    }
}

/// The name of the Job scheduled at `time`: `<cronjob>-<minutes since the epoch>`.
pub fn job_name(cronjob: &str, time: Timestamp) -> String {
    format!("{cronjob}-{}", time.as_second().div_euclid(60))
}

/// Finished Jobs to delete: the oldest beyond `limit` (by start time, as upstream).
pub fn beyond_limit(mut finished: Vec<&Job>, limit: i32) -> Vec<&Job> {
    let keep = usize::try_from(limit.max(0)).unwrap_or(0);
    finished.sort_by_key(|job| start_time(job));
    let excess = finished.len().saturating_sub(keep);
    finished.into_iter().take(excess).collect()
}

fn start_time(job: &Job) -> Option<Timestamp> {
    job.status
        .as_ref()
        .and_then(|status| status.start_time.as_ref())
        .or(job.metadata.creation_timestamp.as_ref())
        .map(|time| time.0)
}

/// The Job's finished condition type (`Complete` or `Failed`), if it finished.
fn finished_as(job: &Job) -> Option<String> {
    job.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.type_.clone())
}

async fn reconcile(cached: Arc<CronJob>, context: Arc<Context>) -> Result<Action, Error> {
    let client = &context.client;
    let Some((api, cronjob)) = workload::fresh(client, &*cached).await? else {
        return Ok(Action::await_change());
    };
    let now = (context.clock)();
    let namespace = cronjob.namespace().unwrap_or_default();
    let uid = cronjob.uid().unwrap_or_default();
    let spec = cronjob.spec.clone().unwrap_or_default();
    let status = cronjob.status.clone().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let jobs: Vec<Job> = jobs_api
        .list(&ListParams::default())
        .await
        .map_err(Error::api(format!("listing jobs in {namespace}")))?
        .items
        .into_iter()
        .filter(|job| workload::controlled_by(job, &uid))
        .collect();

    // Jobs the status lists as active that finished since.
    let was_active: Vec<String> = status
        .active
        .iter()
        .flatten()
        .filter_map(|reference| reference.uid.clone())
        .collect();
    let mut last_successful = status.last_successful_time.as_ref().map(|time| time.0);
    for job in &jobs {
        let Some(condition) = finished_as(job) else {
            continue;
        };
        if was_active.contains(&job.uid().unwrap_or_default()) {
            let message = format!(
                "Saw completed job: {}, condition: {condition}",
                job.name_any()
            );
            context
                .recorder
                .normal(&cronjob, "SawCompletedJob", message)
                .await;
        }
        if condition == "Complete"
            && let Some(completed) = job.status.as_ref().and_then(|s| s.completion_time.as_ref())
        {
            last_successful = Some(last_successful.map_or(completed.0, |t| t.max(completed.0)));
        }
    }
    let mut active: Vec<&Job> = jobs
        .iter()
        .filter(|job| finished_as(job).is_none())
        .collect();
    let mut last_schedule = status.last_schedule_time.as_ref().map(|time| time.0);
    let mut created: Option<Job> = None;
    let mut requeue = None;

    if cronjob.metadata.deletion_timestamp.is_none()
        && let Some((schedule, zone)) = prepare(&context, &cronjob).await
    {
        requeue = schedule
            .next(now, &zone)
            .map(|next| next.duration_since(now))
            .and_then(|left| Duration::try_from(left).ok())
            .map(|left| left + Duration::from_millis(100));
        if spec.suspend != Some(true) {
            let earliest = last_schedule
                .or(cronjob.metadata.creation_timestamp.as_ref().map(|t| t.0))
                .unwrap_or(now);
            created = start_job(
                &context,
                &cronjob,
                &jobs,
                &mut active,
                &schedule,
                &zone,
                earliest,
                now,
            )
            .await?;
            if let Some(job) = &created {
                last_schedule = scheduled_time(job).or(last_schedule);
            }
        }
    }

    let mut active_refs: Vec<_> = active
        .iter()
        .map(|job| workload::object_reference(*job))
        .collect();
    if let Some(job) = &created {
        active_refs.push(workload::object_reference(job));
    }
    workload::patch_status(
        &api,
        &cronjob,
        json!({
            "active": (!active_refs.is_empty()).then_some(active_refs),
            "lastScheduleTime": last_schedule.map(Time),
            "lastSuccessfulTime": last_successful.map(Time),
        }),
    )
    .await?;

    let finished: Vec<&Job> = jobs
        .iter()
        .filter(|job| finished_as(job).is_some())
        .collect();
    let (succeeded, failed): (Vec<&Job>, Vec<&Job>) = finished
        .into_iter()
        .partition(|job| finished_as(job).as_deref() == Some("Complete"));
    let mut old = beyond_limit(succeeded, spec.successful_jobs_history_limit.unwrap_or(3));
    old.extend(beyond_limit(
        failed,
        spec.failed_jobs_history_limit.unwrap_or(1),
    ));
    for job in old {
        delete_job(&context, &cronjob, job).await?;
    }
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// The parsed schedule and zone, or `None` after a warning event when either is invalid.
async fn prepare(context: &Context, cronjob: &CronJob) -> Option<(Schedule, TimeZone)> {
    let spec = cronjob.spec.clone().unwrap_or_default();
    let schedule = match Schedule::parse(&spec.schedule) {
        Ok(schedule) => schedule,
        Err(error) => {
            let message = format!("unparseable schedule: {:?} : {error}", spec.schedule);
            context
                .recorder
                .warning(cronjob, "UnparseableSchedule", message)
                .await;
            return None;
        }
    };
    let zone = match spec.time_zone.as_deref() {
        None => TimeZone::system(),
        Some(name) => match TimeZone::get(name) {
            Ok(zone) => zone,
            Err(error) => {
                let message = format!("invalid timeZone: {name:?}: {error}");
                context
                    .recorder
                    .warning(cronjob, "UnknownTimeZone", message)
                    .await;
                return None;
            }
        },
    };
    Some((schedule, zone))
}

/// Starts the Job of the most recent missed time, if it is due and allowed.
#[expect(
    clippy::too_many_arguments,
    reason = "one pass's state, read once by the caller"
)]
async fn start_job(
    context: &Context,
    cronjob: &CronJob,
    jobs: &[Job],
    active: &mut Vec<&Job>,
    schedule: &Schedule,
    zone: &TimeZone,
    earliest: Timestamp,
    now: Timestamp,
) -> Result<Option<Job>, Error> {
    let spec = cronjob.spec.clone().unwrap_or_default();
    let deadline = spec.starting_deadline_seconds;
    let earliest = match deadline {
        Some(seconds) => earliest.max(now - SignedDuration::from_secs(seconds)),
        None => earliest,
    };
    let Some(missed) = missed(schedule, zone, earliest, now) else {
        return Ok(None);
    };
    if missed.count > MISSED_LIMIT {
        let message = format!(
            "too many missed start times: {}. Set or decrease .spec.startingDeadlineSeconds or check clock skew",
            missed.count
        );
        context
            .recorder
            .warning(cronjob, "TooManyMissedTimes", message)
            .await;
    }
    let scheduled = missed.most_recent;
    if let Some(seconds) = deadline
        && scheduled + SignedDuration::from_secs(seconds) < now
    {
        let message = format!(
            "Missed scheduled time to start a job: {}",
            scheduled.strftime("%a, %d %b %Y %H:%M:%S %z")
        );
        context
            .recorder
            .warning(cronjob, "MissSchedule", message)
            .await;
        return Ok(None);
    }
    let name = job_name(&cronjob.name_any(), scheduled);
    if jobs.iter().any(|job| job.name_any() == name) {
        return Ok(None);
    }
    match spec.concurrency_policy.as_deref() {
        Some("Forbid") if !active.is_empty() => {
            let message = "Not starting job because prior execution is running and concurrency policy is Forbid";
            context
                .recorder
                .normal(cronjob, "JobAlreadyActive", message.into())
                .await;
            return Ok(None);
        }
        Some("Replace") => {
            for job in active.drain(..) {
                delete_job(context, cronjob, job).await?;
            }
        }
        _ => {}
    }
    let job = new_job(cronjob, &name, scheduled, zone);
    let jobs_api: Api<Job> = Api::namespaced(
        context.client.clone(),
        &cronjob.namespace().unwrap_or_default(),
    );
    match jobs_api.create(&PostParams::default(), &job).await {
        Ok(created) => {
            let message = format!("Created job {name}");
            context
                .recorder
                .normal(cronjob, "SuccessfulCreate", message)
                .await;
            Ok(Some(created))
        }
        // Created by an earlier pass whose status write was lost: nothing to do.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
        Err(source) => {
            let message = format!("Error creating job: {}", source);
            context
                .recorder
                .warning(cronjob, "FailedCreate", message)
                .await;
            Err(Error::Api {
                action: format!("creating job {name}"),
                source,
            })
        }
    }
}

/// The Job for `scheduled`, from the template (upstream's `getJobFromTemplate2`).
fn new_job(cronjob: &CronJob, name: &str, scheduled: Timestamp, zone: &TimeZone) -> Job {
    let spec = cronjob.spec.clone().unwrap_or_default();
    let template = spec.job_template;
    let template_metadata = template.metadata.unwrap_or_default();
    let mut annotations = template_metadata.annotations.unwrap_or_default();
    annotations.insert(
        SCHEDULED_TIMESTAMP.into(),
        scheduled
            .to_zoned(zone.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string(),
    );
    Job {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: cronjob.namespace(),
            labels: template_metadata.labels.or_else(|| Some(BTreeMap::new())),
            annotations: Some(annotations),
            owner_references: Some(vec![workload::controller_reference(cronjob)]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

fn scheduled_time(job: &Job) -> Option<Timestamp> {
    let text = job.annotations().get(SCHEDULED_TIMESTAMP)?;
    text.parse::<k8s_openapi::jiff::Zoned>()
        .map(|zoned| zoned.timestamp())
        .or_else(|_| text.parse::<Timestamp>())
        .ok()
}

async fn delete_job(context: &Context, cronjob: &CronJob, job: &Job) -> Result<(), Error> {
    let namespace = job.namespace().unwrap_or_default();
    let api: Api<Job> = Api::namespaced(context.client.clone(), &namespace);
    match api
        .delete(&job.name_any(), &DeleteParams::background())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_not_found() => return Ok(()),
        Err(source) => {
            return Err(Error::Api {
                action: format!("deleting job {namespace}/{}", job.name_any()),
                source,
            });
        }
    }
    let message = format!("Deleted job {}", job.name_any());
    context
        .recorder
        .normal(cronjob, "SuccessfulDelete", message)
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("a valid timestamp")
    }

    fn every_minute() -> Schedule {
        Schedule::parse("*/1 * * * *").expect("valid")
    }

    #[test]
    fn nothing_is_due_before_the_first_time() {
        let found = missed(
            &every_minute(),
            &TimeZone::UTC,
            at("2026-11-25T10:00:10Z"),
            at("2026-11-25T10:00:50Z"),
        );
        assert_eq!(found, None);
    }

    #[test]
    fn the_most_recent_missed_time_runs() {
        let found = missed(
            &every_minute(),
            &TimeZone::UTC,
            at("2026-11-25T10:00:10Z"),
            at("2026-11-25T10:03:05Z"),
        );
        assert_eq!(
            found,
            Some(Missed {
                most_recent: at("2026-11-25T10:03:00Z"),
                count: 3
            })
        );
    }

    #[test]
    fn more_than_a_hundred_missed_are_counted_and_the_latest_found() {
        let found = missed(
            &every_minute(),
            &TimeZone::UTC,
            at("2026-11-20T00:00:00Z"),
            at("2026-11-25T10:03:05Z"),
        )
        .expect("missed times");
        assert_eq!(found.most_recent, at("2026-11-25T10:03:00Z"));
        assert_eq!(found.count, 5 * 24 * 60 + 10 * 60 + 3);
        assert!(found.count > MISSED_LIMIT);
    }

    #[test]
    fn hourly_schedules_with_many_misses_find_the_latest_hour() {
        let hourly = Schedule::parse("@hourly").expect("valid");
        let found = missed(
            &hourly,
            &TimeZone::UTC,
            at("2026-01-01T00:00:00Z"),
            at("2026-11-25T10:30:00Z"),
        )
        .expect("missed times");
        assert_eq!(found.most_recent, at("2026-11-25T10:00:00Z"));
    }

    #[test]
    fn job_names_are_minutes_since_the_epoch() {
        assert_eq!(
            job_name("hello", at("2026-11-25T10:03:00Z")),
            "hello-29926683"
        );
        assert_eq!(at("2026-11-25T10:03:00Z").as_second() / 60, 29_926_683);
    }

    #[test]
    fn the_oldest_finished_jobs_beyond_the_limit_go() {
        let job = |name: &str, start: &str| Job {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(at(start))),
                ..ObjectMeta::default()
            },
            ..Job::default()
        };
        let jobs = [
            job("c", "2026-11-25T10:03:00Z"),
            job("a", "2026-11-25T10:01:00Z"),
            job("b", "2026-11-25T10:02:00Z"),
        ];
        let old: Vec<String> = beyond_limit(jobs.iter().collect(), 1)
            .into_iter()
            .map(|job| job.name_any())
            .collect();
        assert_eq!(old, ["a", "b"]);
        assert!(beyond_limit(jobs.iter().collect(), 3).is_empty());
    }
}
