//! Static pods: Pod manifests (YAML or JSON, one Pod per file) in a directory
//! (`--pod-manifest-path`), re-read when they change. As kubelet does, each pod's name gets
//! `-<node name>` appended, its namespace defaults to `default`, and its UID is a hash of the
//! manifest and the node, so an edited manifest is a new pod. A file that does not parse is
//! reported, naming the file and what is wrong, and its last good version is kept.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Pod;
use sha2::{Digest as _, Sha256};

pub const CONFIG_SOURCE: &str = "kubernetes.io/config.source";
pub const CONFIG_HASH: &str = "kubernetes.io/config.hash";
pub const CONFIG_SEEN: &str = "kubernetes.io/config.seen";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The manifest directory and what was last read from each file.
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    node_name: String,
    /// Per file: the version read (mtime, length) and the pod it gave last time it parsed.
    files: BTreeMap<PathBuf, ((SystemTime, u64), Option<Pod>)>,
}

impl ManifestDir {
    pub fn new(dir: &Path, node_name: &str) -> ManifestDir {
        ManifestDir {
            dir: dir.to_owned(),
            node_name: node_name.to_owned(),
            files: BTreeMap::new(),
        }
    }

    /// Re-reads changed files; returns the pods (by UID) and the errors of files that did not
    /// parse this time.
    pub fn scan(&mut self) -> (BTreeMap<String, Pod>, Vec<ManifestError>) {
        let mut errors = Vec::new();
        let mut present = Vec::new();
        match std::fs::read_dir(&self.dir) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let path = entry.path();
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    // Editors' swap and backup files, hidden files: as kubelet, ignored.
                    if name.starts_with('.') || name.ends_with('~') || name.ends_with(".swp") {
                        continue;
                    }
                    let Ok(meta) = entry.metadata() else { continue };
                    if !meta.is_file() {
                        continue;
                    }
                    present.push(path.clone());
                    let version = (
                        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        meta.len(),
                    );
                    if self
                        .files
                        .get(&path)
                        .is_some_and(|(seen, _)| *seen == version)
                    {
                        continue;
                    }
                    let previous = self.files.remove(&path).and_then(|(_, pod)| pod);
                    let pod = match std::fs::read(&path)
                        .map_err(|source| ManifestError::Read {
                            path: path.clone(),
                            source,
                        })
                        .and_then(|bytes| static_pod(&path, &bytes, &self.node_name))
                    {
                        Ok(pod) => Some(pod),
                        Err(error) => {
                            errors.push(error);
                            previous
                        }
                    };
                    self.files.insert(path, (version, pod));
                }
            }
            Err(source) => errors.push(ManifestError::Read {
                path: self.dir.clone(),
                source,
            }),
        }
        self.files.retain(|path, _| present.contains(path));
        let pods = self
            .files
            .values()
            .filter_map(|(_, pod)| pod.clone())
            .filter_map(|pod| Some((pod.metadata.uid.clone()?, pod)))
            .collect();
        (pods, errors)
    }
}

/// Parses one manifest into the pod kubelet would make of it.
pub fn static_pod(path: &Path, bytes: &[u8], node_name: &str) -> Result<Pod, ManifestError> {
    let invalid = |message: String| ManifestError::Invalid {
        path: path.to_owned(),
        message,
    };
    let value: serde_json::Value =
        serde_yaml_ng::from_slice(bytes).map_err(|error| invalid(error.to_string()))?;
    match (value["apiVersion"].as_str(), value["kind"].as_str()) {
        (Some("v1"), Some("Pod")) => {}
        (api_version, kind) => {
            return Err(invalid(format!(
                "expected apiVersion v1, kind Pod; found apiVersion {}, kind {}",
                api_version.unwrap_or("(none)"),
                kind.unwrap_or("(none)")
            )));
        }
    }
    let mut pod: Pod = serde_json::from_value(value).map_err(|error| invalid(error.to_string()))?;
    let Some(name) = pod.metadata.name.clone().filter(|n| !n.is_empty()) else {
        return Err(invalid("metadata.name: Required value".to_owned()));
    };
    let Some(spec) = pod.spec.as_mut() else {
        return Err(invalid("spec: Required value".to_owned()));
    };
    if spec.containers.is_empty() {
        return Err(invalid("spec.containers: Required value".to_owned()));
    }
    for (index, container) in spec.containers.iter().enumerate() {
        if container.image.as_deref().unwrap_or("").is_empty() {
            return Err(invalid(format!(
                "spec.containers[{index}].image: Required value"
            )));
        }
    }
    spec.node_name = Some(node_name.to_owned());
    let hash = Sha256::new()
        .chain_update(bytes)
        .chain_update(node_name.as_bytes())
        .chain_update(b"file")
        .finalize();
    let hex: String = hash.iter().take(16).map(|b| format!("{b:02x}")).collect();
    let metadata = &mut pod.metadata;
    metadata.name = Some(format!("{name}-{node_name}"));
    if metadata.namespace.as_deref().unwrap_or("").is_empty() {
        metadata.namespace = Some("default".to_owned());
    }
    metadata.uid = Some(hex.clone());
    let annotations = metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(CONFIG_SOURCE.to_owned(), "file".to_owned());
    annotations.insert(CONFIG_HASH.to_owned(), hex);
    Ok(pod)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - {name: c, image: busybox}\n";

    #[test]
    fn manifests_become_static_pods() {
        let pod = static_pod(Path::new("/m/web.yaml"), WEB.as_bytes(), "n1").unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("web-n1"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(pod.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
        let uid = pod.metadata.uid.clone().unwrap();
        assert_eq!(uid.len(), 32);
        let again = static_pod(Path::new("/m/web.yaml"), WEB.as_bytes(), "n1").unwrap();
        assert_eq!(again.metadata.uid, Some(uid.clone()), "stable");
        let other = static_pod(Path::new("/m/web.yaml"), WEB.as_bytes(), "n2").unwrap();
        assert_ne!(other.metadata.uid, Some(uid), "per node");
    }

    #[test]
    fn bad_manifests_name_the_file_and_field() {
        let error = |text: &str| {
            static_pod(Path::new("/m/bad.yaml"), text.as_bytes(), "n1")
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            error("apiVersion: v1\nkind: Service\nmetadata: {name: x}\n"),
            "/m/bad.yaml: expected apiVersion v1, kind Pod; found apiVersion v1, kind Service"
        );
        assert_eq!(
            error(
                "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: c}]}\n"
            ),
            "/m/bad.yaml: spec.containers[0].image: Required value"
        );
        assert!(error("apiVersion: v1\nkind: Pod\nspec: [").starts_with("/m/bad.yaml: "));
    }

    #[test]
    fn a_broken_edit_keeps_the_last_good_pod() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("web.yaml");
        std::fs::write(&file, WEB).unwrap();
        std::fs::write(dir.path().join(".web.yaml.swp"), "junk").unwrap();
        let mut manifests = ManifestDir::new(dir.path(), "n1");
        let (pods, errors) = manifests.scan();
        assert_eq!((pods.len(), errors.len()), (1, 0));
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Pod\nspec: [broken, longer than before]",
        )
        .unwrap();
        let (again, errors) = manifests.scan();
        assert_eq!(errors.len(), 1);
        assert_eq!(
            again.keys().collect::<Vec<_>>(),
            pods.keys().collect::<Vec<_>>()
        );
        std::fs::remove_file(&file).unwrap();
        let (gone, _) = manifests.scan();
        assert!(gone.is_empty());
    }
}
