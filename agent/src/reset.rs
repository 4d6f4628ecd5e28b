//! `keel-agent reset`: removes what an agent made on its node, as `kubeadm reset` does for
//! kubelet's part: every container in its runc root, the keeper, every mount under its root
//! dir (container rootfs, volumes, the pods' network and IPC namespaces, whose veth pairs go
//! with them), its `kubepods` cgroup tree in every hierarchy, the cluster DNS's address
//! (`lo:keel-dns`), and then the root dir itself.
//!
//! Run it after the agent has stopped; a running agent would start its pods again. It touches
//! only paths under the root dir and the cgroup tree under `--cgroup-root`, so agents that use
//! other roots on the same host are left alone.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cgroups::{CgroupError, CgroupManager};
use crate::sys::mount;

#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    #[error("cannot list runc's containers in {root}")]
    Runc {
        root: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot unmount {path}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("cgroup {path} still has processes after they were killed")]
    CgroupBusy { path: PathBuf },
    #[error("cannot remove {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read /proc/self/mountinfo")]
    Mountinfo(#[source] io::Error),
}

/// What [`reset`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResetReport {
    pub containers: usize,
    pub keeper_killed: bool,
    pub mounts: usize,
    pub cgroups: usize,
}

/// Removes everything the agent with `root_dir` and cgroup tree under `cgroups` made, using
/// the `runc` binary for its containers.
pub fn reset(
    root_dir: &Path,
    cgroups: &CgroupManager,
    runc: &Path,
) -> Result<ResetReport, ResetError> {
    let mut report = ResetReport::default();
    let runc_root = root_dir.join("runc");
    report.containers = delete_containers(runc, &runc_root)?;
    report.keeper_killed = kill_keeper(&root_dir.join("keeper"));
    report.mounts = unmount_under(root_dir)?;
    report.cgroups = remove_kubepods(cgroups)?;
    // The cluster DNS address (`--cluster-dns`) it put on this network namespace's loopback.
    if let Err(error) = crate::dns::release_address(root_dir) {
        log::warn!("{error}");
    }
    match std::fs::remove_dir_all(root_dir) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            return Err(ResetError::Remove {
                path: root_dir.to_owned(),
                source: error,
            });
        }
        _ => {}
    }
    Ok(report)
}

/// `runc delete --force` of every container in `runc_root` (each is a directory there).
fn delete_containers(runc: &Path, runc_root: &Path) -> Result<usize, ResetError> {
    let entries = match std::fs::read_dir(runc_root) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(ResetError::Runc {
                root: runc_root.to_owned(),
                source,
            });
        }
    };
    let mut deleted = 0;
    for entry in entries.flatten() {
        let id = entry.file_name();
        let output = Command::new(runc)
            .arg("--root")
            .arg(runc_root)
            .args(["delete", "--force"])
            .arg(&id)
            .output()
            .map_err(|source| ResetError::Runc {
                root: runc_root.to_owned(),
                source,
            })?;
        if output.status.success() {
            deleted += 1;
        } else {
            log::warn!(
                "runc delete --force {}: {}",
                id.to_string_lossy(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
    }
    Ok(deleted)
}

/// Kills the keeper serving `keeper_dir` (the process whose command line is
/// `<exe> keeper <keeper_dir>`); whether there was one.
fn kill_keeper(keeper_dir: &Path) -> bool {
    let Some(pid) = keeper_pid(keeper_dir) else {
        return false;
    };
    // SAFETY: kill(2) with a pid read from /proc; the worst case is a process that just ended.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    true
}

fn keeper_pid(keeper_dir: &Path) -> Option<libc::pid_t> {
    let wanted = keeper_dir.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: libc::pid_t = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            (args.len() >= 3 && args[1] == b"keeper" && args[2] == wanted).then_some(pid)
        })
}

/// Unmounts every mount point under `dir`, deepest first (lazily when busy).
fn unmount_under(dir: &Path) -> Result<usize, ResetError> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(ResetError::Mountinfo)?;
    let mut points: Vec<PathBuf> = mount::mount_points(&mountinfo)
        .filter(|point| point.starts_with(dir) && *point != dir)
        .map(Path::to_owned)
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    points.dedup();
    for point in &points {
        mount::unmount(point, true).map_err(|source| ResetError::Unmount {
            path: point.clone(),
            source,
        })?;
    }
    Ok(points.len())
}

/// Kills what is left in the `kubepods` tree and removes it from every hierarchy.
fn remove_kubepods(cgroups: &CgroupManager) -> Result<usize, ResetError> {
    let kubepods = cgroups.kubepods();
    let mut removed = 0;
    for mount in cgroups.hierarchies().all_mounts() {
        let dir = mount.join(kubepods.trim_start_matches('/'));
        if !dir.exists() {
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = procs_under(&dir);
            if pids.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(ResetError::CgroupBusy { path: dir });
            }
            for pid in pids {
                // SAFETY: kill(2) of a process listed in a cgroup this agent owns.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        removed += remove_tree(&dir)?;
    }
    Ok(removed)
}

/// Every pid in `dir`'s `cgroup.procs` and its descendants'.
fn procs_under(dir: &Path) -> Vec<libc::pid_t> {
    let mut pids: Vec<libc::pid_t> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            pids.extend(procs_under(&entry.path()));
        }
    }
    pids
}

/// Removes the cgroup directory tree at `dir`, children first; how many cgroups went. An
/// emptied cgroup can stay busy for a moment after its last process died, so each removal is
/// retried briefly.
fn remove_tree(dir: &Path) -> Result<usize, ResetError> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            removed += remove_tree(&entry.path())?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(removed + 1),
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(removed),
            Err(error)
                if error.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(source) => {
                return Err(ResetError::Remove {
                    path: dir.to_owned(),
                    source,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmounting_nothing_under_an_empty_dir_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(unmount_under(dir.path()).unwrap(), 0);
    }

    #[test]
    fn no_keeper_for_a_dir_nobody_serves() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(keeper_pid(&dir.path().join("keeper")), None);
    }

    #[test]
    fn remove_tree_removes_plain_directories_children_first() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("kubepods");
        std::fs::create_dir_all(root.join("burstable/podabc")).unwrap();
        std::fs::create_dir_all(root.join("besteffort")).unwrap();
        assert_eq!(remove_tree(&root).unwrap(), 4);
        assert!(!root.exists());
    }
}
