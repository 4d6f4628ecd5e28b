//! Network (and IPC) namespaces kept alive by a bind mount of their nsfs file (what `ip netns
//! add` does), so they outlive the thread that made them and the agent itself.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::mount;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot create network namespace {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove network namespace {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot enter network namespace {path}")]
    Enter {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Creates a new network namespace and bind-mounts it at `path` (a file created for it).
/// Idempotent: a namespace already mounted there is kept.
pub fn create(path: &Path) -> Result<(), NetnsError> {
    create_kind(path, libc::CLONE_NEWNET, "net")
}

/// Creates a new IPC namespace (the one a pod's containers share) and bind-mounts it at
/// `path`. Idempotent.
pub fn create_ipc(path: &Path) -> Result<(), NetnsError> {
    create_kind(path, libc::CLONE_NEWIPC, "ipc")
}

fn create_kind(path: &Path, flag: libc::c_int, proc_name: &'static str) -> Result<(), NetnsError> {
    let error = |source| NetnsError::Create {
        path: path.to_owned(),
        source,
    };
    if mount::is_nsfs_mount(path).map_err(error)? {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(error)?;
    }
    File::create(path).map_err(error)?;
    let target = path.to_owned();
    // unshare(CLONE_NEWNET / CLONE_NEWIPC) changes only the calling thread; a thread of its
    // own keeps the agent's other threads where they are, and its namespace lives on in the
    // bind mount.
    let made = std::thread::spawn(move || -> io::Result<()> {
        // SAFETY: unshare has no memory-safety preconditions; it affects only this thread.
        if unsafe { libc::unshare(flag) } != 0 {
            return Err(io::Error::last_os_error());
        }
        mount::bind(&Path::new("/proc/thread-self/ns").join(proc_name), &target)
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")));
    if let Err(source) = made {
        let _ = std::fs::remove_file(path);
        return Err(error(source));
    }
    Ok(())
}

/// Unmounts and removes the namespace file; the namespace goes once nothing else holds it.
/// Idempotent.
pub fn remove(path: &Path) -> Result<(), NetnsError> {
    let error = |source| NetnsError::Remove {
        path: path.to_owned(),
        source,
    };
    if mount::is_nsfs_mount(path).map_err(error)? {
        mount::unmount(path, true).map_err(error)?;
    }
    match std::fs::remove_file(path) {
        Err(source) if source.kind() != io::ErrorKind::NotFound => Err(error(source)),
        _ => Ok(()),
    }
}

/// Runs `body` on a thread that has joined the namespace at `path`.
pub fn run_in<R: Send>(path: &Path, body: impl FnOnce() -> R + Send) -> Result<R, NetnsError> {
    let error = |source| NetnsError::Enter {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(error)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on an open namespace fd; it changes only this thread, which
                // ends with the scope.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(body())
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
    .map_err(error)
}
