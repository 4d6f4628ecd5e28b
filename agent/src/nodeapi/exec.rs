//! `/exec/<ns>/<pod>/<container>?command=...&stdin=1&stdout=1&stderr=1` over WebSocket with
//! the `v5.channel.k8s.io` (or `v4`) subprotocol, what kubectl 1.32 speaks: every binary
//! message starts with its channel (0 stdin, 1 stdout, 2 stderr, 3 the final `Status`, 255
//! close a channel in v5, 4 a terminal resize). The command runs with `runc exec`; with
//! `tty=true` on a terminal of the agent's own ([`super::pty`]).

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Mutex;

use super::NodeApi;
use super::pty::{self, Pty};
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

/// What the client sends, decoded from its frames.
enum Input {
    Stdin(Vec<u8>),
    /// End of input (v5's close of channel 0).
    CloseStdin,
    /// A terminal resize (channel 4): rows, columns.
    Resize(u16, u16),
}

/// Reads the client's frames until it closes: answers pings, and passes stdin, its end and
/// resizes on to `inputs`.
async fn read_inputs(
    mut reader: tokio::io::ReadHalf<TokioIo<Upgraded>>,
    writer: Writer,
    inputs: tokio::sync::mpsc::Sender<Input>,
    v5: bool,
) {
    while let Ok(Some(frame)) = read_frame(&mut reader).await {
        match frame.opcode {
            OP_BINARY | OP_TEXT => {
                let Some((&channel, data)) = frame.payload.split_first() else {
                    continue;
                };
                let input = match channel {
                    0 => Input::Stdin(data.to_vec()),
                    4 => match serde_json::from_slice::<TerminalSize>(data) {
                        Ok(size) => Input::Resize(size.height, size.width),
                        Err(error) => {
                            log::debug!("node API: exec: unreadable resize message: {error}");
                            continue;
                        }
                    },
                    // v5: close a channel; stdin's close is end of input.
                    255 if v5 && data.first() == Some(&0) => Input::CloseStdin,
                    _ => continue,
                };
                if inputs.send(input).await.is_err() {
                    break;
                }
            }
            OP_PING => {
                let _ = write_frame(&mut *writer.lock().await, OP_PONG, &frame.payload, None).await;
            }
            OP_CLOSE => break,
            _ => {}
        }
    }
}

/// The resize message kubectl sends on channel 4 (`remotecommand.TerminalSize`).
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TerminalSize {
    width: u16,
    height: u16,
}

/// Copies `source` to channel `channel` (or drops it when the client did not ask for it)
/// until it ends.
fn relay(
    writer: &Writer,
    mut source: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    channel: u8,
    wanted: bool,
) -> tokio::task::JoinHandle<()> {
    let writer = Arc::clone(writer);
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
}

/// Runs the command in container `id` and relays it over the upgraded connection.
pub async fn session(upgraded: Upgraded, runc: Runc, id: String, options: ExecOptions, v5: bool) {
    let (reader, writer) = tokio::io::split(TokioIo::new(upgraded));
    let writer: Writer = Arc::new(Mutex::new(writer));
    let (inputs, received) = tokio::sync::mpsc::channel(16);
    let input = tokio::spawn(read_inputs(reader, Arc::clone(&writer), inputs, v5));
    let mut command = tokio::process::Command::new(&runc.binary);
    command.arg("--root").arg(&runc.root).arg("exec");
    let status = if options.tty {
        command.arg("--tty").arg(&id).args(&options.command);
        with_terminal(command, &writer, received).await
    } else {
        command.arg(&id).args(&options.command);
        with_pipes(command, &writer, received, &options).await
    };
    input.abort();
    let status = match status {
        Ok(code) => exit_status(&options.command, code),
        Err(error) => {
            json!({"metadata": {}, "status": "Failure", "message": format!("cannot run runc: {error}")})
        }
    };
    let _ = send(&writer, 3, status.to_string().as_bytes()).await;
    super::websocket::close(&mut *writer.lock().await).await;
}

/// `runc exec` with pipes: stdout and stderr on channels 1 and 2. Its exit code.
async fn with_pipes(
    mut command: tokio::process::Command,
    writer: &Writer,
    mut received: tokio::sync::mpsc::Receiver<Input>,
    options: &ExecOptions,
) -> std::io::Result<Option<i32>> {
    let mut child = command
        .stdin(if options.stdin {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = relay(
        writer,
        Box::new(child.stdout.take().expect("piped")),
        1,
        options.stdout,
    );
    let stderr = relay(
        writer,
        Box::new(child.stderr.take().expect("piped")),
        2,
        options.stderr,
    );
    let mut stdin = child.stdin.take();
    let feed = tokio::spawn(async move {
        while let Some(input) = received.recv().await {
            match input {
                Input::Stdin(data) => {
                    if let Some(pipe) = stdin.as_mut()
                        && pipe.write_all(&data).await.is_err()
                    {
                        stdin = None;
                    }
                }
                Input::CloseStdin => stdin = None,
                Input::Resize(..) => {}
            }
        }
    });
    let status = child.wait().await.ok().and_then(|s| s.code());
    let _ = stdout.await;
    let _ = stderr.await;
    feed.abort();
    Ok(status)
}

/// `runc exec --tty` on a terminal of the node API's own ([`Pty`]): the terminal's output on
/// channel 1 (a terminal has no separate stderr), stdin and resizes into it. Its exit code.
async fn with_terminal(
    mut command: tokio::process::Command,
    writer: &Writer,
    mut received: tokio::sync::mpsc::Receiver<Input>,
) -> std::io::Result<Option<i32>> {
    let mut pty = Pty::open()?;
    command
        .stdin(pty.slave_stdio()?)
        .stdout(pty.slave_stdio()?)
        .stderr(pty.slave_stdio()?)
        .kill_on_drop(true);
    // SAFETY: become_terminal_leader makes only async-signal-safe calls.
    unsafe { command.pre_exec(|| pty::become_terminal_leader()) };
    let mut child = command.spawn()?;
    // Reads from the master end finish only once no copy of the slave end is left here: the
    // command holds some until it is dropped.
    drop(command);
    pty.close_slave();
    let pty = Arc::new(pty);
    let output = {
        let (pty, writer) = (Arc::clone(&pty), Arc::clone(writer));
        tokio::spawn(async move {
            let mut buffer = vec![0_u8; 32 * 1024];
            while let Ok(n @ 1..) = pty.read(&mut buffer).await {
                if send(&writer, 1, &buffer[..n]).await.is_err() {
                    break;
                }
            }
        })
    };
    let feed = {
        let pty = Arc::clone(&pty);
        tokio::spawn(async move {
            while let Some(input) = received.recv().await {
                let done = match input {
                    Input::Stdin(data) => pty.write_all(&data).await,
                    // End of input on a terminal is its EOF character, as a user's ^D.
                    Input::CloseStdin => pty.write_all(&[4]).await,
                    Input::Resize(rows, cols) => pty.resize(rows, cols),
                };
                if let Err(error) = done {
                    log::debug!("node API: exec: terminal input: {error}");
                }
            }
        })
    };
    let status = child.wait().await.ok().and_then(|s| s.code());
    // The terminal's last output drains, then reads end: runc held the only slave end.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), output).await;
    feed.abort();
    Ok(status)
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
