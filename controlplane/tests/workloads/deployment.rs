//! The Deployment controller.
