//! A gRPC Agent sink that accepts at most `--logs-per-second` logs a second in all
//! (calls are served one at a time, each answered after `logs / rate` seconds, so
//! concurrent calls do not add up), for overload measurements:
//! `scripts/overload_rss.sh` offers the proxy ten times what this sink accepts.
//!
//! `cargo run --release --example slow_sink -- --listen 127.0.0.1:0 --logs-per-second 100000`
//! prints `listening http://HOST:PORT` first, then a count line every second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use boundary_log_proxy::proto::agent::agent_server::{Agent, AgentServer};
use boundary_log_proxy::proto::agent::{ReportBoundaryLogsRequest, ReportBoundaryLogsResponse};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

#[derive(Clone)]
struct SlowSink {
    logs_per_second: f64,
    logs: Arc<AtomicU64>,
    /// Held while a call is being "processed": one call at a time.
    busy: Arc<tokio::sync::Mutex<()>>,
}

#[tonic::async_trait]
impl Agent for SlowSink {
    async fn report_boundary_logs(
        &self,
        request: Request<ReportBoundaryLogsRequest>,
    ) -> Result<Response<ReportBoundaryLogsResponse>, Status> {
        let logs = request.into_inner().logs.len() as u64;
        let _busy = self.busy.lock().await;
        tokio::time::sleep(Duration::from_secs_f64(logs as f64 / self.logs_per_second)).await;
        self.logs.fetch_add(logs, Ordering::Relaxed);
        Ok(Response::new(ReportBoundaryLogsResponse {}))
    }
}

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let listen = arg("--listen", "127.0.0.1:0");
    let logs_per_second: f64 = arg("--logs-per-second", "100000")
        .parse()
        .expect("--logs-per-second takes a number");
    let listener = TcpListener::bind(&listen).await.expect("bind");
    println!(
        "listening http://{}",
        listener.local_addr().expect("address")
    );
    let sink = SlowSink {
        logs_per_second,
        logs: Arc::new(AtomicU64::new(0)),
        busy: Arc::new(tokio::sync::Mutex::new(())),
    };
    let counts = sink.logs.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.tick().await;
        let mut last = 0;
        loop {
            ticker.tick().await;
            let now = counts.load(Ordering::Relaxed);
            println!(
                "slow_sink: {now} logs received, {} in the last second",
                now - last
            );
            last = now;
        }
    });
    tonic::transport::Server::builder()
        .add_service(AgentServer::new(sink).max_decoding_message_size(64 << 20))
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await
        .expect("serve");
}
