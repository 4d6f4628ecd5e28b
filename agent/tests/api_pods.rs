//! The agent against the real control plane (etcd + keel-controlplane, driven with kubectl):
//! it registers its Node and Lease, runs a Pod bound to it, reports the Pod's status, and on
//! `kubectl delete` stops it and deletes it for good.

mod support;

use std::time::Duration;

use support::cluster::TestControlPlane;
use support::node::TestNode;

#[test]
fn the_agent_registers_its_node_runs_a_bound_pod_and_reports_its_status() {
    let mut node = TestNode::new("api");
    let control_plane = TestControlPlane::start(&node);
    node.extra_args = vec![
        "--kubeconfig".into(),
        control_plane.kubeconfig().display().to_string(),
    ];
    node.start_agent();

    let ready = node.wait_for("node1 Ready", Duration::from_secs(60), || {
        let output = control_plane.kubectl(&[
            "get", "node", "node1", "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.status.capacity.pods} {.status.addresses[0].address} {.status.nodeInfo.kubeletVersion}",
        ]);
        output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    });
    assert_eq!(ready, "True 110 198.18.63.1 v1.33.0-keel");
    let holder = control_plane.kubectl_ok(
        &[
            "get",
            "lease",
            "-n",
            "kube-node-lease",
            "node1",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        None,
    );
    assert_eq!(holder, "node1");

    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: web, namespace: default}}\nspec:\n  nodeName: node1\n  \
         terminationGracePeriodSeconds: 2\n  containers:\n  - name: httpd\n    image: {}\n    \
         command: [sh, -c, 'mkdir /www && echo api pod > /www/index.html && exec httpd -f -p 80 -h /www']\n",
        node.image
    );
    control_plane.kubectl_ok(&["apply", "-f", "-"], Some(&manifest));
    let status = node.wait_for("the pod Running and Ready in the API", Duration::from_secs(60), || {
        let output = control_plane.kubectl(&[
            "get", "pod", "web", "-o",
            "jsonpath={.status.phase} {.status.podIP} {.status.conditions[?(@.type==\"Ready\")].status} {.status.containerStatuses[0].ready} {.status.containerStatuses[0].restartCount}",
        ]);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.starts_with("Running").then_some(text)
    });
    assert_eq!(status, "Running 198.18.64.1 True true 0");
    let id = control_plane.kubectl_ok(
        &[
            "get",
            "pod",
            "web",
            "-o",
            "jsonpath={.status.containerStatuses[0].containerID}",
        ],
        None,
    );
    assert!(id.starts_with("runc://"), "{id}");
    assert_eq!(
        node.curl("http://198.18.64.1/").as_deref().map(str::trim),
        Some("api pod")
    );

    // kubectl delete waits until the agent has stopped the pod and deleted it for good.
    control_plane.kubectl_ok(&["delete", "pod", "web", "--timeout=60s"], None);
    node.wait_for("the pod's state to go", Duration::from_secs(30), || {
        node.pod_uids().is_empty().then_some(())
    });
    assert!(node.curl("http://198.18.64.1/").is_none());
}

#[test]
fn oom_kills_crash_loops_and_events_show_in_the_api_as_upstream() {
    let mut node = TestNode::new("apioom");
    let control_plane = TestControlPlane::start(&node);
    node.extra_args = vec![
        "--kubeconfig".into(),
        control_plane.kubeconfig().display().to_string(),
    ];
    node.start_agent();
    node.wait_for("node1 registered", Duration::from_secs(60), || {
        control_plane
            .kubectl(&["get", "node", "node1"])
            .status
            .success()
            .then_some(())
    });
    let pods = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: hog}}\nspec:\n  nodeName: node1\n  restartPolicy: Never\n  \
         containers:\n  - name: hog\n    image: {image}\n    command: [dd, if=/dev/zero, of=/dev/null, bs=64M, count=1]\n    \
         resources: {{limits: {{memory: 16Mi}}}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: crash}}\nspec:\n  nodeName: node1\n  terminationGracePeriodSeconds: 1\n  \
         containers:\n  - name: c\n    image: {image}\n    command: [sh, -c, 'exit 3']\n",
        image = node.image
    );
    control_plane.kubectl_ok(&["apply", "-f", "-"], Some(&pods));

    let hog = node.wait_for("hog to be OOM-killed", Duration::from_secs(60), || {
        let output = control_plane.kubectl(&[
            "get", "pod", "hog", "-o",
            "jsonpath={.status.phase} {.status.containerStatuses[0].state.terminated.reason} {.status.containerStatuses[0].state.terminated.exitCode}",
        ]);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.starts_with("Failed").then_some(text)
    });
    assert_eq!(hog, "Failed OOMKilled 137");

    let crash = node.wait_for("crash in CrashLoopBackOff", Duration::from_secs(60), || {
        let output = control_plane.kubectl(&[
            "get", "pod", "crash", "-o",
            "jsonpath={.status.phase} {.status.containerStatuses[0].state.waiting.reason} {.status.containerStatuses[0].lastState.terminated.reason} {.status.containerStatuses[0].lastState.terminated.exitCode}",
        ]);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.contains("CrashLoopBackOff").then_some(text)
    });
    assert_eq!(crash, "Running CrashLoopBackOff Error 3");

    // kubectl describe shows kubelet's events.
    let described = node.wait_for("the BackOff event", Duration::from_secs(30), || {
        let text = control_plane.kubectl_ok(&["describe", "pod", "crash"], None);
        text.contains("Back-off restarting failed container c in pod crash_default")
            .then_some(text)
    });
    for expected in [
        "Container image \"",
        "Created container: c",
        "Started container c",
    ] {
        assert!(
            described.contains(expected),
            "missing {expected:?} in:\n{described}\nagent log:\n{}\nevents:\n{}\n{}",
            node.agent_log(),
            control_plane.kubectl_ok(&["get", "events", "-o", "yaml"], None),
            control_plane.log()
        );
    }
    let events = control_plane.kubectl_ok(
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=hog",
            "-o",
            "jsonpath={range .items[*]}{.reason}:{.source.component} {end}",
        ],
        None,
    );
    assert!(events.contains("Started:kubelet"), "{events}");

    control_plane.kubectl_ok(&["delete", "pod", "hog", "crash", "--timeout=60s"], None);
    node.wait_for(
        "both pods gone from the node",
        Duration::from_secs(30),
        || node.pod_uids().is_empty().then_some(()),
    );
}
