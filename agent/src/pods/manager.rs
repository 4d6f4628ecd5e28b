//! The pod manager: keeps one [`PodWorker`] per pod this node should run, starting workers for
//! new pods, passing spec changes on, and stopping the workers of pods that went away. At start
//! it adopts the pods a previous agent left on disk: those still wanted carry on with their
//! running containers; the others are torn down.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::node::NodeContext;
use super::record::{PodDir, pod_uids};
use super::worker::{Command, PodWorker, Statuses};

#[derive(Debug)]
struct Handle {
    pod: Pod,
    commands: mpsc::Sender<Command>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
pub struct PodManager {
    ctx: Arc<NodeContext>,
    workers: HashMap<String, Handle>,
    /// Workers told to stop, until they are done.
    stopping: Vec<JoinHandle<()>>,
    statuses: Statuses,
}

impl PodManager {
    /// A manager that first adopts what is on disk under the root directory; workers publish
    /// their pods' status into `statuses`.
    pub fn new(ctx: Arc<NodeContext>, statuses: Statuses) -> PodManager {
        let mut manager = PodManager {
            ctx: Arc::clone(&ctx),
            workers: HashMap::new(),
            stopping: Vec::new(),
            statuses,
        };
        for uid in pod_uids(&ctx.root_dir) {
            match PodDir::new(&ctx.root_dir, &uid).load_pod() {
                Ok(pod) => manager.spawn(uid, pod),
                Err(error) => log::error!("cannot adopt pod {uid}: {error}"),
            }
        }
        manager
    }

    pub fn statuses(&self) -> Statuses {
        Arc::clone(&self.statuses)
    }

    fn spawn(&mut self, uid: String, pod: Pod) {
        let (commands, receiver) = mpsc::channel(4);
        let worker = PodWorker::new(
            Arc::clone(&self.ctx),
            pod.clone(),
            Arc::clone(&self.statuses),
        );
        let task = tokio::spawn(worker.run(receiver));
        self.workers.insert(
            uid,
            Handle {
                pod,
                commands,
                task,
            },
        );
    }

    /// Makes the workers match `desired` (pods by UID).
    pub async fn sync(&mut self, desired: &BTreeMap<String, Pod>) {
        let gone: Vec<String> = self
            .workers
            .keys()
            .filter(|uid| !desired.contains_key(*uid))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(handle) = self.workers.remove(&uid) {
                let _ = handle.commands.send(Command::Delete).await;
                self.stopping.push(handle.task);
            }
        }
        for (uid, pod) in desired {
            match self.workers.get_mut(uid) {
                Some(handle) if handle.pod != *pod => {
                    handle.pod = pod.clone();
                    let _ = handle
                        .commands
                        .send(Command::Update(Box::new(pod.clone())))
                        .await;
                }
                Some(_) => {}
                None => self.spawn(uid.clone(), pod.clone()),
            }
        }
        self.stopping.retain(|task| !task.is_finished());
    }

    /// Stops every worker without touching its pod (the agent is shutting down; the containers
    /// keep running and the next agent adopts them).
    pub fn detach(self) {
        for (_, handle) in self.workers {
            handle.task.abort();
        }
    }
}
