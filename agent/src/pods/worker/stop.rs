//! Probes of running instances (a failed liveness or startup probe stops the instance) and the
//! pod's termination: SIGTERM, the grace period, SIGKILL, then every trace of the pod removed.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;

use crate::probe::{ProbeAction, ProbeTarget, killing_message, probe_event, run_probe};
use crate::sandbox::network;
use crate::sys::netns;

use super::super::container;
use super::super::record::Instance;
use super::super::volumes;
use super::{PodWorker, blocking};
use crate::pods::node::NodeContext;

impl PodWorker {
    /// Runs the container's due probes; a failed liveness or startup probe has the instance
    /// stopped (SIGTERM, the pod's grace period, SIGKILL), after which the restart policy
    /// applies as for any exit.
    pub(super) async fn run_probes(
        &mut self,
        container: &Container,
        init: bool,
        instance: &Instance,
    ) {
        let Some((id, mut probes)) = self.probes.remove(&container.name) else {
            return;
        };
        if id != instance.id {
            return;
        }
        let Some(pod_ip) = self.pod_ip else { return };
        let target = ProbeTarget {
            pod_ip,
            container: container.clone(),
            container_id: instance.id.clone(),
            runc: self.ctx.runc.clone(),
        };
        for kind in probes.due(std::time::Instant::now()) {
            let Some(spec) = probes.spec(kind).cloned() else {
                continue;
            };
            let result = run_probe(kind, &spec, &target).await;
            if let Some(event) = probe_event(kind, &result) {
                self.events
                    .warning(&container.name, init, event.reason, event.message);
            }
            if let ProbeAction::Restart { kind, .. } =
                probes.record(kind, &result, std::time::Instant::now())
            {
                // The probe's kill is a failure exit: only `Never` keeps it down.
                let will_restart = self
                    .pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.restart_policy.as_deref())
                    != Some("Never");
                self.events.normal(
                    &container.name,
                    init,
                    "Killing",
                    killing_message(&container.name, kind, will_restart),
                );
                let grace = self.grace_seconds();
                let (ctx, id) = (Arc::clone(&self.ctx), instance.id.clone());
                tokio::spawn(async move {
                    let runc = ctx.runc.clone();
                    let term_id = id.clone();
                    let _ = tokio::task::spawn_blocking(move || runc.kill(&term_id, "TERM")).await;
                    tokio::time::sleep(Duration::from_secs(grace)).await;
                    let runc = ctx.runc.clone();
                    let _ = tokio::task::spawn_blocking(move || runc.kill(&id, "KILL")).await;
                });
                break;
            }
        }
        self.probes.insert(container.name.clone(), (id, probes));
    }

    /// The pod's `terminationGracePeriodSeconds` (default 30).
    fn grace_seconds(&self) -> u64 {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30)
            .max(0)
            .unsigned_abs()
    }

    /// Stops every container (SIGTERM, the grace period, SIGKILL) and removes everything the
    /// pod had: instances, rootfs mounts, volumes, cgroup, network, address, state, logs.
    pub(super) async fn terminate(mut self) {
        let grace = self.grace_seconds();
        let running: Vec<Instance> = self
            .records
            .values()
            .filter_map(|r| r.current.clone())
            .filter(|i| i.terminated.is_none())
            .collect();
        for record in self.records.values() {
            if record
                .current
                .as_ref()
                .is_some_and(|i| i.terminated.is_none())
            {
                self.events.normal(
                    &record.name,
                    false,
                    "Killing",
                    format!("Stopping container {}", record.name),
                );
            }
        }
        log::info!(
            "pod {}: stopping {} containers (grace {grace}s)",
            self.describe(),
            running.len()
        );
        let ids: Vec<String> = running.iter().map(|i| i.id.clone()).collect();
        let signal_all = |signal: &'static str| {
            let ids = ids.clone();
            blocking(&self.ctx, move |ctx| {
                for id in &ids {
                    if let Err(error) = ctx.runc.kill(id, signal) {
                        log::warn!("{error}");
                    }
                }
            })
        };
        signal_all("TERM").await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(grace);
        let all_gone = |ctx: &NodeContext| {
            running
                .iter()
                .all(|i| ctx.keeper.exit_of(&i.id).is_some() || !container::alive(i.pid))
        };
        while !all_gone(&self.ctx) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !all_gone(&self.ctx) {
            signal_all("KILL").await;
        }
        for id in &ids {
            self.drain_copiers(id).await;
        }
        let uid = self.uid.clone();
        let qos = self.qos;
        let dir = self.dir.clone();
        let meta = self.pod.metadata.clone();
        let result = blocking(&self.ctx, move |ctx| -> Result<(), String> {
            for id in &ids {
                container::remove(ctx, id, &dir.container_dir(id)).map_err(|e| e.to_string())?;
            }
            // Instances that ended earlier left their directories already; sweep any rest.
            if let Ok(entries) = std::fs::read_dir(dir.path.join("containers")) {
                for entry in entries.flatten() {
                    let id = entry.file_name().to_string_lossy().into_owned();
                    container::remove(ctx, &id, &entry.path()).map_err(|e| e.to_string())?;
                }
            }
            volumes::teardown(&dir.volumes_dir()).map_err(|e| e.to_string())?;
            let pod_cgroup = ctx.cgroups.pod_path(qos, &uid);
            let mut removed = ctx.cgroups.remove_pod(&pod_cgroup);
            for _ in 0..50 {
                if removed.is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
                removed = ctx.cgroups.remove_pod(&pod_cgroup);
            }
            removed.map_err(|e| e.to_string())?;
            network::detach(&uid).map_err(|e| e.to_string())?;
            netns::remove(&ctx.netns_path(&uid)).map_err(|e| e.to_string())?;
            netns::remove(&ctx.ipcns_path(&uid)).map_err(|e| e.to_string())?;
            ctx.ipam.release(&uid).map_err(|e| e.to_string())?;
            let log_dir = ctx.pod_log_dir(
                meta.namespace.as_deref().unwrap_or("default"),
                meta.name.as_deref().unwrap_or(""),
                &uid,
            );
            let _ = std::fs::remove_dir_all(log_dir);
            dir.remove().map_err(|e| e.to_string())
        })
        .await;
        match result {
            Ok(()) => log::info!("pod {}: removed", self.describe()),
            Err(error) => log::error!("pod {}: cleanup incomplete: {error}", self.describe()),
        }
        self.statuses
            .lock()
            .expect("statuses lock")
            .remove(&self.uid);
    }
}
