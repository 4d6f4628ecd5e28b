//! `keel-agent --services-file` end to end: the real agent binary load-balances a ClusterIP
//! for the processes of a cgroup2 group, follows edits of the file, keeps serving through a
//! bad edit, leaves the dataplane pinned when stopped, and `--cleanup-bpf` detaches it.
//! Needs root.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keel_testhost::{Host, HostProcess, TestBpffs, TestCgroup, require_root, require_tool};
use support::servers::{BACKEND_PORT, ServiceHosts, VIP, answer, nc_to_vip};

/// A temp dir of the test's, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `web` Service on VIP:80 and its EndpointSlice, with `ready[i]` the readiness of the
/// backend at `backends[i]`.
fn services_yaml(backends: &[SocketAddrV4], ready: &[bool]) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  clusterIP: {VIP}\n  \
         ports:\n  - {{name: http, port: 80, targetPort: http}}\n---\napiVersion: discovery.k8s.io/v1\n\
         kind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: web}}\n\
         addressType: IPv4\nports:\n- {{name: http, port: {BACKEND_PORT}, protocol: TCP}}\nendpoints:\n"
    );
    for (backend, ready) in backends.iter().zip(ready) {
        yaml.push_str(&format!(
            "- addresses: [{}]\n  conditions: {{ready: {ready}}}\n",
            backend.ip()
        ));
    }
    yaml
}

/// Waits until `rounds` connections in a row answer from exactly `expected`.
fn wait_for_answers(client: &Host, cgroup: &TestCgroup, expected: &[&str], rounds: usize) {
    let expected: BTreeSet<String> = expected.iter().map(|name| (*name).to_owned()).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut seen = BTreeSet::new();
        let mut all_expected = true;
        for _ in 0..rounds {
            let output = nc_to_vip(client, Some(cgroup));
            let name = if output.status.success() {
                answer(&output)
            } else {
                String::new()
            };
            all_expected &= expected.contains(&name);
            seen.insert(name);
        }
        if all_expected && seen == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "answers {seen:?}, waiting for {expected:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn write_atomically(path: &Path, text: &str) {
    let staging = path.with_extension("new");
    std::fs::write(&staging, text).unwrap();
    std::fs::rename(staging, path).unwrap();
}

#[test]
fn the_agent_load_balances_a_services_file_and_follows_its_edits() {
    require_root();
    require_tool("busybox", "busybox-static");
    let hosts = ServiceHosts::new("svcfile", 3);
    let (client, backends) = (&hosts.client, &hosts.backends);
    let cgroup = TestCgroup::new().unwrap();
    let bpffs = TestBpffs::new().unwrap();
    let bpf_root = bpffs.path().join("keel");
    let dir = TempDir(std::env::temp_dir().join(format!("keel-agent-test-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let file = dir.0.join("services.yaml");
    let log_path = dir.0.join("agent.log");
    write_atomically(&file, &services_yaml(backends, &[true, true, false]));

    let log = std::fs::File::create(&log_path).unwrap();
    let mut agent_command = Command::new(env!("CARGO_BIN_EXE_keel-agent"));
    agent_command
        .args([
            "--services-file",
            file.to_str().unwrap(),
            "--socket-lb-cgroup",
            cgroup.path().to_str().unwrap(),
            "--bpf-root",
            bpf_root.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(log);
    let mut agent = HostProcess::spawn(&mut agent_command).unwrap();

    // backend3 is not ready: never chosen.
    wait_for_answers(client, &cgroup, &["backend1", "backend2"], 20);

    // backend1 goes, backend3 becomes ready.
    write_atomically(&file, &services_yaml(&backends[1..], &[true, true]));
    wait_for_answers(client, &cgroup, &["backend2", "backend3"], 20);

    // A bad edit is reported, naming the file and the document, and changes nothing.
    write_atomically(&file, "apiVersion: v1\nkind: Service\nspec: {ports: 7}\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    let log_text = loop {
        let text = std::fs::read_to_string(&log_path).unwrap();
        if text.contains("document 1") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        log_text.contains(&format!("services file {}, document 1", file.display())),
        "agent log:\n{log_text}"
    );
    wait_for_answers(client, &cgroup, &["backend2", "backend3"], 10);

    // Stopped, the agent leaves its dataplane pinned: the VIP still leads to the backends.
    // SAFETY: signalling our own child, not yet reaped.
    unsafe { libc::kill(agent.pid() as libc::pid_t, libc::SIGTERM) };
    let status = agent.child().wait().unwrap();
    assert!(
        status.success(),
        "the agent exited with {status}; log:\n{}",
        std::fs::read_to_string(&log_path).unwrap()
    );
    wait_for_answers(client, &cgroup, &["backend2", "backend3"], 10);

    // --cleanup-bpf removes every pin: the programs detach, the VIP is unreachable again.
    let cleanup = Command::new(env!("CARGO_BIN_EXE_keel-agent"))
        .args(["--cleanup-bpf", "--bpf-root", bpf_root.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        cleanup.status.success(),
        "--cleanup-bpf: {}",
        String::from_utf8_lossy(&cleanup.stderr)
    );
    assert!(!bpf_root.exists(), "{:?}", bpffs.pins_under(&bpf_root));
    // The kernel frees an unpinned link after an RCU grace period: poll.
    let deadline = Instant::now() + Duration::from_secs(10);
    while nc_to_vip(client, Some(&cgroup)).status.success() {
        assert!(Instant::now() < deadline, "the VIP still answers");
        std::thread::sleep(Duration::from_millis(100));
    }
}
