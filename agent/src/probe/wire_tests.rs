//! Probe URLs, the request kubelet sends, and response reading over in-memory streams.

use tokio::io::AsyncWriteExt as _;

use super::*;

fn url(path: &str) -> Url {
    Url {
        scheme: "http".into(),
        host: "198.18.0.2".into(),
        port: 8080,
        path: path.into(),
    }
}

#[test]
fn urls_print_like_go_and_redirects_resolve() {
    assert_eq!(url("").to_string(), "http://198.18.0.2:8080");
    assert_eq!(url("healthz").to_string(), "http://198.18.0.2:8080/healthz");
    assert_eq!(url("").target(), "/");
    let base = url("/a/b?x=1");
    assert_eq!(
        base.join("/c").unwrap().to_string(),
        "http://198.18.0.2:8080/c"
    );
    assert_eq!(base.join("c?y").unwrap().path, "/a/c?y");
    let other = base.join("https://Example.test/z#frag").unwrap();
    assert_eq!(
        (
            other.scheme.as_str(),
            other.host.as_str(),
            other.port,
            other.path.as_str()
        ),
        ("https", "example.test", 443, "/z")
    );
    let v6 = base.join("//[fd00::1]:99/").unwrap();
    assert_eq!(v6.to_string(), "http://[fd00::1]:99/");
    assert_eq!(base.join("ftp://x/"), None);
}

#[test]
fn requests_carry_kubelets_headers_and_the_specs() {
    let plain = request(&url("/healthz"), &[], "kube-probe/1.33");
    assert_eq!(
        plain,
        "GET /healthz HTTP/1.1\r\nHost: 198.18.0.2:8080\r\nUser-Agent: kube-probe/1.33\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    );
    let headers = [
        ("host".to_owned(), "app.test".to_owned()),
        ("x-custom-thing".to_owned(), "1".to_owned()),
        ("accept".to_owned(), String::new()),
        ("User-Agent".to_owned(), "mine".to_owned()),
    ];
    let custom = request(&url(""), &headers, "kube-probe/1.33");
    assert_eq!(
        custom,
        "GET / HTTP/1.1\r\nHost: app.test\r\nX-Custom-Thing: 1\r\nUser-Agent: mine\r\n\
         Connection: close\r\n\r\n"
    );
}

async fn answer(raw: &[u8]) -> Result<Response, String> {
    let (mut client, mut server) = tokio::io::duplex(1 << 16);
    server.write_all(raw).await.unwrap();
    drop(server);
    exchange(&mut client, b"").await
}

#[tokio::test]
async fn responses_are_read_with_at_most_ten_kib_of_body() {
    let ok = answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        .await
        .unwrap();
    assert_eq!((ok.status, ok.body.as_slice()), (200, b"hi".as_slice()));
    let moved = answer(b"HTTP/1.0 302 Found\r\nlocation: /x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(moved.redirect_location(), Some("/x"));
    let chunked = answer(
        b"HTTP/1.1 301 M\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(chunked.body, b"abcde");
    let mut big = b"HTTP/1.1 500 Oops\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'x', 3 * MAX_BODY));
    let big = answer(&big).await.unwrap();
    assert_eq!((big.status, big.body.len()), (500, MAX_BODY));
    let continued = answer(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 No\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(continued.status, 404);
    assert_eq!(answer(b"").await.unwrap_err(), "EOF");
    assert!(
        answer(b"SSH-2.0-x\r\n\r\n")
            .await
            .unwrap_err()
            .contains("malformed")
    );
}
