//! The API's semantics, independent of HTTP: which resources exist ([`catalog`]), how objects
//! are defaulted, validated and stamped ([`defaults`], [`validation`], [`meta`], Job selectors
//! in [`job`]), how
//! selectors filter them ([`selector`]) and how failures read ([`status`]).

pub mod catalog;
pub mod defaults;
pub mod job;
pub mod meta;
pub mod openapi;
pub mod protobuf;
pub mod selector;
pub mod status;
pub mod taints;
pub mod validation;

pub use catalog::{Catalog, ResourceInfo, Subresource};
pub use status::{ApiError, Cause, Target};
