//! The routes controller: a watch of every Node feeds a store; from it, each other node with a
//! `spec.podCIDR` and an IPv4 `InternalIP` gives a route `<podCIDR> via <InternalIP>`
//! ([`desired_routes`]), and [`crate::sandbox::routes::converge`] makes the kernel's Keel
//! routes exactly that set: on every change of the set, and every [`RESYNC`] to repair routes
//! removed behind the agent's back. Nothing is written before the first full list, so a
//! restarted agent never takes a partial view for deleted nodes.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::services::{DEBOUNCE, reflect};
use crate::sandbox::Ipv4Cidr;
use crate::sandbox::routes::{self, DesiredRoutes, NodeRoute};

/// How often the routes are converged when no Node changed.
pub const RESYNC: Duration = Duration::from_secs(30);
/// How soon a failed convergence is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// The routes to the other nodes' pods: one per node with a pod CIDR and an IPv4
/// InternalIP, except this node (`own_name`) and any CIDR overlapping this node's own.
/// Nodes that claim a CIDR another node already has (by name order) are reported, not routed.
pub fn desired_routes(
    nodes: &[Node],
    own_name: &str,
    own_cidr: Option<Ipv4Cidr>,
) -> (DesiredRoutes, Vec<String>) {
    let mut sorted: Vec<&Node> = nodes.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut desired = DesiredRoutes::new();
    let mut problems = Vec::new();
    for node in sorted {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        if name == own_name {
            continue;
        }
        let Some(text) = node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()) else {
            continue;
        };
        let Ok(cidr) = Ipv4Cidr::parse(text) else {
            problems.push(format!(
                "node {name} has pod CIDR {text}, not an IPv4 network"
            ));
            continue;
        };
        let Some(gateway) = internal_ipv4(node) else {
            continue;
        };
        if own_cidr.is_some_and(|own| overlaps(own, cidr)) {
            problems.push(format!(
                "node {name}'s pod CIDR {cidr} overlaps this node's: not routed"
            ));
            continue;
        }
        if let Some(other) = desired.values().find(|r| overlaps(r.destination, cidr)) {
            problems.push(format!(
                "node {name}'s pod CIDR {cidr} overlaps {} of another node: not routed",
                other.destination
            ));
            continue;
        }
        desired.insert(
            cidr.to_string(),
            NodeRoute {
                destination: cidr,
                gateway,
            },
        );
    }
    (desired, problems)
}

/// The node's first IPv4 `InternalIP`.
fn internal_ipv4(node: &Node) -> Option<std::net::Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}

fn overlaps(a: Ipv4Cidr, b: Ipv4Cidr) -> bool {
    a.contains(b.base) || b.contains(a.base)
}

/// Keeps the routes to the other nodes' pods until the task is dropped.
pub async fn run(client: kube::Client, own_name: String, own_cidr: Ipv4Cidr) {
    let changed = Arc::new(Notify::new());
    let store = reflect::<Node>(&client, watcher::Config::default(), &changed);
    if store.wait_until_ready().await.is_err() {
        return;
    }
    let mut written: Option<DesiredRoutes> = None;
    let mut reported: Vec<String> = Vec::new();
    let mut next_sync = Instant::now();
    loop {
        let nodes: Vec<Node> = store.state().iter().map(|n| (**n).clone()).collect();
        let (desired, problems) = desired_routes(&nodes, &own_name, Some(own_cidr));
        if problems != reported {
            for problem in &problems {
                log::warn!("node routes: {problem}");
            }
            reported = problems;
        }
        if written.as_ref() != Some(&desired) || Instant::now() >= next_sync {
            let wanted = desired.clone();
            match tokio::task::spawn_blocking(move || routes::converge(&wanted)).await {
                Ok(Ok(done)) => {
                    if done.added + done.removed > 0 {
                        log::info!(
                            "node routes: {} to other nodes' pods ({} written, {} removed)",
                            desired.len(),
                            done.added,
                            done.removed
                        );
                    }
                    for destination in &done.foreign {
                        log::warn!(
                            "node routes: a route to {destination} that Keel did not make is in the way; left alone"
                        );
                    }
                    written = Some(desired);
                    next_sync = Instant::now() + RESYNC;
                }
                Ok(Err(error)) => {
                    log::warn!("node routes: {error}; trying again in {RETRY:?}");
                    written = None;
                    next_sync = Instant::now() + RETRY;
                }
                Err(error) => {
                    log::error!("node routes: {error}");
                    return;
                }
            }
        }
        tokio::select! {
            () = changed.notified() => tokio::time::sleep(DEBOUNCE).await,
            () = tokio::time::sleep_until(next_sync) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};
    use kube::api::ObjectMeta;

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidr.map(str::to_owned),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(
                    [
                        ip.map(|ip| NodeAddress {
                            type_: "InternalIP".to_owned(),
                            address: ip.to_owned(),
                        }),
                        Some(NodeAddress {
                            type_: "Hostname".to_owned(),
                            address: name.to_owned(),
                        }),
                    ]
                    .into_iter()
                    .flatten()
                    .collect(),
                ),
                ..NodeStatus::default()
            }),
        }
    }

    #[test]
    fn every_other_node_with_a_cidr_and_an_address_gets_a_route() {
        let nodes = [
            node("a", Some("10.244.0.0/24"), Some("198.18.0.2")),
            node("b", Some("10.244.1.0/24"), Some("198.18.0.3")),
            node("c", None, Some("198.18.0.4")),
            node("d", Some("10.244.3.0/24"), None),
            node("e", Some("10.244.4.0/24"), Some("fd00::4")),
            node("f", Some("fd00:1::/64"), Some("198.18.0.6")),
            node("g", Some("10.244.0.0/23"), Some("198.18.0.7")),
            node("h", Some("10.244.1.0/24"), Some("198.18.0.8")),
        ];
        let own = Ipv4Cidr::parse("10.244.0.0/24").ok();
        let (desired, problems) = desired_routes(&nodes, "a", own);
        let routes: Vec<String> = desired
            .values()
            .map(|r| format!("{} via {}", r.destination, r.gateway))
            .collect();
        assert_eq!(routes, ["10.244.1.0/24 via 198.18.0.3"]);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("node f"), "{problems:?}");
        assert!(problems[1].contains("node g"), "{problems:?}");
        assert!(problems[2].contains("node h"), "{problems:?}");
    }
}
