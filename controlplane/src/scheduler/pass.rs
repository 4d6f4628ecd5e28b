//! Per-attempt passes over every node and its pods (the counts of topology spreading and
//! inter-pod affinity, upstream's PreFilter / PreScore state): split across the machine's
//! cores when they visit enough pods to pay for the threads, and counted in maps keyed by
//! label keys and values borrowed from the cache, hashed with FNV-1a (short strings; no
//! untrusted keys an attacker could aim collisions at beyond the cluster's own labels).
//! The counts are sums, so neither the split nor the hasher changes a decision.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::cache::{Cache, NodeInfo};

/// A pass visiting fewer pods than this runs on the calling thread.
const PARALLEL_PODS: usize = 2000;

/// FNV-1a, 64 bit.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A map from borrowed label strings.
pub type LabelMap<'a, V> = HashMap<&'a str, V, BuildHasherDefault<Fnv>>;

/// Runs `work` over the cache's nodes, in one chunk per core when the nodes hold at least
/// [`PARALLEL_PODS`] of the pods `visits` says the pass looks at; one result per chunk,
/// in node order.
pub fn over_nodes<'a, T: Send>(
    cache: &'a Cache,
    visits: impl Fn(&NodeInfo) -> usize,
    work: impl Fn(&[&'a NodeInfo]) -> T + Sync,
) -> Vec<T> {
    let nodes: Vec<&'a NodeInfo> = cache.nodes().collect();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let pods: usize = nodes.iter().map(|node| visits(node)).sum();
    if threads < 2 || pods < PARALLEL_PODS {
        return vec![work(&nodes)];
    }
    let chunk = nodes.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let mut parts = nodes.chunks(chunk);
        let first = parts.next().unwrap_or_default();
        let work = &work;
        let handles: Vec<_> = parts.map(|part| scope.spawn(move || work(part))).collect();
        let mut results = vec![work(first)];
        for handle in handles {
            match handle.join() {
                Ok(result) => results.push(result),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        results
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::hash::BuildHasher as _;

    #[test]
    fn fnv_matches_the_reference_vectors() {
        let hash = |text: &str| {
            let mut hasher = Fnv::default();
            hasher.write(text.as_bytes());
            hasher.finish()
        };
        assert_eq!(hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash("foobar"), 0x8594_4171_f739_67e8);
        let build = BuildHasherDefault::<Fnv>::default();
        assert_eq!(build.hash_one("zone"), build.hash_one("zone"));
    }

    #[test]
    fn chunks_cover_every_node_once_in_order() {
        let mut cache = Cache::default();
        for index in 0..700 {
            cache.set_node(
                serde_json::from_value(json!({"metadata": {"name": format!("n{index:03}")}}))
                    .expect("node"),
            );
        }
        let names = |parts: Vec<Vec<String>>| parts.concat();
        let all: Vec<String> = cache.nodes().map(|node| node.name.clone()).collect();
        let sequential = over_nodes(
            &cache,
            |_| 0,
            |nodes| nodes.iter().map(|node| node.name.clone()).collect(),
        );
        assert_eq!(sequential.len(), 1);
        assert_eq!(names(sequential), all);
        let split = over_nodes(
            &cache,
            |_| 10,
            |nodes| nodes.iter().map(|node| node.name.clone()).collect(),
        );
        assert_eq!(names(split), all);
    }
}
