//! One upgraded connection of the coder sink: the websocket's binary messages carried as a
//! byte stream to and from a yamux server session (the `yamux` crate, polled all the time),
//! each inbound yamux stream served by `rpc`, plus the keep-alive pings coderd sends
//! (websocket pings, yamux pings) and the connection cuts the tests inject.
//!
//! The websocket and the yamux session meet through two pumps, one a direction, so neither
//! direction ever waits on the other: inbound, each message's bytes go over a bounded
//! channel and the session reads them from there (no copy on the way); outbound, the
//! session writes into an in-memory pipe that the other pump reads in up to 64 KiB
//! messages.

use std::os::fd::{AsRawFd as _, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, SimplexStream};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::frames::{sink_ping, FrameTracker, Passed};
use super::{rpc, CoderSink, Cut, Keepalive};

/// Bytes the pipe from the yamux session to the outbound pump holds.
const PIPE_BYTES: usize = 256 << 10;
/// Bytes read from the yamux session at a time (one websocket message at most).
const READ_BYTES: usize = 64 << 10;
/// How long a websocket close frame may take to go out before the connection is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Websocket messages the inbound pump may hand over before the yamux session has read
/// them (each up to one client message, at most 256 KiB from the proxy).
const INBOUND_MESSAGES: usize = 4;

/// The yamux session's byte stream: reads take the inbound pump's message bytes as they
/// are, writes go into the pipe to the outbound pump. A closed channel reads as the end
/// of the stream.
struct SessionIo {
    reads: mpsc::Receiver<Bytes>,
    /// What is left of the message being read.
    unread: Bytes,
    writes: WriteHalf<SimplexStream>,
}

impl futures_util::io::AsyncRead for SessionIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        while self.unread.is_empty() {
            match ready!(self.reads.poll_recv(cx)) {
                Some(bytes) => self.unread = bytes,
                None => return Poll::Ready(Ok(0)),
            }
        }
        let n = buf.len().min(self.unread.len());
        buf[..n].copy_from_slice(&self.unread[..n]);
        self.unread.advance(n);
        Poll::Ready(Ok(n))
    }
}

impl futures_util::io::AsyncWrite for SessionIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.writes).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.writes).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.writes).poll_shutdown(cx)
    }
}

/// Which part of the session ended, and why.
#[derive(Debug)]
struct Ended {
    part: Part,
    why: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Inbound,
    Outbound,
    Yamux,
}

impl Ended {
    fn new(part: Part, why: impl Into<String>) -> Self {
        Self {
            part,
            why: why.into(),
        }
    }
}

/// The highest ping number each kind has had answered, and a wake-up for the pinger
/// when either moves.
#[derive(Debug, Default)]
struct Answered {
    websocket: AtomicU64,
    yamux: AtomicU64,
    moved: Notify,
}

/// Runs the session until the client goes, a keep-alive ping goes unanswered, or a call's
/// fault cuts the connection. `fd`, if given, is a descriptor of the socket under
/// `websocket`, closed when the session ends.
pub(super) async fn run<S>(
    sink: CoderSink,
    connection: u64,
    websocket: WebSocketStream<S>,
    fd: Option<OwnedFd>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = sink.config();
    let (ws_out, ws_in) = websocket.split();
    let (from_yamux, yamux_writes) = tokio::io::simplex(PIPE_BYTES);
    let (to_yamux, yamux_reads) = mpsc::channel(INBOUND_MESSAGES);
    let yamux_io = SessionIo {
        reads: yamux_reads,
        unread: Bytes::new(),
        writes: yamux_writes,
    };
    let answered = Arc::new(Answered::default());
    let (cut_tx, mut cut_rx) = mpsc::unbounded_channel::<Cut>();
    let (close_tx, close_rx) = oneshot::channel::<()>();

    let mut parts = JoinSet::new();
    parts.spawn(inbound(sink.clone(), ws_in, to_yamux, answered.clone()));
    parts.spawn(outbound(
        sink.clone(),
        ws_out,
        from_yamux,
        answered,
        [config.websocket_keepalive, config.yamux_keepalive],
        close_rx,
    ));
    parts.spawn(serve_yamux(sink, connection, yamux_io, cut_tx));

    let ended = tokio::select! {
        Some(cut) = cut_rx.recv() => {
            apply(cut, fd.as_ref(), close_tx, &mut parts).await;
            Ended::new(Part::Yamux, format!("cut by an injected fault ({cut:?})"))
        }
        Some(ended) = parts.join_next() => {
            ended.unwrap_or_else(|e| Ended::new(Part::Yamux, format!("task failed: {e}")))
        }
        else => Ended::new(Part::Yamux, "every part ended".to_owned()),
    };
    tracing::info!(connection, part = ?ended.part, why = %ended.why, "coder sink: connection ended");
    // Dropping the parts drops both websocket halves: the socket closes.
    parts.shutdown().await;
}

async fn apply(
    cut: Cut,
    fd: Option<&OwnedFd>,
    close: oneshot::Sender<()>,
    parts: &mut JoinSet<Ended>,
) {
    match cut {
        Cut::TcpClose => {}
        Cut::TcpReset => {
            if let Some(fd) = fd {
                set_zero_linger(fd);
            }
        }
        Cut::WebsocketClose => {
            let _ = close.send(());
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                while let Some(ended) = parts.join_next().await {
                    if ended.is_ok_and(|e| e.part == Part::Outbound) {
                        return;
                    }
                }
            })
            .await;
        }
    }
}

/// Makes the socket's close send RST instead of FIN.
fn set_zero_linger(fd: &OwnedFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `fd` is a descriptor the session owns on its connection's socket,
    // open for the whole call (borrowed). The pointer and length describe `linger`,
    // which outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "coder sink: cannot set SO_LINGER for a reset");
    }
}

/// Websocket -> yamux: binary messages' bytes over the channel to the session, less the
/// answers to the sink's yamux pings; websocket pongs noted.
async fn inbound<S>(
    sink: CoderSink,
    mut ws_in: SplitStream<WebSocketStream<S>>,
    to_yamux: mpsc::Sender<Bytes>,
    answered: Arc<Answered>,
) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let end = |why: String| Ended::new(Part::Inbound, why);
    let counters = &sink.inner.keepalive;
    let mut tracker = FrameTracker::default();
    let mut bytes = BytesMut::new();
    while let Some(message) = ws_in.next().await {
        match message {
            Ok(Message::Binary(data)) => {
                // Most messages hold none of the sink's pongs and cut no header: they
                // pass as they are; the others are copied without the pongs.
                let mut pongs = 0;
                let passed = tracker.pass(
                    &data,
                    &mut bytes,
                    |header| header.sink_pong().is_some(),
                    |header| {
                        if let Some(value) = header.sink_pong() {
                            answered
                                .yamux
                                .fetch_max(u64::from(value), Ordering::Relaxed);
                            pongs += 1;
                        }
                    },
                );
                if pongs > 0 {
                    answered.moved.notify_one();
                    counters.yamux_pongs.fetch_add(pongs, Ordering::Relaxed);
                }
                let passed = match passed {
                    Passed::AsIs => data,
                    Passed::Filtered => bytes.split().freeze(),
                };
                if passed.is_empty() {
                    continue;
                }
                if to_yamux.send(passed).await.is_err() {
                    return end("the yamux session is gone".into());
                }
            }
            Ok(Message::Pong(payload)) => {
                if let Ok(number) = <[u8; 8]>::try_from(&payload[..]) {
                    answered
                        .websocket
                        .fetch_max(u64::from_be_bytes(number), Ordering::Relaxed);
                    answered.moved.notify_one();
                    counters.websocket_pongs.fetch_add(1, Ordering::Relaxed);
                }
            }
            // tungstenite queues the pong itself and sends it with the next read or write.
            Ok(Message::Ping(_) | Message::Frame(_)) => {}
            Ok(Message::Text(_)) => {
                return end("a text message (the Agent API carries binary messages only)".into())
            }
            Ok(Message::Close(frame)) => {
                return end(format!("the client closed the websocket ({frame:?})"));
            }
            Err(error) => return end(format!("websocket: {error}")),
        }
    }
    end("the websocket ended".into())
}

/// Yamux -> websocket: whatever the session writes, one binary message per read; the
/// keep-alive pings between yamux frames; the close frame when a cut asks for one.
async fn outbound<S>(
    sink: CoderSink,
    mut ws_out: SplitSink<WebSocketStream<S>, Message>,
    mut from_yamux: ReadHalf<SimplexStream>,
    answered: Arc<Answered>,
    [websocket, yamux]: [Option<Keepalive>; 2],
    mut close: oneshot::Receiver<()>,
) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let end = |why: String| Ended::new(Part::Outbound, why);
    let counters = &sink.inner.keepalive;
    let mut tracker = FrameTracker::default();
    let mut buf = BytesMut::with_capacity(READ_BYTES);
    let mut ws_pinger = Pinger::new(websocket);
    let mut yamux_pinger = Pinger::new(yamux);
    loop {
        let ws_answered = answered.websocket.load(Ordering::Relaxed);
        let yamux_answered = answered.yamux.load(Ordering::Relaxed);
        let wake = [
            ws_pinger.next_event(ws_answered, true),
            yamux_pinger.next_event(yamux_answered, tracker.at_boundary()),
        ]
        .into_iter()
        .flatten()
        .min();
        tokio::select! {
            Ok(()) = &mut close => {
                let frame = CloseFrame {
                    code: CloseCode::Error,
                    reason: "sink: connection cut by an injected fault".into(),
                };
                let _ = ws_out.send(Message::Close(Some(frame))).await;
                return end("sent a websocket close frame".into());
            }
            read = from_yamux.read_buf(&mut buf) => match read {
                Ok(0) => return end("the yamux session closed".into()),
                Ok(_) => {
                    tracker.track(&buf);
                    if let Err(error) = ws_out.send(Message::Binary(buf.split().freeze())).await {
                        return end(format!("websocket: {error}"));
                    }
                    buf.reserve(READ_BYTES);
                }
                Err(error) => return end(format!("reading the yamux session: {error}")),
            },
            () = sleep_until(wake) => {}
            // An answer came: the next ping is due an interval after the last, not at
            // the last one's deadline.
            () = answered.moved.notified() => {}
        }
        let now = Instant::now();
        match ws_pinger.poll(now, answered.websocket.load(Ordering::Relaxed), true) {
            Due::Nothing => {}
            Due::Send(number) => {
                counters.websocket_pings.fetch_add(1, Ordering::Relaxed);
                let ping = Message::Ping(number.to_be_bytes().to_vec().into());
                if let Err(error) = ws_out.send(ping).await {
                    return end(format!("websocket: {error}"));
                }
            }
            Due::TimedOut(after) => return timed_out(&sink, "websocket", after),
        }
        let at_boundary = tracker.at_boundary();
        match yamux_pinger.poll(now, answered.yamux.load(Ordering::Relaxed), at_boundary) {
            Due::Nothing => {}
            Due::Send(number) => {
                counters.yamux_pings.fetch_add(1, Ordering::Relaxed);
                let value = u32::try_from(number % (1 << 31)).unwrap_or(0);
                let ping = Message::Binary(sink_ping(value).to_vec().into());
                if let Err(error) = ws_out.send(ping).await {
                    return end(format!("websocket: {error}"));
                }
            }
            Due::TimedOut(after) => return timed_out(&sink, "yamux", after),
        }
    }
}

fn timed_out(sink: &CoderSink, kind: &str, after: Duration) -> Ended {
    sink.inner
        .keepalive
        .timeouts
        .fetch_add(1, Ordering::Relaxed);
    tracing::warn!(kind, timeout = ?after, "coder sink: a keep-alive ping went unanswered; closing the connection");
    Ended::new(
        Part::Outbound,
        format!("{kind} keep-alive ping unanswered after {after:?}"),
    )
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Accepts the client's yamux streams and serves each on its own task until the session
/// ends; the calls end with it.
async fn serve_yamux(
    sink: CoderSink,
    connection: u64,
    io: SessionIo,
    cut: mpsc::UnboundedSender<Cut>,
) -> Ended {
    let end = |why: String| Ended::new(Part::Yamux, why);
    let mut session = yamux::Connection::new(io, yamux::Config::default(), yamux::Mode::Server);
    let mut calls = JoinSet::new();
    loop {
        tokio::select! {
            inbound = std::future::poll_fn(|cx| session.poll_next_inbound(cx)) => match inbound {
                Some(Ok(stream)) => {
                    calls.spawn(rpc::serve_stream(sink.clone(), connection, stream, cut.clone()));
                }
                Some(Err(error)) => return end(format!("yamux: {error}")),
                None => return end("the client closed the yamux session".into()),
            },
            Some(_) = calls.join_next(), if !calls.is_empty() => {}
        }
    }
}

/// What a [`Pinger`] wants done now.
#[derive(Debug, PartialEq, Eq)]
enum Due {
    Nothing,
    /// Send ping number `n` (from 1).
    Send(u64),
    /// The last ping was not answered within this timeout.
    TimedOut(Duration),
}

/// The schedule of one kind of keep-alive ping: one outstanding at a time.
#[derive(Debug)]
struct Pinger {
    keepalive: Option<Keepalive>,
    next_send: Instant,
    outstanding: Option<(u64, Instant)>,
    sent: u64,
}

impl Pinger {
    fn new(keepalive: Option<Keepalive>) -> Self {
        let interval = keepalive.map_or(Duration::ZERO, |k| k.interval);
        Self {
            keepalive,
            next_send: Instant::now() + interval,
            outstanding: None,
            sent: 0,
        }
    }

    /// When [`Pinger::poll`] next has something to do, given the highest answered ping and
    /// whether a ping could be sent now.
    fn next_event(&self, answered: u64, can_send: bool) -> Option<Instant> {
        let keepalive = self.keepalive?;
        match self.outstanding {
            Some((number, sent_at)) if answered < number => Some(sent_at + keepalive.timeout),
            _ => can_send.then_some(self.next_send),
        }
    }

    fn poll(&mut self, now: Instant, answered: u64, can_send: bool) -> Due {
        let Some(keepalive) = self.keepalive else {
            return Due::Nothing;
        };
        if let Some((number, sent_at)) = self.outstanding {
            if answered >= number {
                self.outstanding = None;
            } else if now >= sent_at + keepalive.timeout {
                return Due::TimedOut(keepalive.timeout);
            } else {
                return Due::Nothing;
            }
        }
        if !can_send || now < self.next_send {
            return Due::Nothing;
        }
        self.sent += 1;
        self.outstanding = Some((self.sent, now));
        self.next_send = now + keepalive.interval;
        Due::Send(self.sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_session_reads_the_messages_bytes_in_order_and_ends_when_the_pump_does() {
        use futures_util::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut pump_end, writes) = tokio::io::simplex(1024);
        let (tx, reads) = mpsc::channel(INBOUND_MESSAGES);
        let mut io = SessionIo {
            reads,
            unread: Bytes::new(),
            writes,
        };
        for message in [&b"yamux-"[..], b"", b"header", b"+body"] {
            tx.send(Bytes::from_static(message)).await.unwrap();
        }
        drop(tx);
        // Reads of any size cut across messages; the closed channel is the end.
        let mut got = Vec::new();
        let mut buf = [0u8; 4];
        loop {
            let n = io.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"yamux-header+body");
        // Writes reach the outbound pump's end of the pipe.
        io.write_all(b"answer").await.unwrap();
        io.flush().await.unwrap();
        let mut out = [0u8; 6];
        tokio::io::AsyncReadExt::read_exact(&mut pump_end, &mut out)
            .await
            .unwrap();
        assert_eq!(&out, b"answer");
    }

    const KEEPALIVE: Keepalive = Keepalive {
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(3),
    };

    #[test]
    fn a_pinger_sends_every_interval_and_times_out_an_unanswered_ping() {
        let start = Instant::now();
        let mut pinger = Pinger::new(Some(KEEPALIVE));
        assert_eq!(pinger.poll(start, 0, true), Due::Nothing);
        let first = pinger.next_event(0, true).expect("a first ping");
        assert!(first >= start + KEEPALIVE.interval);
        assert_eq!(
            pinger.poll(first, 0, false),
            Due::Nothing,
            "not between frames"
        );
        assert_eq!(pinger.poll(first, 0, true), Due::Send(1));
        assert_eq!(pinger.next_event(0, true), Some(first + KEEPALIVE.timeout));
        assert_eq!(
            pinger.poll(first + Duration::from_secs(1), 0, true),
            Due::Nothing
        );
        // Answered: the next one goes out an interval after the first.
        assert_eq!(
            pinger.poll(first + Duration::from_secs(4), 1, true),
            Due::Nothing
        );
        let second = first + KEEPALIVE.interval;
        assert_eq!(pinger.poll(second, 1, true), Due::Send(2));
        // Not answered.
        assert_eq!(
            pinger.poll(second + KEEPALIVE.timeout, 1, true),
            Due::TimedOut(KEEPALIVE.timeout)
        );
    }

    #[test]
    fn no_keepalive_means_no_pings() {
        let mut pinger = Pinger::new(None);
        assert_eq!(pinger.next_event(0, true), None);
        assert_eq!(
            pinger.poll(Instant::now() + Duration::from_secs(3600), 0, true),
            Due::Nothing
        );
    }
}
