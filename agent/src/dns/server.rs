//! The DNS listener: UDP and TCP on the cluster DNS address, answers from the [`Zone`] for the
//! cluster domain, everything else forwarded to the upstream resolvers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::Zone;

/// How long one upstream gets to answer a forwarded query.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest UDP answer without EDNS (RFC 1035).
const UDP_CLASSIC: usize = 512;

/// The zone the listener answers from; replaced whole when Services change.
#[derive(Debug, Clone)]
pub struct DnsServer {
    zone: Arc<RwLock<Arc<Zone>>>,
    upstreams: Arc<Vec<SocketAddr>>,
}

impl DnsServer {
    pub fn new(zone: Zone, upstreams: Vec<SocketAddr>) -> DnsServer {
        DnsServer {
            zone: Arc::new(RwLock::new(Arc::new(zone))),
            upstreams: Arc::new(upstreams),
        }
    }

    /// Serves from now on the records of `zone`.
    pub fn set_zone(&self, zone: Zone) {
        *self
            .zone
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(zone);
    }

    fn zone(&self) -> Arc<Zone> {
        Arc::clone(
            &self
                .zone
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Binds UDP and TCP on `address` and serves from a thread of its own for the life of the
    /// process.
    pub fn serve(self, address: SocketAddr) -> std::io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (udp, tcp) = runtime.block_on(async {
            Ok::<_, std::io::Error>((
                UdpSocket::bind(address).await?,
                TcpListener::bind(address).await?,
            ))
        })?;
        log::info!("DNS: serving on {address} (udp, tcp)");
        std::thread::Builder::new()
            .name("dns".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let udp = Arc::new(udp);
                    tokio::spawn(self.clone().serve_tcp(tcp));
                    self.serve_udp(udp).await;
                });
            })?;
        Ok(())
    }

    async fn serve_udp(self, socket: Arc<UdpSocket>) {
        let mut buffer = vec![0_u8; 4096];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buffer).await else {
                continue;
            };
            let request = buffer[..n].to_vec();
            let (server, socket) = (self.clone(), Arc::clone(&socket));
            tokio::spawn(async move {
                if let Some(answer) = server.respond(&request, false).await {
                    let _ = socket.send_to(&answer, peer).await;
                }
            });
        }
    }

    async fn serve_tcp(self, listener: TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(self.clone().tcp_connection(stream));
        }
    }

    /// One TCP connection: length-prefixed messages until the client closes.
    async fn tcp_connection(self, mut stream: TcpStream) {
        loop {
            let Ok(length) = stream.read_u16().await else {
                return;
            };
            let mut request = vec![0_u8; usize::from(length)];
            if stream.read_exact(&mut request).await.is_err() {
                return;
            }
            let Some(answer) = self.respond(&request, true).await else {
                return;
            };
            let Ok(length) = u16::try_from(answer.len()) else {
                return;
            };
            if stream.write_u16(length).await.is_err() || stream.write_all(&answer).await.is_err() {
                return;
            }
        }
    }

    /// The answer to the wire-format `request`: from the zone, or forwarded. Over UDP an
    /// answer larger than the client takes is truncated (TC set) so it asks again over TCP.
    pub async fn respond(&self, request: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let Ok(message) = Message::from_vec(request) else {
            // Not even a header to answer to.
            let id = u16::from_be_bytes([*request.first()?, *request.get(1)?]);
            return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                .to_vec()
                .ok();
        };
        if message.metadata.message_type != MessageType::Query {
            return None;
        }
        let zone = self.zone();
        let local = message.metadata.op_code == OpCode::Query
            && message
                .queries
                .first()
                .is_some_and(|query| zone.contains(query.name()));
        if !local {
            if message.metadata.op_code != OpCode::Query {
                return Message::error_msg(
                    message.metadata.id,
                    message.metadata.op_code,
                    ResponseCode::NotImp,
                )
                .to_vec()
                .ok();
            }
            return Some(self.forward(&message, request, tcp).await);
        }
        let mut answer = zone.answer(&message);
        let limit = match &message.edns {
            Some(edns) => {
                let mut reply = Edns::new();
                reply.set_max_payload(edns.max_payload().max(UDP_CLASSIC as u16));
                answer.set_edns(reply);
                usize::from(edns.max_payload()).max(UDP_CLASSIC)
            }
            None => UDP_CLASSIC,
        };
        let bytes = answer.to_vec().ok()?;
        if tcp || bytes.len() <= limit {
            return Some(bytes);
        }
        answer.truncate().to_vec().ok()
    }

    /// Asks the upstreams in turn; SERVFAIL when none answers.
    async fn forward(&self, message: &Message, request: &[u8], tcp: bool) -> Vec<u8> {
        for upstream in self.upstreams.iter() {
            let answer = if tcp {
                forward_tcp(*upstream, request).await
            } else {
                forward_udp(*upstream, request).await
            };
            match answer {
                Ok(answer) => return answer,
                Err(error) => log::debug!("DNS: upstream {upstream}: {error}"),
            }
        }
        let mut failure =
            Message::error_msg(message.metadata.id, OpCode::Query, ResponseCode::ServFail);
        failure.queries.clone_from(&message.queries);
        failure.to_vec().unwrap_or_default()
    }
}

async fn forward_udp(upstream: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = match upstream.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(request).await?;
    let mut buffer = vec![0_u8; 65535];
    let n = tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv(&mut buffer))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
    buffer.truncate(n);
    Ok(buffer)
}

async fn forward_tcp(upstream: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let exchange = async {
        let mut stream = TcpStream::connect(upstream).await?;
        let length = u16::try_from(request.len()).map_err(std::io::Error::other)?;
        stream.write_u16(length).await?;
        stream.write_all(request).await?;
        let length = stream.read_u16().await?;
        let mut answer = vec![0_u8; usize::from(length)];
        stream.read_exact(&mut answer).await?;
        Ok(answer)
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))?
}

/// The `nameserver` entries of a resolv.conf text, on port 53, leaving out `own` (the cluster
/// DNS address itself: forwarding to it would loop).
pub fn upstreams_from_resolv_conf(text: &str, own: IpAddr) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next()?.parse::<IpAddr>().ok())
                .flatten()
        })
        .filter(|ip| *ip != own)
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Puts `address` on the loopback interface under the agent's label (`lo:keel-dns`), so the
/// node, and pods through it, reach it locally. (Not a dummy interface: not every kernel has
/// the module.) Scope host: the address still answers packets from pods, but the kernel never
/// picks it as the source of the node's own connections (with global scope, the node's
/// connections to its pods came from it). Idempotent.
pub fn ensure_interface(address: Ipv4Addr) -> std::io::Result<()> {
    ip(&[
        "addr",
        "replace",
        &format!("{address}/32"),
        "dev",
        "lo",
        "scope",
        "host",
        "label",
        super::INTERFACE,
    ])
}

/// Removes `address` (put there by [`ensure_interface`]) from the loopback interface, if it is
/// there. Only that address: another agent in the same network namespace (a second cluster on
/// the host) may have its own under the same label.
pub fn remove_interface(address: Ipv4Addr) -> std::io::Result<()> {
    let shown = std::process::Command::new("ip")
        .args(["-o", "addr", "show", "dev", "lo", "label", super::INTERFACE])
        .output()?;
    let wanted = format!(" {address}/32 ");
    if String::from_utf8_lossy(&shown.stdout).contains(&wanted) {
        ip(&["addr", "del", &format!("{address}/32"), "dev", "lo"])?;
    }
    Ok(())
}

fn ip(args: &[&str]) -> std::io::Result<()> {
    let output = std::process::Command::new("ip").args(args).output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    fn query(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut message = Message::query();
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        message.metadata.recursion_desired = true;
        message.to_vec().unwrap()
    }

    #[test]
    fn resolv_conf_upstreams_skip_the_cluster_address() {
        let text = "search example.org\nnameserver 169.254.20.10\nnameserver 192.0.2.53\n# x\nnameserver ::1\n";
        assert_eq!(
            upstreams_from_resolv_conf(text, IpAddr::V4(super::super::DEFAULT_ADDRESS)),
            [
                "192.0.2.53:53".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }

    #[tokio::test]
    async fn other_names_are_forwarded_and_big_answers_truncated_over_udp() {
        // A real upstream over UDP on loopback, answering one A record.
        let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let upstream_address = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buffer = vec![0_u8; 512];
            while let Ok((n, peer)) = upstream.recv_from(&mut buffer).await {
                let request = Message::from_vec(&buffer[..n]).unwrap();
                let mut answer = Message::response(request.metadata.id, OpCode::Query);
                answer.add_query(request.queries[0].clone());
                answer.add_answer(Record::from_rdata(
                    request.queries[0].name().clone(),
                    60,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
                ));
                upstream
                    .send_to(&answer.to_vec().unwrap(), peer)
                    .await
                    .unwrap();
            }
        });
        let server = DnsServer::new(
            Zone::build("cluster.local", &[], &[]),
            vec![upstream_address],
        );
        let answer = server
            .respond(&query("example.org.", RecordType::A), false)
            .await
            .unwrap();
        let answer = Message::from_vec(&answer).unwrap();
        assert_eq!(answer.answers[0].data.to_string(), "192.0.2.7");

        // A headless Service with 60 ready endpoints does not fit 512 bytes: TC over UDP,
        // the whole answer over TCP.
        let endpoints: Vec<serde_json::Value> = (1..=60)
            .map(|n| serde_json::json!({"addresses": [format!("10.244.0.{n}")]}))
            .collect();
        let services: Vec<k8s_openapi::api::core::v1::Service> =
            serde_json::from_value(serde_json::json!([
                {"metadata": {"name": "big", "namespace": "default"}, "spec": {"clusterIP": "None"}}
            ]))
            .unwrap();
        let slices: Vec<k8s_openapi::api::discovery::v1::EndpointSlice> =
            serde_json::from_value(serde_json::json!([
                {"metadata": {"name": "big-1", "namespace": "default",
                              "labels": {"kubernetes.io/service-name": "big"}},
                 "addressType": "IPv4", "endpoints": endpoints}
            ]))
            .unwrap();
        server.set_zone(Zone::build("cluster.local", &services, &slices));
        let request = query("big.default.svc.cluster.local.", RecordType::A);
        let udp = Message::from_vec(&server.respond(&request, false).await.unwrap()).unwrap();
        assert!(udp.metadata.truncation);
        let tcp = Message::from_vec(&server.respond(&request, true).await.unwrap()).unwrap();
        assert!(!tcp.metadata.truncation);
        assert_eq!(tcp.answers.len(), 60);
    }
}
