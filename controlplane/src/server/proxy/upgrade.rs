//! Upgraded streams to a node: exec and attach (WebSocket `v5.channel.k8s.io` / `v4`, or
//! SPDY) and port-forward pass through byte for byte once the node has answered `101`
//! (kube-apiserver's `UpgradeAwareHandler`); kubectl's port-forward over WebSocket
//! (`SPDY/3.1+portforward.k8s.io`, on by default since 1.31) is tunnelled: the node is asked
//! for a SPDY upgrade and each WebSocket binary message carries the SPDY bytes
//! (kube-apiserver's `TunnelingHandler`). A node's answer other than `101` goes back as it is.

use std::sync::Arc;

use ::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::Mutex;

use super::node::{self, Endpoint};
use super::websocket::{self, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG};
use crate::api::ApiError;
use crate::server::ApiServer;
use crate::server::http::{self, Body};

/// The SPDY upgrade token and the tunnelling prefix of WebSocket subprotocols.
const SPDY: &str = "SPDY/3.1";
const TUNNEL_PREFIX: &str = "SPDY/3.1+";
const STREAM_PROTOCOL: &str = "x-stream-protocol-version";

/// Request headers a node needs to take the upgrade; credentials stay here.
const FORWARDED: [&str; 6] = [
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    STREAM_PROTOCOL,
];

fn is_upgrade(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade && headers.contains_key(header::UPGRADE)
}

/// The SPDY protocols of a WebSocket request that tunnels SPDY (`SPDY/3.1+<protocol>`).
fn tunnelled_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|protocol| protocol.ends_with(".k8s.io"))
        .filter_map(|protocol| protocol.strip_prefix(TUNNEL_PREFIX))
        .map(str::to_owned)
        .collect()
}

/// Whether a port-forward request is kubectl's SPDY-over-WebSocket tunnel.
pub fn is_spdy_tunnel(headers: &HeaderMap) -> bool {
    let websocket = headers
        .get(header::UPGRADE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.eq_ignore_ascii_case("websocket"));
    websocket && !tunnelled_protocols(headers).is_empty()
}

fn upgrade_required() -> ApiError {
    ApiError::bad_request("Upgrade request required")
}

/// A node's answer other than `101`, passed through.
fn pass_through(response: Response<Incoming>) -> Response<Body> {
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, node::relay_body(body))
}

fn switching(headers: impl IntoIterator<Item = (HeaderName, HeaderValue)>) -> Response<Body> {
    let mut response = Response::new(http::full(Vec::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    response.headers_mut().extend(headers);
    response
}

/// Proxies an upgrade request to `path` on the node; once both sides have switched, bytes
/// flow unchanged until either closes.
pub async fn proxy(
    server: &ApiServer,
    endpoint: &Endpoint,
    path: &str,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    if !is_upgrade(request.headers()) {
        return Err(upgrade_required());
    }
    let client = hyper::upgrade::on(&mut request);
    let mut node_request =
        endpoint.request(request.method().clone(), path, http::full(Vec::new()))?;
    for name in FORWARDED {
        for value in request.headers().get_all(name) {
            node_request.headers_mut().append(name, value.clone());
        }
    }
    let mut response = node::send(server, endpoint, node_request).await?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(pass_through(response));
    }
    let node = hyper::upgrade::on(&mut response);
    tokio::spawn(splice(client, node));
    let headers = response
        .headers()
        .iter()
        .filter(|(name, _)| *name != header::CONTENT_LENGTH)
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect::<Vec<_>>();
    Ok(switching(headers))
}

async fn upgraded(client: OnUpgrade, node: OnUpgrade) -> Option<(Upgraded, Upgraded)> {
    match tokio::join!(client, node) {
        (Ok(client), Ok(node)) => Some((client, node)),
        (client, node) => {
            log::debug!(
                "upgrade failed: client {:?}, node {:?}",
                client.err(),
                node.err()
            );
            None
        }
    }
}

async fn splice(client: OnUpgrade, node: OnUpgrade) {
    if let Some((client, node)) = upgraded(client, node).await {
        let (mut client, mut node) = (TokioIo::new(client), TokioIo::new(node));
        if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut node).await {
            log::debug!("proxied stream ended: {error}");
        }
    }
}

/// kubectl's port-forward over WebSocket: asks the node for a SPDY upgrade with the
/// tunnelled protocols, then carries the SPDY bytes in WebSocket binary messages.
pub async fn tunnel(
    server: &ApiServer,
    endpoint: &Endpoint,
    path: &str,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let protocols = tunnelled_protocols(request.headers());
    let key = request
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|value| value.to_str().ok())
        .ok_or_else(|| ApiError::bad_request("missing Sec-WebSocket-Key"))?
        .to_owned();
    if !is_upgrade(request.headers()) {
        return Err(upgrade_required());
    }
    let client = hyper::upgrade::on(&mut request);
    let mut node_request = endpoint.request(Method::POST, path, http::full(Vec::new()))?;
    let headers = node_request.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(SPDY));
    for protocol in &protocols {
        if let Ok(value) = HeaderValue::from_str(protocol) {
            headers.append(STREAM_PROTOCOL, value);
        }
    }
    let mut response = node::send(server, endpoint, node_request).await?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(pass_through(response));
    }
    let spdy = response
        .headers()
        .get(header::UPGRADE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.to_ascii_lowercase().contains("spdy/3.1"));
    if !spdy {
        return Err(ApiError::internal(
            "unable to upgrade: missing upgrade headers in response",
        ));
    }
    let chosen = response
        .headers()
        .get(STREAM_PROTOCOL)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .map(str::to_owned);
    let node = hyper::upgrade::on(&mut response);
    tokio::spawn(async move {
        if let Some((client, node)) = upgraded(client, node).await {
            carry(TokioIo::new(client), TokioIo::new(node)).await;
        }
    });
    let mut answer = vec![
        (header::UPGRADE, HeaderValue::from_static("websocket")),
        (header::CONNECTION, HeaderValue::from_static("Upgrade")),
    ];
    if let Ok(accept) = HeaderValue::from_str(&websocket::accept_key(&key)) {
        answer.push((header::SEC_WEBSOCKET_ACCEPT, accept));
    }
    if let Some(protocol) = chosen
        && let Ok(value) = HeaderValue::from_str(&format!("{TUNNEL_PREFIX}{protocol}"))
    {
        answer.push((header::SEC_WEBSOCKET_PROTOCOL, value));
    }
    Ok(switching(answer))
}

/// Relays WebSocket binary messages from `client` to `node` as bytes and `node`'s bytes back
/// as binary messages, until either side closes.
async fn carry<C, N>(client: C, node: N)
where
    C: AsyncRead + AsyncWrite + Send + 'static,
    N: AsyncRead + AsyncWrite + Send + 'static,
{
    let (client_read, client_write) = tokio::io::split(client);
    let mut client_read = websocket::MessageReader::new(client_read);
    let (mut node_read, mut node_write) = tokio::io::split(node);
    let client_write = Arc::new(Mutex::new(client_write));
    let replies = Arc::clone(&client_write);
    let upstream = async move {
        while let Ok(Some(frame)) = client_read.next().await {
            match frame.opcode {
                OP_BINARY => {
                    if node_write.write_all(&frame.payload).await.is_err() {
                        break;
                    }
                }
                OP_PING => {
                    let mut writer = replies.lock().await;
                    if websocket::write_frame(&mut *writer, OP_PONG, &frame.payload)
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                OP_PONG => {}
                // A close, or a text message (the tunnel carries binary only).
                _ => break,
            }
        }
        let _ = node_write.shutdown().await;
    };
    let downstream = async move {
        let mut buffer = vec![0_u8; 32 * 1024];
        loop {
            match node_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(count) => {
                    let mut writer = client_write.lock().await;
                    if websocket::write_frame(&mut *writer, OP_BINARY, &buffer[..count])
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let mut writer = client_write.lock().await;
        let _ = websocket::write_frame(&mut *writer, OP_CLOSE, &1000_u16.to_be_bytes()).await;
        let _ = writer.shutdown().await;
    };
    // Either direction ending ends the tunnel: SPDY closes both ways at once.
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect()
    }

    #[test]
    fn kubectls_port_forward_tunnel_is_recognised() {
        let tunnel = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-protocol", "SPDY/3.1+portforward.k8s.io"),
        ]);
        assert!(is_upgrade(&tunnel));
        assert!(is_spdy_tunnel(&tunnel));
        assert_eq!(tunnelled_protocols(&tunnel), ["portforward.k8s.io"]);
        let exec = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            (
                "sec-websocket-protocol",
                "v5.channel.k8s.io, v4.channel.k8s.io",
            ),
        ]);
        assert!(!is_spdy_tunnel(&exec));
        assert!(!is_upgrade(&headers(&[("upgrade", "websocket")])));
    }

    #[tokio::test]
    async fn the_tunnel_carries_bytes_both_ways() {
        let (client, mut client_peer) = tokio::io::duplex(4096);
        let (node, mut node_peer) = tokio::io::duplex(4096);
        let task = tokio::spawn(carry(client, node));
        client_peer
            .write_all(&websocket::encode(OP_BINARY, b"syn", Some([9, 8, 7, 6])))
            .await
            .unwrap();
        let mut got = [0_u8; 3];
        node_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"syn");
        node_peer.write_all(b"reply").await.unwrap();
        let mut client_peer = websocket::MessageReader::new(client_peer);
        let message = client_peer.next().await.unwrap().unwrap();
        assert_eq!(
            (message.opcode, message.payload.as_slice()),
            (OP_BINARY, &b"reply"[..])
        );
        drop(node_peer);
        let close = client_peer.next().await.unwrap().unwrap();
        assert_eq!(close.opcode, OP_CLOSE);
        task.await.unwrap();
    }
}
