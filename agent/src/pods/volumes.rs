//! Pod volumes: `emptyDir` (on disk, or tmpfs for `medium: Memory` with `sizeLimit`),
//! `hostPath`, `downwardAPI`, `configMap`, `secret` (on tmpfs, never on disk) and `projected`
//! (configMap, secret and downwardAPI sources). Each lives under `<pod dir>/volumes/<name>`
//! (hostPath: the host path itself) and is bind-mounted into the containers that list it in
//! `volumeMounts`. Files are written when the pod starts; later ConfigMap / Secret changes are
//! not propagated yet.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::quantity;
use crate::runtime::bundle::BindMount;
use crate::sys::mount;

use super::env::field_value;
use super::refs::PodRefs;

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
    #[error("MountVolume.SetUp failed for volume \"{volume}\" : {message}")]
    SetUp { volume: String, message: String },
    #[error("container {container}: volumeMount {name}: no volume of that name in the pod")]
    NoVolume { container: String, name: String },
}

/// Makes every volume of the pod (idempotent); returns each volume's host directory.
pub fn prepare(
    pod: &Pod,
    volumes_dir: &Path,
    pod_ip: Option<&str>,
    host_ip: Option<&str>,
    refs: &PodRefs,
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
        } else if let Some(config_map) = &volume.config_map {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            let data = source_data(name, refs.config_map(&config_map.name), config_map.optional)?;
            write_items(
                name,
                &dir,
                &data,
                config_map.items.as_deref(),
                config_map.default_mode,
            )?;
            made.insert(name.clone(), dir);
        } else if let Some(secret) = &volume.secret {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            if !mount::is_mount_point(&dir).map_err(io(&dir))? {
                mount::tmpfs(&dir, 0).map_err(io(&dir))?;
            }
            let secret_name = secret.secret_name.clone().unwrap_or_default();
            let data = source_data(name, refs.secret(&secret_name), secret.optional)?;
            write_items(
                name,
                &dir,
                &data,
                secret.items.as_deref(),
                secret.default_mode,
            )?;
            made.insert(name.clone(), dir);
        } else if let Some(projected) = &volume.projected {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            if !mount::is_mount_point(&dir).map_err(io(&dir))? {
                mount::tmpfs(&dir, 0).map_err(io(&dir))?;
            }
            for source in projected.sources.iter().flatten() {
                if let Some(cm) = &source.config_map {
                    let data = source_data(name, refs.config_map(&cm.name), cm.optional)?;
                    write_items(
                        name,
                        &dir,
                        &data,
                        cm.items.as_deref(),
                        projected.default_mode,
                    )?;
                } else if let Some(secret) = &source.secret {
                    let data = source_data(name, refs.secret(&secret.name), secret.optional)?;
                    write_items(
                        name,
                        &dir,
                        &data,
                        secret.items.as_deref(),
                        projected.default_mode,
                    )?;
                } else if let Some(downward) = &source.downward_api {
                    let mut data = BTreeMap::new();
                    let mut items = Vec::new();
                    for item in downward.items.iter().flatten() {
                        let value = item
                            .field_ref
                            .as_ref()
                            .and_then(|f| field_value(pod, pod_ip, host_ip, &f.field_path))
                            .ok_or_else(|| VolumeError::SetUp {
                                volume: name.clone(),
                                message: format!("unsupported downwardAPI item {}", item.path),
                            })?;
                        data.insert(item.path.clone(), value.into_bytes());
                        items.push(k8s_openapi::api::core::v1::KeyToPath {
                            key: item.path.clone(),
                            path: item.path.clone(),
                            mode: item.mode,
                        });
                    }
                    write_items(name, &dir, &data, Some(&items), projected.default_mode)?;
                } else {
                    return Err(VolumeError::SetUp {
                        volume: name.clone(),
                        message: "serviceAccountToken and clusterTrustBundle projections are not supported yet".to_owned(),
                    });
                }
            }
            made.insert(name.clone(), dir);
        } else {
            return Err(VolumeError::Invalid {
                volume: name.clone(),
                message:
                    "this volume type (persistentVolumeClaim, csi, nfs, ...) is not supported by \
                          Keel yet"
                        .to_owned(),
            });
        }
    }
    Ok(made)
}

/// A ConfigMap's or Secret's data for a volume; an optional one that is missing gives nothing.
fn source_data(
    volume: &str,
    data: Result<BTreeMap<String, Vec<u8>>, String>,
    optional: Option<bool>,
) -> Result<BTreeMap<String, Vec<u8>>, VolumeError> {
    match data {
        Ok(data) => Ok(data),
        Err(_) if optional == Some(true) => Ok(BTreeMap::new()),
        Err(message) => Err(VolumeError::SetUp {
            volume: volume.to_owned(),
            message,
        }),
    }
}

/// Writes `data` into `dir`: every key as a file of its name, or only `items` (key -> path).
fn write_items(
    volume: &str,
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
    default_mode: Option<i32>,
) -> Result<(), VolumeError> {
    use std::os::unix::fs::PermissionsExt as _;
    let wanted: Vec<(String, String, Option<i32>)> = match items {
        Some(items) => items
            .iter()
            .map(|item| (item.key.clone(), item.path.clone(), item.mode))
            .collect(),
        None => data
            .keys()
            .map(|key| (key.clone(), key.clone(), None))
            .collect(),
    };
    for (key, path, mode) in wanted {
        let Some(value) = data.get(&key) else {
            return Err(VolumeError::SetUp {
                volume: volume.to_owned(),
                message: format!("configmap references non-existent config key: {key}"),
            });
        };
        if path.starts_with('/') || path.split('/').any(|part| part == "..") {
            return Err(VolumeError::SetUp {
                volume: volume.to_owned(),
                message: format!(
                    "invalid path {path:?}: must be relative and must not contain '..'"
                ),
            });
        }
        let file = dir.join(&path);
        let io = |source| VolumeError::Io {
            volume: volume.to_owned(),
            path: file.clone(),
            source,
        };
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&file, value).map_err(io)?;
        let mode = u32::try_from(mode.or(default_mode).unwrap_or(0o644)).unwrap_or(0o644);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    }
    Ok(())
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
        let volumes = prepare(&pod, dir.path(), None, None, &PodRefs::default()).unwrap();
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
