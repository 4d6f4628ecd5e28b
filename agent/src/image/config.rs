//! [`Image`] and [`ImageConfig`]: what a pulled image tells the runtime, read from the image's
//! config blob.

use serde::Deserialize;

use super::ImageError;

/// A pulled image whose layers are all unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The normalised reference (`docker.io/library/busybox:latest`).
    pub reference: String,
    /// The platform-specific image manifest's digest (`sha256:...`).
    pub digest: String,
    pub config: ImageConfig,
    /// Snapshot keys, base layer first.
    pub chain_ids: Vec<String>,
    /// Compressed size: config plus layers, as the manifest says.
    pub size: u64,
}

/// The parts of the OCI image config that decide how a container runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ContainerConfig>,
    rootfs: RootFs,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// The runtime config and the layers' diff IDs from a config blob's bytes.
pub fn parse_config(bytes: &[u8], digest: &str) -> Result<(ImageConfig, Vec<String>), ImageError> {
    let file: ConfigFile =
        serde_json::from_slice(bytes).map_err(|error| ImageError::BadConfig {
            digest: digest.to_owned(),
            reason: error.to_string(),
        })?;
    let config = file.config.unwrap_or_default();
    let non_empty = |value: Option<String>| value.filter(|value| !value.is_empty());
    Ok((
        ImageConfig {
            entrypoint: config.entrypoint.unwrap_or_default(),
            cmd: config.cmd.unwrap_or_default(),
            env: config.env.unwrap_or_default(),
            working_dir: non_empty(config.working_dir),
            user: non_empty(config.user),
        },
        file.rootfs.diff_ids,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_fields_and_nulls() {
        let json = br#"{"architecture":"amd64","os":"linux",
            "config":{"Entrypoint":null,"Cmd":["sh"],"Env":["PATH=/bin"],"WorkingDir":"","User":"65534"},
            "rootfs":{"type":"layers","diff_ids":["sha256:aa"]}}"#;
        let (config, diff_ids) = parse_config(json, "sha256:c").unwrap();
        assert_eq!(
            config,
            ImageConfig {
                entrypoint: vec![],
                cmd: vec!["sh".to_owned()],
                env: vec!["PATH=/bin".to_owned()],
                working_dir: None,
                user: Some("65534".to_owned()),
            }
        );
        assert_eq!(diff_ids, vec!["sha256:aa".to_owned()]);
    }

    #[test]
    fn configs_without_rootfs_are_errors() {
        let error = parse_config(br#"{"config":{}}"#, "sha256:c").unwrap_err();
        assert!(
            error.to_string().starts_with("image config sha256:c: "),
            "{error}"
        );
    }
}
