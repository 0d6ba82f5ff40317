//! The load generator against a real `Server` with the null reporter: every frame it
//! says it sent is received and forwarded, in sequence, with nothing dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use boundary_log_proxy::config::{FrameTag, LoadgenArgs, LogSettings, SinkKind};
use boundary_log_proxy::loadgen::{self, LoadgenError, RunOptions};
use boundary_log_proxy::reporter::null::NullReporter;
use boundary_log_proxy::{Config, Server};
use tokio_util::sync::CancellationToken;

fn args(socket: std::path::PathBuf, tag: FrameTag) -> LoadgenArgs {
    LoadgenArgs {
        socket,
        connections: 4,
        frames: 250,
        logs_per_frame: 10,
        rate: None,
        tag,
        wait_for_socket: Duration::ZERO,
        log: LogSettings::default(),
    }
}

async fn wait_for_logs(reporter: &NullReporter, logs: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while reporter.logs() < logs && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The proxy as a library on `socket`, forwarding to a null reporter that counts.
struct NullProxy {
    server: Server,
    reporter: Arc<NullReporter>,
    cancel: CancellationToken,
    forwarder: tokio::task::JoinHandle<Result<(), boundary_log_proxy::ServerError>>,
}

impl NullProxy {
    fn start(socket: &std::path::Path) -> Self {
        let config = Config {
            socket: socket.to_owned(),
            sink: Some(SinkKind::Null),
            batch_linger: Duration::from_millis(1),
            ..Config::default()
        };
        let server = Server::new(config, &prometheus::Registry::new()).unwrap();
        server.start().unwrap();
        let reporter = Arc::new(NullReporter::new());
        let cancel = CancellationToken::new();
        let forwarder = {
            let (server, reporter, cancel) = (server.clone(), reporter.clone(), cancel.clone());
            tokio::spawn(async move { server.run_forwarder(cancel, reporter).await })
        };
        Self {
            server,
            reporter,
            cancel,
            forwarder,
        }
    }

    /// Stops the forwarder and closes the server.
    async fn stop(self) {
        self.cancel.cancel();
        self.forwarder.await.unwrap().unwrap();
        let server = self.server;
        tokio::task::spawn_blocking(move || server.close())
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_frame_loadgen_sends_is_received_and_forwarded() {
    for tag in [FrameTag::V1, FrameTag::V2] {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("proxy.sock");
        let proxy = NullProxy::start(&socket);

        let args = args(socket, tag);
        let options = RunOptions {
            progress: false,
            ..RunOptions::default()
        };
        let summary = tokio::task::spawn_blocking(move || loadgen::run_with(&args, options))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(summary.connections, 4);
        assert_eq!(summary.frames, 4 * 250);
        assert_eq!(summary.logs, 4 * 250 * 10);
        assert!(summary.bytes > summary.logs * 100, "{summary}");
        assert!(summary.logs_per_second() > 0.0);

        wait_for_logs(&proxy.reporter, summary.logs).await;
        let metrics = proxy.server.metrics().clone();
        let totals = metrics.accounting();
        assert_eq!(proxy.reporter.logs(), summary.logs, "{tag}: {totals:?}");
        assert_eq!(totals.received, summary.logs);
        assert_eq!(totals.forwarded, summary.logs);
        assert_eq!(
            totals.dropped_buffer_full + totals.dropped_forward_failed + totals.dropped_shutdown,
            0
        );
        assert_eq!(metrics.sequence_gaps.get(), 0, "sequence numbers run on");
        assert_eq!(metrics.sequence_out_of_order.get(), 0);
        proxy.stop().await;
    }
}

#[test]
fn rate_limit_spreads_the_frames_over_time() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("proxy.sock");
    let config = Config {
        socket: socket.clone(),
        sink: Some(SinkKind::Null),
        ..Config::default()
    };
    let server = Server::new(config, &prometheus::Registry::new()).unwrap();
    server.start().unwrap();
    let args = LoadgenArgs {
        connections: 2,
        frames: 50,
        logs_per_frame: 1,
        rate: Some(400),
        ..args(socket, FrameTag::V2)
    };
    let options = RunOptions {
        progress: false,
        ..RunOptions::default()
    };
    let summary = loadgen::run_with(&args, options).unwrap();
    // 100 frames at 400 frames/s: the last write is due 0.2 s after the start.
    assert_eq!(summary.frames, 100);
    assert!(
        summary.elapsed >= Duration::from_millis(200),
        "{:?}",
        summary.elapsed
    );
    server.close();
}

#[test]
fn a_socket_nobody_listens_on_within_the_wait_is_an_error_naming_the_path_and_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody-listens.sock");
    let args = LoadgenArgs {
        wait_for_socket: Duration::from_millis(200),
        ..args(socket.clone(), FrameTag::V2)
    };
    let options = RunOptions {
        progress: false,
        ..RunOptions::default()
    };
    let started = Instant::now();
    match loadgen::run_with(&args, options) {
        Err(error @ LoadgenError::NotListening { .. }) => {
            let text = error.to_string();
            assert!(text.contains("nobody-listens.sock"), "{text}");
            assert!(text.contains("--wait-for-socket 200ms"), "{text}");
        }
        other => panic!("expected a not-listening error, got {other:?}"),
    }
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "it kept trying for the whole wait"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_started_before_the_proxy_waits_for_the_socket_and_every_frame_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("proxy.sock");
    let args = LoadgenArgs {
        wait_for_socket: Duration::from_secs(60),
        ..args(socket.clone(), FrameTag::V2)
    };
    let options = RunOptions {
        progress: false,
        ..RunOptions::default()
    };
    let load = std::thread::spawn(move || loadgen::run_with(&args, options));
    // loadgen is already retrying: the socket does not exist yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !load.is_finished(),
        "loadgen gave up before the proxy started"
    );

    let proxy = NullProxy::start(&socket);
    let summary = tokio::task::spawn_blocking(move || load.join().unwrap())
        .await
        .unwrap()
        .expect("loadgen connects once the proxy listens");
    assert_eq!(summary.frames, 4 * 250);
    wait_for_logs(&proxy.reporter, summary.logs).await;
    assert_eq!(proxy.reporter.logs(), 4 * 250 * 10);
    let totals = proxy.server.metrics().accounting();
    assert_eq!((totals.received, totals.forwarded), (10_000, 10_000));
    proxy.stop().await;
}
