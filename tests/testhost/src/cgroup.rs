//! A cgroup2 group of the test's own, for attaching cgroup eBPF programs (socket load
//! balancing) without touching the cgroup2 root that every process on the host lives in.

use std::fs;
use std::io;
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::run::{self, PREFIX, RunError};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("no cgroup2 hierarchy is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("cannot create cgroup {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A cgroup2 group `kt-<run>-cg<n>` under the cgroup2 mount; removed on drop once empty.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
}

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

impl TestCgroup {
    pub fn new() -> Result<TestCgroup, CgroupError> {
        let root = cgroup2_mount()?;
        let run = run::run_id()?;
        let name = format!(
            "{PREFIX}{run}-cg{}",
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        let path = root.join(name);
        fs::create_dir(&path).map_err(|source| CgroupError::Create {
            path: path.clone(),
            source,
        })?;
        Ok(TestCgroup { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `command` join this group before it executes, so every socket it creates
    /// belongs to the group.
    pub fn place<'a>(&self, command: &'a mut Command) -> Result<&'a mut Command, CgroupError> {
        place_in(&self.path, command)
    }
}

/// Makes `command` join the cgroup2 group `group` before it executes, so every socket it
/// creates belongs to the group.
pub fn place_in<'a>(
    group: &Path,
    command: &'a mut Command,
) -> Result<&'a mut Command, CgroupError> {
    let procs_path = group.join("cgroup.procs");
    // Opened here, before the fork: the child may only make async-signal-safe calls.
    let procs = fs::OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .map_err(|source| CgroupError::Create {
            path: procs_path,
            source,
        })?;
    // SAFETY: the closure runs in the forked child before exec and makes one
    // async-signal-safe call, write(2), on a descriptor opened before the fork. Writing "0" to
    // cgroup.procs moves the writing process.
    let command = unsafe {
        command.pre_exec(move || {
            let written = libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1);
            if written == 1 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        })
    };
    Ok(command)
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Processes placed here are the test's children; a group with one left cannot go.
        if let Err(error) = fs::remove_dir(&self.path)
            && error.kind() != io::ErrorKind::NotFound
        {
            eprintln!(
                "keel-testhost: cannot remove cgroup {}: {error}",
                self.path.display()
            );
        }
    }
}

/// Where the cgroup2 hierarchy is mounted (`/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").map_err(|_| CgroupError::NoCgroup2)?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mount_point = before.split_whitespace().nth(4)?;
            (after.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .ok_or(CgroupError::NoCgroup2)
}
