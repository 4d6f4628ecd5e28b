//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection`
//! with a `LeaseLock`: candidates try to take the Lease every `retryPeriod` once its holder
//! has not renewed it for `leaseDuration` (timed by this candidate's own clock from when it
//! last saw the record change, so clocks need not agree); the leader renews every
//! `retryPeriod` and gives up if it cannot renew for `renewDeadline` or sees another holder.
//! Writes use the Lease's `resourceVersion`, so two candidates never both win. The work runs
//! only while leading and is cancelled (dropped) the moment leadership is lost; the
//! candidate then competes again. On shutdown a leader releases the Lease.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};

/// Where the Lease lives and how it is held.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// `<hostname>_<uuid>`, unique per process.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// The Lease `kube-system/<name>` with upstream's timings (15 s, 10 s, 2 s).
    pub fn new(name: &str) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .unwrap_or_else(|_| "localhost".to_owned());
        Self {
            namespace: "kube-system".to_owned(),
            name: name.to_owned(),
            identity: format!("{host}_{}", uuid::Uuid::new_v4()),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// A failed read or write of the Lease.
#[derive(Debug, thiserror::Error)]
#[error("lease {namespace}/{name}: {verb} failed")]
pub struct LeaderError {
    namespace: String,
    name: String,
    verb: &'static str,
    #[source]
    source: kube::Error,
}

/// What this candidate last saw of the Lease, and when (by its own clock).
#[derive(Debug)]
struct Observed {
    record: Option<(String, Option<MicroTime>, Option<i32>)>,
    at: Instant,
}

/// One candidate for one Lease.
#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Observed,
}

impl Elector {
    /// A candidate for `config`'s Lease.
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: Observed {
                record: None,
                at: Instant::now(),
            },
        }
    }

    fn error(&self, verb: &'static str, source: kube::Error) -> LeaderError {
        LeaderError {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            verb,
            source,
        }
    }

    /// One attempt to take or renew the Lease: `Ok(true)` if this candidate holds it now.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaderError> {
        let now = MicroTime(Timestamp::now());
        let me = self.config.identity.clone();
        let duration = i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(15);
        let current = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|source| self.error("get", source))?;
        let Some(current) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(source) => Err(self.error("create", source)),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let record = Some((
            holder.clone(),
            spec.renew_time.clone(),
            spec.lease_transitions,
        ));
        if record != self.observed.record {
            self.observed = Observed {
                record,
                at: Instant::now(),
            };
        }
        let held_for = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(duration)).unwrap_or(0),
        );
        if !holder.is_empty() && holder != me && self.observed.at.elapsed() < held_for {
            return Ok(false);
        }
        let mut spec = spec;
        if holder != me {
            spec.holder_identity = Some(me);
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(duration);
        spec.renew_time = Some(now);
        let updated = Lease {
            metadata: current.metadata.clone(),
            spec: Some(spec),
        };
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &updated)
            .await
        {
            Ok(lease) => {
                let spec = lease.spec.unwrap_or_default();
                self.observed = Observed {
                    record: Some((
                        spec.holder_identity.unwrap_or_default(),
                        spec.renew_time,
                        spec.lease_transitions,
                    )),
                    at: Instant::now(),
                };
                Ok(true)
            }
            // Someone else wrote the Lease first.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(source) => Err(self.error("update", source)),
        }
    }

    /// Tries every `retryPeriod` until this candidate holds the Lease.
    pub async fn acquire(&mut self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(error) => log::warn!("leader election: {}", crate::controllers::chain(&error)),
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Renews every `retryPeriod`; returns when leadership is lost: another holder shows, or
    /// no renewal succeeded for `renewDeadline`.
    pub async fn keep_renewing(&mut self) {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            let left = self.config.renew_deadline.saturating_sub(renewed.elapsed());
            match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => renewed = Instant::now(),
                // Another holder: lost at once. A conflicting write with this candidate
                // still the holder (its own earlier write landed late): try again.
                Ok(Ok(false)) if !self.observed_holder_is_me() => return,
                Ok(Ok(false)) => {}
                Ok(Err(error)) => {
                    log::warn!("leader election: {}", crate::controllers::chain(&error))
                }
                Err(_) => {}
            }
            if renewed.elapsed() >= self.config.renew_deadline {
                return;
            }
        }
    }

    fn observed_holder_is_me(&self) -> bool {
        self.observed
            .record
            .as_ref()
            .is_some_and(|(holder, _, _)| *holder == self.config.identity)
    }

    /// Gives the Lease up (holder cleared, duration 1 s) if this candidate holds it.
    pub async fn release(&mut self) -> Result<(), LeaderError> {
        let Some(current) = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|source| self.error("get", source))?
        else {
            return Ok(());
        };
        let mut spec = current.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        let now = MicroTime(Timestamp::now());
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now.clone());
        spec.acquire_time = Some(now);
        let released = Lease {
            metadata: current.metadata,
            spec: Some(spec),
        };
        self.api
            .replace(&self.config.name, &PostParams::default(), &released)
            .await
            .map(|_| ())
            .map_err(|source| self.error("release", source))
    }

    /// The identity this candidate holds the Lease as.
    pub fn identity(&self) -> &str {
        &self.config.identity
    }
}

/// Runs `work` only while holding the Lease, until `shutdown` completes (then releases the
/// Lease) or the work returns. Losing the Lease drops the running work and competes again.
pub async fn run_while_leading<W, F>(
    client: Client,
    config: LeaseConfig,
    mut work: W,
    shutdown: impl Future<Output = ()>,
) where
    W: FnMut() -> F,
    F: Future<Output = ()>,
{
    let mut elector = Elector::new(client, config);
    let lease = format!("{}/{}", elector.config.namespace, elector.config.name);
    tokio::pin!(shutdown);
    loop {
        log::info!(
            "leader election: {} waits for lease {lease}",
            elector.identity()
        );
        tokio::select! {
            () = elector.acquire() => {}
            () = &mut shutdown => return,
        }
        log::info!(
            "leader election: {} acquired lease {lease}",
            elector.identity()
        );
        let outcome = {
            let running = work();
            tokio::pin!(running);
            tokio::select! {
                () = &mut running => "the work ended",
                () = elector.keep_renewing() => "lost",
                () = &mut shutdown => "shutdown",
            }
        };
        match outcome {
            "lost" => log::warn!(
                "leader election: {} lost lease {lease}, stopped",
                elector.identity()
            ),
            _ => {
                if let Err(error) = elector.release().await {
                    log::warn!("leader election: {}", crate::controllers::chain(&error));
                }
                log::info!(
                    "leader election: {} released lease {lease} ({outcome})",
                    elector.identity()
                );
                return;
            }
        }
    }
}
