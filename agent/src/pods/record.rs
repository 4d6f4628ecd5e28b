//! What the agent remembers of a pod on disk, so a restarted agent carries on where the last one
//! stopped: the pod as last given (`pod.json`) and, per container, its current instance,
//! restart count, last termination and back-off (`records/<container>.json`).
//!
//! Layout under `<root-dir>/pods/<uid>/`: `pod.json`, `records/`, `containers/<id>/` (bundle,
//! rootfs, FIFOs), `volumes/`.

use std::io;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
#[error("pod state {path}")]
pub struct RecordError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// How one container instance ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Termination {
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// `Completed`, `Error`, `OOMKilled`, `ContainerStatusUnknown`.
    pub reason: String,
    pub message: Option<String>,
    pub started_at: i64,
    pub finished_at: i64,
    pub container_id: String,
}

/// The container instance the record points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    pub id: String,
    pub pid: i32,
    pub started_at: i64,
    /// The image's manifest digest (`imageID`) and normalised reference.
    pub image_id: String,
    pub image_ref: String,
    /// Set once it has exited.
    pub terminated: Option<Termination>,
}

/// One container of the pod across its restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecord {
    pub name: String,
    pub restart_count: u32,
    pub current: Option<Instance>,
    pub last_termination: Option<Termination>,
    /// Crash-loop back-off: the delay of the next restart and the earliest time for it.
    pub backoff_seconds: u64,
    pub next_start_at: i64,
}

/// The pod's directory.
#[derive(Debug, Clone)]
pub struct PodDir {
    pub path: PathBuf,
}

fn error(path: &Path) -> impl FnOnce(io::Error) -> RecordError + '_ {
    move |source| RecordError {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename: a crash leaves the old or
/// the new version, never half of one.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RecordError> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, bytes)
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(error(path))
}

impl PodDir {
    pub fn new(root_dir: &Path, uid: &str) -> PodDir {
        PodDir {
            path: root_dir.join("pods").join(uid),
        }
    }

    pub fn create(&self) -> Result<(), RecordError> {
        for dir in [self.path.join("records"), self.path.join("containers")] {
            std::fs::create_dir_all(&dir).map_err(error(&dir))?;
        }
        Ok(())
    }

    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.path.join("containers").join(id)
    }

    /// The ids of the container instances that have a directory here.
    pub fn container_ids(&self) -> Vec<String> {
        std::fs::read_dir(self.path.join("containers"))
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn volumes_dir(&self) -> PathBuf {
        self.path.join("volumes")
    }

    pub fn save_pod(&self, pod: &Pod) -> Result<(), RecordError> {
        let bytes = serde_json::to_vec(pod).expect("pods serialise");
        write_atomic(&self.path.join("pod.json"), &bytes)
    }

    pub fn load_pod(&self) -> Result<Pod, RecordError> {
        let path = self.path.join("pod.json");
        let bytes = std::fs::read(&path).map_err(error(&path))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| error(&path)(io::Error::new(io::ErrorKind::InvalidData, e)))
    }

    pub fn save_record(&self, record: &ContainerRecord) -> Result<(), RecordError> {
        let path = self
            .path
            .join("records")
            .join(format!("{}.json", record.name));
        write_atomic(
            &path,
            &serde_json::to_vec(record).expect("records serialise"),
        )
    }

    /// The record of container `name`; an empty one when there is none yet.
    pub fn load_record(&self, name: &str) -> Result<ContainerRecord, RecordError> {
        let path = self.path.join("records").join(format!("{name}.json"));
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| error(&path)(io::Error::new(io::ErrorKind::InvalidData, e))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(ContainerRecord {
                name: name.to_owned(),
                ..ContainerRecord::default()
            }),
            Err(e) => Err(error(&path)(e)),
        }
    }

    /// Removes the directory and everything in it (mounts must be gone by then).
    pub fn remove(&self) -> Result<(), RecordError> {
        match std::fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(error(&self.path)(e)),
            _ => Ok(()),
        }
    }
}

/// Every pod directory under `root_dir` (their UIDs).
pub fn pod_uids(root_dir: &Path) -> Vec<String> {
    std::fs::read_dir(root_dir.join("pods"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().join("pod.json").exists())
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_default_empty() {
        let root = tempfile::tempdir().unwrap();
        let dir = PodDir::new(root.path(), "u1");
        dir.create().unwrap();
        let empty = dir.load_record("web").unwrap();
        assert_eq!(empty.name, "web");
        assert_eq!(empty.restart_count, 0);
        let record = ContainerRecord {
            name: "web".into(),
            restart_count: 2,
            current: Some(Instance {
                id: "abc".into(),
                pid: 42,
                started_at: 1,
                image_id: "sha256:1".into(),
                image_ref: "r".into(),
                terminated: None,
            }),
            ..ContainerRecord::default()
        };
        dir.save_record(&record).unwrap();
        assert_eq!(dir.load_record("web").unwrap(), record);
        dir.save_pod(&Pod::default()).unwrap();
        assert_eq!(pod_uids(root.path()), ["u1"]);
        dir.remove().unwrap();
        assert!(pod_uids(root.path()).is_empty());
    }
}
