//! The integration tests, one binary: each module is one area of the service, all sharing
//! [`helpers`] (HTTPS mocks with a test CA made at test time, the app in process, the binary
//! as a child process, a mock Microsoft Entra ID).
//!
//! Run one area with `cargo test --test api auth::`, one test by its name.
//! `tests/logging.rs` and `tests/secrets.rs` stay binaries of their own: each installs the
//! process-wide tracing subscriber.

mod helpers;

mod auth;
mod check;
mod description;
mod errors;
mod fuzz;
mod http;
mod image;
mod metrics;
mod openapi;
mod resilience;
mod routing;
mod shutdown;
mod startup;
mod telemetry;
