//! `/exec/<ns>/<pod>/<container>?command=...&stdin=1&stdout=1&stderr=1` over WebSocket with
//! the `v5.channel.k8s.io` (or `v4`) subprotocol, what kubectl 1.32 speaks: every binary
//! message starts with its channel (0 stdin, 1 stdout, 2 stderr, 3 the final `Status`, 255
//! close a channel in v5). The command runs with `runc exec`; no TTY yet.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Mutex;

use super::NodeApi;
use super::routes::{Body, find, not_found, pod_not_found, text};
use super::websocket::{OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, read_frame, write_frame};
use crate::runtime::runc::Runc;

/// The subprotocols served, best first.
pub const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// What the query asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOptions {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl ExecOptions {
    pub fn from_query(query: &str) -> ExecOptions {
        let mut options = ExecOptions::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let flag = value == "true" || value == "1";
            match key.as_ref() {
                "command" => options.command.push(value.into_owned()),
                "stdin" | "input" => options.stdin = flag,
                "stdout" | "output" => options.stdout = flag,
                "stderr" | "error" => options.stderr = flag,
                "tty" => options.tty = flag,
                _ => {}
            }
        }
        options
    }
}

/// The `Status` kubectl reads on channel 3 when the command ends.
pub fn exit_status(command: &[String], code: Option<i32>) -> serde_json::Value {
    match code {
        Some(0) => json!({"metadata": {}, "status": "Success"}),
        Some(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        None => json!({"metadata": {}, "status": "Failure", "message": "the command was killed"}),
    }
}

type Writer = Arc<Mutex<tokio::io::WriteHalf<TokioIo<Upgraded>>>>;

async fn send(writer: &Writer, channel: u8, data: &[u8]) -> std::io::Result<()> {
    let mut message = Vec::with_capacity(data.len() + 1);
    message.push(channel);
    message.extend_from_slice(data);
    write_frame(&mut *writer.lock().await, OP_BINARY, &message, None).await
}

/// Runs the command in container `id` and relays it over the upgraded connection.
pub async fn session(upgraded: Upgraded, runc: Runc, id: String, options: ExecOptions, v5: bool) {
    let (mut reader, writer) = tokio::io::split(TokioIo::new(upgraded));
    let writer: Writer = Arc::new(Mutex::new(writer));
    let spawned = tokio::process::Command::new(&runc.binary)
        .arg("--root")
        .arg(&runc.root)
        .arg("exec")
        .arg(&id)
        .args(&options.command)
        .stdin(if options.stdin {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            let status = json!({"metadata": {}, "status": "Failure", "message": format!("cannot run runc: {error}")});
            let _ = send(&writer, 3, status.to_string().as_bytes()).await;
            let _ = write_frame(&mut *writer.lock().await, OP_CLOSE, &[], None).await;
            return;
        }
    };
    let relay =
        |mut source: Box<dyn tokio::io::AsyncRead + Send + Unpin>, channel: u8, wanted: bool| {
            let writer = Arc::clone(&writer);
            tokio::spawn(async move {
                let mut buffer = vec![0_u8; 32 * 1024];
                loop {
                    match source.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) if wanted => {
                            if send(&writer, channel, &buffer[..n]).await.is_err() {
                                break;
                            }
                        }
                        Ok(_) => {}
                    }
                }
            })
        };
    let stdout = relay(
        Box::new(child.stdout.take().expect("piped")),
        1,
        options.stdout,
    );
    let stderr = relay(
        Box::new(child.stderr.take().expect("piped")),
        2,
        options.stderr,
    );
    let mut stdin = child.stdin.take();
    let input_writer = Arc::clone(&writer);
    let input = tokio::spawn(async move {
        while let Ok(Some(frame)) = read_frame(&mut reader).await {
            match frame.opcode {
                OP_BINARY | OP_TEXT => {
                    let Some((&channel, data)) = frame.payload.split_first() else {
                        continue;
                    };
                    match channel {
                        0 => {
                            if let Some(pipe) = stdin.as_mut()
                                && pipe.write_all(data).await.is_err()
                            {
                                stdin = None;
                            }
                        }
                        // v5: close a channel; stdin's close is end of input.
                        255 if v5 && data.first() == Some(&0) => stdin = None,
                        _ => {}
                    }
                }
                OP_PING => {
                    let _ = write_frame(
                        &mut *input_writer.lock().await,
                        OP_PONG,
                        &frame.payload,
                        None,
                    )
                    .await;
                }
                OP_CLOSE => break,
                _ => {}
            }
        }
    });
    let status = child.wait().await.ok().and_then(|s| s.code());
    let _ = stdout.await;
    let _ = stderr.await;
    input.abort();
    let _ = send(
        &writer,
        3,
        exit_status(&options.command, status).to_string().as_bytes(),
    )
    .await;
    super::websocket::close(&mut *writer.lock().await).await;
}

/// The `Sec-WebSocket-Key` and the channel protocol (one of [`PROTOCOLS`]) of a WebSocket
/// upgrade, or the answer refusing it.
pub(super) fn negotiate(
    request: &Request<Incoming>,
) -> Result<(String, &'static str), Box<Response<Body>>> {
    let headers = request.headers();
    let offered = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .collect::<Vec<_>>();
    let Some(protocol) = PROTOCOLS.iter().find(|p| offered.iter().any(|o| o == *p)) else {
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            format!("a WebSocket upgrade with one of {PROTOCOLS:?} is required\n"),
        )));
    };
    let Some(key) = headers
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
    else {
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            "missing Sec-WebSocket-Key\n",
        )));
    };
    Ok((key.to_owned(), protocol))
}

/// The runtime's id of `container` in `pod`, if it is running.
pub(super) fn running_container(
    pod: &k8s_openapi::api::core::v1::Pod,
    container: &str,
) -> Option<String> {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .into_iter()
        .flatten()
        .find(|s| s.name == container && s.state.as_ref().is_some_and(|st| st.running.is_some()))
        .and_then(|s| s.container_id)
        .and_then(|id| id.rsplit("://").next().map(str::to_owned))
}

/// Upgrades to a WebSocket and runs the command in the container.
pub(super) fn upgrade(api: &NodeApi, mut request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ["exec", namespace, name, container] = segments.as_slice() else {
        return not_found();
    };
    let options = ExecOptions::from_query(request.uri().query().unwrap_or(""));
    if options.tty {
        return text(StatusCode::BAD_REQUEST, "tty is not supported yet\n");
    }
    if options.command.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "you must specify at least one command for the container\n",
        );
    }
    let (key, protocol) = match negotiate(&request) {
        Ok(negotiated) => negotiated,
        Err(response) => return *response,
    };
    let pod = match find(api, namespace, name) {
        Some(pod) => pod,
        None => return pod_not_found(namespace, name),
    };
    let Some(id) = running_container(&pod, container) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("container {container} is not running in pod {name}\n"),
        );
    };
    let upgrade = hyper::upgrade::on(&mut request);
    let runc = api.runc.clone();
    let v5 = protocol == PROTOCOLS[0];
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => session(upgraded, runc, id, options, v5).await,
            Err(error) => log::debug!("node API: exec upgrade failed: {error}"),
        }
    });
    super::websocket::switching_protocols(&key, protocol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_exit_status_as_kubectl_expects() {
        let options = ExecOptions::from_query(
            "command=sh&command=-c&command=exit+3&stdin=true&stdout=1&stderr=true",
        );
        assert_eq!(options.command, ["sh", "-c", "exit 3"]);
        assert!(options.stdin && options.stdout && options.stderr && !options.tty);
        let status = exit_status(&options.command, Some(3));
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(status["details"]["causes"][0]["message"], "3");
        assert_eq!(exit_status(&options.command, Some(0))["status"], "Success");
    }
}
