//! The floor of pod start: `runc run --detach` of the same busybox command the pods run, from a
//! prepared bundle, timed to the container's first command (it touches a file), one after
//! another or many at once. Containers and their cgroups are removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use crate::percentile;

/// Busybox containers started with runc under a work directory of the caller's.
#[derive(Debug)]
pub struct RuncFloor {
    work: PathBuf,
    rootfs: PathBuf,
    marks: PathBuf,
    runc_root: PathBuf,
    /// `kt-bench-<pid>`: the containers' names and cgroup parent start with it.
    prefix: String,
    next: AtomicUsize,
    started: Mutex<Vec<String>>,
}

impl RuncFloor {
    /// Prepares the shared rootfs (the host's static busybox) under `work`.
    pub fn new(work: &Path) -> anyhow::Result<RuncFloor> {
        let rootfs = work.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin"))?;
        std::fs::create_dir_all(rootfs.join("marks"))?;
        std::fs::copy("/usr/bin/busybox", rootfs.join("bin/busybox"))
            .context("cannot copy /usr/bin/busybox (Debian package busybox-static)")?;
        for applet in ["sh", "touch", "sleep"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
        }
        let marks = work.join("marks");
        std::fs::create_dir_all(&marks)?;
        Ok(RuncFloor {
            work: work.to_owned(),
            rootfs,
            marks,
            runc_root: work.join("runc"),
            prefix: format!("kt-bench-{}", std::process::id()),
            next: AtomicUsize::new(0),
            started: Mutex::new(Vec::new()),
        })
    }

    /// Starts one container; the time from `runc run` to its command running.
    fn start_one(&self) -> anyhow::Result<Duration> {
        let id = format!(
            "{}-{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let bundle = self.work.join("bundles").join(&id);
        std::fs::create_dir_all(&bundle)?;
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"user": {"uid": 0, "gid": 0}, "cwd": "/",
                "args": ["sh", "-c", format!("touch /marks/{id}; exec sleep 3600")],
                "env": ["PATH=/bin"]},
            "root": {"path": self.rootfs},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/marks", "type": "bind", "source": self.marks, "options": ["rbind", "rw"]}
            ],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
                "cgroupsPath": format!("/{}/{id}", self.prefix)}
        });
        std::fs::write(bundle.join("config.json"), serde_json::to_vec(&config)?)?;
        let started = Instant::now();
        // A file, not a pipe: the detached container inherits runc's stdio and would hold a
        // pipe open.
        let errors = bundle.join("runc.stderr");
        let status = Command::new("runc")
            .arg("--root")
            .arg(&self.runc_root)
            .args(["run", "--detach", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&errors)?)
            .status()
            .context("cannot run runc")?;
        self.started.lock().expect("not poisoned").push(id.clone());
        if !status.success() {
            bail!(
                "runc run {id} failed: {}",
                std::fs::read_to_string(&errors).unwrap_or_default().trim()
            );
        }
        let mark = self.marks.join(&id);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !mark.exists() {
            ensure!(
                Instant::now() < deadline,
                "container {id} never ran its command"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(started.elapsed())
    }

    /// `count` containers one after another: each one's start.
    pub fn sequential(&self, count: usize) -> anyhow::Result<Vec<Duration>> {
        (0..count).map(|_| self.start_one()).collect()
    }

    /// `count` containers started at once: each one's start, and the time until all run.
    pub fn concurrent(&self, count: usize) -> anyhow::Result<(Vec<Duration>, Duration)> {
        let started = Instant::now();
        let samples = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..count)
                .map(|_| scope.spawn(|| self.start_one()))
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().expect("a runc thread"))
                .collect::<anyhow::Result<Vec<Duration>>>()
        })?;
        Ok((samples, started.elapsed()))
    }
}

impl Drop for RuncFloor {
    fn drop(&mut self) {
        for id in self.started.lock().expect("not poisoned").iter() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&self.runc_root)
                .args(["delete", "--force", id])
                .output();
        }
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = Command::new("find")
                .arg(hierarchy.path().join(&self.prefix))
                .args(["-depth", "-type", "d", "-delete"])
                .output();
        }
    }
}

/// Prints `label`'s p50 / p99 (sorting `samples`), and the p50's ratio to `floor`'s p50.
pub fn print_latency(label: &str, samples: &mut [Duration], floor: Option<Duration>) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (p50, p99) = (percentile(samples, 0.5), percentile(samples, 0.99));
    let ratio = floor.map_or(String::new(), |f| {
        format!("   {:.2}x the runc p50", ms(p50) / ms(f).max(1e-9))
    });
    println!(
        "  {label:<40} p50 {:>8.1} ms   p99 {:>8.1} ms{ratio}",
        ms(p50),
        ms(p99)
    );
}
