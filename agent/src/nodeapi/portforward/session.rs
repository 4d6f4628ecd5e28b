//! One SPDY port-forward connection, as kubelet's `httpStreamHandler` runs it: streams are
//! accepted (SYN_REPLY) when their `port` and `streamType` headers are valid and refused
//! otherwise; an `error` and a `data` stream with one `requestID` make a pair, and each pair
//! is forwarded to the pod's port until either side closes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, WriteHalf};
use tokio::sync::{Mutex, mpsc};
use tokio::task::{AbortHandle, JoinSet};

use super::Target;
use super::spdy::{self, Frame, FrameReader, FrameWriter, Headers};

/// How long the other direction may go on once one has ended (as containerd waits).
const LINGER: Duration = Duration::from_secs(1);
/// The largest data frame sent.
const CHUNK: usize = 32 * 1024;

/// The connection's write side, shared by the streams; whole frames only.
#[derive(Debug, Clone)]
struct Out(Arc<Mutex<(WriteHalf<TokioIo<Upgraded>>, FrameWriter)>>);

impl Out {
    async fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        let mut guard = self.0.lock().await;
        guard.0.write_all(frame).await?;
        guard.0.flush().await
    }

    async fn reply(&self, stream_id: u32) -> std::io::Result<()> {
        let mut guard = self.0.lock().await;
        let frame = guard
            .1
            .syn_reply(stream_id)
            .map_err(std::io::Error::other)?;
        guard.0.write_all(&frame).await?;
        guard.0.flush().await
    }

    /// Ends our side of a stream (an empty data frame with FIN).
    async fn close(&self, stream_id: u32) {
        let _ = self.send(&FrameWriter::data(stream_id, true, &[])).await;
    }
}

/// The type of a stream, from its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Error,
    Data,
}

/// Checks a new stream's headers as kubelet's `httpStreamReceived` does.
fn stream_of(headers: &Headers) -> Result<(u16, Kind), String> {
    let port = headers
        .get("port")
        .filter(|port| !port.is_empty())
        .ok_or("\"port\" header is required")?;
    let port: u16 = port
        .parse()
        .map_err(|error| format!("unable to parse {port:?} as a port: {error}"))?;
    if port < 1 {
        return Err(format!("port \"{port}\" must be > 0"));
    }
    match headers.get("streamtype").map(String::as_str) {
        None | Some("") => Err("\"streamType\" header is required".to_owned()),
        Some("error") => Ok((port, Kind::Error)),
        Some("data") => Ok((port, Kind::Data)),
        Some(other) => Err(format!("invalid stream type {other:?}")),
    }
}

/// The request a stream belongs to: its `requestID`, or for old clients one made from the
/// stream ids (kubelet's fallback).
fn request_of(headers: &Headers, stream_id: u32, kind: Kind) -> String {
    match headers.get("requestid").filter(|id| !id.is_empty()) {
        Some(id) => id.clone(),
        None if kind == Kind::Data => stream_id.saturating_sub(2).to_string(),
        None => stream_id.to_string(),
    }
}

#[derive(Debug, Default)]
struct Pair {
    error: Option<u32>,
    data: Option<u32>,
}

/// Serves the streams of one upgraded connection until it closes.
pub async fn serve(upgraded: Upgraded, target: Target) {
    let (reader, writer) = tokio::io::split(TokioIo::new(upgraded));
    let out = Out(Arc::new(Mutex::new((writer, FrameWriter::new()))));
    let mut frames = FrameReader::new(reader);
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // Data streams' bytes towards the pod, and the forwards by their streams' ids.
    let mut inbound: HashMap<u32, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut forwards: HashMap<u32, AbortHandle> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut last_stream = 0;
    loop {
        let frame = match frames.next().await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(error) => {
                log::debug!("node api: port-forward for {}: {error}", target.pod);
                break;
            }
        };
        match frame {
            Frame::SynStream {
                stream_id, headers, ..
            } => {
                last_stream = stream_id;
                let (port, kind) = match stream_of(&headers) {
                    Ok(stream) => stream,
                    Err(error) => {
                        log::info!("node api: port-forward stream refused: {error}");
                        let _ = out
                            .send(&FrameWriter::rst_stream(stream_id, spdy::REFUSED_STREAM))
                            .await;
                        continue;
                    }
                };
                if out.reply(stream_id).await.is_err() {
                    break;
                }
                let request = request_of(&headers, stream_id, kind);
                let pair = pairs.entry(request.clone()).or_default();
                let slot = match kind {
                    Kind::Error => &mut pair.error,
                    Kind::Data => &mut pair.data,
                };
                if slot.is_some() {
                    let message = format!(
                        "error processing stream for request {request}: {} stream already assigned",
                        if kind == Kind::Error { "error" } else { "data" }
                    );
                    if let Some(error_stream) = pair.error {
                        let _ = out
                            .send(&FrameWriter::data(error_stream, false, message.as_bytes()))
                            .await;
                    }
                    continue;
                }
                *slot = Some(stream_id);
                if let Pair {
                    error: Some(error),
                    data: Some(data),
                } = *pair
                {
                    pairs.remove(&request);
                    let (sender, receiver) = mpsc::channel(16);
                    inbound.insert(data, sender);
                    let handle = tasks.spawn(forward(
                        target.clone(),
                        port,
                        (data, error),
                        receiver,
                        out.clone(),
                    ));
                    forwards.insert(data, handle.clone());
                    forwards.insert(error, handle);
                }
            }
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                if let Some(sender) = inbound.get(&stream_id)
                    && !data.is_empty()
                    && sender.send(data).await.is_err()
                {
                    inbound.remove(&stream_id);
                }
                if fin {
                    inbound.remove(&stream_id);
                }
            }
            Frame::RstStream { stream_id, .. } => {
                inbound.remove(&stream_id);
                if let Some(handle) = forwards.remove(&stream_id) {
                    handle.abort();
                }
            }
            Frame::Ping { id } => {
                if out.send(&FrameWriter::ping(id)).await.is_err() {
                    break;
                }
            }
            Frame::GoAway => break,
            Frame::Other => {}
        }
    }
    let _ = out.send(&FrameWriter::go_away(last_stream)).await;
    // Dropping the set aborts the forwards still running.
    tasks.shutdown().await;
    let _ = out.0.lock().await.0.shutdown().await;
}

/// Forwards one stream pair to the pod's `port`.
async fn forward(
    target: Target,
    port: u16,
    (data, error): (u32, u32),
    mut inbound: mpsc::Receiver<Vec<u8>>,
    out: Out,
) {
    match target.connect(port).await {
        Err(message) => {
            let text = target.error_text(port, &message);
            log::info!("node api: {text}");
            let _ = out
                .send(&FrameWriter::data(error, false, text.as_bytes()))
                .await;
        }
        Ok(stream) => {
            let (mut pod_read, mut pod_write) = stream.into_split();
            let to_pod = async move {
                while let Some(chunk) = inbound.recv().await {
                    if pod_write.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                let _ = pod_write.shutdown().await;
            };
            let sender = out.clone();
            let from_pod = async move {
                let mut buffer = vec![0_u8; CHUNK];
                loop {
                    match pod_read.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(count) => {
                            let frame = FrameWriter::data(data, false, &buffer[..count]);
                            if sender.send(&frame).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            };
            let (mut to_pod, mut from_pod) = (Box::pin(to_pod), Box::pin(from_pod));
            tokio::select! {
                () = &mut to_pod => { let _ = tokio::time::timeout(LINGER, from_pod).await; }
                () = &mut from_pod => { let _ = tokio::time::timeout(LINGER, to_pod).await; }
            }
        }
    }
    out.close(data).await;
    out.close(error).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn streams_are_checked_as_kubelet_does() {
        assert_eq!(
            stream_of(&headers(&[("port", "80"), ("streamtype", "data")])),
            Ok((80, Kind::Data))
        );
        assert_eq!(
            stream_of(&headers(&[("streamtype", "data")])),
            Err("\"port\" header is required".to_owned())
        );
        assert!(stream_of(&headers(&[("port", "0"), ("streamtype", "data")])).is_err());
        assert!(stream_of(&headers(&[("port", "x"), ("streamtype", "data")])).is_err());
        assert_eq!(
            stream_of(&headers(&[("port", "80"), ("streamtype", "mystery")])),
            Err("invalid stream type \"mystery\"".to_owned())
        );
        let with_id = headers(&[("requestid", "7")]);
        assert_eq!(request_of(&with_id, 5, Kind::Data), "7");
        assert_eq!(request_of(&Headers::new(), 1, Kind::Error), "1");
        assert_eq!(request_of(&Headers::new(), 3, Kind::Data), "1");
    }
}
