//! Cron schedules as upstream's CronJob controller reads them (`robfig/cron`'s
//! `ParseStandard`): five fields (minute, hour, day of month, month, day of week) of `*`,
//! `?`, values, names (`JAN`, `MON`), ranges, steps and lists; the descriptors `@yearly`,
//! `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly` and `@every
//! <duration>`. Times are evaluated in a time zone (the CronJob's `timeZone`).

use k8s_openapi::jiff::civil::{Date, DateTime, Time};
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{SignedDuration, Timestamp, ToSpan as _};

/// Why a schedule does not parse (wording after robfig/cron's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("expected exactly 5 fields, found {found}: {spec}")]
    FieldCount { found: usize, spec: String },
    #[error("failed to parse int from {text}")]
    NotANumber { text: String },
    #[error("beginning of range ({value}) below minimum ({min}): {text}")]
    BelowMinimum { value: u32, min: u32, text: String },
    #[error("end of range ({value}) above maximum ({max}): {text}")]
    AboveMaximum { value: u32, max: u32, text: String },
    #[error("beginning of range ({start}) beyond end of range ({end}): {text}")]
    Backwards { start: u32, end: u32, text: String },
    #[error("step of range should be a positive number: {text}")]
    Step { text: String },
    #[error("unrecognized descriptor: {text}")]
    Descriptor { text: String },
    #[error("failed to parse duration {text}")]
    Duration { text: String },
    #[error("cannot use TZ or CRON_TZ in schedule, use timeZone field instead")]
    TimeZoneInSchedule,
}

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Bit sets of the matching values of each field.
    Fields(Fields),
    /// `@every <duration>`: a constant delay (whole seconds, at least one).
    Every(SignedDuration),
}

/// The matching values of a five-field schedule, one bit per value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields {
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    /// The day-of-month or day-of-week field was `*` / `?`: days must match both fields;
    /// otherwise either (cron's rule).
    any_day: bool,
}

struct Bounds {
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: Bounds = Bounds {
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Bounds = Bounds {
    min: 0,
    max: 23,
    names: &[],
};
const DAY_OF_MONTH: Bounds = Bounds {
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Bounds = Bounds {
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const DAY_OF_WEEK: Bounds = Bounds {
    min: 0,
    max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

/// How far ahead `next` looks before giving up (robfig/cron's five years).
const SEARCH_YEARS: i16 = 5;

impl Schedule {
    /// Parses a schedule.
    pub fn parse(spec: &str) -> Result<Self, ScheduleError> {
        let spec = spec.trim();
        if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
            return Err(ScheduleError::TimeZoneInSchedule);
        }
        if let Some(descriptor) = spec.strip_prefix('@') {
            return match descriptor {
                "yearly" | "annually" => Self::parse("0 0 1 1 *"),
                "monthly" => Self::parse("0 0 1 * *"),
                "weekly" => Self::parse("0 0 * * 0"),
                "daily" | "midnight" => Self::parse("0 0 * * *"),
                "hourly" => Self::parse("0 * * * *"),
                _ => match descriptor.strip_prefix("every ") {
                    Some(duration) => parse_every(duration.trim()),
                    None => Err(ScheduleError::Descriptor { text: spec.into() }),
                },
            };
        }
        let fields: Vec<&str> = spec.split_whitespace().collect();
        let [minute, hour, day_of_month, month, day_of_week] = fields[..] else {
            return Err(ScheduleError::FieldCount {
                found: fields.len(),
                spec: spec.into(),
            });
        };
        let (days_of_month, dom_star) = parse_field(day_of_month, &DAY_OF_MONTH)?;
        let (days_of_week, dow_star) = parse_field(day_of_week, &DAY_OF_WEEK)?;
        Ok(Self::Fields(Fields {
            minutes: parse_field(minute, &MINUTE)?.0,
            hours: parse_field(hour, &HOUR)?.0,
            days_of_month,
            months: parse_field(month, &MONTH)?.0,
            days_of_week,
            any_day: dom_star || dow_star,
        }))
    }

    /// The first activation strictly after `after`, in `zone`; `None` when there is none
    /// within five years (such as `0 0 30 2 *`).
    pub fn next(&self, after: Timestamp, zone: &TimeZone) -> Option<Timestamp> {
        match self {
            Self::Every(delay) => {
                let whole = Timestamp::from_second(after.as_second()).ok()?;
                whole.checked_add(*delay).ok()
            }
            Self::Fields(fields) => fields.next(after, zone),
        }
    }
}

impl Fields {
    fn next(&self, after: Timestamp, zone: &TimeZone) -> Option<Timestamp> {
        let start = after.to_zoned(zone.clone()).datetime();
        let mut at = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        let last_year = start.year().saturating_add(SEARCH_YEARS);
        while at.year() <= last_year {
            if !bit(self.months, at.month()) {
                at = midnight(at.date().first_of_month().checked_add(1.month()).ok()?);
            } else if !self.day_matches(at.date()) {
                at = midnight(at.date().tomorrow().ok()?);
            } else if !bit(self.hours, at.hour()) {
                at = at
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
            } else if !bit(self.minutes, at.minute()) {
                at = at.checked_add(1.minute()).ok()?;
            } else {
                // A time skipped by a DST change maps forward; one repeated maps to its
                // first occurrence, which may not be after `after`.
                let found = zone.to_ambiguous_zoned(at).compatible().ok()?.timestamp();
                if found > after {
                    return Some(found);
                }
                at = at.checked_add(1.minute()).ok()?;
            }
        }
        None
    }

    fn day_matches(&self, date: Date) -> bool {
        let day_of_month = bit(self.days_of_month, date.day());
        let weekday = date.weekday().to_sunday_zero_offset();
        let day_of_week = bit(self.days_of_week, weekday);
        if self.any_day {
            day_of_month && day_of_week
        } else {
            day_of_month || day_of_week
        }
    }
}

fn midnight(date: Date) -> DateTime {
    date.to_datetime(Time::midnight())
}

fn bit(set: u64, value: impl Into<i64>) -> bool {
    u32::try_from(value.into())
        .ok()
        .filter(|value| *value < 64)
        .is_some_and(|value| set & (1 << value) != 0)
}

/// One field: a comma-separated list of ranges; true when it was `*` or `?` unstepped.
fn parse_field(field: &str, bounds: &Bounds) -> Result<(u64, bool), ScheduleError> {
    let mut set = 0;
    let mut star = false;
    for range in field.split(',') {
        let (bits, range_star) = parse_range(range, bounds)?;
        set |= bits;
        star |= range_star;
    }
    Ok((set, star))
}

fn parse_range(text: &str, bounds: &Bounds) -> Result<(u64, bool), ScheduleError> {
    let (range, step) = match text.split_once('/') {
        Some((range, step)) => (range, Some(step)),
        None => (text, None),
    };
    let (mut start, mut end, mut star) = if range == "*" || range == "?" {
        (bounds.min, bounds.max, true)
    } else {
        match range.split_once('-') {
            Some((low, high)) => (value(low, bounds)?, value(high, bounds)?, false),
            None => {
                let single = value(range, bounds)?;
                (single, single, false)
            }
        }
    };
    let step = match step {
        None => 1,
        Some(step) => {
            let step: u32 = step
                .parse()
                .map_err(|_| ScheduleError::Step { text: text.into() })?;
            if step == 0 {
                return Err(ScheduleError::Step { text: text.into() });
            }
            // `N/step` means `N-max/step`.
            if !range.contains('-') && !star {
                end = bounds.max;
            }
            if step > 1 {
                star = false;
            }
            step
        }
    };
    if start < bounds.min {
        return Err(ScheduleError::BelowMinimum {
            value: start,
            min: bounds.min,
            text: text.into(),
        });
    }
    if end > bounds.max {
        return Err(ScheduleError::AboveMaximum {
            value: end,
            max: bounds.max,
            text: text.into(),
        });
    }
    if start > end {
        return Err(ScheduleError::Backwards {
            start,
            end,
            text: text.into(),
        });
    }
    let mut bits = 0;
    while start <= end {
        bits |= 1 << start;
        start += step;
    }
    Ok((bits, star))
}

fn value(text: &str, bounds: &Bounds) -> Result<u32, ScheduleError> {
    let lower = text.to_ascii_lowercase();
    if let Some(position) = bounds.names.iter().position(|name| *name == lower) {
        return Ok(bounds.min + u32::try_from(position).unwrap_or(0));
    }
    text.parse()
        .map_err(|_| ScheduleError::NotANumber { text: text.into() })
}

/// `@every` durations as Go spells them (`1h30m`, `90s`, `5m`), rounded down to seconds.
fn parse_every(text: &str) -> Result<Schedule, ScheduleError> {
    let error = || ScheduleError::Duration { text: text.into() };
    let mut seconds: i64 = 0;
    let mut number = String::new();
    for character in text.chars() {
        if character.is_ascii_digit() {
            number.push(character);
            continue;
        }
        let unit = match character {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(error()),
        };
        let amount: i64 = number.parse().map_err(|_| error())?;
        seconds = seconds.saturating_add(amount.saturating_mul(unit));
        number.clear();
    }
    if !number.is_empty() || seconds <= 0 {
        return Err(error());
    }
    Ok(Schedule::Every(SignedDuration::from_secs(seconds)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("a valid timestamp")
    }

    fn next(spec: &str, after: &str) -> String {
        Schedule::parse(spec)
            .expect("a valid schedule")
            .next(at(after), &TimeZone::UTC)
            .map(|time| time.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn every_minute_and_steps() {
        assert_eq!(
            next("*/1 * * * *", "2026-11-25T10:00:30Z"),
            "2026-11-25T10:01:00Z"
        );
        assert_eq!(
            next("* * * * *", "2026-11-25T10:00:00Z"),
            "2026-11-25T10:01:00Z"
        );
        assert_eq!(
            next("*/15 * * * *", "2026-11-25T10:16:00Z"),
            "2026-11-25T10:30:00Z"
        );
        assert_eq!(
            next("5/20 * * * *", "2026-11-25T10:26:00Z"),
            "2026-11-25T10:45:00Z"
        );
        assert_eq!(
            next("0 */6 * * *", "2026-11-25T19:00:00Z"),
            "2026-11-26T00:00:00Z"
        );
    }

    #[test]
    fn ranges_lists_and_names() {
        // Weekdays at 09:30; 2026-11-28 is a Saturday.
        assert_eq!(
            next("30 9 * * MON-FRI", "2026-11-27T10:00:00Z"),
            "2026-11-30T09:30:00Z"
        );
        assert_eq!(
            next("0 0 1 jan,Jul *", "2026-11-25T00:00:00Z"),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(
            next("0 12 1-3 * *", "2026-11-25T00:00:00Z"),
            "2026-12-01T12:00:00Z"
        );
    }

    #[test]
    fn day_of_month_or_day_of_week_when_both_are_restricted() {
        // The 1st or any Sunday: 2026-11-29 is a Sunday.
        assert_eq!(
            next("0 0 1 * 0", "2026-11-25T00:00:00Z"),
            "2026-11-29T00:00:00Z"
        );
        // Both restricted by `*` in one of them: both must match.
        assert_eq!(
            next("0 0 * * 0", "2026-11-25T00:00:00Z"),
            "2026-11-29T00:00:00Z"
        );
    }

    #[test]
    fn descriptors() {
        assert_eq!(
            next("@hourly", "2026-11-25T10:00:00Z"),
            "2026-11-25T11:00:00Z"
        );
        assert_eq!(
            next("@daily", "2026-11-25T10:00:00Z"),
            "2026-11-26T00:00:00Z"
        );
        assert_eq!(
            next("@weekly", "2026-11-25T10:00:00Z"),
            "2026-11-29T00:00:00Z"
        );
        assert_eq!(
            next("@monthly", "2026-11-25T10:00:00Z"),
            "2026-12-01T00:00:00Z"
        );
        assert_eq!(
            next("@yearly", "2026-11-25T10:00:00Z"),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(
            next("@every 1h30m", "2026-11-25T10:00:10.5Z"),
            "2026-11-25T11:30:10Z"
        );
    }

    #[test]
    fn time_zones() {
        let zone = TimeZone::get("America/New_York").expect("the tz database");
        let schedule = Schedule::parse("0 9 * * *").expect("valid");
        // 09:00 in New York in November (EST, UTC-5) is 14:00 UTC.
        let found = schedule.next(at("2026-11-25T12:00:00Z"), &zone);
        assert_eq!(
            found.map(|t| t.to_string()).as_deref(),
            Some("2026-11-25T14:00:00Z")
        );
    }

    #[test]
    fn impossible_dates_have_no_next_time() {
        assert_eq!(next("0 0 30 2 *", "2026-01-01T00:00:00Z"), "");
    }

    #[test]
    fn errors_name_the_problem() {
        let error = |spec: &str| Schedule::parse(spec).expect_err(spec).to_string();
        assert_eq!(
            error("* * * *"),
            "expected exactly 5 fields, found 4: * * * *"
        );
        assert_eq!(
            error("60 * * * *"),
            "end of range (60) above maximum (59): 60"
        );
        assert_eq!(
            error("* * 0 * *"),
            "beginning of range (0) below minimum (1): 0"
        );
        assert_eq!(
            error("*/0 * * * *"),
            "step of range should be a positive number: */0"
        );
        assert_eq!(error("x * * * *"), "failed to parse int from x");
        assert_eq!(error("* * * * 7"), "end of range (7) above maximum (6): 7");
        assert_eq!(
            error("@fortnightly"),
            "unrecognized descriptor: @fortnightly"
        );
        assert!(error("TZ=UTC * * * * *").contains("timeZone"));
    }
}
