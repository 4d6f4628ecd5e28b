//! Image references: docker.io normalisation (as upstream: `busybox` is
//! `docker.io/library/busybox:latest`) and the registry host that credentials are looked up by.

use oci_client::Reference;

use super::ImageError;

/// Parses `reference` the way upstream does: a missing registry is `docker.io`, a missing
/// namespace on docker.io is `library/`, a missing tag is `latest`.
pub fn parse_reference(reference: &str) -> Result<Reference, ImageError> {
    reference
        .parse::<Reference>()
        .map_err(|error| ImageError::InvalidReference {
            reference: reference.to_owned(),
            reason: error.to_string().to_lowercase(),
        })
}

/// The fully qualified form of `reference` (`busybox` -> `docker.io/library/busybox:latest`);
/// an unparsable reference is returned as it is.
pub fn normalize_reference(reference: &str) -> String {
    parse_reference(reference)
        .map(|parsed| parsed.whole())
        .unwrap_or_else(|_| reference.to_owned())
}

/// The registry part of `reference` ("host:port" or "host"); `docker.io` for Docker Hub.
pub fn registry_host(reference: &str) -> String {
    match parse_reference(reference) {
        Ok(parsed) => parsed.registry().to_owned(),
        Err(_) => reference.split('/').next().unwrap_or_default().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_docker_hub_library_images() {
        assert_eq!(
            normalize_reference("busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(registry_host("busybox"), "docker.io");
        assert_eq!(normalize_reference("foo/bar:1"), "docker.io/foo/bar:1");
        assert_eq!(registry_host("index.docker.io/foo/bar"), "docker.io");
    }

    #[test]
    fn registries_with_ports_and_digests_keep_them() {
        assert_eq!(registry_host("127.0.0.1:5000/x:1"), "127.0.0.1:5000");
        assert_eq!(
            normalize_reference("127.0.0.1:5000/x:1"),
            "127.0.0.1:5000/x:1"
        );
        assert_eq!(
            normalize_reference("localhost:5000/a/b"),
            "localhost:5000/a/b:latest"
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            normalize_reference(&format!("quay.io/a/b@{digest}")),
            format!("quay.io/a/b@{digest}")
        );
    }

    #[test]
    fn invalid_references_are_errors() {
        for bad in ["", "has space:1", "a/b:c:d"] {
            let error = parse_reference(bad).unwrap_err();
            assert!(
                error.to_string().starts_with("invalid image reference"),
                "{error}"
            );
        }
    }
}
