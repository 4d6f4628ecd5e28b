//! A bpf filesystem of the test's own, for agents under test to pin their dataplane in: a
//! fresh bpffs instance mounted on a `kt-<run>-bpf-...` temp dir, so nothing is pinned under
//! the host's `/sys/fs/bpf`. Unmounting the instance (on drop, or by the sweeper when the run
//! died) releases every pin in it, which detaches the pinned links and frees the maps.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use crate::run::{self, PREFIX, RunError};

#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("cannot make or mount a bpf filesystem on {}", path.display())]
    Mount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A bpffs mounted on a temp dir; unmounted and removed on drop.
#[derive(Debug)]
pub struct TestBpffs {
    dir: tempfile::TempDir,
}

impl TestBpffs {
    pub fn new() -> Result<TestBpffs, BpffsError> {
        let run = run::run_id()?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{run}-bpf-"))
            .tempdir()
            .map_err(|source| BpffsError::Mount {
                path: std::env::temp_dir(),
                source,
            })?;
        let error = |source| BpffsError::Mount {
            path: dir.path().to_owned(),
            source,
        };
        let target = CString::new(dir.path().as_os_str().as_bytes())
            .map_err(|_| error(io::Error::from(io::ErrorKind::InvalidInput)))?;
        // SAFETY: NUL-terminated strings that outlive the call; no data argument.
        let mounted = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if mounted != 0 {
            return Err(error(io::Error::last_os_error()));
        }
        Ok(TestBpffs { dir })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Everything pinned under `dir` (relative paths, sorted): what a test checks is gone.
    pub fn pins_under(&self, dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut pending = vec![dir.to_owned()];
        while let Some(next) = pending.pop() {
            for entry in std::fs::read_dir(&next).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                } else if let Ok(relative) = path.strip_prefix(dir) {
                    found.push(relative.to_owned());
                }
            }
        }
        found.sort();
        found
    }
}

impl Drop for TestBpffs {
    fn drop(&mut self) {
        let Ok(target) = CString::new(self.dir.path().as_os_str().as_bytes()) else {
            return;
        };
        // SAFETY: a NUL-terminated path that outlives the call.
        if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
            eprintln!(
                "keel-testhost: cannot unmount {}: {}",
                self.dir.path().display(),
                io::Error::last_os_error()
            );
        }
    }
}
