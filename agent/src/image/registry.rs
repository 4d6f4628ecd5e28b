//! The remote side of a pull, over `oci-client`: manifests (with platform selection in image
//! indexes) and blobs streamed chunk by chunk into a [`BlobWriter`]. Also turns the client's
//! errors into readable [`ImageError`]s.

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, ImageIndexEntry,
    OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest, OciManifest,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::blob::BlobWriter;
use super::{ImageError, RegistryCredentials};

const ACCEPTED_MANIFESTS: &[&str] = &[
    OCI_IMAGE_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// One pull's connection to one registry, with that pull's credentials.
pub struct RegistryClient {
    client: Client,
    auth: RegistryAuth,
    reference: Reference,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("reference", &self.reference.whole())
            .finish_non_exhaustive()
    }
}

/// A platform-specific image manifest as the registry sent it.
#[derive(Debug)]
pub struct ResolvedManifest {
    pub digest: String,
    /// The index's digest when the reference named an index.
    pub index_digest: Option<String>,
    pub bytes: Vec<u8>,
    pub manifest: OciImageManifest,
}

impl RegistryClient {
    /// `insecure_registries` ("host:port") are spoken to over plain HTTP, all others over TLS.
    pub fn new(
        reference: &Reference,
        credentials: &RegistryCredentials,
        insecure_registries: &[String],
    ) -> Result<RegistryClient, ImageError> {
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure_registries.to_vec()),
            // Index entries are chosen here, by `select_platform`.
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            ..ClientConfig::default()
        };
        let client = Client::try_from(config).map_err(|error| registry_error(reference, error))?;
        Ok(RegistryClient {
            client,
            auth: credentials.to_registry_auth(),
            reference: reference.clone(),
        })
    }

    /// The image manifest for `reference`, choosing this host's platform from an index.
    pub async fn resolve_manifest(&self) -> Result<ResolvedManifest, ImageError> {
        let (bytes, digest) = self.fetch_manifest(&self.reference).await?;
        match parse_manifest(&bytes)? {
            OciManifest::Image(manifest) => Ok(ResolvedManifest {
                digest,
                index_digest: None,
                bytes,
                manifest,
            }),
            OciManifest::ImageIndex(index) => {
                let index_digest = digest;
                let entry = select_platform(&index.manifests).ok_or_else(|| {
                    ImageError::NoMatchingPlatform {
                        platform: format!("linux/{}", host_architecture()),
                    }
                })?;
                let by_digest = self.reference.clone_with_digest(entry.digest.clone());
                let (bytes, digest) = self.fetch_manifest(&by_digest).await?;
                match parse_manifest(&bytes)? {
                    OciManifest::Image(manifest) => Ok(ResolvedManifest {
                        digest,
                        index_digest: Some(index_digest),
                        bytes,
                        manifest,
                    }),
                    OciManifest::ImageIndex(_) => Err(ImageError::BadManifest {
                        reason: format!("index entry {} is an index itself", entry.digest),
                    }),
                }
            }
        }
    }

    async fn fetch_manifest(&self, reference: &Reference) -> Result<(Vec<u8>, String), ImageError> {
        let (bytes, digest) = self
            .client
            .pull_manifest_raw(reference, &self.auth, ACCEPTED_MANIFESTS)
            .await
            .map_err(|error| registry_error(reference, error))?;
        Ok((bytes.to_vec(), digest))
    }

    /// Streams the blob `descriptor` into `writer` and commits it (which verifies it).
    pub async fn fetch_blob(
        &self,
        descriptor: &OciDescriptor,
        mut writer: BlobWriter,
    ) -> Result<PathBuf, ImageError> {
        // Stores the credentials for the registry if no manifest request did yet.
        self.client
            .store_auth_if_needed(self.reference.resolve_registry(), &self.auth)
            .await;
        let mut stream = self
            .client
            .pull_blob_stream(&self.reference, descriptor)
            .await
            .map_err(|error| registry_error(&self.reference, error))?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|error| ImageError::Registry {
                registry: self.reference.registry().to_owned(),
                reason: format!(
                    "download of {} broke off: {}",
                    descriptor.digest,
                    root_cause(&error)
                ),
            })?;
            writer.write(&chunk).await?;
        }
        writer.commit().await
    }
}

fn parse_manifest(bytes: &[u8]) -> Result<OciManifest, ImageError> {
    serde_json::from_slice(bytes).map_err(|error| ImageError::BadManifest {
        reason: error.to_string(),
    })
}

/// This host's architecture in OCI's words (`amd64`, `arm64`, ...).
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// The first linux entry for this host's architecture.
pub fn select_platform(entries: &[ImageIndexEntry]) -> Option<&ImageIndexEntry> {
    entries.iter().find(|entry| {
        entry.platform.as_ref().is_some_and(|platform| {
            platform.os.to_string() == "linux"
                && platform.architecture.to_string() == host_architecture()
        })
    })
}

fn registry_error(reference: &Reference, error: OciDistributionError) -> ImageError {
    let registry = reference.registry().to_owned();
    match error {
        OciDistributionError::RegistryError { envelope, .. } => {
            let reason = envelope
                .errors
                .iter()
                .map(|error| {
                    if error.message.is_empty() {
                        format!("{:?}", error.code).to_lowercase()
                    } else {
                        error.message.to_lowercase()
                    }
                })
                .collect::<Vec<_>>()
                .join("; ");
            let code = envelope.errors.first().map(|error| &error.code);
            match code {
                Some(
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::NotFound,
                ) => ImageError::NotFound { what: reason },
                Some(OciErrorCode::Unauthorized | OciErrorCode::Denied) => {
                    ImageError::Unauthorized { registry, reason }
                }
                _ => ImageError::Registry { registry, reason },
            }
        }
        OciDistributionError::ServerError { code: 404, .. } => ImageError::NotFound {
            what: "not found".to_owned(),
        },
        OciDistributionError::ServerError {
            code: 401 | 403,
            message,
            ..
        } => ImageError::Unauthorized {
            registry,
            reason: message.to_lowercase(),
        },
        OciDistributionError::UnauthorizedError { .. } => ImageError::Unauthorized {
            registry,
            reason: "unauthorized".to_owned(),
        },
        OciDistributionError::AuthenticationFailure(reason) => ImageError::Unauthorized {
            registry,
            reason: reason.to_lowercase(),
        },
        OciDistributionError::ImageManifestNotFoundError(reason) => ImageError::NotFound {
            what: reason.to_lowercase(),
        },
        OciDistributionError::RequestError(error) if tls_error(&error).is_some() => {
            let tls = tls_error(&error)
                .map(ToString::to_string)
                .unwrap_or_default();
            ImageError::Unreachable {
                reason: format!(
                    "tls handshake failed ({}); a registry that serves plain http must be \
                     listed as insecure",
                    tls.to_lowercase()
                ),
                registry,
            }
        }
        OciDistributionError::RequestError(error) if error.is_connect() || error.is_timeout() => {
            ImageError::Unreachable {
                registry,
                reason: root_cause(&error),
            }
        }
        OciDistributionError::RequestError(error) => ImageError::Registry {
            registry,
            reason: root_cause(&error),
        },
        other => ImageError::Registry {
            registry,
            reason: other.to_string().to_lowercase(),
        },
    }
}

/// `error` and its causes. io::Error's `source()` skips the error it wraps, so for those
/// the wrapped error is the next cause.
fn causes<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |error| {
        match error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(wrapped) => Some(wrapped as &(dyn std::error::Error + 'static)),
            None => error.source(),
        }
    })
}

/// The rustls error somewhere in `error`'s chain, if any.
fn tls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    causes(error).find_map(|cause| cause.downcast_ref::<rustls::Error>())
}

/// The innermost cause, briefly: an I/O error's kind (`connection refused`), else the message.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let innermost = causes(error).last().unwrap_or(error);
    let io_error = causes(error)
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .find(|io| io.raw_os_error().is_some());
    match io_error {
        Some(io_error) => io_error.kind().to_string(),
        None => innermost.to_string().to_lowercase(),
    }
}
