//! `tcpSocket` probes: success when a TCP connection opens within the timeout, as kubelet's
//! `DoTCPProbe`. Also the dialing (and Go's error texts) that `httpGet` probes share.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use super::outcome::ProbeResult;

/// Connects to `host:port` within `timeout` and closes the connection at once.
pub async fn probe_tcp(host: &str, port: u16, timeout: Duration) -> ProbeResult {
    match tokio::time::timeout(timeout, dial(host, port)).await {
        Ok(Ok(_stream)) => ProbeResult::Success,
        Ok(Err(text)) => ProbeResult::Failure(text),
        Err(_elapsed) => ProbeResult::Failure(format!(
            "dial tcp {}: i/o timeout",
            join_host_port(host, port)
        )),
    }
}

/// Opens a TCP connection to `host:port` (an IP address or a name to resolve); an error is
/// the text Go's dialer gives (`dial tcp 198.18.0.2:81: connect: connection refused`).
pub(super) async fn dial(host: &str, port: u16) -> Result<TcpStream, String> {
    let address = join_host_port(host, port);
    let addresses: Vec<std::net::SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![(ip, port).into()],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|error| format!("dial tcp: lookup {host}: {}", go_error_text(&error)))?
            .collect(),
    };
    let mut last = format!("dial tcp: lookup {host}: no such host");
    for socket_address in addresses {
        match TcpStream::connect(socket_address).await {
            Ok(stream) => return Ok(stream),
            Err(error) => {
                last = format!("dial tcp {address}: connect: {}", go_error_text(&error));
            }
        }
    }
    Err(last)
}

/// `host:port`, with brackets around an IPv6 address (Go's `net.JoinHostPort`).
pub(super) fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// An I/O error as Go prints a syscall error: `connection refused`, not
/// `Connection refused (os error 111)`.
pub(super) fn go_error_text(error: &io::Error) -> String {
    let text = error.to_string();
    let text = match text.find(" (os error ") {
        Some(end) => &text[..end],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_like_go() {
        let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(go_error_text(&refused), "connection refused");
        assert_eq!(join_host_port("198.18.0.2", 81), "198.18.0.2:81");
        assert_eq!(join_host_port("fd00::1", 81), "[fd00::1]:81");
    }
}
