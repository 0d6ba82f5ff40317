//! The README's "Embedding" example, compiled by `cargo test` so that it stays true:
//! a server on a socket in a temporary directory, forwarding to a reporter of its own
//! (printing a line per request), stopped after a second by its token.
//!
//! `cargo run --example embed` prints the socket and stops after a second, as
//! `cargo test` runs it; to write frames to it (`cargo run -- loadgen --socket PATH`),
//! lengthen its `sleep` first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use boundary_log_proxy::proto::agent::{ReportBoundaryLogsRequest, ReportBoundaryLogsResponse};
use boundary_log_proxy::{CancellationToken, Config, Reporter, Server, Status};

/// Stands in for coderd: counts the logs it is given.
#[derive(Default)]
struct Counting(AtomicU64);

impl Reporter for Counting {
    async fn report_boundary_logs(
        &self,
        request: ReportBoundaryLogsRequest,
    ) -> Result<ReportBoundaryLogsResponse, Status> {
        self.0
            .fetch_add(request.logs.len() as u64, Ordering::Relaxed);
        println!(
            "{} logs of session {:?}",
            request.logs.len(),
            request.session_id
        );
        Ok(ReportBoundaryLogsResponse {})
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("blp-embed-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = Config {
        socket: dir.join("boundary-audit.sock"),
        ..Config::default()
    };
    let registry = prometheus::Registry::new();
    let server = Server::new(config, &registry)?; // ring and metrics, no socket yet
    let backend = server.start()?; // binds, spawns the reader, returns at once
    println!(
        "listening on {} ({backend})",
        server.socket_path().display()
    );
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.cancel();
    });
    server
        .run_forwarder(cancel.clone(), Counting::default())
        .await?; // until cancel
    tokio::task::spawn_blocking(move || server.close()).await?; // stops, joins threads, removes the socket
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
