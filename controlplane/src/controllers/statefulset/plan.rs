//! One pass of upstream's `updateStatefulSet` as a pure function: from the pods that exist
//! (by ordinal) to the pods to create and delete now. `OrderedReady` stops at the first pod
//! that is missing, unhealthy or terminating; `Parallel` acts on every ordinal at once.
//! Scale-down deletes from the highest ordinal; a rolling update replaces pods from the
//! highest ordinal down to the partition, one at a time, once the set is healthy.

/// What the plan needs to know about one existing pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub ordinal: i32,
    /// Its `controller-revision-hash` label (a revision name).
    pub revision: String,
    pub running_and_ready: bool,
    /// Phase Succeeded or Failed: the pod is replaced.
    pub finished: bool,
    pub terminating: bool,
}

/// The set's spec, as the plan reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetView {
    pub replicas: i32,
    pub start_ordinal: i32,
    /// `podManagementPolicy: OrderedReady`.
    pub ordered: bool,
    /// `updateStrategy.type: RollingUpdate`, with its partition.
    pub rolling_partition: Option<i32>,
    pub current_revision: String,
    pub update_revision: String,
}

/// One change to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create the pod with this ordinal from this revision.
    Create { ordinal: i32, revision: String },
    /// Delete the pod with this ordinal.
    Delete { ordinal: i32 },
}

impl SetView {
    /// The revision a newly created pod gets (upstream's `newVersionedStatefulSetPod`):
    /// below the partition the current one, else the update revision.
    pub fn revision_for(&self, ordinal: i32) -> String {
        match self.rolling_partition {
            Some(partition) if ordinal < self.start_ordinal + partition => {
                self.current_revision.clone()
            }
            _ => self.update_revision.clone(),
        }
    }

    fn in_range(&self, ordinal: i32) -> bool {
        ordinal >= self.start_ordinal && ordinal < self.start_ordinal + self.replicas
    }
}

/// The steps of one pass, in order.
pub fn plan(set: &SetView, pods: &[PodView]) -> Vec<Step> {
    let mut steps = Vec::new();
    let find = |ordinal: i32| pods.iter().find(|pod| pod.ordinal == ordinal);
    let mut healthy = true;
    for ordinal in set.start_ordinal..set.start_ordinal + set.replicas.max(0) {
        match find(ordinal) {
            None => {
                steps.push(Step::Create {
                    ordinal,
                    revision: set.revision_for(ordinal),
                });
                healthy = false;
            }
            Some(pod) if pod.finished && !pod.terminating => {
                steps.push(Step::Delete { ordinal });
                healthy = false;
            }
            Some(pod) if pod.terminating || !pod.running_and_ready => healthy = false,
            Some(_) => continue,
        }
        if set.ordered {
            return steps;
        }
    }

    let mut condemned: Vec<&PodView> = pods
        .iter()
        .filter(|pod| !set.in_range(pod.ordinal))
        .collect();
    condemned.sort_by_key(|pod| std::cmp::Reverse(pod.ordinal));
    for pod in condemned {
        if pod.terminating {
            if set.ordered {
                return steps;
            }
            continue;
        }
        // OrderedReady removes one pod at a time, and only while the rest are healthy
        // (an unhealthy condemned pod is the first to go).
        if set.ordered && !healthy && pod.running_and_ready {
            return steps;
        }
        steps.push(Step::Delete {
            ordinal: pod.ordinal,
        });
        if set.ordered {
            return steps;
        }
    }

    let Some(partition) = set.rolling_partition else {
        return steps;
    };
    if !steps.is_empty() {
        return steps;
    }
    let floor = set.start_ordinal + partition.max(0);
    for ordinal in (floor..set.start_ordinal + set.replicas).rev() {
        let Some(pod) = find(ordinal) else {
            return steps;
        };
        if pod.revision != set.update_revision && !pod.terminating {
            steps.push(Step::Delete { ordinal });
            return steps;
        }
        if pod.terminating || !pod.running_and_ready {
            return steps;
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(replicas: i32, ordered: bool) -> SetView {
        SetView {
            replicas,
            start_ordinal: 0,
            ordered,
            rolling_partition: Some(0),
            current_revision: "web-a".into(),
            update_revision: "web-a".into(),
        }
    }

    fn pod(ordinal: i32, ready: bool) -> PodView {
        PodView {
            ordinal,
            revision: "web-a".into(),
            running_and_ready: ready,
            finished: false,
            terminating: false,
        }
    }

    fn create(ordinal: i32) -> Step {
        Step::Create {
            ordinal,
            revision: "web-a".into(),
        }
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time_after_the_previous_is_ready() {
        let set = set(3, true);
        assert_eq!(plan(&set, &[]), vec![create(0)]);
        assert_eq!(plan(&set, &[pod(0, false)]), vec![]);
        assert_eq!(plan(&set, &[pod(0, true)]), vec![create(1)]);
        assert_eq!(plan(&set, &[pod(0, true), pod(1, true)]), vec![create(2)]);
    }

    #[test]
    fn parallel_creates_every_missing_ordinal() {
        let set = set(3, false);
        assert_eq!(plan(&set, &[pod(1, false)]), vec![create(0), create(2)]);
    }

    #[test]
    fn scale_down_goes_from_the_highest_ordinal_one_at_a_time() {
        let set = set(1, true);
        let pods = [pod(0, true), pod(1, true), pod(2, true)];
        assert_eq!(plan(&set, &pods), vec![Step::Delete { ordinal: 2 }]);
        let mut terminating = pod(2, true);
        terminating.terminating = true;
        assert_eq!(
            plan(&set, &[pod(0, true), pod(1, true), terminating]),
            vec![]
        );
        let parallel = SetView {
            ordered: false,
            ..set
        };
        assert_eq!(
            plan(&parallel, &pods),
            vec![Step::Delete { ordinal: 2 }, Step::Delete { ordinal: 1 }]
        );
    }

    #[test]
    fn rolling_update_replaces_from_the_top_down_to_the_partition() {
        let mut set = set(3, true);
        set.update_revision = "web-b".into();
        let pods = [pod(0, true), pod(1, true), pod(2, true)];
        assert_eq!(plan(&set, &pods), vec![Step::Delete { ordinal: 2 }]);
        // Ordinal 2 came back on the new revision but is not ready yet: wait.
        let mut updated = pod(2, false);
        updated.revision = "web-b".into();
        assert_eq!(
            plan(&set, &[pod(0, true), pod(1, true), updated.clone()]),
            vec![]
        );
        updated.running_and_ready = true;
        assert_eq!(
            plan(&set, &[pod(0, true), pod(1, true), updated.clone()]),
            vec![Step::Delete { ordinal: 1 }]
        );
        set.rolling_partition = Some(2);
        assert_eq!(plan(&set, &[pod(0, true), pod(1, true), updated]), vec![]);
        assert_eq!(set.revision_for(1), "web-a");
        assert_eq!(set.revision_for(2), "web-b");
    }

    #[test]
    fn finished_pods_are_replaced() {
        let mut failed = pod(0, false);
        failed.finished = true;
        assert_eq!(
            plan(&set(1, true), &[failed]),
            vec![Step::Delete { ordinal: 0 }]
        );
    }

    #[test]
    fn on_delete_never_replaces_running_pods() {
        let mut set = set(1, true);
        set.rolling_partition = None;
        set.update_revision = "web-b".into();
        assert_eq!(plan(&set, &[pod(0, true)]), vec![]);
        assert_eq!(
            plan(&set, &[]),
            vec![Step::Create {
                ordinal: 0,
                revision: "web-b".into()
            }]
        );
    }
}
