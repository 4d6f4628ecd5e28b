//! `exec` probes in a real runc container: a busybox rootfs running `sleep 300`, under a runc
//! root of the test's own, deleted (`runc delete --force`) when the guard drops.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use keel_agent::probe::{ProbeKind, ProbeResult, run_probe};
use keel_agent::runtime::runc::Runc;
use keel_testhost::{require_root, require_tool};

use super::{errored, failure, probe, target};

/// A running runc container and everything it needs; dropping it deletes all of it.
struct TestContainer {
    runc: Runc,
    id: String,
    // Dropped after the container is deleted.
    _dir: tempfile::TempDir,
}

impl TestContainer {
    fn start() -> TestContainer {
        let dir = tempfile::Builder::new()
            .prefix("kt-probes-")
            .tempdir()
            .unwrap();
        let id = format!("kt-probes-{}", std::process::id());
        let runc = Runc::new(Path::new("/usr/sbin/runc"), &dir.path().join("root"));
        // The guard exists before runc does anything, so a failure below still cleans up.
        let container = TestContainer {
            runc,
            id,
            _dir: dir,
        };
        let bundle = container._dir.path().join("bundle");
        let bin = bundle.join("rootfs/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy("/usr/bin/busybox", bin.join("busybox")).unwrap();
        for applet in ["sh", "sleep"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        container.runc_ok(&["spec", "--bundle", bundle.to_str().unwrap()]);
        let config_path = bundle.join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
        config["process"]["terminal"] = false.into();
        config["process"]["args"] = serde_json::json!(["/bin/sleep", "300"]);
        config["process"]["env"] = serde_json::json!(["PATH=/bin"]);
        config["linux"]["cgroupsPath"] = format!("/{}", container.id).into();
        std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
        container.runc_ok(&[
            "run",
            "--detach",
            "--bundle",
            bundle.to_str().unwrap(),
            &container.id,
        ]);
        container
    }

    /// Runs runc with its output in files: a detached container inherits them, and would
    /// hold pipes open for its whole life.
    fn runc_ok(&self, args: &[&str]) -> String {
        let stdout_path = self._dir.path().join("runc.out");
        let stderr_path = self._dir.path().join("runc.err");
        let status = Command::new(&self.runc.binary)
            .arg("--root")
            .arg(&self.runc.root)
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .status()
            .expect("run runc");
        assert!(
            status.success(),
            "runc {args:?}: {}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        std::fs::read_to_string(&stdout_path).unwrap()
    }

    /// The pids in the container's cgroup.
    fn pids(&self) -> Vec<i64> {
        serde_json::from_str(&self.runc_ok(&["ps", "--format", "json", &self.id])).unwrap()
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        if let Err(error) = self.runc.delete(&self.id, true) {
            eprintln!("probes test: cannot delete container {}: {error}", self.id);
        }
    }
}

#[tokio::test]
async fn exec_probes_run_in_the_container_and_time_out() {
    require_root();
    require_tool("runc", "runc");
    require_tool("busybox", "busybox-static");
    let container = TestContainer::start();
    let target = target(
        std::net::Ipv4Addr::LOCALHOST,
        &container.id,
        container.runc.clone(),
    );
    let run = |yaml: &str| {
        let spec = probe(yaml);
        let target = target.clone();
        async move { run_probe(ProbeKind::Liveness, &spec, &target).await }
    };
    let before = container.pids();
    assert_eq!(before.len(), 1, "only sleep 300 runs: {before:?}");

    assert_eq!(
        run("{exec: {command: [sh, -c, 'exit 0']}}").await,
        ProbeResult::Success
    );
    assert_eq!(
        failure(run("{exec: {command: [sh, -c, 'exit 1']}}").await),
        ""
    );
    assert_eq!(
        failure(run("{exec: {command: [sh, -c, 'echo not yet; exit $(CODE)']}}").await),
        "not yet\n",
        "the output is the failure's text; $(CODE) expands from the container's env"
    );
    assert_eq!(
        failure(run("{exec: {command: [sleep, '30']}, timeoutSeconds: 1}").await),
        "command \"sleep 30\" timed out"
    );
    // The timed-out command was killed, not left running in the container (it would run for
    // 30 s; this waits 5 s at most).
    let mut after = container.pids();
    for _ in 0..50 {
        if after == before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = container.pids();
    }
    assert_eq!(after, before, "the timed-out exec is gone");

    let mut missing = target.clone();
    missing.container_id = format!("{}-missing", container.id);
    let spec = probe("{exec: {command: [sh, -c, 'exit 0']}}");
    let text = errored(run_probe(ProbeKind::Liveness, &spec, &missing).await);
    assert!(text.starts_with("cannot exec in container"), "{text}");
}
