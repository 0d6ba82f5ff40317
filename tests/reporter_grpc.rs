//! The gRPC reporter against a real (fake) coderd on loopback TCP and Unix sockets:
//! delivery, auth metadata, deadlines, status classification and reconnection.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use boundary_log_proxy::reporter::grpc::{
    classify, Failure, GrpcReporter, GrpcReporterConfig, Oversize, ReporterError,
};
use boundary_log_proxy::reporter::{EncodedRequest, Reporter};
use prost::Message as _;
use support::coderd::{Behaviour, FakeCoderd};
use support::sample_request;
use tonic::Code;

fn encoded(
    request: &boundary_log_proxy::proto::agent::ReportBoundaryLogsRequest,
) -> EncodedRequest {
    EncodedRequest {
        bytes: request.encode_to_vec().into(),
        logs: u32::try_from(request.logs.len()).unwrap(),
        frames: 1,
        records_end: None,
    }
}

fn reporter(url: &str) -> GrpcReporter {
    GrpcReporter::new(GrpcReporterConfig::new(url).auth_token("s3cr3t-token")).unwrap()
}

async fn delivers_encoded_request_intact(coderd: &FakeCoderd) {
    let request = sample_request();
    reporter(&coderd.addr())
        .report_encoded(encoded(&request))
        .await
        .expect("call succeeds");
    let received = coderd.requests();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].request, request);
    assert_eq!(coderd.logs_received(), 2);
}

#[tokio::test]
async fn encoded_request_arrives_intact_over_h2c() {
    delivers_encoded_request_intact(&FakeCoderd::start().await).await;
}

#[tokio::test]
async fn encoded_request_arrives_intact_over_unix_socket() {
    let coderd = FakeCoderd::start_unix().await;
    assert!(coderd.addr().starts_with("unix:/"));
    delivers_encoded_request_intact(&coderd).await;
}

#[tokio::test]
async fn encoded_bytes_go_on_the_wire_unchanged() {
    // Non-canonical field order (session_id before logs) and a field unknown to the
    // schema: decoding and re-encoding would change both.
    let request = sample_request();
    let mut bytes = Vec::new();
    prost::encoding::string::encode(2, &request.session_id, &mut bytes);
    for log in &request.logs {
        prost::encoding::message::encode(1, log, &mut bytes);
    }
    prost::encoding::string::encode(3, &request.confined_process_name, &mut bytes);
    prost::encoding::uint64::encode(99, &7, &mut bytes);
    assert_ne!(
        bytes,
        request.encode_to_vec(),
        "test needs non-canonical bytes"
    );
    let coderd = FakeCoderd::start().await;
    reporter(&coderd.addr())
        .report_encoded(EncodedRequest {
            bytes: bytes.clone().into(),
            logs: 2,
            frames: 1,
            records_end: None,
        })
        .await
        .unwrap();
    let received = &coderd.requests()[0];
    assert_eq!(received.raw.as_ref(), bytes.as_slice());
    assert_eq!(received.request, request);
}

#[tokio::test]
async fn undecodable_bytes_are_not_decoded_locally_but_sent() {
    let coderd = FakeCoderd::start().await;
    let garbage = vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f];
    let status = reporter(&coderd.addr())
        .report_encoded(EncodedRequest {
            bytes: garbage.into(),
            logs: 1,
            frames: 1,
            records_end: None,
        })
        .await
        .unwrap_err();
    // The fake saw the call and refused it; a local decode would never have called.
    assert_eq!(coderd.calls(), 1);
    assert!(
        status.message().starts_with("fake coderd: decoding"),
        "{status:?}"
    );
}

#[tokio::test]
async fn decoded_request_is_delivered_through_report_boundary_logs() {
    let coderd = FakeCoderd::start().await;
    let request = sample_request();
    reporter(&coderd.addr())
        .report_boundary_logs(request.clone())
        .await
        .unwrap();
    assert_eq!(coderd.requests()[0].request, request);
}

#[tokio::test]
async fn auth_token_is_sent_as_coder_session_token_on_every_call() {
    let coderd = FakeCoderd::start().await;
    let with_token = reporter(&coderd.addr());
    for _ in 0..3 {
        with_token
            .report_encoded(encoded(&sample_request()))
            .await
            .unwrap();
    }
    let without = GrpcReporter::new(GrpcReporterConfig::new(coderd.addr())).unwrap();
    without
        .report_encoded(encoded(&sample_request()))
        .await
        .unwrap();
    let tokens: Vec<_> = coderd.requests().into_iter().map(|r| r.token).collect();
    let expected = Some("s3cr3t-token".to_owned());
    assert_eq!(
        tokens,
        vec![expected.clone(), expected.clone(), expected, None]
    );
}

#[tokio::test]
async fn slow_coderd_hits_the_call_timeout_as_retryable_deadline_exceeded() {
    let coderd = FakeCoderd::start().await;
    coderd.set_behaviour(Behaviour::normal().with_delay(Duration::from_secs(3)));
    let reporter = GrpcReporter::new(
        GrpcReporterConfig::new(coderd.addr()).call_timeout(Duration::from_millis(200)),
    )
    .unwrap();
    let status = reporter
        .report_encoded(encoded(&sample_request()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(classify(&status), Failure::Retryable);
    assert!(coderd.requests().is_empty());
}

#[tokio::test]
async fn codes_from_coderd_are_classified() {
    let coderd = FakeCoderd::start().await;
    let reporter = reporter(&coderd.addr());
    let cases = [
        (Code::InvalidArgument, Failure::Permanent),
        (Code::PermissionDenied, Failure::Permanent),
        (Code::Unauthenticated, Failure::Permanent),
        (Code::Internal, Failure::Permanent),
        (Code::Unknown, Failure::Permanent),
        (Code::Unavailable, Failure::Retryable),
        (Code::ResourceExhausted, Failure::Retryable),
        (Code::DeadlineExceeded, Failure::Retryable),
    ];
    for (code, expected) in cases {
        coderd.set_behaviour(Behaviour::fail_next(1, code));
        let status = reporter
            .report_encoded(encoded(&sample_request()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code);
        assert_eq!(classify(&status), expected, "{code:?}: {status:?}");
    }
    // The scripted failures are used up: the next call succeeds.
    reporter
        .report_encoded(encoded(&sample_request()))
        .await
        .unwrap();
    assert_eq!(coderd.requests().len(), 1);
}

#[tokio::test]
async fn request_over_the_size_limit_is_refused_as_too_large_without_reaching_coderd() {
    let coderd = FakeCoderd::start().await;
    let reporter =
        GrpcReporter::new(GrpcReporterConfig::new(coderd.addr()).max_message_bytes(64)).unwrap();
    let request = sample_request();
    assert!(request.encoded_len() > 64);
    let status = reporter
        .report_encoded(encoded(&request))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(
        classify(&status),
        Failure::TooLarge(Oversize::Bytes(Some(64))),
        "{status:?}"
    );
    assert_eq!(coderd.calls(), 0);
}

#[tokio::test]
async fn coderd_down_at_construction_is_retryable_and_a_later_call_connects() {
    let mut coderd = FakeCoderd::start().await;
    coderd.stop().await;
    let reporter = reporter(&coderd.addr());
    let status = reporter
        .report_encoded(encoded(&sample_request()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(classify(&status), Failure::Retryable);

    coderd.restart().await;
    reporter
        .report_encoded(encoded(&sample_request()))
        .await
        .expect("connects once coderd is up");
    assert_eq!(coderd.requests().len(), 1);
}

#[tokio::test]
async fn unix_coderd_down_at_construction_is_retryable_then_connects() {
    let mut coderd = FakeCoderd::start_unix().await;
    coderd.stop().await;
    let reporter = reporter(&coderd.addr());
    let status = reporter
        .report_encoded(encoded(&sample_request()))
        .await
        .unwrap_err();
    assert_eq!(classify(&status), Failure::Retryable, "{status:?}");
    coderd.restart().await;
    reporter
        .report_encoded(encoded(&sample_request()))
        .await
        .expect("connects once coderd is up");
}

/// Calls until one succeeds (at most `attempts`), asserting every failure on the way
/// is retryable, as the forwarder would treat it. Returns the failures seen.
async fn call_until_delivered(reporter: &GrpcReporter, attempts: usize) -> Vec<tonic::Status> {
    let mut failures = Vec::new();
    for _ in 0..attempts {
        match reporter.report_encoded(encoded(&sample_request())).await {
            Ok(()) => return failures,
            Err(status) => {
                assert_eq!(classify(&status), Failure::Retryable, "{status:?}");
                failures.push(status);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    panic!("not delivered after {attempts} attempts: {failures:?}");
}

async fn calls_succeed_after_restart(mut coderd: FakeCoderd) {
    let reporter = reporter(&coderd.addr());
    reporter
        .report_encoded(encoded(&sample_request()))
        .await
        .unwrap();

    coderd.stop().await;
    let status = reporter
        .report_encoded(encoded(&sample_request()))
        .await
        .unwrap_err();
    assert_eq!(classify(&status), Failure::Retryable, "{status:?}");

    coderd.restart().await;
    call_until_delivered(&reporter, 40).await;
    assert_eq!(coderd.requests().len(), 2);

    // And once more, with the restart not observed by any call in between.
    coderd.restart().await;
    call_until_delivered(&reporter, 40).await;
    assert_eq!(coderd.requests().len(), 3);
}

#[tokio::test]
async fn calls_succeed_again_after_coderd_restarts_on_the_same_port() {
    calls_succeed_after_restart(FakeCoderd::start().await).await;
}

#[tokio::test]
async fn calls_succeed_again_after_coderd_restarts_on_the_same_unix_path() {
    calls_succeed_after_restart(FakeCoderd::start_unix().await).await;
}

#[tokio::test]
async fn bad_urls_and_settings_are_construction_errors() {
    for url in [
        "https://coder.example:443",
        "ftp://coder.example",
        "http://",
        "http://host:1/api/v2",
        "coder.example:8080",
        "unix:",
        "",
    ] {
        let err = GrpcReporter::new(GrpcReporterConfig::new(url)).unwrap_err();
        assert!(
            matches!(err, ReporterError::InvalidUrl { .. }),
            "{url:?}: {err}"
        );
    }
    for token in ["a\nb", "t\u{f6}ken", "two words", ""] {
        let err =
            GrpcReporter::new(GrpcReporterConfig::new("http://127.0.0.1:1").auth_token(token))
                .unwrap_err();
        assert!(
            matches!(err, ReporterError::InvalidAuthToken),
            "{token:?}: {err}"
        );
    }
    let err = GrpcReporter::new(
        GrpcReporterConfig::new("http://127.0.0.1:1").call_timeout(Duration::ZERO),
    )
    .unwrap_err();
    assert!(matches!(err, ReporterError::ZeroCallTimeout), "{err}");
    for url in [
        "http://127.0.0.1:1",
        "http://localhost:8080/",
        "http://[::1]:8080",
        "unix:/run/coder.sock",
        "unix:///run/coder.sock",
    ] {
        GrpcReporter::new(GrpcReporterConfig::new(url)).unwrap();
    }
}

#[test]
fn construction_outside_a_runtime_is_an_error_not_a_panic() {
    let err = GrpcReporter::new(GrpcReporterConfig::new("http://127.0.0.1:1")).unwrap_err();
    assert!(matches!(err, ReporterError::NoRuntime), "{err}");
}

#[test]
fn debug_output_does_not_reveal_the_token() {
    let config = GrpcReporterConfig::new("http://127.0.0.1:1").auth_token("s3cr3t-token");
    assert!(!format!("{config:?}").contains("s3cr3t"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let reporter = rt.block_on(async { GrpcReporter::new(config).unwrap() });
    assert!(!format!("{reporter:?}").contains("s3cr3t"));
}

/// A peer that accepts TCP connections and reads them but never answers: a host
/// that vanished behind a connection that was never reset. Counts connections.
async fn silent_peer() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut stream, &mut sink).await;
            });
        }
    });
    (url, accepted)
}

fn silent_peer_reporter(url: &str, keepalive: Option<Duration>) -> GrpcReporter {
    GrpcReporter::new(
        GrpcReporterConfig::new(url)
            .call_timeout(Duration::from_millis(400))
            .keepalive(keepalive, Duration::from_millis(100)),
    )
    .unwrap()
}

#[tokio::test]
async fn keepalive_drops_a_silent_connection_and_the_next_call_redials() {
    let (url, accepted) = silent_peer().await;
    let reporter = silent_peer_reporter(&url, Some(Duration::from_millis(100)));
    for _ in 0..3 {
        let status = reporter
            .report_encoded(encoded(&sample_request()))
            .await
            .unwrap_err();
        // Unavailable from the keepalive (or, on a slow machine, the deadline).
        assert_eq!(classify(&status), Failure::Retryable, "{status:?}");
    }
    assert!(
        accepted.load(Ordering::SeqCst) >= 2,
        "the dead connection was never replaced: {} connection(s)",
        accepted.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn without_keepalive_a_silent_connection_is_kept_and_every_call_times_out() {
    // The control for the test above: the redial is the keepalive's doing.
    let (url, accepted) = silent_peer().await;
    let reporter = silent_peer_reporter(&url, None);
    for _ in 0..3 {
        let status = reporter
            .report_encoded(encoded(&sample_request()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// A TCP relay in front of the fake coderd whose `crash` drops every connection at
/// once, without the GOAWAY a graceful shutdown sends, and stops listening.
struct Relay {
    addr: std::net::SocketAddr,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(bind: std::net::SocketAddr, target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tasks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let conns = Arc::clone(&tasks);
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    let mut server = tokio::net::TcpStream::connect(target).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                conns.lock().unwrap().push(conn);
            }
        });
        tasks.lock().unwrap().push(accept);
        Self { addr, tasks }
    }

    fn crash(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

#[tokio::test]
async fn calls_succeed_again_after_coderd_crashes_and_comes_back() {
    let coderd = FakeCoderd::start().await;
    let target = coderd
        .addr()
        .strip_prefix("http://")
        .unwrap()
        .parse()
        .unwrap();
    let relay = Relay::start("127.0.0.1:0".parse().unwrap(), target).await;
    let reporter = reporter(&format!("http://{}", relay.addr));
    reporter
        .report_encoded(encoded(&sample_request()))
        .await
        .unwrap();

    relay.crash();
    // Called at once, this usually goes out on the dead connection and fails as
    // UNKNOWN "transport error" (a broken pipe); later it would be a refused connect.
    let status = reporter
        .report_encoded(encoded(&sample_request()))
        .await
        .unwrap_err();
    assert_eq!(classify(&status), Failure::Retryable, "{status:?}");

    let _relay = Relay::start(relay.addr, target).await;
    call_until_delivered(&reporter, 40).await;
    assert_eq!(coderd.requests().len(), 2);
}

/// An HTTP/2 server that answers every call with status 0 and a gRPC message of `len`
/// bytes: a server that does not keep to `ReportBoundaryLogsResponse` being empty.
async fn answering_with_a_response_of(len: usize) -> String {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let service = hyper::service::service_fn(move |_: http::Request<_>| async move {
                let mut message = vec![0u8; 5 + len];
                message[1..5].copy_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                let frames: [Result<Frame<Bytes>, Infallible>; 2] = [
                    Ok(Frame::data(message.into())),
                    Ok(Frame::trailers(trailers)),
                ];
                let body = StreamBody::new(futures_util::stream::iter(frames));
                let response = http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(body)
                    .unwrap();
                Ok::<_, Infallible>(response)
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// coderd has taken a request by the time its response arrives: a response over the
/// reporter's limit must not read as the request refused for its size, which would
/// have the forwarder split the request, send its halves again and lower the size it
/// learned coderd takes. It is a permanent failure, worded as the response's.
#[tokio::test]
async fn a_response_over_the_limit_is_not_read_as_the_request_refused_for_its_size() {
    // Over the proxy's 64 KiB, and over tonic's own 4 MiB (which tonic words as a
    // refusal of a message for its size).
    for len in [100_000, 5 << 20] {
        let url = answering_with_a_response_of(len).await;
        let status = reporter(&url)
            .report_encoded(encoded(&sample_request()))
            .await
            .unwrap_err();
        assert_eq!(classify(&status), Failure::Permanent, "{len}: {status:?}");
        assert!(
            status.message().starts_with("coderd's response is "),
            "{len}: {status:?}"
        );
    }
}
