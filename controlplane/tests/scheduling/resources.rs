//! Requests against allocatable: a burst spreads without overcommitting any node; a pod
//! that fits nowhere is reported as upstream reports it and is placed once a node joins.

use std::collections::BTreeMap;

use crate::{
    TestApiServer, add_node, events_for, failed_scheduling_message, get_json, placements,
    pod_manifest, scheduled_condition, wait_bound, wait_for,
};

#[tokio::test]
async fn a_burst_spreads_over_nodes_within_allocatable_and_waits_for_room() -> anyhow::Result<()> {
    let server = TestApiServer::start().await?;
    for name in ["n1", "n2", "n3"] {
        add_node(&server, name, "2", &[], "[]");
    }
    // Ten pods of 500m at once (one kubectl call): 6 CPUs hold twelve.
    let burst: Vec<String> = (0..10)
        .map(|index| pod_manifest(&format!("burst-{index}"), "{app: burst}", "500m", ""))
        .collect();
    server.ok_with_input(&["apply", "-f", "-"], &burst.join("---\n"));
    let names: Vec<String> = (0..10).map(|index| format!("burst-{index}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let placed = wait_bound(&server, &name_refs);
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for name in &names {
        *per_node.entry(placed[name].as_str()).or_insert(0) += 1;
    }
    // 4 x 500m fills a node; LeastAllocated spreads the rest: 4/3/3 in some order.
    let mut counts: Vec<usize> = per_node.values().copied().collect();
    counts.sort_unstable();
    assert_eq!(counts, vec![3, 3, 4], "placement {per_node:?}");

    // Every bound pod has its Scheduled event and condition.
    let event = wait_for(&server, "the Scheduled event of burst-0", || {
        events_for(&server, "burst-0", "Scheduled")
            .into_iter()
            .next()
    });
    assert_eq!(
        event["message"],
        format!(
            "Successfully assigned default/burst-0 to {}",
            placed["burst-0"]
        )
    );
    assert_eq!(event["source"]["component"], "default-scheduler");
    assert_eq!(scheduled_condition(&server, "burst-0")["status"], "True");

    // 1500m fits nowhere now (free: 0, 500m, 500m).
    server.ok_with_input(
        &["apply", "-f", "-"],
        &pod_manifest("big", "{app: big}", "1500m", ""),
    );
    let message = failed_scheduling_message(&server, "big");
    assert_eq!(
        message,
        "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: \
         3 No preemption victims found for incoming pod."
    );
    let condition = wait_for(&server, "big's PodScheduled condition", || {
        let condition = scheduled_condition(&server, "big");
        (condition["status"] == "False").then_some(condition)
    });
    assert_eq!(condition["reason"], "Unschedulable");
    assert_eq!(condition["message"], message.as_str());
    assert_eq!(placements(&server)["big"], "");

    // A node with room joins: the pod is placed there.
    add_node(&server, "n4", "2", &[], "[]");
    let placed = wait_bound(&server, &["big"]);
    assert_eq!(placed["big"], "n4");

    // In `all` both client components hold their Leases.
    for lease in ["kube-scheduler", "kube-controller-manager"] {
        let holder = wait_for(&server, &format!("lease {lease}"), || {
            let lease = get_json(&server, &["get", "lease", lease, "-n", "kube-system"]);
            lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
        });
        assert!(
            holder.contains('_'),
            "{lease} holder {holder:?} is <hostname>_<uuid>"
        );
    }
    Ok(())
}
