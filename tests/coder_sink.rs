//! The coder sink (what `sink --protocol coder` serves) with the project's coder reporter
//! over real loopback sockets, through the library API: what it records, the coderd
//! behaviours it copies (401, the log limit, unknown methods), its faults, and its
//! keep-alive pings, including a client that does not answer them.

mod support;

use std::time::Duration;

use boundary_log_proxy::metrics::CoderdConnectResult;
use boundary_log_proxy::sink::coder::{
    CallFault, Cut, HttpReject, Keepalive, Outcome, REPORT_BOUNDARY_LOGS,
};
use futures_util::{SinkExt as _, StreamExt as _};
use prost::Message as _;
use support::coder_sink::TestCoderd;
use support::proxy::{eventually, request};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const SESSION: &str = "7a0c2b9a-2d4e-4c1b-9b8e-0a1b2c3d4e5f";

fn bytes(first_seq: i32, logs: usize) -> Vec<u8> {
    request(SESSION, "claude", first_seq, logs).encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_arrive_byte_for_byte_on_one_connection_as_the_boundary_log_proxy_role() {
    let coderd = TestCoderd::start(|_| {}).await;
    let (reporter, metrics) = coderd.reporter("agent-token");
    let sent: Vec<Vec<u8>> = (0..8).map(|i| bytes(i * 10, 10)).collect();
    let calls = sent.iter().map(|b| reporter.send(b));
    for result in futures_util::future::join_all(calls).await {
        result.expect("delivered");
    }
    let mut got: Vec<Vec<u8>> = coderd
        .sink
        .calls()
        .iter()
        .map(|c| c.request.to_vec())
        .collect();
    got.sort();
    let mut want = sent.clone();
    want.sort();
    assert_eq!(got, want);
    assert!(coderd
        .sink
        .calls()
        .iter()
        .all(|c| c.outcome == Outcome::Answered && c.rpc == REPORT_BOUNDARY_LOGS));
    assert_eq!(coderd.sink.sink().logs(), 80);
    let connects = coderd.sink.connects();
    assert_eq!(connects.len(), 1, "{connects:?}");
    assert_eq!(connects[0].status, 101);
    assert_eq!(connects[0].role.as_deref(), Some("boundary-log-proxy"));
    assert_eq!(coderd.sink.buildinfo_requests(), 1);
    assert_eq!(metrics.coderd_connects_for(CoderdConnectResult::Ok), 1);
    assert_eq!(metrics.coderd_connected.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_gets_coderds_401_message_and_nothing_is_recorded() {
    let coderd = TestCoderd::start(|c| c.token = Some("right".into())).await;
    let (reporter, metrics) = coderd.reporter("wrong");
    let status = reporter.send(&bytes(0, 1)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("401"), "{status:?}");
    assert!(
        status.message().contains("Workspace agent not authorized."),
        "{status:?}"
    );
    assert_eq!(
        metrics.coderd_connects_for(CoderdConnectResult::HttpError),
        1
    );
    assert_eq!(coderd.sink.connects()[0].status, 401);
    assert!(coderd.sink.calls().is_empty());

    let (reporter, _) = coderd.reporter("right");
    reporter
        .send(&bytes(0, 1))
        .await
        .expect("the right token is let in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_http_rejection_answers_one_upgrade_then_the_next_connects() {
    let coderd = TestCoderd::start(|_| {}).await;
    coderd.sink.reject_connects([HttpReject {
        status: 503,
        message: "coderd is restarting".into(),
    }]);
    let (reporter, metrics) = coderd.reporter("t");
    let status = reporter.send(&bytes(0, 1)).await.unwrap_err();
    assert!(
        status.message().contains("503") && status.message().contains("coderd is restarting"),
        "{status:?}"
    );
    reporter
        .send(&bytes(0, 1))
        .await
        .expect("the next connection is let in");
    assert_eq!(
        metrics.coderd_connects_for(CoderdConnectResult::HttpError),
        1
    );
    assert_eq!(metrics.coderd_connects_for(CoderdConnectResult::Ok), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_version_is_reported_by_buildinfo_and_refused_by_the_reporter() {
    let coderd = TestCoderd::start(|c| c.version = "v2.30.0".into()).await;
    let (reporter, metrics) = coderd.reporter("t");
    let status = reporter.send(&bytes(0, 1)).await.unwrap_err();
    assert!(status.message().contains("v2.30.0"), "{status:?}");
    assert_eq!(
        metrics.coderd_connects_for(CoderdConnectResult::RefusedVersion),
        1
    );
    assert!(
        coderd.sink.connects().is_empty(),
        "no upgrade was asked for"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_drpc_error_and_an_oversized_request_are_answered_with_drpc_errors() {
    let coderd = TestCoderd::start(|_| {}).await;
    coderd
        .sink
        .fail_calls([CallFault::Error("injected failure".into())]);
    let (reporter, _) = coderd.reporter("t");
    let status = reporter.send(&bytes(0, 1)).await.unwrap_err();
    assert_eq!(
        status.code(),
        tonic::Code::Unknown,
        "a DRPC error is permanent: {status:?}"
    );
    assert!(status.message().contains("injected failure"), "{status:?}");

    let status = reporter.send(&bytes(0, 1001)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unknown, "{status:?}");
    assert!(
        status
            .message()
            .contains("batch size 1001 exceeds maximum of 1000"),
        "{status:?}"
    );
    reporter
        .send(&bytes(0, 1000))
        .await
        .expect("1000 logs are within the limit");

    let outcomes: Vec<_> = coderd
        .sink
        .calls()
        .into_iter()
        .map(|c| (c.logs, c.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            (1, Outcome::Error("injected failure".into())),
            (
                1001,
                Outcome::Error("batch size 1001 exceeds maximum of 1000".into())
            ),
            (1000, Outcome::Answered),
        ]
    );
    assert_eq!(
        coderd.sink.sink().logs(),
        1000,
        "only the answered request counts"
    );
    assert_eq!(
        coderd.sink.connects().len(),
        1,
        "errors do not end the connection"
    );
}

/// Each cut after an answer: the answered call succeeded, the connection is gone, the next
/// call connects again and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_each_kind_of_cut_following_an_answer_the_next_call_reconnects() {
    let coderd = TestCoderd::start(|_| {}).await;
    let (reporter, _) = coderd.reporter("t");
    for (i, cut) in [Cut::TcpClose, Cut::TcpReset, Cut::WebsocketClose]
        .into_iter()
        .enumerate()
    {
        coderd.sink.fail_calls([CallFault::CutAfterAnswer(cut)]);
        reporter
            .send(&bytes(0, 1))
            .await
            .unwrap_or_else(|e| panic!("{cut:?}: the answer arrives before the cut: {e:?}"));
        eventually(&format!("{cut:?} noticed"), || !reporter.is_connected()).await;
        let mut result = reporter.send(&bytes(1, 1)).await;
        if result.is_err() {
            // A call may race the cut's notice; the retry policy's next try connects.
            result = reporter.send(&bytes(1, 1)).await;
        }
        result.unwrap_or_else(|e| panic!("{cut:?}: the next call reconnects: {e:?}"));
        assert_eq!(coderd.sink.connects().len(), i + 2, "{cut:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_before_the_answer_is_transient_for_the_client_and_recorded_by_the_sink() {
    let coderd = TestCoderd::start(|_| {}).await;
    let (reporter, _) = coderd.reporter("t");
    for cut in [Cut::TcpClose, Cut::TcpReset, Cut::WebsocketClose] {
        coderd.sink.fail_calls([CallFault::CutBeforeAnswer(cut)]);
        let status = reporter.send(&bytes(0, 3)).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::Unavailable,
            "{cut:?}: transient: {status:?}"
        );
        assert_eq!(
            coderd.sink.calls().last().unwrap().outcome,
            Outcome::Cut(cut)
        );
    }
    assert_eq!(coderd.sink.sink().logs(), 9, "coderd kept what it recorded");
    reporter
        .send(&bytes(0, 3))
        .await
        .expect("a later call connects again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_holds_each_call_but_not_the_others_on_the_connection() {
    let coderd = TestCoderd::start(|c| c.latency = Duration::from_secs(2)).await;
    let (reporter, _) = coderd.reporter("t");
    let payloads: Vec<Vec<u8>> = (0..4).map(|i| bytes(i, 1)).collect();
    for result in futures_util::future::join_all(payloads.iter().map(|b| reporter.send(b))).await {
        result.expect("delivered despite the latency");
    }
    assert_eq!(
        coderd.sink.max_calls_in_flight(),
        4,
        "the four calls were held at the same time"
    );
    assert_eq!(coderd.sink.connects().len(), 1);
}

/// Pings often, with room for a busy machine to answer each.
fn quick_keepalive() -> Option<Keepalive> {
    Some(Keepalive {
        interval: Duration::from_millis(100),
        timeout: Duration::from_secs(5),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_reporter_answers_websocket_and_yamux_pings() {
    let coderd = TestCoderd::start(|c| {
        c.websocket_keepalive = quick_keepalive();
        c.yamux_keepalive = quick_keepalive();
    })
    .await;
    let (reporter, _) = coderd.reporter("t");
    reporter.send(&bytes(0, 1)).await.unwrap();
    eventually("five answered pings of each kind", || {
        let k = coderd.sink.keepalive();
        k.websocket_pongs >= 5 && k.yamux_pongs >= 5
    })
    .await;
    let k = coderd.sink.keepalive();
    assert_eq!(k.timeouts, 0, "{k:?}");
    assert!(reporter.is_connected());
    assert_eq!(coderd.sink.connects().len(), 1);
    reporter
        .send(&bytes(1, 1))
        .await
        .expect("the idle connection still works");
}

/// Dials the rpc route by hand and completes the websocket handshake.
async fn raw_websocket(coderd: &TestCoderd) -> WebSocketStream<TcpStream> {
    let mut tcp = TcpStream::connect(coderd.addr).await.unwrap();
    let head = format!(
        "GET /api/v2/workspaceagents/me/rpc?role=test HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        coderd.addr
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\n") {
        response.push(tcp.read_u8().await.unwrap());
    }
    let response = String::from_utf8(response).unwrap();
    assert!(response.starts_with("HTTP/1.1 101"), "{response}");
    assert!(
        response.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "the RFC 6455 accept value: {response}"
    );
    WebSocketStream::from_raw_socket(tcp, Role::Client, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_answers_no_websocket_ping_is_disconnected() {
    let coderd = TestCoderd::start(|c| {
        c.websocket_keepalive = Some(Keepalive {
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(200),
        });
        c.yamux_keepalive = None;
    })
    .await;
    // Never read: tungstenite answers pings only while reading.
    let websocket = raw_websocket(&coderd).await;
    eventually("the unanswered ping noticed", || {
        coderd.sink.keepalive().timeouts == 1
    })
    .await;
    drop(websocket);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_answers_no_yamux_ping_is_disconnected() {
    let coderd = TestCoderd::start(|c| {
        c.websocket_keepalive = None;
        c.yamux_keepalive = Some(Keepalive {
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(200),
        });
    })
    .await;
    let mut websocket = raw_websocket(&coderd).await;
    // Read everything, answer nothing: the sink's ping arrives, then the connection ends.
    let mut saw_ping = false;
    while let Some(message) = websocket.next().await {
        match message {
            Ok(Message::Binary(frame))
                if frame.len() >= 12 && frame[1] == 2 && frame[3] & 1 == 1 =>
            {
                saw_ping |= frame[8] & 0x80 != 0;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(saw_ping, "the sink's yamux ping arrived");
    assert_eq!(coderd.sink.keepalive().timeouts, 1);
}

/// How a hand-driven client sees the connection end.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// A websocket close frame with this code.
    CloseFrame(u16),
    /// The TCP stream ended (FIN) without a close frame.
    Eof,
    /// The TCP stream was reset.
    Reset,
}

/// Makes one ReportBoundaryLogs call on a raw websocket with yamux and DRPC written out
/// here, then reads until the connection ends.
async fn call_and_watch_the_end(coderd: &TestCoderd) -> Ending {
    use boundary_log_proxy::reporter::coder::drpc::{Kind, PacketWriter};
    use futures_util::SinkExt as _;
    use tokio_tungstenite::tungstenite::error::{Error, ProtocolError};

    let mut websocket = raw_websocket(coderd).await;
    let mut drpc = Vec::new();
    let mut writer = PacketWriter::new(1);
    writer.put(&mut drpc, Kind::Invoke, REPORT_BOUNDARY_LOGS.as_bytes());
    writer.put(&mut drpc, Kind::Message, &bytes(0, 1));
    writer.put(&mut drpc, Kind::CloseSend, &[]);
    // WindowUpdate SYN on stream 1, then one data frame.
    let mut frames = vec![0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0];
    frames.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
    frames.extend_from_slice(&(drpc.len() as u32).to_be_bytes());
    frames.extend_from_slice(&drpc);
    websocket
        .send(Message::Binary(frames.into()))
        .await
        .unwrap();
    loop {
        match websocket.next().await {
            Some(Ok(Message::Close(frame))) => {
                return Ending::CloseFrame(frame.map_or(0, |f| u16::from(f.code)))
            }
            Some(Ok(_)) => continue,
            Some(Err(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake))) | None => {
                return Ending::Eof
            }
            Some(Err(Error::Io(e))) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Ending::Reset
            }
            Some(Err(other)) => panic!("unexpected end: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_cut_ends_the_connection_as_named() {
    let coderd = coderd_without_pings().await;
    for (cut, ending) in [
        (Cut::TcpClose, Ending::Eof),
        (Cut::TcpReset, Ending::Reset),
        (Cut::WebsocketClose, Ending::CloseFrame(1011)),
    ] {
        coderd.sink.fail_calls([CallFault::CutBeforeAnswer(cut)]);
        assert_eq!(call_and_watch_the_end(&coderd).await, ending, "{cut:?}");
    }
    assert_eq!(coderd.sink.calls().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_of_several_windows_arrives_intact() {
    use boundary_log_proxy::proto::agent::boundary_log::Resource;
    let coderd = TestCoderd::start(|_| {}).await;
    let (reporter, _) = coderd.reporter("t");
    // 1000 logs of about 3.5 KiB: over 3 MiB, a dozen and more of yamux's 256 KiB stream
    // windows and some 55 DRPC frames of 64 KiB, still under DRPC's 4 MiB packet limit.
    let mut big = request(SESSION, "claude", 0, 1000);
    for (i, log) in big.logs.iter_mut().enumerate() {
        if let Some(Resource::HttpRequest(http)) = &mut log.resource {
            http.url = format!("https://example.com/{i}/{}", "x".repeat(3500));
        }
    }
    let sent = big.encode_to_vec();
    assert!(
        sent.len() > 3 << 20 && sent.len() < 4 << 20,
        "{}",
        sent.len()
    );
    reporter.send(&sent).await.expect("delivered");
    let calls = coderd.sink.calls();
    assert_eq!(calls.len(), 1);
    assert!(
        calls[0].request == sent,
        "the request arrived byte for byte"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_message_over_a_mebibyte_ends_the_connection() {
    let coderd = coderd_without_pings().await;
    // Four times the proxy's largest message passes; a message over 1 MiB does not (the
    // sink queues up to four messages per connection, so this bounds its buffering).
    // The message is well-formed yamux: pings (type 2, SYN) that the sink would answer.
    let ping = [0u8, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7];
    let message: Vec<u8> = ping.repeat((1 << 20) / ping.len() + 1);
    assert!(message.len() > 1 << 20);
    let mut websocket = raw_websocket(&coderd).await;
    // The sink refuses the message at its frame header and closes, so the rest of the
    // write may meet a closed connection (EPIPE, ECONNRESET): that is the end too.
    let sent = websocket.send(Message::Binary(message.into())).await;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        if sent.is_err() {
            return "closed";
        }
        loop {
            match websocket.next().await {
                None | Some(Err(_)) => return "closed",
                Some(Ok(Message::Close(_))) => return "close frame",
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("the sink ends the connection");
    assert!(["closed", "close frame"].contains(&ended));
    assert!(
        coderd.sink.calls().is_empty(),
        "nothing of it reached a call"
    );
}

/// A sink that sends no keep-alive pings of either kind, so a test sees only its own traffic.
async fn coderd_without_pings() -> TestCoderd {
    TestCoderd::start(|c| {
        c.websocket_keepalive = None;
        c.yamux_keepalive = None;
    })
    .await
}
