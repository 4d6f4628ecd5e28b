//! HTTP/1.1 on the wire for `httpGet` probes: probe URLs and redirect targets, the request
//! kubelet sends, and reading a response head and at most [`MAX_BODY`] bytes of its body.

use std::fmt;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::tcp::join_host_port;

/// kubelet reads at most 10 KiB of a probe response's body.
pub const MAX_BODY: usize = 10 * 1024;
/// A response head larger than this is refused (Go's default is 1 MiB; probes need little).
const MAX_HEAD: usize = 64 * 1024;

/// An absolute `http` or `https` URL, split as the probe needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub scheme: String,
    pub host: String,
    pub port: u16,
    /// Path and query as given; empty means `/`.
    pub path: String,
}

impl Url {
    /// The request target: the path, `/` when empty, with a leading slash added.
    pub fn target(&self) -> String {
        if self.path.starts_with('/') {
            self.path.clone()
        } else {
            format!("/{}", self.path)
        }
    }

    /// Where a redirect's `Location` points, resolved against this URL; `None` when it is not
    /// an `http(s)` URL or cannot be read.
    pub fn join(&self, location: &str) -> Option<Url> {
        let location = location.trim();
        if let Some((scheme, rest)) = location.split_once("://") {
            let scheme = scheme.to_ascii_lowercase();
            let default_port = match scheme.as_str() {
                "http" => 80,
                "https" => 443,
                _ => return None,
            };
            return Url::authority(scheme, rest, default_port);
        }
        if let Some(rest) = location.strip_prefix("//") {
            let default_port = if self.scheme == "https" { 443 } else { 80 };
            return Url::authority(self.scheme.clone(), rest, default_port);
        }
        let path = if location.starts_with('/') {
            location.to_owned()
        } else {
            // Relative to the current path's directory (queries and fragments aside).
            let current = self.target();
            let current = current.split(['?', '#']).next().unwrap_or("/");
            let directory = &current[..=current.rfind('/').unwrap_or(0)];
            format!("{directory}{location}")
        };
        Some(Url {
            path,
            ..self.clone()
        })
    }

    /// `host[:port]/path...` after `scheme://`.
    fn authority(scheme: String, rest: &str, default_port: u16) -> Option<Url> {
        let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        let authority = authority.rsplit('@').next().unwrap_or(authority);
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']')?;
            let port = after.strip_prefix(':').map(str::parse).transpose().ok()?;
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port.parse().ok()?)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return None;
        }
        Some(Url {
            scheme,
            host: host.to_ascii_lowercase(),
            port: port.unwrap_or(default_port),
            path: path.split('#').next().unwrap_or("").to_owned(),
        })
    }
}

impl fmt::Display for Url {
    /// As Go prints a probe URL: `http://198.18.0.2:8080/healthz` (the port always shown).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            String::new()
        } else {
            self.target()
        };
        write!(
            f,
            "{}://{}{path}",
            self.scheme,
            join_host_port(&self.host, self.port)
        )
    }
}

/// `content-type` -> `Content-Type`: the form Go's `http.Header` keeps names in.
fn canonical_header(name: &str) -> String {
    let mut upper = true;
    name.chars()
        .map(|c| {
            let c = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            c
        })
        .collect()
}

/// The GET kubelet sends: `Host` (overridable by a `Host` header), `User-Agent` and
/// `Accept: */*` unless the spec sets them (an empty `Accept` removes it), the spec's headers,
/// and `Connection: close`.
pub fn request(url: &Url, headers: &[(String, String)], user_agent: &str) -> String {
    let headers: Vec<(String, &str)> = headers
        .iter()
        .map(|(name, value)| (canonical_header(name), value.as_str()))
        .collect();
    let given = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    let host = given("Host")
        .map(str::to_owned)
        .unwrap_or_else(|| join_host_port(&url.host, url.port));
    let mut text = format!("GET {} HTTP/1.1\r\nHost: {host}\r\n", url.target());
    if given("User-Agent").is_none() {
        text.push_str(&format!("User-Agent: {user_agent}\r\n"));
    }
    if given("Accept").is_none() {
        text.push_str("Accept: */*\r\n");
    }
    for (name, value) in &headers {
        let skip = name == "Host" || name == "Connection" || (name == "Accept" && value.is_empty());
        if !skip {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    text.push_str("Connection: close\r\n\r\n");
    text
}

/// A response: its status, its `Location`, and the first [`MAX_BODY`] bytes of its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub location: Option<String>,
    pub body: Vec<u8>,
}

impl Response {
    /// Where Go's client would follow this response to: the codes it follows, with a
    /// `Location`.
    pub fn redirect_location(&self) -> Option<&str> {
        match self.status {
            301 | 302 | 303 | 307 | 308 => self.location.as_deref(),
            _ => None,
        }
    }
}

/// Writes `request` and reads the response; an error is the text after `Get "<url>": `.
pub async fn exchange(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    request: &[u8],
) -> Result<Response, String> {
    stream
        .write_all(request)
        .await
        .map_err(|error| super::tcp::go_error_text(&error))?;
    let mut buffer = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            // 1xx answers come before the real one.
            if buffer.get(9) == Some(&b'1') && buffer.starts_with(b"HTTP/1.") {
                buffer.drain(..end + 4);
                continue;
            }
            break end;
        }
        if buffer.len() > MAX_HEAD {
            return Err("net/http: server response headers exceeded 65536 bytes".to_owned());
        }
        if read_more(stream, &mut buffer).await? == 0 {
            return Err(if buffer.is_empty() {
                "EOF".to_owned()
            } else {
                "unexpected EOF".to_owned()
            });
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .filter(|code| (100..1000).contains(code))
        .ok_or_else(|| format!("net/http: malformed HTTP response {status_line:?}"))?;
    let header = |wanted: &str| {
        head.split("\r\n").skip(1).find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case(wanted)
                .then(|| value.trim().to_owned())
        })
    };
    let location = header("location");
    let mut body = buffer.split_off(head_end + 4);
    let bodiless = status == 204 || status == 304;
    let content_length = header("content-length").and_then(|n| n.parse::<usize>().ok());
    let chunked = header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
    if !bodiless {
        // Reads until the body is complete or MAX_BODY is in; kubelet stops reading there too.
        let wanted = content_length.map_or(MAX_BODY, |length| length.min(MAX_BODY));
        loop {
            let complete = if chunked {
                body.starts_with(b"0\r\n") || find(&body, b"\r\n0\r\n").is_some()
            } else {
                body.len() >= wanted
            };
            if complete || body.len() >= MAX_BODY || read_more(stream, &mut body).await? == 0 {
                break;
            }
        }
        if chunked {
            body = dechunk(&body);
        }
    }
    body.truncate(if bodiless { 0 } else { MAX_BODY });
    Ok(Response {
        status,
        location,
        body,
    })
}

async fn read_more(
    stream: &mut (impl AsyncRead + Unpin),
    buffer: &mut Vec<u8>,
) -> Result<usize, String> {
    let mut chunk = [0_u8; 4096];
    let n = stream
        .read(&mut chunk)
        .await
        .map_err(|error| super::tcp::go_error_text(&error))?;
    buffer.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The data of a chunked body, as far as it is there.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    while let Some(line_end) = find(raw, b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim().to_owned();
        let Ok(size) = usize::from_str_radix(&size_text, 16) else {
            break;
        };
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        let end = (start + size).min(raw.len());
        data.extend_from_slice(&raw[start..end]);
        raw = raw.get(end + 2..).unwrap_or(&[]);
    }
    data
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
