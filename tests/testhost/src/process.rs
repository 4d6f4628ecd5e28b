//! Commands and long-lived processes inside test hosts.

use std::io;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a process gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("an empty command line")]
    Empty,
    #[error("cannot start `{command}`")]
    Start {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Runs `command` to completion; a non-zero exit is an error carrying its stderr.
pub fn run_checked(command: &mut Command) -> Result<Output, ProcessError> {
    let output = command.output().map_err(|source| ProcessError::Start {
        command: describe(command),
        source,
    })?;
    if !output.status.success() {
        return Err(ProcessError::Failed {
            command: describe(command),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output)
}

pub(crate) fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A process running inside a test host; dropping it stops it (SIGTERM, then SIGKILL after
/// two seconds) and reaps it.
#[derive(Debug)]
pub struct HostProcess {
    child: Child,
    command: String,
}

impl HostProcess {
    /// Starts `command` with stdin closed and stdout/stderr discarded unless the caller set
    /// them.
    pub fn spawn(command: &mut Command) -> Result<HostProcess, ProcessError> {
        let described = describe(command);
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .map_err(|source| ProcessError::Start {
                command: described.clone(),
                source,
            })?;
        Ok(HostProcess {
            child,
            command: described,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn stop(&mut self) {
        if !self.is_running() {
            return;
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child, which we have not reaped yet, so the pid is ours.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Err(error) = self.child.kill() {
            eprintln!("keel-testhost: cannot kill `{}`: {error}", self.command);
        }
        let _ = self.child.wait();
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A child left running whose output lines (stdout, and stderr when asked) arrive on
/// [`OutputLines::lines`] as it prints them; killed on drop.
#[derive(Debug)]
pub struct OutputLines {
    child: Child,
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl OutputLines {
    /// Spawns `command` with its stdout (and its stderr, if `with_stderr`) read line by line.
    pub fn spawn(command: &mut Command, with_stderr: bool) -> io::Result<OutputLines> {
        use std::io::BufRead as _;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (sender, lines) = std::sync::mpsc::channel();
        let mut outputs: Vec<Box<dyn io::Read + Send>> =
            vec![Box::new(child.stdout.take().expect("piped"))];
        if with_stderr {
            outputs.push(Box::new(child.stderr.take().expect("piped")));
        }
        for output in outputs {
            let sender = sender.clone();
            std::thread::spawn(move || {
                for line in io::BufReader::new(output).lines() {
                    let Ok(line) = line else { break };
                    if sender.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(OutputLines { child, lines })
    }

    /// Reads lines until one satisfies `wanted`, for at most `timeout`: every line read, as
    /// `Err` if none did.
    pub fn read_until(
        &self,
        timeout: Duration,
        mut wanted: impl FnMut(&str) -> bool,
    ) -> Result<Vec<String>, Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = wanted(&line);
                    seen.push(line);
                    if done {
                        return Ok(seen);
                    }
                }
                Err(_) => return Err(seen),
            }
        }
    }

    /// Kills the child and returns what it printed on stderr, if that was not read as lines.
    pub fn kill(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            use std::io::Read as _;
            let _ = pipe.read_to_string(&mut stderr);
        }
        stderr
    }
}

impl Drop for OutputLines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
