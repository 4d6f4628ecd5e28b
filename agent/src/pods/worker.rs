//! One pod's worker: a task that brings the pod's sandbox and containers to what its spec asks,
//! once a second and whenever the spec changes (kubelet's pod worker and PLEG relist in one),
//! and tears everything down when the pod goes. It never assumes it saw every event: each sync
//! reads the state of every container afresh.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodStatus};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::cgroups::{QosClass, resources};
use crate::runtime::keeper::ExitRecord;
use crate::runtime::logs::{self, LogFile, Stream};
use crate::sandbox::network;
use crate::sys::netns;

use super::container;
use super::events::PodEvents;
use super::node::NodeContext;
use super::record::{ContainerRecord, Instance, PodDir, Termination};
use super::status::{StatusInput, Waiting, pod_status};
use super::volumes;
use crate::probe::ContainerProbes;

mod launch;
mod stop;

/// How often a worker looks at its containers when nothing wakes it.
pub const RESYNC: Duration = Duration::from_secs(1);
const BACKOFF_INITIAL: u64 = 10;
const BACKOFF_MAX: u64 = 300;
/// A container that ran this long has its crash-loop back-off reset.
const BACKOFF_RESET: i64 = 600;

/// Marks a sandbox error that is a volume's, for the `FailedMount` event.
const FAILED_MOUNT: &str = "volume setup: ";

/// What the manager tells a worker.
#[derive(Debug)]
pub enum Command {
    Update(Box<Pod>),
    Delete,
}

/// The latest status of every pod, by UID, for the node API and the status files.
pub type Statuses = Arc<Mutex<BTreeMap<String, Pod>>>;

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    ctx: &Arc<NodeContext>,
    f: impl FnOnce(&NodeContext) -> T + Send + 'static,
) -> T {
    let ctx = Arc::clone(ctx);
    tokio::task::spawn_blocking(move || f(&ctx))
        .await
        .expect("blocking pod task panicked")
}

#[derive(Debug)]
pub struct PodWorker {
    ctx: Arc<NodeContext>,
    pod: Pod,
    uid: String,
    dir: PodDir,
    qos: QosClass,
    records: BTreeMap<String, ContainerRecord>,
    waiting: BTreeMap<String, Waiting>,
    /// Log copiers of live instances, by container ID.
    copiers: HashMap<String, Vec<JoinHandle<std::io::Result<()>>>>,
    /// Image pull back-off per container: delay and earliest next try.
    pull_backoff: HashMap<String, (u64, i64)>,
    /// Syncs in a row an instance's process was gone without an exit record.
    missing: HashMap<String, u32>,
    pod_ip: Option<Ipv4Addr>,
    volumes: Option<BTreeMap<String, std::path::PathBuf>>,
    sandbox_ready: bool,
    start_time: i64,
    status: Option<PodStatus>,
    statuses: Statuses,
    events: PodEvents,
    /// Probes of each container's current instance (by container name: instance id, state).
    probes: HashMap<String, (String, ContainerProbes)>,
    /// Back-offs already announced (container, restart time), so a wait is reported once.
    announced: std::collections::HashSet<(String, i64)>,
}

impl PodWorker {
    pub fn new(ctx: Arc<NodeContext>, pod: Pod, statuses: Statuses) -> PodWorker {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let dir = PodDir::new(&ctx.root_dir, &uid);
        let qos = resources::qos_class(&pod).unwrap_or(QosClass::BestEffort);
        let events = PodEvents::new(ctx.events.clone(), &pod);
        PodWorker {
            events,
            probes: HashMap::new(),
            announced: std::collections::HashSet::new(),
            ctx,
            pod,
            uid,
            dir,
            qos,
            records: BTreeMap::new(),
            waiting: BTreeMap::new(),
            copiers: HashMap::new(),
            pull_backoff: HashMap::new(),
            missing: HashMap::new(),
            pod_ip: None,
            volumes: None,
            sandbox_ready: false,
            start_time: now(),
            status: None,
            statuses,
        }
    }

    fn describe(&self) -> String {
        format!(
            "{}/{}",
            self.pod.metadata.namespace.as_deref().unwrap_or("default"),
            self.pod.metadata.name.as_deref().unwrap_or("")
        )
    }

    /// The worker's loop: sync, publish, wait for a command or the next resync.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            if let Err(error) = self.sync().await {
                log::warn!("pod {}: {error}", self.describe());
            }
            self.publish();
            let command = tokio::select! {
                command = commands.recv() => command,
                () = tokio::time::sleep(RESYNC) => continue,
            };
            match command {
                Some(Command::Update(pod)) => self.pod = *pod,
                Some(Command::Delete) | None => break,
            }
        }
        self.terminate().await;
    }

    fn publish(&mut self) {
        let records = &self.records;
        let ready: BTreeMap<String, bool> = records
            .iter()
            .map(|(name, r)| {
                let running = r.current.as_ref().is_some_and(|i| i.terminated.is_none());
                let probed_ready = self.probes.get(name).is_none_or(|(_, p)| p.ready());
                (name.clone(), running && probed_ready)
            })
            .collect();
        let status = pod_status(&StatusInput {
            pod: &self.pod,
            records,
            waiting: &self.waiting,
            ready: &ready,
            pod_ip: self.pod_ip.map(|ip| ip.to_string()),
            host_ip: self.ctx.host_ip.map(|ip| ip.to_string()),
            sandbox_ready: self.sandbox_ready,
            start_time: Some(self.start_time),
            qos_class: self.qos.as_str(),
            previous: self.status.as_ref(),
            now: now(),
        });
        let changed = self.status.as_ref() != Some(&status);
        let mut pod = self.pod.clone();
        pod.status = Some(status.clone());
        self.status = Some(status);
        self.statuses
            .lock()
            .expect("statuses lock")
            .insert(self.uid.clone(), pod);
        if changed {
            self.ctx.status_changed.notify_one();
        }
    }

    async fn sync(&mut self) -> Result<(), String> {
        if !self.sandbox_ready {
            self.ensure_sandbox().await?;
        }
        let spec = self.pod.spec.clone().unwrap_or_default();
        for container in spec.init_containers.iter().flatten() {
            if !self.sync_container(container, true).await {
                return Ok(());
            }
        }
        for container in &spec.containers {
            self.sync_container(container, false).await;
        }
        Ok(())
    }

    /// Network namespace, address, wiring, cgroup, volumes. Idempotent, so an adopted pod
    /// goes through it again unchanged.
    async fn ensure_sandbox(&mut self) -> Result<(), String> {
        let uid = self.uid.clone();
        let pod = self.pod.clone();
        let qos = self.qos;
        let dir = self.dir.clone();
        let host_ip = self.ctx.host_ip.map(|ip| ip.to_string());
        let refs = self.fetch_refs().await?;
        let (ip, volumes) = blocking(&self.ctx, move |ctx| -> Result<_, String> {
            dir.create().map_err(|e| e.to_string())?;
            dir.save_pod(&pod).map_err(|e| e.to_string())?;
            // The IPC namespace the pod's containers share (no pause container holds it).
            if pod.spec.as_ref().and_then(|s| s.host_ipc) != Some(true) {
                netns::create_ipc(&ctx.ipcns_path(&uid)).map_err(|e| e.to_string())?;
            }
            let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
            let ip = if host_network {
                // The node's own network: no namespace, veth or address of the pod's.
                ctx.host_ip
                    .ok_or("a hostNetwork pod needs the node's address: give --node-ip")?
            } else {
                let netns_path = ctx.netns_path(&uid);
                netns::create(&netns_path).map_err(|e| e.to_string())?;
                let ip = ctx.ipam.allocate(&uid).map_err(|e| e.to_string())?;
                network::attach(&netns_path, &uid, ip).map_err(|e| e.to_string())?;
                ip
            };
            let values =
                resources::pod_cgroup(&pod, ctx.pod_max_pids).map_err(|e| e.to_string())?;
            ctx.cgroups
                .ensure_pod(&ctx.cgroups.pod_path(qos, &uid), &values)
                .map_err(|e| e.to_string())?;
            let ip_text = ip.to_string();
            let volumes = volumes::prepare(
                &pod,
                &dir.volumes_dir(),
                Some(&ip_text),
                host_ip.as_deref(),
                &refs,
            )
            .map_err(|e| format!("{FAILED_MOUNT}{e}"))?;
            Ok((ip, volumes))
        })
        .await
        .map_err(|error| match error.strip_prefix(FAILED_MOUNT) {
            Some(message) => {
                if self.announced.insert((message.to_owned(), 0)) {
                    self.events.pod_warning("FailedMount", message.to_owned());
                }
                message.to_owned()
            }
            None => error,
        })?;
        self.pod_ip = Some(ip);
        self.volumes = Some(volumes);
        self.sandbox_ready = true;
        for container in self.all_containers() {
            let record = self
                .dir
                .load_record(&container.name)
                .map_err(|e| e.to_string())?;
            self.adopt(&record).await;
            if let Some(instance) = record.current.as_ref().filter(|i| i.terminated.is_none()) {
                self.probes.insert(
                    container.name.clone(),
                    (
                        instance.id.clone(),
                        ContainerProbes::new(&container, std::time::Instant::now()),
                    ),
                );
            }
            self.records.insert(container.name.clone(), record);
        }
        self.remove_unrecorded().await;
        Ok(())
    }

    /// Removes container instances no record points at: a previous agent died between
    /// creating one and recording it. Left alone, it would run beside the instance this agent
    /// starts in its place (two copies of one container).
    async fn remove_unrecorded(&mut self) {
        let live: std::collections::HashSet<String> = self
            .records
            .values()
            .filter_map(|record| record.current.as_ref())
            .filter(|instance| instance.terminated.is_none())
            .map(|instance| instance.id.clone())
            .collect();
        for id in self.dir.container_ids() {
            if live.contains(&id) {
                continue;
            }
            log::warn!(
                "pod {}: removing container {id}, which a previous agent started but never \
                 recorded (it stopped mid-start)",
                self.describe()
            );
            let dir = self.dir.container_dir(&id);
            if let Err(error) =
                blocking(&self.ctx, move |ctx| container::remove(ctx, &id, &dir)).await
            {
                log::warn!("pod {}: {error}", self.describe());
            }
        }
    }

    fn all_containers(&self) -> Vec<Container> {
        let spec = self.pod.spec.clone().unwrap_or_default();
        spec.init_containers
            .into_iter()
            .flatten()
            .chain(spec.containers)
            .collect()
    }

    /// Re-attaches log copiers to an instance a previous agent started.
    async fn adopt(&mut self, record: &ContainerRecord) {
        let Some(instance) = &record.current else {
            return;
        };
        if instance.terminated.is_some() || self.copiers.contains_key(&instance.id) {
            return;
        }
        if !container::alive(instance.pid) {
            return;
        }
        let dir = self.dir.container_dir(&instance.id);
        let log_path = self.log_path(&record.name, record.restart_count);
        match self.start_copiers(&dir.join("stdout"), &dir.join("stderr"), &log_path) {
            Ok(copiers) => {
                self.copiers.insert(instance.id.clone(), copiers);
            }
            Err(error) => log::warn!(
                "pod {}: cannot re-attach the logs of {}: {error}",
                self.describe(),
                record.name
            ),
        }
    }

    fn log_path(&self, container: &str, restart_count: u32) -> std::path::PathBuf {
        let meta = &self.pod.metadata;
        self.ctx
            .pod_log_dir(
                meta.namespace.as_deref().unwrap_or("default"),
                meta.name.as_deref().unwrap_or(""),
                &self.uid,
            )
            .join(container)
            .join(format!("{restart_count}.log"))
    }

    fn start_copiers(
        &self,
        stdout: &std::path::Path,
        stderr: &std::path::Path,
        log_path: &std::path::Path,
    ) -> std::io::Result<Vec<JoinHandle<std::io::Result<()>>>> {
        let log = LogFile::open(log_path, self.ctx.log_rotation)?;
        let out = logs::open_fifo(stdout)?;
        let err = logs::open_fifo(stderr)?;
        Ok(vec![
            tokio::spawn(logs::copy(out, Stream::Stdout, Arc::clone(&log))),
            tokio::spawn(logs::copy(err, Stream::Stderr, log)),
        ])
    }

    /// Brings one container along; true once it is done with (an init container that
    /// succeeded, or any container that runs or has ended for good).
    async fn sync_container(&mut self, container: &Container, init: bool) -> bool {
        let name = container.name.clone();
        let mut record = self
            .records
            .remove(&name)
            .unwrap_or_else(|| ContainerRecord {
                name: name.clone(),
                ..ContainerRecord::default()
            });
        let done = self.step(container, init, &mut record).await;
        if let Err(error) = self.dir.save_record(&record) {
            log::warn!("pod {}: {error}", self.describe());
        }
        self.records.insert(name, record);
        done
    }

    async fn step(
        &mut self,
        container: &Container,
        init: bool,
        record: &mut ContainerRecord,
    ) -> bool {
        if let Some(instance) = record.current.clone()
            && instance.terminated.is_none()
        {
            match self.check_exit(&instance).await {
                None => {
                    self.run_probes(container, init, &instance).await;
                    return !init;
                }
                Some(exit) => self.finish(record, exit).await,
            }
        }
        let policy = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".to_owned());
        if let Some(ended) = record.current.as_ref().and_then(|i| i.terminated.as_ref()) {
            let failed = ended.exit_code != 0;
            let restart = match policy.as_str() {
                "Never" => false,
                "OnFailure" => failed,
                // Init containers that succeeded are done, whatever the policy.
                _ => failed || !init,
            };
            if !restart {
                return !failed || !init;
            }
            if now() < record.next_start_at {
                let message = format!(
                    "back-off {}s restarting failed container={} pod={}_{}({})",
                    record.backoff_seconds,
                    container.name,
                    self.pod.metadata.name.as_deref().unwrap_or(""),
                    self.pod.metadata.namespace.as_deref().unwrap_or("default"),
                    self.uid
                );
                if self
                    .announced
                    .insert((container.name.clone(), record.next_start_at))
                {
                    self.events.warning(
                        &container.name,
                        init,
                        "BackOff",
                        format!(
                            "Back-off restarting failed container {} in pod {}_{}({})",
                            container.name,
                            self.pod.metadata.name.as_deref().unwrap_or(""),
                            self.pod.metadata.namespace.as_deref().unwrap_or("default"),
                            self.uid
                        ),
                    );
                }
                self.waiting.insert(
                    container.name.clone(),
                    Waiting {
                        reason: "CrashLoopBackOff".to_owned(),
                        message: Some(message),
                    },
                );
                return false;
            }
        }
        self.start(container, init, record).await;
        false
    }

    /// The instance's exit, if it has ended.
    async fn check_exit(&mut self, instance: &Instance) -> Option<ExitRecord> {
        if let Some(exit) = self.ctx.keeper.exit_of(&instance.id) {
            return Some(exit);
        }
        if container::alive(instance.pid) {
            self.missing.remove(&instance.id);
            return None;
        }
        // Gone without a record: the keeper may be writing it this instant; after a few syncs
        // it is lost (the container ended while no keeper watched it).
        let misses = self.missing.entry(instance.id.clone()).or_insert(0);
        *misses += 1;
        (*misses > 3).then(|| ExitRecord {
            exit_code: 137,
            signal: None,
            finished_at: now(),
        })
    }

    /// Records how an instance ended and removes it (its log stays).
    async fn finish(&mut self, record: &mut ContainerRecord, exit: ExitRecord) {
        let Some(instance) = record.current.as_mut() else {
            return;
        };
        let id = instance.id.clone();
        let cgroup = container::cgroup_path(&self.ctx.cgroups.pod_path(self.qos, &self.uid), &id);
        let oom = self.ctx.cgroups.oom_kills(&cgroup) > 0;
        let lost = self.missing.remove(&id).is_some_and(|misses| misses > 3);
        let reason = if lost {
            "ContainerStatusUnknown"
        } else if oom {
            "OOMKilled"
        } else if exit.exit_code == 0 {
            "Completed"
        } else {
            "Error"
        };
        instance.terminated = Some(Termination {
            exit_code: exit.exit_code,
            signal: exit.signal,
            reason: reason.to_owned(),
            message: lost
                .then(|| "The container could not be located when the pod was running".to_owned()),
            started_at: instance.started_at,
            finished_at: exit.finished_at,
            container_id: id.clone(),
        });
        let ran = exit.finished_at - instance.started_at;
        if ran >= BACKOFF_RESET {
            record.backoff_seconds = 0;
        }
        // `finished_at` is truncated to the second (the exit came at most a second later):
        // a back-off counts from the next second, so it is never shorter than asked.
        let backoff = i64::try_from(record.backoff_seconds).unwrap_or(0);
        record.next_start_at = exit.finished_at + backoff + i64::from(backoff > 0);
        self.drain_copiers(&id).await;
        let dir = self.dir.container_dir(&id);
        if let Err(error) = blocking(&self.ctx, move |ctx| container::remove(ctx, &id, &dir)).await
        {
            log::warn!("pod {}: {error}", self.describe());
        }
    }

    async fn drain_copiers(&mut self, id: &str) {
        for copier in self.copiers.remove(id).unwrap_or_default() {
            let abort = copier.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), copier)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}
