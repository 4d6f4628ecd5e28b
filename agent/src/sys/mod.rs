//! The agent's raw kernel calls for pods: network namespaces and mounts. Everything else in the
//! pod path reaches the kernel through these functions, through `ip` (links, addresses, routes)
//! or through cgroupfs files under a root the caller passes in.

pub mod inotify;
pub mod mount;
pub mod netns;
