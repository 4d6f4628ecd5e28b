//! Pod volumes the agent can make without the API: `emptyDir` (on disk, or tmpfs for
//! `medium: Memory` with `sizeLimit`), `hostPath`, and `downwardAPI` files. Each lives under
//! `<pod dir>/volumes/<name>` (hostPath: the host path itself) and is bind-mounted into the
//! containers that list it in `volumeMounts`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::quantity;
use crate::runtime::bundle::BindMount;
use crate::sys::mount;

use super::env::field_value;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {volume}: {message}")]
    Invalid { volume: String, message: String },
    #[error("volume {volume}: {path}")]
    Io {
        volume: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("container {container}: volumeMount {name}: no volume of that name in the pod")]
    NoVolume { container: String, name: String },
}

/// Makes every volume of the pod (idempotent); returns each volume's host directory.
pub fn prepare(
    pod: &Pod,
    volumes_dir: &Path,
    pod_ip: Option<&str>,
    host_ip: Option<&str>,
) -> Result<BTreeMap<String, PathBuf>, VolumeError> {
    let mut made = BTreeMap::new();
    for volume in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
    {
        let name = &volume.name;
        let io = |path: &Path| {
            let (volume, path) = (name.clone(), path.to_owned());
            move |source| VolumeError::Io {
                volume,
                path,
                source,
            }
        };
        let dir = volumes_dir.join(name);
        if let Some(empty_dir) = &volume.empty_dir {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            if empty_dir.medium.as_deref() == Some("Memory")
                && !mount::is_mount_point(&dir).map_err(io(&dir))?
            {
                let size = match &empty_dir.size_limit {
                    Some(limit) => u64::try_from(quantity::value(&limit.0).map_err(|e| {
                        VolumeError::Invalid {
                            volume: name.clone(),
                            message: format!("sizeLimit: {e}"),
                        }
                    })?)
                    .unwrap_or(0),
                    None => 0,
                };
                mount::tmpfs(&dir, size).map_err(io(&dir))?;
            }
            made.insert(name.clone(), dir);
        } else if let Some(host_path) = &volume.host_path {
            let path = PathBuf::from(&host_path.path);
            match host_path.type_.as_deref().unwrap_or("") {
                "DirectoryOrCreate" => std::fs::create_dir_all(&path).map_err(io(&path))?,
                "Directory" if !path.is_dir() => {
                    return Err(VolumeError::Invalid {
                        volume: name.clone(),
                        message: format!(
                            "hostPath type check failed: {} is not a directory",
                            host_path.path
                        ),
                    });
                }
                "File" if !path.is_file() => {
                    return Err(VolumeError::Invalid {
                        volume: name.clone(),
                        message: format!(
                            "hostPath type check failed: {} is not a file",
                            host_path.path
                        ),
                    });
                }
                _ => {}
            }
            made.insert(name.clone(), path);
        } else if let Some(downward) = &volume.downward_api {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            for item in downward.items.iter().flatten() {
                let Some(field) = &item.field_ref else {
                    return Err(VolumeError::Invalid {
                        volume: name.clone(),
                        message: format!("item {}: only fieldRef items are supported", item.path),
                    });
                };
                let value =
                    field_value(pod, pod_ip, host_ip, &field.field_path).ok_or_else(|| {
                        VolumeError::Invalid {
                            volume: name.clone(),
                            message: format!("unsupported fieldPath `{}`", field.field_path),
                        }
                    })?;
                if item.path.starts_with('/') || item.path.split('/').any(|part| part == "..") {
                    return Err(VolumeError::Invalid {
                        volume: name.clone(),
                        message: format!(
                            "item path `{}` must be relative and must not contain '..'",
                            item.path
                        ),
                    });
                }
                let file = dir.join(&item.path);
                if let Some(parent) = file.parent() {
                    std::fs::create_dir_all(parent).map_err(io(parent))?;
                }
                std::fs::write(&file, value).map_err(io(&file))?;
            }
            made.insert(name.clone(), dir);
        } else {
            return Err(VolumeError::Invalid {
                volume: name.clone(),
                message: "this volume type needs the API server (configMap, secret, projected, \
                          persistentVolumeClaim) or is not supported by Keel yet"
                    .to_owned(),
            });
        }
    }
    Ok(made)
}

/// The bind mounts of `container`'s `volumeMounts`.
pub fn mounts_for(
    container: &Container,
    volumes: &BTreeMap<String, PathBuf>,
) -> Result<Vec<BindMount>, VolumeError> {
    container
        .volume_mounts
        .iter()
        .flatten()
        .map(|volume_mount| {
            let source = volumes
                .get(&volume_mount.name)
                .ok_or_else(|| VolumeError::NoVolume {
                    container: container.name.clone(),
                    name: volume_mount.name.clone(),
                })?;
            let source = match volume_mount.sub_path.as_deref() {
                Some(sub) if !sub.is_empty() => source.join(sub),
                _ => source.clone(),
            };
            Ok(BindMount {
                source,
                destination: volume_mount.mount_path.clone(),
                read_only: volume_mount.read_only.unwrap_or(false),
            })
        })
        .collect()
}

/// Unmounts the pod's tmpfs volumes (before the pod directory is removed).
pub fn teardown(volumes_dir: &Path) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(volumes_dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        mount::unmount(&entry.path(), true)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_dir_downward_api_and_mounts() {
        let dir = tempfile::tempdir().unwrap();
        let pod: Pod = serde_yaml_ng::from_str(
            "metadata: {name: p, labels: {app: web}}\n\
             spec:\n  containers: [{name: c, volumeMounts: [{name: scratch, mountPath: /s}, {name: info, mountPath: /etc/info, readOnly: true}]}]\n\
             \x20 volumes:\n  - {name: scratch, emptyDir: {}}\n\
             \x20 - name: info\n    downwardAPI: {items: [{path: labels/app, fieldRef: {fieldPath: \"metadata.labels['app']\"}}, {path: name, fieldRef: {fieldPath: metadata.name}}]}\n",
        )
        .unwrap();
        let volumes = prepare(&pod, dir.path(), None, None).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("info/labels/app")).unwrap(),
            "web"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("info/name")).unwrap(),
            "p"
        );
        let mounts = mounts_for(&pod.spec.as_ref().unwrap().containers[0], &volumes).unwrap();
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[1].destination, "/etc/info");
        assert!(mounts[1].read_only);

        let bad: Pod = serde_yaml_ng::from_str(
            "spec: {containers: [{name: c, volumeMounts: [{name: nope, mountPath: /x}]}]}",
        )
        .unwrap();
        let error = mounts_for(&bad.spec.as_ref().unwrap().containers[0], &volumes).unwrap_err();
        assert_eq!(
            error.to_string(),
            "container c: volumeMount nope: no volume of that name in the pod"
        );
    }
}
