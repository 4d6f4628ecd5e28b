//! Pod cgroups in upstream's layout (kubelet's cgroupfs driver): `<root>/kubepods/pod<uid>` for
//! Guaranteed pods, `<root>/kubepods/burstable/pod<uid>` and `.../besteffort/pod<uid>` for the
//! others, each container's cgroup below its pod's (made by runc from the OCI spec). Works on
//! unified, hybrid and legacy hosts ([`layout`]); values as kubelet computes them
//! ([`resources`]). Every path is under the mount points of a [`Hierarchies`], so tests run
//! the same code on a temporary directory.

pub mod layout;
pub mod resources;

use std::io;
use std::path::{Path, PathBuf};

pub use layout::{CgroupMode, Hierarchies};
pub use resources::{CgroupResources, ContainerResources, QosClass};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup hierarchy is mounted (read /proc/self/mountinfo)")]
    NoHierarchy,
    #[error("cannot read /proc/self/mountinfo")]
    Mountinfo(#[source] io::Error),
    #[error("cgroup {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Creates, sizes and removes pod cgroups.
#[derive(Debug, Clone)]
pub struct CgroupManager {
    hierarchies: Hierarchies,
    /// The cgroup the `kubepods` tree goes under (kubelet's `--cgroup-root`), e.g. `/`.
    root: String,
}

impl CgroupManager {
    /// The host's hierarchies, pods under `root`.
    pub fn detect(root: &str) -> Result<CgroupManager, CgroupError> {
        let mountinfo =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::Mountinfo)?;
        let hierarchies =
            Hierarchies::from_mountinfo(&mountinfo).ok_or(CgroupError::NoHierarchy)?;
        Ok(CgroupManager::new(hierarchies, root))
    }

    pub fn new(hierarchies: Hierarchies, root: &str) -> CgroupManager {
        let root = format!("/{}", root.trim_matches('/'));
        CgroupManager { hierarchies, root }
    }

    pub fn mode(&self) -> CgroupMode {
        self.hierarchies.mode
    }

    pub fn hierarchies(&self) -> &Hierarchies {
        &self.hierarchies
    }

    /// The `kubepods` cgroup path.
    pub fn kubepods(&self) -> String {
        join(&self.root, "kubepods")
    }

    /// A pod's cgroup path (relative to each hierarchy's mount point).
    pub fn pod_path(&self, qos: QosClass, pod_uid: &str) -> String {
        let parent = match qos {
            QosClass::Guaranteed => self.kubepods(),
            QosClass::Burstable => join(&self.kubepods(), "burstable"),
            QosClass::BestEffort => join(&self.kubepods(), "besteffort"),
        };
        join(&parent, &format!("pod{pod_uid}"))
    }

    /// The directory of cgroup `path` in the hierarchy that holds `controller` (v1) or in the
    /// unified one.
    pub fn dir(&self, controller: &str, path: &str) -> Option<PathBuf> {
        let mount = match self.hierarchies.mode {
            CgroupMode::Unified => self.hierarchies.unified.as_deref()?,
            _ => self.hierarchies.v1_mount(controller)?,
        };
        Some(mount.join(path.trim_start_matches('/')))
    }

    /// Creates the pod's cgroup (and its parents) and writes its limits. Idempotent.
    pub fn ensure_pod(&self, path: &str, values: &CgroupResources) -> Result<(), CgroupError> {
        match self.hierarchies.mode {
            CgroupMode::Unified => self.ensure_v2(path, values),
            CgroupMode::Hybrid | CgroupMode::Legacy => self.ensure_v1(path, values),
        }
    }

    fn ensure_v1(&self, path: &str, values: &CgroupResources) -> Result<(), CgroupError> {
        for controller in layout::V1_RESOURCE_CONTROLLERS {
            let Some(dir) = self.dir(controller, path) else {
                continue;
            };
            create_dir_all(&dir)?;
            match controller {
                "cpu" => {
                    write(&dir, "cpu.shares", &values.cpu_shares.to_string())?;
                    write(
                        &dir,
                        "cpu.cfs_period_us",
                        &resources::CPU_PERIOD_US.to_string(),
                    )?;
                    write(
                        &dir,
                        "cpu.cfs_quota_us",
                        &values.cpu_quota_us.unwrap_or(-1).to_string(),
                    )?;
                }
                "memory" => write(
                    &dir,
                    "memory.limit_in_bytes",
                    &values.memory_limit.unwrap_or(-1).to_string(),
                )?,
                "pids" => write(&dir, "pids.max", &limit_or_max(values.pids_limit))?,
                _ => {}
            }
        }
        Ok(())
    }

    fn ensure_v2(&self, path: &str, values: &CgroupResources) -> Result<(), CgroupError> {
        let Some(mount) = self.hierarchies.unified.as_deref() else {
            return Err(CgroupError::NoHierarchy);
        };
        // Each level must hand the controllers down to the next one (no internal processes
        // live in these cgroups, so enabling them is allowed).
        let mut dir = mount.to_owned();
        for component in path.trim_start_matches('/').split('/') {
            enable_v2_controllers(&dir)?;
            dir.push(component);
            create_dir_all(&dir)?;
        }
        enable_v2_controllers(&dir)?;
        let weight = resources::shares_to_weight(values.cpu_shares);
        write(&dir, "cpu.weight", &weight.to_string())?;
        let quota = values
            .cpu_quota_us
            .map_or_else(|| "max".to_owned(), |q| q.to_string());
        write(
            &dir,
            "cpu.max",
            &format!("{quota} {}", resources::CPU_PERIOD_US),
        )?;
        write(&dir, "memory.max", &limit_or_max(values.memory_limit))?;
        write(&dir, "pids.max", &limit_or_max(values.pids_limit))
    }

    /// Removes the pod's cgroup, and any container cgroup left below it, from every
    /// hierarchy. Idempotent; fails (EBUSY) while a process still lives in one.
    pub fn remove_pod(&self, path: &str) -> Result<(), CgroupError> {
        for mount in self.hierarchies.all_mounts() {
            remove_tree(&mount.join(path.trim_start_matches('/')))?;
        }
        Ok(())
    }

    /// How many times the kernel's OOM killer killed a process in cgroup `path` (v1:
    /// `memory.oom_control`, v2: `memory.events`); 0 when unknown.
    pub fn oom_kills(&self, path: &str) -> u64 {
        let file = match self.hierarchies.mode {
            CgroupMode::Unified => "memory.events",
            _ => "memory.oom_control",
        };
        self.dir("memory", path)
            .and_then(|dir| std::fs::read_to_string(dir.join(file)).ok())
            .and_then(|text| {
                text.lines()
                    .find_map(|line| line.strip_prefix("oom_kill ")?.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Whether the pod's cgroup exists in any hierarchy.
    pub fn pod_exists(&self, path: &str) -> bool {
        self.hierarchies
            .all_mounts()
            .any(|mount| mount.join(path.trim_start_matches('/')).exists())
    }
}

fn join(parent: &str, child: &str) -> String {
    format!("{}/{child}", parent.trim_end_matches('/'))
}

fn limit_or_max(limit: Option<i64>) -> String {
    limit.map_or_else(|| "max".to_owned(), |l| l.to_string())
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

fn create_dir_all(dir: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(io_error(&path))
}

fn enable_v2_controllers(dir: &Path) -> Result<(), CgroupError> {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let wanted: Vec<String> = ["cpu", "memory", "pids"]
        .into_iter()
        .filter(|c| available.split_whitespace().any(|a| a == *c))
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    write(dir, "cgroup.subtree_control", &wanted.join(" "))
}

/// rmdir, children first. cgroupfs directories hold only kernel files, which rmdir ignores;
/// on a plain directory (tests) the files are removed first.
fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(io_error(dir)(error)),
    };
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        let file_type = entry.file_type().map_err(io_error(dir))?;
        if file_type.is_dir() {
            remove_tree(&entry.path())?;
        } else if !is_cgroupfs(dir) {
            std::fs::remove_file(entry.path()).map_err(io_error(&entry.path()))?;
        }
    }
    match std::fs::remove_dir(dir) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(io_error(dir)(error)),
        _ => Ok(()),
    }
}

fn is_cgroupfs(dir: &Path) -> bool {
    const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let Ok(c_dir) = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()))
    else {
        return false;
    };
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c_dir` is NUL-terminated; statfs writes into `stat` only on success.
    if unsafe { libc::statfs(c_dir.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: statfs returned 0, so it initialised `stat`.
    let magic = unsafe { stat.assume_init() }.f_type;
    magic == CGROUP_SUPER_MAGIC || magic == CGROUP2_SUPER_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(mode: CgroupMode, dir: &Path) -> Hierarchies {
        let v1 = match mode {
            CgroupMode::Unified => vec![],
            _ => ["cpu,cpuacct", "memory", "pids"]
                .into_iter()
                .map(|name| {
                    let controllers = name.split(',').map(str::to_owned).collect();
                    (controllers, dir.join(name))
                })
                .collect(),
        };
        let unified = match mode {
            CgroupMode::Legacy => None,
            CgroupMode::Hybrid => Some(dir.join("unified")),
            CgroupMode::Unified => Some(dir.to_owned()),
        };
        let named = match mode {
            CgroupMode::Unified => vec![],
            _ => vec![dir.join("systemd")],
        };
        Hierarchies {
            mode,
            v1,
            unified,
            named,
        }
    }

    const VALUES: CgroupResources = CgroupResources {
        cpu_shares: 512,
        cpu_quota_us: Some(50_000),
        memory_limit: Some(64 << 20),
        pids_limit: None,
    };

    fn read(path: PathBuf) -> String {
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn v1_layout_and_files() {
        let tmp = tempfile::tempdir().unwrap();
        let cgroups = CgroupManager::new(fixture(CgroupMode::Hybrid, tmp.path()), "/kt-x/");
        let path = cgroups.pod_path(QosClass::Burstable, "u1");
        assert_eq!(path, "/kt-x/kubepods/burstable/podu1");
        assert_eq!(
            cgroups.pod_path(QosClass::Guaranteed, "u1"),
            "/kt-x/kubepods/podu1"
        );
        cgroups.ensure_pod(&path, &VALUES).unwrap();
        let cpu = tmp.path().join("cpu,cpuacct/kt-x/kubepods/burstable/podu1");
        assert_eq!(read(cpu.join("cpu.shares")), "512");
        assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "50000");
        let memory = tmp.path().join("memory/kt-x/kubepods/burstable/podu1");
        assert_eq!(
            read(memory.join("memory.limit_in_bytes")),
            (64 << 20).to_string()
        );
        assert_eq!(
            read(
                tmp.path()
                    .join("pids/kt-x/kubepods/burstable/podu1/pids.max")
            ),
            "max"
        );
        assert!(cgroups.pod_exists(&path));
        // runc also puts the containers in the named `systemd` hierarchy: those go too.
        let systemd = tmp.path().join("systemd/kt-x/kubepods/burstable/podu1/ctr");
        std::fs::create_dir_all(&systemd).unwrap();
        cgroups.remove_pod(&path).unwrap();
        assert!(!cgroups.pod_exists(&path));
        assert!(
            !tmp.path()
                .join("systemd/kt-x/kubepods/burstable/podu1")
                .exists()
        );
        cgroups.remove_pod(&path).unwrap();
    }

    #[test]
    fn v2_layout_and_files() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids",
        )
        .unwrap();
        let cgroups = CgroupManager::new(fixture(CgroupMode::Unified, tmp.path()), "/");
        let path = cgroups.pod_path(QosClass::Guaranteed, "u2");
        assert_eq!(path, "/kubepods/podu2");
        cgroups.ensure_pod(&path, &VALUES).unwrap();
        assert_eq!(
            read(tmp.path().join("cgroup.subtree_control")),
            "+cpu +memory +pids"
        );
        let pod = tmp.path().join("kubepods/podu2");
        assert_eq!(read(pod.join("cpu.weight")), "20");
        assert_eq!(read(pod.join("cpu.max")), "50000 100000");
        assert_eq!(read(pod.join("memory.max")), (64 << 20).to_string());
        assert_eq!(read(pod.join("pids.max")), "max");
        cgroups.remove_pod(&path).unwrap();
        assert!(!pod.exists());
    }
}
