//! `kubectl logs`, `kubectl exec` and `kubectl port-forward` (kubectl 1.32) against the real
//! control plane, which proxies `pods/log`, `pods/exec` and `pods/portforward` to the agent's
//! node API with its kubelet client certificate.

mod support;

use std::time::Duration;

use support::cluster::{Terminal, api_node, background_kubectl};

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The number in a `line N` / `run N` line.
fn number(line: &str) -> u64 {
    line.rsplit(' ').next().unwrap().trim().parse().unwrap()
}

#[test]
fn kubectl_logs_reads_follows_tails_and_picks_containers_as_upstream() {
    let (node, control_plane) = api_node("logs");
    let pods = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: talk}}\nspec:\n  nodeName: node1\n  terminationGracePeriodSeconds: 1\n  \
         volumes: [{{name: data, emptyDir: {{}}}}]\n  containers:\n  \
         - {{name: count, image: {image}, command: [sh, -c, 'i=0; while true; do echo line $i; i=$((i+1)); sleep 1; done']}}\n  \
         - name: crash\n    image: {image}\n    volumeMounts: [{{name: data, mountPath: /data}}]\n    \
         command: [sh, -c, 'n=$(cat /data/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/n; echo run $n; sleep 1; exit 1']\n\
         ---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: pending}}\nspec:\n  nodeName: node1\n  terminationGracePeriodSeconds: 1\n  \
         containers:\n  - {{name: c, image: {registry}/missing:1}}\n",
        image = node.image,
        registry = node.registry.host(),
    );
    control_plane.kubectl_ok(&["apply", "-f", "-"], Some(&pods));
    node.wait_for("count to log three lines", Duration::from_secs(90), || {
        let output = control_plane.kubectl(&["logs", "talk", "-c", "count"]);
        (output.status.success() && stdout_of(&output).lines().count() >= 3).then_some(())
    });

    // The whole log, then its tail.
    let all = control_plane.kubectl_ok(&["logs", "talk", "-c", "count"], None);
    assert!(all.starts_with("line 0\nline 1\nline 2\n"), "{all}");
    let tail = control_plane.kubectl_ok(&["logs", "talk", "-c", "count", "--tail=2"], None);
    let tail: Vec<&str> = tail.lines().collect();
    assert_eq!(tail.len(), 2, "{tail:?}");
    assert_eq!(number(tail[1]), number(tail[0]) + 1, "{tail:?}");

    // Following sees lines written after it started.
    let before = control_plane.kubectl_ok(&["logs", "talk", "-c", "count"], None);
    let last = number(before.lines().last().unwrap());
    let follow = background_kubectl(
        &node,
        &control_plane,
        &[],
        &["logs", "-f", "talk", "-c", "count"],
    );
    let seen = follow
        .read_until(Duration::from_secs(30), |line| number(line) > last + 1)
        .unwrap_or_else(|seen| panic!("logs -f saw only {seen:?} (last before: {last})"));
    assert_eq!(
        seen[0], "line 0",
        "follow starts at the beginning: {seen:?}"
    );
    drop(follow);

    // kubectl attach: the output from now on, not what was written before.
    let before = control_plane.kubectl_ok(&["logs", "talk", "-c", "count", "--tail=1"], None);
    let last = number(before.trim());
    let attach = background_kubectl(
        &node,
        &control_plane,
        &[],
        &["attach", "talk", "-c", "count"],
    );
    let seen = attach
        .read_until(Duration::from_secs(30), |line| {
            line.starts_with("line ") && number(line) > last + 1
        })
        .unwrap_or_else(|seen| panic!("attach saw only {seen:?} (last before: {last})"));
    let first = seen.iter().find(|line| line.starts_with("line ")).unwrap();
    assert!(
        number(first) >= last,
        "attach replayed old output: {seen:?}"
    );
    drop(attach);

    // Two containers and none named: upstream's 400, through the raw API (kubectl itself
    // picks the first container).
    let raw = control_plane.kubectl(&["get", "--raw", "/api/v1/namespaces/default/pods/talk/log"]);
    assert!(!raw.status.success());
    assert!(
        stderr_of(&raw).contains(
            "(BadRequest): a container name must be specified for pod talk, choose one of: [count crash]"
        ),
        "{}",
        stderr_of(&raw)
    );
    let wrong = control_plane.kubectl(&["logs", "talk", "-c", "nope"]);
    assert!(
        stderr_of(&wrong).contains("container nope is not valid for pod talk"),
        "{}",
        stderr_of(&wrong)
    );
    let missing = control_plane.kubectl(&["logs", "nosuchpod"]);
    assert!(
        stderr_of(&missing).contains("pods \"nosuchpod\" not found"),
        "{}",
        stderr_of(&missing)
    );
    let bad = control_plane.kubectl(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/pods/talk/log?container=count&tailLines=-1",
    ]);
    assert!(
        stderr_of(&bad)
            .contains("tailLines: Invalid value: -1: must be greater than or equal to 0"),
        "{}",
        stderr_of(&bad)
    );

    // After a restart, --previous shows the instance before the current one.
    node.wait_for("crash to restart", Duration::from_secs(90), || {
        let output = control_plane.kubectl(&[
            "get",
            "pod",
            "talk",
            "-o",
            "jsonpath={.status.containerStatuses[?(@.name==\"crash\")].restartCount}",
        ]);
        (stdout_of(&output).trim().parse::<u32>().unwrap_or(0) >= 1).then_some(())
    });
    let previous = control_plane.kubectl_ok(&["logs", "talk", "-c", "crash", "--previous"], None);
    let current = control_plane.kubectl_ok(&["logs", "talk", "-c", "crash"], None);
    assert!(previous.starts_with("run "), "{previous}");
    assert!(
        number(current.trim()) > number(previous.trim()),
        "previous {previous:?}, current {current:?}"
    );

    // A container that never started: kubelet's message, passed on as a 400.
    let waiting = node.wait_for(
        "the pending pod's log error",
        Duration::from_secs(60),
        || {
            let output = control_plane.kubectl(&["logs", "pending"]);
            let text = stderr_of(&output);
            text.contains("is waiting to start").then_some(text)
        },
    );
    assert!(
        waiting.contains("Error from server (BadRequest): container \"c\" in pod \"pending\" is waiting to start: "),
        "{waiting}"
    );

    control_plane.kubectl_ok(&["delete", "pod", "talk", "pending", "--timeout=60s"], None);
}

#[test]
fn kubectl_exec_and_port_forward_reach_the_pod_through_the_api_server() {
    let (node, control_plane) = api_node("streams");
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n  nodeName: node1\n  terminationGracePeriodSeconds: 1\n  \
         containers:\n  - name: httpd\n    image: {}\n    \
         command: [sh, -c, 'mkdir /www && echo hello through port-forward > /www/index.html && exec httpd -f -p 80 -h /www']\n",
        node.image
    );
    control_plane.kubectl_ok(&["apply", "-f", "-"], Some(&pod));
    control_plane.kubectl_ok(
        &["wait", "--for=condition=Ready", "pod/web", "--timeout=90s"],
        None,
    );

    // The Node tells the API server where the node API is.
    let port = control_plane.kubectl_ok(
        &[
            "get",
            "node",
            "node1",
            "-o",
            "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port}",
        ],
        None,
    );
    assert_eq!(port, "10250");

    // kubectl exec: output, stdin, exit codes.
    assert_eq!(
        control_plane.kubectl_ok(&["exec", "web", "--", "hostname"], None),
        "web\n"
    );
    assert_eq!(
        control_plane.kubectl_ok(&["exec", "-i", "web", "--", "cat"], Some("echoed\nback\n")),
        "echoed\nback\n"
    );
    let failing =
        control_plane.kubectl(&["exec", "web", "--", "sh", "-c", "echo oops >&2; exit 3"]);
    assert_eq!(failing.status.code(), Some(3), "{}", stderr_of(&failing));
    assert!(
        stderr_of(&failing).contains("oops"),
        "{}",
        stderr_of(&failing)
    );

    // kubectl exec -it: a shell on a terminal in the container, the size of the user's
    // window, then of the resized window; what is typed runs; the exit code comes back.
    let mut terminal = Terminal::kubectl(
        &node,
        &control_plane,
        30,
        100,
        &["exec", "-it", "web", "--", "sh"],
    );
    let prompt = terminal.read_until(Duration::from_secs(30), "# ");
    prompt.unwrap_or_else(|seen| panic!("no shell prompt: {seen:?}"));
    terminal.type_keys("tty; stty size; echo made-$((6*7))\r");
    terminal
        .read_until(Duration::from_secs(10), "made-42")
        .unwrap_or_else(|seen| panic!("the command did not run: {seen:?}"));
    assert!(terminal.seen.contains("/dev/pts/"), "{:?}", terminal.seen);
    assert!(terminal.seen.contains("30 100"), "{:?}", terminal.seen);
    terminal.resize(41, 123);
    // The resize travels kubectl -> API server -> node API -> runc -> the container's terminal.
    let resized = (0..50).any(|_| {
        terminal.type_keys("stty size\r");
        std::thread::sleep(Duration::from_millis(100));
        terminal
            .read_until(Duration::from_millis(500), "41 123")
            .is_ok()
    });
    assert!(
        resized,
        "the container's terminal was not resized: {:?}",
        terminal.seen
    );
    terminal.type_keys("exit 5\r");
    assert_eq!(
        terminal.wait(Duration::from_secs(20)),
        Some(5),
        "{:?}",
        terminal.seen
    );

    // kubectl port-forward: SPDY tunnelled in WebSocket through the API server (kubectl
    // 1.32's default), then plain SPDY proxied as it is (its fallback); two connections each.
    for (env, local) in [
        (None, "18080"),
        (Some(("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")), "18081"),
    ] {
        let forward = background_kubectl(
            &node,
            &control_plane,
            env.as_slice(),
            &["port-forward", "pod/web", &format!("{local}:80")],
        );
        forward
            .read_until(Duration::from_secs(30), |line| {
                line.contains(&format!("Forwarding from 127.0.0.1:{local} -> 80"))
            })
            .unwrap_or_else(|seen| panic!("port-forward ({env:?}) did not start: {seen:?}"));
        for _ in 0..2 {
            assert_eq!(
                node.curl(&format!("http://127.0.0.1:{local}/")).as_deref(),
                Some("hello through port-forward\n"),
                "{env:?}; agent log:\n{}\ncontrol plane log:\n{}",
                node.agent_log(),
                control_plane.log()
            );
        }
    }

    // Nothing listens on port 81: kubelet's error comes back on the error stream.
    let refused = background_kubectl(
        &node,
        &control_plane,
        &[],
        &["port-forward", "pod/web", "18082:81"],
    );
    refused
        .read_until(Duration::from_secs(30), |line| {
            line.contains("Forwarding from 127.0.0.1:18082")
        })
        .unwrap_or_else(|seen| panic!("port-forward did not start: {seen:?}"));
    assert_eq!(node.curl("http://127.0.0.1:18082/"), None);
    refused
        .read_until(Duration::from_secs(30), |line| {
            line.contains("error forwarding port 81 to pod web_default")
                && line.contains("failed to connect to localhost:81")
        })
        .unwrap_or_else(|seen| panic!("no forwarding error: {seen:?}"));
    drop(refused);
    let no_container = control_plane.kubectl(&["exec", "web", "-c", "nope", "--", "true"]);
    assert!(
        stderr_of(&no_container).contains("container nope is not valid for pod web"),
        "{}",
        stderr_of(&no_container)
    );

    // The node API takes only clients with a certificate from the cluster CA.
    let anonymous = node
        .host
        .command("curl")
        .args([
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "https://198.18.63.1:10250/pods",
        ])
        .output()
        .unwrap();
    assert_eq!(stdout_of(&anonymous), "401");

    control_plane.kubectl_ok(&["delete", "pod", "web", "--timeout=60s"], None);
}
