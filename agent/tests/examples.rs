//! `manifests/examples/` as a user runs them, on a real node: the agent with runc pods, the
//! control plane (API server, scheduler, controller manager) and kubectl. The examples name
//! the image `cargo xtask up` serves; here it is the test node's registry's copy of the same
//! busybox image.
//!
//! - `web.yaml`: three Ready pods; 30 requests from a client host through the NodePort and
//!   through the ClusterIP (routed via the node, the TC path, behind `xdp_lb` with
//!   `--bpf-lb-acceleration native`) are answered by all three; so
//!   are 30 from a web pod to the ClusterIP (the pods are outside the agent's socket-LB
//!   cgroup: TC on the pods' interfaces, the pod's own flows to itself hairpinned).
//! - `job.yaml`: five completions, the pods' output in `kubectl logs`.
//! - `daemonset.yaml`: a pod on the node, reporting the node's name.
//!
//! The agent also serves cluster DNS (`--cluster-dns`): a web pod resolves the Service's name.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use keel_testhost::Host;
use keel_testhost::cluster::TestControlPlane;
use keel_testhost::node::TestNode;
use support::agent_binary;

/// The image reference the examples use (`cargo xtask up`'s registry).
const UP_IMAGE: &str = "198.18.0.1:5000/busybox:stable";

fn example(name: &str, image: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/examples")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    assert!(text.contains(UP_IMAGE), "{name} runs {UP_IMAGE}");
    text.replace(UP_IMAGE, image)
}

/// What `url` answers from `client`, 30 times; the set of answers (an empty string for a
/// failed request).
fn answers(client: &Host, url: &str) -> BTreeSet<String> {
    (0..30)
        .map(|_| {
            let output = client
                .command("curl")
                .args(["-s", "--max-time", "3", url])
                .output()
                .expect("curl");
            if output.status.success() {
                String::from_utf8_lossy(&output.stdout).trim().to_owned()
            } else {
                String::new()
            }
        })
        .collect()
}

#[test]
fn the_examples_run_web_answers_from_every_replica_the_job_completes_the_daemonset_reports() {
    let mut node = TestNode::new("examples", agent_binary());
    let control_plane = TestControlPlane::start(&node);
    let (client, link) = node.add_host("client");
    let node_ip = link.a.ip;
    client
        .run(&["ip", "route", "add", "default", "via", &node_ip.to_string()])
        .unwrap();
    node.extra_args = vec![
        "--kubeconfig".into(),
        control_plane.kubeconfig().display().to_string(),
        "--devices".into(),
        link.a.interface.clone(),
        "--node-ip".into(),
        node_ip.to_string(),
        "--cluster-dns".into(),
        "169.254.20.10".into(),
        "--metrics-bind-address".into(),
        String::new(),
        // XDP in front of TC on the device: the web pods are local backends, which it
        // passes on to TC untouched.
        "--bpf-lb-acceleration".into(),
        "native".into(),
    ];
    node.start_agent();
    let image = node.image.clone();
    let kubectl = |args: &[&str], input: Option<&str>| control_plane.kubectl_ok(args, input);

    // web: three replicas Ready, every one of them answers through the Service.
    kubectl(&["apply", "-f", "-"], Some(&example("web.yaml", &image)));
    kubectl(
        &["rollout", "status", "deployment/web", "--timeout=180s"],
        None,
    );
    let names: BTreeSet<String> = kubectl(
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
        None,
    )
    .split_whitespace()
    .map(str::to_owned)
    .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    let cluster_ip = kubectl(
        &["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"],
        None,
    );
    for url in [
        format!("http://{node_ip}:30080/"),
        format!("http://{}/", cluster_ip.trim()),
    ] {
        let seen = node.wait_for(
            &format!("all three replicas answering {url}"),
            Duration::from_secs(60),
            || {
                let seen = answers(&client, &url);
                (seen == names).then_some(seen)
            },
        );
        assert_eq!(seen, names, "{url}");
    }
    let log = kubectl(&["logs", "deployment/web"], None);
    assert!(log.contains("serving web-"), "{log}");
    let shown = node
        .host
        .run(&["ip", "-d", "link", "show", &link.a.interface])
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("name xdp_lb "),
        "xdp_lb on the device: {shown}"
    );

    // From a pod, outside the agent's socket-LB cgroup: TC on the pods' interfaces serves
    // its flows to the ClusterIP; every replica answers, the asking pod itself too (hairpin).
    let asker = names.iter().next().expect("a web pod").clone();
    let script = format!(
        "for i in $(seq 30); do timeout 10 wget -qO- http://{}/ || echo FAILED; done",
        cluster_ip.trim()
    );
    let asked = kubectl(&["exec", &asker, "--", "sh", "-c", &script], None);
    let answered: BTreeSet<String> = asked.lines().map(str::to_owned).collect();
    assert_eq!(answered, names, "30 requests from {asker} to the ClusterIP");

    // Cluster DNS from inside a pod: its resolv.conf points at the node's DNS with the
    // namespace's search path, and the Service's name resolves to its ClusterIP.
    let pod = names.iter().next().expect("a web pod").clone();
    let resolv = kubectl(&["exec", &pod, "--", "cat", "/etc/resolv.conf"], None);
    assert!(resolv.starts_with("nameserver 169.254.20.10\n"), "{resolv}");
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    assert!(resolv.contains("options ndots:5"), "{resolv}");
    let lookup = kubectl(
        &[
            "exec",
            &pod,
            "--",
            "nslookup",
            "web.default.svc.cluster.local",
        ],
        None,
    );
    assert!(lookup.contains(cluster_ip.trim()), "{lookup}");

    // job: five completions, two at a time; each pod printed its line.
    kubectl(&["apply", "-f", "-"], Some(&example("job.yaml", &image)));
    kubectl(
        &[
            "wait",
            "--for=condition=complete",
            "job/pi",
            "--timeout=180s",
        ],
        None,
    );
    let succeeded = kubectl(
        &["get", "job", "pi", "-o", "jsonpath={.status.succeeded}"],
        None,
    );
    assert_eq!(succeeded, "5");
    let log = kubectl(&["logs", "job/pi"], None);
    assert!(log.contains(": 22/7 = 3.14286"), "{log}");

    // daemonset: one pod, on the node, saying so.
    kubectl(
        &["apply", "-f", "-"],
        Some(&example("daemonset.yaml", &image)),
    );
    kubectl(
        &[
            "rollout",
            "status",
            "daemonset/node-reporter",
            "--timeout=180s",
        ],
        None,
    );
    let placed = kubectl(
        &[
            "get",
            "pods",
            "-l",
            "app=node-reporter",
            "-o",
            "jsonpath={.items[*].spec.nodeName}",
        ],
        None,
    );
    assert_eq!(placed, "node1");
    let report = node.wait_for("the reporter's first line", Duration::from_secs(30), || {
        let log = kubectl(&["logs", "daemonset/node-reporter"], None);
        log.contains("node1: ").then_some(log)
    });
    assert!(report.starts_with("node1: "), "{report}");
}
