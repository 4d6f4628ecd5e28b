//! Container logs in the CRI format kubelet and `kubectl logs` read
//! (`<RFC 3339 time> <stdout|stderr> <F|P> <text>`), copied from the FIFOs that are the
//! container's stdout and stderr into `/var/log/pods/<ns>_<pod>_<uid>/<container>/<n>.log`,
//! rotated by size.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt as _;

/// Longest line written as one entry; longer ones are split into partial (`P`) entries, as
/// containerd does.
const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Rotation limits (kubelet's `containerLogMaxSize` and `containerLogMaxFiles`).
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    pub max_size: u64,
    pub max_files: usize,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_size: 10 << 20,
            max_files: 5,
        }
    }
}

/// One container's log file, shared by its two streams.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    rotation: Rotation,
    state: Mutex<(File, u64)>,
}

impl LogFile {
    pub fn open(path: &Path, rotation: Rotation) -> io::Result<Arc<LogFile>> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Arc::new(LogFile {
            path: path.to_owned(),
            rotation,
            state: Mutex::new((file, size)),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry.
    pub fn write_entry(&self, stream: Stream, partial: bool, text: &[u8]) -> io::Result<()> {
        let mut entry = Vec::with_capacity(text.len() + 48);
        let now = jiff::Timestamp::now();
        write!(
            entry,
            "{now:.9} {} {} ",
            stream.as_str(),
            if partial { "P" } else { "F" }
        )?;
        entry.extend_from_slice(text);
        entry.push(b'\n');
        let mut state = self.state.lock().expect("log lock");
        if state.1 + entry.len() as u64 > self.rotation.max_size && state.1 > 0 {
            self.rotate(&mut state)?;
        }
        state.0.write_all(&entry)?;
        state.1 += entry.len() as u64;
        Ok(())
    }

    fn rotate(&self, state: &mut (File, u64)) -> io::Result<()> {
        let stamp = jiff::Timestamp::now()
            .strftime("%Y%m%d-%H%M%S%.6f")
            .to_string();
        let rotated = PathBuf::from(format!("{}.{stamp}", self.path.display()));
        std::fs::rename(&self.path, &rotated)?;
        *state = (
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?,
            0,
        );
        // Keep max_files in all: the live file and the newest rotated ones.
        let Some(dir) = self.path.parent() else {
            return Ok(());
        };
        let prefix = format!(
            "{}.",
            self.path.file_name().and_then(|n| n.to_str()).unwrap_or("")
        );
        let mut old: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix))
            })
            .collect();
        old.sort();
        let keep = self.rotation.max_files.saturating_sub(1);
        for path in old.iter().take(old.len().saturating_sub(keep)) {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }
}

/// Opens the read end of a container's FIFO. Open it before the container does: a FIFO
/// that no writer ever had open never reports end-of-file, and data written while nobody holds
/// the read end is lost when the last writer closes. Needs a Tokio runtime.
pub fn open_fifo(fifo: &Path) -> io::Result<Receiver> {
    tokio::net::unix::pipe::OpenOptions::new().open_receiver(fifo)
}

pub use tokio::net::unix::pipe::Receiver;

/// Copies the FIFO into `log` line by line until every writer has closed it (the container
/// exited).
pub async fn copy(mut receiver: Receiver, stream: Stream, log: Arc<LogFile>) -> io::Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    let mut buffer = vec![0_u8; 32 * 1024];
    loop {
        let read = receiver.read(&mut buffer).await?;
        if read == 0 {
            if !pending.is_empty() {
                log.write_entry(stream, false, &pending)?;
            }
            return Ok(());
        }
        pending.extend_from_slice(&buffer[..read]);
        let mut start = 0;
        while let Some(offset) = pending[start..].iter().position(|b| *b == b'\n') {
            log.write_entry(stream, false, &pending[start..start + offset])?;
            start += offset + 1;
        }
        pending.drain(..start);
        while pending.len() >= MAX_LINE {
            log.write_entry(stream, true, &pending[..MAX_LINE])?;
            pending.drain(..MAX_LINE);
        }
    }
}

/// Makes the FIFO at `path` if it is not there.
pub fn make_fifo(path: &Path) -> io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let c_path =
        std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: `c_path` is NUL-terminated and outlives the call.
    if unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_cri_lines_and_files_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/0.log");
        let log = LogFile::open(
            &path,
            Rotation {
                max_size: 200,
                max_files: 2,
            },
        )
        .unwrap();
        log.write_entry(Stream::Stdout, false, b"hello").unwrap();
        log.write_entry(Stream::Stderr, true, b"part").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let (time, rest) = lines[0].split_once(' ').unwrap();
        assert!(time.parse::<jiff::Timestamp>().is_ok(), "{time}");
        assert_eq!(rest, "stdout F hello");
        assert!(lines[1].ends_with(" stderr P part"));
        for _ in 0..20 {
            log.write_entry(Stream::Stdout, false, b"0123456789")
                .unwrap();
        }
        let files = std::fs::read_dir(dir.path().join("c")).unwrap().count();
        assert_eq!(files, 2, "the live file and one rotated file");
        assert!(std::fs::metadata(&path).unwrap().len() <= 200);
    }

    #[tokio::test]
    async fn fifo_lines_are_copied_until_the_writer_closes() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("out");
        make_fifo(&fifo).unwrap();
        let receiver = open_fifo(&fifo).unwrap();
        let writer = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .unwrap();
        let log = LogFile::open(&dir.path().join("0.log"), Rotation::default()).unwrap();
        let copier = tokio::spawn(copy(receiver, Stream::Stdout, Arc::clone(&log)));
        let long = vec![b'x'; MAX_LINE + 10];
        let mut writer = writer;
        writer.write_all(b"one\ntwo\n").unwrap();
        writer.write_all(&long).unwrap();
        drop(writer);
        copier.await.unwrap().unwrap();
        let text = std::fs::read_to_string(log.path()).unwrap();
        let rest: Vec<String> = text
            .lines()
            .map(|l| l.split_once(' ').unwrap().1.chars().take(12).collect())
            .collect();
        assert_eq!(
            rest,
            [
                "stdout F one",
                "stdout F two",
                "stdout P xxx",
                "stdout F xxx"
            ]
        );
    }
}
