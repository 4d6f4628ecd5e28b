//! Running external commands with the command line echoed and failures named.

use std::process::{Command, ExitStatus, Output};

use anyhow::{Context as _, bail};

/// Prints the command, runs it with inherited stdio and fails if it does not exit 0.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = status(command)?;
    if !status.success() {
        bail!("`{}` failed: {status}", describe(command));
    }
    Ok(())
}

/// Prints the command and runs it with inherited stdio, returning its exit status.
pub fn status(command: &mut Command) -> anyhow::Result<ExitStatus> {
    eprintln!("+ {}", describe(command));
    command
        .status()
        .with_context(|| format!("cannot start `{}`", describe(command)))
}

/// Runs the command quietly and returns its output whatever the exit status.
pub fn output(command: &mut Command) -> anyhow::Result<Output> {
    command
        .output()
        .with_context(|| format!("cannot start `{}`", describe(command)))
}

/// Runs the command quietly and returns its stdout if it exits 0, `None` otherwise.
pub fn stdout_if_ok(command: &mut Command) -> anyhow::Result<Option<String>> {
    let output = output(command)?;
    Ok(output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned()))
}

pub fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

pub fn is_root() -> bool {
    // Reading our own effective uid from /proc avoids a libc dependency in xtask.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}
