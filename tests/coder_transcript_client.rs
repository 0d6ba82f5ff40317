//! The coder client against the recorded server (tests/vectors/drpc/): a test peer on
//! loopback speaks raw websocket (tokio-tungstenite, server role) and drives yamux BY HAND,
//! replaying the server's recorded yamux frames and DRPC bytes, and checks that the client
//! wrote what storj drpc + hashicorp yamux + coder/websocket wrote: the DRPC bytes on the
//! stream exactly, the yamux frames semantically, the HTTP upgrade's path, query and token.
//!
//! Differences of the Rust `yamux` crate from hashicorp/yamux that are tolerated here
//! (both follow the same spec, and hashicorp's server accepts both):
//! - hashicorp opens a stream with a WindowUpdate carrying SYN and delta 0; the crate sets
//!   SYN on the stream's first frame, a Data frame. Checked: the first frame carries SYN.
//! - hashicorp closes with a WindowUpdate carrying FIN; the crate with a Data frame of 0
//!   bytes carrying FIN. Checked: the last frame carries FIN, no frame carries RST.
//! - the crate may send WindowUpdate frames (credit) and, while busy, Ping frames on
//!   stream 0 to measure the round trip; the peer answers pings and ignores credit.
//! - write boundaries differ (drpc flushed variant C in four writes, this client writes
//!   Invoke+Message+CloseSend as one): only the concatenated bytes are compared.

mod support;

use std::sync::Arc;

use boundary_log_proxy::metrics::{CoderdConnectResult, Metrics};
use boundary_log_proxy::reporter::coder::{CoderConfig, CoderReporter};
use support::coder_peer::{
    header_value, Answer, CoderPeer, PeerConfig, PeerEvent, StreamRecord, ACK, DATA, FIN, RST, SYN,
    WINDOW_UPDATE,
};
use support::transcript::{self, Variant};

const TOKEN: &str = "agent-token-for-tests";

fn reporter(peer: &CoderPeer) -> (CoderReporter, Arc<Metrics>) {
    let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
    let reporter =
        CoderReporter::new(CoderConfig::new(peer.url.clone(), TOKEN), metrics.clone()).unwrap();
    (reporter, metrics)
}

/// Checks the client's frames on one call's stream against the recorded ones (see the
/// module docs for what is tolerated) and its DRPC bytes exactly.
fn check_stream(variant: &Variant, record: &StreamRecord) {
    let name = &variant.variant;
    assert_eq!(
        record.drpc,
        variant.client_bytes(),
        "variant {name}: the DRPC bytes the client wrote on the stream"
    );
    let frames = &record.frames;
    assert!(
        frames[0].header.flags & SYN != 0,
        "variant {name}: the first frame opens the stream: {:?}",
        frames[0].header
    );
    let last = frames.last().unwrap().header;
    assert!(
        last.flags & FIN != 0 && last.length == 0,
        "variant {name}: the last frame closes it: {last:?}"
    );
    for f in frames {
        assert_eq!(
            f.header.flags & RST,
            0,
            "variant {name}: no reset: {:?}",
            f.header
        );
        assert!(
            f.header.flags & ACK == 0,
            "variant {name}: a client stream is never ACKed by the client"
        );
        assert!(f.header.kind == DATA || (f.header.kind == WINDOW_UPDATE && f.body.is_empty()));
    }
    // The recorded client did the same, semantically: SYN first, FIN last, data between.
    let recorded: Vec<_> = variant
        .yamux_frames_in_order
        .iter()
        .filter(|f| f.sent_by_client())
        .collect();
    assert_eq!(recorded.first().unwrap().flags, "SYN");
    assert_eq!(recorded.last().unwrap().flags, "FIN");
    let recorded_data: u32 = recorded
        .iter()
        .filter(|f| f.kind == "Data")
        .map(|f| f.length)
        .sum();
    assert_eq!(
        recorded_data as usize,
        record.drpc.len(),
        "variant {name}: as many bytes as recorded"
    );
}

#[tokio::test]
async fn the_client_writes_what_the_recorded_client_wrote_for_variants_a_b_c_and_e() {
    let t = transcript::load();
    let mut peer = CoderPeer::start(PeerConfig {
        version: "v2.31.0",
        ..PeerConfig::default()
    })
    .await;
    let (reporter, metrics) = reporter(&peer);

    for name in ["A", "B", "C", "E"] {
        let variant = Arc::new(
            t.variants
                .iter()
                .find(|v| v.variant == name)
                .unwrap()
                .clone(),
        );
        peer.script(Answer::Replay(variant.clone()));
        let result = reporter.send(&variant.request_bytes()).await;
        if name == "A" {
            // The connection is made on the first call: buildinfo, then the upgrade.
            let buildinfo = peer.next_head().await;
            assert!(
                buildinfo.starts_with("GET /api/v2/buildinfo HTTP/1.1\r\n"),
                "{buildinfo}"
            );
            let upgrade = peer.next_head().await;
            check_upgrade(&upgrade, &t.http_upgrade.request);
        }
        let record = peer.next_stream().await;
        check_stream(&variant, &record);
        match (variant.ok, result) {
            (true, Ok(())) => {}
            (false, Err(status)) => {
                assert_eq!(
                    status.code(),
                    tonic::Code::Unknown,
                    "a DRPC Error is permanent"
                );
                assert_eq!(Some(status.message()), variant.error.as_deref());
            }
            (ok, result) => panic!("variant {name}: recorded ok={ok}, got {result:?}"),
        }
    }
    assert_eq!(
        metrics.coderd_connects_for(CoderdConnectResult::Ok),
        1,
        "one connection for all calls"
    );
    assert_eq!(metrics.coderd_connected.get(), 1);
}

/// The upgrade request: what coder/websocket sent, with this proxy's path and query.
fn check_upgrade(head: &str, recorded: &str) {
    let request_line = head.lines().next().unwrap();
    assert_eq!(
        request_line,
        "GET /api/v2/workspaceagents/me/rpc?version=2.0&role=boundary-log-proxy HTTP/1.1"
    );
    let recorded_line = recorded.lines().next().unwrap();
    assert!(
        recorded_line.starts_with("GET /api/v2/workspaceagents/me/rpc?"),
        "{recorded_line}"
    );
    assert_eq!(header_value(head, "coder-session-token"), Some(TOKEN));
    // Every header the recorded client sent, but for the per-run key and Go's defaults.
    for line in recorded.lines().skip(1).filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').unwrap();
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "sec-websocket-key" => assert_eq!(
                header_value(head, name).map(|k| k.len()),
                Some(value.len()),
                "a 16-byte base64 key"
            ),
            "user-agent" | "accept-encoding" => {}
            "coder-session-token" => {}
            "host" => assert!(header_value(head, "host")
                .unwrap()
                .starts_with("127.0.0.1:")),
            _ => assert_eq!(
                header_value(head, name).map(str::to_ascii_lowercase),
                Some(value.to_ascii_lowercase()),
                "header {name}"
            ),
        }
    }
}

#[tokio::test]
async fn yamux_and_websocket_pings_are_answered_while_idle() {
    let t = transcript::load();
    let mut peer = CoderPeer::start(PeerConfig {
        version: "v2.31.0",
        ..PeerConfig::default()
    })
    .await;
    let (reporter, _) = reporter(&peer);
    let variant = Arc::new(t.variant("B").clone());
    peer.script(Answer::Replay(variant.clone()));
    reporter.send(&variant.request_bytes()).await.unwrap();
    peer.next_head().await;
    peer.next_head().await;
    peer.next_stream().await;

    // No call in flight: only the session's own task can answer.
    peer.pings(0x5eed);
    let (mut yamux, mut ws) = (false, false);
    while !(yamux && ws) {
        match peer.next().await {
            PeerEvent::YamuxPong(v) => {
                assert_eq!(v, 0x5eed, "the ping's opaque value comes back");
                yamux = true;
            }
            PeerEvent::WsPong(p) => {
                assert_eq!(p, b"heartbeat");
                ws = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(reporter.is_connected());
}
