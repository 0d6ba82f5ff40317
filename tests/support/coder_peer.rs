//! A test coderd for the coder client that drives yamux BY HAND (not the yamux crate, and
//! not the project's sink): raw websocket via tokio-tungstenite in the server role, yamux
//! frames parsed and written here, and answers replayed from the recorded server frames in
//! tests/vectors/drpc/transcript.json. It serves `GET /api/v2/buildinfo`, the rpc upgrade
//! (or a scripted HTTP error), and one scripted answer per yamux stream the client opens:
//!
//! ```ignore
//! let mut peer = CoderPeer::start(PeerConfig::default()).await;   // http://127.0.0.1:PORT
//! peer.script(Answer::Replay(variant));   // next stream: the recorded server frames
//! peer.script(Answer::Hold(variant));     // ...only once release() is called
//! peer.script(Answer::Cut);               // close the TCP connection once the request is in
//! peer.script(Answer::Silent);            // take the request, never answer
//! peer.pings(0x5eed);                     // a yamux ping and a websocket ping
//! match peer.next().await { PeerEvent::Stream(record) => .., .. }
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use boundary_log_proxy::config::coder::CoderUrl;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Mutex};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::transcript::{unhex, Variant};

/// How long `next()` waits for the peer to report.
pub const WAIT: Duration = Duration::from_secs(10);

// yamux header fields (the spec; hashicorp/yamux const.go).
pub const DATA: u8 = 0;
pub const WINDOW_UPDATE: u8 = 1;
pub const PING: u8 = 2;
pub const GO_AWAY: u8 = 3;
pub const SYN: u16 = 1;
pub const ACK: u16 = 2;
pub const FIN: u16 = 4;
pub const RST: u16 = 8;

/// A yamux frame header: version 0, type, flags, stream id, length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub flags: u16,
    pub stream: u32,
    pub length: u32,
}

impl Header {
    pub fn parse(b: &[u8]) -> Self {
        assert_eq!(b[0], 0, "yamux version 0");
        Self {
            kind: b[1],
            flags: u16::from_be_bytes([b[2], b[3]]),
            stream: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            length: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        }
    }

    pub fn encode(self) -> Vec<u8> {
        let mut out = vec![0, self.kind];
        out.extend(self.flags.to_be_bytes());
        out.extend(self.stream.to_be_bytes());
        out.extend(self.length.to_be_bytes());
        out
    }
}

/// One client frame on a call's stream, as received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub header: Header,
    pub body: Vec<u8>,
}

/// What the client did on one call's stream, reported when it ended (FIN or RST).
#[derive(Debug)]
pub struct StreamRecord {
    pub stream: u32,
    pub frames: Vec<Seen>,
    pub drpc: Vec<u8>,
}

/// What the peer reports.
#[derive(Debug)]
pub enum PeerEvent {
    /// An HTTP request head (buildinfo or upgrade), as received.
    Head(String),
    /// The client opened a stream and its request (through CloseSend) is in.
    Request(u32),
    /// A call's stream ended.
    Stream(StreamRecord),
    /// The client answered a yamux ping with this opaque value.
    YamuxPong(u32),
    /// The client answered a websocket ping.
    WsPong(Vec<u8>),
    /// The websocket connection ended (client closed it, or a cut).
    ConnectionEnded,
}

/// How the peer answers the next stream the client opens.
#[derive(Debug, Clone)]
pub enum Answer {
    /// The variant's recorded server Data frames, then FIN after the client's.
    Replay(Arc<Variant>),
    /// The same, but only once `release()` is called.
    Hold(Arc<Variant>),
    /// Close the TCP connection as soon as the request is in.
    Cut,
    /// Never answer.
    Silent,
}

enum Command {
    Script(Answer),
    Release,
    Pings(u32),
}

/// How the peer serves HTTP.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// What `/api/v2/buildinfo` reports.
    pub version: &'static str,
    /// Answer the upgrade with this status and JSON body instead of 101.
    pub refuse_upgrade: Option<(u16, &'static str)>,
    /// How long `/api/v2/buildinfo` takes to answer (a slow coderd or path).
    pub buildinfo_delay: Duration,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            version: "v2.31.0",
            refuse_upgrade: None,
            buildinfo_delay: Duration::ZERO,
        }
    }
}

/// The running peer.
pub struct CoderPeer {
    pub url: CoderUrl,
    pub events: mpsc::UnboundedReceiver<PeerEvent>,
    commands: mpsc::UnboundedSender<Command>,
}

impl CoderPeer {
    /// Listens on 127.0.0.1 (a free port).
    pub async fn start(config: PeerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let (events_tx, events) = mpsc::unbounded_channel();
        let (commands, commands_rx) = mpsc::unbounded_channel();
        tokio::spawn(accept_loop(
            listener,
            config,
            events_tx,
            Arc::new(Mutex::new(Shared {
                commands: commands_rx,
                scripts: VecDeque::new(),
            })),
        ));
        Self {
            url,
            events,
            commands,
        }
    }

    /// How to answer the next stream opened (answers queue up in order).
    pub fn script(&self, answer: Answer) {
        self.commands.send(Command::Script(answer)).unwrap();
    }

    /// Answers every held stream.
    pub fn release(&self) {
        self.commands.send(Command::Release).unwrap();
    }

    /// Sends a yamux ping with `opaque` and a websocket ping "heartbeat".
    pub fn pings(&self, opaque: u32) {
        self.commands.send(Command::Pings(opaque)).unwrap();
    }

    /// The next event, within [`WAIT`].
    pub async fn next(&mut self) -> PeerEvent {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("the peer reported in time")
            .expect("the peer is running")
    }

    /// The next request head, skipping pongs.
    pub async fn next_head(&mut self) -> String {
        loop {
            match self.next().await {
                PeerEvent::Head(head) => return head,
                PeerEvent::YamuxPong(_) | PeerEvent::WsPong(_) => {}
                other => panic!("expected a request head, got {other:?}"),
            }
        }
    }

    /// The next finished stream, skipping requests, pongs and ended connections.
    pub async fn next_stream(&mut self) -> StreamRecord {
        loop {
            match self.next().await {
                PeerEvent::Stream(record) => return record,
                PeerEvent::Head(head) => panic!("expected a stream, got a new request: {head}"),
                _ => {}
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: PeerConfig,
    events: mpsc::UnboundedSender<PeerEvent>,
    shared: Arc<Mutex<Shared>>,
) {
    loop {
        let Ok((mut tcp, _)) = listener.accept().await else {
            return;
        };
        let Some(head) = read_head(&mut tcp).await else {
            continue;
        };
        events.send(PeerEvent::Head(head.clone())).ok();
        if head.starts_with("GET /api/v2/buildinfo ") {
            tokio::time::sleep(config.buildinfo_delay).await;
            let body = format!(
                r#"{{"external_url":"http://x","version":"{}"}}"#,
                config.version
            );
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            tcp.write_all(response.as_bytes()).await.ok();
            continue;
        }
        if let Some((status, body)) = config.refuse_upgrade {
            let response = format!(
                "HTTP/1.1 {status} Refused\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            tcp.write_all(response.as_bytes()).await.ok();
            continue;
        }
        let key = header_value(&head, "sec-websocket-key").expect("a websocket key");
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nSec-Websocket-Accept: {}\r\nUpgrade: websocket\r\n\r\n",
            derive_accept_key(key.as_bytes())
        );
        tcp.write_all(response.as_bytes()).await.unwrap();
        let ws = WebSocketStream::from_raw_socket(tcp, Role::Server, None).await;
        let (events, shared) = (events.clone(), shared.clone());
        tokio::spawn(async move {
            // One connection at a time takes the test's commands and scripts.
            let mut shared = shared.lock().await;
            YamuxServer::default().run(ws, &events, &mut shared).await;
            events.send(PeerEvent::ConnectionEnded).ok();
        });
    }
}

async fn read_head(tcp: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await.ok()? != 1 {
            return None;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).ok()
}

/// The value of header `name` in a request head.
pub fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The receive window every yamux stream starts with (the spec's 256 KiB).
pub const WINDOW: u32 = 256 * 1024;

/// Per stream: how it is answered and what the client sent.
struct Call {
    answer: Answer,
    /// Data received and not yet credited back with a WindowUpdate.
    unacked: u32,
    frames: Vec<Seen>,
    drpc: Vec<u8>,
    request_in: bool,
    answered: bool,
}

/// Where the request ends in the client's DRPC bytes: after the first CloseSend frame.
fn request_complete(drpc: &[u8]) -> bool {
    use boundary_log_proxy::reporter::coder::drpc::{Kind, PacketReader};
    let mut reader = PacketReader::new();
    reader.push(drpc);
    while let Ok(Some(packet)) = reader.next_packet() {
        if packet.kind == Kind::CloseSend {
            return true;
        }
    }
    false
}

/// What outlives a connection: the test's commands and the answers not yet used.
struct Shared {
    commands: mpsc::UnboundedReceiver<Command>,
    scripts: VecDeque<Answer>,
}

#[derive(Default)]
struct YamuxServer {
    buf: Vec<u8>,
    calls: HashMap<u32, Call>,
    cut: bool,
}

impl YamuxServer {
    async fn run(
        &mut self,
        mut ws: WebSocketStream<TcpStream>,
        events: &mpsc::UnboundedSender<PeerEvent>,
        shared: &mut Shared,
    ) {
        loop {
            tokio::select! {
                command = shared.commands.recv() => match command {
                    Some(Command::Script(answer)) => shared.scripts.push_back(answer),
                    Some(Command::Release) => {
                        let held: Vec<u32> = self.calls.iter()
                            .filter(|(_, c)| matches!(c.answer, Answer::Hold(_)) && c.request_in && !c.answered)
                            .map(|(id, _)| *id).collect();
                        for id in held {
                            self.answer(&mut ws, id).await;
                        }
                        // Streams not yet in are answered when their request arrives.
                        for call in self.calls.values_mut() {
                            if let Answer::Hold(v) = &call.answer { call.answer = Answer::Replay(v.clone()); }
                        }
                        for answer in shared.scripts.iter_mut() {
                            if let Answer::Hold(v) = answer { *answer = Answer::Replay(v.clone()); }
                        }
                    }
                    Some(Command::Pings(opaque)) => {
                        let ping = Header { kind: PING, flags: SYN, stream: 0, length: opaque };
                        send_frame(&mut ws, ping, &[]).await;
                        ws.send(Message::Ping(Bytes::from_static(b"heartbeat"))).await.ok();
                    }
                    None => return,
                },
                message = ws.next() => {
                    let bytes = match message {
                        Some(Ok(Message::Binary(b))) => b,
                        Some(Ok(Message::Pong(p))) => { events.send(PeerEvent::WsPong(p.to_vec())).ok(); continue }
                        Some(Ok(Message::Ping(_) | Message::Frame(_))) => continue,
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                        Some(Ok(other)) => panic!("unexpected websocket message {other:?}"),
                    };
                    self.buf.extend_from_slice(&bytes);
                    while self.buf.len() >= 12 {
                        let header = Header::parse(&self.buf[..12]);
                        let body_len = if header.kind == DATA { header.length as usize } else { 0 };
                        if self.buf.len() < 12 + body_len { break; }
                        let body = self.buf[12..12 + body_len].to_vec();
                        self.buf.drain(..12 + body_len);
                        self.frame(&mut ws, events, &mut shared.scripts, Seen { header, body }).await;
                        if self.cut {
                            return; // drops the TCP connection without a close frame
                        }
                    }
                }
            }
        }
    }

    async fn frame(
        &mut self,
        ws: &mut WebSocketStream<TcpStream>,
        events: &mpsc::UnboundedSender<PeerEvent>,
        scripts: &mut VecDeque<Answer>,
        frame: Seen,
    ) {
        let h = frame.header;
        match h.kind {
            PING if h.flags & ACK != 0 => {
                events.send(PeerEvent::YamuxPong(h.length)).ok();
                return;
            }
            PING => {
                let pong = Header {
                    kind: PING,
                    flags: ACK,
                    stream: 0,
                    length: h.length,
                };
                send_frame(ws, pong, &[]).await;
                return;
            }
            GO_AWAY => return,
            _ => {}
        }
        assert!(
            h.kind == DATA || h.kind == WINDOW_UPDATE,
            "unexpected frame {h:?}"
        );
        assert!(h.stream % 2 == 1, "client streams are odd: {h:?}");
        if h.flags & SYN != 0 {
            let answer = scripts.pop_front().expect("a call the test scripted");
            let call = Call {
                answer,
                unacked: 0,
                frames: vec![],
                drpc: vec![],
                request_in: false,
                answered: false,
            };
            assert!(
                self.calls.insert(h.stream, call).is_none(),
                "stream {} reused",
                h.stream
            );
            // hashicorp's server ACKs a new stream with a WindowUpdate of delta 0.
            let ack = Header {
                kind: WINDOW_UPDATE,
                flags: ACK,
                stream: h.stream,
                length: 0,
            };
            send_frame(ws, ack, &[]).await;
        }
        let Some(call) = self.calls.get_mut(&h.stream) else {
            assert!(
                h.kind == WINDOW_UPDATE && h.flags == 0,
                "frame for an unknown stream {h:?}"
            );
            return; // credit for a stream already closed
        };
        call.frames.push(frame.clone());
        call.drpc.extend_from_slice(&frame.body);
        // Flow control as hashicorp's server does it: the client may not send beyond the
        // window; credit goes back once half of it has been read.
        call.unacked += frame.body.len() as u32;
        assert!(
            call.unacked <= WINDOW,
            "stream {}: the client overran the 256 KiB window",
            h.stream
        );
        if call.unacked >= WINDOW / 2 {
            let credit = Header {
                kind: WINDOW_UPDATE,
                flags: 0,
                stream: h.stream,
                length: call.unacked,
            };
            call.unacked = 0;
            send_frame(ws, credit, &[]).await;
        }
        if !call.request_in && request_complete(&call.drpc) {
            call.request_in = true;
            events.send(PeerEvent::Request(h.stream)).ok();
            match call.answer {
                Answer::Replay(_) => self.answer(ws, h.stream).await,
                Answer::Cut => self.cut = true,
                Answer::Hold(_) | Answer::Silent => {}
            }
        }
        if h.flags & (FIN | RST) != 0 {
            let call = self.calls.remove(&h.stream).unwrap();
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
                .send(PeerEvent::Stream(StreamRecord {
                    stream: h.stream,
                    frames: call.frames,
                    drpc: call.drpc,
                }))
                .ok();
        }
    }

    /// Sends the recorded server Data frames of the stream's variant.
    async fn answer(&mut self, ws: &mut WebSocketStream<TcpStream>, stream: u32) {
        let call = self.calls.get_mut(&stream).unwrap();
        let (Answer::Replay(variant) | Answer::Hold(variant)) = &call.answer else {
            return;
        };
        call.answered = true;
        let variant = variant.clone();
        for recorded in variant
            .yamux_frames_in_order
            .iter()
            .filter(|f| !f.sent_by_client() && f.kind == "Data")
        {
            let mut header = Header::parse(&unhex(&recorded.header_hex));
            header.stream = stream;
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
}

/// As hashicorp/yamux over coder/websocket: a frame's header and body are two writes, so
/// two binary messages.
async fn send_frame(ws: &mut WebSocketStream<TcpStream>, header: Header, body: &[u8]) {
    ws.send(Message::Binary(header.encode().into())).await.ok();
    if !body.is_empty() {
        ws.send(Message::Binary(Bytes::copy_from_slice(body)))
            .await
            .ok();
    }
}
