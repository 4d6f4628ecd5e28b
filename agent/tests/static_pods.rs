//! Static pods end to end: `keel-agent` in a test node runs pods from manifest files with runc,
//! pulling a busybox image from a real registry, and removes every trace of them when their
//! manifest goes.

mod support;

use std::time::Duration;

use support::node::{TestNode, mounts_under};

fn web_pod(image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {{app: web}}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: httpd
    image: {image}
    command: [sh, -c, 'mkdir -p /www && echo hello from $(POD_NAME) > /www/index.html && echo started httpd && echo to stderr >&2 && exec httpd -f -p 80 -h /www']
    env:
    - name: POD_NAME
      valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
    resources:
      requests: {{cpu: 100m, memory: 16Mi}}
      limits: {{cpu: 250m, memory: 32Mi}}
  - name: sleeper
    image: {image}
    command: [sleep, '3600']
"#
    )
}

#[test]
fn a_two_container_pod_serves_http_has_its_limits_and_logs_and_leaves_nothing() {
    let node = TestNode::start("pods");
    node.write_manifest("web.yaml", &web_pod(&node.image));

    // The pod gets the first address of the node's pod CIDR; httpd answers there.
    let body = node.wait_for(
        "httpd to answer on the pod IP",
        Duration::from_secs(60),
        || node.curl("http://198.18.64.1/"),
    );
    assert_eq!(body.trim(), "hello from web-node1");

    let uids = node.pod_uids();
    assert_eq!(uids.len(), 1, "one pod");
    let uid = &uids[0];

    // Burstable: kubepods/burstable/pod<uid>; the container cgroup below carries its limits.
    let pod_cgroup = format!("kubepods/burstable/pod{uid}");
    let memory_pod = node.cgroup_dir("memory", &pod_cgroup);
    let containers: Vec<_> = std::fs::read_dir(&memory_pod)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.path())
        .collect();
    assert_eq!(
        containers.len(),
        2,
        "two container cgroups under {}",
        memory_pod.display()
    );
    let limits: Vec<String> = containers
        .iter()
        .map(|dir| {
            std::fs::read_to_string(dir.join("memory.limit_in_bytes"))
                .unwrap()
                .trim()
                .to_owned()
        })
        .collect();
    assert!(
        limits.contains(&(32 << 20).to_string()),
        "limits {limits:?}"
    );
    let cpu_pod = node.cgroup_dir("cpu", &pod_cgroup);
    let mut quotas = Vec::new();
    let mut shares = Vec::new();
    for entry in std::fs::read_dir(&cpu_pod).unwrap().flatten() {
        if entry.file_type().unwrap().is_dir() {
            quotas.push(
                std::fs::read_to_string(entry.path().join("cpu.cfs_quota_us"))
                    .unwrap()
                    .trim()
                    .to_owned(),
            );
            shares.push(
                std::fs::read_to_string(entry.path().join("cpu.shares"))
                    .unwrap()
                    .trim()
                    .to_owned(),
            );
        }
    }
    assert!(quotas.contains(&"25000".to_owned()), "quotas {quotas:?}");
    assert!(shares.contains(&"102".to_owned()), "shares {shares:?}");
    assert_eq!(
        std::fs::read_to_string(cpu_pod.join("cpu.shares"))
            .unwrap()
            .trim(),
        "102",
        "pod-level shares: the sum of the requests"
    );

    // CRI-format log lines in /var/log/pods layout.
    let log_file = node
        .logs
        .path()
        .join(format!("default_web-node1_{uid}"))
        .join("httpd/0.log");
    let text = node.wait_for("httpd's log lines", Duration::from_secs(10), || {
        std::fs::read_to_string(&log_file)
            .ok()
            .filter(|t| t.contains("started httpd") && t.contains("to stderr"))
    });
    for line in text.lines() {
        let mut fields = line.splitn(4, ' ');
        let (time, stream, tag) = (
            fields.next().unwrap(),
            fields.next().unwrap(),
            fields.next().unwrap(),
        );
        assert!(
            time.ends_with('Z') && time.contains('T'),
            "timestamp in {line:?}"
        );
        assert!(matches!(stream, "stdout" | "stderr"), "stream in {line:?}");
        assert_eq!(tag, "F", "{line:?}");
    }
    assert!(text.contains(" stdout F started httpd\n"), "{text}");
    assert!(text.contains(" stderr F to stderr\n"), "{text}");

    // The manifest goes: the pod goes, and nothing of it stays.
    node.remove_manifest("web.yaml");
    node.wait_for("the pod to be removed", Duration::from_secs(30), || {
        node.pod_uids().is_empty().then_some(())
    });
    assert!(
        node.curl("http://198.18.64.1/").is_none(),
        "nothing answers any more"
    );
    assert!(!memory_pod.exists(), "{} removed", memory_pod.display());
    assert!(!cpu_pod.exists(), "{} removed", cpu_pod.display());
    let state = node.state_dir();
    assert_eq!(
        mounts_under(node.root.path()),
        Vec::<String>::new(),
        "no mounts left"
    );
    assert!(
        !state.join("netns").join(uid).exists(),
        "netns file removed"
    );
    let links = node.host.run(&["ip", "-o", "link"]).unwrap();
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    assert!(!links.contains(" kp"), "no pod veth left: {links}");
    let allocated: Vec<_> = std::fs::read_dir(state.join("ipam"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "last")
        .collect();
    assert!(allocated.is_empty(), "IP released: {allocated:?}");
    assert!(
        !node
            .logs
            .path()
            .join(format!("default_web-node1_{uid}"))
            .exists(),
        "pod logs removed"
    );
    let runc_state: Vec<_> = std::fs::read_dir(state.join("runc"))
        .map(|d| d.flatten().count())
        .into_iter()
        .collect();
    assert!(
        runc_state.iter().all(|n| *n == 0),
        "runc knows no container"
    );
}
