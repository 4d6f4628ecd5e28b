//! What a Service's EndpointSlices should hold, from its pods and their nodes, as upstream's
//! endpointslice reconciler computes it (`podToEndpoint`, `getEndpointPorts`,
//! `ShouldPodBeInEndpoints`): pure functions of the objects.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The node label that names a node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The address types (`IPv4`, `IPv6`) a Service's slices carry: one per IP family.
pub fn address_types(service: &Service) -> Vec<&'static str> {
    let spec = service.spec.as_ref();
    let families = spec.and_then(|spec| spec.ip_families.as_deref());
    let mut types: Vec<&'static str> = match families {
        Some(families) if !families.is_empty() => families
            .iter()
            .filter_map(|family| match family.as_str() {
                "IPv4" => Some("IPv4"),
                "IPv6" => Some("IPv6"),
                _ => None,
            })
            .collect(),
        // Older objects: infer the family from the cluster IPs, IPv4 without any.
        _ => spec
            .and_then(|spec| spec.cluster_ips.as_deref())
            .unwrap_or_default()
            .iter()
            .filter(|ip| ip.as_str() != "None" && !ip.is_empty())
            .map(|ip| if ip.contains(':') { "IPv6" } else { "IPv4" })
            .collect(),
    };
    types.dedup();
    if types.is_empty() {
        types.push("IPv4");
    }
    types
}

/// Whether a Service has a cluster IP (is not headless).
pub fn has_cluster_ip(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|spec| spec.cluster_ip.as_deref())
        .is_some_and(|ip| !ip.is_empty() && ip != "None")
}

/// Upstream's `ShouldPodBeInEndpoints(pod, true)`: not terminal and with an address;
/// terminating pods stay (with `terminating: true`).
pub fn pod_has_endpoint(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    let phase = status.and_then(|status| status.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return false;
    }
    !pod_ips(pod).is_empty()
}

fn pod_ips(pod: &Pod) -> Vec<&str> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    match status.pod_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.iter().map(|ip| ip.ip.as_str()).collect(),
        _ => status.pod_ip.as_deref().into_iter().collect(),
    }
}

/// The pod's `Ready` condition is `True`.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|status| status.conditions.as_deref())
        .unwrap_or_default()
        .iter()
        .any(|condition| condition.type_ == "Ready" && condition.status == "True")
}

/// The endpoint of `pod` for slices of `address_type`, as upstream's `podToEndpoint`.
pub fn pod_endpoint(
    pod: &Pod,
    node: Option<&Node>,
    service: &Service,
    address_type: &str,
) -> Endpoint {
    let serving = pod_ready(pod);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let publish_not_ready = service
        .spec
        .as_ref()
        .and_then(|spec| spec.publish_not_ready_addresses)
        .unwrap_or(false);
    // Ready is never true for a terminating pod, unless the Service publishes everything.
    let ready = publish_not_ready || (serving && !terminating);
    let addresses = pod_ips(pod)
        .into_iter()
        .filter(|ip| (address_type == "IPv6") == ip.contains(':'))
        .map(str::to_owned)
        .collect();
    let spec = pod.spec.as_ref();
    let node_name = spec
        .and_then(|spec| spec.node_name.clone())
        .filter(|name| !name.is_empty());
    let zone = node
        .and_then(|node| node.metadata.labels.as_ref())
        .and_then(|labels| labels.get(ZONE_LABEL))
        .filter(|zone| !zone.is_empty())
        .cloned();
    let hostname = spec
        .and_then(|spec| spec.hostname.clone())
        .filter(|hostname| {
            !hostname.is_empty()
                && spec.and_then(|spec| spec.subdomain.as_deref())
                    == service.metadata.name.as_deref()
                && pod.metadata.namespace == service.metadata.namespace
        });
    Endpoint {
        addresses,
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        hostname,
        node_name,
        zone,
        target_ref: Some(ObjectReference {
            kind: Some("Pod".to_owned()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..ObjectReference::default()
        }),
        ..Endpoint::default()
    }
}

/// The slice ports of `pod` for `service` (upstream's `getEndpointPorts`): a named target
/// port resolves to the pod's container port of that name and protocol; service ports the
/// pod has no such port for are left out. Sorted, so equal sets compare equal.
pub fn endpoint_ports(service: &Service, pod: &Pod) -> Vec<EndpointPort> {
    let Some(spec) = service.spec.as_ref() else {
        return Vec::new();
    };
    let mut ports: Vec<EndpointPort> = spec
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter_map(|service_port| {
            let port = find_port(pod, service_port)?;
            Some(EndpointPort {
                name: Some(service_port.name.clone().unwrap_or_default()),
                port: Some(port),
                protocol: Some(protocol(service_port.protocol.as_deref()).to_owned()),
                app_protocol: service_port.app_protocol.clone(),
            })
        })
        .collect();
    ports.sort_by(|a, b| (&a.name, &a.protocol, a.port).cmp(&(&b.name, &b.protocol, b.port)));
    ports
}

fn protocol(protocol: Option<&str>) -> &str {
    protocol.unwrap_or("TCP")
}

/// Upstream's `podutil.FindPort`: the container port a service port targets in `pod`.
fn find_port(pod: &Pod, service_port: &ServicePort) -> Option<i32> {
    match &service_port.target_port {
        None => Some(service_port.port),
        Some(IntOrString::Int(port)) => Some(*port),
        Some(IntOrString::String(name)) => {
            if let Ok(port) = name.parse::<i32>() {
                return Some(port);
            }
            let spec = pod.spec.as_ref()?;
            let wanted = protocol(service_port.protocol.as_deref());
            // Regular containers, then sidecars (init containers that keep running).
            let sidecars = spec
                .init_containers
                .as_deref()
                .unwrap_or_default()
                .iter()
                .filter(|container| container.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|container| container.ports.as_deref().unwrap_or_default())
                .find(|port| {
                    port.name.as_deref() == Some(name.as_str())
                        && protocol(port.protocol.as_deref()) == wanted
                })
                .map(|port| port.container_port)
        }
    }
}

/// The labels of a Service's slices (upstream's `setEndpointSliceLabels`): the Service's own
/// labels but the reserved ones, the headless marker, the service name and the manager.
pub fn slice_labels(service: &Service, manager: &str) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = service
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(key, _)| !is_reserved_label(key))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    if !has_cluster_ip(service) {
        labels.insert(HEADLESS_LABEL.to_owned(), String::new());
    }
    labels.insert(
        SERVICE_NAME_LABEL.to_owned(),
        service.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(MANAGED_BY_LABEL.to_owned(), manager.to_owned());
    labels
}

/// `kubernetes.io/service-name`: the Service a slice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// `endpointslice.kubernetes.io/managed-by`: who manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// `service.kubernetes.io/headless`: set on slices of headless Services.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

fn is_reserved_label(key: &str) -> bool {
    [SERVICE_NAME_LABEL, MANAGED_BY_LABEL, HEADLESS_LABEL].contains(&key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).expect("a pod")
    }

    fn service(value: serde_json::Value) -> Service {
        serde_json::from_value(value).expect("a service")
    }

    #[test]
    fn named_target_port_resolves_per_pod_and_protocol() {
        let svc = service(
            json!({"metadata": {"name": "web", "namespace": "n"}, "spec": {
            "ports": [{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"},
                      {"name": "dns", "port": 53, "targetPort": "web", "protocol": "UDP"}]}}),
        );
        let first = pod(json!({"spec": {"containers": [{"name": "c", "ports": [
            {"name": "web", "containerPort": 8080}]}]}}));
        let ports = endpoint_ports(&svc, &first);
        assert_eq!(ports.len(), 1, "no UDP port named web: {ports:?}");
        assert_eq!(ports[0].port, Some(8080));
        assert_eq!(ports[0].name.as_deref(), Some("http"));
        let second = pod(json!({"spec": {"containers": [{"name": "c", "ports": [
            {"name": "web", "containerPort": 9090}, {"name": "web", "containerPort": 5353, "protocol": "UDP"}]}]}}));
        let ports = endpoint_ports(&svc, &second);
        assert_eq!(
            ports.iter().map(|port| port.port).collect::<Vec<_>>(),
            [Some(5353), Some(9090)]
        );
    }

    #[test]
    fn conditions_follow_readiness_and_termination() {
        let svc = service(json!({"metadata": {"name": "web", "namespace": "n"}, "spec": {}}));
        let ready = json!({"metadata": {"name": "p", "namespace": "n", "uid": "u"},
            "spec": {"nodeName": "node-a", "containers": []},
            "status": {"podIPs": [{"ip": "10.0.0.5"}], "conditions": [{"type": "Ready", "status": "True"}]}});
        let endpoint = pod_endpoint(&pod(ready.clone()), None, &svc, "IPv4");
        let conditions = endpoint.conditions.expect("conditions");
        assert_eq!(
            (conditions.ready, conditions.serving, conditions.terminating),
            (Some(true), Some(true), Some(false))
        );
        assert_eq!(endpoint.addresses, ["10.0.0.5"]);
        assert_eq!(endpoint.node_name.as_deref(), Some("node-a"));
        let mut terminating = ready;
        terminating["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let conditions = pod_endpoint(&pod(terminating.clone()), None, &svc, "IPv4")
            .conditions
            .expect("conditions");
        assert_eq!(
            (conditions.ready, conditions.serving, conditions.terminating),
            (Some(false), Some(true), Some(true))
        );
        let publish = service(json!({"metadata": {"name": "web", "namespace": "n"},
            "spec": {"publishNotReadyAddresses": true}}));
        let conditions = pod_endpoint(&pod(terminating), None, &publish, "IPv4")
            .conditions
            .expect("conditions");
        assert_eq!(conditions.ready, Some(true));
    }

    #[test]
    fn hostname_only_for_the_pods_subdomain() {
        let svc = service(
            json!({"metadata": {"name": "db", "namespace": "n"}, "spec": {"clusterIP": "None"}}),
        );
        let mut value = json!({"metadata": {"name": "p", "namespace": "n"},
            "spec": {"hostname": "db-0", "subdomain": "db", "containers": []},
            "status": {"podIP": "10.0.0.7"}});
        assert_eq!(
            pod_endpoint(&pod(value.clone()), None, &svc, "IPv4")
                .hostname
                .as_deref(),
            Some("db-0")
        );
        value["spec"]["subdomain"] = json!("other");
        assert_eq!(pod_endpoint(&pod(value), None, &svc, "IPv4").hostname, None);
        assert_eq!(
            slice_labels(&svc, "m")
                .get(HEADLESS_LABEL)
                .map(String::as_str),
            Some("")
        );
    }

    #[test]
    fn terminal_and_addressless_pods_have_no_endpoint() {
        assert!(!pod_has_endpoint(&pod(
            json!({"status": {"phase": "Running"}})
        )));
        assert!(!pod_has_endpoint(&pod(
            json!({"status": {"phase": "Succeeded", "podIP": "10.0.0.1"}})
        )));
        assert!(pod_has_endpoint(&pod(
            json!({"status": {"phase": "Running", "podIP": "10.0.0.1"}})
        )));
    }
}
