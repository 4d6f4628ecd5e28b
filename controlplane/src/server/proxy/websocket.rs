//! The bits of WebSocket (RFC 6455) the port-forward tunnel needs: the handshake's accept key
//! and whole messages, read (masked or not, fragments joined) and written (unmasked, as a
//! server does).

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The largest message taken from a client.
const MAX_MESSAGE: u64 = 16 << 20;

pub const OP_CONTINUATION: u8 = 0x0;
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

/// One whole frame; masked with `mask` when given (clients mask, servers do not).
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

/// A message: its opcode and unmasked payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// Reads whole messages from a stream, joining continuation frames.
#[derive(Debug)]
pub struct MessageReader<R> {
    reader: R,
    /// A fragmented message being read (control frames may come between its fragments).
    partial: Option<Message>,
}

impl<R: AsyncRead + Unpin> MessageReader<R> {
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            partial: None,
        }
    }

    /// The next message; `None` at the end of the stream.
    pub async fn next(&mut self) -> std::io::Result<Option<Message>> {
        let reader = &mut self.reader;
        loop {
            let mut head = [0_u8; 2];
            match reader.read_exact(&mut head).await {
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Ok(None);
                }
                Err(error) => return Err(error),
            }
            let fin = head[0] & 0x80 != 0;
            let opcode = head[0] & 0x0f;
            let masked = head[1] & 0x80 != 0;
            let length = match head[1] & 0x7f {
                126 => u64::from(reader.read_u16().await?),
                127 => reader.read_u64().await?,
                short => u64::from(short),
            };
            let total = length + self.partial.as_ref().map_or(0, |m| m.payload.len() as u64);
            if total > MAX_MESSAGE {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "websocket message too large",
                ));
            }
            let mut key = [0_u8; 4];
            if masked {
                reader.read_exact(&mut key).await?;
            }
            let mut payload = vec![0_u8; usize::try_from(length).unwrap_or(0)];
            reader.read_exact(&mut payload).await?;
            if masked {
                for (i, byte) in payload.iter_mut().enumerate() {
                    *byte ^= key[i % 4];
                }
            }
            if opcode >= OP_CLOSE {
                return Ok(Some(Message { opcode, payload }));
            }
            match (&mut self.partial, opcode) {
                (Some(partial), OP_CONTINUATION) => partial.payload.extend(payload),
                _ => self.partial = Some(Message { opcode, payload }),
            }
            if fin {
                return Ok(self.partial.take());
            }
        }
    }
}

/// Writes one unmasked frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    opcode: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    writer.write_all(&encode(opcode, payload, None)).await?;
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
    async fn fragments_are_joined_and_pings_come_between() {
        let mut bytes = vec![OP_BINARY, 2, b'a', b'b'];
        bytes.extend(encode(OP_PING, b"p", Some([1, 2, 3, 4])));
        bytes.extend([0x80, 1, b'c']);
        bytes.extend(encode(OP_BINARY, &vec![5_u8; 70_000], None));
        let mut reader = MessageReader::new(bytes.as_slice());
        let ping = reader.next().await.unwrap().unwrap();
        assert_eq!((ping.opcode, ping.payload.as_slice()), (OP_PING, &b"p"[..]));
        let joined = reader.next().await.unwrap().unwrap();
        assert_eq!(joined.payload, b"abc");
        assert_eq!(reader.next().await.unwrap().unwrap().payload.len(), 70_000);
        assert_eq!(reader.next().await.unwrap(), None);
    }
}
