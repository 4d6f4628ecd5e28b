//! Which slices to create, update and delete so a Service's slices hold the desired endpoints
//! with the least churn: upstream's `reconcileByPortMapping` and `finalize`. Endpoints that are
//! already in a slice stay there (updated in place if they changed); new endpoints first fill
//! slices that are being updated anyway, then one unchanged slice they fit in, then new slices.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::desired;

/// What identifies an endpoint across updates (upstream's `hashEndpoint`): its addresses,
/// hostname and target. Everything else about it (conditions, zone, node) may change in place.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EndpointKey {
    addresses: Vec<String>,
    hostname: Option<String>,
    target: Option<(Option<String>, Option<String>)>,
}

impl EndpointKey {
    /// The key of `endpoint`.
    pub fn of(endpoint: &Endpoint) -> Self {
        let mut addresses = endpoint.addresses.clone();
        addresses.sort();
        Self {
            addresses,
            hostname: endpoint.hostname.clone(),
            target: endpoint
                .target_ref
                .as_ref()
                .map(|target| (target.namespace.clone(), target.name.clone())),
        }
    }
}

/// The endpoints wanted for one set of ports.
pub type EndpointSet = BTreeMap<EndpointKey, Endpoint>;

/// A set of slice ports as a comparable key: name, protocol, port, appProtocol.
pub type PortsKey = Vec<(String, String, i32, String)>;

/// The endpoints wanted, grouped by their ports.
pub type Desired = BTreeMap<PortsKey, (Vec<EndpointPort>, EndpointSet)>;

/// The changes for one Service and address type.
#[derive(Debug, Default)]
pub struct Plan {
    pub create: Vec<EndpointSlice>,
    pub update: Vec<EndpointSlice>,
    pub delete: Vec<EndpointSlice>,
}

/// The slice ports as a comparable key (ports are already sorted by `endpoint_ports`).
pub fn ports_key(ports: &[EndpointPort]) -> PortsKey {
    let mut key: Vec<_> = ports
        .iter()
        .map(|port| {
            (
                port.name.clone().unwrap_or_default(),
                port.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                port.port.unwrap_or_default(),
                port.app_protocol.clone().unwrap_or_default(),
            )
        })
        .collect();
    key.sort();
    key
}

/// The inputs of a plan for one address type.
#[derive(Debug)]
pub struct Input<'a> {
    pub service: &'a Service,
    pub address_type: &'a str,
    pub manager: &'a str,
    pub max_per_slice: usize,
}

impl Input<'_> {
    /// Plans the changes: `desired` maps each port set to its ports and endpoints;
    /// `existing` are the slices of this address type the controller manages.
    pub fn plan(&self, desired: Desired, existing: Vec<EndpointSlice>) -> Plan {
        let mut by_ports: BTreeMap<_, Vec<EndpointSlice>> = BTreeMap::new();
        let existing_count = existing.len();
        let mut plan = Plan::default();
        for slice in existing {
            if !owned_by(&slice, self.service) {
                // Left by an older Service of the same name: the garbage collector would
                // remove it anyway.
                plan.delete.push(slice);
                continue;
            }
            let key = ports_key(slice.ports.as_deref().unwrap_or_default());
            by_ports.entry(key).or_default().push(slice);
        }
        for (key, (ports, endpoints)) in desired {
            let slices = by_ports.remove(&key).unwrap_or_default();
            self.plan_ports(&mut plan, slices, endpoints, ports);
        }
        // Port sets nobody wants any more.
        plan.delete.extend(by_ports.into_values().flatten());
        if existing_count == plan.delete.len() && plan.create.is_empty() {
            // No endpoints at all: one empty placeholder slice, kept if it is already there.
            let placeholder = self.new_slice(Vec::new());
            match plan
                .delete
                .iter()
                .position(|slice| self.is_placeholder(slice))
            {
                Some(index) if plan.delete.len() == 1 => {
                    plan.delete.remove(index);
                }
                _ => plan.create.push(placeholder),
            }
        }
        self.reuse_deleted(&mut plan);
        plan
    }

    fn plan_ports(
        &self,
        plan: &mut Plan,
        slices: Vec<EndpointSlice>,
        mut wanted: EndpointSet,
        ports: Vec<EndpointPort>,
    ) {
        let labels = desired::slice_labels(self.service, self.manager);
        let mut to_update: Vec<EndpointSlice> = Vec::new();
        let mut unchanged: Vec<EndpointSlice> = Vec::new();
        // 1. Keep the endpoints still wanted where they are, refreshed; drop the others.
        for slice in slices {
            let mut kept = Vec::new();
            let mut changed = false;
            for endpoint in &slice.endpoints {
                if let Some(fresh) = wanted.remove(&EndpointKey::of(endpoint)) {
                    changed |= &fresh != endpoint;
                    kept.push(fresh);
                }
            }
            let labels_changed = slice.metadata.labels.as_ref() != Some(&labels);
            if changed || kept.len() != slice.endpoints.len() {
                if kept.is_empty() {
                    plan.delete.push(slice);
                } else {
                    let mut updated = slice;
                    updated.endpoints = kept;
                    updated.metadata.labels = Some(labels.clone());
                    to_update.push(updated);
                }
            } else if labels_changed {
                let mut updated = slice;
                updated.metadata.labels = Some(labels.clone());
                to_update.push(updated);
            } else {
                unchanged.push(slice);
            }
        }
        // 2. Fill the slices being updated anyway, fullest first.
        to_update.sort_by_key(|slice| std::cmp::Reverse(slice.endpoints.len()));
        for slice in &mut to_update {
            fill(slice, &mut wanted, self.max_per_slice);
        }
        // 3. The rest: into one unchanged slice they fit in best, else new slices.
        while !wanted.is_empty() {
            let fits = (wanted.len() < self.max_per_slice)
                .then(|| best_fit(&unchanged, wanted.len(), self.max_per_slice))
                .flatten();
            match fits {
                Some(index) => {
                    let mut slice = unchanged.remove(index);
                    fill(&mut slice, &mut wanted, self.max_per_slice);
                    to_update.push(slice);
                }
                None => {
                    let mut slice = self.new_slice(ports.clone());
                    fill(&mut slice, &mut wanted, self.max_per_slice);
                    plan.create.push(slice);
                }
            }
        }
        plan.update.extend(to_update);
    }

    /// A create and a delete together become an update of the slice that would go, if the
    /// Service owns it (never a slice left over from an older Service of the same name).
    fn reuse_deleted(&self, plan: &mut Plan) {
        let mut index = 0;
        while index < plan.delete.len() {
            let Some(mut created) = plan.create.pop() else {
                break;
            };
            let old = &plan.delete[index];
            if old.address_type == created.address_type && owned_by(old, self.service) {
                let old = plan.delete.remove(index);
                created.metadata = ObjectMeta {
                    labels: created.metadata.labels,
                    ..old.metadata
                };
                plan.update.push(created);
            } else {
                plan.create.push(created);
                index += 1;
            }
        }
    }

    fn new_slice(&self, ports: Vec<EndpointPort>) -> EndpointSlice {
        let name = self.service.metadata.name.clone().unwrap_or_default();
        EndpointSlice {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}-")),
                namespace: self.service.metadata.namespace.clone(),
                labels: Some(desired::slice_labels(self.service, self.manager)),
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".to_owned(),
                    kind: "Service".to_owned(),
                    name,
                    uid: self.service.metadata.uid.clone().unwrap_or_default(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..ObjectMeta::default()
            },
            address_type: self.address_type.to_owned(),
            endpoints: Vec::new(),
            ports: Some(ports),
        }
    }

    fn is_placeholder(&self, slice: &EndpointSlice) -> bool {
        slice.endpoints.is_empty()
            && slice.ports.as_deref().unwrap_or_default().is_empty()
            && slice.address_type == self.address_type
            && owned_by(slice, self.service)
            && slice.metadata.labels.as_ref()
                == Some(&desired::slice_labels(self.service, self.manager))
    }
}

fn fill(slice: &mut EndpointSlice, wanted: &mut EndpointSet, max: usize) {
    while slice.endpoints.len() < max {
        let Some((_, endpoint)) = wanted.pop_first() else {
            break;
        };
        slice.endpoints.push(endpoint);
    }
}

/// The unchanged slice that `count` endpoints fill most completely (upstream's `getSliceToFill`).
fn best_fit(slices: &[EndpointSlice], count: usize, max: usize) -> Option<usize> {
    let mut best: Option<(usize, usize)> = None;
    for (index, slice) in slices.iter().enumerate() {
        let Some(room) = max.checked_sub(count + slice.endpoints.len()) else {
            continue;
        };
        if best.is_none_or(|(_, least)| room < least) {
            best = Some((index, room));
        }
    }
    best.map(|(index, _)| index)
}

/// The slice has an owner reference to this very Service (same uid).
pub fn owned_by(slice: &EndpointSlice, service: &Service) -> bool {
    slice
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|owner| owner.kind == "Service" && Some(&owner.uid) == service.metadata.uid.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::EndpointConditions;
    use serde_json::json;
    use std::collections::BTreeSet;

    /// The names of `slices`.
    fn names(slices: &[EndpointSlice]) -> BTreeSet<String> {
        slices
            .iter()
            .filter_map(|slice| slice.metadata.name.clone())
            .collect()
    }

    fn service() -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": "web", "namespace": "n", "uid": "svc-uid"},
            "spec": {"clusterIP": "10.96.0.10"}}),
        )
        .expect("service")
    }

    fn endpoint(index: usize, ready: bool) -> Endpoint {
        Endpoint {
            addresses: vec![format!("10.0.{}.{}", index / 250, index % 250 + 1)],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(ready),
                terminating: Some(false),
            }),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: Some("n".into()),
                name: Some(format!("pod-{index}")),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ports() -> Vec<EndpointPort> {
        vec![EndpointPort {
            name: Some(String::new()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]
    }

    fn desired(endpoints: impl IntoIterator<Item = Endpoint>) -> Desired {
        let set: EndpointSet = endpoints
            .into_iter()
            .map(|endpoint| (EndpointKey::of(&endpoint), endpoint))
            .collect();
        BTreeMap::from([(ports_key(&ports()), (ports(), set))])
    }

    fn input(service: &Service) -> Input<'_> {
        Input {
            service,
            address_type: "IPv4",
            manager: "endpointslice-controller.k8s.io",
            max_per_slice: 100,
        }
    }

    /// Applies a plan as the API server would, naming created slices.
    fn apply(plan: Plan, existing: Vec<EndpointSlice>, next: &mut usize) -> Vec<EndpointSlice> {
        let touched: BTreeSet<String> = names(&plan.update)
            .into_iter()
            .chain(names(&plan.delete))
            .collect();
        let mut slices: Vec<EndpointSlice> = existing
            .into_iter()
            .filter(|slice| !touched.contains(slice.metadata.name.as_deref().unwrap_or("")))
            .collect();
        slices.extend(plan.update);
        for mut slice in plan.create {
            *next += 1;
            slice.metadata.name = Some(format!("web-{next}"));
            slices.push(slice);
        }
        slices
    }

    #[test]
    fn splits_into_slices_of_at_most_the_maximum_and_updates_in_place() {
        let svc = service();
        let mut next = 0;
        let plan = input(&svc).plan(desired((0..250).map(|i| endpoint(i, false))), Vec::new());
        assert_eq!((plan.create.len(), plan.update.len()), (3, 0));
        let slices = apply(plan, Vec::new(), &mut next);
        assert!(slices.iter().all(|slice| slice.endpoints.len() <= 100));
        // One pod becomes ready: exactly one slice changes.
        let plan = input(&svc).plan(
            desired((0..250).map(|i| endpoint(i, i == 7))),
            slices.clone(),
        );
        assert_eq!(
            (plan.create.len(), plan.update.len(), plan.delete.len()),
            (0, 1, 0)
        );
        let slices = apply(plan, slices, &mut next);
        // Nothing changes: nothing to do.
        let plan = input(&svc).plan(
            desired((0..250).map(|i| endpoint(i, i == 7))),
            slices.clone(),
        );
        assert_eq!(
            (plan.create.len(), plan.update.len(), plan.delete.len()),
            (0, 0, 0)
        );
        // Ten new pods fit into the slice with room (the one with 50).
        let plan = input(&svc).plan(desired((0..260).map(|i| endpoint(i, false))), slices);
        assert_eq!(plan.create.len(), 0);
        assert!(plan.update.iter().all(|slice| slice.endpoints.len() <= 100));
    }

    #[test]
    fn slices_of_an_older_service_of_the_same_name_are_replaced() {
        let svc = service();
        let mut next = 0;
        let plan = input(&svc).plan(desired([endpoint(1, true)]), Vec::new());
        let mut slices = apply(plan, Vec::new(), &mut next);
        slices[0].metadata.owner_references.as_mut().expect("owner")[0].uid = "old".into();
        let plan = input(&svc).plan(desired([endpoint(1, true)]), slices);
        assert_eq!((plan.create.len(), plan.delete.len()), (1, 1));
        assert!(owned_by(&plan.create[0], &svc));
    }

    #[test]
    fn a_new_target_port_rewrites_the_slices_in_place() {
        let svc = service();
        let mut next = 0;
        let plan = input(&svc).plan(desired((0..3).map(|i| endpoint(i, true))), Vec::new());
        let slices = apply(plan, Vec::new(), &mut next);
        let mut moved = desired((0..3).map(|i| endpoint(i, true)));
        let (_, (mut ports, set)) = moved.pop_first().expect("one port set");
        ports[0].port = Some(9090);
        let moved = BTreeMap::from([(ports_key(&ports), (ports, set))]);
        let plan = input(&svc).plan(moved, slices);
        assert_eq!(
            (plan.create.len(), plan.update.len(), plan.delete.len()),
            (0, 1, 0)
        );
        assert_eq!(plan.update[0].metadata.name.as_deref(), Some("web-1"));
        assert_eq!(
            plan.update[0].ports.as_ref().expect("ports")[0].port,
            Some(9090)
        );
    }

    #[test]
    fn no_endpoints_leaves_one_placeholder() {
        let svc = service();
        let mut next = 0;
        let plan = input(&svc).plan(BTreeMap::new(), Vec::new());
        assert_eq!(plan.create.len(), 1);
        assert!(plan.create[0].endpoints.is_empty());
        let slices = apply(plan, Vec::new(), &mut next);
        let plan = input(&svc).plan(BTreeMap::new(), slices.clone());
        assert_eq!(
            (plan.create.len(), plan.update.len(), plan.delete.len()),
            (0, 0, 0)
        );
        // Endpoints arrive: the placeholder (other ports) is reused, not deleted and created.
        let plan = input(&svc).plan(desired([endpoint(1, true)]), slices);
        assert_eq!(
            (plan.create.len(), plan.update.len(), plan.delete.len()),
            (0, 1, 0)
        );
        assert_eq!(plan.update[0].metadata.name.as_deref(), Some("web-1"));
        assert_eq!(plan.update[0].ports, Some(ports()));
    }
}
