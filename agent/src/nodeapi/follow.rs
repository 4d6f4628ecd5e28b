//! Reading a container's live log file as it grows, across rotations: the runtime renames
//! `<n>.log` to `<n>.log.<time>` and starts a new `<n>.log` (see `runtime::logs`), so a reader
//! that only kept a path and an offset would lose the new file's lines.

use std::fs::File;
use std::io::{self, Read as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("cannot read log file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An open log file and the path it was opened at.
#[derive(Debug)]
pub struct LiveLog {
    path: PathBuf,
    /// The file and its inode; `None` while the path does not exist.
    open: Option<(File, u64)>,
}

impl LiveLog {
    /// Opens `path` (if it exists yet) at its start.
    pub fn open(path: &Path) -> LiveLog {
        let mut log = LiveLog {
            path: path.to_owned(),
            open: None,
        };
        log.open = log.reopen();
        log
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn reopen(&self) -> Option<(File, u64)> {
        let file = File::open(&self.path).ok()?;
        let inode = file.metadata().ok()?.ino();
        Some((file, inode))
    }

    /// Appends what was written since the last call to `out`; after a rotation, the rest of
    /// the old file, then the new file from its start. Returns how many bytes were added.
    pub fn read_new(&mut self, out: &mut Vec<u8>) -> Result<usize, FollowError> {
        let before = out.len();
        // Look at the path before draining: what the old file got until the rename is all
        // there by the time the drain below runs.
        let current = std::fs::metadata(&self.path).ok().map(|m| m.ino());
        self.drain(out)?;
        let rotated = match (&self.open, current) {
            (Some((_, inode)), Some(current)) => *inode != current,
            (None, Some(_)) => true,
            (_, None) => false,
        };
        if rotated {
            self.open = self.reopen();
            self.drain(out)?;
        }
        Ok(out.len() - before)
    }

    fn drain(&mut self, out: &mut Vec<u8>) -> Result<(), FollowError> {
        if let Some((file, _)) = &mut self.open {
            file.read_to_end(out).map_err(|source| FollowError::Read {
                path: self.path.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn append(path: &Path, text: &str) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    #[test]
    fn growth_and_rotation_are_read_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = LiveLog::open(&path);
        let mut out = Vec::new();
        assert_eq!(log.read_new(&mut out).unwrap(), 0, "no file yet");
        append(&path, "a\n");
        log.read_new(&mut out).unwrap();
        append(&path, "b\n");
        // Rotated after more was written to the old file and before the reader saw it.
        std::fs::rename(&path, dir.path().join("0.log.20261125-100000.000000")).unwrap();
        append(&path, "c\n");
        log.read_new(&mut out).unwrap();
        append(&path, "d\n");
        log.read_new(&mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "a\nb\nc\nd\n");
    }
}
