//! Running containers: OCI bundles ([`bundle`]), the `runc` binary ([`runc`]), the node's
//! keeper process that reaps containers and keeps their exit codes across agent restarts
//! ([`keeper`]), and CRI-format log files ([`logs`]).

pub mod bundle;
pub mod keeper;
pub mod logs;
pub mod runc;
