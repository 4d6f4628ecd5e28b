//! The node IPAM controller, as upstream's range allocator (`pkg/controller/nodeipam`, IPv4):
//! every Node without `spec.podCIDR` gets the next free subnet of `--node-cidr-mask-size` bits
//! from `--cluster-cidr` (round-robin, as upstream's `CidrSet`). Subnets in use are recovered
//! from the Nodes themselves whenever the watch lists them, and freed when a Node is deleted.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::json;

use crate::server::allocator::Cidr;

/// How often Nodes whose CIDR could not be written are tried again.
const RETRY_PERIOD: Duration = Duration::from_secs(5);
/// Upstream refuses cluster CIDRs with more than 2^16 node subnets.
const MAX_SUBNET_BITS: u8 = 16;

/// A bad `--cluster-cidr` / `--node-cidr-mask-size` pair.
#[derive(Debug, thiserror::Error)]
#[error(
    "--node-cidr-mask-size {mask} does not fit --cluster-cidr {cluster}: it must be between {} and {} (at most 2^{MAX_SUBNET_BITS} node subnets)",
    cluster.prefix,
    (cluster.prefix + MAX_SUBNET_BITS).min(30)
)]
pub struct MaskError {
    pub cluster: Cidr,
    pub mask: u8,
}

/// The node subnets of the cluster CIDR and which are taken.
#[derive(Debug, Clone)]
pub struct CidrSet {
    cluster: Cidr,
    mask: u8,
    used: BTreeSet<u32>,
    /// Where the round-robin search starts.
    next: u32,
}

impl CidrSet {
    pub fn new(cluster: Cidr, mask: u8) -> Result<CidrSet, MaskError> {
        if mask < cluster.prefix || mask > 30 || mask - cluster.prefix > MAX_SUBNET_BITS {
            return Err(MaskError { cluster, mask });
        }
        Ok(CidrSet {
            cluster,
            mask,
            used: BTreeSet::new(),
            next: 0,
        })
    }

    fn subnets(&self) -> u32 {
        1 << (self.mask - self.cluster.prefix)
    }

    fn subnet(&self, index: u32) -> String {
        let base = u32::from(self.cluster.base) + (index << (32 - self.mask));
        format!("{}/{}", Ipv4Addr::from(base), self.mask)
    }

    /// The subnet indexes `cidr` covers, when it lies in the cluster CIDR.
    fn indexes(&self, cidr: &str) -> Option<std::ops::Range<u32>> {
        let cidr: Cidr = cidr.parse().ok()?;
        let offset = u32::from(cidr.base).checked_sub(u32::from(self.cluster.base))?;
        if cidr.prefix < self.cluster.prefix || offset >> (32 - self.cluster.prefix) != 0 {
            return None;
        }
        let first = offset >> (32 - self.mask);
        let count = if cidr.prefix >= self.mask {
            1
        } else {
            1 << (self.mask - cidr.prefix)
        };
        Some(first..first + count)
    }

    /// Takes the next free subnet, or `None` when all are taken.
    pub fn allocate(&mut self) -> Option<String> {
        let count = self.subnets();
        let index = (0..count)
            .map(|i| (self.next + i) % count)
            .find(|index| !self.used.contains(index))?;
        self.used.insert(index);
        self.next = (index + 1) % count;
        Some(self.subnet(index))
    }

    /// Marks `cidr` taken (a Node has it); false when it is not in the cluster CIDR.
    pub fn occupy(&mut self, cidr: &str) -> bool {
        let Some(range) = self.indexes(cidr) else {
            return false;
        };
        self.used.extend(range);
        true
    }

    pub fn release(&mut self, cidr: &str) {
        if let Some(range) = self.indexes(cidr) {
            for index in range {
                self.used.remove(&index);
            }
        }
    }
}

fn pod_cidr(node: &Node) -> Option<&str> {
    node.spec.as_ref()?.pod_cidr.as_deref()
}

struct Allocator {
    nodes: Api<Node>,
    set: CidrSet,
    /// What each Node has (or is being given), by name.
    assigned: HashMap<String, String>,
    /// Nodes still waiting for a CIDR.
    waiting: BTreeSet<String>,
}

impl Allocator {
    /// Takes in a Node: records its CIDR, or gives it one.
    async fn observe(&mut self, node: &Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        match pod_cidr(node) {
            Some(cidr) => {
                if !self.set.occupy(cidr) {
                    log::warn!(
                        "node {name}'s podCIDR {cidr} is not in the cluster CIDR {}",
                        self.set.cluster
                    );
                }
                if let Some(mine) = self.assigned.insert(name.clone(), cidr.to_owned())
                    && mine != cidr
                {
                    self.set.release(&mine);
                }
                self.waiting.remove(&name);
            }
            None if self.assigned.contains_key(&name) => {}
            None => self.give(&name).await,
        }
    }

    async fn give(&mut self, name: &str) {
        let Some(cidr) = self.set.allocate() else {
            if self.waiting.insert(name.to_owned()) {
                // One warning while the set stays full, not one per node.
                let level = if self.waiting.len() == 1 {
                    log::Level::Warn
                } else {
                    log::Level::Debug
                };
                log::log!(
                    level,
                    "node {name}: no pod CIDR left in the cluster CIDR {} (CIDRNotAvailable)",
                    self.set.cluster
                );
            }
            return;
        };
        let patch = json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
        match self
            .nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                log::info!("node {name}: pod CIDR {cidr}");
                self.assigned.insert(name.to_owned(), cidr);
                self.waiting.remove(name);
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {
                self.set.release(&cidr);
                self.waiting.remove(name);
            }
            Err(error) => {
                log::warn!(
                    "node {name}: cannot set pod CIDR {cidr}: {}",
                    super::chain(&error)
                );
                self.set.release(&cidr);
                self.waiting.insert(name.to_owned());
            }
        }
    }

    fn forget(&mut self, node: &Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        self.waiting.remove(&name);
        if let Some(cidr) = self.assigned.remove(&name) {
            self.set.release(&cidr);
        }
    }

    /// Starts again from a full list of the Nodes.
    async fn relist(&mut self, nodes: Vec<Node>) {
        self.set.used.clear();
        self.assigned.clear();
        self.waiting.clear();
        for node in &nodes {
            if let Some(cidr) = pod_cidr(node) {
                self.set.occupy(cidr);
                let name = node.metadata.name.clone().unwrap_or_default();
                self.assigned.insert(name, cidr.to_owned());
            }
        }
        for node in nodes.iter().filter(|n| pod_cidr(n).is_none()) {
            self.observe(node).await;
        }
    }
}

/// Runs the controller until the watch stream ends (it does not, short of a panic).
pub async fn run(client: kube::Client, set: CidrSet) {
    let nodes: Api<Node> = Api::all(client);
    let mut allocator = Allocator {
        nodes: nodes.clone(),
        set,
        assigned: HashMap::new(),
        waiting: BTreeSet::new(),
    };
    let stream = watcher(nodes, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut listed = Vec::new();
    let mut retry = tokio::time::interval(RETRY_PERIOD);
    loop {
        let event = tokio::select! {
            event = stream.next() => event,
            _ = retry.tick() => {
                for name in allocator.waiting.clone() {
                    allocator.give(&name).await;
                }
                continue;
            }
        };
        match event {
            None => return,
            Some(Ok(watcher::Event::Init)) => listed.clear(),
            Some(Ok(watcher::Event::InitApply(node))) => listed.push(node),
            Some(Ok(watcher::Event::InitDone)) => {
                allocator.relist(std::mem::take(&mut listed)).await;
            }
            Some(Ok(watcher::Event::Apply(node))) => allocator.observe(&node).await,
            Some(Ok(watcher::Event::Delete(node))) => allocator.forget(&node),
            Some(Err(error)) => log::warn!("node IPAM: {}", super::chain(&error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(cluster: &str, mask: u8) -> CidrSet {
        CidrSet::new(cluster.parse().unwrap(), mask).unwrap()
    }

    #[test]
    fn subnets_are_handed_out_in_turn_skipping_taken_ones() {
        let mut cidrs = set("10.244.0.0/16", 24);
        assert!(cidrs.occupy("10.244.1.0/24"));
        assert_eq!(cidrs.allocate().as_deref(), Some("10.244.0.0/24"));
        assert_eq!(cidrs.allocate().as_deref(), Some("10.244.2.0/24"));
        cidrs.release("10.244.0.0/24");
        // Round-robin: a freed subnet is not reused at once.
        assert_eq!(cidrs.allocate().as_deref(), Some("10.244.3.0/24"));
        assert!(!cidrs.occupy("10.245.0.0/24"));
        assert!(!cidrs.occupy("10.0.0.0/8"));
    }

    #[test]
    fn a_full_set_has_nothing_left_until_a_release() {
        let mut cidrs = set("10.0.0.0/30", 30);
        assert_eq!(cidrs.allocate().as_deref(), Some("10.0.0.0/30"));
        assert_eq!(cidrs.allocate(), None);
        cidrs.release("10.0.0.0/30");
        assert_eq!(cidrs.allocate().as_deref(), Some("10.0.0.0/30"));

        let mut cidrs = set("10.1.0.0/22", 24);
        assert!(cidrs.occupy("10.1.0.0/23"));
        assert_eq!(cidrs.allocate().as_deref(), Some("10.1.2.0/24"));
        assert_eq!(cidrs.allocate().as_deref(), Some("10.1.3.0/24"));
        assert_eq!(cidrs.allocate(), None);
    }

    #[test]
    fn masks_must_fit_the_cluster_cidr() {
        let cluster: Cidr = "10.244.0.0/16".parse().unwrap();
        assert!(CidrSet::new(cluster, 15).is_err());
        assert!(CidrSet::new(cluster, 31).is_err());
        let wide: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(CidrSet::new(wide, 25).is_err());
        assert!(CidrSet::new(wide, 24).is_ok());
    }
}
