//! Which cgroup hierarchies this host has (unified, hybrid or legacy), read from
//! `/proc/self/mountinfo`, and where each controller lives.

use std::path::{Path, PathBuf};

/// The three ways a Linux host mounts cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// cgroup v2 only, at the cgroup root (`/sys/fs/cgroup`).
    Unified,
    /// v1 hierarchies hold the controllers; a cgroup2 hierarchy without controllers beside them
    /// (`/sys/fs/cgroup/unified`).
    Hybrid,
    /// v1 hierarchies only.
    Legacy,
}

/// The mounted hierarchies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchies {
    pub mode: CgroupMode,
    /// v1 hierarchies: the controllers each holds and its mount point.
    pub v1: Vec<(Vec<String>, PathBuf)>,
    /// The cgroup2 mount, if any.
    pub unified: Option<PathBuf>,
    /// v1 hierarchies without controllers (`name=systemd`): the agent writes nothing there,
    /// but runc puts containers in them too, so they are cleaned like the others.
    pub named: Vec<PathBuf>,
}

/// The v1 controllers whose pod-level files the agent writes.
pub const V1_RESOURCE_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

impl Hierarchies {
    /// Reads the hierarchies from a `/proc/self/mountinfo` text.
    pub fn from_mountinfo(mountinfo: &str) -> Option<Hierarchies> {
        let mut v1 = Vec::new();
        let mut named = Vec::new();
        let mut unified = None;
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount_point) = left.split(' ').nth(4) else {
                continue;
            };
            let mut right = right.split(' ');
            let (Some(fstype), _, Some(options)) = (right.next(), right.next(), right.next())
            else {
                continue;
            };
            match fstype {
                "cgroup2" => unified = Some(PathBuf::from(mount_point)),
                "cgroup" => {
                    let controllers: Vec<String> = options
                        .split(',')
                        .filter(|option| {
                            !matches!(*option, "rw" | "ro")
                                && !option.contains('=')
                                && !option.starts_with("no")
                                && *option != "xattr"
                                && *option != "clone_children"
                        })
                        .map(str::to_owned)
                        .collect();
                    if !controllers.is_empty() {
                        v1.push((controllers, PathBuf::from(mount_point)));
                    } else if options.split(',').any(|option| option.starts_with("name=")) {
                        named.push(PathBuf::from(mount_point));
                    }
                }
                _ => {}
            }
        }
        let mode = match (v1.is_empty(), &unified) {
            (true, Some(_)) => CgroupMode::Unified,
            (true, None) => return None,
            (false, Some(_)) => CgroupMode::Hybrid,
            (false, None) => CgroupMode::Legacy,
        };
        Some(Hierarchies {
            mode,
            v1,
            unified,
            named,
        })
    }

    /// The mount point of the v1 hierarchy holding `controller`.
    pub fn v1_mount(&self, controller: &str) -> Option<&Path> {
        self.v1
            .iter()
            .find(|(controllers, _)| controllers.iter().any(|c| c == controller))
            .map(|(_, mount)| mount.as_path())
    }

    /// Every mount point a cgroup path may exist under: each v1 hierarchy, named ones
    /// included, and the cgroup2 one.
    pub fn all_mounts(&self) -> impl Iterator<Item = &Path> {
        self.v1
            .iter()
            .map(|(_, mount)| mount.as_path())
            .chain(self.named.iter().map(PathBuf::as_path))
            .chain(self.unified.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 24 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:14 - cgroup cgroup rw,cpu,cpuacct
31 25 0:29 / /sys/fs/cgroup/memory rw,nosuid shared:15 - cgroup cgroup rw,memory
32 25 0:30 / /sys/fs/cgroup/pids rw,nosuid shared:16 - cgroup cgroup rw,pids
";

    #[test]
    fn hybrid_hosts_are_recognised() {
        let found = Hierarchies::from_mountinfo(HYBRID).unwrap();
        assert_eq!(found.mode, CgroupMode::Hybrid);
        assert_eq!(
            found.v1_mount("cpuacct"),
            Some(Path::new("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(
            found.v1_mount("memory"),
            Some(Path::new("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            found.v1_mount("systemd"),
            None,
            "named hierarchies hold no controller"
        );
        assert_eq!(
            found.unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        assert_eq!(found.named, [Path::new("/sys/fs/cgroup/systemd")]);
        assert_eq!(found.all_mounts().count(), 5);
    }

    #[test]
    fn unified_and_legacy_hosts_are_recognised() {
        let unified =
            "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        let found = Hierarchies::from_mountinfo(unified).unwrap();
        assert_eq!(found.mode, CgroupMode::Unified);
        assert!(found.v1.is_empty());

        let legacy: String = HYBRID
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            Hierarchies::from_mountinfo(&legacy).unwrap().mode,
            CgroupMode::Legacy
        );
        assert_eq!(Hierarchies::from_mountinfo(""), None);
    }
}
