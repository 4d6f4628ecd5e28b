//! Starting a container instance: the image (as `imagePullPolicy` says, with the pod's pull
//! secrets), the ConfigMaps and Secrets it refers to, env and mounts, the bundle, the log
//! copiers, then the keeper's `runc create` and `runc start`, with kubelet's events.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Container;

use crate::image::{Image, RegistryCredentials};
use crate::runtime::bundle::BindMount;

use super::super::container::{self, Launch};
use super::super::env::container_env;
use super::super::record::{ContainerRecord, Instance};
use super::super::refs::PodRefs;
use super::super::status::Waiting;
use super::super::volumes;
use super::{BACKOFF_INITIAL, BACKOFF_MAX, PodWorker, blocking, now};
use crate::probe::ContainerProbes;

/// Where a container finds its resolver configuration.
const RESOLV_CONF: &str = "/etc/resolv.conf";

impl PodWorker {
    /// Writes the pod's resolv.conf (its `dnsPolicy` and `dnsConfig` against the node's
    /// cluster DNS and /etc/resolv.conf) into the pod's directory; the mount that puts it at
    /// `/etc/resolv.conf` in a container.
    fn resolv_conf(&self) -> Result<BindMount, String> {
        let host = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
        let text = super::super::dns::resolv_conf(&self.pod, self.ctx.cluster_dns.as_ref(), &host)?;
        let path = self.dir.path.join("resolv.conf");
        std::fs::write(&path, text)
            .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
        Ok(BindMount {
            source: path,
            destination: RESOLV_CONF.to_owned(),
            read_only: false,
        })
    }

    /// The image for `container`, pulled as its `imagePullPolicy` says.
    pub(super) async fn image_for(
        &mut self,
        container: &Container,
        init: bool,
        refs: &PodRefs,
    ) -> Option<Image> {
        let reference = container.image.clone().unwrap_or_default();
        let policy = container.image_pull_policy.clone().unwrap_or_else(|| {
            let tag_latest = !reference.contains('@')
                && reference
                    .rsplit('/')
                    .next()
                    .is_none_or(|last| !last.contains(':') || last.ends_with(":latest"));
            if tag_latest { "Always" } else { "IfNotPresent" }.to_owned()
        });
        let local = self.ctx.images.get(&reference).ok().flatten();
        match (policy.as_str(), local) {
            ("IfNotPresent", Some(image)) | ("Never", Some(image)) => {
                self.ctx.images.touch(&image.reference);
                self.events.normal(
                    &container.name,
                    init,
                    "Pulled",
                    format!("Container image \"{reference}\" already present on machine"),
                );
                return Some(image);
            }
            ("Never", None) => {
                self.waiting.insert(
                    container.name.clone(),
                    Waiting {
                        reason: "ErrImageNeverPull".to_owned(),
                        message: Some(format!(
                            "Container image \"{reference}\" is not present with pull policy of Never"
                        )),
                    },
                );
                return None;
            }
            _ => {}
        }
        if let Some((delay, next)) = self.pull_backoff.get(&container.name)
            && now() < *next
        {
            if self
                .announced
                .insert((format!("pull {}", container.name), *next))
            {
                self.events.normal(
                    &container.name,
                    init,
                    "BackOff",
                    format!("Back-off pulling image \"{reference}\""),
                );
                self.events.warning(
                    &container.name,
                    init,
                    "Failed",
                    "Error: ImagePullBackOff".to_owned(),
                );
            }
            self.waiting.insert(
                container.name.clone(),
                Waiting {
                    reason: "ImagePullBackOff".to_owned(),
                    message: Some(format!("Back-off pulling image \"{reference}\" ({delay}s)")),
                },
            );
            return None;
        }
        self.events.normal(
            &container.name,
            init,
            "Pulling",
            format!("Pulling image \"{reference}\""),
        );
        let pull_started = std::time::Instant::now();
        match self
            .ctx
            .images
            .pull(&reference, &self.credentials(&reference, refs))
            .await
        {
            Ok(image) => {
                self.pull_backoff.remove(&container.name);
                let took = pull_started.elapsed().as_secs_f64();
                self.events.normal(
                    &container.name,
                    init,
                    "Pulled",
                    format!(
                        "Successfully pulled image \"{reference}\" in {took:.3}s ({took:.3}s including waiting). Image size: {} bytes.",
                        image.size
                    ),
                );
                Some(image)
            }
            Err(error) => {
                let delay = self
                    .pull_backoff
                    .get(&container.name)
                    .map_or(BACKOFF_INITIAL, |(d, _)| (d * 2).min(BACKOFF_MAX));
                self.pull_backoff.insert(
                    container.name.clone(),
                    (delay, now() + i64::try_from(delay).unwrap_or(0)),
                );
                log::warn!("pod {}: {error}", self.describe());
                self.events.warning(
                    &container.name,
                    init,
                    "Failed",
                    format!("Failed to pull image \"{reference}\": {error}"),
                );
                self.events.warning(
                    &container.name,
                    init,
                    "Failed",
                    "Error: ErrImagePull".to_owned(),
                );
                self.waiting.insert(
                    container.name.clone(),
                    Waiting {
                        reason: "ErrImagePull".to_owned(),
                        message: Some(error.to_string()),
                    },
                );
                None
            }
        }
    }

    /// The ConfigMaps and Secrets the pod refers to, from the API server (none for static
    /// pods).
    pub(super) async fn fetch_refs(&self) -> Result<PodRefs, String> {
        match &self.ctx.client {
            Some(client) => crate::api::refs::fetch(client, &self.pod)
                .await
                .map_err(|e| format!("cannot read the pod's ConfigMaps and Secrets: {e}")),
            None => Ok(PodRefs::default()),
        }
    }

    /// Credentials for `reference` from the pod's `imagePullSecrets` (the first that has an
    /// entry for its registry), else anonymous.
    pub(super) fn credentials(&self, reference: &str, refs: &PodRefs) -> RegistryCredentials {
        let host = crate::image::registry_host(reference);
        let secrets = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.as_ref());
        for secret in secrets.into_iter().flatten() {
            let Ok(data) = refs.secret(&secret.name) else {
                continue;
            };
            let json = data
                .get(".dockerconfigjson")
                .or_else(|| data.get(".dockercfg"));
            if let Some(json) = json
                && let Ok(Some(credentials)) =
                    crate::image::credentials_from_docker_config(json, &host)
            {
                return credentials;
            }
        }
        RegistryCredentials::Anonymous
    }

    /// Starts a new instance of `container`.
    pub(super) async fn start(
        &mut self,
        container: &Container,
        init: bool,
        record: &mut ContainerRecord,
    ) {
        let refs = match self.fetch_refs().await {
            Ok(refs) => refs,
            Err(message) => {
                log::warn!("pod {}: {message}", self.describe());
                return;
            }
        };
        let Some(image) = self.image_for(container, init, &refs).await else {
            return;
        };
        let pod_ip = self.pod_ip.map(|ip| ip.to_string());
        let host_ip = self.ctx.host_ip.map(|ip| ip.to_string());
        let prepared_input = container_env(
            &self.pod,
            container,
            pod_ip.as_deref(),
            host_ip.as_deref(),
            &refs,
        )
        .map_err(|e| e.to_string())
        .and_then(|env| {
            let mut mounts =
                volumes::mounts_for(container, self.volumes.as_ref().unwrap_or(&BTreeMap::new()))
                    .map_err(|e| e.to_string())?;
            if !mounts.iter().any(|m| m.destination == RESOLV_CONF) {
                mounts.push(self.resolv_conf()?);
            }
            Ok((env, mounts))
        });
        let (env, mounts) = match prepared_input {
            Ok(input) => input,
            Err(message) => {
                self.events
                    .warning(&container.name, init, "Failed", format!("Error: {message}"));
                self.waiting.insert(
                    container.name.clone(),
                    Waiting {
                        reason: "CreateContainerConfigError".to_owned(),
                        message: Some(message),
                    },
                );
                return;
            }
        };
        let restarted = record.current.is_some();
        let restart_count = record.restart_count + u32::from(restarted);
        let log_path = self.log_path(&container.name, restart_count);
        let pod = self.pod.clone();
        let owned_container = container.clone();
        let pod_dir = self.dir.clone();
        let host_network = self.pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
        let netns = (!host_network).then(|| self.ctx.netns_path(&self.uid));
        let host_ipc = self.pod.spec.as_ref().and_then(|s| s.host_ipc) == Some(true);
        let ipcns = (!host_ipc).then(|| self.ctx.ipcns_path(&self.uid));
        let pod_cgroup = self.ctx.cgroups.pod_path(self.qos, &self.uid);
        let qos = self.qos;
        let image_for_launch = image.clone();
        let prepared = blocking(&self.ctx, move |ctx| {
            container::prepare(
                ctx,
                &Launch {
                    pod: &pod,
                    container: &owned_container,
                    image: &image_for_launch,
                    pod_dir: &pod_dir,
                    netns,
                    ipcns,
                    pod_cgroup,
                    qos,
                    env,
                    mounts,
                },
            )
        })
        .await;
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                self.waiting.insert(
                    container.name.clone(),
                    Waiting {
                        reason: "CreateContainerError".to_owned(),
                        message: Some(error.to_string()),
                    },
                );
                return;
            }
        };
        // The FIFOs' read ends open before the container holds the write ends.
        let copiers = match self.start_copiers(&prepared.stdout, &prepared.stderr, &log_path) {
            Ok(copiers) => copiers,
            Err(error) => {
                let (id, dir) = (prepared.id.clone(), prepared.dir.clone());
                let _ = blocking(&self.ctx, move |ctx| container::remove(ctx, &id, &dir)).await;
                self.waiting.insert(
                    container.name.clone(),
                    Waiting {
                        reason: "CreateContainerError".to_owned(),
                        message: Some(format!(
                            "cannot open the log {}: {error}",
                            log_path.display()
                        )),
                    },
                );
                return;
            }
        };
        let id = prepared.id.clone();
        let created = blocking(&self.ctx, move |ctx| {
            container::create(ctx, &prepared).map(|pid| (pid, prepared))
        })
        .await;
        let started = match created {
            Ok((pid, prepared)) => {
                self.events.normal(
                    &container.name,
                    init,
                    "Created",
                    format!("Created container: {}", container.name),
                );
                blocking(&self.ctx, move |ctx| {
                    ctx.runc.start(&prepared.id).map(|()| pid)
                })
                .await
                .map_err(container::ContainerError::from)
            }
            Err(error) => Err(error),
        };
        match started {
            Ok(pid) => {
                self.copiers.insert(id.clone(), copiers);
                self.probes.insert(
                    container.name.clone(),
                    (
                        id.clone(),
                        ContainerProbes::new(container, std::time::Instant::now()),
                    ),
                );
                self.waiting.remove(&container.name);
                if restarted {
                    record.last_termination = record.current.take().and_then(|i| i.terminated);
                    record.restart_count = restart_count;
                    record.backoff_seconds = if record.backoff_seconds == 0 {
                        BACKOFF_INITIAL
                    } else {
                        (record.backoff_seconds * 2).min(BACKOFF_MAX)
                    };
                }
                record.current = Some(Instance {
                    id,
                    pid,
                    started_at: now(),
                    image_id: image.digest.clone(),
                    image_ref: image.reference.clone(),
                    terminated: None,
                });
                self.events.normal(
                    &container.name,
                    init,
                    "Started",
                    format!("Started container {}", container.name),
                );
                log::info!(
                    "pod {}: started container {} ({pid})",
                    self.describe(),
                    container.name
                );
            }
            Err(error) => {
                for copier in copiers {
                    copier.abort();
                }
                let dir = self.dir.container_dir(&id);
                let _ = blocking(&self.ctx, move |ctx| container::remove(ctx, &id, &dir)).await;
                log::warn!("pod {}: {error}", self.describe());
                self.events
                    .warning(&container.name, init, "Failed", format!("Error: {error}"));
                self.waiting.insert(
                    container.name.clone(),
                    Waiting {
                        reason: "RunContainerError".to_owned(),
                        message: Some(error.to_string()),
                    },
                );
            }
        }
    }
}
