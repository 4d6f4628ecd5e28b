//! `/attach/<ns>/<pod>/<container>?output=1&error=1` over WebSocket (`v5.channel.k8s.io` /
//! `v4`): the running container's output from now on, stdout on channel 1 and stderr on
//! channel 2, until the container stops or the client goes; then a `Success` status on
//! channel 3. The output is read from the container's CRI log file (the agent owns the
//! container's stdout and stderr and writes them there). No stdin and no TTY: containers
//! get no stdin pipe.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::WriteHalf;
use tokio::sync::Mutex;

use super::NodeApi;
use super::exec::{ExecOptions, negotiate, running_container};
use super::follow::LiveLog;
use super::logs::{newest_instance, running};
use super::routes::{Body, find, not_found, pod_not_found, text};
use super::websocket::{OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, read_frame, write_frame};
use crate::pods::worker::Statuses;

/// How often the log file is looked at.
const POLL: Duration = Duration::from_millis(100);

type Writer = Arc<Mutex<WriteHalf<TokioIo<Upgraded>>>>;

async fn send(writer: &Writer, channel: u8, data: &[u8]) -> std::io::Result<()> {
    let mut message = Vec::with_capacity(data.len() + 1);
    message.push(channel);
    message.extend_from_slice(data);
    write_frame(&mut *writer.lock().await, OP_BINARY, &message, None).await
}

/// Splits whole CRI entries into (stream, bytes) chunks: the content, with its newline back
/// unless the entry is a partial (`P`) one. An unfinished trailing entry stays in `carry`.
pub fn entries(carry: &mut Vec<u8>) -> Vec<(u8, Vec<u8>)> {
    let mut chunks = Vec::new();
    let mut consumed = 0;
    for raw in carry.split_inclusive(|b| *b == b'\n') {
        if !raw.ends_with(b"\n") {
            break;
        }
        consumed += raw.len();
        let mut fields = raw[..raw.len() - 1].splitn(4, |b| *b == b' ');
        let (Some(_time), Some(stream), Some(tag)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let mut content = fields.next().unwrap_or_default().to_vec();
        if tag != b"P" {
            content.push(b'\n');
        }
        let channel = if stream == b"stderr" { 2 } else { 1 };
        chunks.push((channel, content));
    }
    carry.drain(..consumed);
    chunks
}

/// What an attach session follows.
struct Attached {
    live: LiveLog,
    statuses: Statuses,
    uid: String,
    container: String,
    dir: PathBuf,
    number: u32,
    options: ExecOptions,
}

pub(super) fn upgrade(api: &NodeApi, mut request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ["attach", namespace, name, container] = segments.as_slice() else {
        return not_found();
    };
    let options = ExecOptions::from_query(request.uri().query().unwrap_or(""));
    if options.tty || options.stdin {
        return text(
            StatusCode::BAD_REQUEST,
            "attach takes no stdin and no tty yet: containers have no stdin\n",
        );
    }
    if !options.stdout && !options.stderr {
        return text(
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 of stdin, stdout, stderr\n",
        );
    }
    let (key, protocol) = match negotiate(&request) {
        Ok(negotiated) => negotiated,
        Err(response) => return *response,
    };
    let Some(pod) = find(api, namespace, name) else {
        return pod_not_found(namespace, name);
    };
    if running_container(&pod, container).is_none() {
        return text(
            StatusCode::BAD_REQUEST,
            format!("container {container} is not running in pod {name}\n"),
        );
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let dir = api
        .pod_logs_dir
        .join(format!("{namespace}_{name}_{uid}"))
        .join(container);
    let number = newest_instance(&dir).unwrap_or(0);
    let mut live = LiveLog::open(&dir.join(format!("{number}.log")));
    // Attaching shows what comes from now on: skip what is written already.
    let mut skipped = Vec::new();
    if let Err(error) = live.read_new(&mut skipped) {
        return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n"));
    }
    let attached = Attached {
        live,
        statuses: api.statuses.clone(),
        uid,
        container: (*container).to_owned(),
        dir,
        number,
        options,
    };
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => attached.session(upgraded).await,
            Err(error) => log::debug!("node API: attach upgrade failed: {error}"),
        }
    });
    super::websocket::switching_protocols(&key, protocol)
}

impl Attached {
    async fn session(mut self, upgraded: Upgraded) {
        let (mut reader, writer) = tokio::io::split(TokioIo::new(upgraded));
        let writer: Writer = Arc::new(Mutex::new(writer));
        let replies = Arc::clone(&writer);
        let client = async move {
            while let Ok(Some(frame)) = read_frame(&mut reader).await {
                match frame.opcode {
                    OP_CLOSE => break,
                    OP_PING => {
                        let mut writer = replies.lock().await;
                        let _ = write_frame(&mut *writer, OP_PONG, &frame.payload, None).await;
                    }
                    _ => {}
                }
            }
        };
        let output = Arc::clone(&writer);
        let follow = async move {
            let mut carry = Vec::new();
            let mut polls = 0_u32;
            loop {
                tokio::time::sleep(POLL).await;
                if self.live.read_new(&mut carry).is_err() {
                    return;
                }
                for (channel, data) in entries(&mut carry) {
                    let wanted = if channel == 1 {
                        self.options.stdout
                    } else {
                        self.options.stderr
                    };
                    if wanted && send(&output, channel, &data).await.is_err() {
                        return;
                    }
                }
                polls += 1;
                if polls.is_multiple_of(10)
                    && (!running(&self.statuses, &self.uid, &self.container)
                        || newest_instance(&self.dir).is_some_and(|n| n > self.number))
                {
                    return;
                }
            }
        };
        tokio::select! {
            () = client => {}
            () = follow => {
                let status = json!({"metadata": {}, "status": "Success"});
                let _ = send(&writer, 3, status.to_string().as_bytes()).await;
            }
        }
        super::websocket::close(&mut *writer.lock().await).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_entries_become_stream_chunks() {
        let mut carry = b"2026-11-25T10:00:00.000000000Z stdout F hello\n\
            2026-11-25T10:00:00.100000000Z stderr P par\n\
            2026-11-25T10:00:00.200000000Z stderr F tial\n\
            2026-11-25T10:00:00.3"
            .to_vec();
        let chunks = entries(&mut carry);
        assert_eq!(
            chunks,
            [
                (1, b"hello\n".to_vec()),
                (2, b"par".to_vec()),
                (2, b"tial\n".to_vec())
            ]
        );
        assert_eq!(carry, b"2026-11-25T10:00:00.3");
    }
}
