//! The legacy v1 Endpoints object of a Service (upstream's endpoints controller): one subset
//! per distinct set of resolved ports, ready and not-ready addresses, repacked and sorted as
//! upstream's `RepackSubsets` leaves them, at most 1000 addresses.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset, Pod, Service};

use super::desired;

/// Most addresses an Endpoints object holds (upstream's `maxCapacity`).
pub const MAX_ADDRESSES: usize = 1000;
/// The annotation on an Endpoints object that had to leave addresses out.
pub const OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";

/// The subsets for `service` from the pods its selector matches, and whether addresses had
/// to be left out.
pub fn subsets(service: &Service, pods: &[&Pod]) -> (Vec<EndpointSubset>, bool) {
    let spec = service.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let portless_headless =
        spec.ports.as_deref().unwrap_or_default().is_empty() && !desired::has_cluster_ip(service);
    let family_v6 = desired::address_types(service).first() == Some(&"IPv6");
    // Ports key -> (ports, ready addresses, not-ready addresses), addresses by (ip, uid).
    type Addresses = BTreeMap<(String, String), EndpointAddress>;
    let mut groups: BTreeMap<_, (Vec<EndpointPort>, Addresses, Addresses)> = BTreeMap::new();
    for pod in pods {
        if !desired::pod_has_endpoint(pod)
            || (!publish_not_ready && pod.metadata.deletion_timestamp.is_some())
        {
            continue;
        }
        let Some(address) = address(pod, service, family_v6) else {
            continue;
        };
        let ports: Vec<EndpointPort> = desired::endpoint_ports(service, pod)
            .into_iter()
            .map(|port| EndpointPort {
                name: port.name.filter(|name| !name.is_empty()),
                port: port.port.unwrap_or_default(),
                protocol: port.protocol,
                app_protocol: port.app_protocol,
            })
            .collect();
        if ports.is_empty() && !portless_headless {
            continue;
        }
        let key: Vec<_> = ports
            .iter()
            .map(|port| (port.name.clone(), port.protocol.clone(), port.port))
            .collect();
        let group = groups
            .entry(key)
            .or_insert_with(|| (ports, BTreeMap::new(), BTreeMap::new()));
        let id = (
            address.ip.clone(),
            pod.metadata.uid.clone().unwrap_or_default(),
        );
        if publish_not_ready || desired::pod_ready(pod) {
            group.2.remove(&id);
            group.1.insert(id, address);
        } else if !group.1.contains_key(&id) {
            group.2.insert(id, address);
        }
    }
    // Ready addresses first, then not-ready ones, until the capacity is used up.
    let mut budget = MAX_ADDRESSES;
    let mut truncated = false;
    let mut take = |addresses: Addresses| -> Option<Vec<EndpointAddress>> {
        let mut kept: Vec<EndpointAddress> = addresses.into_values().collect();
        if kept.len() > budget {
            truncated = true;
            kept.truncate(budget);
        }
        budget -= kept.len();
        (!kept.is_empty()).then_some(kept)
    };
    let groups: Vec<_> = groups
        .into_values()
        .map(|(ports, ready, not_ready)| (ports, take(ready), not_ready))
        .collect();
    let subsets = groups
        .into_iter()
        .map(|(ports, addresses, not_ready)| EndpointSubset {
            addresses,
            not_ready_addresses: take(not_ready),
            ports: (!ports.is_empty()).then_some(ports),
        })
        .filter(|subset| subset.addresses.is_some() || subset.not_ready_addresses.is_some())
        .collect();
    (subsets, truncated)
}

/// The address of `pod` for `service` (upstream's `podToEndpointAddressForService`).
fn address(pod: &Pod, service: &Service, family_v6: bool) -> Option<EndpointAddress> {
    let endpoint =
        desired::pod_endpoint(pod, None, service, if family_v6 { "IPv6" } else { "IPv4" });
    let ip = endpoint.addresses.into_iter().next()?;
    Some(EndpointAddress {
        ip,
        hostname: endpoint.hostname,
        node_name: endpoint.node_name,
        target_ref: endpoint.target_ref,
    })
}

/// The labels of the Endpoints object: the Service's, and the headless marker.
pub fn labels(service: &Service) -> BTreeMap<String, String> {
    let mut labels = service.metadata.labels.clone().unwrap_or_default();
    if desired::has_cluster_ip(service) {
        labels.remove(desired::HEADLESS_LABEL);
    } else {
        labels.insert(desired::HEADLESS_LABEL.to_owned(), String::new());
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ip: &str, ready: bool, port: i32) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "n", "uid": name},
            "spec": {"nodeName": "node-a", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": port}]}]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .expect("a pod")
    }

    #[test]
    fn addresses_are_grouped_by_ports_and_readiness() {
        let service: Service = serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "n"},
            "spec": {"clusterIP": "10.96.0.9", "ports": [{"name": "web", "port": 80, "targetPort": "http", "protocol": "TCP"}]}}))
        .expect("a service");
        let (a, b, c) = (
            pod("a", "10.0.0.2", true, 8080),
            pod("b", "10.0.0.1", false, 8080),
            pod("c", "10.0.0.3", true, 9090),
        );
        let (subsets, truncated) = subsets(&service, &[&a, &b, &c]);
        assert!(!truncated);
        assert_eq!(subsets.len(), 2);
        let first = &subsets[0];
        assert_eq!(first.ports.as_ref().expect("ports")[0].port, 8080);
        assert_eq!(first.addresses.as_ref().expect("ready")[0].ip, "10.0.0.2");
        assert_eq!(
            first.not_ready_addresses.as_ref().expect("not ready")[0].ip,
            "10.0.0.1"
        );
        assert_eq!(subsets[1].ports.as_ref().expect("ports")[0].port, 9090);
    }

    #[test]
    fn terminating_pods_only_with_publish_not_ready_addresses() {
        let mut service: Service =
            serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "n"},
            "spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 80, "targetPort": 8080}]}}))
            .expect("a service");
        let mut leaving = pod("a", "10.0.0.2", false, 8080);
        leaving.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
        );
        assert!(subsets(&service, &[&leaving]).0.is_empty());
        service
            .spec
            .as_mut()
            .expect("spec")
            .publish_not_ready_addresses = Some(true);
        let (published, _) = subsets(&service, &[&leaving]);
        assert_eq!(
            published[0].addresses.as_ref().expect("ready")[0].ip,
            "10.0.0.2"
        );
    }

    #[test]
    fn more_than_the_capacity_is_truncated() {
        let service: Service =
            serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "n"},
            "spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 80, "targetPort": 8080}]}}))
            .expect("a service");
        let pods: Vec<Pod> = (0..MAX_ADDRESSES + 5)
            .map(|i| {
                pod(
                    &format!("p{i}"),
                    &format!("10.0.{}.{}", i / 250, i % 250),
                    i % 2 == 0,
                    8080,
                )
            })
            .collect();
        let refs: Vec<&Pod> = pods.iter().collect();
        let (subsets, truncated) = subsets(&service, &refs);
        assert!(truncated);
        let ready = subsets[0].addresses.as_ref().map_or(0, Vec::len);
        let not_ready = subsets[0].not_ready_addresses.as_ref().map_or(0, Vec::len);
        assert_eq!(
            (ready, ready + not_ready),
            (MAX_ADDRESSES.div_ceil(2) + 3, MAX_ADDRESSES)
        );
    }
}
