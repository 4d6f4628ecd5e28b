//! Why a probe could not be run as specified. Its text is what the failure reports, in the
//! words kubelet uses where it has them.

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("the probe has no handler: exec, httpGet, tcpSocket or grpc must be set")]
    NoHandler,
    #[error("couldn't find port: {port} in container {container}")]
    PortNotFound { port: String, container: String },
    #[error("invalid port {port} in container {container}")]
    InvalidPort { port: i32, container: String },
    #[error("unsupported scheme {scheme:?}: httpGet probes speak HTTP or HTTPS")]
    UnsupportedScheme { scheme: String },
    #[error("gRPC probes are not supported by keel-agent yet (service {service:?}, port {port})")]
    GrpcUnsupported { service: String, port: i32 },
    #[error("exec probe has no command")]
    EmptyCommand,
    #[error("cannot exec in container {id}: {message}")]
    Exec { id: String, message: String },
    #[error("cannot set up TLS for {host}: {message}")]
    Tls { host: String, message: String },
}
