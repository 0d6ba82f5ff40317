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
use std::time::Duration;

use boundary_log_proxy::config::coder::CoderUrl;
use boundary_log_proxy::metrics::{CoderdConnectResult, Metrics};
use boundary_log_proxy::reporter::coder::{CoderConfig, CoderReporter};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use support::transcript::{self, unhex, Variant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const TOKEN: &str = "agent-token-for-tests";
const WAIT: Duration = Duration::from_secs(10);

// yamux header fields (the spec; hashicorp/yamux const.go).
const DATA: u8 = 0;
const WINDOW_UPDATE: u8 = 1;
const PING: u8 = 2;
const SYN: u16 = 1;
const ACK: u16 = 2;
const FIN: u16 = 4;
const RST: u16 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    kind: u8,
    flags: u16,
    stream: u32,
    length: u32,
}

impl Header {
    fn parse(b: &[u8]) -> Self {
        assert_eq!(b[0], 0, "yamux version 0");
        Self {
            kind: b[1],
            flags: u16::from_be_bytes([b[2], b[3]]),
            stream: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            length: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        }
    }

    fn encode(self) -> Vec<u8> {
        let mut out = vec![0, self.kind];
        out.extend(self.flags.to_be_bytes());
        out.extend(self.stream.to_be_bytes());
        out.extend(self.length.to_be_bytes());
        out
    }
}

/// One client frame on a call's stream, as the peer received it.
#[derive(Debug, Clone)]
struct Seen {
    header: Header,
    body: Vec<u8>,
}

/// What the client did on one call's stream.
#[derive(Debug)]
struct StreamRecord {
    frames: Vec<Seen>,
    drpc: Vec<u8>,
}

/// What the peer reports to the test.
#[derive(Debug)]
enum Event {
    /// An HTTP request head (buildinfo or upgrade), as received.
    Head(String),
    /// A call's stream ended (client FIN or RST).
    Stream(StreamRecord),
    /// The client answered our yamux ping with this opaque value.
    YamuxPong(u32),
    /// The client answered our websocket ping.
    WsPong(Vec<u8>),
}

/// What the test asks the peer to do on the current connection.
enum Command {
    /// Answer the next new stream with this variant's recorded server frames.
    Replay(Arc<Variant>),
    /// Send a yamux ping (opaque value) and a websocket ping.
    Pings(u32),
}

struct Peer {
    url: CoderUrl,
    events: mpsc::UnboundedReceiver<Event>,
    commands: mpsc::UnboundedSender<Command>,
}

#[derive(Clone)]
struct PeerConfig {
    version: &'static str,
    /// Answer the upgrade with this status and JSON body instead of 101.
    refuse_upgrade: Option<(u16, &'static str)>,
}

impl Peer {
    async fn start(config: PeerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let (events_tx, events) = mpsc::unbounded_channel();
        let (commands, commands_rx) = mpsc::unbounded_channel();
        tokio::spawn(accept_loop(listener, config, events_tx, commands_rx));
        Self {
            url,
            events,
            commands,
        }
    }

    async fn next(&mut self) -> Event {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("the peer reported in time")
            .expect("the peer is running")
    }

    async fn next_head(&mut self) -> String {
        match self.next().await {
            Event::Head(head) => head,
            other => panic!("expected a request head, got {other:?}"),
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: PeerConfig,
    events: mpsc::UnboundedSender<Event>,
    commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut commands = Some(commands);
    loop {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let head = read_head(&mut tcp).await;
        events.send(Event::Head(head.clone())).ok();
        if head.starts_with("GET /api/v2/buildinfo ") {
            let body = format!(
                r#"{{"external_url":"http://x","version":"{}"}}"#,
                config.version
            );
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            tcp.write_all(response.as_bytes()).await.unwrap();
            continue;
        }
        if let Some((status, body)) = config.refuse_upgrade {
            let response = format!(
                "HTTP/1.1 {status} Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            tcp.write_all(response.as_bytes()).await.unwrap();
            continue;
        }
        let key = header_value(&head, "sec-websocket-key").expect("a websocket key");
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nSec-Websocket-Accept: {}\r\nUpgrade: websocket\r\n\r\n",
            derive_accept_key(key.as_bytes())
        );
        tcp.write_all(response.as_bytes()).await.unwrap();
        let ws = WebSocketStream::from_raw_socket(tcp, Role::Server, None).await;
        let commands = commands.take().expect("one websocket connection per test");
        tokio::spawn(yamux_server(ws, events.clone(), commands));
    }
}

async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            tcp.read(&mut byte).await.unwrap(),
            1,
            "request head cut short"
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Per stream: the variant replayed and what the client sent.
struct Call {
    variant: Arc<Variant>,
    frames: Vec<Seen>,
    drpc: Vec<u8>,
    answered: bool,
}

/// The hand-driven yamux server.
async fn yamux_server(
    mut ws: WebSocketStream<TcpStream>,
    events: mpsc::UnboundedSender<Event>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut scripts: std::collections::VecDeque<Arc<Variant>> = Default::default();
    let mut calls: std::collections::HashMap<u32, Call> = Default::default();
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Replay(variant)) => scripts.push_back(variant),
                Some(Command::Pings(opaque)) => {
                    let ping = Header { kind: PING, flags: SYN, stream: 0, length: opaque };
                    ws.send(Message::Binary(ping.encode().into())).await.unwrap();
                    ws.send(Message::Ping(Bytes::from_static(b"heartbeat"))).await.unwrap();
                }
                None => return,
            },
            message = ws.next() => {
                let bytes = match message {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Pong(p))) => { events.send(Event::WsPong(p.to_vec())).ok(); continue }
                    Some(Ok(Message::Ping(_))) => continue,
                    Some(Ok(other)) => panic!("unexpected websocket message {other:?}"),
                    Some(Err(_)) | None => return,
                };
                buf.extend_from_slice(&bytes);
                while buf.len() >= 12 {
                    let header = Header::parse(&buf[..12]);
                    let body_len = if header.kind == DATA { header.length as usize } else { 0 };
                    if buf.len() < 12 + body_len { break; }
                    let body = buf[12..12 + body_len].to_vec();
                    buf.drain(..12 + body_len);
                    handle_frame(&mut ws, &events, &mut scripts, &mut calls, Seen { header, body }).await;
                }
            }
        }
    }
}

async fn send_frame(ws: &mut WebSocketStream<TcpStream>, header: Header, body: &[u8]) {
    // As hashicorp/yamux over coder/websocket: header and body are two writes, so two
    // binary messages.
    ws.send(Message::Binary(header.encode().into()))
        .await
        .unwrap();
    if !body.is_empty() {
        ws.send(Message::Binary(Bytes::copy_from_slice(body)))
            .await
            .unwrap();
    }
}

async fn handle_frame(
    ws: &mut WebSocketStream<TcpStream>,
    events: &mpsc::UnboundedSender<Event>,
    scripts: &mut std::collections::VecDeque<Arc<Variant>>,
    calls: &mut std::collections::HashMap<u32, Call>,
    frame: Seen,
) {
    let h = frame.header;
    if h.kind == PING {
        if h.flags & ACK != 0 {
            events.send(Event::YamuxPong(h.length)).ok();
        } else {
            let pong = Header {
                kind: PING,
                flags: ACK,
                stream: 0,
                length: h.length,
            };
            send_frame(ws, pong, &[]).await;
        }
        return;
    }
    assert!(
        h.kind == DATA || h.kind == WINDOW_UPDATE,
        "unexpected frame {h:?}"
    );
    assert!(h.stream % 2 == 1, "client streams are odd: {h:?}");
    if h.flags & SYN != 0 {
        let variant = scripts.pop_front().expect("a call the test announced");
        assert!(calls
            .insert(
                h.stream,
                Call {
                    variant,
                    frames: vec![],
                    drpc: vec![],
                    answered: false
                }
            )
            .is_none());
        // hashicorp's server ACKs a new stream with a WindowUpdate of delta 0.
        let ack = Header {
            kind: WINDOW_UPDATE,
            flags: ACK,
            stream: h.stream,
            length: 0,
        };
        send_frame(ws, ack, &[]).await;
    }
    if !calls.contains_key(&h.stream) && h.kind == WINDOW_UPDATE && h.flags == 0 {
        return; // credit for a stream already closed
    }
    let call = calls
        .get_mut(&h.stream)
        .unwrap_or_else(|| panic!("frame for an unknown stream {h:?}"));
    call.frames.push(frame.clone());
    call.drpc.extend_from_slice(&frame.body);
    // Once the request (through CloseSend) is in, replay the server's recorded Data frames.
    let request_end = {
        let c2s = &call.variant.client_to_server;
        let close_send = c2s
            .frames
            .iter()
            .find(|f| f.kind == 6)
            .expect("CloseSend recorded");
        close_send.offset + 4
    };
    if !call.answered && call.drpc.len() >= request_end {
        call.answered = true;
        for recorded in call
            .variant
            .yamux_frames_in_order
            .iter()
            .filter(|f| !f.from_client() && f.kind == "Data")
        {
            let mut header = Header::parse(&unhex(&recorded.header_hex));
            header.stream = h.stream;
            let body = unhex(
                recorded
                    .body_hex
                    .as_deref()
                    .expect("server bodies are recorded whole"),
            );
            assert_eq!(body.len(), header.length as usize);
            send_frame(ws, header, &body).await;
        }
    }
    if h.flags & (FIN | RST) != 0 {
        let call = calls.remove(&h.stream).unwrap();
        if h.flags & FIN != 0 {
            let fin = Header {
                kind: WINDOW_UPDATE,
                flags: FIN,
                stream: h.stream,
                length: 0,
            };
            send_frame(ws, fin, &[]).await;
        }
        events
            .send(Event::Stream(StreamRecord {
                frames: call.frames,
                drpc: call.drpc,
            }))
            .ok();
    }
}

fn reporter(peer: &Peer) -> (CoderReporter, Arc<Metrics>) {
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
        .filter(|f| f.from_client())
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

async fn expect_stream(peer: &mut Peer) -> StreamRecord {
    loop {
        match peer.next().await {
            Event::Stream(record) => return record,
            Event::YamuxPong(_) | Event::WsPong(_) => continue,
            other => panic!("expected a finished stream, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_client_writes_what_the_recorded_client_wrote_for_variants_a_b_c_and_e() {
    let t = transcript::load();
    let mut peer = Peer::start(PeerConfig {
        version: "v2.31.0",
        refuse_upgrade: None,
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
        peer.commands
            .send(Command::Replay(variant.clone()))
            .unwrap();
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
        let record = expect_stream(&mut peer).await;
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
    let mut peer = Peer::start(PeerConfig {
        version: "v2.31.0",
        refuse_upgrade: None,
    })
    .await;
    let (reporter, _) = reporter(&peer);
    let variant = Arc::new(t.variant("B").clone());
    peer.commands
        .send(Command::Replay(variant.clone()))
        .unwrap();
    reporter.send(&variant.request_bytes()).await.unwrap();
    peer.next_head().await;
    peer.next_head().await;
    expect_stream(&mut peer).await;

    // No call in flight: only the session's own task can answer.
    peer.commands.send(Command::Pings(0x5eed)).unwrap();
    let (mut yamux, mut ws) = (false, false);
    while !(yamux && ws) {
        match peer.next().await {
            Event::YamuxPong(v) => {
                assert_eq!(v, 0x5eed, "the ping's opaque value comes back");
                yamux = true;
            }
            Event::WsPong(p) => {
                assert_eq!(p, b"heartbeat");
                ws = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(reporter.is_connected());
}

#[tokio::test]
async fn a_wrong_token_fails_transiently_with_coderds_message_and_is_counted() {
    let mut peer = Peer::start(PeerConfig {
        version: "v2.31.0",
        refuse_upgrade: Some((401, r#"{"message":"Agent token not authorized."}"#)),
    })
    .await;
    let (reporter, metrics) = reporter(&peer);
    let status = reporter.send(b"").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("401"), "{status:?}");
    assert!(
        status.message().contains("Agent token not authorized."),
        "{status:?}"
    );
    assert!(peer.next_head().await.starts_with("GET /api/v2/buildinfo"));
    assert!(peer
        .next_head()
        .await
        .starts_with("GET /api/v2/workspaceagents/me/rpc"));
    assert_eq!(
        metrics.coderd_connects_for(CoderdConnectResult::HttpError),
        1
    );
    assert_eq!(metrics.coderd_connected.get(), 0);
}

#[tokio::test]
async fn a_coderd_older_than_v2_31_is_refused_before_the_upgrade_and_counted() {
    let mut peer = Peer::start(PeerConfig {
        version: "v2.30.2",
        refuse_upgrade: None,
    })
    .await;
    let (reporter, metrics) = reporter(&peer);
    let status = reporter.send(b"").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
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
}
