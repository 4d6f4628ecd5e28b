//! The dependency graph (upstream's `GraphBuilder.uidToNode`): one node per object the
//! monitors observed, plus virtual nodes for owners only known from someone's
//! `ownerReferences`. Applying a change returns the work it causes; the graph itself never
//! talks to the API.

use std::collections::{BTreeSet, HashMap};

/// An object's uid.
pub type Uid = String;

/// The finalizer that makes the garbage collector orphan an object's dependents.
pub const ORPHAN: &str = "orphan";
/// The finalizer that makes the garbage collector delete an object's dependents first.
pub const FOREGROUND: &str = "foregroundDeletion";

/// Where an object is: enough to GET and DELETE it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub api_version: String,
    pub kind: String,
    /// `None` for cluster-scoped objects (and virtual owners of cluster-scoped dependents).
    pub namespace: Option<String>,
    pub name: String,
    pub uid: Uid,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            api_version,
            kind,
            name,
            uid,
            ..
        } = self;
        match &self.namespace {
            Some(namespace) => write!(f, "{api_version} {kind} {namespace}/{name} ({uid})"),
            None => write!(f, "{api_version} {kind} {name} ({uid})"),
        }
    }
}

/// One owner reference, as the graph needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: Uid,
    pub block_owner_deletion: bool,
}

/// An object as a monitor saw it.
#[derive(Debug, Clone)]
pub struct Observed {
    pub identity: Identity,
    pub owners: Vec<Owner>,
    pub being_deleted: bool,
    pub finalizers: Vec<String>,
}

/// What the graph learns.
#[derive(Debug, Clone)]
pub enum Change {
    /// A monitor saw the object added or changed.
    Upsert(Observed),
    /// A monitor saw the object deleted.
    Delete(Identity),
    /// A worker found by a live GET that the object does not exist (upstream's virtual
    /// delete event).
    Absent(Identity),
}

/// A node of the graph.
#[derive(Debug, Clone)]
pub struct Node {
    pub identity: Identity,
    /// False for a virtual node: an owner only known from a dependent's reference.
    pub observed: bool,
    pub being_deleted: bool,
    /// Being deleted with the `foregroundDeletion` finalizer: waits for its dependents.
    pub deleting_dependents: bool,
    /// Being deleted with the `orphan` finalizer.
    pub orphaning: bool,
    pub owners: Vec<Owner>,
    pub dependents: BTreeSet<Uid>,
}

/// Objects to look at after a change.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Work {
    /// For the attempt-to-delete queue.
    pub delete: BTreeSet<Uid>,
    /// For the attempt-to-orphan queue.
    pub orphan: BTreeSet<Uid>,
}

/// The graph of owners and dependents.
#[derive(Debug, Default)]
pub struct Graph {
    nodes: HashMap<Uid, Node>,
}

impl Graph {
    /// The node of `uid`.
    pub fn node(&self, uid: &str) -> Option<&Node> {
        self.nodes.get(uid)
    }

    /// How many nodes the graph holds.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the graph holds no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The dependents of `uid`.
    pub fn dependents(&self, uid: &str) -> Vec<Node> {
        self.nodes
            .get(uid)
            .into_iter()
            .flat_map(|node| &node.dependents)
            .filter_map(|dependent| self.nodes.get(dependent))
            .cloned()
            .collect()
    }

    /// The dependents of `uid` whose reference to it blocks its deletion.
    pub fn blocking_dependents(&self, uid: &str) -> Vec<Node> {
        self.dependents(uid)
            .into_iter()
            .filter(|dependent| {
                dependent
                    .owners
                    .iter()
                    .any(|owner| owner.uid == uid && owner.block_owner_deletion)
            })
            .collect()
    }

    /// Applies a change and returns what to look at because of it.
    pub fn apply(&mut self, change: Change) -> Work {
        let mut work = Work::default();
        match change {
            Change::Upsert(observed) => self.upsert(observed, &mut work),
            Change::Delete(identity) => self.remove(&identity.uid, &mut work),
            Change::Absent(identity) => match self.nodes.get(&identity.uid) {
                Some(node) if !node.observed => self.remove(&identity.uid, &mut work),
                // A monitor is the authority on observed objects; their dependents check
                // their owners again.
                Some(node) => work.delete.extend(node.dependents.iter().cloned()),
                None => {}
            },
        }
        work
    }

    fn upsert(&mut self, observed: Observed, work: &mut Work) {
        let uid = observed.identity.uid.clone();
        let being_deleted = observed.being_deleted;
        let has = |finalizer: &str| observed.finalizers.iter().any(|held| held == finalizer);
        let deleting_dependents = being_deleted && has(FOREGROUND);
        let orphaning = being_deleted && has(ORPHAN);
        let (old_owners, was_deleting, was_orphaning) = match self.nodes.get_mut(&uid) {
            Some(node) => {
                if !node.observed && node.identity != observed.identity {
                    // The virtual node's coordinates were a dependent's guess: those that
                    // guessed differently check their references again.
                    work.delete.extend(node.dependents.iter().cloned());
                }
                let before = (
                    std::mem::take(&mut node.owners),
                    node.deleting_dependents,
                    node.orphaning,
                );
                node.identity = observed.identity;
                node.observed = true;
                node.being_deleted = being_deleted;
                node.deleting_dependents = deleting_dependents;
                node.orphaning = orphaning;
                node.owners = observed.owners.clone();
                before
            }
            None => {
                self.nodes.insert(
                    uid.clone(),
                    Node {
                        identity: observed.identity,
                        observed: true,
                        being_deleted,
                        deleting_dependents,
                        orphaning,
                        owners: observed.owners.clone(),
                        dependents: BTreeSet::new(),
                    },
                );
                (Vec::new(), false, false)
            }
        };
        self.link_owners(&uid, &old_owners, &observed.owners, work);
        if orphaning && !was_orphaning {
            work.orphan.insert(uid.clone());
        }
        if deleting_dependents && !was_deleting {
            if let Some(node) = self.nodes.get(&uid) {
                work.delete.extend(node.dependents.iter().cloned());
            }
            work.delete.insert(uid);
        }
    }

    /// Keeps the owners' dependent sets in step with a node's references.
    fn link_owners(&mut self, uid: &str, before: &[Owner], after: &[Owner], work: &mut Work) {
        let namespace = self
            .nodes
            .get(uid)
            .and_then(|node| node.identity.namespace.clone());
        for owner in before {
            let still = after.iter().find(|now| now.uid == owner.uid);
            if still == Some(owner) {
                continue;
            }
            if let Some(node) = self.nodes.get_mut(&owner.uid) {
                if still.is_none() {
                    node.dependents.remove(uid);
                }
                // An owner waiting for its dependents may be done now.
                if node.deleting_dependents {
                    work.delete.insert(owner.uid.clone());
                }
            }
        }
        for owner in after {
            if before.iter().any(|old| old.uid == owner.uid) {
                continue;
            }
            let node = self.nodes.entry(owner.uid.clone()).or_insert_with(|| {
                // An owner not seen (yet): a virtual node, checked by a live GET.
                work.delete.insert(owner.uid.clone());
                Node {
                    identity: Identity {
                        api_version: owner.api_version.clone(),
                        kind: owner.kind.clone(),
                        namespace: namespace.clone(),
                        name: owner.name.clone(),
                        uid: owner.uid.clone(),
                    },
                    observed: false,
                    being_deleted: false,
                    deleting_dependents: false,
                    orphaning: false,
                    owners: Vec::new(),
                    dependents: BTreeSet::new(),
                }
            });
            node.dependents.insert(uid.to_owned());
            if node.being_deleted {
                work.delete.insert(uid.to_owned());
            }
        }
    }

    fn remove(&mut self, uid: &str, work: &mut Work) {
        let Some(node) = self.nodes.remove(uid) else {
            return;
        };
        // Dependents of a vanished owner check whether they still have a live one.
        work.delete.extend(node.dependents.iter().cloned());
        for owner in &node.owners {
            if let Some(owner_node) = self.nodes.get_mut(&owner.uid) {
                owner_node.dependents.remove(uid);
                if owner_node.deleting_dependents {
                    work.delete.insert(owner.uid.clone());
                }
                // A virtual owner nobody refers to any more is forgotten.
                if !owner_node.observed && owner_node.dependents.is_empty() {
                    self.nodes.remove(&owner.uid);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(kind: &str, name: &str, uid: &str) -> Identity {
        Identity {
            api_version: "v1".into(),
            kind: kind.into(),
            namespace: Some("ns".into()),
            name: name.into(),
            uid: uid.into(),
        }
    }

    fn owner(uid: &str, block: bool) -> Owner {
        Owner {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: format!("owner-{uid}"),
            uid: uid.into(),
            block_owner_deletion: block,
        }
    }

    fn observed(uid: &str, owners: Vec<Owner>, finalizers: &[&str]) -> Change {
        Change::Upsert(Observed {
            identity: identity("Pod", uid, uid),
            owners,
            being_deleted: !finalizers.is_empty(),
            finalizers: finalizers.iter().map(|f| f.to_string()).collect(),
        })
    }

    fn uids(items: &[&str]) -> BTreeSet<Uid> {
        items.iter().map(|item| item.to_string()).collect()
    }

    #[test]
    fn unseen_owner_is_virtual_and_checked() {
        let mut graph = Graph::default();
        let work = graph.apply(observed("pod", vec![owner("rs", true)], &[]));
        assert_eq!(work.delete, uids(&["rs"]));
        let rs = graph.node("rs").expect("virtual owner");
        assert!(!rs.observed);
        assert_eq!(rs.identity.namespace.as_deref(), Some("ns"));
        // The GET found nothing: the virtual node goes and its dependents are looked at.
        let work = graph.apply(Change::Absent(rs.identity.clone()));
        assert_eq!(work.delete, uids(&["pod"]));
        assert!(graph.node("rs").is_none());
    }

    #[test]
    fn deleted_owner_sends_its_dependents_to_be_checked() {
        let mut graph = Graph::default();
        graph.apply(observed("rs", vec![], &[]));
        graph.apply(observed("a", vec![owner("rs", true)], &[]));
        graph.apply(observed("b", vec![owner("rs", false)], &[]));
        let work = graph.apply(Change::Delete(identity("Pod", "rs", "rs")));
        assert_eq!(work.delete, uids(&["a", "b"]));
    }

    #[test]
    fn foreground_waits_for_blocking_dependents() {
        let mut graph = Graph::default();
        graph.apply(observed("rs", vec![], &[]));
        graph.apply(observed("a", vec![owner("rs", true)], &[]));
        graph.apply(observed("b", vec![owner("rs", false)], &[]));
        let work = graph.apply(observed("rs", vec![], &[FOREGROUND]));
        assert_eq!(work.delete, uids(&["a", "b", "rs"]));
        assert_eq!(graph.blocking_dependents("rs").len(), 1);
        // A blocking dependent going sends the owner back to the queue.
        let work = graph.apply(Change::Delete(identity("Pod", "a", "a")));
        assert_eq!(work.delete, uids(&["rs"]));
        assert!(graph.blocking_dependents("rs").is_empty());
    }

    #[test]
    fn orphan_finalizer_queues_the_owner_once() {
        let mut graph = Graph::default();
        graph.apply(observed("rs", vec![], &[]));
        graph.apply(observed("a", vec![owner("rs", true)], &[]));
        let work = graph.apply(observed("rs", vec![], &[ORPHAN]));
        assert_eq!(work.orphan, uids(&["rs"]));
        let work = graph.apply(observed("rs", vec![], &[ORPHAN]));
        assert!(work.orphan.is_empty());
        // The dependent drops its reference: it leaves the owner's dependents.
        graph.apply(observed("a", vec![], &[]));
        assert!(graph.dependents("rs").is_empty());
    }
}
