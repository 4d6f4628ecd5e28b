//! Container probes as kubelet runs them: `startup`, `liveness` and `readiness`, each with
//! `exec` (`runc exec`), `httpGet` or `tcpSocket`, and upstream's timing fields
//! (`initialDelaySeconds`, `periodSeconds` 10, `timeoutSeconds` 1, `successThreshold` 1,
//! `failureThreshold` 3). Readiness starts failed until its first success; liveness and
//! readiness wait for startup to succeed. A liveness or startup probe that fails
//! `failureThreshold` times in a row has the container restarted.

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;

use crate::runtime::runc::Runc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    /// The word kubelet's messages use.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }
}

/// One probe of one container instance and where it stands.
#[derive(Debug, Clone)]
struct ProbeState {
    kind: ProbeKind,
    probe: Probe,
    next: Instant,
    successes: i32,
    failures: i32,
    /// The probe's current verdict.
    passing: bool,
}

/// What the worker must do after a probe result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAction {
    None,
    /// Liveness or startup failed `failureThreshold` times: restart the container.
    Restart(String),
}

/// The probes of one running container instance.
#[derive(Debug, Clone)]
pub struct ContainerProbes {
    probes: Vec<ProbeState>,
}

fn seconds(value: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(u64::try_from(value.unwrap_or(default).max(0)).unwrap_or(0))
}

impl ContainerProbes {
    pub fn new(container: &Container, started: Instant) -> ContainerProbes {
        let mut probes = Vec::new();
        for (kind, probe) in [
            (ProbeKind::Startup, &container.startup_probe),
            (ProbeKind::Liveness, &container.liveness_probe),
            (ProbeKind::Readiness, &container.readiness_probe),
        ] {
            if let Some(probe) = probe {
                probes.push(ProbeState {
                    kind,
                    next: started + seconds(probe.initial_delay_seconds, 0),
                    probe: probe.clone(),
                    successes: 0,
                    failures: 0,
                    passing: kind != ProbeKind::Readiness,
                });
            }
        }
        // Startup must succeed before the others run; until then it is not passing.
        if let Some(startup) = probes.iter_mut().find(|p| p.kind == ProbeKind::Startup) {
            startup.passing = false;
        }
        ContainerProbes { probes }
    }

    /// Whether the startup probe has passed (or there is none).
    pub fn started(&self) -> bool {
        self.probes
            .iter()
            .find(|p| p.kind == ProbeKind::Startup)
            .is_none_or(|p| p.passing)
    }

    /// Readiness: the readiness probe's verdict (true without one), once started.
    pub fn ready(&self) -> bool {
        self.started()
            && self
                .probes
                .iter()
                .find(|p| p.kind == ProbeKind::Readiness)
                .is_none_or(|p| p.passing)
    }

    /// The probes due at `now`, startup first.
    pub fn due(&self, now: Instant) -> Vec<(ProbeKind, Probe)> {
        let started = self.started();
        self.probes
            .iter()
            .filter(|p| now >= p.next)
            .filter(|p| match p.kind {
                // Once it has passed, the startup probe is done.
                ProbeKind::Startup => !p.passing,
                _ => started,
            })
            .map(|p| (p.kind, p.probe.clone()))
            .collect()
    }

    /// Records a result of probe `kind` at `now`.
    pub fn record(
        &mut self,
        kind: ProbeKind,
        result: &Result<(), String>,
        now: Instant,
    ) -> ProbeAction {
        let Some(state) = self.probes.iter_mut().find(|p| p.kind == kind) else {
            return ProbeAction::None;
        };
        state.next = now + seconds(state.probe.period_seconds, 10);
        match result {
            Ok(()) => {
                state.failures = 0;
                state.successes += 1;
                let threshold = match kind {
                    ProbeKind::Readiness => state.probe.success_threshold.unwrap_or(1).max(1),
                    _ => 1,
                };
                if state.successes >= threshold {
                    state.passing = true;
                }
                ProbeAction::None
            }
            Err(message) => {
                state.successes = 0;
                state.failures += 1;
                if state.failures >= state.probe.failure_threshold.unwrap_or(3).max(1) {
                    state.passing = false;
                    if kind != ProbeKind::Readiness {
                        state.failures = 0;
                        return ProbeAction::Restart(message.clone());
                    }
                }
                ProbeAction::None
            }
        }
    }
}

/// Where a probe goes.
#[derive(Debug, Clone)]
pub struct ProbeTarget<'a> {
    pub pod_ip: Ipv4Addr,
    pub container: &'a Container,
    pub container_id: &'a str,
    pub runc: &'a Runc,
}

fn port_number(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(number) => {
            u16::try_from(*number).map_err(|_| format!("invalid port {number}"))
        }
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("port \"{name}\" not found in the container's ports")),
    }
}

/// Runs one probe; `Err` carries kubelet's failure message.
pub async fn run(probe: &Probe, target: &ProbeTarget<'_>) -> Result<(), String> {
    let timeout = seconds(probe.timeout_seconds, 1).max(Duration::from_secs(1));
    if let Some(exec) = &probe.exec {
        let command = exec.command.clone().unwrap_or_default();
        return exec_probe(target, &command, timeout).await;
    }
    if let Some(http) = &probe.http_get {
        let port = port_number(&http.port, target.container)?;
        let host = http
            .host
            .as_deref()
            .filter(|h| !h.is_empty())
            .map_or_else(|| target.pod_ip.to_string(), str::to_owned);
        if http
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
        {
            return Err("HTTPS probes are not supported yet".to_owned());
        }
        let path = http
            .path
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or("/");
        let headers: Vec<(String, String)> = http
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        return match tokio::time::timeout(timeout, http_get(&host, port, path, &headers)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "Get \"http://{host}:{port}{path}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
            )),
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = port_number(&tcp.port, target.container)?;
        let host = tcp
            .host
            .as_deref()
            .filter(|h| !h.is_empty())
            .map_or_else(|| target.pod_ip.to_string(), str::to_owned);
        let address = format!("{host}:{port}");
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&address)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(format!("dial tcp {address}: connect: {error}")),
            Err(_) => Err(format!("dial tcp {address}: i/o timeout")),
        };
    }
    Err("the probe has no handler (exec, httpGet, tcpSocket)".to_owned())
}

async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<(), String> {
    let url = format!("http://{host}:{port}{path}");
    let mut stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|error| format!("Get \"{url}\": dial tcp {host}:{port}: connect: {error}"))?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|error| format!("Get \"{url}\": {error}"))?;
    let mut head = vec![0_u8; 1024];
    let mut read = 0;
    while read < head.len() {
        let n = stream
            .read(&mut head[read..])
            .await
            .map_err(|error| format!("Get \"{url}\": {error}"))?;
        if n == 0 || head[..read + n].windows(2).any(|w| w == b"\r\n") {
            read += n;
            break;
        }
        read += n;
    }
    let line = String::from_utf8_lossy(&head[..read]);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("Get \"{url}\": malformed HTTP response"))?;
    // kubelet counts 2xx and 3xx (redirects it does not follow) as success.
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

async fn exec_probe(
    target: &ProbeTarget<'_>,
    command: &[String],
    timeout: Duration,
) -> Result<(), String> {
    let mut child = tokio::process::Command::new(&target.runc.binary)
        .arg("--root")
        .arg(&target.runc.root)
        .arg("exec")
        .arg(target.container_id)
        .args(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| format!("cannot run {}: {error}", target.runc.binary.display()))?;
    let mut stdout = child.stdout.take().expect("piped");
    let output = async {
        let mut text = Vec::new();
        let _ = stdout.read_to_end(&mut text).await;
        (child.wait().await, text)
    };
    match tokio::time::timeout(timeout, output).await {
        Ok((Ok(status), _)) if status.success() => Ok(()),
        Ok((Ok(status), text)) => {
            let text = String::from_utf8_lossy(&text).trim().to_owned();
            Err(match status.code() {
                Some(code) if text.is_empty() => format!("command {command:?} exited with {code}"),
                Some(code) => format!("command {command:?} exited with {code}: {text}"),
                None => format!("command {command:?} was killed"),
            })
        }
        Ok((Err(error), _)) => Err(format!("command {command:?}: {error}")),
        Err(_) => Err(format!(
            "command {command:?} timed out after {}s",
            timeout.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(yaml: &str) -> Container {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn readiness_starts_failed_and_needs_its_success_threshold() {
        let t0 = Instant::now();
        let c = container(
            "{name: c, readinessProbe: {tcpSocket: {port: 80}, initialDelaySeconds: 5, periodSeconds: 2, successThreshold: 2, failureThreshold: 2}}",
        );
        let mut probes = ContainerProbes::new(&c, t0);
        assert!(!probes.ready());
        assert!(probes.due(t0).is_empty(), "initial delay");
        let t5 = t0 + Duration::from_secs(5);
        assert_eq!(probes.due(t5).len(), 1);
        assert_eq!(
            probes.record(ProbeKind::Readiness, &Ok(()), t5),
            ProbeAction::None
        );
        assert!(!probes.ready(), "one success of two");
        assert!(probes.due(t5 + Duration::from_secs(1)).is_empty(), "period");
        probes.record(ProbeKind::Readiness, &Ok(()), t5 + Duration::from_secs(2));
        assert!(probes.ready());
        probes.record(
            ProbeKind::Readiness,
            &Err("x".into()),
            t5 + Duration::from_secs(4),
        );
        assert!(probes.ready(), "one failure of two");
        let action = probes.record(
            ProbeKind::Readiness,
            &Err("x".into()),
            t5 + Duration::from_secs(6),
        );
        assert_eq!(action, ProbeAction::None, "readiness never restarts");
        assert!(!probes.ready());
    }

    #[test]
    fn liveness_restarts_after_its_failure_threshold_and_waits_for_startup() {
        let t0 = Instant::now();
        let c = container(
            "{name: c, startupProbe: {exec: {command: [x]}, periodSeconds: 1}, livenessProbe: {exec: {command: [y]}, periodSeconds: 1, failureThreshold: 2}}",
        );
        let mut probes = ContainerProbes::new(&c, t0);
        let due: Vec<ProbeKind> = probes.due(t0).into_iter().map(|(k, _)| k).collect();
        assert_eq!(due, [ProbeKind::Startup], "liveness waits for startup");
        assert!(!probes.ready());
        probes.record(ProbeKind::Startup, &Ok(()), t0);
        let t1 = t0 + Duration::from_secs(1);
        let due: Vec<ProbeKind> = probes.due(t1).into_iter().map(|(k, _)| k).collect();
        assert_eq!(due, [ProbeKind::Liveness], "startup is done once passed");
        assert!(probes.ready(), "no readiness probe: ready once started");
        assert_eq!(
            probes.record(ProbeKind::Liveness, &Err("boom".into()), t1),
            ProbeAction::None
        );
        let action = probes.record(
            ProbeKind::Liveness,
            &Err("boom".into()),
            t1 + Duration::from_secs(1),
        );
        assert_eq!(action, ProbeAction::Restart("boom".into()));
    }
}
