//! The `runc` binary, exec'ed (never a runtime forked inside the multi-threaded agent). Only
//! `create` goes through the [`keeper`](super::keeper); start, kill, delete and state run here.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

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
}
