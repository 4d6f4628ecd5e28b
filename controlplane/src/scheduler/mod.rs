//! The scheduler (upstream's kube-scheduler with its default profile): a kube-rs client of
//! the API, never of etcd. It watches nodes, pods, namespaces (and the selectors of Services,
//! ReplicaSets and StatefulSets, for default spreading) into [`cache::Cache`],
//! queues the pods that name no node (and ask for `default-scheduler` or `keel-scheduler`)
//! in [`queue::Queue`], picks a node for each with upstream's filters and scores
//! ([`algorithm`]) and binds it (`pods/{name}/binding`); a pod that fits nowhere gets a
//! `FailedScheduling` event and its `PodScheduled` condition set to `Unschedulable`.
//!
//! * [`resources`]: requests and allocatable; [`selectors`]: label, node and taint matching.
//! * [`filters`], [`spread`], [`interpod`]: the filter plugins; [`scores`]: the node scores.
//! * [`pass`]: the per-attempt passes over every node's pods, split across cores.
//! * [`runner`]: the watches, the scheduling loop, bindings, events and status.

pub mod algorithm;
pub mod cache;
pub mod events;
pub mod filters;
pub mod interpod;
pub mod pass;
pub mod queue;
pub mod resources;
pub mod runner;
pub mod scores;
pub mod selectors;
pub mod spread;

pub use runner::run;

/// The highest score a plugin gives a node (upstream's `MaxNodeScore`).
pub const MAX_NODE_SCORE: i64 = 100;

/// The scheduler names this scheduler answers to (`spec.schedulerName`).
pub const SCHEDULER_NAMES: [&str; 2] = ["default-scheduler", "keel-scheduler"];

/// The component name events carry (`reportingController`, `source.component`).
pub const COMPONENT: &str = "default-scheduler";
