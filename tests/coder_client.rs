//! The coder reporter's behaviour over real loopback sockets, against the hand-driven test
//! coderd in tests/support/coder_peer.rs: several calls in flight on one session, a cut
//! connection or a call without answer failing transiently and the next call reconnecting,
//! refusals at connect time (401, old coderd, nothing listening) counted by result, and the
//! non-UUID session counter.

mod support;

use std::sync::Arc;
use std::time::Duration;

use boundary_log_proxy::metrics::{CoderdConnectResult, Metrics};
use boundary_log_proxy::proto::agent::{BoundaryLog, ReportBoundaryLogsRequest};
use boundary_log_proxy::reporter::coder::{CoderConfig, CoderReporter};
use boundary_log_proxy::reporter::{EncodedRequest, Reporter as _};
use prost::Message as _;
use support::coder_peer::{Answer, CoderPeer, PeerConfig, PeerEvent, FIN, RST};
use support::faults::eventually;
use support::transcript::{self, Variant};
use tonic::Code;

const TOKEN: &str = "agent-token-for-tests";

fn variant(name: &str) -> Arc<Variant> {
    Arc::new(transcript::load().variant(name).clone())
}

fn reporter_with(
    peer: &CoderPeer,
    config: impl FnOnce(&mut CoderConfig),
) -> (CoderReporter, Arc<Metrics>) {
    let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
    let mut coder = CoderConfig::new(peer.url.clone(), TOKEN);
    config(&mut coder);
    (CoderReporter::new(coder, metrics.clone()).unwrap(), metrics)
}

fn reporter(peer: &CoderPeer) -> (CoderReporter, Arc<Metrics>) {
    reporter_with(peer, |_| {})
}

/// A peer whose buildinfo answers after `delay`, and a reporter with `call_timeout`.
async fn slow_buildinfo(
    delay: Duration,
    call_timeout: Duration,
) -> (CoderPeer, CoderReporter, Arc<Metrics>) {
    let peer = CoderPeer::start(PeerConfig {
        buildinfo_delay: delay,
        ..PeerConfig::default()
    })
    .await;
    let (reporter, metrics) = reporter_with(&peer, |c| c.call_timeout = call_timeout);
    (peer, reporter, metrics)
}

/// Sends `b`'s request, which must be answered, and checks that the reporter has made
/// one successful connection in all (`why` says which).
async fn answered_on_the_one_connection(
    reporter: &CoderReporter,
    metrics: &Metrics,
    b: &Variant,
    why: &str,
) {
    reporter.send(&b.request_bytes()).await.expect(why);
    assert_eq!(
        metrics.coderd_connects_for(CoderdConnectResult::Ok),
        1,
        "{why}"
    );
}

/// Waits for buildinfo and the upgrade of one connection.
async fn expect_connection(peer: &mut CoderPeer) {
    assert!(peer.next_head().await.starts_with("GET /api/v2/buildinfo "));
    assert!(peer
        .next_head()
        .await
        .starts_with("GET /api/v2/workspaceagents/me/rpc?"));
}

#[tokio::test]
async fn four_calls_are_in_flight_at_once_on_one_session_each_on_its_own_stream() {
    let mut peer = CoderPeer::start(PeerConfig::default()).await;
    let (reporter, metrics) = reporter(&peer);
    let b = variant("B");
    for _ in 0..4 {
        peer.script(Answer::Hold(b.clone()));
    }
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let (reporter, request) = (reporter.clone(), b.request_bytes());
            tokio::spawn(async move { reporter.send(&request).await })
        })
        .collect();
    expect_connection(&mut peer).await;
    // Every request is in before any is answered: four calls in flight.
    let mut streams = Vec::new();
    while streams.len() < 4 {
        if let PeerEvent::Request(stream) = peer.next().await {
            streams.push(stream);
        }
    }
    streams.sort_unstable();
    streams.dedup();
    assert_eq!(streams.len(), 4, "one yamux stream per call: {streams:?}");
    assert!(calls.iter().all(|c| !c.is_finished()));
    peer.release();
    for call in calls {
        call.await.unwrap().expect("answered after the release");
    }
    assert_eq!(metrics.coderd_connects_for(CoderdConnectResult::Ok), 1);
}

#[tokio::test]
async fn a_connection_cut_during_a_call_fails_it_transiently_and_the_next_call_reconnects() {
    let mut peer = CoderPeer::start(PeerConfig::default()).await;
    let (reporter, metrics) = reporter(&peer);
    let b = variant("B");
    peer.script(Answer::Cut);
    peer.script(Answer::Replay(b.clone()));

    let status = reporter.send(&b.request_bytes()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    expect_connection(&mut peer).await;
    assert!(
        eventually(Duration::from_secs(5), || metrics.coderd_connected.get()
            == 0)
        .await,
        "the end of the connection is noticed"
    );
    assert!(!reporter.is_connected());

    reporter
        .send(&b.request_bytes())
        .await
        .expect("a new connection");
    loop {
        match peer.next().await {
            PeerEvent::Head(head) => {
                assert!(head.starts_with("GET /api/v2/buildinfo "), "{head}");
                break;
            }
            PeerEvent::ConnectionEnded | PeerEvent::Request(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(peer
        .next_head()
        .await
        .starts_with("GET /api/v2/workspaceagents/me/rpc?"));
    assert_eq!(metrics.coderd_connects_for(CoderdConnectResult::Ok), 2);
    assert_eq!(metrics.coderd_connected.get(), 1);
}

#[tokio::test]
async fn a_call_left_unanswered_times_out_transiently_and_its_connection_is_replaced() {
    let mut peer = CoderPeer::start(PeerConfig::default()).await;
    let (reporter, metrics) = reporter_with(&peer, |c| c.call_timeout = Duration::from_millis(500));
    let b = variant("B");
    peer.script(Answer::Replay(b.clone()));
    peer.script(Answer::Silent);
    peer.script(Answer::Replay(b.clone()));

    reporter
        .send(&b.request_bytes())
        .await
        .expect("answered: the session was up before the silent call");
    let status = reporter.send(&b.request_bytes()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("call timeout"), "{status:?}");
    reporter
        .send(&b.request_bytes())
        .await
        .expect("answered on a new connection");
    assert_eq!(metrics.coderd_connects_for(CoderdConnectResult::Ok), 2);
    // Two connections; the abandoned stream was ended (FIN or RST), not left open.
    let (mut heads, mut streams, mut abandoned) = (0, 0, None);
    while heads < 4 || abandoned.is_none() {
        match peer.next().await {
            PeerEvent::Head(_) => heads += 1,
            PeerEvent::Stream(record) => {
                streams += 1;
                if streams == 2 {
                    abandoned = Some(record);
                }
            }
            _ => {}
        }
    }
    let last = abandoned.unwrap().frames.last().unwrap().header;
    assert!(last.flags & (FIN | RST) != 0, "{last:?}");
}

#[tokio::test]
async fn a_session_opened_for_a_call_that_timed_out_is_kept_for_the_next_call() {
    // Connecting (a slow buildinfo) and the answer together take longer than the call
    // timeout, the answer alone does not: replacing the new session at the timeout would
    // reconnect for ever and deliver nothing.
    let (mut peer, reporter, metrics) =
        slow_buildinfo(Duration::from_millis(300), Duration::from_millis(1000)).await;
    let b = variant("B");
    peer.script(Answer::Silent);
    peer.script(Answer::Replay(b.clone()));

    let status = reporter.send(&b.request_bytes()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("call timeout"), "{status:?}");
    answered_on_the_one_connection(
        &reporter,
        &metrics,
        &b,
        "answered on the session the first call opened",
    )
    .await;
    assert_eq!(metrics.coderd_connected.get(), 1);
    expect_connection(&mut peer).await;
}

#[tokio::test]
async fn a_coderd_slower_to_connect_than_the_call_timeout_is_connected_by_the_attempt_going_on() {
    // Connecting alone takes longer than a call may: the call fails naming the step it
    // was in, but the attempt goes on, and the session it opens serves the next call.
    let (mut peer, reporter, metrics) =
        slow_buildinfo(Duration::from_millis(700), Duration::from_millis(300)).await;
    let b = variant("B");
    peer.script(Answer::Replay(b.clone()));
    let status = reporter.send(&b.request_bytes()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("GET /api/v2/buildinfo")
            && status.message().contains("call timeout"),
        "{status:?}"
    );
    expect_connection(&mut peer).await;
    assert!(
        eventually(Duration::from_secs(5), || {
            metrics.coderd_connects_for(CoderdConnectResult::Ok) == 1
        })
        .await,
        "the attempt connected after its caller stopped waiting"
    );
    answered_on_the_one_connection(
        &reporter,
        &metrics,
        &b,
        "answered on the session the attempt opened",
    )
    .await;
}

#[tokio::test]
async fn a_connect_attempt_stops_when_the_reporter_is_dropped() {
    let (mut peer, reporter, metrics) =
        slow_buildinfo(Duration::from_millis(500), Duration::from_millis(200)).await;
    let status = reporter.send(b"").await.unwrap_err();
    assert!(status.message().contains("still connecting"), "{status:?}");
    drop(reporter);
    assert!(peer.next_head().await.starts_with("GET /api/v2/buildinfo "));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    while let Ok(event) = peer.events.try_recv() {
        assert!(
            !matches!(&event, PeerEvent::Head(head) if head.contains("/rpc?")),
            "a reporter nobody holds went on to upgrade: {event:?}"
        );
    }
    assert_eq!(metrics.coderd_connects_for(CoderdConnectResult::Ok), 0);
    assert_eq!(metrics.coderd_connected.get(), 0);
}

#[tokio::test]
async fn a_connect_attempt_its_caller_stopped_waiting_for_is_still_counted_when_it_fails() {
    let peer = CoderPeer::start(PeerConfig {
        buildinfo_delay: Duration::from_secs(2),
        ..PeerConfig::default()
    })
    .await;
    let (reporter, metrics) = reporter_with(&peer, |c| {
        c.call_timeout = Duration::from_millis(200);
        c.connect_timeout = Duration::from_millis(600);
    });
    let status = reporter.send(b"").await.unwrap_err();
    assert!(status.message().contains("still connecting"), "{status:?}");
    assert_eq!(
        metrics.coderd_connects_for(CoderdConnectResult::NetworkError),
        0
    );
    assert!(
        eventually(Duration::from_secs(5), || {
            metrics.coderd_connects_for(CoderdConnectResult::NetworkError) == 1
        })
        .await,
        "the buildinfo timeout of the attempt is counted"
    );
}

#[tokio::test]
async fn an_upgrade_refused_without_a_body_shows_the_status_words() {
    // A load balancer that passes plain GETs and refuses the upgrade, with no body.
    let mut peer = CoderPeer::start(PeerConfig {
        refuse_upgrade: Some((502, "")),
        ..PeerConfig::default()
    })
    .await;
    let (reporter, metrics) = reporter(&peer);
    let status = reporter.send(b"").await.unwrap_err();
    assert!(
        status
            .message()
            .ends_with("websocket upgrade: coderd answered HTTP 502: Bad Gateway"),
        "{status:?}"
    );
    expect_connection(&mut peer).await;
    assert_eq!(
        metrics.coderd_connects_for(CoderdConnectResult::HttpError),
        1
    );
}

#[tokio::test]
async fn a_wrong_token_fails_transiently_with_coderds_message_and_is_counted() {
    let mut peer = CoderPeer::start(PeerConfig {
        refuse_upgrade: Some((401, r#"{"message":"Agent token not authorized."}"#)),
        ..PeerConfig::default()
    })
    .await;
    let (reporter, metrics) = reporter(&peer);
    for attempt in 1..=2 {
        let status = reporter.send(b"").await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("401"), "{status:?}");
        assert!(
            status.message().contains("Agent token not authorized."),
            "{status:?}"
        );
        expect_connection(&mut peer).await;
        assert_eq!(
            metrics.coderd_connects_for(CoderdConnectResult::HttpError),
            attempt
        );
    }
    assert_eq!(metrics.coderd_connected.get(), 0);
}

#[tokio::test]
async fn a_coderd_older_than_v2_31_is_refused_before_the_upgrade_unless_allowed() {
    let mut peer = CoderPeer::start(PeerConfig {
        version: "v2.30.2",
        ..PeerConfig::default()
    })
    .await;
    let (reporter, metrics) = reporter(&peer);
    let status = reporter.send(b"").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("v2.30.2"), "{status:?}");
    assert!(peer.next_head().await.starts_with("GET /api/v2/buildinfo"));
    assert_eq!(
        metrics.coderd_connects_for(CoderdConnectResult::RefusedVersion),
        1
    );
    // Nothing else was asked of coderd: no upgrade.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), peer.events.recv())
            .await
            .is_err()
    );

    let (allowed, metrics) = reporter_with(&peer, |c| c.allow_agent_role = true);
    let b = variant("B");
    peer.script(Answer::Replay(b.clone()));
    answered_on_the_one_connection(&allowed, &metrics, &b, "--coder-allow-agent-role connects")
        .await;
}

#[tokio::test]
async fn nothing_listening_is_a_transient_network_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    drop(listener);
    let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
    let reporter = CoderReporter::new(CoderConfig::new(url, TOKEN), metrics.clone()).unwrap();
    let status = reporter.send(b"").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        metrics.coderd_connects_for(CoderdConnectResult::NetworkError),
        1
    );
}

fn request(session_id: &str, logs: usize) -> EncodedRequest {
    let request = ReportBoundaryLogsRequest {
        logs: vec![BoundaryLog::default(); logs],
        session_id: session_id.into(),
        confined_process_name: String::new(),
    };
    EncodedRequest {
        bytes: request.encode_to_vec().into(),
        logs: logs as u32,
        frames: 1,
        records_end: None,
    }
}

#[tokio::test]
async fn logs_forwarded_with_a_session_id_that_is_not_a_uuid_are_counted() {
    let peer = CoderPeer::start(PeerConfig::default()).await;
    let (reporter, metrics) = reporter(&peer);
    let b = variant("B");
    for _ in 0..3 {
        peer.script(Answer::Replay(b.clone()));
    }
    reporter
        .report_encoded(request("6f1c2b9a-2d4e-4c1b-9b8e-0a1b2c3d4e5f", 2))
        .await
        .unwrap();
    assert_eq!(metrics.logs_non_uuid_session.get(), 0);
    reporter
        .report_encoded(request("session-7", 3))
        .await
        .unwrap();
    assert_eq!(metrics.logs_non_uuid_session.get(), 3);
    // No session id at all (proto3 leaves the empty field out): not a UUID either.
    reporter.report_encoded(request("", 4)).await.unwrap();
    assert_eq!(metrics.logs_non_uuid_session.get(), 7);
}

#[tokio::test]
async fn a_request_of_a_mebibyte_keeps_to_the_256_kib_stream_window_and_arrives_whole() {
    let mut peer = CoderPeer::start(PeerConfig::default()).await;
    let (reporter, _) = reporter(&peer);
    peer.script(Answer::Replay(variant("B")));
    let request = ReportBoundaryLogsRequest {
        logs: (0..1000)
            .map(|i| BoundaryLog {
                sequence_number: i,
                ..BoundaryLog::default()
            })
            .collect(),
        session_id: "6f1c2b9a-2d4e-4c1b-9b8e-0a1b2c3d4e5f".into(),
        confined_process_name: "x".repeat(1 << 20),
    }
    .encode_to_vec();
    assert!(request.len() > 4 * support::coder_peer::WINDOW as usize);
    // The peer asserts the window on every Data frame and credits it back as it reads.
    reporter
        .send(&request)
        .await
        .expect("delivered under flow control");
    expect_connection(&mut peer).await;
    let record = peer.next_stream().await;
    let mut reader = boundary_log_proxy::reporter::coder::drpc::PacketReader::new();
    reader.push(&record.drpc);
    let invoke = reader.next_packet().unwrap().unwrap();
    let message = reader.next_packet().unwrap().unwrap();
    assert_eq!(
        invoke.data,
        "/coder.agent.v2.Agent/ReportBoundaryLogs".as_bytes()
    );
    assert_eq!(
        message.data, request,
        "the request's bytes as they were given"
    );
}

/// The binary's `serve` to `peer` with `token`, its socket in `dir`, `--log-format
/// json` and `extra` flags, once it listens; and its metrics address.
async fn serve_to(
    peer: &CoderPeer,
    token: &str,
    dir: &tempfile::TempDir,
    extra: &[&str],
) -> (support::proxy::Process, std::net::SocketAddr) {
    let socket = dir.path().join("proxy.sock");
    let metrics = support::proxy::free_addr();
    let (url, socket_arg, metrics_arg) = (
        peer.url.to_string(),
        socket.to_str().unwrap().to_owned(),
        metrics.to_string(),
    );
    let mut args = vec![
        "serve",
        "--coder-url",
        &url,
        "--agent-token",
        token,
        "--socket",
        &socket_arg,
        "--metrics-addr",
        &metrics_arg,
        "--log-format",
        "json",
    ];
    args.extend_from_slice(extra);
    let mut proxy = support::proxy::Process::spawn(&args);
    proxy.wait_for_socket(&socket, "listening").await;
    (proxy, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_logs_a_wrong_token_once_with_coderds_message_counts_each_attempt_and_drops_after_retries(
) {
    use boundary_log_proxy::codec::Tag;
    use support::proxy::{assert_accounting_totals, request, stopped_totals, Client};

    let peer = CoderPeer::start(PeerConfig {
        refuse_upgrade: Some((
            401,
            r#"{"message":"Agent token not authorized.","detail":"no such token"}"#,
        )),
        ..PeerConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, metrics) =
        serve_to(&peer, "wrong-token", &dir, &["--retry-max-elapsed", "2s"]).await;
    let socket = dir.path().join("proxy.sock");
    Client::connect(&socket).send_request(
        Tag::V2,
        &request("6f1c2b9a-2d4e-4c1b-9b8e-0a1b2c3d4e5f", "curl", 0, 5),
    );
    let scrape = proxy
        .scrape_until(metrics, "the logs dropped after retries", |s| {
            s.get("logs_dropped_total", Some("reason=\"forward_failed\"")) == 5
        })
        .await;
    let attempts = scrape.get("coderd_connects_total", Some("result=\"http_error\""));
    assert!(attempts >= 2, "each retry tries to connect: {attempts}");
    assert_eq!(scrape.get("coderd_connected", None), 0);
    let exited = proxy.terminate().await;
    assert!(exited.status.success(), "{:?}", exited.stderr);
    let refusals: Vec<_> = exited
        .stderr
        .iter()
        .filter(|l| l.contains("Agent token not authorized. (no such token)"))
        .filter(|l| l.contains("\"level\":\"ERROR\""))
        .collect();
    assert_eq!(
        refusals.len(),
        1,
        "logged once at error level: {:#?}",
        exited.stderr
    );
    assert!(refusals[0].contains("401"), "{}", refusals[0]);
    assert_accounting_totals(stopped_totals(&exited.stderr), 0);
}

/// coderd's answers are a few bytes and every yamux frame at most 256 KiB + 12: a
/// message of tens of MiB (here 56, in 8 MiB frames, each under tungstenite's default
/// 16 MiB frame limit and the whole under its 64 MiB message limit) is refused as it
/// arrives instead of being buffered whole before yamux sees a byte of it.
#[tokio::test]
async fn the_websocket_to_coderd_refuses_a_message_far_over_any_yamux_frame() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::{self, protocol::Role, Message};
    use tokio_tungstenite::WebSocketStream;

    let (ours, theirs) = tokio::io::duplex(1 << 20);
    // The configuration `websocket::upgrade` gives tungstenite.
    let config = boundary_log_proxy::reporter::coder::websocket::client_config();
    let mut client = WebSocketStream::from_raw_socket(ours, Role::Client, Some(config)).await;
    let mut coderd = WebSocketStream::from_raw_socket(theirs, Role::Server, None).await;
    tokio::spawn(async move {
        for i in 0..7 {
            let opcode = OpCode::Data(if i == 0 { Data::Binary } else { Data::Continue });
            let frame = Frame::message(vec![0u8; 8 << 20], opcode, i == 6);
            if coderd.send(Message::Frame(frame)).await.is_err() {
                return;
            }
        }
    });
    let read = tokio::time::timeout(Duration::from_secs(30), client.next())
        .await
        .expect("the client answers within 30 s");
    match read {
        Some(Err(tungstenite::Error::Capacity(_))) => {}
        Some(Ok(Message::Binary(data))) => panic!(
            "a {} MiB message from coderd was read whole into memory",
            data.len() >> 20
        ),
        other => panic!("expected a capacity error, got {other:?}"),
    }
}

/// tungstenite logs the whole websocket upgrade request, `Coder-Session-Token` header
/// included, at `trace` (through the `log` crate, which the proxy's subscriber takes
/// in): the token must come out as `<redacted>`, never as itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_token_never_appears_in_the_binarys_logs_even_at_trace_level() {
    use boundary_log_proxy::codec::Tag;
    use support::proxy::{request, Client};

    const TOKEN: &str = "7d5c1a2e-agent-token-4f9c";
    let peer = CoderPeer::start(PeerConfig::default()).await;
    peer.script(Answer::Replay(variant("B")));
    let dir = tempfile::tempdir().unwrap();
    let (proxy, metrics) = serve_to(&peer, TOKEN, &dir, &["--log-level", "trace"]).await;
    let socket = dir.path().join("proxy.sock");
    Client::connect(&socket).send_request(
        Tag::V2,
        &request("6f1c2b9a-2d4e-4c1b-9b8e-0a1b2c3d4e5f", "curl", 0, 1),
    );
    proxy
        .scrape_until(metrics, "the upgrade", |s| {
            s.get("coderd_connects_total", Some("result=\"ok\"")) >= 1
        })
        .await;
    let exited = proxy.terminate().await;
    let leaks: Vec<_> = exited.stderr.iter().filter(|l| l.contains(TOKEN)).collect();
    assert!(
        leaks.is_empty(),
        "the agent token is in the logs: {leaks:#?}"
    );
    let upgrade = exited
        .stderr
        .iter()
        .find(|l| l.to_ascii_lowercase().contains("coder-session-token"))
        .unwrap_or_else(|| {
            panic!(
                "the upgrade request is logged at trace: {:#?}",
                exited.stderr
            )
        });
    assert!(upgrade.contains("<redacted>"), "{upgrade}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_a_host_that_is_not_loopback_is_accepted_with_a_warning() {
    use support::proxy::Process;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("proxy.sock");
    let socket_arg = socket.to_str().unwrap().to_owned();
    let mut proxy = Process::spawn(&[
        "serve",
        "--coder-url",
        "http://192.0.2.1:3000",
        "--agent-token",
        "t",
        "--socket",
        &socket_arg,
        "--log-format",
        "json",
    ]);
    proxy.wait_for_socket(&socket, "listening").await;
    let exited = proxy.terminate().await;
    assert!(exited.status.success(), "{:?}", exited.stderr);
    let warned = exited.stderr.iter().any(|l| {
        l.contains("\"level\":\"WARN\"") && l.contains("unencrypted") && l.contains("192.0.2.1")
    });
    assert!(warned, "{:#?}", exited.stderr);
}

/// A server on loopback that reads each connection's request and answers `reply` (raw
/// bytes, possibly none), then closes: what stands at a wrong `--coder-url`.
async fn canned_server(reply: &'static [u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(reply).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_url_that_is_not_coderds_fails_with_what_to_check() {
    let cases: [(&[u8], &str); 5] = [
        // A plain-http URL a load balancer redirects (redirects are not followed).
        (
            b"HTTP/1.1 302 Found\r\nLocation: https://coder.example.com/api/v2/buildinfo\r\nContent-Length: 0\r\n\r\n",
            "redirected to https://coder.example.com/api/v2/buildinfo",
        ),
        // A proxy in front of coderd without coderd behind it: no body to show.
        (
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n",
            "HTTP 502: Bad Gateway",
        ),
        // Another web server.
        (
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: 22\r\n\r\n<!DOCTYPE HTML><html/>",
            "is the URL coderd's own",
        ),
        // A gRPC server (HTTP/2 only): its SETTINGS frame instead of an HTTP/1.1 answer.
        (b"\x00\x00\x00\x04\x00\x00\x00\x00\x00", "--coderd"),
        // A TLS server closes a plain-text request without an answer.
        (b"", "https:// URL"),
    ];
    for (reply, hint) in cases {
        let url = canned_server(reply).await;
        let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
        let coder = CoderConfig::new(url.parse().unwrap(), TOKEN);
        let reporter = CoderReporter::new(coder, metrics).unwrap();
        let status = reporter.send(b"").await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains(hint), "{hint}: {status:?}");
        assert!(!status.message().contains("DOCTYPE"), "{status:?}");
    }
}

#[tokio::test]
async fn pongs_to_a_coderd_that_pings_and_never_reads_stay_bounded() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    // RFC 6455 has every ping answered with a pong. A peer that pings and does not read
    // must not make the proxy queue one pong per ping without limit (tungstenite's
    // default write buffer limit is usize::MAX): once its write buffer is full, a
    // newer pong replaces the one waiting.
    const PINGS: usize = 60_000;
    const PING: usize = 125;
    let (ours, theirs) = tokio::io::duplex(64 << 10);
    let config = boundary_log_proxy::reporter::coder::websocket::client_config();
    let mut client = WebSocketStream::from_raw_socket(ours, Role::Client, Some(config)).await;
    let (theirs_read, mut theirs_write) = tokio::io::split(theirs);
    tokio::spawn(async move {
        // Server frames are unmasked: FIN + opcode, then the length (RFC 6455, 5.2).
        let mut ping = vec![0x89, PING as u8];
        ping.extend_from_slice(&[b'p'; PING]);
        for _ in 0..PINGS {
            theirs_write.write_all(&ping).await.unwrap();
        }
        theirs_write.write_all(b"\x82\x03end").await.unwrap();
        // Keep the write half open while the test reads the pongs.
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    // The client reads every ping (answering each) and then the message after them,
    // while coderd reads nothing.
    let read_all = async {
        loop {
            match client.next().await {
                Some(Ok(Message::Ping(_))) => {}
                other => return other,
            }
        }
    };
    let end = tokio::time::timeout(Duration::from_secs(60), read_all)
        .await
        .expect("the pings and the message after them are read within 60 s");
    assert!(
        matches!(end, Some(Ok(Message::Binary(ref b))) if &b[..] == b"end"),
        "{end:?}"
    );
    // Now coderd reads what the client had queued for it.
    let mut reader = theirs_read;
    let pump = tokio::spawn(async move {
        let mut bytes = 0usize;
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), reader.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            bytes += n;
        }
        bytes
    });
    tokio::time::timeout(Duration::from_secs(30), client.flush())
        .await
        .expect("the client flushes within 30 s")
        .unwrap();
    let pong_bytes = pump.await.unwrap();
    // A masked pong of 125 bytes is 131 bytes on the wire.
    let pongs = pong_bytes / (PING + 6);
    assert!(
        pongs < PINGS / 2,
        "{pongs} pongs were queued for {PINGS} pings that coderd did not read"
    );
    assert!(pongs > 0, "pings are answered");
}
