//! curl as the HTTPS client of node API tests: a real client that speaks HTTP/2 and HTTP/1.1
//! and does not trust the node's self-signed certificate (`-k`) any more than kubectl's
//! `--insecure-skip-tls-verify` would.

use std::process::Stdio;

/// A finished request.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    /// `1.1` or `2`.
    pub http_version: String,
}

/// The curl command for `url` with extra `args`, output on stdout.
pub fn command(url: &str, args: &[&str]) -> tokio::process::Command {
    keel_testhost::require_tool("curl", "curl");
    let mut command = tokio::process::Command::new("curl");
    command
        .args(["-sS", "-k", "--max-time", "60"])
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs one request to `url` and returns the status, body and HTTP version.
pub async fn request(url: &str, args: &[&str]) -> Reply {
    let mut args = args.to_vec();
    args.extend(["-w", "\n%{http_code} %{http_version}"]);
    let output = command(url, &args).output().await.expect("curl runs");
    assert!(output.status.success(), "curl {url}: {output:?}");
    let text = String::from_utf8(output.stdout).expect("utf-8 from curl");
    let (body, trailer) = text.rsplit_once('\n').expect("curl's -w trailer");
    let (status, http_version) = trailer.split_once(' ').expect("status and version");
    Reply {
        status: status.parse().expect("a status code"),
        body: body.to_owned(),
        http_version: http_version.to_owned(),
    }
}
