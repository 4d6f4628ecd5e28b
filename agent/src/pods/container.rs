//! One container instance's life on disk and in runc: prepare its bundle (rootfs, FIFOs,
//! `config.json`), have the keeper create it, start it, and remove it again. Blocking calls:
//! the pod worker runs them on Tokio's blocking pool.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::cgroups::{ContainerResources, QosClass, resources};
use crate::image::{Image, ImageError};
use crate::runtime::bundle::{self, BindMount, BundleError, ImageDefaults};
use crate::runtime::keeper::{CreateRequest, KeeperError};
use crate::runtime::logs;
use crate::runtime::runc::RuncError;

use super::node::{NodeContext, new_container_id};
use super::record::PodDir;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Keeper(#[from] KeeperError),
    #[error(transparent)]
    Runc(#[from] RuncError),
    #[error("container {container}: {message}")]
    Invalid { container: String, message: String },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Everything one instance is made from.
#[derive(Debug)]
pub struct Launch<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub image: &'a Image,
    pub pod_dir: &'a PodDir,
    pub netns: Option<PathBuf>,
    pub ipcns: Option<PathBuf>,
    pub pod_cgroup: String,
    pub qos: QosClass,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<BindMount>,
}

/// A prepared, not yet created instance.
#[derive(Debug)]
pub struct Prepared {
    pub id: String,
    pub dir: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ContainerError + '_ {
    move |source| ContainerError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The cgroup path of a container: below its pod's.
pub fn cgroup_path(pod_cgroup: &str, id: &str) -> String {
    format!("{pod_cgroup}/{id}")
}

/// Makes the bundle: rootfs (overlay on the image's snapshots), stdout/stderr FIFOs,
/// `config.json`.
pub fn prepare(ctx: &NodeContext, launch: &Launch<'_>) -> Result<Prepared, ContainerError> {
    let id = new_container_id();
    let dir = launch.pod_dir.container_dir(&id);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let prepared = Prepared {
        stdout: dir.join("stdout"),
        stderr: dir.join("stderr"),
        dir,
        id,
    };
    let result = (|| {
        let rootfs = ctx.images.mount_rootfs(launch.image, &prepared.dir)?;
        logs::make_fifo(&prepared.stdout).map_err(io(&prepared.stdout))?;
        logs::make_fifo(&prepared.stderr).map_err(io(&prepared.stderr))?;
        let container = launch.container;
        let parsed = ContainerResources::of(container.resources.as_ref()).map_err(|e| {
            ContainerError::Invalid {
                container: container.name.clone(),
                message: e.to_string(),
            }
        })?;
        let config = &launch.image.config;
        let image = ImageDefaults {
            entrypoint: config.entrypoint.clone(),
            cmd: config.cmd.clone(),
            env: config.env.clone(),
            working_dir: config.working_dir.clone(),
            user: config.user.clone(),
        };
        let input = bundle::BundleInput {
            container,
            image: &image,
            env: launch.env.clone(),
            rootfs,
            hostname: launch.pod.metadata.name.clone().unwrap_or_default(),
            netns: launch.netns.clone(),
            ipcns: launch.ipcns.clone(),
            cgroups_path: cgroup_path(&launch.pod_cgroup, &prepared.id),
            resources: parsed.cgroup(),
            oom_score_adj: resources::oom_score_adj(
                launch.qos,
                parsed.memory_request,
                ctx.memory_capacity,
            ),
            mounts: launch.mounts.clone(),
        };
        bundle::write(&prepared.dir, &bundle::spec(&input)?)?;
        Ok(())
    })();
    match result {
        Ok(()) => Ok(prepared),
        Err(error) => {
            let _ = remove(ctx, &prepared.id, &prepared.dir);
            Err(error)
        }
    }
}

/// Has the keeper `runc create` the prepared instance; returns its init pid. The caller opens
/// the FIFOs' read ends first.
pub fn create(ctx: &NodeContext, prepared: &Prepared) -> Result<i32, ContainerError> {
    Ok(ctx.keeper.create(&CreateRequest {
        id: prepared.id.clone(),
        runc: ctx.runc.binary.clone(),
        runc_root: ctx.runc.root.clone(),
        bundle: prepared.dir.clone(),
        stdout: prepared.stdout.clone(),
        stderr: prepared.stderr.clone(),
    })?)
}

/// Removes an instance: runc's container (killed if it still runs), the rootfs mount and the
/// directory. Idempotent.
pub fn remove(ctx: &NodeContext, id: &str, dir: &Path) -> Result<(), ContainerError> {
    ctx.runc.delete(id, true)?;
    ctx.images.unmount_rootfs(dir)?;
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(dir)(e)),
        _ => {}
    }
    ctx.keeper.forget(id);
    Ok(())
}

/// Whether process `pid` still exists (and is not a zombie waiting for the keeper).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}
