//! [`ImageError`]: every way pulling, unpacking and mounting an image can fail.
//!
//! Messages end up in a pod's status (`ErrImagePull`), so they are written for people:
//! `pull 127.0.0.1:5000/nope:1: manifest unknown`.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Wraps whatever made a pull fail with the reference it was for.
    #[error("pull {reference}: {cause}")]
    Pull {
        reference: String,
        cause: Box<ImageError>,
    },
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    /// The registry answered that the repository, tag or digest does not exist.
    #[error("{what}")]
    NotFound { what: String },
    #[error("cannot reach registry {registry}: {reason}")]
    Unreachable { registry: String, reason: String },
    #[error("registry {registry} refused access: {reason}")]
    Unauthorized { registry: String, reason: String },
    #[error("registry {registry}: {reason}")]
    Registry { registry: String, reason: String },
    #[error("no image for platform {platform} in the image index")]
    NoMatchingPlatform { platform: String },
    #[error("unsupported manifest: {reason}")]
    BadManifest { reason: String },
    #[error("image config {digest}: {reason}")]
    BadConfig { digest: String, reason: String },
    #[error(
        "blob {digest}: content has digest {actual} and size {actual_size}, expected size {expected_size}"
    )]
    DigestMismatch {
        digest: String,
        actual: String,
        expected_size: u64,
        actual_size: u64,
    },
    #[error("layer {digest}: uncompressed content has digest {actual}, the config says {expected}")]
    DiffIdMismatch {
        digest: String,
        expected: String,
        actual: String,
    },
    #[error("layer {digest}: unsupported media type {media_type}")]
    UnsupportedLayer { digest: String, media_type: String },
    #[error("layer {digest}: unsafe path {path:?}: {reason}")]
    UnsafePath {
        digest: String,
        path: String,
        reason: String,
    },
    #[error("layer {digest}: cannot unpack {path:?}")]
    Unpack {
        digest: String,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("malformed digest {digest:?}")]
    BadDigest { digest: String },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("docker config: {reason}")]
    DockerConfig { reason: String },
    #[error("image {digest} has no layers")]
    NoLayers { digest: String },
    #[error("cannot mount overlay at {path}: {reason}")]
    Mount { path: PathBuf, reason: String },
    #[error("cannot unmount {path}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("an image task failed: {reason}")]
    Task { reason: String },
}

impl ImageError {
    /// True when the registry said the image does not exist (as opposed to being unreachable,
    /// refusing credentials or sending bad content).
    pub fn is_not_found(&self) -> bool {
        match self {
            ImageError::Pull { cause, .. } => cause.is_not_found(),
            ImageError::NotFound { .. } => true,
            _ => false,
        }
    }

    /// True when the registry could not be reached at all.
    pub fn is_unreachable(&self) -> bool {
        match self {
            ImageError::Pull { cause, .. } => cause.is_unreachable(),
            ImageError::Unreachable { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io {
            action,
            path,
            source,
        }
    }

    pub(crate) fn in_pull(self, reference: &str) -> ImageError {
        match self {
            already @ ImageError::Pull { .. } => already,
            cause => ImageError::Pull {
                reference: reference.to_owned(),
                cause: Box::new(cause),
            },
        }
    }
}
