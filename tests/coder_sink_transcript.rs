//! The coder sink fed the bytes a real client (storj drpc, hashicorp yamux, coder websocket)
//! sent in tests/vectors/drpc/transcript.json, frame by frame at the yamux level over a real
//! websocket, driven by hand here (not by the yamux crate): it must answer what the real
//! server answered. DRPC bytes compare exactly, except for the CloseSend race the transcript
//! describes (a server may or may not send CloseSend after its Message); yamux is checked
//! for its semantics (the stream is ACKed, the server closes it with FIN once the client
//! has, never a reset), not for frame-for-frame equality: the sink ACKs a stream with an
//! empty data frame where hashicorp sends a window update.

mod support;

use std::collections::HashMap;

use boundary_log_proxy::reporter::coder::drpc::{Kind, PacketReader};
use boundary_log_proxy::sink::coder::{CallFault, CoderSink, CoderSinkConfig, Outcome};
use boundary_log_proxy::sink::Sink;
use bytes::BytesMut;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use support::proxy::PATIENCE;
use support::transcript::{self, unhex, Variant};

const SYN: u16 = 1;
const ACK: u16 = 2;
const FIN: u16 = 4;
const RST: u16 = 8;

/// What the hand-driven client has seen on one yamux stream.
#[derive(Debug, Default)]
struct Seen {
    data: Vec<u8>,
    acked: bool,
    fin: bool,
    rst: bool,
}

/// A yamux client written out by hand over a real websocket.
struct Client {
    ws: WebSocketStream<TcpStream>,
    incoming: BytesMut,
    streams: HashMap<u32, Seen>,
    pings_answered: u32,
}

impl Client {
    /// Dials with the recorded upgrade request; returns the client and the response head.
    async fn dial(addr: std::net::SocketAddr, recorded: &str) -> (Self, String) {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let request = recorded
            .replace("127.0.0.1:PORT", &addr.to_string())
            .replace("<token>", "any-token")
            .replace('\n', "\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        // Byte by byte: whatever follows the head is websocket traffic.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let byte = tokio::time::timeout(PATIENCE, tcp.read_u8())
                .await
                .expect("the response head in time")
                .expect("the response head");
            head.push(byte);
        }
        let ws = WebSocketStream::from_raw_socket(tcp, Role::Client, None).await;
        let client = Self {
            ws,
            incoming: BytesMut::new(),
            streams: HashMap::new(),
            pings_answered: 0,
        };
        (client, String::from_utf8(head).unwrap())
    }

    async fn send(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(Message::Binary(bytes.into()))
            .await
            .expect("websocket send");
    }

    /// Reads frames until `done` holds for the stream; answers the server's pings.
    async fn wait(&mut self, stream: u32, what: &str, done: impl Fn(&Seen) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !done(self.streams.entry(stream).or_default()) {
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "stream {stream}: timed out waiting for {what}: {:?}",
                        self.streams.get(&stream)
                    )
                })
                .expect("the websocket stays open")
                .expect("a websocket message");
            match message {
                Message::Binary(bytes) => self.incoming.extend_from_slice(&bytes),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected websocket message {other:?}"),
            }
            while let Some(frame) = self.take_frame() {
                self.on_frame(frame).await;
            }
        }
    }

    fn take_frame(&mut self) -> Option<(u8, u16, u32, Vec<u8>)> {
        if self.incoming.len() < 12 {
            return None;
        }
        let h = &self.incoming[..12];
        assert_eq!(h[0], 0, "yamux version 0");
        let kind = h[1];
        let flags = u16::from_be_bytes([h[2], h[3]]);
        let stream = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let length = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        let body = if kind == 0 { length as usize } else { 0 };
        if self.incoming.len() < 12 + body {
            return None;
        }
        let frame = self.incoming.split_to(12 + body);
        let payload = if kind == 0 {
            frame[12..].to_vec()
        } else {
            length.to_be_bytes().to_vec()
        };
        Some((kind, flags, stream, payload))
    }

    async fn on_frame(&mut self, (kind, flags, stream, payload): (u8, u16, u32, Vec<u8>)) {
        match kind {
            0 | 1 => {
                assert!(
                    !stream.is_multiple_of(2),
                    "the server never opens streams: {stream}"
                );
                let seen = self.streams.entry(stream).or_default();
                assert!(flags & SYN == 0, "a SYN from the server on stream {stream}");
                assert!(!seen.fin, "stream {stream}: a frame after the server's FIN");
                seen.acked |= flags & ACK != 0;
                seen.fin |= flags & FIN != 0;
                seen.rst |= flags & RST != 0;
                if kind == 0 {
                    assert!(seen.acked, "stream {stream}: data before the ACK");
                    seen.data.extend(payload);
                }
            }
            2 if flags & SYN != 0 => {
                // Answer the ping: same value, ACK.
                let mut pong = vec![0, 2];
                pong.extend_from_slice(&ACK.to_be_bytes());
                pong.extend_from_slice(&0u32.to_be_bytes());
                pong.extend_from_slice(&payload);
                self.send(pong).await;
                self.pings_answered += 1;
            }
            2 => {}
            other => panic!("unexpected yamux frame type {other} (flags {flags})"),
        }
    }
}

/// The packets in `bytes` as (kind, stream id, message id, data).
fn packets(bytes: &[u8]) -> Vec<(Kind, u64, u64, Vec<u8>)> {
    let mut reader = PacketReader::new();
    reader.push(bytes);
    let mut out = Vec::new();
    while let Some(p) = reader.next_packet().expect("well-formed DRPC") {
        out.push((p.kind, p.id.stream, p.id.message, p.data.to_vec()));
    }
    assert_eq!(reader.pending(), 0, "bytes after the last packet");
    out
}

/// `packets` without a CloseSend at the end.
fn without_final_close_send(
    mut packets: Vec<(Kind, u64, u64, Vec<u8>)>,
) -> Vec<(Kind, u64, u64, Vec<u8>)> {
    if packets.last().is_some_and(|p| p.0 == Kind::CloseSend) {
        packets.pop();
    }
    packets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_answers_the_recorded_client_bytes_as_the_real_server_did() {
    let transcript = transcript::load();
    let mut of_call: HashMap<u32, &Variant> = HashMap::new();
    for variant in &transcript.variants {
        for call in &variant.calls {
            of_call.insert(*call, variant);
        }
    }

    // The recording's peer was not coderd: it took 1200 logs in one request, so no limit
    // here; no keep-alive pings of the sink's own in the way of the comparison.
    let config = CoderSinkConfig {
        max_logs: None,
        websocket_keepalive: None,
        yamux_keepalive: None,
        record_calls: true,
        ..CoderSinkConfig::default()
    };
    let sink = CoderSink::new(Sink::quiet(), config);
    // Call 1 of the recording was answered with an injected error.
    sink.fail_calls([CallFault::Error("injected failure".into())]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = {
        let sink = sink.clone();
        tokio::spawn(async move { sink.serve(listener, std::future::pending()).await })
    };

    let upgrade = &transcript.http_upgrade;
    let (mut client, head) = Client::dial(addr, &upgrade.request).await;
    let head_lines: Vec<String> = head.lines().map(str::to_ascii_lowercase).collect();
    assert_eq!(head_lines[0], "http/1.1 101 switching protocols", "{head}");
    for recorded in upgrade.response.lines().skip(1) {
        if !recorded.is_empty() {
            // The accept value follows from the recorded key, so it must match exactly.
            assert!(
                head_lines.contains(&recorded.to_ascii_lowercase()),
                "{recorded:?} missing from\n{head}"
            );
        }
    }

    let calls = u32::try_from(of_call.len()).unwrap();
    for call in 1..=calls {
        let variant = of_call[&call];
        let name = &variant.variant;
        let stream = 2 * call - 1;
        let drpc = variant.client_bytes();
        let mut writes = variant.client_to_server.io_lengths.iter().copied();
        let mut sent = 0;
        let mut server_data = 0;
        for frame in &variant.yamux_frames_in_order {
            let mut header = unhex(&frame.header_hex);
            header[4..8].copy_from_slice(&stream.to_be_bytes());
            let length = frame.length as usize;
            let data = frame.kind == "Data";
            if frame.sent_by_client() {
                // Header and body as two websocket messages, as the recorded client wrote them.
                client.send(header).await;
                if data {
                    let n = writes.next().expect("a recorded write for each data frame");
                    assert_eq!(n, length, "call {call}: frame length and write size");
                    client.send(drpc[sent..sent + n].to_vec()).await;
                    sent += n;
                }
            } else if data {
                server_data += length;
                client
                    .wait(stream, "the answer", |s| s.data.len() >= server_data)
                    .await;
            } else if frame.flags.contains("ACK") {
                client.wait(stream, "the ACK", |s| s.acked).await;
            } else if frame.flags.contains("FIN") {
                client.wait(stream, "the FIN", |s| s.fin).await;
            }
        }
        assert_eq!(sent, drpc.len(), "call {call}: all client bytes sent");
        let seen = &client.streams[&stream];
        assert!(
            seen.acked && seen.fin && !seen.rst,
            "call {call} ({name}): {seen:?}"
        );
        let recorded = packets(&variant.server_bytes());
        let ours = packets(&seen.data);
        if ours != recorded {
            assert_eq!(
                without_final_close_send(ours),
                without_final_close_send(recorded),
                "call {call} (variant {name}): DRPC answer differs beyond the CloseSend race"
            );
        }
    }

    // What the sink took in: every ReportBoundaryLogs request byte for byte, the unknown
    // method never reaching the handler.
    let recorded_calls = sink.calls();
    let mut want = Vec::new();
    for call in 1..=calls {
        let variant = of_call[&call];
        if variant.rpc != "/coder.agent.v2.Agent/ReportBoundaryLogs" {
            continue;
        }
        let outcome = match &variant.error {
            Some(text) => Outcome::Error(text.clone()),
            None => Outcome::Answered,
        };
        want.push((variant.request_bytes(), outcome));
    }
    let got: Vec<_> = recorded_calls
        .iter()
        .map(|c| (c.request.to_vec(), c.outcome.clone()))
        .collect();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "recorded calls differ from the transcript's");
    let delivered_logs: u64 = recorded_calls
        .iter()
        .filter(|c| c.outcome.delivered())
        .map(|c| c.logs as u64)
        .sum();
    assert_eq!(sink.sink().logs(), delivered_logs);
    assert_eq!(sink.connects().len(), 1);
    assert_eq!(sink.connects()[0].role.as_deref(), Some("agent"));
    server.abort();
}
