//! Port-forward over WebSocket (`v4.channel.k8s.io`, kubelet's `handleWebSocketStreams`):
//! `?port=P` (repeatable) names the ports; port `i` has data channel `2i` and error channel
//! `2i+1`, and the first message on each is the port, 2 bytes little-endian. Every message
//! starts with its channel byte.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, WriteHalf};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Mutex;

use super::Target;
use crate::nodeapi::routes::{Body, text};
use crate::nodeapi::websocket::{
    OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, read_frame, switching_protocols, write_frame,
};

/// The subprotocols served (the binary one; kubelet's base64 variant is not).
const PROTOCOLS: [&str; 1] = ["v4.channel.k8s.io"];

type Writer = Arc<Mutex<WriteHalf<TokioIo<Upgraded>>>>;

async fn send(writer: &Writer, channel: u8, data: &[u8]) -> std::io::Result<()> {
    let mut message = Vec::with_capacity(data.len() + 1);
    message.push(channel);
    message.extend_from_slice(data);
    write_frame(&mut *writer.lock().await, OP_BINARY, &message, None).await
}

/// The ports of the query; kubelet's `NewV4Options` checks.
pub fn ports_of(query: &str) -> Result<Vec<u16>, String> {
    let ports: Vec<String> = form_urlencoded::parse(query.as_bytes())
        .filter(|(key, _)| key == "port")
        .map(|(_, value)| value.into_owned())
        .collect();
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".to_owned());
    }
    ports
        .iter()
        .map(|port| {
            port.parse::<u16>()
                .ok()
                .filter(|port| *port > 0)
                .ok_or_else(|| format!("unable to parse {port:?} as a port"))
        })
        .collect()
}

pub(super) fn upgrade(mut request: Request<Incoming>, target: Target) -> Response<Body> {
    let ports = match ports_of(request.uri().query().unwrap_or("")) {
        Ok(ports) => ports,
        Err(error) => return text(StatusCode::BAD_REQUEST, format!("{error}\n")),
    };
    let offered = super::header_tokens(&request, "sec-websocket-protocol");
    let Some(protocol) = PROTOCOLS.iter().find(|p| offered.iter().any(|o| o == *p)) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("a WebSocket upgrade with one of {PROTOCOLS:?} is required\n"),
        );
    };
    let Some(key) = request
        .headers()
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
    };
    let upgraded = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgraded.await {
            Ok(upgraded) => session(upgraded, target, ports).await,
            Err(error) => log::debug!("node api: port-forward upgrade failed: {error}"),
        }
    });
    switching_protocols(&key, protocol)
}

async fn session(upgraded: Upgraded, target: Target, ports: Vec<u16>) {
    let (mut reader, writer) = tokio::io::split(TokioIo::new(upgraded));
    let writer: Writer = Arc::new(Mutex::new(writer));
    let mut to_pods: Vec<Option<OwnedWriteHalf>> = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (index, port) in ports.iter().enumerate() {
        let (data, error) = ((index * 2) as u8, (index * 2 + 1) as u8);
        let prefix = port.to_le_bytes();
        if send(&writer, data, &prefix).await.is_err()
            || send(&writer, error, &prefix).await.is_err()
        {
            return;
        }
        match target.connect(*port).await {
            Err(message) => {
                let text = target.error_text(*port, &message);
                let _ = send(&writer, error, text.as_bytes()).await;
                to_pods.push(None);
            }
            Ok(stream) => {
                let (mut pod_read, pod_write) = stream.into_split();
                to_pods.push(Some(pod_write));
                let writer = Arc::clone(&writer);
                tasks.spawn(async move {
                    let mut buffer = vec![0_u8; 32 * 1024];
                    while let Ok(count @ 1..) = pod_read.read(&mut buffer).await {
                        if send(&writer, data, &buffer[..count]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        }
    }
    let pumped = Arc::clone(&writer);
    let inbound = async move {
        while let Ok(Some(frame)) = read_frame(&mut reader).await {
            match frame.opcode {
                OP_BINARY => {
                    let Some((&channel, data)) = frame.payload.split_first() else {
                        continue;
                    };
                    if channel % 2 == 0
                        && let Some(slot) = to_pods.get_mut(usize::from(channel / 2))
                        && let Some(pod) = slot.as_mut()
                        && pod.write_all(data).await.is_err()
                    {
                        *slot = None;
                    }
                }
                OP_PING => {
                    let _ =
                        write_frame(&mut *pumped.lock().await, OP_PONG, &frame.payload, None).await;
                }
                OP_CLOSE => break,
                _ => {}
            }
        }
    };
    // The session ends when the client goes or every pod connection has closed.
    tokio::select! {
        () = inbound => {}
        () = async { while tasks.join_next().await.is_some() {} } => {}
    }
    crate::nodeapi::websocket::close(&mut *writer.lock().await).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_the_query() {
        assert_eq!(ports_of("port=80&port=8080"), Ok(vec![80, 8080]));
        assert_eq!(
            ports_of(""),
            Err("query parameter \"port\" is required".to_owned())
        );
        assert!(ports_of("port=0").is_err());
        assert!(ports_of("port=http").is_err());
    }
}
