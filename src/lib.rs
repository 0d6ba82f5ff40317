//! boundary-log-proxy: carries boundary's audit logs from a Unix socket to coderd,
//! counting every log it cannot deliver.
//!
//! Pipeline, one module a stage, data flowing one way:
//! `reader` (io_uring or epoll) -> `codec` -> `ring` -> `forwarder` -> `reporter`.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod app;
pub mod cli;
pub mod codec;
pub mod config;
pub mod events;
pub mod forwarder;
pub mod intake;
pub mod loadgen;
pub mod logging;
pub mod malloc;
pub mod metrics;
pub mod proto;
pub mod reader;
pub mod reporter;
pub mod ring;
pub mod seqgap;
pub mod server;
pub mod sink;
pub mod spool;
pub(crate) mod sync;
pub mod workload;

pub use config::{default_socket_path, Config};
pub use reporter::Reporter;
pub use server::{Server, ServerError};
/// Types of other crates in this crate's API (`Server::run_forwarder` takes a token,
/// a [`Reporter`] answers with a `Status`), so an embedder needs no dependency of its own
/// on tokio-util or tonic to use them.
pub use tokio_util::sync::CancellationToken;
pub use tonic::Status;
/// The crates whose types the messages (`proto`) and [`reporter::EncodedRequest`]
/// carry, at the versions this crate uses.
pub use {bytes, prost, prost_types};
