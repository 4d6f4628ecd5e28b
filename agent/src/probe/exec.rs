//! `exec` probes as kubelet's exec prober: the command runs in the container through
//! [`Runc::exec`], exit code 0 is success, anything else a failure whose text is the command's
//! output (stdout then stderr, at most 10 KiB, possibly empty, as kubelet reports it). A
//! command still running at the timeout is killed and fails with `command "..." timed out`.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;

use super::error::ProbeError;
use super::outcome::ProbeResult;
use super::wire::MAX_BODY;
use crate::runtime::bundle::expand;
use crate::runtime::runc::{ExecOutcome, Runc};

/// The command with `$(VAR)` expanded against the container's literal `env` values only
/// (kubelet's `ExpandContainerCommandOnlyStatic`: no `valueFrom`, no `envFrom`).
pub fn expand_command(command: &[String], container: &Container) -> Vec<String> {
    let env: BTreeMap<String, String> = container
        .env
        .iter()
        .flatten()
        .filter(|var| var.value_from.is_none())
        .map(|var| (var.name.clone(), var.value.clone().unwrap_or_default()))
        .collect();
    command.iter().map(|arg| expand(arg, &env)).collect()
}

/// Runs `command` in container `id` within `timeout`.
pub async fn probe_exec(
    runc: &Runc,
    id: &str,
    command: &[String],
    timeout: Duration,
) -> ProbeResult {
    if command.is_empty() {
        return ProbeResult::Errored(ProbeError::EmptyCommand.to_string());
    }
    match runc.exec(id, command, timeout).await {
        Ok(ExecOutcome::Exited(output)) if output.status.success() => ProbeResult::Success,
        Ok(ExecOutcome::Exited(output)) => {
            let mut text = output.stdout;
            text.extend_from_slice(&output.stderr);
            text.truncate(MAX_BODY);
            ProbeResult::Failure(String::from_utf8_lossy(&text).into_owned())
        }
        Ok(ExecOutcome::TimedOut) => {
            ProbeResult::Failure(format!("command {:?} timed out", command.join(" ")))
        }
        Err(error) => ProbeResult::Errored(
            ProbeError::Exec {
                id: id.to_owned(),
                message: error.to_string(),
            }
            .to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_expand_literal_env_only() {
        let container: Container = serde_yaml_ng::from_str(
            "{name: c, env: [{name: A, value: one}, {name: B, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]}",
        )
        .unwrap();
        let command = ["echo".to_owned(), "$(A)".to_owned(), "$(B)".to_owned()];
        assert_eq!(
            expand_command(&command, &container),
            ["echo", "one", "$(B)"]
        );
    }
}
