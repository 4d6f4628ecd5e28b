//! Static pods end to end: `keel-agent` in a test node runs pods from manifest files with runc,
//! pulling a busybox image from a real registry, and removes every trace of them when their
//! manifest goes.

mod support;

use std::time::Duration;

use keel_testhost::node::{TestNode, mounts_under};
use support::agent_binary;

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
    command: [sh, -c, 'mkdir -p /www && echo hello from $(POD_NAME) > /www/index.html && echo started httpd && echo to stderr >&2 && exec httpd -f -v -p 80 -h /www']
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
    let node = TestNode::start("pods", agent_binary());
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
    // The containers start one after the other: httpd may answer before the sleeper runs.
    let containers = node.wait_for("two container cgroups", Duration::from_secs(30), || {
        let dirs: Vec<_> = std::fs::read_dir(&memory_pod)
            .ok()?
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        (dirs.len() == 2).then_some(dirs)
    });
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

    // The node API serves the pod with its status and the container's log.
    let api = |path: &str| node.curl(&format!("https://127.0.0.1:10250{path}"));
    assert_eq!(api("/healthz").as_deref(), Some("ok"));
    let pods: serde_json::Value = serde_json::from_str(&api("/pods").unwrap()).unwrap();
    assert_eq!(pods["kind"], "PodList");
    let item = &pods["items"][0];
    assert_eq!(item["metadata"]["name"], "web-node1");
    assert_eq!(item["status"]["podIP"], "198.18.64.1");
    assert_eq!(item["status"]["phase"], "Running");
    let logs = api("/containerLogs/default/web-node1/httpd").unwrap();
    // stdout and stderr are copied side by side: either may come first.
    let first_two: Vec<&str> = logs.lines().take(2).collect();
    assert!(
        first_two.contains(&"started httpd") && first_two.contains(&"to stderr"),
        "{logs}"
    );
    let tail = api("/containerLogs/default/web-node1/httpd?tailLines=1&timestamps=true").unwrap();
    let (time, line) = tail.trim_end().split_once(' ').unwrap();
    assert!(time.parse::<jiff::Timestamp>().is_ok(), "{tail}");
    assert!(
        !line.is_empty() && !tail.trim_end().contains('\n'),
        "{tail}"
    );
    assert!(
        api("/containerLogs/default/nope/httpd").is_none(),
        "unknown pod: 404"
    );
    let summary: serde_json::Value = serde_json::from_str(&api("/stats/summary").unwrap()).unwrap();
    let pod_stats = &summary["pods"][0];
    assert_eq!(pod_stats["podRef"]["name"], "web-node1");
    assert!(
        pod_stats["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap() > 0,
        "{summary}"
    );
    assert!(
        pod_stats["memory"]["workingSetBytes"].as_u64().unwrap() > 0,
        "{summary}"
    );
    let containers = pod_stats["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 2, "{summary}");
    assert!(
        containers
            .iter()
            .all(|c| c["memory"]["usageBytes"].as_u64().unwrap_or(0) > 0),
        "{summary}"
    );
    // follow: a request to httpd after the follow started shows up in it.
    let follow = node
        .host
        .command("curl")
        .args([
            "-sk",
            "--max-time",
            "4",
            "https://127.0.0.1:10250/containerLogs/default/web-node1/httpd?follow=true",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    node.curl("http://198.18.64.1/followed").unwrap_or_default();
    let followed = String::from_utf8_lossy(&follow.wait_with_output().unwrap().stdout).into_owned();
    assert!(followed.contains("started httpd\n"), "{followed}");
    assert!(
        followed.contains("response:404"),
        "the new request (a 404) arrived while following: {followed}"
    );

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

fn pod(name: &str, image: &str, extra_spec: &str, containers: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: {name}}}\nspec:\n{extra_spec}  containers:\n{}",
        containers.replace("IMAGE", image)
    )
}

/// The first-line timestamps of each `<n>.log` of a container, in restart order.
fn instance_starts(dir: &std::path::Path) -> Vec<jiff::Timestamp> {
    let mut files: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    Some((name.strip_suffix(".log")?.parse().ok()?, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter_map(|(_, path)| {
            let text = std::fs::read_to_string(path).ok()?;
            text.lines().next()?.split(' ').next()?.parse().ok()
        })
        .collect()
}

#[test]
fn a_crashing_container_restarts_with_back_off_and_every_instance_keeps_its_log() {
    let node = TestNode::start("backoff", agent_binary());
    node.write_manifest(
        "crash.yaml",
        &pod(
            "crash",
            &node.image,
            "  terminationGracePeriodSeconds: 1\n",
            "  - {name: c, image: IMAGE, command: [sh, -c, 'echo run; exit 1']}\n",
        ),
    );
    let uid = node.wait_for("the pod", Duration::from_secs(30), || node.pod_uids().pop());
    let dir = node
        .logs
        .path()
        .join(format!("default_crash-node1_{uid}/c"));
    // Instances 0 and 1 at once, then back-off 10 s, then 20 s.
    let starts = node.wait_for("four instances", Duration::from_secs(90), || {
        let starts = instance_starts(&dir);
        (starts.len() >= 4).then_some(starts)
    });
    let gaps: Vec<f64> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]).total(jiff::Unit::Second).unwrap())
        .collect();
    // Back-off is a floor (never sooner); the ceilings only say "not the next step yet", with
    // room for a loaded machine.
    assert!(
        gaps[0] < 10.0,
        "the first restart is immediate: gaps {gaps:?}"
    );
    assert!(
        (10.0..20.0).contains(&gaps[1]),
        "then 10 s of back-off: gaps {gaps:?}"
    );
    assert!((20.0..40.0).contains(&gaps[2]), "then 20 s: gaps {gaps:?}");
    for n in 0..4 {
        let text = std::fs::read_to_string(dir.join(format!("{n}.log"))).unwrap();
        assert!(text.ends_with(" stdout F run\n"), "{n}.log: {text}");
    }
    let previous =
        node.curl("https://127.0.0.1:10250/containerLogs/default/crash-node1/c?previous=true");
    assert_eq!(
        previous.as_deref(),
        Some("run\n"),
        "the node API's previous instance"
    );
}

#[test]
fn volumes_and_downward_env_are_visible_inside_the_container() {
    let node = TestNode::start("volumes", agent_binary());
    node.write_manifest(
        "vol.yaml",
        &pod(
            "vol",
            &node.image,
            "  volumes:\n  - {name: scratch, emptyDir: {}}\n  - {name: mem, emptyDir: {medium: Memory, sizeLimit: 8Mi}}\n  - name: info\n    downwardAPI: {items: [{path: labels, fieldRef: {fieldPath: \"metadata.labels['app']\"}}, {path: ns, fieldRef: {fieldPath: metadata.namespace}}]}\n",
            "  - name: writer\n    image: IMAGE\n    command: [sh, -c, 'echo shared > /scratch/file; echo $(MY_IP) $MY_NODE; cat /etc/info/labels; echo; cat /etc/info/ns; echo; grep -c \" /mem tmpfs \" /proc/mounts; sleep 3600']\n    env:\n    - {name: MY_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}\n    - {name: MY_NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}\n    volumeMounts: [{name: scratch, mountPath: /scratch}, {name: mem, mountPath: /mem}, {name: info, mountPath: /etc/info, readOnly: true}]\n  - name: reader\n    image: IMAGE\n    command: [sh, -c, 'until [ -f /data/file ]; do sleep 0.2; done; cat /data/file; sleep 3600']\n    volumeMounts: [{name: scratch, mountPath: /data}]\n",
        ),
    );
    let uid = node.wait_for("the pod", Duration::from_secs(30), || node.pod_uids().pop());
    let logs = node.logs.path().join(format!("default_vol-node1_{uid}"));
    let lines = |container: &str| {
        std::fs::read_to_string(logs.join(container).join("0.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.splitn(4, ' ').nth(3).unwrap_or("").to_owned())
            .collect::<Vec<_>>()
    };
    let writer = node.wait_for("the writer's output", Duration::from_secs(30), || {
        let lines = lines("writer");
        (lines.len() >= 4).then_some(lines)
    });
    assert_eq!(
        writer,
        ["198.18.64.1 node1", "vol", "default", "1"],
        "env, downwardAPI, tmpfs"
    );
    let reader = node.wait_for("the reader's output", Duration::from_secs(30), || {
        let lines = lines("reader");
        (!lines.is_empty()).then_some(lines)
    });
    assert_eq!(reader, ["shared"], "emptyDir shared between containers");
    // One IPC namespace for the pod: both containers name the same one.
    let ipc = |container: &str| {
        let pods: serde_json::Value =
            serde_json::from_str(&node.curl("https://127.0.0.1:10250/pods").unwrap()).unwrap();
        let statuses = pods["items"][0]["status"]["containerStatuses"]
            .as_array()
            .unwrap()
            .clone();
        let status = statuses.iter().find(|s| s["name"] == container).unwrap();
        let id = status["containerID"]
            .as_str()
            .unwrap()
            .trim_start_matches("runc://")
            .to_owned();
        let output = std::process::Command::new("runc")
            .arg("--root")
            .arg(node.state_dir().join("runc"))
            .args(["exec", &id, "readlink", "/proc/self/ns/ipc"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    let (writer_ipc, reader_ipc) = (ipc("writer"), ipc("reader"));
    assert!(writer_ipc.starts_with("ipc:["), "{writer_ipc}");
    assert_eq!(
        writer_ipc, reader_ipc,
        "the pod's containers share one IPC namespace"
    );
}

#[test]
fn kill_9_of_the_agent_leaves_ten_pods_running_and_the_new_agent_adopts_them() {
    let mut node = TestNode::start("adopt", agent_binary());
    for n in 0..10 {
        node.write_manifest(
            &format!("p{n}.yaml"),
            &pod(
                &format!("p{n}"),
                &node.image,
                "  terminationGracePeriodSeconds: 1\n",
                "  - {name: c, image: IMAGE, command: [sh, -c, 'echo up; exec sleep 3600']}\n",
            ),
        );
    }
    let running = |node: &TestNode| -> Vec<String> {
        let output = std::process::Command::new("runc")
            .arg("--root")
            .arg(node.state_dir().join("runc"))
            .args(["list", "-q"])
            .output()
            .unwrap();
        let mut ids: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        ids.sort();
        ids
    };
    // Each pod's record on disk names its running container.
    let state = node.state_dir();
    let record_path = |uid: &str| state.join("pods").join(uid).join("records/c.json");
    let recorded = |node: &TestNode| -> Vec<String> {
        let mut ids: Vec<String> = node
            .pod_uids()
            .iter()
            .filter_map(|uid| std::fs::read(record_path(uid)).ok())
            .filter_map(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .filter_map(|record| record["current"]["id"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        ids
    };
    let before = node.wait_for(
        "ten running, recorded containers",
        Duration::from_secs(120),
        || {
            let ids = running(&node);
            (ids.len() == 10 && recorded(&node) == ids).then_some(ids)
        },
    );
    node.kill_agent();
    // As if the agent had died between starting one pod's container and recording it: the
    // record of the first pod forgets its instance. The new agent starts that container
    // again and must not leave the unrecorded one running beside it.
    let forgotten_uid = node.pod_uids()[0].clone();
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(record_path(&forgotten_uid)).unwrap()).unwrap();
    let forgotten = record["current"]["id"].as_str().unwrap().to_owned();
    record["current"] = serde_json::Value::Null;
    std::fs::write(record_path(&forgotten_uid), record.to_string()).unwrap();
    node.start_agent();
    // Give the new agent time to look at everything (several resyncs), then compare.
    node.wait_for("the new agent to start", Duration::from_secs(30), || {
        (node.agent_log().matches("running pods as node").count() == 2).then_some(())
    });
    let after = node.wait_for(
        "the forgotten container replaced",
        Duration::from_secs(60),
        || {
            let ids = running(&node);
            (ids.len() == 10 && !ids.contains(&forgotten)).then_some(ids)
        },
    );
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(running(&node), after, "nothing restarted or added since");
    let kept: Vec<&String> = before.iter().filter(|id| **id != forgotten).collect();
    assert!(
        kept.iter().all(|id| after.contains(id)),
        "the nine recorded containers kept running: before {before:?}, after {after:?}"
    );
    assert!(
        node.agent_log()
            .contains(&format!("removing container {forgotten}"))
    );
    for uid in node
        .pod_uids()
        .into_iter()
        .filter(|uid| *uid != forgotten_uid)
    {
        let logs: Vec<_> = std::fs::read_dir(node.logs.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(&uid))
            .flat_map(|e| std::fs::read_dir(e.path().join("c")).unwrap().flatten())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(logs, ["0.log"], "pod {uid}: no restart");
    }
    // The new agent still runs them: removing one manifest stops exactly that pod.
    node.remove_manifest("p3.yaml");
    node.wait_for("p3 to go", Duration::from_secs(30), || {
        (running(&node).len() == 9).then_some(())
    });
}

#[test]
fn reset_after_kill_9_removes_containers_keeper_mounts_netns_and_cgroups() {
    let mut node = TestNode::start("reset", agent_binary());
    for n in 0..2 {
        node.write_manifest(
            &format!("r{n}.yaml"),
            &pod(
                &format!("r{n}"),
                &node.image,
                "  volumes: [{name: scratch, emptyDir: {medium: Memory}}]\n",
                "  - {name: c, image: IMAGE, command: [sleep, '3600'], volumeMounts: [{name: scratch, mountPath: /scratch}]}\n",
            ),
        );
    }
    let runc_root = node.state_dir().join("runc");
    let containers = |runc_root: &std::path::Path| {
        let output = std::process::Command::new("runc")
            .arg("--root")
            .arg(runc_root)
            .args(["list", "-q"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).lines().count()
    };
    node.wait_for("two running containers", Duration::from_secs(120), || {
        (containers(&runc_root) == 2).then_some(())
    });
    let pod_links = |node: &TestNode| {
        let output = node
            .host
            .command("ip")
            .args(["-o", "link"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| {
                line.split(':')
                    .nth(1)
                    .is_some_and(|n| n.trim().starts_with("kp"))
            })
            .count()
    };
    assert_eq!(pod_links(&node), 2, "one veth per pod");
    let state = node.state_dir();
    assert!(!keel_testhost::node::mounts_under(&state).is_empty());
    node.kill_agent();

    // In the root network namespace: `ip netns exec` would hide the host's cgroup mounts,
    // and reset needs no network (pod veths go with the pods' namespaces).
    let output = std::process::Command::new(agent_binary())
        .arg("reset")
        .arg("--root-dir")
        .arg(&state)
        .arg("--cgroup-root")
        .arg(&node.cgroup_root)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "keel-agent reset failed:\n{log}");
    assert!(log.contains("2 containers deleted, keeper killed"), "{log}");

    assert!(
        !state.exists(),
        "the root dir is gone; left: {:?}",
        walkdir(&state)
    );
    // (`runc list` would make its root again: the gone root dir is the check that runc's
    // state is gone; the removed cgroups below show that the containers' processes are.)
    assert_eq!(
        keel_testhost::node::mounts_under(&state),
        Vec::<String>::new()
    );
    assert_eq!(
        keel_testhost::node::keeper_pid(&state.join("keeper")),
        None,
        "no keeper"
    );
    for controller in ["memory", "cpu", "pids", "unified", "systemd"] {
        let kubepods = node.cgroup_dir(controller, "kubepods");
        assert!(!kubepods.exists(), "{} is left", kubepods.display());
    }
    node.wait_for(
        "the pods' veths to go with their netns",
        Duration::from_secs(10),
        || (pod_links(&node) == 0).then_some(()),
    );
}

#[test]
fn bad_manifests_and_bad_images_are_reported_and_other_pods_keep_running() {
    let node = TestNode::start("errors", agent_binary());
    node.write_manifest("web.yaml", &web_pod(&node.image));
    node.wait_for("web to answer", Duration::from_secs(60), || {
        node.curl("http://198.18.64.1/")
    });
    node.write_manifest(
        "broken.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: b}\nspec: {containers: [{name: c}]}\n",
    );
    let missing = format!("{}/nope:1", node.registry.host());
    node.write_manifest(
        "missing.yaml",
        &pod(
            "missing",
            &node.image,
            "",
            &format!("  - {{name: c, image: {missing}}}\n"),
        ),
    );
    node.write_manifest(
        "unreachable.yaml",
        &pod(
            "unreachable",
            &node.image,
            "",
            "  - {name: c, image: '127.0.0.1:1/x:1'}\n",
        ),
    );
    let broken_path = node.manifests.path().join("broken.yaml");
    node.wait_for(
        "the errors in the agent's log",
        Duration::from_secs(30),
        || {
            let log = node.agent_log();
            (log.contains(&format!(
                "{}: spec.containers[0].image: Required value",
                broken_path.display()
            )) && log.contains(&format!("pull {missing}: manifest unknown"))
                && log.contains("pull 127.0.0.1:1/x:1: cannot reach registry 127.0.0.1:1"))
            .then_some(())
        },
    );
    assert_eq!(
        node.curl("http://198.18.64.1/").as_deref().map(str::trim),
        Some("hello from web-node1")
    );
}

#[test]
fn deletion_sends_term_waits_the_grace_period_then_kills() {
    let node = TestNode::start("grace", agent_binary());
    let marks = node.root.path().join("marks");
    node.write_manifest(
        "grace.yaml",
        &pod(
            "grace",
            &node.image,
            &format!(
                "  terminationGracePeriodSeconds: 6\n  volumes: [{{name: marks, hostPath: {{path: {}, type: DirectoryOrCreate}}}}]\n",
                marks.display()
            ),
            "  - name: polite\n    image: IMAGE\n    command: [sh, -c, 'trap \"echo term > /marks/polite; exit 0\" TERM; echo up > /marks/up; while true; do sleep 0.1; done']\n    volumeMounts: [{name: marks, mountPath: /marks}]\n  - name: stubborn\n    image: IMAGE\n    command: [sh, -c, 'trap \"echo term > /marks/stubborn\" TERM; while true; do sleep 0.1; done']\n    volumeMounts: [{name: marks, mountPath: /marks}]\n",
        ),
    );
    node.wait_for("the pod to run", Duration::from_secs(60), || {
        marks.join("up").exists().then_some(())
    });
    let running = || {
        let output = std::process::Command::new("runc")
            .arg("--root")
            .arg(node.state_dir().join("runc"))
            .args(["list", "--format", "json"])
            .output()
            .unwrap();
        let list: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        list.as_array()
            .map_or(0, |l| l.iter().filter(|c| c["status"] == "running").count())
    };
    node.wait_for("both containers", Duration::from_secs(30), || {
        (running() == 2).then_some(())
    });
    node.remove_manifest("grace.yaml");
    node.wait_for("SIGTERM to both", Duration::from_secs(30), || {
        (marks.join("polite").exists() && marks.join("stubborn").exists()).then_some(())
    });
    // The polite one exits on TERM; the stubborn one lives on until the grace period ends.
    node.wait_for(
        "the polite container to exit",
        Duration::from_secs(3),
        || (running() == 1).then_some(()),
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(running(), 1, "not killed before the grace period");
    node.wait_for(
        "SIGKILL after the grace period, and cleanup",
        Duration::from_secs(30),
        || node.pod_uids().is_empty().then_some(()),
    );
    assert_eq!(running(), 0);
}

#[test]
fn a_host_network_pod_serves_on_the_node_address() {
    let node = TestNode::start("hostnet", agent_binary());
    node.write_manifest(
        "hostnet.yaml",
        &pod(
            "hostnet",
            &node.image,
            "  hostNetwork: true\n  terminationGracePeriodSeconds: 1\n",
            "  - {name: web, image: IMAGE, command: [sh, -c, 'mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www']}\n",
        ),
    );
    let body = node.wait_for(
        "httpd on the node's address",
        Duration::from_secs(60),
        || node.curl("http://198.18.63.1:8080/"),
    );
    let node_hostname = node.host.run(&["hostname"]).unwrap();
    assert_eq!(
        body.trim(),
        String::from_utf8_lossy(&node_hostname.stdout).trim(),
        "the node's UTS namespace"
    );
    let pods: serde_json::Value =
        serde_json::from_str(&node.curl("https://127.0.0.1:10250/pods").unwrap()).unwrap();
    assert_eq!(pods["items"][0]["status"]["podIP"], "198.18.63.1");
    let links = node.host.run(&["ip", "-o", "link"]).unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains(" kp"),
        "no pod veth"
    );
    node.remove_manifest("hostnet.yaml");
    node.wait_for("the pod to go", Duration::from_secs(30), || {
        node.pod_uids().is_empty().then_some(())
    });
}

/// A WebSocket exec client (what kubectl speaks): sends `input` on stdin then closes it, and
/// returns stdout, stderr and the final Status. Runs in the node's network namespace.
fn node_api_exec(
    node: &TestNode,
    path_and_query: &str,
    input: &[u8],
) -> (String, String, serde_json::Value) {
    use keel_agent::nodeapi::websocket::{self, OP_BINARY, OP_CLOSE};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let cert = node.state_dir().join("pki/kubelet.crt");
    node.host
        .enter(|| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let _ = rustls::crypto::ring::default_provider().install_default();
                let mut roots = rustls::RootCertStore::empty();
                for certificate in rustls_pemfile::certs(&mut std::fs::read(&cert).unwrap().as_slice()) {
                    roots.add(certificate.unwrap()).unwrap();
                }
                let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
                let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
                let tcp = tokio::net::TcpStream::connect("127.0.0.1:10250").await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("node1").unwrap();
                let mut tls = connector.connect(name, tcp).await.unwrap();
                let key = "dGhlIHNhbXBsZSBub25jZQ==";
                let request = format!(
                    "GET {path_and_query} HTTP/1.1\r\nHost: node1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\
                     Sec-WebSocket-Protocol: v5.channel.k8s.io, v4.channel.k8s.io\r\n\r\n"
                );
                tls.write_all(request.as_bytes()).await.unwrap();
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut byte = [0_u8; 1];
                    tls.read_exact(&mut byte).await.unwrap();
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_lowercase();
                assert!(head.starts_with("http/1.1 101"), "{head}");
                assert!(head.contains(&format!("sec-websocket-accept: {}", websocket::accept_key(key).to_lowercase())), "{head}");
                assert!(head.contains("sec-websocket-protocol: v5.channel.k8s.io"), "{head}");
                let mask = Some([9, 8, 7, 6]);
                let mut message = vec![0_u8];
                message.extend_from_slice(input);
                websocket::write_frame(&mut tls, OP_BINARY, &message, mask).await.unwrap();
                websocket::write_frame(&mut tls, OP_BINARY, &[255, 0], mask).await.unwrap();
                let (mut stdout, mut stderr, mut status) = (Vec::new(), Vec::new(), serde_json::Value::Null);
                while let Some(frame) = websocket::read_frame(&mut tls).await.unwrap() {
                    if frame.opcode == OP_CLOSE {
                        break;
                    }
                    let (channel, data) = frame.payload.split_first().unwrap();
                    match channel {
                        1 => stdout.extend_from_slice(data),
                        2 => stderr.extend_from_slice(data),
                        3 => status = serde_json::from_slice(data).unwrap(),
                        _ => {}
                    }
                }
                (String::from_utf8(stdout).unwrap(), String::from_utf8(stderr).unwrap(), status)
            })
        })
        .unwrap()
}

#[test]
fn exec_on_the_node_api_runs_a_command_in_the_container_with_stdin() {
    let node = TestNode::start("exec", agent_binary());
    node.write_manifest(
        "exec.yaml",
        &pod(
            "exec",
            &node.image,
            "  terminationGracePeriodSeconds: 1\n",
            "  - {name: c, image: IMAGE, command: [sleep, '3600']}\n",
        ),
    );
    node.wait_for("the container running", Duration::from_secs(60), || {
        let pods = node.curl("https://127.0.0.1:10250/pods")?;
        pods.contains("\"running\"").then_some(())
    });
    let (stdout, stderr, status) = node_api_exec(
        &node,
        "/exec/default/exec-node1/c?command=sh&command=-c&command=read+line%3B+echo+got+%24line%3B+echo+err+%3E%262%3B+exit+3&stdin=true&stdout=true&stderr=true",
        b"hello\n",
    );
    assert_eq!(stdout, "got hello\n");
    assert_eq!(stderr, "err\n");
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");
    let (stdout, _, status) = node_api_exec(
        &node,
        "/exec/default/exec-node1/c?command=hostname&stdout=true",
        b"",
    );
    assert_eq!(stdout.trim(), "exec-node1");
    assert_eq!(status["status"], "Success");
}

/// Every path under `dir` (for failure messages).
fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        paths.push(entry.path());
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            paths.extend(walkdir(&entry.path()));
        }
    }
    paths
}
