//! SPDY/3.1 framing, the part a port-forward server needs (what kubelet's `spdystream` speaks):
//! frames read from and written to a byte stream, and the header blocks, zlib-compressed
//! with SPDY's dictionary in one stream per direction per connection.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt as _};

/// Control frame types.
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
/// `FLAG_FIN` of data frames and of SYN_STREAM / SYN_REPLY.
pub const FLAG_FIN: u8 = 0x01;
/// RST_STREAM status codes.
pub const REFUSED_STREAM: u32 = 3;
pub const CANCEL: u32 = 5;
const VERSION: u16 = 3;
/// The largest header block accepted once inflated.
const MAX_HEADER_BLOCK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("spdy connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("spdy frame: {0}")]
    Malformed(&'static str),
    #[error("spdy header block: {0}")]
    Compression(String),
}

/// SPDY/3's zlib dictionary for header blocks (the SPDY/3 draft, section 2.6.10.1): the
/// length-prefixed names, then the common values.
pub fn dictionary() -> &'static [u8] {
    static DICTIONARY: OnceLock<Vec<u8>> = OnceLock::new();
    DICTIONARY.get_or_init(|| {
        const NAMES: [&str; 65] = [
            "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset",
            "accept-encoding", "accept-language", "accept-ranges", "age", "allow",
            "authorization", "cache-control", "connection", "content-base", "content-encoding",
            "content-language", "content-length", "content-location", "content-md5",
            "content-range", "content-type", "date", "etag", "expect", "expires", "from", "host",
            "if-match", "if-modified-since", "if-none-match", "if-range", "if-unmodified-since",
            "last-modified", "location", "max-forwards", "pragma", "proxy-authenticate",
            "proxy-authorization", "range", "referer", "retry-after", "server", "te", "trailer",
            "transfer-encoding", "upgrade", "user-agent", "vary", "via", "warning",
            "www-authenticate", "method", "get", "status", "200 OK", "version", "HTTP/1.1", "url",
            "public", "set-cookie", "keep-alive", "origin",
        ];
        const VALUES: &str = "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";
        let mut bytes = Vec::with_capacity(1423);
        for name in NAMES {
            bytes.extend_from_slice(&(name.len() as u32).to_be_bytes());
            bytes.extend_from_slice(name.as_bytes());
        }
        bytes.extend_from_slice(VALUES.as_bytes());
        bytes
    })
}

/// Header names (lowercase, as SPDY sends them) and values.
pub type Headers = BTreeMap<String, String>;

/// A frame as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Ping {
        id: u32,
    },
    GoAway,
    Data {
        stream_id: u32,
        fin: bool,
        data: Vec<u8>,
    },
    /// SETTINGS, WINDOW_UPDATE, SYN_REPLY, HEADERS and unknown types: nothing to do for a
    /// port-forward server (their header blocks are still inflated, to keep the stream).
    Other,
}

/// Reads frames, inflating header blocks through one zlib stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    reader: R,
    inflater: Decompress,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            inflater: Decompress::new(true),
        }
    }

    /// The next frame; `None` at the end of the stream.
    pub async fn next(&mut self) -> Result<Option<Frame>, SpdyError> {
        let mut head = [0_u8; 8];
        match self.reader.read_exact(&mut head).await {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(error) => return Err(error.into()),
        }
        let flags = head[4];
        let length = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        let mut body = vec![0_u8; length];
        self.reader.read_exact(&mut body).await?;
        let word = |bytes: &[u8]| -> Result<u32, SpdyError> {
            bytes
                .get(..4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or(SpdyError::Malformed("frame too short"))
        };
        if head[0] & 0x80 == 0 {
            return Ok(Some(Frame::Data {
                stream_id: word(&head)? & 0x7fff_ffff,
                fin: flags & FLAG_FIN != 0,
                data: body,
            }));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let frame = match kind {
            SYN_STREAM => {
                let block = body
                    .get(10..)
                    .ok_or(SpdyError::Malformed("short SYN_STREAM"))?;
                Frame::SynStream {
                    stream_id: word(&body)? & 0x7fff_ffff,
                    fin: flags & FLAG_FIN != 0,
                    headers: parse_headers(&self.inflate(block)?)?,
                }
            }
            SYN_REPLY | HEADERS => {
                let block = body
                    .get(4..)
                    .ok_or(SpdyError::Malformed("short header frame"))?;
                self.inflate(block)?;
                Frame::Other
            }
            RST_STREAM => Frame::RstStream {
                stream_id: word(&body)? & 0x7fff_ffff,
                status: word(body.get(4..).unwrap_or_default())?,
            },
            PING => Frame::Ping { id: word(&body)? },
            GOAWAY => Frame::GoAway,
            _ => Frame::Other,
        };
        Ok(Some(frame))
    }

    fn inflate(&mut self, input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let failed = |error: &dyn std::fmt::Display| SpdyError::Compression(error.to_string());
        let mut out = Vec::with_capacity(input.len() * 4 + 256);
        let mut consumed = 0;
        loop {
            if out.capacity() - out.len() < 256 {
                out.reserve(4096);
            }
            let (in_before, out_before) = (self.inflater.total_in(), out.len());
            let result =
                self.inflater
                    .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync);
            consumed += usize::try_from(self.inflater.total_in() - in_before).unwrap_or(0);
            match result {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {
                    let progress = consumed > 0 && self.inflater.total_in() > in_before
                        || out.len() > out_before;
                    if (consumed >= input.len() && out.len() < out.capacity()) || !progress {
                        break;
                    }
                }
                Err(error) if error.needs_dictionary().is_some() => {
                    self.inflater
                        .set_dictionary(dictionary())
                        .map_err(|error| failed(&error))?;
                }
                Err(error) => return Err(failed(&error)),
            }
            if out.len() > MAX_HEADER_BLOCK {
                return Err(SpdyError::Malformed("header block too large"));
            }
        }
        Ok(out)
    }
}

/// The unread rest of a header block.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], SpdyError> {
        if self.0.len() < count {
            return Err(SpdyError::Malformed("truncated header block"));
        }
        let (head, tail) = self.0.split_at(count);
        self.0 = tail;
        Ok(head)
    }

    fn number(&mut self) -> Result<usize, SpdyError> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize)
    }
}

fn parse_headers(block: &[u8]) -> Result<Headers, SpdyError> {
    let mut cursor = Cursor(block);
    let count = cursor.number()?;
    let mut headers = Headers::new();
    for _ in 0..count {
        let length = cursor.number()?;
        let name = String::from_utf8_lossy(cursor.take(length)?).into_owned();
        let length = cursor.number()?;
        // Several values of one name are joined by NUL bytes; the first is the one used.
        let value = String::from_utf8_lossy(cursor.take(length)?)
            .split('\0')
            .next()
            .unwrap_or("")
            .to_owned();
        headers.insert(name.to_ascii_lowercase(), value);
    }
    Ok(headers)
}

/// Writes frames, deflating header blocks through one zlib stream.
#[derive(Debug)]
pub struct FrameWriter {
    deflater: Compress,
}

impl Default for FrameWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameWriter {
    pub fn new() -> Self {
        let mut deflater = Compress::new(Compression::default(), true);
        // Setting a dictionary on a fresh stream cannot fail.
        let _ = deflater.set_dictionary(dictionary());
        Self { deflater }
    }

    fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
        let mut frame = Vec::with_capacity(8 + body.len());
        frame.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
        frame.extend_from_slice(&kind.to_be_bytes());
        frame.push(flags);
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        frame.extend_from_slice(body);
        frame
    }

    /// SYN_REPLY accepting `stream_id`, with no headers.
    pub fn syn_reply(&mut self, stream_id: u32) -> Result<Vec<u8>, SpdyError> {
        let mut body = stream_id.to_be_bytes().to_vec();
        body.extend(self.deflate(&0_u32.to_be_bytes())?);
        Ok(Self::control(SYN_REPLY, 0, &body))
    }

    pub fn rst_stream(stream_id: u32, status: u32) -> Vec<u8> {
        let mut body = stream_id.to_be_bytes().to_vec();
        body.extend_from_slice(&status.to_be_bytes());
        Self::control(RST_STREAM, 0, &body)
    }

    pub fn ping(id: u32) -> Vec<u8> {
        Self::control(PING, 0, &id.to_be_bytes())
    }

    pub fn go_away(last_stream_id: u32) -> Vec<u8> {
        let mut body = last_stream_id.to_be_bytes().to_vec();
        body.extend_from_slice(&0_u32.to_be_bytes());
        Self::control(GOAWAY, 0, &body)
    }

    pub fn data(stream_id: u32, fin: bool, data: &[u8]) -> Vec<u8> {
        let mut frame = Vec::with_capacity(8 + data.len());
        frame.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
        frame.push(if fin { FLAG_FIN } else { 0 });
        frame.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        frame.extend_from_slice(data);
        frame
    }

    fn deflate(&mut self, input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(input.len() + 64);
        let mut consumed = 0;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            let before = self.deflater.total_in();
            self.deflater
                .compress_vec(&input[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|error| SpdyError::Compression(error.to_string()))?;
            consumed += usize::try_from(self.deflater.total_in() - before).unwrap_or(0);
            if consumed >= input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }

    /// A header block for `headers`, deflated (what a client's SYN_STREAM carries; tests).
    pub fn syn_stream(&mut self, stream_id: u32, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut block = (headers.len() as u32).to_be_bytes().to_vec();
        for (name, value) in headers {
            for text in [name, value] {
                block.extend_from_slice(&(text.len() as u32).to_be_bytes());
                block.extend_from_slice(text.as_bytes());
            }
        }
        let mut body = stream_id.to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        body.extend(self.deflate(&block).unwrap_or_default());
        Self::control(SYN_STREAM, 0, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_spdy3s() {
        let dictionary = dictionary();
        assert_eq!(dictionary.len(), 1423);
        assert_eq!(&dictionary[..11], b"\0\0\0\x07options");
        assert!(dictionary.ends_with(b",*,enq=0."));
    }

    #[tokio::test]
    async fn frames_round_trip_through_one_compression_stream() {
        let mut writer = FrameWriter::new();
        let mut bytes = writer.syn_stream(
            1,
            &[("streamtype", "error"), ("port", "80"), ("requestid", "0")],
        );
        bytes.extend(writer.syn_stream(3, &[("streamtype", "data"), ("port", "80")]));
        bytes.extend(FrameWriter::data(3, true, b"GET /"));
        bytes.extend(FrameWriter::ping(7));
        bytes.extend(writer.syn_reply(5).unwrap());
        bytes.extend(FrameWriter::rst_stream(3, CANCEL));
        let mut reader = FrameReader::new(bytes.as_slice());
        let Some(Frame::SynStream {
            stream_id: 1,
            headers,
            ..
        }) = reader.next().await.unwrap()
        else {
            panic!("not the first SYN_STREAM");
        };
        assert_eq!(headers["streamtype"], "error");
        assert_eq!(headers["requestid"], "0");
        let Some(Frame::SynStream {
            stream_id: 3,
            headers,
            ..
        }) = reader.next().await.unwrap()
        else {
            panic!("not the second SYN_STREAM");
        };
        assert_eq!(headers["streamtype"], "data");
        assert_eq!(
            reader.next().await.unwrap(),
            Some(Frame::Data {
                stream_id: 3,
                fin: true,
                data: b"GET /".to_vec()
            })
        );
        assert_eq!(reader.next().await.unwrap(), Some(Frame::Ping { id: 7 }));
        assert_eq!(reader.next().await.unwrap(), Some(Frame::Other));
        assert_eq!(
            reader.next().await.unwrap(),
            Some(Frame::RstStream {
                stream_id: 3,
                status: CANCEL
            })
        );
        assert_eq!(reader.next().await.unwrap(), None);
    }
}
