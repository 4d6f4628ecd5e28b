//! What every pod worker of this node shares: paths, the cgroup manager, IPAM, the image store,
//! the keeper and runc, and the node's facts.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::cgroups::CgroupManager;
use crate::image::ImageStore;
use crate::runtime::keeper::Keeper;
use crate::runtime::logs::Rotation;
use crate::runtime::runc::Runc;
use crate::sandbox::Ipam;

pub struct NodeContext {
    /// `--root-dir`: pods, netns, images, runc state.
    pub root_dir: PathBuf,
    pub node_name: String,
    pub host_ip: Option<Ipv4Addr>,
    /// `/var/log/pods` (kubelet's `podLogsDir`).
    pub pod_logs_dir: PathBuf,
    pub cgroups: CgroupManager,
    pub ipam: Ipam,
    pub images: ImageStore,
    pub keeper: Keeper,
    pub runc: Runc,
    /// Bytes of memory on the node (for Burstable containers' `oom_score_adj`).
    pub memory_capacity: i64,
    /// `--pod-max-pids`: the pids limit of each pod cgroup.
    pub pod_max_pids: Option<i64>,
    pub log_rotation: Rotation,
    /// Where pod events go (the API server's Events); `None`: they are logged.
    pub events: Option<super::events::EventSink>,
    /// The API server, when the agent has one.
    pub client: Option<kube::Client>,
    /// Notified when a worker publishes a changed pod status (it is written to the API at
    /// once, not at the next resync).
    pub status_changed: std::sync::Arc<tokio::sync::Notify>,
    /// `--cluster-dns` and `--cluster-domain`: what pods with `ClusterFirst` are told to ask.
    pub cluster_dns: Option<super::dns::ClusterDns>,
}

impl std::fmt::Debug for NodeContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeContext")
            .field("root_dir", &self.root_dir)
            .field("node_name", &self.node_name)
            .field("host_ip", &self.host_ip)
            .field("cgroups", &self.cgroups)
            .field("ipam", &self.ipam)
            .field("api", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

impl NodeContext {
    pub fn netns_path(&self, uid: &str) -> PathBuf {
        self.root_dir.join("netns").join(uid)
    }

    /// The pod's IPC namespace, shared by its containers.
    pub fn ipcns_path(&self, uid: &str) -> PathBuf {
        self.root_dir.join("ipcns").join(uid)
    }

    /// `<podLogsDir>/<namespace>_<name>_<uid>`.
    pub fn pod_log_dir(&self, namespace: &str, name: &str, uid: &str) -> PathBuf {
        self.pod_logs_dir.join(format!("{namespace}_{name}_{uid}"))
    }
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
pub fn memory_capacity(meminfo: &str) -> Option<i64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A new container ID: 64 hex digits from the kernel's random source, as containerd makes them.
pub fn new_container_id() -> String {
    let mut bytes = [0_u8; 32];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let filled = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    assert_eq!(filled, 32, "getrandom failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_ids() {
        assert_eq!(
            memory_capacity("MemTotal:       16384 kB\nMemFree: 1 kB\n"),
            Some(16 << 20)
        );
        let id = new_container_id();
        assert_eq!(id.len(), 64);
        assert_ne!(id, new_container_id());
    }
}
