//! One probe attempt: picks the handler the probe names, resolves its host (the pod IP by
//! default) and port (a number or a container port's name), and bounds it by
//! `timeoutSeconds` (default 1).

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::error::ProbeError;
use super::exec::{expand_command, probe_exec};
use super::http::{HttpGet, probe_http};
use super::outcome::{ProbeKind, ProbeResult};
use super::tcp::probe_tcp;
use crate::runtime::runc::Runc;

/// What a container's probes reach: the pod's address (the agent is in the node's network
/// namespace and reaches pod IPs directly) and the runc container for `exec`.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub pod_ip: Ipv4Addr,
    pub container: Container,
    /// The runc container id of the running instance.
    pub container_id: String,
    pub runc: Runc,
}

/// `timeoutSeconds`: default 1, and never below 1 (the API's minimum).
pub fn probe_timeout(probe: &Probe) -> Duration {
    Duration::from_secs(
        u64::try_from(probe.timeout_seconds.unwrap_or(1))
            .unwrap_or(1)
            .max(1),
    )
}

/// Runs `probe` (the container's `kind` probe) once against `target`. Probes that cannot run
/// (unknown port name, no handler, gRPC) are [`ProbeResult::Errored`], with a message that
/// says why.
pub async fn run_probe(kind: ProbeKind, probe: &Probe, target: &ProbeTarget) -> ProbeResult {
    let result = attempt(probe, target).await;
    if let (false, Some(text)) = (result.is_success(), result.text()) {
        log::debug!(
            "{} probe of container {} ({}) failed: {text}",
            kind.as_str(),
            target.container.name,
            target.container_id
        );
    }
    result
}

async fn attempt(probe: &Probe, target: &ProbeTarget) -> ProbeResult {
    let timeout = probe_timeout(probe);
    let host = |host: &Option<String>| {
        host.clone()
            .filter(|host| !host.is_empty())
            .unwrap_or_else(|| target.pod_ip.to_string())
    };
    let failed = |error: ProbeError| ProbeResult::Errored(error.to_string());
    if let Some(exec) = &probe.exec {
        let command = expand_command(
            exec.command.as_deref().unwrap_or_default(),
            &target.container,
        );
        return probe_exec(&target.runc, &target.container_id, &command, timeout).await;
    }
    if let Some(http) = &probe.http_get {
        let port = match resolve_port(&http.port, &target.container) {
            Ok(port) => port,
            Err(error) => return failed(error),
        };
        let scheme = http
            .scheme
            .as_deref()
            .unwrap_or("HTTP")
            .to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return failed(ProbeError::UnsupportedScheme { scheme });
        }
        let get = HttpGet {
            scheme,
            host: host(&http.host),
            port,
            path: http.path.clone().unwrap_or_default(),
            headers: http
                .http_headers
                .iter()
                .flatten()
                .map(|header| (header.name.clone(), header.value.clone()))
                .collect(),
        };
        return probe_http(&get, timeout).await;
    }
    if let Some(tcp) = &probe.tcp_socket {
        return match resolve_port(&tcp.port, &target.container) {
            Ok(port) => probe_tcp(&host(&tcp.host), port, timeout).await,
            Err(error) => failed(error),
        };
    }
    if let Some(grpc) = &probe.grpc {
        return failed(ProbeError::GrpcUnsupported {
            service: grpc.service.clone().unwrap_or_default(),
            port: grpc.port,
        });
    }
    failed(ProbeError::NoHandler)
}

/// A probe's port: a number, or the name of one of the container's `ports` (upstream's
/// `ResolveContainerPort`).
pub fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, ProbeError> {
    let number = match port {
        IntOrString::Int(number) => *number,
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .ok_or_else(|| ProbeError::PortNotFound {
                port: name.clone(),
                container: container.name.clone(),
            })?,
    };
    u16::try_from(number)
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| ProbeError::InvalidPort {
            port: number,
            container: container.name.clone(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_resolve_by_number_or_name() {
        let container: Container = serde_yaml_ng::from_str(
            "{name: app, ports: [{name: http, containerPort: 8080}, {containerPort: 9090}]}",
        )
        .unwrap();
        assert_eq!(resolve_port(&IntOrString::Int(81), &container).unwrap(), 81);
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &container).unwrap(),
            8080
        );
        assert_eq!(
            resolve_port(&IntOrString::String("metrics".into()), &container)
                .unwrap_err()
                .to_string(),
            "couldn't find port: metrics in container app"
        );
        assert!(resolve_port(&IntOrString::Int(70000), &container).is_err());
        assert!(resolve_port(&IntOrString::Int(0), &container).is_err());
    }

    #[test]
    fn timeouts_default_to_one_second() {
        let probe: Probe = serde_yaml_ng::from_str("{tcpSocket: {port: 1}}").unwrap();
        assert_eq!(probe_timeout(&probe), Duration::from_secs(1));
        let probe: Probe = serde_yaml_ng::from_str("{timeoutSeconds: 4}").unwrap();
        assert_eq!(probe_timeout(&probe), Duration::from_secs(4));
    }
}
