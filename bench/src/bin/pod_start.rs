//! Pod start latency and the agent's memory, beside `runc run` of the same container in the
//! same run (the floor: what the OCI runtime alone costs).
//!
//! Run as root: `cargo build --release -p keel-agent -p keel-bench && ./target/release/pod-start
//! [PODS]`. It makes a test node (a network namespace) with a registry on its loopback, starts
//! `target/release/keel-agent` there with a static-pod directory, pulls the image once, then
//! writes PODS (default 50) pod manifests one after another and times each from the file
//! appearing to the container's first command running (the container touches a file on a
//! hostPath volume). The baseline runs the same busybox command with `runc run --detach` from
//! a prepared bundle, PODS times. Then the agent's RSS idle, with 10 and with 100 pods, and the
//! node's keeper process.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use keel_bench::{percentile, rss_kib};
use keel_testhost::registry::{ImageSpec, TestImage, TestRegistry};
use keel_testhost::{HostProcess, TestNet, require_root};

const NODE_IP: &str = "198.18.63.1";

fn kt_dir(tag: &str) -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix(&format!("kt-{tag}-"))
        .tempdir()?)
}

fn manifest(name: &str, image: &str, marks: &Path) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  \
         volumes: [{{name: marks, hostPath: {{path: {}}}}}]\n  containers:\n  - name: c\n    image: {image}\n    \
         command: [sh, -c, 'touch /marks/{name}; exec sleep 3600']\n    volumeMounts: [{{name: marks, mountPath: /marks}}]\n",
        marks.display()
    )
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

struct Bench {
    agent: Option<HostProcess>,
    root: tempfile::TempDir,
    manifests: tempfile::TempDir,
    marks: tempfile::TempDir,
    cgroup_root: String,
}

impl Bench {
    fn state(&self) -> PathBuf {
        self.root.path().join("state")
    }

    fn pods(&self) -> usize {
        std::fs::read_dir(self.state().join("pods")).map_or(0, |d| d.count())
    }

    fn write(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let temporary = self.manifests.path().join(format!(".{name}.tmp"));
        std::fs::write(&temporary, text)?;
        std::fs::rename(
            &temporary,
            self.manifests.path().join(format!("{name}.yaml")),
        )?;
        Ok(())
    }

    fn remove_all(&self) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(self.manifests.path())?.flatten() {
            std::fs::remove_file(entry.path())?;
        }
        wait_for("the pods to go", Duration::from_secs(300), || {
            self.pods() == 0
        })
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.remove_all();
        if let Some(mut agent) = self.agent.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(agent.pid() as libc::pid_t, libc::SIGTERM) };
            let _ = agent.child().wait();
        }
        let keeper = self.state().join("keeper");
        if let Some(pid) = keeper_pid(&keeper) {
            // SAFETY: kill takes plain integers.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let dir = hierarchy.path().join(&self.cgroup_root);
            let _ = Command::new("find")
                .arg(&dir)
                .args(["-depth", "-type", "d", "-delete"])
                .output();
        }
    }
}

fn keeper_pid(keeper_dir: &Path) -> Option<u32> {
    let wanted = keeper_dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            (args.len() >= 3 && args[1] == b"keeper" && args[2] == wanted.as_bytes())
                .then(|| entry.file_name().to_string_lossy().parse().ok())
                .flatten()
        })
}

fn print_latency(label: &str, samples: &mut [Duration], floor: Option<Duration>) {
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

/// `runc run --detach` of the same busybox command from a prepared bundle: the floor.
fn runc_baseline(count: usize, work: &Path) -> anyhow::Result<Vec<Duration>> {
    let bundle = work.join("bundle");
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin"))?;
    std::fs::create_dir_all(rootfs.join("marks"))?;
    std::fs::copy("/usr/bin/busybox", rootfs.join("bin/busybox"))?;
    for applet in ["sh", "touch", "sleep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
    }
    let marks = work.join("marks");
    std::fs::create_dir_all(&marks)?;
    let runc_root = work.join("runc");
    let mut samples = Vec::with_capacity(count);
    let mut ids = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        for n in 0..count {
            let id = format!("kt-bench-{}-{n}", std::process::id());
            let config = serde_json::json!({
                "ociVersion": "1.0.2",
                "process": {"user": {"uid": 0, "gid": 0}, "cwd": "/",
                    "args": ["sh", "-c", format!("touch /marks/{id}; exec sleep 3600")],
                    "env": ["PATH=/bin"]},
                "root": {"path": rootfs},
                "mounts": [
                    {"destination": "/proc", "type": "proc", "source": "proc"},
                    {"destination": "/marks", "type": "bind", "source": marks, "options": ["rbind", "rw"]}
                ],
                "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
                    "cgroupsPath": format!("/kt-bench-{}/{id}", std::process::id())}
            });
            std::fs::write(bundle.join("config.json"), serde_json::to_vec(&config)?)?;
            let started = Instant::now();
            let status = Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["run", "--detach", "--bundle"])
                .arg(&bundle)
                .arg(&id)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            ids.push(id.clone());
            if !status.success() {
                bail!("runc run {id} failed");
            }
            wait_for("the baseline container", Duration::from_secs(30), || {
                marks.join(&id).exists()
            })?;
            samples.push(started.elapsed());
        }
        Ok(())
    })();
    for id in &ids {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["delete", "--force", id])
            .output();
    }
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = hierarchy
            .path()
            .join(format!("kt-bench-{}", std::process::id()));
        let _ = Command::new("find")
            .arg(&dir)
            .args(["-depth", "-type", "d", "-delete"])
            .output();
    }
    result.map(|()| samples)
}

fn main() -> anyhow::Result<()> {
    require_root();
    let count: usize = std::env::args()
        .nth(1)
        .map_or(Ok(50), |a| a.parse())
        .context("PODS")?;
    let agent_path = std::env::current_exe()?
        .parent()
        .context("no directory")?
        .join("keel-agent");
    if !agent_path.exists() {
        bail!(
            "{} is missing: cargo build --release -p keel-agent",
            agent_path.display()
        );
    }
    let mut net = TestNet::new("podbench")?;
    let host = net.add_host("node")?;
    host.run(&["ip", "link", "set", "lo", "up"])?;
    host.run(&["ip", "addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"])?;
    let registry = TestRegistry::start_on(&host)?;
    let built = TestImage::busybox(&ImageSpec {
        cmd: vec!["sh".into()],
        ..ImageSpec::default()
    })?;
    let image = registry.push(&built, "busybox", "1")?;
    let run = keel_testhost::run::run_id()?;
    let mut bench = Bench {
        agent: None,
        root: kt_dir("podbench")?,
        manifests: kt_dir("podbench")?,
        marks: kt_dir("podbench")?,
        cgroup_root: format!("kt-{run}-podbench"),
    };
    let log = std::fs::File::create(bench.root.path().join("agent.log"))?;
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net=/run/netns/{}", host.netns()))
        .arg(&agent_path)
        .arg("--pod-manifest-path")
        .arg(bench.manifests.path())
        .arg("--root-dir")
        .arg(bench.state())
        .arg("--pod-logs-dir")
        .arg(bench.root.path().join("logs"))
        .args([
            "--pod-cidr",
            "198.18.64.0/22",
            "--node-name",
            "bench",
            "--node-ip",
            NODE_IP,
        ])
        .args([
            "--cgroup-root",
            &bench.cgroup_root,
            "--insecure-registry",
            &registry.host(),
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let agent = HostProcess::spawn(&mut command)?;
    let agent_pid = agent.pid();
    bench.agent = Some(agent);
    std::thread::sleep(Duration::from_secs(2));
    let idle = rss_kib(agent_pid)?;

    // The image is pulled once; every measured pod finds it present.
    let marks = bench.marks.path().to_owned();
    bench.write("warm", &manifest("warm", &image, &marks))?;
    wait_for("the warm-up pod", Duration::from_secs(120), || {
        marks.join("warm").exists()
    })?;
    bench.remove_all()?;

    println!("pod start, {count} pods one after another (image present):");
    let mut keel = Vec::with_capacity(count);
    let mut rss_10 = 0;
    for n in 0..count {
        let name = format!("p{n}");
        let started = Instant::now();
        bench.write(&name, &manifest(&name, &image, &marks))?;
        wait_for(&name, Duration::from_secs(60), || {
            marks.join(&name).exists()
        })?;
        keel.push(started.elapsed());
        if n + 1 == 10 {
            std::thread::sleep(Duration::from_secs(2));
            rss_10 = rss_kib(agent_pid)?;
        }
    }
    for n in count..100 {
        let name = format!("p{n}");
        bench.write(&name, &manifest(&name, &image, &marks))?;
    }
    wait_for("100 pods", Duration::from_secs(600), || {
        (0..100).all(|n| marks.join(format!("p{n}")).exists())
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let rss_100 = rss_kib(agent_pid)?;
    let keeper_rss = keeper_pid(&bench.state().join("keeper"))
        .map(rss_kib)
        .transpose()?
        .unwrap_or(0);
    bench.remove_all()?;

    let work = kt_dir("podbench-runc")?;
    let mut floor = runc_baseline(count, work.path())?;
    let floor_p50 = percentile(&mut floor, 0.5);
    print_latency("runc run --detach (floor)", &mut floor, None);
    print_latency(
        "keel-agent: manifest -> container running",
        &mut keel,
        Some(floor_p50),
    );
    println!("memory:");
    println!("  keel-agent RSS idle {:>8} KiB", idle);
    println!("  keel-agent RSS, 10 pods {:>4} KiB", rss_10);
    println!(
        "  keel-agent RSS, 100 pods {:>3} KiB ({:.0} KiB per pod over idle)",
        rss_100,
        (rss_100.saturating_sub(idle)) as f64 / 100.0
    );
    println!("  keeper RSS (one per node), 100 pods {keeper_rss} KiB; no process per pod");
    Ok(())
}
