//! `Server::close` on the library API: it returns only once every thread the server
//! started has ended, a reporter's calls thread included, within the shutdown timeout.

use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boundary_log_proxy::codec::Tag;
use boundary_log_proxy::config::SinkKind;
use boundary_log_proxy::loadgen::{SessionStream, Timestamps};
use boundary_log_proxy::proto::agent::{ReportBoundaryLogsRequest, ReportBoundaryLogsResponse};
use boundary_log_proxy::reporter::Reporter;
use boundary_log_proxy::{Config, Server};
use tokio_util::sync::CancellationToken;

/// Blocks its thread for `block` inside each call (a synchronous client), then succeeds.
struct Blocking {
    block: Duration,
    called: AtomicBool,
    returned: AtomicBool,
}

impl Reporter for Blocking {
    async fn report_boundary_logs(
        &self,
        _request: ReportBoundaryLogsRequest,
    ) -> Result<ReportBoundaryLogsResponse, tonic::Status> {
        self.called.store(true, Ordering::SeqCst);
        std::thread::sleep(self.block);
        self.returned.store(true, Ordering::SeqCst);
        Ok(ReportBoundaryLogsResponse {})
    }
}

/// Names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_returns_after_a_reporter_call_blocking_its_thread_has_ended() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        socket: dir.path().join("proxy.sock"),
        sink: Some(SinkKind::Null),
        batch_linger: Duration::from_millis(1),
        shutdown_timeout: Duration::from_secs(5),
        ..Config::default()
    };
    let server = Server::new(config, &prometheus::Registry::new()).unwrap();
    server.start().unwrap();
    let reporter = Arc::new(Blocking {
        block: Duration::from_secs(1),
        called: AtomicBool::new(false),
        returned: AtomicBool::new(false),
    });
    let forwarder = {
        let (server, reporter) = (server.clone(), reporter.clone());
        tokio::spawn(async move {
            server
                .run_forwarder(CancellationToken::new(), reporter)
                .await
        })
    };
    let mut stream = SessionStream::new(0, 5, Tag::V2).unwrap();
    let mut bytes = Vec::new();
    stream.append_frames(1, Timestamps::Workload, &mut bytes);
    UnixStream::connect(server.socket_path())
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    while !reporter.called.load(Ordering::SeqCst) {
        assert!(Instant::now() < until, "the call never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(thread_names().iter().any(|name| name == "blp-calls"));

    let closing = server.clone();
    tokio::task::spawn_blocking(move || closing.close())
        .await
        .unwrap();
    assert!(
        reporter.returned.load(Ordering::SeqCst),
        "close returned while the call still blocked its thread"
    );
    let names = thread_names();
    assert!(
        !names.iter().any(|name| name == "blp-calls"),
        "a calls thread outlived close: {names:?}"
    );
    forwarder.await.unwrap().unwrap();
    let totals = server.metrics().accounting();
    assert_eq!(totals.received, 5);
    assert_eq!(totals.forwarded + totals.dropped_shutdown, 5, "{totals:?}");
}
