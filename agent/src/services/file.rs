//! `--services-file`: the Service dataplane's desired state as a YAML stream of upstream
//! `Service` and `EndpointSlice` objects, so the dataplane runs and is tested without any API
//! server.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize as _;

/// What a services file holds.
#[derive(Debug, Default, Clone)]
pub struct ServicesFile {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServicesFileError {
    #[error("cannot read services file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("services file {}, document {document}: {message}", path.display())]
    Document {
        path: PathBuf,
        document: usize,
        message: String,
    },
}

impl ServicesFile {
    /// Reads and parses `path`. Any bad document fails the whole file: applying half of an
    /// operator's intent would be worse than keeping the last good state.
    pub fn load(path: &Path) -> Result<ServicesFile, ServicesFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ServicesFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        ServicesFile::parse(&text).map_err(|(document, message)| ServicesFileError::Document {
            path: path.to_owned(),
            document,
            message,
        })
    }

    /// Parses a YAML stream; an error carries the 1-based document number.
    pub fn parse(text: &str) -> Result<ServicesFile, (usize, String)> {
        let mut file = ServicesFile::default();
        for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let number = index + 1;
            let value = serde_yaml_ng::Value::deserialize(document)
                .map_err(|error| (number, error.to_string()))?;
            if value.is_null() {
                continue; // an empty document, e.g. after a trailing `---`
            }
            let field = |name: &str| {
                value
                    .get(name)
                    .and_then(serde_yaml_ng::Value::as_str)
                    .map(str::to_owned)
            };
            let (api_version, kind) = (field("apiVersion"), field("kind"));
            match (api_version.as_deref(), kind.as_deref()) {
                (Some("v1"), Some("Service")) => file.services.push(typed(value, number)?),
                (Some("discovery.k8s.io/v1"), Some("EndpointSlice")) => {
                    file.slices.push(typed(value, number)?)
                }
                (None, _) => {
                    return Err((number, "apiVersion: required field is missing".to_owned()));
                }
                (_, None) => return Err((number, "kind: required field is missing".to_owned())),
                (Some(api_version), Some(kind)) => {
                    return Err((
                        number,
                        format!(
                            "kind: {api_version} {kind} is not supported here (only v1 Service and discovery.k8s.io/v1 EndpointSlice)"
                        ),
                    ));
                }
            }
        }
        Ok(file)
    }
}

fn typed<T: serde::de::DeserializeOwned>(
    value: serde_yaml_ng::Value,
    document: usize,
) -> Result<T, (usize, String)> {
    serde_yaml_ng::from_value(value).map_err(|error| (document, error.to_string()))
}
