//! Nodes and their controllers against the real control plane (etcd + `keel-controlplane all`)
//! with simulated nodes (`keel-agent simulate`, the real agent binary): node IPAM gives them
//! pod CIDRs, their pods run, and when a simulator is killed the node lifecycle controller marks
//! its nodes Unknown and taints them, and taint-based eviction deletes their pods.
//! See `support/simulator.rs` for where `keel-agent` is taken from.

#[path = "support/etcd.rs"]
#[allow(
    dead_code,
    reason = "shared with the apiserver tests, which use all of it"
)]
mod etcd;
#[path = "support/apiserver.rs"]
#[allow(
    dead_code,
    reason = "shared with the apiserver tests, which use all of it"
)]
mod server;

#[path = "support/simulator.rs"]
mod simulator;

use server::TestApiServer;
use simulator::{Simulator, get, wait_for, wait_for_ready_nodes};

/// Waits for pod `name` to be in `phase`.
fn wait_for_phase(server: &TestApiServer, sims: &[&Simulator], name: &str, phase: &str) {
    wait_for(&format!("pod {name} {phase}"), server, sims, || {
        get(
            server,
            &["get", "pod", name, "-o", "jsonpath={.status.phase}"],
        )
        .filter(|p| p == phase)
    });
}

/// The status of pod `name`'s Ready condition.
fn pod_ready(server: &TestApiServer, name: &str) -> Option<String> {
    let ready = "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}";
    get(server, &["get", "pod", name, "-o", ready])
}

fn pod(name: &str, node: &str, extra_spec: &str, annotations: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  annotations: {{{annotations}}}\n\
         spec:\n  nodeName: {node}\n{extra_spec}  containers:\n  - name: app\n    image: registry.local/app:1.0\n"
    )
}

fn parse_cidr(text: &str) -> (u32, u32) {
    let (base, prefix) = text.split_once('/').expect("a CIDR");
    let base: std::net::Ipv4Addr = base.parse().expect("an address");
    let prefix: u32 = prefix.parse().expect("a prefix");
    (u32::from(base), u32::MAX << (32 - prefix))
}

fn in_cidr(address: &str, cidr: &str) -> bool {
    let (base, mask) = parse_cidr(cidr);
    let address: std::net::Ipv4Addr = address.parse().expect("an address");
    u32::from(address) & mask == base
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_simulated_nodes_get_leases_and_pod_cidrs_and_run_their_pods() {
    let server = TestApiServer::start_with(&["--cluster-cidr=10.100.0.0/16"])
        .await
        .expect("control plane");
    let sim = Simulator::start(&server, "sim-", 50, &["--zones=z1,z2", "--labels=pool=sim"]);

    let nodes = wait_for("50 Ready nodes with pod CIDRs", &server, &[&sim], || {
        let out = get(
            &server,
            &[
                "get",
                "nodes",
                "-l",
                "keel.dev/simulated=true",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.spec.podCIDR} {.status.conditions[?(@.type==\"Ready\")].status} {.metadata.labels.topology\\.kubernetes\\.io/zone} {.metadata.labels.pool} {.status.capacity.pods}{\"\\n\"}{end}",
            ],
        )?;
        let rows: Vec<Vec<String>> = out
            .lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .collect();
        (rows.len() == 50 && rows.iter().all(|r| r.len() == 6 && r[2] == "True")).then_some(rows)
    });
    let mut cidrs: Vec<&str> = nodes.iter().map(|r| r[1].as_str()).collect();
    assert!(
        cidrs
            .iter()
            .all(|c| c.ends_with("/24") && in_cidr(c.split('/').next().unwrap(), "10.100.0.0/16")),
        "{cidrs:?}"
    );
    cidrs.sort_unstable();
    cidrs.dedup();
    assert_eq!(cidrs.len(), 50, "every node has its own pod CIDR");
    let zones = |zone: &str| nodes.iter().filter(|r| r[3] == zone).count();
    assert_eq!((zones("z1"), zones("z2")), (25, 25));
    assert!(nodes.iter().all(|r| r[4] == "sim" && r[5] == "110"));

    let leases = wait_for("50 node leases", &server, &[&sim], || {
        let out = get(
            &server,
            &[
                "get",
                "leases",
                "-n",
                "kube-node-lease",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}={.spec.holderIdentity}={.metadata.ownerReferences[0].kind}{\"\\n\"}{end}",
            ],
        )?;
        let lines: Vec<String> = out.lines().map(str::to_owned).collect();
        (lines.len() == 50).then_some(lines)
    });
    for lease in &leases {
        let parts: Vec<&str> = lease.split('=').collect();
        assert_eq!(parts, [parts[0], parts[0], "Node"], "{lease}");
    }
    // Renewed: a renewTime that moves on.
    let renewed = || {
        get(
            &server,
            &[
                "get",
                "lease",
                "-n",
                "kube-node-lease",
                "sim-7",
                "-o",
                "jsonpath={.spec.renewTime}",
            ],
        )
    };
    let first = renewed().expect("lease sim-7");
    wait_for("sim-7's lease renewed", &server, &[&sim], || {
        renewed().filter(|t| *t != first)
    });

    server.ok_with_input(&["apply", "-f", "-"], &pod("web", "sim-3", "", ""));
    let status = wait_for("pod web Running and Ready", &server, &[&sim], || {
        let out = get(
            &server,
            &[
                "get",
                "pod",
                "web",
                "-o",
                "jsonpath={.status.phase} {.status.conditions[?(@.type==\"Ready\")].status} {.status.conditions[?(@.type==\"PodScheduled\")].status} {.status.conditions[?(@.type==\"Initialized\")].status} {.status.conditions[?(@.type==\"ContainersReady\")].status} {.status.podIP} {.status.hostIP} {.status.containerStatuses[0].image} {.status.containerStatuses[0].state.running.startedAt} {.status.startTime}",
            ],
        )?;
        out.starts_with("Running True").then_some(out)
    });
    let fields: Vec<&str> = status.split_whitespace().collect();
    assert_eq!(fields.len(), 10, "{status}");
    assert_eq!(&fields[..5], ["Running", "True", "True", "True", "True"]);
    let node = get(
        &server,
        &[
            "get",
            "node",
            "sim-3",
            "-o",
            "jsonpath={.spec.podCIDR} {.status.addresses[?(@.type==\"InternalIP\")].address}",
        ],
    )
    .expect("node sim-3");
    let (cidr, host_ip) = node.split_once(' ').expect("CIDR and address");
    assert!(in_cidr(fields[5], cidr), "pod IP {} in {cidr}", fields[5]);
    assert_eq!(fields[6], host_ip);
    assert_eq!(fields[7], "registry.local/app:1.0");

    // A pod that ends: Succeeded with its container terminated with exit code 0.
    server.ok_with_input(
        &["apply", "-f", "-"],
        &pod(
            "job",
            "sim-4",
            "  restartPolicy: Never\n",
            "keel.dev/simulate-exit-code: \"0\"",
        ),
    );
    let ended = wait_for("pod job Succeeded", &server, &[&sim], || {
        let out = get(
            &server,
            &[
                "get",
                "pod",
                "job",
                "-o",
                "jsonpath={.status.phase} {.status.containerStatuses[0].state.terminated.exitCode} {.status.containerStatuses[0].state.terminated.reason}",
            ],
        )?;
        out.starts_with("Succeeded").then_some(out)
    });
    assert_eq!(ended, "Succeeded 0 Completed");

    // Deleted: the simulated node removes it for good (grace 0).
    server.ok(&["delete", "pod", "web", "--wait=false"]);
    wait_for("pod web gone", &server, &[&sim], || {
        let output = server.kubectl(&["get", "pod", "web"]);
        (!output.status.success()).then_some(())
    });

    // Node IPAM frees the CIDR of a deleted node and a new node gets one.
    server.ok(&["delete", "node", "sim-49"]);
    server.ok_with_input(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Node\nmetadata: {name: extra}\n",
    );
    let extra = wait_for("node extra's pod CIDR", &server, &[&sim], || {
        get(
            &server,
            &["get", "node", "extra", "-o", "jsonpath={.spec.podCIDR}"],
        )
        .filter(|c| !c.is_empty())
    });
    assert!(
        in_cidr(extra.split('/').next().unwrap(), "10.100.0.0/16"),
        "{extra}"
    );
    let others: Vec<String> = nodes
        .iter()
        .filter(|r| r[0] != "sim-49")
        .map(|r| r[1].clone())
        .collect();
    assert!(!others.contains(&extra), "{extra} is another node's");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_stops_renewing_is_marked_unknown_tainted_and_its_pods_evicted() {
    let server = TestApiServer::start_with(&[
        // More than the 10 s between two Lease renewals.
        "--node-monitor-grace-period=15s",
        "--node-monitor-period=1s",
    ])
    .await
    .expect("control plane");
    let alive = Simulator::start(&server, "alive-", 3, &[]);
    let mut doomed = Simulator::start(&server, "doomed-", 2, &[]);
    wait_for_ready_nodes(&server, &[&alive, &doomed], 5);

    let tolerate_five = "  tolerations:\n  - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 5}\n";
    server.ok_with_input(
        &["apply", "-f", "-"],
        &pod("brief", "doomed-0", tolerate_five, ""),
    );
    server.ok_with_input(&["apply", "-f", "-"], &pod("patient", "doomed-0", "", ""));
    for name in ["brief", "patient"] {
        wait_for_phase(&server, &[&alive, &doomed], name, "Running");
    }
    // The API server gave `patient` the default tolerations (DefaultTolerationSeconds).
    let tolerations = get(
        &server,
        &[
            "get",
            "pod",
            "patient",
            "-o",
            "jsonpath={range .spec.tolerations[*]}{.key}:{.effect}:{.tolerationSeconds} {end}",
        ],
    )
    .expect("pod patient");
    assert_eq!(
        tolerations,
        "node.kubernetes.io/not-ready:NoExecute:300 node.kubernetes.io/unreachable:NoExecute:300"
    );

    doomed.kill();
    let marked = wait_for(
        "doomed-0 Unknown and tainted unreachable",
        &server,
        &[&alive, &doomed],
        || {
            let out = get(
                &server,
                &[
                    "get",
                    "node",
                    "doomed-0",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}|{.status.conditions[?(@.type==\"Ready\")].reason}|{.status.conditions[?(@.type==\"Ready\")].message}|{range .status.conditions[*]}{.type}={.status},{end}|{range .spec.taints[*]}{.key}:{.effect},{end}",
                ],
            )?;
            out.contains("node.kubernetes.io/unreachable:NoExecute")
                .then_some(out)
        },
    );
    let parts: Vec<&str> = marked.split('|').collect();
    assert_eq!(
        &parts[..3],
        [
            "Unknown",
            "NodeStatusUnknown",
            "Kubelet stopped posting node status."
        ]
    );
    for condition in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
        assert!(
            parts[3].contains(&format!("{condition}=Unknown,")),
            "{marked}"
        );
    }
    assert!(
        parts[4].contains("node.kubernetes.io/unreachable:NoSchedule,"),
        "{marked}"
    );

    // The pods of a node that is no longer Ready are not ready either.
    wait_for("pod patient not Ready", &server, &[&alive, &doomed], || {
        pod_ready(&server, "patient").filter(|s| s == "False")
    });

    // `brief` tolerates it for 5 s, then is evicted; `patient` for 300 s.
    let evicted = wait_for("pod brief evicted", &server, &[&alive, &doomed], || {
        let out = get(
            &server,
            &[
                "get",
                "pod",
                "brief",
                "-o",
                "jsonpath={.metadata.deletionTimestamp}|{.status.conditions[?(@.type==\"DisruptionTarget\")].reason}",
            ],
        )?;
        (!out.starts_with('|')).then_some(out)
    });
    assert!(evicted.ends_with("|DeletionByTaintManager"), "{evicted}");
    let patient = get(
        &server,
        &[
            "get",
            "pod",
            "patient",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ],
    )
    .expect("pod patient");
    assert_eq!(
        patient, "",
        "patient tolerates the unreachable taint for 300 s"
    );
    let events = get(
        &server,
        &[
            "get",
            "events",
            "--field-selector",
            "reason=TaintManagerEviction",
            "-o",
            "jsonpath={.items[*].involvedObject.name}",
        ],
    )
    .expect("events");
    assert!(events.split_whitespace().any(|n| n == "brief"), "{events}");

    // The live nodes are untouched.
    for node in ["alive-0", "alive-1", "alive-2"] {
        let out = get(
            &server,
            &[
                "get",
                "node",
                node,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}|{.spec.taints}",
            ],
        )
        .expect(node);
        assert!(out == "True|" || out == "True|[]", "{node}: {out}");
    }

    // A NoExecute taint a pod does not tolerate evicts it at once; one that tolerates stays.
    server.ok_with_input(&["apply", "-f", "-"], &pod("plain", "alive-1", "", ""));
    server.ok_with_input(
        &["apply", "-f", "-"],
        &pod("dedicated", "alive-1", "  tolerations:\n  - {key: keel.dev/test, operator: Equal, value: x, effect: NoExecute}\n", ""),
    );
    for name in ["plain", "dedicated"] {
        wait_for_phase(&server, &[&alive, &doomed], name, "Running");
    }
    server.ok(&["taint", "node", "alive-1", "keel.dev/test=x:NoExecute"]);
    // Deleted by the controller, then for good by the (simulated) node.
    wait_for("pod plain gone", &server, &[&alive, &doomed], || {
        (!server.kubectl(&["get", "pod", "plain"]).status.success()).then_some(())
    });
    let dedicated = get(
        &server,
        &[
            "get",
            "pod",
            "dedicated",
            "-o",
            "jsonpath={.status.phase}{.metadata.deletionTimestamp}",
        ],
    )
    .expect("pod dedicated");
    assert_eq!(dedicated, "Running");

    // The doomed nodes come back: Ready again, the unreachable taints go.
    let back = Simulator::start(&server, "doomed-", 2, &[]);
    wait_for(
        "doomed-0 Ready and untainted",
        &server,
        &[&alive, &back],
        || {
            let out = get(
                &server,
                &[
                    "get",
                    "node",
                    "doomed-0",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}|{range .spec.taints[*]}{.key},{end}",
                ],
            )?;
            (out == "True|").then_some(())
        },
    );
    // Its pod is reported Ready again by the node.
    wait_for("pod patient Ready again", &server, &[&alive, &back], || {
        pod_ready(&server, "patient").filter(|s| s == "True")
    });
}

/// The pods of Deployment `web` as (name, node, image, ready, terminating).
fn web_pods(server: &TestApiServer) -> Vec<(String, String, String, bool, bool)> {
    let Some(text) = get(server, &["get", "pods", "-l", "app=web", "-o", "json"]) else {
        return Vec::new();
    };
    let list: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|pod| {
            let ready = pod["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            (
                pod["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                pod["spec"]["nodeName"].as_str().unwrap_or("").to_owned(),
                pod["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                ready,
                !pod["metadata"]["deletionTimestamp"].is_null(),
            )
        })
        .collect()
}

/// Polls the Deployment's pods until every one of the 10 runs `image` and is Ready, checking
/// at every look that the rollout stays within maxSurge 1 / maxUnavailable 0: never more than
/// 11 pods that are not terminating, never fewer than 10 of them Ready.
fn roll_to(server: &TestApiServer, sims: &[&Simulator], image: &str) {
    let mut looks = 0;
    wait_for(&format!("every web pod on {image}"), server, sims, || {
        let pods = web_pods(server);
        let live: Vec<_> = pods.iter().filter(|p| !p.4).collect();
        let ready = live.iter().filter(|p| p.3).count();
        assert!(live.len() <= 11, "more than maxSurge: {live:?}");
        assert!(
            ready >= 10,
            "fewer than 10 Ready (maxUnavailable 0): {live:?}"
        );
        looks += 1;
        (live.len() == 10 && live.iter().all(|p| p.2 == image && p.3)).then_some(())
    });
    assert!(looks > 1, "the rollout was watched");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_is_scheduled_over_three_simulated_nodes_and_rolls_out_within_its_surge() {
    let server = TestApiServer::start().await.expect("control plane");
    let sim = Simulator::start(&server, "web-", 3, &["--cpu=2"]);
    let sims = [&sim];
    wait_for_ready_nodes(&server, &sims, 3);
    // 500m each on 2-CPU nodes: at most 4 per node, so 10 replicas need all three nodes.
    let deployment = |image: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: default}}\nspec:\n  replicas: 10\n  \
             selector: {{matchLabels: {{app: web}}}}\n  strategy: {{type: RollingUpdate, rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}}}\n  \
             template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers:\n      - name: app\n        image: {image}\n        \
             resources: {{requests: {{cpu: 500m}}}}\n"
        )
    };
    server.ok_with_input(&["apply", "-f", "-"], &deployment("registry.local/web:1"));
    server.ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    let pods = web_pods(&server);
    assert_eq!(pods.len(), 10, "{pods:?}");
    let mut per_node = std::collections::BTreeMap::<String, usize>::new();
    for (name, node, _, ready, _) in &pods {
        assert!(
            !node.is_empty() && *ready,
            "pod {name} not bound and Ready: {pods:?}"
        );
        *per_node.entry(node.clone()).or_default() += 1;
    }
    assert_eq!(
        per_node.len(),
        3,
        "spread over the three nodes: {per_node:?}"
    );
    assert!(
        per_node.values().all(|count| *count <= 4),
        "no node past its 2 CPUs: {per_node:?}"
    );

    // A rolling update, watched at every step; then `rollout status` returns at once.
    server.ok(&["set", "image", "deployment/web", "app=registry.local/web:2"]);
    roll_to(&server, &sims, "registry.local/web:2");
    server.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);

    // `rollout undo` goes back to the first template, under the same bounds.
    server.ok(&["rollout", "undo", "deployment/web"]);
    roll_to(&server, &sims, "registry.local/web:1");
    server.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let history = server.ok(&["rollout", "history", "deployment/web"]);
    assert!(history.contains('2') && history.contains('3'), "{history}");
}
