//! Several agents against one real control plane, each node a test host of its own on one
//! switch: the agents take their pod CIDRs from their Nodes (node IPAM), route the other
//! nodes' pod CIDRs via their InternalIPs (protocol 75, their own routes only), and pods on
//! different nodes reach each other by pod IP with no NAT, across the eBPF dataplane on each
//! node's interface, directly and through a ClusterIP whose backends are on other nodes. A
//! node whose agent stops goes Unknown and its pods are evicted after their toleration and
//! replaced on the other nodes, while a client on another node, retrying as clients do, gets
//! an answer from the Service in front of them every time it asks.

mod support;

use std::time::Duration;

use keel_agent::sandbox::Ipv4Cidr;
use keel_agent::sandbox::routes::ROUTE_PROTOCOL;
use keel_testhost::multinode::{CLUSTER_CIDR, TestCluster};
use keel_testhost::registry::{ImageSpec, LayerEntry, TestImage};
use support::agent_binary;

/// A busybox image whose `/www/cgi-bin/ip` answers with the client's address as the server
/// sees it (`REMOTE_ADDR`) and the server's host name (its pod's name).
fn whoami_image(cluster: &TestCluster) -> String {
    let image = TestImage::busybox(&ImageSpec {
        cmd: vec!["sh".into()],
        extra_layers: vec![vec![LayerEntry::File {
            path: "www/cgi-bin/ip".into(),
            content: b"#!/bin/sh\necho Content-Type: text/plain\necho\necho \"$REMOTE_ADDR $(hostname)\"\n"
                .to_vec(),
            mode: 0o755,
        }]],
        ..ImageSpec::default()
    })
    .expect("whoami image");
    cluster
        .registry
        .push(&image, "whoami", "1")
        .expect("push whoami")
}

/// A pod bound to `node` running busybox httpd on port 80 with `image`'s CGI script, labelled
/// `tier: <tier>`.
fn web_pod(name: &str, node: &str, image: &str, tier: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{tier: {tier}}}}}\nspec:\n  nodeName: {node}\n  \
         terminationGracePeriodSeconds: 1\n  containers:\n  - name: httpd\n    image: {image}\n    \
         command: [httpd, -f, -p, '80', -h, /www]\n---\n"
    )
}

/// The pod's phase and IP once it is Running.
fn running_ip(cluster: &TestCluster, pod: &str) -> String {
    cluster.wait_for(
        &format!("pod {pod} Running"),
        Duration::from_secs(90),
        || {
            let text = cluster.jsonpath(
                &["get", "pod", pod],
                "{.status.phase} {.status.podIP} {.spec.nodeName}",
            )?;
            let mut words = text.split_whitespace();
            (words.next() == Some("Running"))
                .then(|| words.next().map(str::to_owned))
                .flatten()
        },
    )
}

/// The node's `spec.podCIDR`.
fn pod_cidr(cluster: &TestCluster, node: &str) -> Ipv4Cidr {
    let text = cluster
        .jsonpath(&["get", "node", node], "{.spec.podCIDR}")
        .expect("node");
    Ipv4Cidr::parse(&text).unwrap_or_else(|e| panic!("node {node}: {e}"))
}

/// `wget` from pod `from` (through `kubectl exec`) to the `ip` CGI script of `to_ip`: the
/// client address the server saw, and the server's name.
fn seen_by(cluster: &TestCluster, from: &str, to_ip: &str) -> Option<(String, String)> {
    let output = cluster.control_plane.kubectl(&[
        "exec",
        from,
        "--",
        "wget",
        "-q",
        "-O",
        "-",
        &format!("http://{to_ip}/cgi-bin/ip"),
    ]);
    // httpd listens on a dual-stack socket: an IPv4 peer shows as `[::ffff:a.b.c.d]`.
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let (address, server) = text.trim().split_once(' ')?;
    let address = address
        .strip_prefix("[::ffff:")
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(address);
    Some((address.to_owned(), server.to_owned()))
}

/// The node's Keel routes as `<destination> via <gateway>`, sorted.
fn keel_routes(cluster: &TestCluster, node: &str) -> Vec<String> {
    let mut routes: Vec<String> = cluster
        .node(node)
        .routes(ROUTE_PROTOCOL)
        .iter()
        .map(|r| r.split(" dev ").next().unwrap_or_default().to_owned())
        .collect();
    routes.sort();
    routes
}

#[test]
fn pods_on_different_nodes_reach_each_other_by_pod_ip_without_nat() {
    let mut cluster = TestCluster::start("mnnet", agent_binary(), 3, &[], &[]);
    let cluster_cidr = Ipv4Cidr::parse(CLUSTER_CIDR).unwrap();

    // Each agent took its Node's pod CIDR from node IPAM, and routes the others' via their IPs.
    let cidrs: Vec<Ipv4Cidr> = ["node1", "node2", "node3"]
        .iter()
        .map(|node| pod_cidr(&cluster, node))
        .collect();
    for (node, cidr) in cluster.nodes.iter().zip(&cidrs) {
        assert!(cluster_cidr.contains(cidr.base), "{node:?}: {cidr}");
        let log = node.agent_log();
        assert!(
            log.contains(&format!("pod CIDR {cidr}")),
            "{} did not take {cidr}:\n{log}",
            node.name
        );
    }
    let node_ips: Vec<_> = cluster.nodes.iter().map(|node| node.ip).collect();
    let expected_routes = |own: usize| -> Vec<String> {
        let mut routes: Vec<String> = (0..3)
            .filter(|k| *k != own)
            .map(|k| format!("{} via {}", cidrs[k], node_ips[k]))
            .collect();
        routes.sort();
        routes
    };
    for (k, node) in cluster.nodes.iter().enumerate() {
        let wanted = expected_routes(k);
        cluster.wait_for(
            &format!("{}'s routes {wanted:?}", node.name),
            Duration::from_secs(30),
            || (keel_routes(&cluster, &node.name) == wanted).then_some(()),
        );
    }

    // Pods on every node; each server sees the client pod's own address.
    let whoami = whoami_image(&cluster);
    let manifests = [
        web_pod("web1", "node1", &whoami, "front"),
        web_pod("web2", "node2", &whoami, "back"),
        web_pod("web3", "node3", &whoami, "back"),
    ]
    .concat()
        + "apiVersion: v1\nkind: Service\nmetadata: {name: back}\nspec:\n  selector: {tier: back}\n  \
           ports: [{port: 8080, targetPort: 80}]\n";
    cluster
        .control_plane
        .kubectl_ok(&["apply", "-f", "-"], Some(&manifests));
    let ips: Vec<String> = ["web1", "web2", "web3"]
        .iter()
        .map(|pod| running_ip(&cluster, pod))
        .collect();
    for (ip, cidr) in ips.iter().zip(&cidrs) {
        assert!(cidr.contains(ip.parse().unwrap()), "{ip} not in {cidr}");
    }
    let names = ["web1", "web2", "web3"];
    for (from, from_ip) in names.iter().zip(&ips) {
        for (to, to_ip) in names.iter().zip(&ips).filter(|(_, ip)| *ip != from_ip) {
            let (seen, server) = cluster.wait_for(
                &format!("{from} to reach {to_ip}"),
                Duration::from_secs(30),
                || seen_by(&cluster, from, to_ip),
            );
            assert_eq!(&seen, from_ip, "{from} -> {to_ip}: the server saw {seen}");
            assert_eq!(&server, to);
        }
    }

    // Through a ClusterIP (socket load-balancing in web1's node): backends on the other two
    // nodes answer, and still see web1's own address.
    let cluster_ip = cluster
        .jsonpath(&["get", "service", "back"], "{.spec.clusterIP}")
        .expect("service back");
    let frontend = format!("{cluster_ip}:8080");
    let mut servers = std::collections::BTreeSet::new();
    cluster.wait_for(
        "both backends to answer through the ClusterIP",
        Duration::from_secs(60),
        || {
            let (seen, server) = seen_by(&cluster, "web1", &frontend)?;
            assert_eq!(seen, ips[0], "through {frontend}: {server} saw {seen}");
            servers.insert(server);
            (servers.len() == 2).then_some(())
        },
    );
    assert_eq!(
        servers.into_iter().collect::<Vec<_>>(),
        ["web2", "web3"],
        "the backends behind {frontend}"
    );

    // A restarted agent converges: it puts back a route removed behind its back, removes a
    // Keel route no node wants, and leaves a route of another protocol alone.
    cluster.node_mut("node1").stop_agent(libc::SIGTERM);
    let node3_route = cidrs[2].to_string();
    let stale = "198.18.250.0/24";
    let foreign = "198.18.251.0/24";
    let via = node_ips[1].to_string();
    let node1 = cluster.node("node1");
    for command in [
        vec!["ip", "route", "del", node3_route.as_str()],
        vec![
            "ip",
            "route",
            "add",
            stale,
            "via",
            via.as_str(),
            "proto",
            "75",
        ],
        vec![
            "ip",
            "route",
            "add",
            foreign,
            "via",
            via.as_str(),
            "proto",
            "static",
        ],
    ] {
        assert!(node1.run(&command).is_some(), "{command:?} failed");
    }
    cluster.node_mut("node1").start_agent();
    let wanted = expected_routes(0);
    cluster.wait_for(
        "node1's routes after a restart",
        Duration::from_secs(60),
        || (keel_routes(&cluster, "node1") == wanted).then_some(()),
    );
    let static_routes = cluster.node("node1").routes(4);
    assert!(
        static_routes.iter().any(|r| r.starts_with(foreign)),
        "the foreign route went: {static_routes:?}"
    );
    assert_eq!(
        seen_by(&cluster, "web1", &ips[2]),
        Some((ips[0].clone(), "web3".to_owned()))
    );

    // A deleted node's route goes from the others.
    cluster.node_mut("node3").stop_agent(libc::SIGTERM);
    cluster
        .control_plane
        .kubectl_ok(&["delete", "node", "node3"], None);
    for (k, node) in ["node1", "node2"].iter().enumerate() {
        let wanted = vec![format!("{} via {}", cidrs[1 - k], cluster.nodes[1 - k].ip)];
        cluster.wait_for(
            &format!("{node}'s route to node3 to go"),
            Duration::from_secs(30),
            || (keel_routes(&cluster, node) == wanted).then_some(()),
        );
    }
}

#[test]
fn a_stopped_nodes_pods_are_replaced_on_the_others_after_their_toleration() {
    let mut cluster = TestCluster::start(
        "mnevict",
        agent_binary(),
        3,
        &[
            "--node-monitor-grace-period=8s".into(),
            "--node-monitor-period=1s".into(),
        ],
        &[],
    );
    let image = whoami_image(&cluster);
    let deployment = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: sleepers}}\nspec:\n  replicas: 3\n  \
         selector: {{matchLabels: {{app: sleepers}}}}\n  template:\n    metadata: {{labels: {{app: sleepers}}}}\n    \
         spec:\n      terminationGracePeriodSeconds: 1\n      tolerations:\n      \
         - {{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 3}}\n      \
         - {{key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 3}}\n      \
         containers:\n      - {{name: c, image: {image}, command: [httpd, -f, -p, '80', -h, /www]}}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {{name: sleepers}}\nspec:\n  \
         selector: {{app: sleepers}}\n  ports:\n  - {{port: 80}}\n"
    );
    cluster
        .control_plane
        .kubectl_ok(&["apply", "-f", "-"], Some(&deployment));
    // `<pod> <node> <phase> <deleting?>` per pod.
    let pods = |cluster: &TestCluster| -> Vec<(String, String, String, bool)> {
        cluster
            .jsonpath(
                &["get", "pods", "-l", "app=sleepers"],
                "{range .items[*]}{.metadata.name} {.spec.nodeName} {.status.phase} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
            )
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                Some((
                    words.next()?.to_owned(),
                    words.next()?.to_owned(),
                    words.next()?.to_owned(),
                    words.next().is_some(),
                ))
            })
            .collect()
    };
    let running = cluster.wait_for("three pods Running", Duration::from_secs(90), || {
        let all = pods(&cluster);
        (all.len() == 3 && all.iter().all(|(_, _, phase, _)| phase == "Running")).then_some(all)
    });
    let (victim, stopped) = (running[0].0.clone(), running[0].1.clone());

    // A client pod on a node that stays up asks the Service, as a client that retries does
    // (each try given a second): the Service must answer every ask, before, while and after
    // the node is lost.
    let client_node = ["node1", "node2", "node3"]
        .into_iter()
        .find(|node| *node != stopped)
        .expect("another node");
    cluster.control_plane.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&web_pod("client", client_node, &image, "client")),
    );
    running_ip(&cluster, "client");
    let cluster_ip = cluster
        .jsonpath(&["get", "service", "sleepers"], "{.spec.clusterIP}")
        .expect("service sleepers");
    let ask = |cluster: &TestCluster| -> Option<String> {
        let script = format!(
            "for try in 1 2 3 4 5 6 7 8 9 10; do \
             timeout 1 wget -q -O - http://{cluster_ip}/cgi-bin/ip && exit 0; done; exit 1"
        );
        // kubectl exec itself may fail under load (the stream, not the Service): ask again.
        // Only the script's own failure (every try went unanswered) counts as no answer.
        for _ in 0..5 {
            let output = cluster
                .control_plane
                .kubectl(&["exec", "client", "--", "sh", "-c", &script]);
            let stderr = String::from_utf8_lossy(&output.stderr);
            if output.status.success() {
                let text = String::from_utf8_lossy(&output.stdout);
                return Some(
                    text.split_whitespace()
                        .last()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
            if stderr.contains("command terminated with exit code 1") {
                return None;
            }
            eprintln!("kubectl exec failed, asking again: {stderr}");
        }
        panic!("kubectl exec into the client pod keeps failing");
    };
    let answered = cluster.wait_for("the Service to answer", Duration::from_secs(60), || {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..12 {
            seen.insert(ask(&cluster)?);
        }
        (seen.len() == 3).then_some(seen)
    });
    assert!(answered.contains(&victim), "{answered:?}");
    let asking = std::sync::atomic::AtomicBool::new(true);

    // The node's agent stops: the node goes Unknown, gets the unreachable taint, and after the
    // 3 s toleration its pod is evicted and replaced on a node that is still up.
    cluster.node_mut(&stopped).stop_agent(libc::SIGKILL);
    let shared = &cluster;
    let (answers, replaced) = std::thread::scope(|scope| {
        let asker = scope.spawn(|| {
            let mut answers = Vec::new();
            while asking.load(std::sync::atomic::Ordering::Relaxed) {
                answers.push(ask(shared));
            }
            answers
        });
        cluster.wait_for(
            &format!("{stopped} NotReady with the unreachable taint"),
            Duration::from_secs(60),
            || {
                let taints = cluster
                    .jsonpath(&["get", "node", &stopped], "{.spec.taints[*].key}")
                    .unwrap_or_default();
                (cluster.node_condition(&stopped, "Ready") == "Unknown"
                    && taints.contains("node.kubernetes.io/unreachable"))
                .then_some(())
            },
        );
        let replaced = cluster.wait_for(
            &format!("{victim} evicted and replaced"),
            Duration::from_secs(60),
            || {
                let all = pods(&cluster);
                let victim_gone = all
                    .iter()
                    .all(|(name, _, _, deleting)| *name != victim || *deleting);
                let elsewhere: Vec<_> = all
                    .iter()
                    .filter(|(_, node, phase, deleting)| {
                        *node != stopped && phase == "Running" && !*deleting
                    })
                    .cloned()
                    .collect();
                (victim_gone && elsewhere.len() == 3).then_some(elsewhere)
            },
        );
        asking.store(false, std::sync::atomic::Ordering::Relaxed);
        (asker.join().expect("the asking thread"), replaced)
    });
    assert!(answers.len() >= 3, "asked only {} times", answers.len());
    assert!(
        answers.iter().all(Option::is_some),
        "the Service went unanswered while {stopped} was lost: {answers:?}"
    );
    // Once the endpoint went, only the live backends answer.
    assert!(
        answers
            .last()
            .is_some_and(|last| last.as_deref() != Some(victim.as_str())),
        "{answers:?}"
    );
    assert!(
        replaced.iter().all(|(name, _, _, _)| *name != victim),
        "{replaced:?}"
    );
    let reason = cluster
        .jsonpath(
            &[
                "get",
                "events",
                "--field-selector",
                &format!("involvedObject.name={victim}"),
            ],
            "{.items[*].reason}",
        )
        .unwrap_or_default();
    assert!(
        reason.contains("TaintManagerEviction"),
        "events of {victim}: {reason}"
    );

    // The agent comes back: the node is Ready again and finishes the evicted pod.
    cluster.node_mut(&stopped).start_agent();
    cluster.wait_for(
        &format!("{stopped} Ready and {victim} gone"),
        Duration::from_secs(60),
        || {
            (cluster.node_condition(&stopped, "Ready") == "True"
                && pods(&cluster).iter().all(|(name, _, _, _)| *name != victim))
            .then_some(())
        },
    );
}
