//! Image garbage collection, as kubelet's image GC decides it: when the disk holding the
//! images is more than `high`% full, the least recently used images that no container uses are
//! removed until it is below `low`%. Removing an image drops its reference records, then every
//! blob and snapshot that no remaining image needs (a layer two images share stays).

use std::collections::HashSet;
use std::fs;
use std::time::SystemTime;

use oci_client::manifest::OciImageManifest;

use super::ImageError;
use super::blob::digest_hex;
use super::config::parse_config;
use super::store::{ImageStore, RefRecord};
use super::unpack::chain_ids;

/// One recorded image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    pub reference: String,
    /// The manifest digest (`imageID`).
    pub digest: String,
    pub size: u64,
    /// When a container last started from it (or it was pulled).
    pub last_used: SystemTime,
}

/// The images to remove, oldest use first, so that `used` bytes of `capacity` drop below
/// `low_percent`, once they are above `high_percent`. Images whose digest is in `in_use` stay.
pub fn plan(
    images: &[StoredImage],
    in_use: &HashSet<String>,
    used: u64,
    capacity: u64,
    high_percent: u8,
    low_percent: u8,
) -> Vec<String> {
    if capacity == 0 || used * 100 < capacity * u64::from(high_percent) {
        return Vec::new();
    }
    let target = capacity * u64::from(low_percent) / 100;
    let mut candidates: Vec<&StoredImage> = images
        .iter()
        .filter(|image| !in_use.contains(&image.digest))
        .collect();
    candidates.sort_by_key(|image| image.last_used);
    let mut remaining = used;
    let mut chosen = Vec::new();
    for image in candidates {
        if remaining <= target {
            break;
        }
        remaining = remaining.saturating_sub(image.size);
        chosen.push(image.reference.clone());
    }
    chosen
}

impl ImageStore {
    fn records(&self) -> Result<Vec<(std::path::PathBuf, RefRecord, SystemTime)>, ImageError> {
        let dir = &self.inner.refs;
        let mut found = Vec::new();
        for entry in fs::read_dir(dir)
            .map_err(ImageError::io("list", dir))?
            .flatten()
        {
            let path = entry.path();
            let Ok(bytes) = fs::read(&path) else { continue };
            let Ok(record) = serde_json::from_slice::<RefRecord>(&bytes) else {
                continue;
            };
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            found.push((path, record, modified));
        }
        Ok(found)
    }

    /// Every recorded image, once per manifest digest: named by its tag reference when it has
    /// one (a pull also records `repository@digest`), last used when any of its names was.
    pub fn images(&self) -> Result<Vec<StoredImage>, ImageError> {
        let mut images: Vec<StoredImage> = Vec::new();
        for (_, record, last_used) in self.records()? {
            if let Some(known) = images.iter_mut().find(|i| i.digest == record.digest) {
                known.last_used = known.last_used.max(last_used);
                if known.reference.contains('@') && !record.reference.contains('@') {
                    known.reference = record.reference;
                }
                continue;
            }
            if let Some(image) = self.load(&record.reference, &record.digest)? {
                images.push(StoredImage {
                    reference: record.reference,
                    digest: record.digest,
                    size: image.size,
                    last_used,
                });
            }
        }
        Ok(images)
    }

    /// Marks the image `reference` as just used (for the least-recently-used order).
    pub fn touch(&self, reference: &str) {
        if let Ok(records) = self.records() {
            for (path, record, _) in records {
                if record.reference == reference {
                    let _ = fs::File::options()
                        .append(true)
                        .open(&path)
                        .and_then(|f| f.set_modified(SystemTime::now()));
                }
            }
        }
    }

    /// Removes image `reference` (every record naming it or its digest) and whatever no other
    /// image needs. Returns the bytes of blobs freed.
    pub fn remove(&self, reference: &str) -> Result<u64, ImageError> {
        let records = self.records()?;
        let digests: HashSet<String> = records
            .iter()
            .filter(|(_, r, _)| r.reference == reference)
            .map(|(_, r, _)| r.digest.clone())
            .collect();
        for (path, record, _) in &records {
            if record.reference == reference || digests.contains(&record.digest) {
                fs::remove_file(path).map_err(ImageError::io("remove", path))?;
            }
        }
        self.prune()
    }

    /// Removes blobs and snapshots no recorded image needs; returns the blob bytes freed.
    pub fn prune(&self) -> Result<u64, ImageError> {
        let mut blobs: HashSet<String> = HashSet::new();
        let mut snapshots: HashSet<String> = HashSet::new();
        for (_, record, _) in self.records()? {
            blobs.insert(digest_hex(&record.digest)?.to_owned());
            let Ok(bytes) = self.inner.blobs.read(&record.digest) else {
                continue;
            };
            let Ok(manifest) = serde_json::from_slice::<OciImageManifest>(&bytes) else {
                continue;
            };
            blobs.insert(digest_hex(&manifest.config.digest)?.to_owned());
            for layer in &manifest.layers {
                blobs.insert(digest_hex(&layer.digest)?.to_owned());
            }
            if let Ok(config) = self.inner.blobs.read(&manifest.config.digest)
                && let Ok((_, diff_ids)) = parse_config(&config, &manifest.config.digest)
            {
                for chain_id in chain_ids(&diff_ids) {
                    snapshots.insert(digest_hex(&chain_id)?.to_owned());
                }
            }
        }
        let mut freed = 0;
        {
            let dir = self.inner.blobs.dir();
            for entry in fs::read_dir(&dir)
                .map_err(ImageError::io("list", &dir))?
                .flatten()
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !blobs.contains(&name) {
                    freed += entry.metadata().map_or(0, |m| m.len());
                    let path = entry.path();
                    fs::remove_file(&path).map_err(ImageError::io("remove", &path))?;
                }
            }
        }
        {
            let dir = self.inner.snapshots.dir().to_owned();
            for entry in fs::read_dir(&dir)
                .map_err(ImageError::io("list", &dir))?
                .flatten()
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                // Unpacks in progress are `tmp-*`; only finished snapshots are collected.
                if name.len() == 64 && !snapshots.contains(&name) {
                    let path = entry.path();
                    fs::remove_dir_all(&path).map_err(ImageError::io("remove", &path))?;
                }
            }
        }
        Ok(freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn image(reference: &str, digest: &str, size: u64, age: u64) -> StoredImage {
        StoredImage {
            reference: reference.into(),
            digest: digest.into(),
            size,
            last_used: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 - age),
        }
    }

    #[test]
    fn the_oldest_unused_images_go_until_below_the_low_threshold() {
        let images = [
            image("a", "sha256:a", 30, 30),
            image("b", "sha256:b", 30, 20),
            image("c", "sha256:c", 30, 10),
            image("old-but-used", "sha256:u", 30, 99),
        ];
        let in_use = HashSet::from(["sha256:u".to_owned()]);
        assert!(
            plan(&images, &in_use, 84, 100, 85, 80).is_empty(),
            "below high"
        );
        assert_eq!(
            plan(&images, &in_use, 90, 100, 85, 80),
            ["a"],
            "90 - 30 = 60 <= 80"
        );
        assert_eq!(plan(&images, &in_use, 150, 100, 85, 80), ["a", "b", "c"]);
    }
}
