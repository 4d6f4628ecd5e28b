//! The `runc` binary, exec'ed (never a runtime forked inside the multi-threaded agent). Only
//! `create` goes through the [`keeper`](super::keeper); start, kill, delete, state and exec run
//! here.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    #[error("cannot run {binary}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("runc {action} {id}: {message}")]
    Failed {
        action: &'static str,
        id: String,
        message: String,
    },
}

/// How a [`Runc::exec`] ended.
#[derive(Debug)]
pub enum ExecOutcome {
    /// The command exited (or was killed by a signal from elsewhere); stdout and stderr apart.
    Exited(Output),
    /// The command outlived its timeout: it was killed inside the container, and `runc exec`
    /// with it.
    TimedOut,
}

/// What `runc state` says of a container.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RuncState {
    pub id: String,
    pub pid: i32,
    /// `created`, `running`, `paused` or `stopped`.
    pub status: String,
    pub bundle: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Runc {
    pub binary: PathBuf,
    /// runc's state directory (`--root`), the agent's own so it never mixes with other users of
    /// runc on the host.
    pub root: PathBuf,
}

impl Runc {
    pub fn new(binary: &Path, root: &Path) -> Runc {
        Runc {
            binary: binary.to_owned(),
            root: root.to_owned(),
        }
    }

    fn run(&self, action: &'static str, id: &str, args: &[&str]) -> Result<Output, RuncError> {
        let output = Command::new(&self.binary)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| RuncError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(RuncError::Failed {
                action,
                id: id.to_owned(),
                message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            })
        }
    }

    /// Starts a created container (runs its process).
    pub fn start(&self, id: &str) -> Result<(), RuncError> {
        self.run("start", id, &["start", id]).map(drop)
    }

    /// Sends `signal` (e.g. `TERM`, `KILL`) to the container's processes.
    pub fn kill(&self, id: &str, signal: &str) -> Result<(), RuncError> {
        match self.run("kill", id, &["kill", "--all", id, signal]) {
            Err(RuncError::Failed { message, .. })
                if message.contains("not running") || message.contains("does not exist") =>
            {
                Ok(())
            }
            other => other.map(drop),
        }
    }

    /// Deletes the container (its runc state and cgroup); `force` kills it first. A container
    /// runc does not know is already deleted.
    pub fn delete(&self, id: &str, force: bool) -> Result<(), RuncError> {
        let args: &[&str] = if force {
            &["delete", "--force", id]
        } else {
            &["delete", id]
        };
        match self.run("delete", id, args) {
            Err(RuncError::Failed { message, .. }) if message.contains("does not exist") => Ok(()),
            other => other.map(drop),
        }
    }

    /// The container's state; `None` when runc does not know it.
    pub fn state(&self, id: &str) -> Result<Option<RuncState>, RuncError> {
        match self.run("state", id, &["state", id]) {
            Ok(output) => serde_json::from_slice(&output.stdout)
                .map(Some)
                .map_err(|error| RuncError::Failed {
                    action: "state",
                    id: id.to_owned(),
                    message: format!("unreadable state: {error}"),
                }),
            Err(RuncError::Failed { message, .. }) if message.contains("does not exist") => {
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// Runs `command` in the running container `id` (`runc exec`, no terminal, stdin closed)
    /// and collects its output. After `timeout` the command is killed (`SIGKILL` to the pid
    /// `runc exec --pid-file` reports, then to `runc exec` itself), as kubelet's exec probes
    /// and `ExecSync` do; a timeout is an [`ExecOutcome::TimedOut`], not an error.
    pub async fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutcome, RuncError> {
        let spawn_error = |source| RuncError::Spawn {
            binary: self.binary.clone(),
            source,
        };
        let pid_dir = tempfile::Builder::new()
            .prefix("runc-exec-")
            .tempdir()
            .map_err(spawn_error)?;
        let pid_file = pid_dir.path().join("pid");
        let child = tokio::process::Command::new(&self.binary)
            .arg("--root")
            .arg(&self.root)
            .arg("exec")
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id)
            .args(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_error)?;
        let runc_pid = child.id();
        let output = child.wait_with_output();
        tokio::pin!(output);
        let finished = tokio::select! {
            result = &mut output => Some(result),
            () = tokio::time::sleep(timeout) => None,
        };
        match finished {
            Some(result) => {
                let output = result.map_err(spawn_error)?;
                // runc's own failures (no such container, cannot join it) carry its
                // `ERRO[...]` lines and exit code 255 before the command could run.
                if output.status.code() == Some(255) && !pid_file.exists() {
                    return Err(RuncError::Failed {
                        action: "exec",
                        id: id.to_owned(),
                        message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
                    });
                }
                Ok(ExecOutcome::Exited(output))
            }
            None => {
                // runc forwards signals to the command but SIGKILL cannot be forwarded: kill the
                // command by its host pid, then runc (which would exit on its own once the command
                // is gone).
                if let Some(pid) = std::fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|text| text.trim().parse::<libc::pid_t>().ok())
                {
                    // SAFETY: kill(2) has no memory effects. The pid is the command's, which runc
                    // exec (a subreaper for it, not yet finished) has not reaped; only if both
                    // ended in this instant could the pid have been reused.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                if let Some(pid) = runc_pid.and_then(|pid| libc::pid_t::try_from(pid).ok()) {
                    // SAFETY: kill(2) on our own child, not yet reaped (its output future is
                    // still pending), so the pid is still ours.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                // Reap runc; dropping the future would also kill it, without waiting.
                let _ = output.await;
                Ok(ExecOutcome::TimedOut)
            }
        }
    }
}
