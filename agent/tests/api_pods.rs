//! The agent against the real control plane (etcd + keel-controlplane, driven with kubectl):
//! it registers its Node and Lease, runs a Pod bound to it, reports the Pod's status, and on
//! `kubectl delete` stops it and deletes it for good.

mod support;

use std::time::Duration;

use keel_testhost::cluster::TestControlPlane;
use keel_testhost::node::TestNode;
use support::agent_binary;
use support::cluster::api_node;

#[test]
fn the_agent_registers_its_node_runs_a_bound_pod_and_reports_its_status() {
    let mut node = TestNode::new("api", agent_binary());
    let control_plane = TestControlPlane::start(&node);
    node.write_manifest(
        "static.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: static, namespace: kube-system}}\nspec:\n  \
             terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: {}, command: [sleep, '3600']}}\n",
            node.image
        ),
    );
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
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        (output.status.success() && text.starts_with("True")).then_some(text)
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
    assert!(
        status.starts_with("Running 198.18.64.") && status.ends_with(" True true 0"),
        "{status}"
    );
    let url = format!("http://{}/", status.split(' ').nth(1).unwrap());
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
    assert_eq!(node.curl(&url).as_deref().map(str::trim), Some("api pod"));

    // Someone else clears Ready (as the node lifecycle controller does for a node that went
    // Unknown): the agent, whose pod is still ready, writes its status again.
    control_plane.kubectl_ok(
        &[
            "patch", "pod", "web", "--subresource=status", "--type=json", "-p",
            r#"[{"op":"replace","path":"/status/conditions","value":[{"type":"Ready","status":"False","reason":"NodeStatusUnknown"}]}]"#,
        ],
        None,
    );
    let ready_of = || {
        control_plane.kubectl_ok(
            &[
                "get",
                "pod",
                "web",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ],
            None,
        )
    };
    node.wait_for(
        "the agent to write Ready=True again",
        Duration::from_secs(30),
        || (ready_of() == "True").then_some(()),
    );

    // The static pod shows in the API as a mirror pod, with its status.
    let mirror =
        node.wait_for(
            "the static pod's mirror Running",
            Duration::from_secs(60),
            || {
                let output = control_plane.kubectl(&[
            "get", "pod", "-n", "kube-system", "static-node1", "-o",
            "jsonpath={.status.phase} {.metadata.annotations.kubernetes\\.io/config\\.source}",
        ]);
                let text = String::from_utf8_lossy(&output.stdout).into_owned();
                text.starts_with("Running").then_some(text)
            },
        );
    assert_eq!(mirror, "Running file");

    // kubectl delete waits until the agent has stopped the pod and deleted it for good.
    control_plane.kubectl_ok(&["delete", "pod", "web", "--timeout=60s"], None);
    node.wait_for("the pod's state to go", Duration::from_secs(30), || {
        (node.pod_uids().len() == 1).then_some(())
    });
    assert!(node.curl(&url).is_none());
    node.remove_manifest("static.yaml");
    node.wait_for("the mirror pod to go", Duration::from_secs(30), || {
        let output = control_plane.kubectl(&["get", "pod", "-n", "kube-system", "static-node1"]);
        (!output.status.success()).then_some(())
    });
}

#[test]
fn oom_kills_crash_loops_and_events_show_in_the_api_as_upstream() {
    let (node, control_plane) = api_node("apioom");
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

#[test]
fn config_maps_secrets_and_image_pull_secrets_reach_the_container() {
    use keel_testhost::registry::{BASIC_PASSWORD, BASIC_USER, ImageSpec, TestImage, TestRegistry};

    let mut node = TestNode::new("apirefs", agent_binary());
    let control_plane = TestControlPlane::start(&node);
    let private = TestRegistry::start_on_with_basic_auth(&node.host).unwrap();
    let built = TestImage::busybox(&ImageSpec {
        cmd: vec!["sh".into()],
        ..ImageSpec::default()
    })
    .unwrap();
    let image = private.push(&built, "private/busybox", "1").unwrap();
    node.extra_args = vec![
        "--kubeconfig".into(),
        control_plane.kubeconfig().display().to_string(),
        "--insecure-registry".into(),
        private.host(),
    ];
    node.start_agent();
    node.wait_for("node1 registered", Duration::from_secs(60), || {
        control_plane
            .kubectl(&["get", "node", "node1"])
            .status
            .success()
            .then_some(())
    });
    control_plane.kubectl_ok(
        &[
            "create",
            "configmap",
            "settings",
            "--from-literal=mode=fast",
            "--from-literal=level=3",
        ],
        None,
    );
    control_plane.kubectl_ok(
        &[
            "create",
            "secret",
            "generic",
            "creds",
            "--from-literal=token=s3cret",
        ],
        None,
    );
    control_plane.kubectl_ok(
        &[
            "create",
            "secret",
            "docker-registry",
            "pull",
            &format!("--docker-server={}", private.host()),
            &format!("--docker-username={BASIC_USER}"),
            &format!("--docker-password={BASIC_PASSWORD}"),
        ],
        None,
    );
    // `Always`: a pod without the pull secret must not start from the image another pod's
    // credentials brought onto the node (with IfNotPresent it would, as upstream).
    let pod = |name: &str, pull_secrets: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: node1\n  terminationGracePeriodSeconds: 1\n{pull_secrets}  \
             volumes:\n  - {{name: cfg, configMap: {{name: settings, items: [{{key: mode, path: conf/mode}}]}}}}\n  - {{name: sec, secret: {{secretName: creds, defaultMode: 0400}}}}\n  \
             containers:\n  - name: c\n    image: {image}\n    imagePullPolicy: Always\n    \
             command: [sh, -c, 'echo $MODE $TOKEN $CFG_level; cat /cfg/conf/mode; echo; cat /sec/token; echo; stat -c %a /sec/token; grep -c \" /sec tmpfs \" /proc/mounts; sleep 3600']\n    \
             env:\n    - {{name: MODE, valueFrom: {{configMapKeyRef: {{name: settings, key: mode}}}}}}\n    - {{name: TOKEN, valueFrom: {{secretKeyRef: {{name: creds, key: token}}}}}}\n    \
             envFrom: [{{configMapRef: {{name: settings}}, prefix: CFG_}}]\n    \
             volumeMounts: [{{name: cfg, mountPath: /cfg}}, {{name: sec, mountPath: /sec}}]\n"
        )
    };
    control_plane.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&pod("refs", "  imagePullSecrets: [{name: pull}]\n")),
    );
    control_plane.kubectl_ok(&["apply", "-f", "-"], Some(&pod("nocreds", "")));

    let uid = control_plane.kubectl_ok(
        &["get", "pod", "refs", "-o", "jsonpath={.metadata.uid}"],
        None,
    );
    let log = node.logs.path().join(format!("default_refs_{uid}/c/0.log"));
    let lines = node.wait_for("the container's output", Duration::from_secs(60), || {
        let text = std::fs::read_to_string(&log).ok()?;
        let lines: Vec<String> = text
            .lines()
            .map(|l| l.splitn(4, ' ').nth(3).unwrap_or("").to_owned())
            .collect();
        (lines.len() >= 5).then_some(lines)
    });
    assert_eq!(lines, ["fast s3cret 3", "fast", "s3cret", "400", "1"]);

    let waiting = node.wait_for("nocreds to fail its pull", Duration::from_secs(60), || {
        let output = control_plane.kubectl(&["get", "pod", "nocreds", "-o", "jsonpath={.status.containerStatuses[0].state.waiting.reason}: {.status.containerStatuses[0].state.waiting.message}"]);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        (text.starts_with("ErrImagePull") || text.starts_with("ImagePullBackOff")).then_some(text)
    });
    assert!(
        waiting.contains("unauthorized") || waiting.contains("Back-off pulling image"),
        "{waiting}"
    );

    control_plane.kubectl_ok(&["delete", "pod", "refs", "nocreds", "--timeout=60s"], None);
    node.wait_for(
        "the pods gone from the node",
        Duration::from_secs(30),
        || node.pod_uids().is_empty().then_some(()),
    );
}

#[test]
fn a_failing_readiness_probe_clears_ready_and_a_failing_liveness_probe_restarts() {
    let (node, control_plane) = api_node("probes");
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: probed}}\nspec:\n  nodeName: node1\n  terminationGracePeriodSeconds: 1\n  \
         containers:\n  - name: web\n    image: {}\n    \
         command: [sh, -c, 'touch /tmp/alive; mkdir -p /www; echo ok > /www/ready; exec httpd -f -p 80 -h /www']\n    \
         ports: [{{name: http, containerPort: 80}}]\n    \
         readinessProbe: {{httpGet: {{path: /ready, port: http}}, periodSeconds: 1, failureThreshold: 1}}\n    \
         livenessProbe: {{exec: {{command: [sh, -c, 'test -f /tmp/alive || {{ echo no /tmp/alive; exit 1; }}']}}, periodSeconds: 1, failureThreshold: 2}}\n",
        node.image
    );
    control_plane.kubectl_ok(&["apply", "-f", "-"], Some(&manifest));
    let ready = |want: &str| {
        let output = control_plane.kubectl(&[
            "get", "pod", "probed", "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].containerID}",
        ]);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.starts_with(want).then_some(text)
    };
    let first = node.wait_for("Ready True", Duration::from_secs(60), || {
        ready("True 0 runc://")
    });
    let id = first.rsplit("runc://").next().unwrap().to_owned();
    let runc_exec = |id: &str, args: &[&str]| {
        let status = std::process::Command::new("runc")
            .arg("--root")
            .arg(node.state_dir().join("runc"))
            .arg("exec")
            .arg(id)
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "runc exec {args:?}");
    };

    // Readiness fails: Ready goes False, the container keeps running (no restart).
    runc_exec(&id, &["rm", "/www/ready"]);
    node.wait_for("Ready False", Duration::from_secs(30), || {
        ready("False 0 runc://")
    });
    runc_exec(&id, &["sh", "-c", "echo ok > /www/ready"]);
    node.wait_for("Ready True again", Duration::from_secs(30), || {
        ready("True 0 runc://")
    });

    // Liveness fails twice: the container is restarted.
    runc_exec(&id, &["rm", "/tmp/alive"]);
    let restarted = node.wait_for("a restart", Duration::from_secs(60), || {
        ready("True 1 runc://")
    });
    assert!(!restarted.ends_with(&id), "a new container: {restarted}");
    let events = control_plane.kubectl_ok(&["describe", "pod", "probed"], None);
    for expected in [
        "Readiness probe failed: HTTP probe failed with statuscode: 404",
        // kubelet reports an exec probe's output as the failure.
        "Liveness probe failed: no /tmp/alive",
        "Container web failed liveness probe, will be restarted",
    ] {
        assert!(
            events.contains(expected),
            "missing {expected:?} in\n{events}"
        );
    }
    control_plane.kubectl_ok(&["delete", "pod", "probed", "--timeout=60s"], None);
}
