//! Socket-to-sink latency of `serve`: loadgen stamps every log's `time` with the
//! moment its write is assembled, the proxy (the real binary, a child process)
//! forwards over gRPC to a sink in this process, and the sink records, for every
//! log, how long ago it was stamped. Prints p50/p90/p99/p99.9/max.
//!
//! `cargo run --release --example latency -- --rate 85000 --connections 8
//!  --logs-per-frame 10 --seconds 20 --linger 1ms` (see scripts/latency.sh).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use boundary_log_proxy::config::{FrameTag, LoadgenArgs, LogSettings};
use boundary_log_proxy::loadgen::{self, RunOptions, Timestamps};
use boundary_log_proxy::proto::agent::agent_server::{Agent, AgentServer};
use boundary_log_proxy::proto::agent::{ReportBoundaryLogsRequest, ReportBoundaryLogsResponse};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// Records each log's age on arrival, in microseconds, skipping logs stamped
/// before `measure_from` (the warm-up).
#[derive(Clone)]
struct LatencySink {
    ages_us: Arc<Mutex<Vec<u32>>>,
    logs: Arc<AtomicU64>,
    measure_from: Duration,
}

#[tonic::async_trait]
impl Agent for LatencySink {
    async fn report_boundary_logs(
        &self,
        request: Request<ReportBoundaryLogsRequest>,
    ) -> Result<Response<ReportBoundaryLogsResponse>, Status> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let request = request.into_inner();
        let ages: Vec<u32> = request
            .logs
            .iter()
            .filter_map(|log| log.time)
            .map(|t| Duration::new(t.seconds as u64, t.nanos as u32))
            .filter(|sent| *sent >= self.measure_from)
            .map(|sent| {
                now.saturating_sub(sent)
                    .as_micros()
                    .min(u128::from(u32::MAX)) as u32
            })
            .collect();
        self.ages_us
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(ages);
        self.logs
            .fetch_add(request.logs.len() as u64, Ordering::Relaxed);
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

fn number<T: std::str::FromStr>(name: &str, default: &str) -> T {
    arg(name, default)
        .parse()
        .unwrap_or_else(|_| panic!("{name} takes a number"))
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    f64::from(sorted[rank]) / 1000.0
}

fn main() {
    let proxy = PathBuf::from(arg("--proxy", "target/release/boundary-log-proxy"));
    let connections: u32 = number("--connections", "8");
    let logs_per_frame: u32 = number("--logs-per-frame", "10");
    let rate: u64 = number("--rate", "85000");
    let seconds: u64 = number("--seconds", "20");
    let warmup: u64 = number("--warmup", "2");
    let linger = arg("--linger", "1ms");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind the sink");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let sink = LatencySink {
        ages_us: Arc::new(Mutex::new(Vec::new())),
        logs: Arc::new(AtomicU64::new(0)),
        measure_from: started + Duration::from_secs(warmup),
    };
    {
        let sink = sink.clone();
        runtime.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(AgentServer::new(sink).max_decoding_message_size(64 << 20))
                .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
                .await
                .expect("serve");
        });
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("proxy.sock");
    let mut child = Command::new(&proxy)
        .arg("serve")
        .arg("--socket")
        .arg(&socket)
        .args([
            "--coderd",
            &url,
            "--batch-linger",
            &linger,
            "--log-level",
            "warn",
        ])
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", proxy.display()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }

    let args = LoadgenArgs {
        socket,
        connections,
        frames: rate * seconds / u64::from(connections),
        logs_per_frame,
        rate: Some(rate),
        tag: FrameTag::V2,
        wait_for_socket: Duration::ZERO,
        log: LogSettings::default(),
    };
    let options = RunOptions {
        timestamps: Timestamps::SendTime,
        progress: true,
    };
    let summary = loadgen::run_with(&args, options).expect("loadgen");
    eprintln!("{summary}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.logs.load(Ordering::Relaxed) < summary.logs && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill(2) on the pid of the child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();

    let received = sink.logs.load(Ordering::Relaxed);
    let mut ages = std::mem::take(&mut *sink.ages_us.lock().unwrap_or_else(|p| p.into_inner()));
    ages.sort_unstable();
    println!(
        "latency: {} logs/s offered ({} connections x {} logs/frame, linger {}), {} of {} logs received, {} measured after {} s warm-up: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        rate * u64::from(logs_per_frame),
        connections,
        logs_per_frame,
        linger,
        received,
        summary.logs,
        ages.len(),
        warmup,
        percentile(&ages, 50.0),
        percentile(&ages, 90.0),
        percentile(&ages, 99.0),
        percentile(&ages, 99.9),
        percentile(&ages, 100.0),
    );
}
