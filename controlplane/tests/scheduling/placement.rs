//! Where pods may go: nodeSelector, taints without tolerations, required anti-affinity
//! (one per node), host ports and topology spread, with upstream's reasons when nothing fits.

use std::collections::BTreeMap;

use crate::{
    TestApiServer, add_node, failed_scheduling_message, placements, pod_manifest, wait_bound,
    wait_for,
};

const ANTI_AFFINITY: &str = "  affinity:
    podAntiAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
      - labelSelector: {matchLabels: {app: solo}}
        topologyKey: kubernetes.io/hostname
";

const TOLERATE_GPU: &str =
    "  tolerations: [{key: dedicated, operator: Equal, value: gpu, effect: NoSchedule}]
";

#[tokio::test]
async fn selectors_taints_anti_affinity_and_host_ports() -> anyhow::Result<()> {
    let server = TestApiServer::start().await?;
    add_node(&server, "ssd", "4", &[("disk", "ssd")], "[]");
    add_node(
        &server,
        "gpu",
        "4",
        &[],
        "[{key: dedicated, value: gpu, effect: NoSchedule}]",
    );
    add_node(&server, "plain", "4", &[], "[]");

    // nodeSelector.
    server.ok_with_input(
        &["apply", "-f", "-"],
        &pod_manifest(
            "fast",
            "{app: fast}",
            "100m",
            "  nodeSelector: {disk: ssd}\n",
        ),
    );
    assert_eq!(wait_bound(&server, &["fast"])["fast"], "ssd");

    // Pods without a toleration never land on the tainted node.
    let plain: Vec<String> = (0..6)
        .map(|index| pod_manifest(&format!("plain-{index}"), "{app: plain}", "100m", ""))
        .collect();
    server.ok_with_input(&["apply", "-f", "-"], &plain.join("---\n"));
    let names: Vec<String> = (0..6).map(|index| format!("plain-{index}")).collect();
    let placed = wait_bound(
        &server,
        &names.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(
        names.iter().all(|name| placed[name] != "gpu"),
        "a pod without a toleration went to the tainted node: {placed:?}"
    );

    // Required anti-affinity: one per node; the taint leaves two nodes, so the third waits.
    for name in ["solo-1", "solo-2", "solo-3"] {
        server.ok_with_input(
            &["apply", "-f", "-"],
            &pod_manifest(name, "{app: solo}", "100m", ANTI_AFFINITY),
        );
    }
    let solo_nodes: BTreeMap<String, String> = wait_for(&server, "two solo pods bound", || {
        let bound: BTreeMap<String, String> = placements(&server)
            .into_iter()
            .filter(|(name, node)| name.starts_with("solo-") && !node.is_empty())
            .collect();
        (bound.len() == 2).then_some(bound)
    });
    let mut nodes: Vec<&String> = solo_nodes.values().collect();
    nodes.sort();
    assert_eq!(nodes, vec!["plain", "ssd"]);
    let waiting = ["solo-1", "solo-2", "solo-3"]
        .into_iter()
        .find(|name| !solo_nodes.contains_key(*name))
        .expect("one solo pod waits");
    let message = failed_scheduling_message(&server, waiting);
    assert_eq!(
        message,
        "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, \
         2 node(s) didn't match pod anti-affinity rules. preemption: 0/3 nodes are available: \
         1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod."
    );
    // A fourth that tolerates the taint takes the gpu node.
    server.ok_with_input(
        &["apply", "-f", "-"],
        &pod_manifest(
            "solo-gpu",
            "{app: solo-gpu}",
            "100m",
            &format!(
                "{TOLERATE_GPU}  affinity:\n    podAntiAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n      - labelSelector: {{matchLabels: {{app: solo}}}}\n        topologyKey: kubernetes.io/hostname\n"
            ),
        ),
    );
    assert_eq!(wait_bound(&server, &["solo-gpu"])["solo-gpu"], "gpu");

    // Host ports: the second pod asking for 8080 on the ssd node cannot go there.
    let host_port = "  nodeSelector: {disk: ssd}\n";
    let with_port = |name: &str, selector: &str| {
        format!(
            "{}    ports: [{{containerPort: 80, hostPort: 8080}}]\n{selector}",
            pod_manifest(name, "{app: ports}", "100m", "")
        )
    };
    server.ok_with_input(&["apply", "-f", "-"], &with_port("port-1", host_port));
    assert_eq!(wait_bound(&server, &["port-1"])["port-1"], "ssd");
    server.ok_with_input(&["apply", "-f", "-"], &with_port("port-2", host_port));
    assert_eq!(
        failed_scheduling_message(&server, "port-2"),
        "0/3 nodes are available: 1 node(s) didn't have free ports for the requested pod ports, \
         1 node(s) didn't match Pod's node affinity/selector, \
         1 node(s) had untolerated taint {dedicated: gpu}. preemption: 0/3 nodes are available: \
         1 No preemption victims found for incoming pod, 2 Preemption is not helpful for scheduling."
    );
    // Without the selector it goes to the one other node it tolerates.
    server.ok_with_input(&["apply", "-f", "-"], &with_port("port-3", ""));
    assert_eq!(wait_bound(&server, &["port-3"])["port-3"], "plain");
    Ok(())
}

#[tokio::test]
async fn topology_spread_keeps_zones_within_max_skew() -> anyhow::Result<()> {
    let server = TestApiServer::start().await?;
    add_node(&server, "a1", "4", &[("zone", "a")], "[]");
    add_node(&server, "a2", "4", &[("zone", "a")], "[]");
    add_node(&server, "b1", "4", &[("zone", "b")], "[]");
    add_node(&server, "c1", "4", &[("zone", "c")], "[]");
    let spread = "  topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: zone
    whenUnsatisfiable: DoNotSchedule
    labelSelector: {matchLabels: {app: spread}}
";
    let pods: Vec<String> = (0..9)
        .map(|index| pod_manifest(&format!("spread-{index}"), "{app: spread}", "100m", spread))
        .collect();
    server.ok_with_input(&["apply", "-f", "-"], &pods.join("---\n"));
    let names: Vec<String> = (0..9).map(|index| format!("spread-{index}")).collect();
    let placed = wait_bound(
        &server,
        &names.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let mut per_zone: BTreeMap<char, usize> = BTreeMap::new();
    for name in &names {
        let zone = placed[name].chars().next().expect("node name");
        *per_zone.entry(zone).or_insert(0) += 1;
    }
    // Zone a has two nodes, but the constraint counts zones: 3 / 3 / 3.
    assert_eq!(per_zone.into_values().collect::<Vec<_>>(), vec![3, 3, 3]);
    Ok(())
}
