//! The websocket layer: the HTTP upgrade of `GET /api/v2/workspaceagents/me/rpc` (RFC 6455,
//! via tokio-tungstenite) with the agent token, and the upgraded connection exposed as a
//! plain byte stream for yamux: binary messages carry bytes, their boundaries mean nothing
//! (docs/coder-transport.md, "The websocket").

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::io::{AsyncRead, AsyncWrite};
use futures_util::{Sink, Stream};
use http::header::{HeaderValue, USER_AGENT};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use super::net::BoxIo;
use super::ConnectError;
use crate::config::coder::CoderUrl;

/// The Agent API's endpoint, under the URL's path prefix.
pub const RPC_PATH: &str = "/api/v2/workspaceagents/me/rpc";
/// Agent API version 2.0, connecting as a boundary log proxy rather than as the agent
/// (coderd v2.31.0 and later; older ones ignore `role`).
pub const RPC_QUERY: &str = "version=2.0&role=boundary-log-proxy";
/// The header carrying the agent token.
pub const TOKEN_HEADER: &str = "Coder-Session-Token";

/// Upgrades `io` to a websocket on the rpc endpoint. A non-101 answer becomes
/// [`ConnectError::Http`] with the status and coderd's JSON `message`.
pub async fn upgrade(io: BoxIo, url: &CoderUrl, token: &str) -> Result<WsBytes, ConnectError> {
    let scheme = if url.tls() { "wss" } else { "ws" };
    let target = format!(
        "{scheme}://{}{}?{RPC_QUERY}",
        url.authority(),
        url.path(RPC_PATH)
    );
    let mut request = target
        .into_client_request()
        .map_err(|e| ConnectError::Upgrade(e.to_string()))?;
    let token = HeaderValue::from_str(token)
        .map_err(|_| ConnectError::Upgrade("the agent token is not a valid header value".into()))?;
    request.headers_mut().insert(TOKEN_HEADER, token);
    request.headers_mut().insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("boundary-log-proxy/", env!("CARGO_PKG_VERSION"))),
    );
    match tokio_tungstenite::client_async_with_config(request, io, Some(client_config())).await {
        Ok((ws, _response)) => Ok(WsBytes::new(ws)),
        Err(tungstenite::Error::Http(response)) => {
            let location = response.headers().get(http::header::LOCATION);
            let body = response.body().as_deref().unwrap_or_default();
            Err(ConnectError::Http {
                what: "websocket upgrade",
                status: response.status().as_u16(),
                message: http_error_message(response.status(), location, body),
            })
        }
        Err(tungstenite::Error::Io(source)) => Err(ConnectError::Network {
            what: "websocket upgrade".into(),
            source,
        }),
        Err(e) => Err(ConnectError::Upgrade(e.to_string())),
    }
}

/// Largest websocket message (and frame) either end takes: 4x the largest yamux
/// frame (256 KiB + 12; coderd's yamux writes a frame's header and body as two
/// messages), instead of tungstenite's default of 64 MiB a message, which a faulty or
/// hostile peer could make the proxy buffer whole before yamux sees a byte of it.
pub const MAX_MESSAGE: usize = 1 << 20;

/// Most bytes of websocket frames the proxy queues unsent: twice [`MAX_MESSAGE`], room
/// for its largest message (one yamux frame) behind tungstenite's 128 KiB write
/// buffer. tungstenite's default is no limit, and it answers every ping with a pong
/// (RFC 6455, 5.5.2) even while the peer reads nothing: a peer that pinged without
/// reading grew the proxy's memory by gigabytes in seconds. At the limit the pong
/// waiting to be sent is replaced by the newest one, and a message the proxy sends
/// fails the session (the call is retried on a new one).
pub const MAX_UNSENT: usize = 2 * MAX_MESSAGE;

/// The proxy's side of the websocket: coderd's short answers and pings, read 4 KiB at a
/// time, in messages of at most [`MAX_MESSAGE`] bytes (a longer one ends the session
/// with an error, and the call is retried on a new one), with at most [`MAX_UNSENT`]
/// bytes queued to send.
pub fn client_config() -> WebSocketConfig {
    read_config(4 << 10)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
        .max_write_buffer_size(MAX_UNSENT)
}

/// tungstenite's configuration with reads of at most `read_buffer` bytes. tungstenite
/// zero-fills the buffer it reads into before every read, up to this size (128 KiB by
/// default), whether or not data is waiting: a side that only reads short answers and
/// pings zeroes far less with a small one.
pub fn read_config(read_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(read_buffer)
}

/// What an HTTP error answer says: where a redirect points (redirects are not
/// followed), else coderd's message from the body ([`coderd_message`]), else, for an
/// empty body (a load balancer's 502, say), the status's own words.
pub fn http_error_message(
    status: http::StatusCode,
    location: Option<&http::HeaderValue>,
    body: &[u8],
) -> String {
    if let (true, Some(location)) = (status.is_redirection(), location) {
        let location: String = String::from_utf8_lossy(location.as_bytes())
            .chars()
            .take(200)
            .collect();
        return format!(
            "redirected to {location}; redirects are not followed: set --coder-url \
             (or CODER_AGENT_URL) to the address coderd is served at"
        );
    }
    match coderd_message(body) {
        message if message.trim().is_empty() => {
            status.canonical_reason().unwrap_or("no message").to_owned()
        }
        message => message,
    }
}

/// coderd's error `message` from a JSON body (`{"message": ..., "detail": ...}`), else the
/// body's first 200 characters.
pub fn coderd_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Response {
        message: String,
        #[serde(default)]
        detail: String,
    }
    match serde_json::from_slice::<Response>(body) {
        Ok(r) if r.detail.is_empty() => r.message,
        Ok(r) => format!("{} ({})", r.message, r.detail),
        Err(_) => String::from_utf8_lossy(body).chars().take(200).collect(),
    }
}

/// The most bytes gathered into one binary message from several writes (the yamux
/// session's largest frame, 256 KiB of data, plus its 12-byte header). A single larger
/// write is still sent whole, as one message.
const MESSAGE_BYTES: usize = (256 << 10) + 12;

/// An upgraded websocket read and written as bytes: the writes made between two flushes
/// are sent as one binary message (up to [`MESSAGE_BYTES`]; the yamux session writes a
/// frame's header and body apart, then flushes), so a frame costs one message, not two;
/// reads return the bytes of binary messages in order.
///
/// A flush right after writes is put off by one turn of the task: it wakes the task and
/// answers pending, and the next flush with no write in between sends. The yamux session
/// flushes after every frame, and goes on to write the frames already queued when a
/// flush is pending, so the frames queued together (a call's DRPC Close and its stream's
/// FIN, the next call's request, window updates) leave as one message and one `write`
/// instead of one each.
///
/// Pings are answered by tungstenite as long as the stream is read (the yamux session
/// reads it continuously). A close frame or the end of the connection reads as end of
/// stream; a text message is an error.
pub struct WsBytes {
    ws: WebSocketStream<BoxIo>,
    unread: Bytes,
    /// Written bytes not yet handed to the websocket as a message.
    unsent: BytesMut,
    /// Whether bytes were written since the last flush was asked for.
    wrote: bool,
    /// Whether the close frame was handed to the websocket.
    close_sent: bool,
}

impl WsBytes {
    fn new(ws: WebSocketStream<BoxIo>) -> Self {
        Self {
            ws,
            unread: Bytes::new(),
            unsent: BytesMut::new(),
            wrote: false,
            close_sent: false,
        }
    }

    /// Hands the unsent bytes to the websocket as one binary message.
    fn poll_send_unsent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.unsent.is_empty() {
            return Poll::Ready(Ok(()));
        }
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io_error)?;
        let message = self.unsent.split().freeze();
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(message))
            .map_err(io_error)?;
        Poll::Ready(Ok(()))
    }
}

fn io_error(error: tungstenite::Error) -> io::Error {
    match error {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "websocket closed")
        }
        other => io::Error::other(other),
    }
}

impl AsyncRead for WsBytes {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            if !self.unread.is_empty() {
                let n = buf.len().min(self.unread.len());
                buf[..n].copy_from_slice(&self.unread[..n]);
                self.unread.advance(n);
                return Poll::Ready(Ok(n));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(bytes))) => self.unread = bytes,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "coderd sent a text websocket message; the rpc endpoint is binary only",
                    )))
                }
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(0)),
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }
}

impl AsyncWrite for WsBytes {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.unsent.len() + buf.len() > MESSAGE_BYTES {
            ready!(self.poll_send_unsent(cx))?;
        }
        self.unsent.extend_from_slice(buf);
        self.wrote = true;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if std::mem::take(&mut self.wrote) {
            // One more turn for the frames queued behind this one (see the type's doc).
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(self.poll_send_unsent(cx))?;
        Pin::new(&mut self.ws).poll_flush(cx).map_err(io_error)
    }

    /// Sends what is unsent, then a close frame with status 1000 (normal closure), as
    /// coder/websocket's `NetConn.Close` does: coderd's side reads 1000 as the end of the
    /// stream, and a close frame without a status (1005) as an error.
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_unsent(cx))?;
        if !self.close_sent {
            ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io_error)?;
            let normal = tungstenite::protocol::CloseFrame {
                code: tungstenite::protocol::frame::coding::CloseCode::Normal,
                reason: "".into(),
            };
            Pin::new(&mut self.ws)
                .start_send(Message::Close(Some(normal)))
                .map_err(io_error)?;
            self.close_sent = true;
        }
        Pin::new(&mut self.ws).poll_close(cx).map_err(io_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::io::AsyncWriteExt as _;
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::protocol::Role;

    const WAIT: std::time::Duration = std::time::Duration::from_secs(5);

    /// The proxy's end of a websocket over an in-memory pipe, and coderd's end.
    async fn connected() -> (WsBytes, WebSocketStream<tokio::io::DuplexStream>) {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let client = WebSocketStream::from_raw_socket(Box::new(ours) as BoxIo, Role::Client, None);
        let coderd = WebSocketStream::from_raw_socket(theirs, Role::Server, None).await;
        (WsBytes::new(client.await), coderd)
    }

    #[tokio::test]
    async fn frames_written_and_flushed_in_one_turn_leave_as_one_message() {
        let (mut bytes, mut coderd) = connected().await;
        // As the yamux session writes a call's Close and then its FIN: a frame, a flush,
        // the next queued frame, a flush, all in one poll.
        std::future::poll_fn(|cx| {
            assert!(Pin::new(&mut bytes).poll_write(cx, b"close").is_ready());
            assert!(
                Pin::new(&mut bytes).poll_flush(cx).is_pending(),
                "put off a turn"
            );
            assert!(Pin::new(&mut bytes).poll_write(cx, b"fin").is_ready());
            assert!(Pin::new(&mut bytes).poll_flush(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        // The next turn's flush, with nothing written in between, sends.
        assert_eq!(
            flush_and_receive(&mut bytes, &mut coderd).await,
            b"closefin"[..]
        );
        // A lone write is sent by the flush that follows it, one turn later.
        bytes.write_all(b"next").await.unwrap();
        assert_eq!(
            flush_and_receive(&mut bytes, &mut coderd).await,
            b"next"[..]
        );
    }

    /// Flushes `bytes` and returns the binary message `coderd` then receives; each wait
    /// is bounded, so a lost wake-up fails instead of hanging.
    async fn flush_and_receive(
        bytes: &mut WsBytes,
        coderd: &mut WebSocketStream<tokio::io::DuplexStream>,
    ) -> Bytes {
        tokio::time::timeout(WAIT, bytes.flush())
            .await
            .expect("flushed")
            .unwrap();
        match tokio::time::timeout(WAIT, coderd.next()).await {
            Ok(Some(Ok(Message::Binary(data)))) => data,
            other => panic!("expected a binary message, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn closing_sends_a_close_frame_with_status_1000_as_gos_netconn_does() {
        // coder/websocket's NetConn reads only 1000 and 1001 as the end of the stream;
        // an empty close frame (1005) reaches coderd's yamux as an error, logged at
        // every disconnect.
        let (mut bytes, mut coderd) = connected().await;
        let closing = tokio::spawn(async move { bytes.close().await });
        match tokio::time::timeout(WAIT, coderd.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                assert_eq!(
                    frame.code,
                    tungstenite::protocol::frame::coding::CloseCode::Normal
                );
            }
            other => panic!("expected a close frame with a status, got {other:?}"),
        }
        // coderd answers the close; the client's close completes.
        drop(coderd);
        let _ = tokio::time::timeout(WAIT, closing).await.expect("closed");
    }

    #[test]
    fn coderds_json_message_is_what_gets_reported() {
        let body = br#"{"message":"Agent token not authorized.","detail":"invalid token"}"#;
        assert_eq!(
            coderd_message(body),
            "Agent token not authorized. (invalid token)"
        );
        assert_eq!(coderd_message(br#"{"message":"Gone."}"#), "Gone.");
        assert_eq!(coderd_message(b"502 Bad Gateway"), "502 Bad Gateway");
    }
}
