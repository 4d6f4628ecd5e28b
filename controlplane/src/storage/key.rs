//! etcd key layout: `/registry/<group>/<resource>/<namespace>/<name>`.
//!
//! The core group (`""`) has no group segment and cluster-scoped resources have no namespace
//! segment, so a pod lives at `/registry/pods/default/web` and a CRD-backed cluster object at
//! `/registry/example.com/widgets/w1`. [`Resource`] names the collection, [`KeyPrefix`] is what
//! lists and watches range over (always ending in `/`, so `/registry/pods/a/` never matches
//! `/registry/pods/ab/...`), and [`ResourceKey`] is one object.

use std::fmt;

use super::StorageError;

/// Root of every key this control plane writes, as kube-apiserver's default `--etcd-prefix`.
pub const REGISTRY_ROOT: &str = "/registry";

/// A group and resource (`""` + `pods`, `apps` + `deployments`): one collection in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Resource {
    group: String,
    resource: String,
}

impl Resource {
    /// A resource of the named API group; `""` is the core group.
    pub fn new(group: &str, resource: &str) -> Result<Self, StorageError> {
        if !group.is_empty() {
            validate_segment(group)?;
        }
        validate_segment(resource)?;
        Ok(Self {
            group: group.to_owned(),
            resource: resource.to_owned(),
        })
    }

    /// A resource of the core (`""`) group, such as `pods`.
    pub fn core(resource: &str) -> Result<Self, StorageError> {
        Self::new("", resource)
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// Every object of this resource, in all namespaces.
    pub fn prefix(&self) -> KeyPrefix {
        let mut prefix = String::from(REGISTRY_ROOT);
        prefix.push('/');
        if !self.group.is_empty() {
            prefix.push_str(&self.group);
            prefix.push('/');
        }
        prefix.push_str(&self.resource);
        prefix.push('/');
        KeyPrefix(prefix)
    }

    /// Every object of this (namespaced) resource in one namespace.
    pub fn namespace_prefix(&self, namespace: &str) -> Result<KeyPrefix, StorageError> {
        validate_segment(namespace)?;
        let mut prefix = self.prefix().0;
        prefix.push_str(namespace);
        prefix.push('/');
        Ok(KeyPrefix(prefix))
    }

    /// The key of a namespaced object.
    pub fn namespaced_key(&self, namespace: &str, name: &str) -> Result<ResourceKey, StorageError> {
        validate_segment(name)?;
        let mut key = self.namespace_prefix(namespace)?.0;
        key.push_str(name);
        Ok(ResourceKey(key))
    }

    /// The key of a cluster-scoped object.
    pub fn cluster_key(&self, name: &str) -> Result<ResourceKey, StorageError> {
        validate_segment(name)?;
        let mut key = self.prefix().0;
        key.push_str(name);
        Ok(ResourceKey(key))
    }
}

/// A key range for lists and watches; always ends in `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `key` (a full etcd key) lies in this range.
    pub fn contains(&self, key: &str) -> bool {
        key.starts_with(&self.0)
    }

    /// Whether every key of `other` lies in this range too.
    pub fn covers(&self, other: &KeyPrefix) -> bool {
        other.0.starts_with(&self.0)
    }

    /// The exclusive end of the range, for etcd's `range_end`: the prefix with its last byte
    /// incremented (`/` + 1 = `0`).
    pub(crate) fn range_end(&self) -> Vec<u8> {
        let mut end = self.0.as_bytes().to_vec();
        // The prefix always ends in '/', which is never 0xff, so no carry is needed.
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        end
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The etcd key of one object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey(String);

impl ResourceKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Rejects segments that would change the shape of the key (upstream's `prepareKey` guards
/// against `..` and `/` the same way).
fn validate_segment(segment: &str) -> Result<(), StorageError> {
    let reason = if segment.is_empty() {
        "must not be empty"
    } else if segment == "." || segment == ".." {
        "must not be '.' or '..'"
    } else if segment.contains('/') {
        "must not contain '/'"
    } else if segment.contains('\0') {
        "must not contain NUL"
    } else {
        return Ok(());
    };
    Err(StorageError::InvalidKey {
        segment: segment.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_namespaced_key_has_no_group_segment() {
        let pods = Resource::core("pods").unwrap();
        assert_eq!(pods.prefix().as_str(), "/registry/pods/");
        assert_eq!(
            pods.namespaced_key("default", "web").unwrap().as_str(),
            "/registry/pods/default/web"
        );
        assert_eq!(
            pods.namespace_prefix("default").unwrap().as_str(),
            "/registry/pods/default/"
        );
    }

    #[test]
    fn grouped_and_cluster_scoped_keys() {
        let deployments = Resource::new("apps", "deployments").unwrap();
        assert_eq!(
            deployments.namespaced_key("ns1", "api").unwrap().as_str(),
            "/registry/apps/deployments/ns1/api"
        );
        let nodes = Resource::core("nodes").unwrap();
        assert_eq!(
            nodes.cluster_key("n1").unwrap().as_str(),
            "/registry/nodes/n1"
        );
    }

    #[test]
    fn bad_segments_are_rejected() {
        let pods = Resource::core("pods").unwrap();
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(
                matches!(
                    pods.namespaced_key("default", bad),
                    Err(StorageError::InvalidKey { .. })
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn prefix_range_does_not_leak_into_sibling_namespaces() {
        let pods = Resource::core("pods").unwrap();
        let ns_a = pods.namespace_prefix("a").unwrap();
        assert!(ns_a.contains("/registry/pods/a/x"));
        assert!(!ns_a.contains("/registry/pods/ab/x"));
        assert_eq!(ns_a.range_end(), b"/registry/pods/a0".to_vec());
        assert!(pods.prefix().covers(&ns_a));
        assert!(!ns_a.covers(&pods.prefix()));
    }
}
