//! Concurrent delivery: requests of different connections and sessions are in
//! flight together (at most four), while each session's logs still reach the
//! reporter in order and one connection never has two requests in flight.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boundary_log_proxy::codec::Tag;
use boundary_log_proxy::config::SinkKind;
use boundary_log_proxy::loadgen::{connect, SessionStream, Timestamps};
use boundary_log_proxy::proto::agent::{ReportBoundaryLogsRequest, ReportBoundaryLogsResponse};
use boundary_log_proxy::reporter::{EncodedRequest, Reporter};
use boundary_log_proxy::{Config, Server};
use tokio_util::sync::CancellationToken;

/// Answers each call after `delay`, recording every session's sequence numbers in
/// arrival order and the most calls seen open at once.
#[derive(Default)]
struct SlowRecorder {
    delay: Duration,
    open: AtomicUsize,
    most_open: AtomicUsize,
    logs: AtomicUsize,
    seqs: Mutex<HashMap<String, Vec<i32>>>,
}

impl Reporter for SlowRecorder {
    async fn report_boundary_logs(
        &self,
        request: ReportBoundaryLogsRequest,
    ) -> Result<ReportBoundaryLogsResponse, tonic::Status> {
        let open = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_open.fetch_max(open, Ordering::SeqCst);
        self.seqs
            .lock()
            .unwrap()
            .entry(request.session_id.clone())
            .or_default()
            .extend(request.logs.iter().map(|l| l.sequence_number));
        tokio::time::sleep(self.delay).await;
        self.open.fetch_sub(1, Ordering::SeqCst);
        self.logs.fetch_add(request.logs.len(), Ordering::SeqCst);
        Ok(ReportBoundaryLogsResponse {})
    }

    async fn report_encoded(&self, request: EncodedRequest) -> Result<(), tonic::Status> {
        self.report_boundary_logs(request.decode()?).await.map(drop)
    }
}

/// Sends `frames` frames of 10 logs on each of `connections` connections (one
/// session each) through a server whose requests hold one frame each.
async fn run(connections: u32, frames: u64) -> Arc<SlowRecorder> {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        socket: dir.path().join("proxy.sock"),
        sink: Some(SinkKind::Null),
        batch_max_logs: 10,
        batch_linger: Duration::from_millis(1),
        ..Config::default()
    };
    let server = Server::new(config, &prometheus::Registry::new()).unwrap();
    server.start().unwrap();
    let reporter = Arc::new(SlowRecorder {
        delay: Duration::from_millis(20),
        ..SlowRecorder::default()
    });
    let cancel = CancellationToken::new();
    let forwarder = {
        let (server, reporter, cancel) = (server.clone(), reporter.clone(), cancel.clone());
        tokio::spawn(async move { server.run_forwarder(cancel, reporter).await })
    };
    let socket = server.socket_path().to_owned();
    tokio::task::spawn_blocking(move || {
        for i in 0..connections {
            let mut stream = SessionStream::new(i, 10, Tag::V2).unwrap();
            let mut bytes = Vec::new();
            stream.append_frames(frames, Timestamps::Workload, &mut bytes);
            connect(&socket).unwrap().write_all(&bytes).unwrap();
        }
    })
    .await
    .unwrap();
    let expected = (u64::from(connections) * frames * 10) as usize;
    let deadline = Instant::now() + Duration::from_secs(20);
    // The forwarder counts a call once its result reached it, just after the
    // reporter's own count.
    let settled = || {
        reporter.logs.load(Ordering::SeqCst) >= expected
            && server.metrics().accounting().forwarded >= expected as u64
    };
    while !settled() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(reporter.logs.load(Ordering::SeqCst), expected);
    let totals = server.metrics().accounting();
    assert_eq!(totals.forwarded, expected as u64);
    cancel.cancel();
    forwarder.await.unwrap().unwrap();
    tokio::task::spawn_blocking(move || server.close())
        .await
        .unwrap();
    reporter
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_different_sessions_are_in_flight_together_each_in_order() {
    let reporter = run(6, 8).await;
    let most = reporter.most_open.load(Ordering::SeqCst);
    assert!((2..=4).contains(&most), "most calls open at once: {most}");
    let seqs = reporter.seqs.lock().unwrap();
    assert_eq!(seqs.len(), 6);
    for (session, seqs) in seqs.iter() {
        assert_eq!(*seqs, (0..80).collect::<Vec<_>>(), "session {session}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_never_has_two_requests_in_flight() {
    let reporter = run(1, 12).await;
    assert_eq!(reporter.most_open.load(Ordering::SeqCst), 1);
    let seqs = reporter.seqs.lock().unwrap();
    let only = seqs.values().next().unwrap();
    assert_eq!(*only, (0..120).collect::<Vec<_>>());
}
