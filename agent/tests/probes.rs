//! Container probes for real: `httpGet` and `tcpSocket` from a "node" host to a busybox httpd
//! in a "pod" host (network namespaces), canned HTTP and HTTPS answers from servers on
//! loopback, and `exec` in a real runc container. Needs root, busybox and runc.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use k8s_openapi::api::core::v1::Probe;
use keel_agent::probe::{ProbeKind, ProbeResult, ProbeTarget, run_probe};
use keel_agent::runtime::runc::Runc;
use keel_testhost::{LinkOptions, TestNet, require_root, require_tool};

fn probe(yaml: &str) -> Probe {
    serde_yaml_ng::from_str(yaml).expect("probe yaml")
}

fn target(pod_ip: Ipv4Addr, container_id: &str, runc: Runc) -> ProbeTarget {
    ProbeTarget {
        pod_ip,
        container: serde_yaml_ng::from_str(
            "{name: app, ports: [{name: web, containerPort: 8080}], env: [{name: CODE, value: '3'}]}",
        )
        .expect("container yaml"),
        container_id: container_id.to_owned(),
        runc,
    }
}

fn no_runc() -> Runc {
    Runc::new(Path::new("/usr/sbin/runc"), Path::new("/nonexistent"))
}

fn block_on<T>(future: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}

fn failure(result: ProbeResult) -> String {
    match result {
        ProbeResult::Failure(text) => text,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn errored(result: ProbeResult) -> String {
    match result {
        ProbeResult::Errored(text) => text,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn http_and_tcp_probes_reach_a_busybox_httpd_in_a_pod_host() {
    require_root();
    require_tool("busybox", "busybox-static");
    require_tool("ip", "iproute2");
    let mut net = TestNet::new("probes").expect("test net");
    let node = net.add_host("node").expect("node host");
    let pod = net.add_host("pod").expect("pod host");
    let link = net
        .connect(&node, &pod, LinkOptions::default())
        .expect("link");
    let pod_ip = link.b.ip;
    let www = tempfile::Builder::new()
        .prefix("kt-www-")
        .tempdir()
        .unwrap();
    std::fs::write(www.path().join("healthz"), "ok\n").unwrap();
    let www_dir = www.path().to_str().unwrap();
    let _httpd = pod
        .spawn(&["busybox", "httpd", "-f", "-p", "8080", "-h", www_dir])
        .expect("busybox httpd");
    pod.wait_for_port(SocketAddr::from((pod_ip, 8080)), Duration::from_secs(10))
        .expect("httpd listens");
    // An address on the link that nobody holds: connecting waits for ARP, then gives up.
    let silent = Ipv4Addr::new(
        pod_ip.octets()[0],
        pod_ip.octets()[1],
        pod_ip.octets()[2],
        77,
    );

    let results = node
        .enter(move || {
            let target = target(pod_ip, "unused", no_runc());
            let run = |yaml: &str| block_on(run_probe(ProbeKind::Liveness, &probe(yaml), &target));
            [
                run("{httpGet: {path: /healthz, port: web}}"),
                run("{httpGet: {path: /missing, port: 8080}}"),
                run("{httpGet: {path: /healthz, port: 81}}"),
                run("{tcpSocket: {port: web}}"),
                run("{tcpSocket: {port: 81}}"),
                run(&format!(
                    "{{tcpSocket: {{host: '{silent}', port: 80}}, timeoutSeconds: 1}}"
                )),
                run("{httpGet: {path: /healthz, port: nope}}"),
            ]
        })
        .expect("enter the node host");
    let [
        ok,
        missing,
        refused,
        tcp_ok,
        tcp_refused,
        tcp_silent,
        unknown_port,
    ] = results;
    assert_eq!(ok, ProbeResult::Success);
    assert_eq!(failure(missing), "HTTP probe failed with statuscode: 404");
    assert_eq!(
        failure(refused),
        format!(
            "Get \"http://{pod_ip}:81/healthz\": dial tcp {pod_ip}:81: connect: connection refused"
        )
    );
    assert_eq!(tcp_ok, ProbeResult::Success);
    assert_eq!(
        failure(tcp_refused),
        format!("dial tcp {pod_ip}:81: connect: connection refused")
    );
    assert_eq!(
        failure(tcp_silent),
        format!("dial tcp {silent}:80: i/o timeout")
    );
    assert_eq!(
        errored(unknown_port),
        "couldn't find port: nope in container app"
    );
}

/// A loopback HTTP server with canned answers by path; `/hang` never answers.
struct CannedServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CannedServer {
    fn start() -> CannedServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut hanging = Vec::new();
            while !halt.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Some(stream) = answer(stream, port) {
                            hanging.push(stream);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        CannedServer {
            port,
            stop,
            thread: Some(thread),
        }
    }

    fn run(&self, yaml: &str) -> ProbeResult {
        let target = target(Ipv4Addr::LOCALHOST, "unused", no_runc());
        let yaml = yaml.replace("PORT", &self.port.to_string());
        block_on(run_probe(ProbeKind::Readiness, &probe(&yaml), &target))
    }
}

/// Answers one request; returns the stream of a request it leaves hanging.
fn answer(mut stream: TcpStream, port: u16) -> Option<TcpStream> {
    stream.set_nonblocking(false).unwrap();
    let mut request = Vec::new();
    let mut buffer = [0_u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return None,
            Ok(n) => request.extend_from_slice(&buffer[..n]),
        }
    }
    let request = String::from_utf8_lossy(&request).into_owned();
    let path = request.split(' ').nth(1).unwrap_or("/").to_owned();
    let response = match path.as_str() {
        "/ok" => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_owned(),
        "/error" => "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n".to_owned(),
        "/same-host" => "HTTP/1.1 302 Found\r\nLocation: /ok\r\n\r\n".to_owned(),
        "/same-host-error" => {
            format!("HTTP/1.1 301 Moved\r\nLocation: http://127.0.0.1:{port}/error\r\n\r\n")
        }
        "/other-host" => {
            format!("HTTP/1.1 302 Found\r\nLocation: http://127.0.0.2:{port}/error\r\n\r\nmoved")
        }
        "/loop" => "HTTP/1.1 307 Again\r\nLocation: /loop\r\n\r\n".to_owned(),
        "/headers" => {
            let wanted = request.contains("\r\nX-Probe: yes\r\n")
                && request.contains("\r\nUser-Agent: kube-probe/1.33\r\n")
                && request.contains(&format!("\r\nHost: 127.0.0.1:{port}\r\n"));
            let code = if wanted {
                "204 No Content"
            } else {
                "400 Bad Request"
            };
            format!("HTTP/1.1 {code}\r\n\r\n")
        }
        "/big" => {
            let body = "x".repeat(1 << 20);
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        }
        "/hang" => return Some(stream),
        _ => "HTTP/1.1 404 Not Found\r\n\r\n".to_owned(),
    };
    // The prober may stop reading (and close) after 10 KiB.
    let _ = stream.write_all(response.as_bytes());
    None
}

impl Drop for CannedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn http_probes_read_codes_redirects_headers_and_time_out() {
    let server = CannedServer::start();
    let port = server.port;
    assert_eq!(
        server.run("{httpGet: {path: /ok, port: PORT}}"),
        ProbeResult::Success
    );
    assert_eq!(
        failure(server.run("{httpGet: {path: /error, port: PORT}}")),
        "HTTP probe failed with statuscode: 500"
    );
    assert_eq!(
        server.run("{httpGet: {path: /same-host, port: PORT}}"),
        ProbeResult::Success,
        "a same-host redirect is followed"
    );
    assert_eq!(
        failure(server.run("{httpGet: {path: /same-host-error, port: PORT}}")),
        "HTTP probe failed with statuscode: 500"
    );
    assert_eq!(
        server.run("{httpGet: {path: /other-host, port: PORT}}"),
        ProbeResult::Warning("Probe terminated redirects, Response body: moved".into()),
        "a redirect to another host is not followed, and is not a failure"
    );
    assert_eq!(
        failure(server.run("{httpGet: {path: /loop, port: PORT}}")),
        "Get \"/loop\": stopped after 10 redirects"
    );
    assert_eq!(
        server.run(
            "{httpGet: {path: /headers, port: PORT, httpHeaders: [{name: x-probe, value: 'yes'}]}}"
        ),
        ProbeResult::Success
    );
    assert_eq!(
        server.run("{httpGet: {path: /big, port: PORT}}"),
        ProbeResult::Success
    );
    assert_eq!(
        failure(server.run("{httpGet: {path: /hang, port: PORT}, timeoutSeconds: 1}")),
        format!(
            "Get \"http://127.0.0.1:{port}/hang\": context deadline exceeded (Client.Timeout \
             exceeded while awaiting headers)"
        )
    );
    assert!(errored(server.run("{grpc: {port: PORT}}")).contains("gRPC probes are not supported"));
}

#[tokio::test]
async fn https_probes_do_not_verify_the_certificate() {
    let certified = rcgen::generate_simple_self_signed(vec!["app.test".to_owned()]).unwrap();
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut buffer = [0_u8; 1024];
        let _ = tls.read(&mut buffer).await.unwrap();
        tls.write_all(b"HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        tls.shutdown().await.unwrap();
    });
    let target = target(Ipv4Addr::LOCALHOST, "unused", no_runc());
    let spec = probe(&format!("{{httpGet: {{scheme: HTTPS, port: {port}}}}}"));
    let result = run_probe(ProbeKind::Liveness, &spec, &target).await;
    assert_eq!(failure(result), "HTTP probe failed with statuscode: 503");
    server.await.unwrap();
}

#[path = "probes/runc.rs"]
mod probes_runc;
