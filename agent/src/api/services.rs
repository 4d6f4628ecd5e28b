//! Services and EndpointSlices from the API, as kube-proxy reads them: two reflectors
//! (`watcher` + `Store`, with kube-proxy's label selectors), and from their contents the
//! dataplane's desired state ([`desired_state`]), handed on when it changes.
//!
//! Bursts are coalesced: after a desired state is handed on, the next is computed no sooner
//! than [`DEBOUNCE`] later, from whatever the stores hold then. Nothing is handed on before
//! both stores have their first full list, so a restarted agent never sees Services without
//! their slices (which would empty their backends for a moment).

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::sync::Notify;

use crate::services::{DesiredState, Node, desired_state};

/// The shortest time between two desired states handed on.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// kube-proxy's selector for both: no Services another proxy serves, no headless ones.
const PROXY_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// Watches Services and EndpointSlices and sends `node`'s desired state to `sink` whenever
/// it changes, until `sink` is closed.
pub async fn feed(client: kube::Client, node: Node, sink: std::sync::mpsc::Sender<DesiredState>) {
    let config = watcher::Config::default().labels(PROXY_SELECTOR);
    let Some((services, slices, changed)) = watch_both(&client, config).await else {
        return;
    };
    let mut last: Option<DesiredState> = None;
    loop {
        let service_list: Vec<Service> = services.state().iter().map(|s| (**s).clone()).collect();
        let slice_list: Vec<EndpointSlice> = slices.state().iter().map(|s| (**s).clone()).collect();
        let desired = desired_state(&service_list, &slice_list, &node);
        if last.as_ref() != Some(&desired) {
            log::debug!(
                "API: {} Services, {} EndpointSlices, {} frontends",
                service_list.len(),
                slice_list.len(),
                desired.len()
            );
            if sink.send(desired.clone()).is_err() {
                return;
            }
            last = Some(desired);
        }
        tokio::time::sleep(DEBOUNCE).await;
        changed.notified().await;
    }
}

/// Watches every Service and EndpointSlice (headless ones included, which kube-proxy's
/// selector leaves out) and keeps the cluster DNS's zone in step with them.
pub async fn dns_feed(client: kube::Client, domain: String, server: crate::dns::DnsServer) {
    let Some((services, slices, changed)) = watch_both(&client, watcher::Config::default()).await
    else {
        return;
    };
    loop {
        let service_list: Vec<Service> = services.state().iter().map(|s| (**s).clone()).collect();
        let slice_list: Vec<EndpointSlice> = slices.state().iter().map(|s| (**s).clone()).collect();
        server.set_zone(crate::dns::Zone::build(&domain, &service_list, &slice_list));
        tokio::time::sleep(DEBOUNCE).await;
        changed.notified().await;
    }
}

/// Reflectors of Services and EndpointSlices selected by `config`, once both have listed, and
/// the notification of their changes; `None` if a watch ended first.
async fn watch_both(
    client: &kube::Client,
    config: watcher::Config,
) -> Option<(Store<Service>, Store<EndpointSlice>, Arc<Notify>)> {
    let changed = Arc::new(Notify::new());
    let services = reflect::<Service>(client, config.clone(), &changed);
    let slices = reflect::<EndpointSlice>(client, config, &changed);
    services.wait_until_ready().await.ok()?;
    slices.wait_until_ready().await.ok()?;
    Some((services, slices, changed))
}

/// A store of `K` kept by a watch, and the task that drives it; `changed` is notified on
/// every event (a re-list included).
pub(crate) fn reflect<K>(
    client: &kube::Client,
    config: watcher::Config,
    changed: &Arc<Notify>,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let api: Api<K> = Api::all(client.clone());
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
    tokio::spawn(drive(
        stream,
        Arc::clone(changed),
        K::kind(&()).into_owned(),
    ));
    reader
}

async fn drive<K>(
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    changed: Arc<Notify>,
    kind: String,
) {
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(_) => changed.notify_one(),
            Err(error) => log::warn!("{kind} watch: {error}"),
        }
    }
}
