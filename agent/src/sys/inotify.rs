//! Change notification for a directory (inotify), awaited on Tokio: the static pod source wakes
//! as soon as a manifest is written, moved in or removed instead of at its next poll.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tokio::io::unix::AsyncFd;

#[derive(Debug)]
pub struct DirWatch {
    fd: AsyncFd<OwnedFd>,
}

impl DirWatch {
    /// Watches `dir` for files created, written, moved in or out, and deleted. Needs a Tokio
    /// runtime.
    pub fn new(dir: &Path) -> io::Result<DirWatch> {
        // SAFETY: inotify_init1 takes flags only and returns a new fd or -1.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let path = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
        let mask = libc::IN_CREATE
            | libc::IN_CLOSE_WRITE
            | libc::IN_MOVED_TO
            | libc::IN_MOVED_FROM
            | libc::IN_DELETE
            | libc::IN_MODIFY;
        // SAFETY: `fd` is an inotify fd and `path` a NUL-terminated string that outlives the call.
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a valid open fd, owned by the AsyncFd for its whole life, and an
        // OwnedFd always returns the same raw fd.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(DirWatch { fd })
    }

    /// Waits until something changed in the directory (and drains the pending events).
    pub async fn changed(&self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut buffer = [0_u8; 4096];
            // SAFETY: reading into a stack buffer of the given length from our own fd.
            let read = unsafe {
                libc::read(
                    self.fd.get_ref().as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                )
            };
            if read > 0 {
                // Drain whatever else is queued without waiting.
                loop {
                    // SAFETY: as above.
                    let more = unsafe {
                        libc::read(
                            self.fd.get_ref().as_raw_fd(),
                            buffer.as_mut_ptr().cast(),
                            buffer.len(),
                        )
                    };
                    if more <= 0 {
                        break;
                    }
                }
                guard.clear_ready();
                return Ok(());
            }
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::WouldBlock {
                guard.clear_ready();
                continue;
            }
            return Err(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_new_file_wakes_the_watch() {
        let dir = tempfile::tempdir().unwrap();
        let watch = DirWatch::new(dir.path()).unwrap();
        let path = dir.path().join("pod.yaml");
        let writer = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            std::fs::write(path, "x").unwrap();
        });
        tokio::time::timeout(std::time::Duration::from_secs(5), watch.changed())
            .await
            .expect("woken")
            .unwrap();
        writer.await.unwrap();
    }
}
