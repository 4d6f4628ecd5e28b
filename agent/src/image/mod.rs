//! The image store: pulls images from OCI registries, keeps their blobs content-addressed and
//! their layers unpacked as overlayfs snapshots, and mounts a root filesystem per container.
//!
//! On disk, under the store's root (e.g. `/var/lib/keel/images`):
//! - `blobs/sha256/<hex>`: manifests, configs and layer blobs, verified by digest
//!   ([`blob`]); `blobs/ingest/` holds downloads in progress;
//! - `snapshots/<chain-id-hex>`: one unpacked layer each ([`snapshot`], [`unpack`]);
//! - `refs/<hex>.json`: reference -> manifest digest ([`store`]).
//!
//! Containers get an overlayfs of the snapshots with their own upper directory ([`rootfs`]).
//! [`registry`] speaks to registries through `oci-client`; it needs a rustls crypto provider,
//! which [`ImageStore::open`] installs (ring) when the process has none yet.

pub mod blob;
pub mod config;
pub mod credentials;
pub mod error;
pub mod gc;
mod inflight;
pub mod reference;
pub mod registry;
pub mod rootfs;
pub mod snapshot;
pub mod store;
pub mod unpack;

pub use config::{Image, ImageConfig};
pub use credentials::{RegistryCredentials, credentials_from_docker_config};
pub use error::ImageError;
pub use gc::StoredImage;
pub use reference::{normalize_reference, registry_host};
pub use store::ImageStore;
