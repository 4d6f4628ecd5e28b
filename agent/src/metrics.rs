//! The agent's Prometheus metrics: the dataplane's conntrack fill and garbage collection,
//! packets dropped per reason, per-interface counters, and the Service syncs, served as text
//! exposition format 0.0.4 on `--metrics-bind-address` (kube-proxy's flag and default,
//! `127.0.0.1:10249`), path `/metrics`.
//!
//! The agent's main loop owns the dataplane; it writes what it reads into [`Metrics`] as it
//! goes (counters every second, conntrack at each collection, syncs as they happen), and the
//! server renders the latest values, so a scrape never touches a BPF map.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use keel_ebpf_common::DropReason;

use crate::dataplane::{CtCollection, IfaceStats};

/// kube-proxy's `--metrics-bind-address` default.
pub const DEFAULT_BIND_ADDRESS: &str = "127.0.0.1:10249";

/// How long to wait before trying to bind again when the address is taken.
const BIND_RETRY: Duration = Duration::from_secs(5);

/// What the agent last read; shared between its main loop and the server.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    conntrack_capacity: Option<u32>,
    conntrack: Option<CtCollection>,
    conntrack_gc_runs: u64,
    conntrack_gc_deleted: u64,
    drops: Vec<(DropReason, u64)>,
    interfaces: BTreeMap<String, IfaceStats>,
    frontends: Option<usize>,
    syncs: u64,
    sync_errors: u64,
    last_sync: Option<Duration>,
}

impl Metrics {
    fn with<R>(&self, body: impl FnOnce(&mut State) -> R) -> R {
        body(
            &mut self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The conntrack map's size (entries it holds at most).
    pub fn set_conntrack_capacity(&self, capacity: u32) {
        self.with(|state| state.conntrack_capacity = Some(capacity));
    }

    /// One garbage collection of the conntrack map.
    pub fn record_conntrack_gc(&self, collection: CtCollection) {
        self.with(|state| {
            state.conntrack_gc_runs += 1;
            state.conntrack_gc_deleted += collection.removed as u64;
            state.conntrack = Some(collection);
        });
    }

    /// The drop counters, summed over CPUs.
    pub fn set_drops(&self, drops: Vec<(DropReason, u64)>) {
        self.with(|state| state.drops = drops);
    }

    /// The counters of the `--devices`, by name.
    pub fn set_interfaces(&self, interfaces: BTreeMap<String, IfaceStats>) {
        self.with(|state| state.interfaces = interfaces);
    }

    /// One sync of the Services into the dataplane: how many frontends it left, how long it
    /// took; `None` when it failed.
    pub fn record_sync(&self, outcome: Option<usize>, took: Duration) {
        self.with(|state| {
            state.syncs += 1;
            state.last_sync = Some(took);
            match outcome {
                Some(frontends) => state.frontends = Some(frontends),
                None => state.sync_errors += 1,
            }
        });
    }

    /// The text exposition of every metric known so far.
    pub fn render(&self) -> String {
        self.with(|state| state.render())
    }
}

impl State {
    fn render(&self) -> String {
        let mut out = Exposition::default();
        if let Some(capacity) = self.conntrack_capacity {
            out.metric(
                "keel_conntrack_max_entries",
                "gauge",
                "Entries the conntrack map holds at most (LRU: the least recently used go first).",
            );
            out.sample("keel_conntrack_max_entries", &[], capacity);
        }
        if let Some(collection) = self.conntrack {
            out.metric(
                "keel_conntrack_entries",
                "gauge",
                "Conntrack entries (both directions of a flow count) at the last garbage collection.",
            );
            out.sample("keel_conntrack_entries", &[], collection.entries);
            if let Some(capacity) = self.conntrack_capacity.filter(|c| *c > 0) {
                out.metric(
                    "keel_conntrack_fill_ratio",
                    "gauge",
                    "keel_conntrack_entries over keel_conntrack_max_entries.",
                );
                let ratio = collection.entries as f64 / f64::from(capacity);
                out.sample("keel_conntrack_fill_ratio", &[], ratio);
            }
        }
        out.metric(
            "keel_conntrack_gc_runs_total",
            "counter",
            "Garbage collections of the conntrack map.",
        );
        out.sample("keel_conntrack_gc_runs_total", &[], self.conntrack_gc_runs);
        out.metric(
            "keel_conntrack_gc_deleted_total",
            "counter",
            "Idle conntrack entries the garbage collector removed.",
        );
        out.sample(
            "keel_conntrack_gc_deleted_total",
            &[],
            self.conntrack_gc_deleted,
        );
        if !self.drops.is_empty() {
            out.metric(
                "keel_drop_count_total",
                "counter",
                "Packets the eBPF programs dropped, by reason.",
            );
            for (reason, count) in &self.drops {
                out.sample(
                    "keel_drop_count_total",
                    &[("reason", reason.as_str())],
                    count,
                );
            }
        }
        if !self.interfaces.is_empty() {
            for (name, unit, help) in [
                ("keel_interface_packets_total", "packets", "Packets seen"),
                ("keel_interface_bytes_total", "bytes", "Bytes seen"),
            ] {
                out.metric(
                    name,
                    "counter",
                    &format!(
                        "{help} by the agent's programs on each --devices interface, by hook."
                    ),
                );
                for (interface, stats) in &self.interfaces {
                    for (hook, counters) in [
                        ("xdp", stats.xdp),
                        ("tc_ingress", stats.tc_ingress),
                        ("tc_egress", stats.tc_egress),
                        ("xdp_tx", stats.xdp_tx),
                    ] {
                        let value = if unit == "packets" {
                            counters.packets
                        } else {
                            counters.bytes
                        };
                        out.sample(name, &[("device", interface), ("hook", hook)], value);
                    }
                }
            }
        }
        if let Some(frontends) = self.frontends {
            out.metric(
                "keel_service_frontends",
                "gauge",
                "Service frontends (address, port, protocol) programmed in the dataplane.",
            );
            out.sample("keel_service_frontends", &[], frontends);
        }
        out.metric(
            "keel_service_syncs_total",
            "counter",
            "Syncs of the desired Services into the dataplane.",
        );
        out.sample("keel_service_syncs_total", &[], self.syncs);
        out.metric(
            "keel_service_sync_errors_total",
            "counter",
            "Syncs of the desired Services into the dataplane that failed.",
        );
        out.sample("keel_service_sync_errors_total", &[], self.sync_errors);
        if let Some(took) = self.last_sync {
            out.metric(
                "keel_service_last_sync_duration_seconds",
                "gauge",
                "How long the last sync of the Services into the dataplane took.",
            );
            out.sample(
                "keel_service_last_sync_duration_seconds",
                &[],
                took.as_secs_f64(),
            );
        }
        out.text
    }
}

/// The text format, line by line.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn metric(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(
            self.text,
            "# HELP {name} {}",
            help.replace('\\', "\\\\").replace('\n', "\\n")
        );
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (index, (label, value)) in labels.iter().enumerate() {
                if index > 0 {
                    self.text.push(',');
                }
                let escaped = value
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.text, "{label}=\"{escaped}\"");
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}

/// Parses `--metrics-bind-address`: `host:port`, or empty to serve no metrics.
pub fn parse_bind_address(text: &str) -> Result<Option<SocketAddr>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        format!("`{text}` is not an address and port like 127.0.0.1:10249 (empty: no metrics)")
    })
}

/// Serves `metrics` on `address` from a thread of its own, for the life of the process. When
/// the address is taken, says so and tries again every few seconds (as kube-proxy does): the
/// dataplane does not wait for its metrics.
pub fn serve(address: SocketAddr, metrics: Metrics) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || runtime.block_on(serve_forever(address, metrics)))?;
    Ok(())
}

async fn serve_forever(address: SocketAddr, metrics: Metrics) {
    let listener = loop {
        match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => break listener,
            Err(error) => {
                log::error!(
                    "metrics: cannot listen on {address} ({error}); trying again in {}s",
                    BIND_RETRY.as_secs()
                );
                tokio::time::sleep(BIND_RETRY).await;
            }
        }
    };
    log::info!("metrics: serving http://{address}/metrics");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&metrics, &request)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        (&Method::GET | &Method::HEAD, "/healthz") => {
            reply(StatusCode::OK, "text/plain", "ok".to_owned())
        }
        (_, "/metrics" | "/healthz") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".to_owned(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "404 page not found\n".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_ebpf_common::stats::IfaceCounters;

    #[test]
    fn renders_the_text_format_with_help_type_and_labels() {
        let metrics = Metrics::default();
        metrics.set_conntrack_capacity(1000);
        metrics.record_conntrack_gc(CtCollection {
            entries: 250,
            removed: 3,
        });
        metrics.record_conntrack_gc(CtCollection {
            entries: 250,
            removed: 2,
        });
        metrics.set_drops(vec![(DropReason::ALL[0], 7)]);
        let counters = IfaceCounters {
            packets: 5,
            bytes: 300,
        };
        metrics.set_interfaces(BTreeMap::from([(
            "eth\"0".to_owned(),
            IfaceStats {
                xdp: counters,
                tc_ingress: IfaceCounters::default(),
                tc_egress: IfaceCounters::default(),
                xdp_tx: IfaceCounters {
                    packets: 3,
                    bytes: 180,
                },
            },
        )]));
        metrics.record_sync(Some(12), Duration::from_millis(4));
        metrics.record_sync(None, Duration::from_millis(1));
        let text = metrics.render();
        for line in [
            "# TYPE keel_conntrack_max_entries gauge",
            "keel_conntrack_max_entries 1000",
            "keel_conntrack_entries 250",
            "keel_conntrack_fill_ratio 0.25",
            "keel_conntrack_gc_runs_total 2",
            "keel_conntrack_gc_deleted_total 5",
            &format!(
                "keel_drop_count_total{{reason=\"{}\"}} 7",
                DropReason::ALL[0].as_str()
            ),
            "keel_interface_packets_total{device=\"eth\\\"0\",hook=\"xdp\"} 5",
            "keel_interface_bytes_total{device=\"eth\\\"0\",hook=\"xdp\"} 300",
            "keel_interface_packets_total{device=\"eth\\\"0\",hook=\"tc_egress\"} 0",
            "keel_interface_packets_total{device=\"eth\\\"0\",hook=\"xdp_tx\"} 3",
            "keel_service_frontends 12",
            "keel_service_syncs_total 2",
            "keel_service_sync_errors_total 1",
            "keel_service_last_sync_duration_seconds 0.001",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in:\n{text}"
            );
        }
        // Every sample's metric has its HELP and TYPE, once.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert_eq!(
                text.matches(&format!("# TYPE {name} ")).count(),
                1,
                "{name} in:\n{text}"
            );
        }
    }

    #[test]
    fn bind_address_parses_or_names_the_problem() {
        assert_eq!(
            parse_bind_address(DEFAULT_BIND_ADDRESS).unwrap(),
            Some("127.0.0.1:10249".parse().unwrap())
        );
        assert_eq!(parse_bind_address("").unwrap(), None);
        let error = parse_bind_address("localhost").unwrap_err();
        assert!(error.contains("`localhost`"), "{error}");
    }
}
