//! Reading CRI-format container logs back as `kubectl logs` shows them: partial (`P`) lines
//! joined, optional timestamps, `tailLines`, `sinceSeconds`, `limitBytes`, and which file is
//! the current and which the previous instance's.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CriError {
    #[error("invalid {name}: {value:?} is not an integer")]
    InvalidNumber { name: &'static str, value: String },
    #[error("invalid {name}: {value}: must be {bound}")]
    OutOfRange {
        name: &'static str,
        value: i64,
        bound: &'static str,
    },
    #[error("invalid sinceTime: {value:?} is not an rfc 3339 time")]
    InvalidTime { value: String },
    #[error("at most one of `sinceTime` or `sinceSeconds` may be specified")]
    TwoSinces,
}

/// One full line of a container's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The RFC 3339 time of its first part, as written.
    pub time: String,
    pub text: Vec<u8>,
}

/// Joins CRI entries into full lines. What cannot be a full line yet comes back as the rest,
/// to be read again with what follows: a trailing entry without its newline, and the partial
/// (`P`) entries of a line whose final (`F`) entry is not written yet.
pub fn parse(text: &[u8]) -> (Vec<LogLine>, Vec<u8>) {
    let mut lines = Vec::new();
    let mut pending: Option<LogLine> = None;
    // Where the entries of `pending` begin, and where the last full line ended.
    let mut pending_start = 0;
    let mut consumed = 0;
    let mut offset = 0;
    for raw in text.split_inclusive(|b| *b == b'\n') {
        if !raw.ends_with(b"\n") {
            break;
        }
        let start = offset;
        offset += raw.len();
        let raw = &raw[..raw.len() - 1];
        let mut fields = raw.splitn(4, |b| *b == b' ');
        let (Some(time), Some(_stream), Some(tag)) = (fields.next(), fields.next(), fields.next())
        else {
            // Not a CRI entry: skipped, as if it were not there.
            if pending.is_none() {
                consumed = offset;
            }
            continue;
        };
        let content = fields.next().unwrap_or_default();
        let line = pending.get_or_insert_with(|| {
            pending_start = start;
            LogLine {
                time: String::from_utf8_lossy(time).into_owned(),
                text: Vec::new(),
            }
        });
        line.text.extend_from_slice(content);
        if tag != b"P" {
            lines.extend(pending.take());
            consumed = offset;
        }
    }
    let rest_start = if pending.is_some() {
        pending_start
    } else {
        consumed
    };
    (lines, text[rest_start..].to_vec())
}

/// Query options of `containerLogs`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<usize>,
    pub since_seconds: Option<i64>,
    pub since_time: Option<jiff::Timestamp>,
    pub limit_bytes: Option<usize>,
}

impl LogOptions {
    /// Reads the query as kubelet does, with its range checks.
    pub fn from_query(query: &str) -> Result<LogOptions, CriError> {
        let mut options = LogOptions::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let flag = || value == "true" || value == "1";
            let number = |name: &'static str, min: i64| -> Result<i64, CriError> {
                let number = value.parse::<i64>().map_err(|_| CriError::InvalidNumber {
                    name,
                    value: value.clone().into_owned(),
                })?;
                if number < min {
                    let bound = if min == 0 {
                        "greater than or equal to 0"
                    } else {
                        "greater than 0"
                    };
                    return Err(CriError::OutOfRange {
                        name,
                        value: number,
                        bound,
                    });
                }
                Ok(number)
            };
            let size = |number: i64| usize::try_from(number).unwrap_or(usize::MAX);
            match key.as_ref() {
                "follow" => options.follow = flag(),
                "previous" => options.previous = flag(),
                "timestamps" => options.timestamps = flag(),
                "tailLines" => options.tail_lines = Some(size(number("tailLines", 0)?)),
                "sinceSeconds" => options.since_seconds = Some(number("sinceSeconds", 1)?),
                "sinceTime" => {
                    let time = value.parse().map_err(|_| CriError::InvalidTime {
                        value: value.clone().into_owned(),
                    })?;
                    options.since_time = Some(time);
                }
                "limitBytes" => options.limit_bytes = Some(size(number("limitBytes", 1)?)),
                _ => {}
            }
        }
        if options.since_seconds.is_some() && options.since_time.is_some() {
            return Err(CriError::TwoSinces);
        }
        Ok(options)
    }

    /// The lines to print, as bytes, for the lines that are already there.
    pub fn render(&self, lines: &[LogLine], now: jiff::Timestamp) -> Vec<u8> {
        let since = self.since_time.or_else(|| {
            self.since_seconds
                .map(|s| now - jiff::SignedDuration::from_secs(s))
        });
        let kept: Vec<&LogLine> = lines
            .iter()
            .filter(|line| match since {
                Some(since) => line
                    .time
                    .parse::<jiff::Timestamp>()
                    .is_ok_and(|t| t >= since),
                None => true,
            })
            .collect();
        let start = self.tail_lines.map_or(0, |n| kept.len().saturating_sub(n));
        let mut out = Vec::new();
        for line in &kept[start..] {
            self.render_line(line, &mut out);
        }
        if let Some(limit) = self.limit_bytes {
            out.truncate(limit);
        }
        out
    }

    /// One line, with its time first when `timestamps` asks for it: in UTC with as many
    /// fractional digits as needed, as kubelet prints it (go's `RFC3339Nano`), or as written
    /// when it is not a time.
    pub fn render_line(&self, line: &LogLine, out: &mut Vec<u8>) {
        if self.timestamps {
            match line.time.parse::<jiff::Timestamp>() {
                Ok(time) => out.extend_from_slice(time.to_string().as_bytes()),
                Err(_) => out.extend_from_slice(line.time.as_bytes()),
            }
            out.push(b' ');
        }
        out.extend_from_slice(&line.text);
        out.push(b'\n');
    }
}

/// The instance number of a container log file's name: `<n>.log` (the live file) or
/// `<n>.log.<time>` (a rotated part of it).
pub fn instance_of(file_name: &str) -> Option<u32> {
    let (number, rest) = file_name.split_once(".log")?;
    if !(rest.is_empty() || rest.starts_with('.')) || number.starts_with('+') {
        return None;
    }
    number.parse().ok()
}

/// The instance `containerLogs` reads from `instances` (ordered by number): the newest, or with
/// `previous` the one before it; `None` when there is no such instance.
pub fn pick_instance<T>(instances: &[T], previous: bool) -> Option<&T> {
    let back = if previous { 2 } else { 1 };
    instances.len().checked_sub(back).map(|i| &instances[i])
}

/// The log files of a container directory by instance number, each with its rotated parts
/// (`<n>.log.<time>`, oldest first) before the live file (`<n>.log`).
pub fn instances(container_dir: &Path) -> Vec<(u32, Vec<PathBuf>)> {
    let mut found: std::collections::BTreeMap<u32, Vec<PathBuf>> = Default::default();
    for entry in std::fs::read_dir(container_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(number) = instance_of(&name) {
            found.entry(number).or_default().push(entry.path());
        }
    }
    found
        .into_iter()
        .map(|(number, mut files)| {
            // The rotation stamps sort by time; the live file (no stamp) ends the list.
            files.sort_by_key(|p| (p.extension().is_some_and(|e| e == "log"), p.clone()));
            (number, files)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2026-11-25T10:00:00.1Z stdout F one\n\
                       2026-11-25T10:00:01.2Z stdout P tw\n\
                       2026-11-25T10:00:01.3Z stdout F o\n\
                       2026-11-25T10:00:02.4Z stderr F three\n\
                       2026-11-25T10:00:03.5Z stdout F fo";

    #[test]
    fn partial_lines_join_and_an_unfinished_entry_waits() {
        let (lines, rest) = parse(LOG.as_bytes());
        let texts: Vec<String> = lines
            .iter()
            .map(|l| String::from_utf8_lossy(&l.text).into_owned())
            .collect();
        assert_eq!(texts, ["one", "two", "three"]);
        assert_eq!(lines[1].time, "2026-11-25T10:00:01.2Z");
        assert_eq!(rest, b"2026-11-25T10:00:03.5Z stdout F fo");
    }

    #[test]
    fn tail_timestamps_since_and_limit() {
        let (lines, _) = parse(LOG.as_bytes());
        let now: jiff::Timestamp = "2026-11-25T10:00:03Z".parse().unwrap();
        let render = |query: &str| {
            String::from_utf8(LogOptions::from_query(query).unwrap().render(&lines, now)).unwrap()
        };
        assert_eq!(render(""), "one\ntwo\nthree\n");
        assert_eq!(render("tailLines=2"), "two\nthree\n");
        assert_eq!(
            render("tailLines=1&timestamps=true"),
            "2026-11-25T10:00:02.4Z three\n"
        );
        assert_eq!(render("sinceSeconds=2"), "two\nthree\n");
        let written_by_the_runtime = LogLine {
            time: "2026-11-25T10:00:02.400000000Z".to_owned(),
            text: b"x".to_vec(),
        };
        assert_eq!(
            String::from_utf8(
                LogOptions::from_query("timestamps=true")
                    .unwrap()
                    .render(&[written_by_the_runtime], now)
            )
            .unwrap(),
            "2026-11-25T10:00:02.4Z x\n"
        );
        assert_eq!(render("sinceTime=2026-11-25T10:00:01.25Z"), "three\n");
        assert_eq!(render("limitBytes=5"), "one\nt");
        assert!(LogOptions::from_query("tailLines=x").is_err());
    }

    #[test]
    fn a_line_split_across_reads_is_not_lost() {
        let text = "2026-11-25T10:00:00Z stdout F one\n\
                    2026-11-25T10:00:01Z stdout P tw\n\
                    2026-11-25T10:00:02Z stdout P o-";
        let (lines, rest) = parse(text.as_bytes());
        assert_eq!(lines.len(), 1);
        // The partial entry waits for its final one, with its own timestamp kept.
        let mut next = rest.clone();
        next.extend_from_slice(b"\n2026-11-25T10:00:03Z stdout F end\n");
        let (lines, rest) = parse(&next);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].time, "2026-11-25T10:00:01Z");
        assert_eq!(lines[0].text, b"two-end");
        assert!(rest.is_empty());
    }

    #[test]
    fn text_that_is_not_a_cri_entry_is_skipped() {
        let (lines, rest) = parse(b"garbage\n2026-11-25T10:00:00Z stdout F ok\n");
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].text, b"ok");
        assert!(rest.is_empty());
    }

    #[test]
    fn an_empty_line_has_an_empty_text() {
        let (lines, _) = parse(b"2026-11-25T10:00:00Z stdout F \n2026-11-25T10:00:00Z stdout F\n");
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l.text.is_empty()));
    }

    #[test]
    fn bad_numbers_are_rejected_and_flags_read() {
        assert_eq!(
            LogOptions::from_query("limitBytes=lots"),
            Err(CriError::InvalidNumber {
                name: "limitBytes",
                value: "lots".to_owned()
            })
        );
        let options =
            LogOptions::from_query("follow=true&previous=1&timestamps=false&tailLines=0").unwrap();
        assert!(options.follow && options.previous && !options.timestamps);
        assert_eq!(options.tail_lines, Some(0));
        let bad = |query| LogOptions::from_query(query).unwrap_err().to_string();
        assert_eq!(
            bad("tailLines=-3"),
            "invalid tailLines: -3: must be greater than or equal to 0"
        );
        assert_eq!(
            bad("limitBytes=0"),
            "invalid limitBytes: 0: must be greater than 0"
        );
        assert_eq!(
            bad("sinceSeconds=0"),
            "invalid sinceSeconds: 0: must be greater than 0"
        );
        assert_eq!(
            bad("sinceSeconds=5&sinceTime=2026-11-25T10:00:00Z"),
            "at most one of `sinceTime` or `sinceSeconds` may be specified"
        );
        assert!(bad("sinceTime=yesterday").contains("sinceTime"));
    }

    #[test]
    fn file_names_give_instance_numbers() {
        assert_eq!(instance_of("0.log"), Some(0));
        assert_eq!(instance_of("12.log.20261125-100000.000000"), Some(12));
        assert_eq!(instance_of("1.logx"), None);
        assert_eq!(instance_of("+1.log"), None);
        assert_eq!(instance_of("x.log"), None);
        assert_eq!(instance_of("1.txt"), None);
    }

    #[test]
    fn previous_is_the_instance_before_the_newest() {
        let found = [0, 1, 3];
        assert_eq!(pick_instance(&found, false), Some(&3));
        assert_eq!(pick_instance(&found, true), Some(&1));
        assert_eq!(pick_instance(&[7], true), None);
        assert_eq!(pick_instance(&[7], false), Some(&7));
        assert_eq!(pick_instance::<u32>(&[], false), None);
    }

    #[test]
    fn instances_are_numbered_with_rotated_parts_first() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "0.log",
            "1.log",
            "1.log.20261125-100001.000000",
            "1.log.20261125-100000.000000",
            "junk",
        ] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let found = instances(dir.path());
        assert_eq!(found.len(), 2);
        let names: Vec<String> = found[1]
            .1
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "1.log.20261125-100000.000000",
                "1.log.20261125-100001.000000",
                "1.log"
            ]
        );
    }
}
