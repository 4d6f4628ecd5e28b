//! The per-run name prefix, the lock that marks a run alive, and the sweeper that removes what
//! crashed runs left behind.
//!
//! Every namespace a test creates is named `kt-<run>-...`, where `<run>` identifies the test
//! process. That process holds an exclusive `flock` on `/run/keel-testhost/<run>.lock` for its
//! whole life; the kernel drops the lock when the process dies however it dies (SIGKILL
//! included). So a `kt-` namespace whose run lock can be taken belongs to a dead run and is
//! swept; one whose lock is held belongs to a live run and is left alone.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Every name the harness creates starts with this.
pub const PREFIX: &str = "kt-";
const LOCK_DIR: &str = "/run/keel-testhost";
const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot use the run lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot list network namespaces in {NETNS_DIR}")]
    ListNamespaces(#[source] io::Error),
    #[error("cannot remove network namespace {name}: {reason}")]
    RemoveNamespace { name: String, reason: String },
}

/// This process's run: its id and the lock that says it is alive.
#[derive(Debug)]
struct Run {
    id: String,
    _lock: File,
}

static RUN: OnceLock<Result<Run, String>> = OnceLock::new();

/// The id of this process's run. The first call sweeps leftovers of dead runs, then takes the
/// run lock.
pub fn run_id() -> Result<&'static str, RunError> {
    let run = RUN.get_or_init(|| {
        sweep().map_err(|error| error.to_string())?;
        lock_run(&format!("{:x}", std::process::id())).map_err(|error| error.to_string())
    });
    match run {
        Ok(run) => Ok(&run.id),
        Err(message) => Err(RunError::Lock {
            path: PathBuf::from(LOCK_DIR),
            source: io::Error::other(message.clone()),
        }),
    }
}

fn lock_path(id: &str) -> PathBuf {
    Path::new(LOCK_DIR).join(format!("{id}.lock"))
}

fn lock_run(id: &str) -> Result<Run, RunError> {
    let path = lock_path(id);
    let error = |source| RunError::Lock {
        path: path.clone(),
        source,
    };
    fs::create_dir_all(LOCK_DIR).map_err(error)?;
    loop {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(error)?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(error(io::Error::last_os_error()));
        }
        // A sweeper may have taken the file for a dead run's and removed it between our open
        // and our flock: then we hold a lock on a file nobody can find. Take a fresh one.
        let same = fs::metadata(&path)
            .and_then(|on_disk| file.metadata().map(|held| (on_disk.ino(), held.ino())))
            .is_ok_and(|(on_disk, held)| on_disk == held);
        if same {
            return Ok(Run {
                id: id.to_owned(),
                _lock: file,
            });
        }
    }
}

/// Whether the run `id` is alive: someone holds its lock.
fn run_alive(id: &str) -> bool {
    let Ok(file) = File::open(lock_path(id)) else {
        return false;
    };
    // SAFETY: flock on a file descriptor we own.
    let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    // Closing `file` releases the lock if we took it.
    !taken
}

/// The run id in a harness namespace name: `kt-<run>-...`.
fn run_of(name: &str) -> Option<&str> {
    name.strip_prefix(PREFIX)?
        .split('-')
        .next()
        .filter(|id| !id.is_empty())
}

/// `kt-` namespaces that belong to no live run.
pub fn leftovers() -> Result<Vec<String>, RunError> {
    let entries = match fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(RunError::ListNamespaces(error)),
    };
    let mut dead = Vec::new();
    for entry in entries {
        let name = entry
            .map_err(RunError::ListNamespaces)?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if let Some(id) = run_of(&name)
            && !run_alive(id)
        {
            dead.push(name);
        }
    }
    dead.sort();
    Ok(dead)
}

/// Removes every `kt-` namespace of a dead run (killing what still runs inside), what its
/// test nodes left (the processes in its `kt-<run>-...` cgroups, those cgroups, the mounts under
/// its `/tmp/kt-<run>-...` directories and the directories: its bpf filesystems among them,
/// whose pins go with the mount), its pins under `/sys/fs/bpf/kt-<run>-...` and the lock files
/// of dead runs.
/// Returns the namespaces removed.
pub fn sweep() -> Result<Vec<String>, RunError> {
    let dead = leftovers()?;
    for name in &dead {
        remove_namespace(name)?;
    }
    sweep_node_leftovers();
    if let Ok(entries) = fs::read_dir(LOCK_DIR) {
        for entry in entries.flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = file_name.strip_suffix(".lock")
                && !run_alive(id)
            {
                // Gone already is fine: another sweeper got there first.
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    Ok(dead)
}

/// Cgroups and directories of test nodes whose run died (see `crate::node`).
fn sweep_node_leftovers() {
    // Run ids are hex pids; `kt-registry-...` and other helper directories are not runs.
    let dead_run = |name: &str| {
        run_of(name).is_some_and(|id| id.bytes().all(|b| b.is_ascii_hexdigit()) && !run_alive(id))
    };
    for hierarchy in fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        for entry in fs::read_dir(hierarchy.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() && dead_run(&name) {
                kill_and_remove_cgroup(&entry.path());
            }
        }
    }
    let temp = std::env::temp_dir();
    for entry in fs::read_dir(&temp).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !dead_run(&name) {
            continue;
        }
        let dir = entry.path();
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mountinfo
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .filter(|point| Path::new(point).starts_with(&dir))
            .collect();
        points.sort_by_key(|point| std::cmp::Reverse(point.len()));
        for point in points {
            let _ = Command::new("umount").args(["-l", point]).output();
        }
        let _ = fs::remove_dir_all(&dir);
    }
    // Pins of a dead run on the host's bpffs, if one is mounted: unlinking a pin releases it
    // (a pinned link detaches), and bpffs directories go with `remove_dir_all` too.
    for entry in fs::read_dir(BPFFS).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if dead_run(&name) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// The host's conventional bpffs mount point.
const BPFFS: &str = "/sys/fs/bpf";

/// Kills the processes of a cgroup tree, then removes its directories, deepest first.
fn kill_and_remove_cgroup(dir: &Path) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().is_dir() {
            kill_and_remove_cgroup(&entry.path());
        }
    }
    let deadline = Instant::now() + KILL_TIMEOUT;
    loop {
        let pids: Vec<i32> = fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect();
        if pids.is_empty() || Instant::now() > deadline {
            break;
        }
        for pid in pids {
            // SAFETY: kill has no memory-safety preconditions; a vanished pid is harmless.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = fs::remove_dir(dir);
}

/// How long removing a namespace keeps killing what is inside before giving up.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Kills every process in the namespace until none is left, then deletes it.
///
/// One snapshot of the members is not enough: a process that was joining the namespace (an
/// `ip netns exec` between its open and its setns) shows up only after it. So this scans
/// again after every kill until the namespace is empty.
pub(crate) fn remove_namespace(name: &str) -> Result<(), RunError> {
    let failed = |reason: String| RunError::RemoveNamespace {
        name: name.to_owned(),
        reason,
    };
    let path = Path::new(NETNS_DIR).join(name);
    let namespace = fs::metadata(&path)
        .map_err(|error| failed(format!("cannot stat {}: {error}", path.display())))?;
    let deadline = Instant::now() + KILL_TIMEOUT;
    loop {
        let members = members(namespace.dev(), namespace.ino());
        if members.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(failed(format!("processes {members:?} survive SIGKILL")));
        }
        for pid in members {
            // SAFETY: kill has no memory-safety preconditions; a vanished pid is harmless.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let deleted = Command::new("ip")
        .args(["netns", "delete", name])
        .output()
        .map_err(|error| failed(format!("cannot run `ip netns delete`: {error}")))?;
    if !deleted.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&deleted.stderr).trim().to_owned(),
        ));
    }
    Ok(())
}

/// Live processes whose network namespace is the nsfs inode `(dev, ino)`. Zombies have left
/// their namespaces already and are not listed.
fn members(dev: u64, ino: u64) -> Vec<libc::pid_t> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|pid| {
            fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|ns| ns.dev() == dev && ns.ino() == ino)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::run_of;

    #[test]
    fn run_ids_come_from_harness_names_only() {
        assert_eq!(run_of("kt-1a2b-3-client"), Some("1a2b"));
        assert_eq!(run_of("kt-ff-0-switch"), Some("ff"));
        assert_eq!(run_of("kt--3"), None);
        assert_eq!(run_of("cni-1234"), None);
    }
}
