//! Reading the agent's Prometheus metrics from inside its host.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use keel_testhost::Host;

/// `GET /metrics` from the agent in `host` (on kube-proxy's default address); the body, or
/// `None` while nothing answers there.
pub fn scrape(host: &Host) -> Option<String> {
    host.enter(|| {
        let mut stream =
            TcpStream::connect_timeout(&"127.0.0.1:10249".parse().unwrap(), Duration::from_secs(2))
                .ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
    })
    .ok()
    .flatten()
}

/// The value of the sample `name` (with its labels, as printed: `a_total{x="y"}`).
pub fn value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes until `wanted` holds for the text, for at most `timeout`; the last text.
pub fn wait_for(
    host: &Host,
    timeout: Duration,
    mut wanted: impl FnMut(&str) -> bool,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Some(text) = scrape(host) {
            if wanted(&text) {
                return Ok(text);
            }
            last = text;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(last)
}
