//! What the tests may leave on the host, found and removed.
//!
//! Tests name what they create so it can be found: network namespaces start with `kt-` and
//! belong to a run whose lock tells whether it is alive (see `keel-testhost`); temp dirs start
//! with `keel-` in the system temp dir. Before the suite, leftovers
//! of earlier crashed runs are swept; after it, anything still there is a leak that fails the
//! run (and is then removed, so the next run starts clean).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::bail;

use crate::command;

const TEMP_PREFIX: &str = "keel-";

/// Everything of ours found on the host.
#[derive(Debug, Default)]
struct Leftovers {
    namespaces: Vec<String>,
    /// Processes whose command line names one of our temp dirs (etcd, registries, agents).
    processes: Vec<Process>,
    temp_dirs: Vec<PathBuf>,
}

#[derive(Debug)]
struct Process {
    pid: u32,
    parent: u32,
    /// In clock ticks since boot, comparable between processes.
    started: u64,
    command: String,
}

/// Which leftovers count.
#[derive(Debug, Clone, Copy)]
enum Scope {
    /// Before the suite: what crashed earlier runs left, never what a run still alive (another
    /// suite on this host) uses: orphaned processes, and temp dirs an hour old that no live
    /// process names.
    EarlierRuns,
    /// After the suite: whatever was created since this xtask started.
    ThisRun,
}

impl Leftovers {
    fn find(scope: Scope) -> anyhow::Result<Leftovers> {
        let temp = std::env::temp_dir();
        let all = processes(&temp);
        let own_start = process(std::process::id()).map_or(0, |own| own.started);
        let in_use = |dir: &Path| {
            let dir = dir.to_string_lossy();
            all.iter()
                .any(|process| process.command.contains(dir.as_ref()))
        };
        let (processes, temp_dirs) = match scope {
            Scope::EarlierRuns => {
                let hour_ago = SystemTime::now() - Duration::from_secs(3600);
                let dirs = temp_dirs(&temp, |modified| modified < hour_ago)
                    .into_iter()
                    .filter(|dir| !in_use(dir))
                    .collect();
                let orphans = all
                    .into_iter()
                    .filter(|process| process.parent == 1)
                    .collect();
                (orphans, dirs)
            }
            Scope::ThisRun => {
                let started = SystemTime::now() - process_age(own_start);
                // A dir a live process outside this run's process tree uses belongs to
                // someone else on this host (another suite, a benchmark): not ours to judge.
                // Orphans started during the run are counted as ours: tests leak those.
                let own = std::process::id();
                let (ours, others): (Vec<Process>, Vec<Process>) = all
                    .into_iter()
                    .filter(|process| process.started >= own_start)
                    .partition(|process| process.parent == 1 || descends_from(process.pid, own));
                let dirs = temp_dirs(&temp, |modified| modified >= started)
                    .into_iter()
                    .filter(|dir| {
                        let dir = dir.to_string_lossy();
                        !others
                            .iter()
                            .any(|process| process.command.contains(dir.as_ref()))
                    })
                    .collect();
                (ours, dirs)
            }
        };
        Ok(Leftovers {
            // Namespaces of dead runs only: the harness's run locks tell them apart.
            namespaces: keel_testhost::leftovers()?,
            processes,
            temp_dirs,
        })
    }

    fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.processes.is_empty() && self.temp_dirs.is_empty()
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.namespaces.is_empty() {
            parts.push(format!(
                "network namespaces: {}",
                self.namespaces.join(", ")
            ));
        }
        if !self.processes.is_empty() {
            let list: Vec<_> = self
                .processes
                .iter()
                .map(|process| format!("{} ({})", process.pid, process.command))
                .collect();
            parts.push(format!("processes: {}", list.join(", ")));
        }
        if !self.temp_dirs.is_empty() {
            let list: Vec<_> = self
                .temp_dirs
                .iter()
                .map(|dir| dir.display().to_string())
                .collect();
            parts.push(format!("temp dirs: {}", list.join(", ")));
        }
        parts.join("; ")
    }

    /// Processes first (they hold the namespaces and dirs), then namespaces, then dirs.
    fn remove(&self) -> anyhow::Result<()> {
        for process in &self.processes {
            // Already gone is fine: it may have died with a parent killed before it.
            let _ = command::output(Command::new("kill").args(["-KILL", &process.pid.to_string()]));
        }
        if !self.namespaces.is_empty() {
            keel_testhost::sweep()?;
        }
        for dir in &self.temp_dirs {
            if let Err(error) = fs::remove_dir_all(dir)
                && error.kind() != std::io::ErrorKind::NotFound
            {
                bail!("cannot remove {}: {error}", dir.display());
            }
        }
        Ok(())
    }
}

/// Removes what earlier runs left behind.
pub fn sweep() -> anyhow::Result<()> {
    let found = Leftovers::find(Scope::EarlierRuns)?;
    if found.is_empty() {
        eprintln!("sweep: nothing left from earlier runs");
    } else {
        eprintln!("sweep: removing {}", found.describe());
        found.remove()?;
    }
    Ok(())
}

/// Fails if the suite left anything behind, after removing it.
pub fn check() -> anyhow::Result<()> {
    let found = Leftovers::find(Scope::ThisRun)?;
    if found.is_empty() {
        eprintln!("leak check: nothing left behind");
        return Ok(());
    }
    let described = found.describe();
    found.remove()?;
    bail!("the tests left these behind (now removed): {described}")
}

/// Processes whose command line names a `keel-` temp dir.
fn processes(temp: &Path) -> Vec<Process> {
    let marker = temp.join(TEMP_PREFIX);
    let marker = marker.to_string_lossy();
    let own = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own)
        .filter_map(process)
        .filter(|process| process.command.contains(marker.as_ref()))
        .collect()
}

fn process(pid: u32) -> Option<Process> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut command: String = raw
        .split(|byte| *byte == 0)
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(" ");
    command.truncate(200);
    // Fields after the parenthesised command name: state, ppid, ... starttime is field 22.
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    Some(Process {
        pid,
        parent: fields.get(1)?.parse().ok()?,
        started: fields.get(19)?.parse().ok()?,
        command: command.trim().to_owned(),
    })
}

/// Whether `ancestor` is `pid`'s parent, grandparent, ...
fn descends_from(pid: u32, ancestor: u32) -> bool {
    let mut current = pid;
    // Bounded: a chain never runs deeper than the process table.
    for _ in 0..4096 {
        match process(current) {
            Some(process) if process.parent == ancestor => return true,
            Some(process) if process.parent > 1 => current = process.parent,
            _ => return false,
        }
    }
    false
}

/// How long ago a process that started `started` ticks after boot started.
fn process_age(started: u64) -> Duration {
    let uptime = fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    // The kernel's USER_HZ is 100 on every architecture Keel runs on.
    let started = started as f64 / 100.0;
    Duration::from_secs_f64((uptime - started).max(0.0))
}

fn temp_dirs(temp: &Path, keep: impl Fn(SystemTime) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(temp) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX))
        // Tests make directories; a `keel-` file is nobody's test leftover.
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .filter(|entry| {
            entry
                .metadata()
                .and_then(|meta| meta.modified())
                .is_ok_and(&keep)
        })
        .map(|entry| entry.path())
        .collect()
}
