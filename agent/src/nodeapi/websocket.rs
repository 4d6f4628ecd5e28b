//! The WebSocket pieces the node API's exec needs (RFC 6455): the handshake's accept key and
//! frames, read and written over any async stream. Server frames are unmasked; a client (the
//! tests) masks its own.

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest frame accepted from a peer.
const MAX_FRAME: u64 = 16 << 20;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{}{GUID}", key.trim()).as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// The `101` answer to a WebSocket upgrade with `key`, speaking `protocol`.
pub fn switching_protocols(key: &str, protocol: &str) -> http::Response<super::routes::Body> {
    use http_body_util::BodyExt as _;
    http::Response::builder()
        .status(http::StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept_key(key))
        .header("sec-websocket-protocol", protocol)
        .body(http_body_util::Full::new(bytes::Bytes::new()).boxed())
        .expect("a valid response")
}

/// One frame, whole (FIN set): `opcode` and `payload`, masked with `mask` when given.
pub fn encode(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        len @ 0..=125 => frame.push(mask_bit | len as u8),
        len @ 126..=0xffff => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => frame.extend_from_slice(payload),
    }
    frame
}

/// A frame as read: opcode (continuations already joined) and unmasked payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// Reads one message (joining continuation frames); `None` at end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> std::io::Result<Option<Frame>> {
    let mut message: Option<Frame> = None;
    loop {
        let mut head = [0_u8; 2];
        match reader.read_exact(&mut head).await {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(error) => return Err(error),
        }
        let fin = head[0] & 0x80 != 0;
        let opcode = head[0] & 0x0f;
        let masked = head[1] & 0x80 != 0;
        let mut len = u64::from(head[1] & 0x7f);
        if len == 126 {
            let mut bytes = [0_u8; 2];
            reader.read_exact(&mut bytes).await?;
            len = u64::from(u16::from_be_bytes(bytes));
        } else if len == 127 {
            let mut bytes = [0_u8; 8];
            reader.read_exact(&mut bytes).await?;
            len = u64::from_be_bytes(bytes);
        }
        if len > MAX_FRAME {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "frame too large",
            ));
        }
        let mut key = [0_u8; 4];
        if masked {
            reader.read_exact(&mut key).await?;
        }
        let mut payload = vec![0_u8; usize::try_from(len).unwrap_or(0)];
        reader.read_exact(&mut payload).await?;
        if masked {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= key[i % 4];
            }
        }
        match (&mut message, opcode) {
            (Some(partial), OP_CONTINUATION) => partial.payload.extend(payload),
            _ => message = Some(Frame { opcode, payload }),
        }
        if fin {
            return Ok(message);
        }
    }
}

/// Ends a server's side of a WebSocket: a normal-closure close frame, then the stream's
/// shutdown; errors ignored (the peer may be gone already).
pub async fn close<W: AsyncWrite + Unpin>(writer: &mut W) {
    let _ = write_frame(writer, OP_CLOSE, &1000_u16.to_be_bytes(), None).await;
    let _ = writer.shutdown().await;
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    opcode: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) -> std::io::Result<()> {
    writer.write_all(&encode(opcode, payload, mask)).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_of_the_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[tokio::test]
    async fn frames_round_trip_masked_and_long() {
        let long = vec![7_u8; 70_000];
        let mut bytes = encode(OP_BINARY, b"\x01hi", Some([1, 2, 3, 4]));
        bytes.extend(encode(OP_BINARY, &long, None));
        let mut reader = bytes.as_slice();
        let first = read_frame(&mut reader).await.unwrap().unwrap();
        assert_eq!(
            first,
            Frame {
                opcode: OP_BINARY,
                payload: b"\x01hi".to_vec()
            }
        );
        let second = read_frame(&mut reader).await.unwrap().unwrap();
        assert_eq!(second.payload.len(), 70_000);
        assert_eq!(read_frame(&mut reader).await.unwrap(), None);
    }
}
