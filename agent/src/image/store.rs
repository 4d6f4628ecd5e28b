//! [`ImageStore`]: pull, local lookup and container root filesystems, over the blob store, the
//! snapshot store and the reference records (`refs/<sha256 of reference>.json`).
//!
//! Concurrency: pulls run in parallel; each blob and each snapshot is fetched or unpacked by
//! one pull while any other pull that needs it waits for that one (so the same image pulled
//! twice at once downloads once). A layer whose snapshot exists is not downloaded again.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{StreamExt as _, TryStreamExt as _};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use serde::{Deserialize, Serialize};

use super::blob::{BlobStore, sha256_digest};
use super::config::parse_config;
use super::inflight::InFlight;
use super::reference::parse_reference;
use super::registry::RegistryClient;
use super::snapshot::SnapshotStore;
use super::unpack::chain_ids;
use super::{Image, ImageError, RegistryCredentials, rootfs};

/// Layers of one image fetched and unpacked at the same time.
const PARALLEL_LAYERS: usize = 3;

/// Pulled images on this node; cheap to clone, shared between tasks.
#[derive(Debug, Clone)]
pub struct ImageStore {
    pub(super) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) blobs: BlobStore,
    pub(super) snapshots: SnapshotStore,
    pub(super) refs: PathBuf,
    insecure_registries: Vec<String>,
    in_flight: InFlight,
    blob_downloads: AtomicU64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct RefRecord {
    pub(super) reference: String,
    pub(super) digest: String,
}

impl ImageStore {
    /// Opens (creating) the store at `root`. Registries in `insecure_registries` ("host:port")
    /// are spoken to over plain HTTP.
    pub fn open(root: &Path, insecure_registries: Vec<String>) -> Result<ImageStore, ImageError> {
        // oci-client's TLS needs a process-wide rustls provider; keep the agent's if it set one.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let refs = root.join("refs");
        fs::create_dir_all(&refs).map_err(ImageError::io("create", &refs))?;
        Ok(ImageStore {
            inner: Arc::new(Inner {
                blobs: BlobStore::open(&root.join("blobs"))?,
                snapshots: SnapshotStore::open(&root.join("snapshots"))?,
                refs,
                insecure_registries,
                in_flight: InFlight::default(),
                blob_downloads: AtomicU64::new(0),
            }),
        })
    }

    /// How many blobs this store has downloaded since it was opened.
    pub fn blob_downloads(&self) -> u64 {
        self.inner.blob_downloads.load(Ordering::Relaxed)
    }

    /// The image `reference` names if it was pulled and all its layers are unpacked; no
    /// network.
    /// A reference with a digest also finds an image pulled by tag whose manifest or index
    /// has that digest.
    pub fn get(&self, reference: &str) -> Result<Option<Image>, ImageError> {
        let parsed = parse_reference(reference)?;
        if let Some(image) = self.get_recorded(&parsed.whole())? {
            return Ok(Some(image));
        }
        match parsed.digest() {
            Some(digest) => self.get_recorded(&by_digest(&parsed, digest)),
            None => Ok(None),
        }
    }

    fn get_recorded(&self, normalized: &str) -> Result<Option<Image>, ImageError> {
        let path = self.ref_path(normalized);
        let record = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(ImageError::io("read", &path)(error)),
        };
        let record: RefRecord = serde_json::from_slice(&record).map_err(|error| {
            ImageError::io("parse", &path)(std::io::Error::other(error.to_string()))
        })?;
        self.load(normalized, &record.digest)
    }

    /// Pulls `reference`: manifest, config and the layers not unpacked yet, then records the
    /// reference. Errors read `pull <reference>: <what went wrong>`.
    pub async fn pull(
        &self,
        reference: &str,
        credentials: &RegistryCredentials,
    ) -> Result<Image, ImageError> {
        self.pull_inner(reference, credentials)
            .await
            .map_err(|error| match error {
                ImageError::Unauthorized { registry, reason }
                    if *credentials == RegistryCredentials::Anonymous =>
                {
                    ImageError::Unauthorized {
                        registry,
                        reason: format!("{reason} (pulled without credentials)"),
                    }
                }
                other => other,
            })
            .map_err(|error| error.in_pull(reference))
    }

    async fn pull_inner(
        &self,
        reference: &str,
        credentials: &RegistryCredentials,
    ) -> Result<Image, ImageError> {
        let parsed = parse_reference(reference)?;
        let normalized = parsed.whole();
        let client = RegistryClient::new(&parsed, credentials, &self.inner.insecure_registries)?;
        let resolved = client.resolve_manifest().await?;
        if sha256_digest(&resolved.bytes) != resolved.digest {
            return Err(ImageError::BadManifest {
                reason: format!(
                    "manifest content does not match its digest {}",
                    resolved.digest
                ),
            });
        }
        if !self.inner.blobs.contains(&resolved.digest)? {
            self.inner
                .blobs
                .put(&resolved.digest, &resolved.bytes)
                .await?;
        }
        let manifest = resolved.manifest;
        let config_path = self.ensure_blob(&client, &manifest.config).await?;
        let config_bytes = tokio::fs::read(&config_path)
            .await
            .map_err(ImageError::io("read", &config_path))?;
        let (_, diff_ids) = parse_config(&config_bytes, &manifest.config.digest)?;
        if diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::BadConfig {
                digest: manifest.config.digest.clone(),
                reason: format!(
                    "{} diff ids for {} layers",
                    diff_ids.len(),
                    manifest.layers.len()
                ),
            });
        }
        if manifest.layers.is_empty() {
            return Err(ImageError::NoLayers {
                digest: resolved.digest,
            });
        }
        let chain = chain_ids(&diff_ids);
        // Indexes, not borrowed tuples, go through the stream: closures taking references
        // would make the pull future not `Send`, and callers spawn it.
        futures::stream::iter(0..chain.len())
            .map(|layer| {
                self.ensure_snapshot(
                    &client,
                    &manifest.layers[layer],
                    &diff_ids[layer],
                    &chain[layer],
                )
            })
            .buffer_unordered(PARALLEL_LAYERS)
            .try_collect::<Vec<()>>()
            .await?;
        log::info!("image: pulled {normalized} ({})", resolved.digest);
        self.write_ref(&normalized, &resolved.digest)?;
        for digest in std::iter::once(&resolved.digest).chain(&resolved.index_digest) {
            self.write_ref(&by_digest(&parsed, digest), &resolved.digest)?;
        }
        self.load(&normalized, &resolved.digest)?
            .ok_or_else(|| ImageError::BadManifest {
                reason: "the pulled image vanished from the store".to_owned(),
            })
    }

    /// Mounts an overlayfs of `image`'s snapshots at `container_dir/rootfs`, with
    /// `container_dir/upper` and `container_dir/work`; does nothing if it is mounted already.
    pub fn mount_rootfs(&self, image: &Image, container_dir: &Path) -> Result<PathBuf, ImageError> {
        let mut lower_dirs = Vec::with_capacity(image.chain_ids.len());
        for chain_id in &image.chain_ids {
            let path = self.inner.snapshots.path(chain_id)?;
            if !path.is_dir() {
                return Err(ImageError::Mount {
                    path: container_dir.join("rootfs"),
                    reason: format!("snapshot {chain_id} of {} is missing", image.reference),
                });
            }
            lower_dirs.push(path);
        }
        rootfs::mount_overlay(&lower_dirs, container_dir)
    }

    /// Unmounts `container_dir/rootfs` (detaching lazily if busy) and removes rootfs, upper
    /// and work; nothing mounted is fine.
    pub fn unmount_rootfs(&self, container_dir: &Path) -> Result<(), ImageError> {
        rootfs::unmount_overlay(container_dir)
    }

    async fn ensure_blob(
        &self,
        client: &RegistryClient,
        descriptor: &OciDescriptor,
    ) -> Result<PathBuf, ImageError> {
        let _guard = self
            .inner
            .in_flight
            .lock(format!("blob {}", descriptor.digest))
            .await;
        let path = self.inner.blobs.path(&descriptor.digest)?;
        if path.is_file() {
            return Ok(path);
        }
        let size = u64::try_from(descriptor.size).map_err(|_| ImageError::BadManifest {
            reason: format!("blob {} has size {}", descriptor.digest, descriptor.size),
        })?;
        let writer = self.inner.blobs.writer(&descriptor.digest, size).await?;
        self.inner.blob_downloads.fetch_add(1, Ordering::Relaxed);
        log::debug!(
            "image: downloading blob {} ({size} bytes)",
            descriptor.digest
        );
        client.fetch_blob(descriptor, writer).await
    }

    async fn ensure_snapshot(
        &self,
        client: &RegistryClient,
        layer: &OciDescriptor,
        diff_id: &str,
        chain_id: &str,
    ) -> Result<(), ImageError> {
        if layer.media_type.contains("zstd") || !layer.media_type.contains("tar") {
            return Err(ImageError::UnsupportedLayer {
                digest: layer.digest.clone(),
                media_type: layer.media_type.clone(),
            });
        }
        let _guard = self
            .inner
            .in_flight
            .lock(format!("snapshot {chain_id}"))
            .await;
        if self.inner.snapshots.contains(chain_id)? {
            return Ok(());
        }
        let blob = self.ensure_blob(client, layer).await?;
        let snapshots = self.inner.snapshots.clone();
        let (chain_id, digest, diff_id) = (
            chain_id.to_owned(),
            layer.digest.clone(),
            diff_id.to_owned(),
        );
        tokio::task::spawn_blocking(move || snapshots.unpack(&chain_id, &digest, &diff_id, &blob))
            .await
            .map_err(|error| ImageError::Task {
                reason: error.to_string(),
            })??;
        Ok(())
    }

    fn ref_path(&self, normalized: &str) -> PathBuf {
        let key = sha256_digest(normalized.as_bytes());
        self.inner
            .refs
            .join(format!("{}.json", key.trim_start_matches("sha256:")))
    }

    fn write_ref(&self, normalized: &str, digest: &str) -> Result<(), ImageError> {
        let record = RefRecord {
            reference: normalized.to_owned(),
            digest: digest.to_owned(),
        };
        let bytes = serde_json::to_vec(&record).expect("a record of two strings serializes");
        let path = self.ref_path(normalized);
        let mut temp = tempfile::NamedTempFile::new_in(&self.inner.refs)
            .map_err(ImageError::io("create a temp file in", &self.inner.refs))?;
        std::io::Write::write_all(&mut temp, &bytes)
            .map_err(ImageError::io("write", temp.path()))?;
        temp.as_file()
            .sync_all()
            .map_err(ImageError::io("sync", temp.path()))?;
        temp.persist(&path)
            .map_err(|error| ImageError::io("write", &path)(error.error))?;
        Ok(())
    }

    /// The image with manifest `digest`, if its manifest, config and every snapshot are here.
    pub(super) fn load(&self, reference: &str, digest: &str) -> Result<Option<Image>, ImageError> {
        let blobs = &self.inner.blobs;
        if !blobs.contains(digest)? {
            return Ok(None);
        }
        let manifest: OciImageManifest =
            serde_json::from_slice(&blobs.read(digest)?).map_err(|error| {
                ImageError::BadManifest {
                    reason: format!("stored manifest {digest}: {error}"),
                }
            })?;
        if !blobs.contains(&manifest.config.digest)? {
            return Ok(None);
        }
        let (config, diff_ids) = parse_config(
            &blobs.read(&manifest.config.digest)?,
            &manifest.config.digest,
        )?;
        let chain_ids = chain_ids(&diff_ids);
        for chain_id in &chain_ids {
            if !self.inner.snapshots.contains(chain_id)? {
                return Ok(None);
            }
        }
        let size = manifest
            .layers
            .iter()
            .chain(std::iter::once(&manifest.config))
            .map(|descriptor| u64::try_from(descriptor.size).unwrap_or(0))
            .sum();
        Ok(Some(Image {
            reference: reference.to_owned(),
            digest: digest.to_owned(),
            config,
            chain_ids,
            size,
        }))
    }
}

/// `registry/repository@digest`: the record key that finds an image by digest.
fn by_digest(reference: &oci_client::Reference, digest: &str) -> String {
    format!(
        "{}/{}@{digest}",
        reference.registry(),
        reference.repository()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_and_its_pulls_can_be_shared_and_spawned() {
        fn shared<T: Clone + Send + Sync + 'static>() {}
        fn spawnable<T: Send>(_: &T) {}
        shared::<ImageStore>();
        let root = tempfile::tempdir().unwrap();
        let store = ImageStore::open(root.path(), vec![]).unwrap();
        let pull = store.pull("busybox", &RegistryCredentials::Anonymous);
        spawnable(&pull);
    }
}
