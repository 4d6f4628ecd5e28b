//! Reading CRI-format container logs back as `kubectl logs` shows them: partial (`P`) lines
//! joined, optional timestamps, `tailLines`, `sinceSeconds`, `limitBytes`, and which file is
//! the current and which the previous instance's.

use std::path::{Path, PathBuf};

/// One full line of a container's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The RFC 3339 time of its first part, as written.
    pub time: String,
    pub text: Vec<u8>,
}

/// Joins CRI entries into full lines; a trailing partial line is returned as the rest.
pub fn parse(text: &[u8]) -> (Vec<LogLine>, Vec<u8>) {
    let mut lines = Vec::new();
    let mut pending: Option<LogLine> = None;
    let mut consumed = 0;
    for raw in text.split_inclusive(|b| *b == b'\n') {
        if !raw.ends_with(b"\n") {
            break;
        }
        consumed += raw.len();
        let raw = &raw[..raw.len() - 1];
        let mut fields = raw.splitn(4, |b| *b == b' ');
        let (Some(time), Some(_stream), Some(tag)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let content = fields.next().unwrap_or_default();
        let line = pending.get_or_insert_with(|| LogLine {
            time: String::from_utf8_lossy(time).into_owned(),
            text: Vec::new(),
        });
        line.text.extend_from_slice(content);
        if tag != b"P" {
            lines.extend(pending.take());
        }
    }
    (lines, text[consumed..].to_vec())
}

/// Query options of `containerLogs`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<usize>,
    pub since_seconds: Option<i64>,
    pub limit_bytes: Option<usize>,
}

impl LogOptions {
    pub fn from_query(query: &str) -> Result<LogOptions, String> {
        let mut options = LogOptions::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let flag = || value == "true" || value == "1";
            let number = |what: &str| -> Result<i64, String> {
                value
                    .parse::<i64>()
                    .map_err(|_| format!("invalid {what}: {value:?}"))
            };
            match key.as_ref() {
                "follow" => options.follow = flag(),
                "previous" => options.previous = flag(),
                "timestamps" => options.timestamps = flag(),
                "tailLines" => {
                    options.tail_lines =
                        Some(usize::try_from(number("tailLines")?.max(0)).unwrap_or(0))
                }
                "sinceSeconds" => options.since_seconds = Some(number("sinceSeconds")?),
                "limitBytes" => {
                    options.limit_bytes =
                        Some(usize::try_from(number("limitBytes")?.max(0)).unwrap_or(0))
                }
                _ => {}
            }
        }
        Ok(options)
    }

    /// The lines to print, as bytes, for the lines that are already there.
    pub fn render(&self, lines: &[LogLine], now: jiff::Timestamp) -> Vec<u8> {
        let since = self
            .since_seconds
            .map(|s| now - jiff::SignedDuration::from_secs(s));
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

    pub fn render_line(&self, line: &LogLine, out: &mut Vec<u8>) {
        if self.timestamps {
            out.extend_from_slice(line.time.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(&line.text);
        out.push(b'\n');
    }
}

/// The log files of a container directory by instance number (`<n>.log`), each with its
/// rotated parts (`<n>.log.<time>`) first.
pub fn instances(container_dir: &Path) -> Vec<(u32, Vec<PathBuf>)> {
    let mut found: std::collections::BTreeMap<u32, Vec<PathBuf>> = Default::default();
    for entry in std::fs::read_dir(container_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((number, rest)) = name.split_once(".log") else {
            continue;
        };
        let Ok(number) = number.parse::<u32>() else {
            continue;
        };
        if rest.is_empty() || rest.starts_with('.') {
            found.entry(number).or_default().push(entry.path());
        }
    }
    found
        .into_iter()
        .map(|(number, mut files)| {
            // Rotated parts sort before the live file by name; the live file ends the list.
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
        assert_eq!(render("limitBytes=5"), "one\nt");
        assert!(LogOptions::from_query("tailLines=x").is_err());
    }

    #[test]
    fn instances_are_numbered_with_rotated_parts_first() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["0.log", "1.log", "1.log.20261125-100000.000000", "junk"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let found = instances(dir.path());
        assert_eq!(found.len(), 2);
        let names: Vec<String> = found[1]
            .1
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["1.log.20261125-100000.000000", "1.log"]);
    }
}
