//! From upstream `Service` and `EndpointSlice` objects to the frontends and backends the
//! dataplane programs, following kube-proxy's rules.
//!
//! - Frontends: every IPv4 ClusterIP, externalIP and LoadBalancer ingress IP of a Service,
//!   on each TCP and UDP port of `spec.ports`. Headless and ExternalName Services have none.
//! - Backends: the endpoints of the Service's slices (label `kubernetes.io/service-name`,
//!   same namespace, `addressType: IPv4`) for the slice port whose name and protocol match
//!   the Service port. Ready endpoints (`ready` unset counts as ready); if none is ready,
//!   endpoints that are serving and terminating, so connections drain instead of failing.
//! - NodePorts (`type: NodePort` or `LoadBalancer`): the port's `nodePort` on every address
//!   of the node.
//! - `internalTrafficPolicy: Local`: only endpoints on this node (`nodeName`), for the
//!   ClusterIP frontends; `externalTrafficPolicy: Local`: the same for externalIPs,
//!   LoadBalancer IPs and NodePorts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

use std::time::Duration;

use crate::dataplane::{Backends, Frontend, Protocol};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Backends per frontend.
pub type DesiredState = BTreeMap<Frontend, Backends>;

/// Upstream's default `sessionAffinityConfig.clientIP.timeoutSeconds`: three hours.
const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(10_800);

/// The node the dataplane runs on.
#[derive(Debug, Clone, Default)]
pub struct Node {
    /// For `internalTrafficPolicy` / `externalTrafficPolicy: Local`.
    pub name: Option<String>,
    /// Where NodePorts are served.
    pub addresses: Vec<Ipv4Addr>,
}

/// Computes the frontends and backends of `services` on `node`.
pub fn desired_state(services: &[Service], slices: &[EndpointSlice], node: &Node) -> DesiredState {
    let local = Some(node.name.as_deref().unwrap_or_default());
    let mut state = DesiredState::new();
    let index = SliceIndex::new(slices);
    for service in services {
        let Some(spec) = &service.spec else { continue };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
        let name = service.metadata.name.as_deref().unwrap_or_default();
        let own_slices = index.of(namespace, name);
        let local_only = spec.internal_traffic_policy.as_deref() == Some("Local");
        let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|config| config.client_ip.as_ref())
                .and_then(|client_ip| client_ip.timeout_seconds)
                .and_then(|seconds| u64::try_from(seconds).ok())
                .map_or(DEFAULT_AFFINITY_TIMEOUT, Duration::from_secs)
        });

        let cluster_ips = ipv4s(
            spec.cluster_ips
                .iter()
                .flatten()
                .chain(spec.cluster_ip.iter()),
        );
        let external_ips = ipv4s(
            spec.external_ips.iter().flatten().chain(
                service
                    .status
                    .iter()
                    .filter_map(|status| status.load_balancer.as_ref())
                    .flat_map(|lb| lb.ingress.iter().flatten())
                    .filter_map(|ingress| ingress.ip.as_ref()),
            ),
        );
        let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
        let node_ports = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
        for port in spec.ports.iter().flatten() {
            let Some(protocol) = protocol(port) else {
                continue;
            };
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            let all = backends(own_slices, port, protocol, None);
            let on_this_node = || backends(own_slices, port, protocol, local);
            let internal = if local_only {
                on_this_node()
            } else {
                all.clone()
            };
            let all_empty = all.is_empty();
            let external = if external_local { on_this_node() } else { all };
            // `outside`: reached from outside the cluster (externalIP, LoadBalancer IP,
            // NodePort), where Maglev applies.
            // A `Local` policy with endpoints only elsewhere drops, as kube-proxy does; with no
            // endpoints at all the Service refuses.
            let none_here =
                |local: bool, chosen: &Vec<SocketAddrV4>| local && chosen.is_empty() && !all_empty;
            let (internal_drops, external_drops) = (
                none_here(local_only, &internal),
                none_here(external_local, &external),
            );
            let mut add = |address: Ipv4Addr,
                           port: u16,
                           addresses: &Vec<SocketAddrV4>,
                           outside: bool,
                           drop_when_empty: bool| {
                let backends = Backends {
                    addresses: addresses.clone(),
                    affinity,
                    external: outside,
                    local_only: outside && external_local,
                    drop_when_empty,
                };
                state.insert(
                    Frontend {
                        address,
                        port,
                        protocol,
                    },
                    backends,
                );
            };
            for address in &cluster_ips {
                add(*address, number, &internal, false, internal_drops);
            }
            for address in &external_ips {
                add(*address, number, &external, true, external_drops);
            }
            let node_port = port
                .node_port
                .and_then(|node_port| u16::try_from(node_port).ok());
            if let (true, Some(node_port)) = (node_ports, node_port) {
                for address in &node.addresses {
                    add(*address, node_port, &external, true, external_drops);
                }
            }
        }
    }
    state
}

/// The IPv4 EndpointSlices of each Service (by namespace and their
/// `kubernetes.io/service-name` label), indexed once so that computing every Service's
/// backends costs one pass over the slices, not one per Service.
#[derive(Debug, Default)]
pub struct SliceIndex<'a> {
    by_namespace: HashMap<&'a str, HashMap<&'a str, Vec<&'a EndpointSlice>>>,
}

impl<'a> SliceIndex<'a> {
    pub fn new(slices: &'a [EndpointSlice]) -> SliceIndex<'a> {
        let mut index = SliceIndex::default();
        for slice in slices.iter().filter(|slice| slice.address_type == "IPv4") {
            let Some(service) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|labels| labels.get(SERVICE_NAME_LABEL))
            else {
                continue;
            };
            let namespace = slice.metadata.namespace.as_deref().unwrap_or("default");
            index
                .by_namespace
                .entry(namespace)
                .or_default()
                .entry(service.as_str())
                .or_default()
                .push(slice);
        }
        index
    }

    /// The slices of Service `name` in `namespace`.
    pub fn of(&self, namespace: &str, name: &str) -> &[&'a EndpointSlice] {
        self.by_namespace
            .get(namespace)
            .and_then(|services| services.get(name))
            .map_or(&[], Vec::as_slice)
    }
}

/// IPv4 addresses among `texts`, sorted and without duplicates; `None` and IPv6 are skipped.
fn ipv4s<'a>(texts: impl Iterator<Item = &'a String>) -> BTreeSet<Ipv4Addr> {
    texts.filter_map(|text| text.parse().ok()).collect()
}

fn protocol(port: &ServicePort) -> Option<Protocol> {
    match port.protocol.as_deref().unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        // SCTP has no socket-level translation in Keel yet.
        _ => None,
    }
}

/// The backends of one Service port, ready ones first choice, serving-and-terminating ones
/// if none is ready; only those on `node` if given.
fn backends(
    slices: &[&EndpointSlice],
    port: &ServicePort,
    protocol: Protocol,
    node: Option<&str>,
) -> Vec<SocketAddrV4> {
    let wanted_name = port.name.as_deref().unwrap_or_default();
    let wanted_protocol = match protocol {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    };
    let mut ready = BTreeSet::new();
    let mut draining = BTreeSet::new();
    for slice in slices {
        let Some(target) = slice.ports.iter().flatten().find(|slice_port| {
            slice_port.name.as_deref().unwrap_or_default() == wanted_name
                && slice_port.protocol.as_deref().unwrap_or("TCP") == wanted_protocol
        }) else {
            continue;
        };
        let Some(target) = target.port.and_then(|number| u16::try_from(number).ok()) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            if node.is_some_and(|node| endpoint.node_name.as_deref() != Some(node)) {
                continue;
            }
            let Some(address) = endpoint
                .addresses
                .first()
                .and_then(|text| text.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let backend = SocketAddrV4::new(address, target);
            match condition(endpoint) {
                Condition::Ready => ready.insert(backend),
                Condition::Draining => draining.insert(backend),
                Condition::Gone => false,
            };
        }
    }
    if ready.is_empty() {
        draining.into_iter().collect()
    } else {
        ready.into_iter().collect()
    }
}

enum Condition {
    Ready,
    /// Serving and terminating: used only when nothing is ready.
    Draining,
    Gone,
}

fn condition(endpoint: &Endpoint) -> Condition {
    let conditions = endpoint.conditions.as_ref();
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    if ready {
        Condition::Ready
    } else if serving && terminating {
        Condition::Draining
    } else {
        Condition::Gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::ServicesFile;

    const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  externalIPs: [198.18.100.1]
  ports:
  - {name: http, port: 80, targetPort: web, protocol: TCP}
  - {name: dns, port: 53, protocol: UDP}
status:
  loadBalancer:
    ingress: [{ip: 198.18.100.2}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: dns, port: 5353, protocol: UDP}
endpoints:
- addresses: [10.244.0.5]
  nodeName: node-a
- addresses: [10.244.0.6]
  conditions: {ready: true}
  nodeName: node-b
- addresses: [10.244.0.7]
  conditions: {ready: false, serving: true, terminating: true}
  nodeName: node-a
- addresses: [10.244.0.8]
  conditions: {ready: false}
"#;

    fn state(yaml: &str, node: Option<&str>) -> DesiredState {
        let file = ServicesFile::parse(yaml).unwrap();
        let node = Node {
            name: node.map(str::to_owned),
            addresses: vec![Ipv4Addr::new(198, 18, 0, 2)],
        };
        desired_state(&file.services, &file.slices, &node)
    }

    fn frontend(address: [u8; 4], port: u16, protocol: Protocol) -> Frontend {
        Frontend {
            address: Ipv4Addr::from(address),
            port,
            protocol,
        }
    }

    fn backend(last: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, last), port)
    }

    #[test]
    fn every_service_ip_and_port_is_a_frontend_with_the_ready_endpoints() {
        let state = state(WEB, None);
        let http = vec![backend(5, 8080), backend(6, 8080)];
        let dns = vec![backend(5, 5353), backend(6, 5353)];
        for address in [[10, 96, 0, 10], [198, 18, 100, 1], [198, 18, 100, 2]] {
            assert_eq!(state[&frontend(address, 80, Protocol::Tcp)].addresses, http);
            assert_eq!(state[&frontend(address, 53, Protocol::Udp)].addresses, dns);
            // The externalIP and the LoadBalancer IP are reached from outside: Maglev's.
            let outside = address != [10, 96, 0, 10];
            assert_eq!(
                state[&frontend(address, 80, Protocol::Tcp)].external,
                outside
            );
        }
        assert_eq!(state.len(), 6);
    }

    #[test]
    fn terminating_endpoints_serve_only_when_none_is_ready() {
        let yaml = WEB
            .replace("- addresses: [10.244.0.5]\n  nodeName: node-a\n", "")
            .replace("conditions: {ready: true}", "conditions: {ready: false}");
        let state = state(&yaml, None);
        assert_eq!(
            state[&frontend([10, 96, 0, 10], 80, Protocol::Tcp)].addresses,
            [backend(7, 8080)]
        );
    }

    #[test]
    fn internal_traffic_policy_local_keeps_this_nodes_endpoints_for_the_cluster_ip() {
        let yaml = WEB.replace(
            "  clusterIP: 10.96.0.10\n",
            "  clusterIP: 10.96.0.10\n  internalTrafficPolicy: Local\n",
        );
        let state = state(&yaml, Some("node-b"));
        assert_eq!(
            state[&frontend([10, 96, 0, 10], 80, Protocol::Tcp)].addresses,
            [backend(6, 8080)]
        );
        // External frontends are not governed by the internal policy.
        assert_eq!(
            state[&frontend([198, 18, 100, 1], 80, Protocol::Tcp)]
                .addresses
                .len(),
            2
        );
    }

    #[test]
    fn headless_external_name_and_unmatched_slices_give_nothing_or_no_backends() {
        let headless = WEB
            .replace("clusterIP: 10.96.0.10", "clusterIP: None")
            .replace("clusterIPs: [10.96.0.10]", "clusterIPs: [None]");
        let state = state(&headless, None);
        assert!(
            !state
                .keys()
                .any(|f| f.address == Ipv4Addr::new(10, 96, 0, 10))
        );
        let external_name = WEB.replace(
            "  clusterIP: 10.96.0.10\n",
            "  type: ExternalName\n  externalName: example.com\n",
        );
        assert!(self::state(&external_name, None).is_empty());
        let other_service = WEB.replace(
            "kubernetes.io/service-name: web",
            "kubernetes.io/service-name: api",
        );
        let state = self::state(&other_service, None);
        assert!(
            state[&frontend([10, 96, 0, 10], 80, Protocol::Tcp)]
                .addresses
                .is_empty()
        );
    }

    #[test]
    fn client_ip_affinity_carries_its_timeout_and_defaults_to_three_hours() {
        assert_eq!(
            state(WEB, None)[&frontend([10, 96, 0, 10], 80, Protocol::Tcp)].affinity,
            None
        );
        let with = WEB.replace(
            "  clusterIP: 10.96.0.10\n",
            "  clusterIP: 10.96.0.10\n  sessionAffinity: ClientIP\n",
        );
        assert_eq!(
            state(&with, None)[&frontend([10, 96, 0, 10], 80, Protocol::Tcp)].affinity,
            Some(Duration::from_secs(10_800))
        );
        let timed = with.replace(
            "  sessionAffinity: ClientIP\n",
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n",
        );
        assert_eq!(
            state(&timed, None)[&frontend([198, 18, 100, 1], 80, Protocol::Tcp)].affinity,
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn node_ports_are_served_on_every_node_address_and_follow_external_traffic_policy() {
        let yaml = WEB
            .replace(
                "  clusterIP: 10.96.0.10\n",
                "  type: NodePort\n  clusterIP: 10.96.0.10\n",
            )
            .replace(
                "{name: http, port: 80, targetPort: web, protocol: TCP}",
                "{name: http, port: 80, targetPort: web, protocol: TCP, nodePort: 30080}",
            );
        let state = state(&yaml, Some("node-b"));
        assert_eq!(
            state[&frontend([198, 18, 0, 2], 30080, Protocol::Tcp)].addresses,
            [backend(5, 8080), backend(6, 8080)]
        );
        assert!(state[&frontend([198, 18, 0, 2], 30080, Protocol::Tcp)].external);
        assert!(!state[&frontend([198, 18, 0, 2], 30080, Protocol::Tcp)].local_only);
        // The UDP port has no nodePort: no NodePort frontend for it.
        assert!(
            !state
                .keys()
                .any(|f| f.address == Ipv4Addr::new(198, 18, 0, 2) && f.protocol == Protocol::Udp)
        );
        let local = yaml.replace(
            "  type: NodePort\n",
            "  type: NodePort\n  externalTrafficPolicy: Local\n",
        );
        let state = self::state(&local, Some("node-b"));
        assert_eq!(
            state[&frontend([198, 18, 0, 2], 30080, Protocol::Tcp)].addresses,
            [backend(6, 8080)]
        );
        // Marked so the dataplane keeps the client's address and drops without a backend.
        assert!(state[&frontend([198, 18, 0, 2], 30080, Protocol::Tcp)].local_only);
        assert!(state[&frontend([198, 18, 100, 1], 80, Protocol::Tcp)].local_only);
        assert!(!state[&frontend([10, 96, 0, 10], 80, Protocol::Tcp)].local_only);
        assert_eq!(
            state[&frontend([198, 18, 100, 1], 80, Protocol::Tcp)].addresses,
            [backend(6, 8080)]
        );
        // The ClusterIP is not external: every ready endpoint.
        assert_eq!(
            state[&frontend([10, 96, 0, 10], 80, Protocol::Tcp)]
                .addresses
                .len(),
            2
        );
        // A ClusterIP Service has no NodePorts even if a nodePort is written.
        let plain = yaml.replace("  type: NodePort\n", "");
        assert!(!self::state(&plain, None).keys().any(|f| f.port == 30080));
        assert!(!state.values().any(|backends| backends.drop_when_empty));
    }

    #[test]
    fn a_local_policy_with_endpoints_only_elsewhere_drops_and_with_none_at_all_refuses() {
        let yaml = WEB.replace(
            "  clusterIP: 10.96.0.10\n",
            "  clusterIP: 10.96.0.10\n  externalTrafficPolicy: Local\n  internalTrafficPolicy: Local\n",
        );
        // node-c runs none of web's endpoints: its external and cluster frontends drop.
        let elsewhere = state(&yaml, Some("node-c"));
        for address in [[198, 18, 100, 1], [198, 18, 100, 2], [10, 96, 0, 10]] {
            let backends = &elsewhere[&frontend(address, 80, Protocol::Tcp)];
            assert!(
                backends.addresses.is_empty() && backends.drop_when_empty,
                "{address:?}"
            );
        }
        // node-b has one: it is served.
        let here = state(&yaml, Some("node-b"));
        assert!(!here[&frontend([198, 18, 100, 1], 80, Protocol::Tcp)].drop_when_empty);
        // Without any ready endpoint the Service refuses (kube-proxy's REJECT), Local or not.
        let none = format!(
            "{}endpoints: []\n",
            &yaml[..yaml.find("endpoints:").unwrap()]
        );
        let nowhere = state(&none, Some("node-c"));
        let backends = &nowhere[&frontend([198, 18, 100, 1], 80, Protocol::Tcp)];
        assert!(backends.addresses.is_empty() && !backends.drop_when_empty);
    }

    #[test]
    fn bad_documents_are_named() {
        let error = ServicesFile::parse(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\nkind: Pod\n",
        )
        .unwrap_err();
        assert_eq!(error.0, 2);
        assert!(error.1.contains("apiVersion"), "{}", error.1);
        let error = ServicesFile::parse("apiVersion: v1\nkind: ConfigMap\n").unwrap_err();
        assert!(
            error.1.contains("v1 ConfigMap is not supported"),
            "{}",
            error.1
        );
        let error =
            ServicesFile::parse("apiVersion: v1\nkind: Service\nspec: {ports: 7}\n").unwrap_err();
        assert_eq!(error.0, 1);
        assert!(
            error.1.contains("ports") || error.1.contains("sequence"),
            "{}",
            error.1
        );
    }
}
