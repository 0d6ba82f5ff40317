//! The sink server: prints what the gRPC reporter sends as JSON lines, counts it,
//! and manages its Unix socket file.

mod support;

use std::time::Duration;

use boundary_log_proxy::reader::ReaderError;
use boundary_log_proxy::reporter::grpc::{GrpcReporter, GrpcReporterConfig};
use boundary_log_proxy::reporter::stdout::{log_line, StdoutReporter};
use boundary_log_proxy::reporter::{EncodedRequest, Reporter};
use boundary_log_proxy::sink::{count_line, print_counts, run_sink, Sink, SinkError, SinkListener};
use prost::Message as _;
use support::{log, sample_request, Capture};
use tokio::sync::oneshot;

/// Serves `sink` on `listener` in a task; returns the URL and a stop handle.
fn spawn_sink(
    sink: &Sink,
    listener: SinkListener,
) -> (
    String,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), SinkError>>,
) {
    let url = listener.url();
    let (stop, stopped) = oneshot::channel::<()>();
    let sink = sink.clone();
    let task = tokio::spawn(async move {
        sink.serve(listener, async {
            let _ = stopped.await;
        })
        .await
    });
    (url, stop, task)
}

async fn send_two_requests(url: &str) -> Vec<String> {
    let reporter = GrpcReporter::new(GrpcReporterConfig::new(url)).unwrap();
    let first = sample_request();
    let mut second = sample_request();
    second.session_id = "another-session".to_owned();
    second.logs = vec![log(true, 2, "PUT", "https://api.example/\"quoted\"")];
    reporter
        .report_encoded(EncodedRequest {
            bytes: first.encode_to_vec().into(),
            logs: 2,
            frames: 1,
            records_end: None,
        })
        .await
        .unwrap();
    reporter.report_boundary_logs(second.clone()).await.unwrap();
    first
        .logs
        .iter()
        .map(|l| log_line(&first, l))
        .chain(second.logs.iter().map(|l| log_line(&second, l)))
        .collect()
}

#[tokio::test]
async fn sink_prints_one_json_line_per_received_log_and_counts() {
    let out = Capture::new();
    let sink = Sink::printing(StdoutReporter::with_writer(out.boxed()));
    let listener = SinkListener::bind("127.0.0.1:0").await.unwrap();
    let (url, stop, task) = spawn_sink(&sink, listener);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let expected = send_two_requests(&url).await;
    assert_eq!(out.lines(), expected);
    assert_eq!((sink.logs(), sink.requests()), (3, 2));

    stop.send(()).unwrap();
    task.await.unwrap().expect("the sink stops cleanly");
}

#[tokio::test]
async fn quiet_sink_counts_without_printing_lines() {
    let sink = Sink::quiet();
    let (url, _stop, _task) = spawn_sink(&sink, SinkListener::bind("127.0.0.1:0").await.unwrap());
    let counts = Capture::new();
    let printer = tokio::spawn(print_counts(
        sink.clone(),
        Duration::from_millis(10),
        counts.boxed(),
    ));
    send_two_requests(&url).await;
    assert_eq!((sink.logs(), sink.requests()), (3, 2));
    let want = count_line(3, 2);
    assert_eq!(want, "received 3 logs in 2 requests");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !counts.lines().contains(&want) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            counts.lines()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    printer.abort();
    // Printed only when the counts changed, never a log line.
    let lines = counts.lines();
    assert!(
        lines.iter().all(|l| l.starts_with("received ")),
        "{lines:?}"
    );
    let mut deduped = lines.clone();
    deduped.dedup();
    assert_eq!(deduped, lines);
}

#[tokio::test]
async fn unix_sink_replaces_a_stale_socket_and_removes_its_own_on_exit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sink.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "a stale socket file is left behind");

    let out = Capture::new();
    let sink = Sink::printing(StdoutReporter::with_writer(out.boxed()));
    let listener = SinkListener::bind(&format!("unix:{}", path.display()))
        .await
        .unwrap();
    let (url, stop, task) = spawn_sink(&sink, listener);
    assert_eq!(url, format!("unix:{}", path.display()));

    let expected = send_two_requests(&url).await;
    assert_eq!(out.lines(), expected);

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert!(!path.exists(), "the socket file is removed on exit");
}

#[tokio::test]
async fn unix_sink_leaves_a_non_socket_at_its_path_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-socket");
    std::fs::write(&path, b"keep me").unwrap();
    let err = SinkListener::bind(&format!("unix:{}", path.display()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SinkError::Socket(ReaderError::PathOccupied { path: p, .. }) if *p == path),
        "{err}"
    );
    assert!(err.to_string().contains(&path.display().to_string()));
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
}

/// A second sink on the path of a live one is refused and leaves the first one's
/// socket alone (found by a review: it removed the socket and served in its place).
#[tokio::test]
async fn unix_sink_leaves_a_socket_another_sink_serves_alone() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sink.sock");
    let listen = format!("unix:{}", path.display());
    let _first = SinkListener::bind(&listen).await.unwrap();
    let inode = std::fs::metadata(&path).unwrap().ino();
    let err = SinkListener::bind(&listen).await.unwrap_err();
    assert!(
        matches!(&err, SinkError::Socket(ReaderError::PathServed { path: p }) if *p == path),
        "{err}"
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().ino(),
        inode,
        "the first sink's socket file is still there"
    );
}

#[tokio::test]
async fn bad_listen_address_is_a_bind_error_naming_it() {
    let err = run_sink("256.0.0.1:1", true, async {}).await.unwrap_err();
    assert!(matches!(err, SinkError::Bind { .. }), "{err}");
    assert!(err.to_string().contains("256.0.0.1:1"), "{err}");
}

#[tokio::test]
async fn run_sink_serves_until_shutdown_then_removes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.sock");
    let listen = format!("unix:{}", path.display());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        run_sink(&listen, true, async {
            let _ = stopped.await;
        })
        .await
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !path.exists() {
        assert!(tokio::time::Instant::now() < deadline, "sink never bound");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    send_two_requests(&format!("unix:{}", path.display())).await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert!(!path.exists());
}

#[tokio::test]
async fn a_quiet_sink_refuses_what_a_printing_sink_refuses_and_counts_nothing_for_it() {
    let bad_utf8 = EncodedRequest {
        bytes: bytes::Bytes::from_static(&[0x12, 0x02, 0xff, 0xfe]),
        logs: 0,
        frames: 1,
        records_end: None,
    };
    for sink in [
        Sink::quiet(),
        Sink::printing(StdoutReporter::with_writer(Capture::new().boxed())),
    ] {
        let (url, _stop, _task) =
            spawn_sink(&sink, SinkListener::bind("127.0.0.1:0").await.unwrap());
        let reporter = GrpcReporter::new(GrpcReporterConfig::new(&url)).unwrap();
        let refused = reporter.report_encoded(bad_utf8.clone()).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Internal, "{refused:?}");
        assert_eq!((sink.logs(), sink.requests()), (0, 0));
        let request = sample_request();
        reporter
            .report_boundary_logs(request.clone())
            .await
            .unwrap();
        assert_eq!(
            (sink.logs(), sink.requests()),
            (request.logs.len() as u64, 1)
        );
    }
}
