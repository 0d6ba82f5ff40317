//! The yamux layer: a client session (the `yamux` crate, same spec as hashicorp/yamux) over
//! the websocket's byte stream. One task owns the connection and polls it without pause, so
//! coderd's keep-alive pings are answered and stream data keeps flowing; callers ask it for
//! new outbound streams, one per call (docs/coder-transport.md, "yamux").

use std::future::poll_fn;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use futures_util::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use yamux::{Config, Connection, ConnectionError, Mode};

/// A yamux stream: one call's bidirectional byte stream.
pub type Stream = yamux::Stream;

/// Longest a graceful close (GoAway) may take once the session is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

type OpenReply = oneshot::Sender<Result<Stream, ConnectionError>>;

/// Why the session can no longer carry calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("yamux session: {0}")]
pub struct SessionError(pub String);

/// A running yamux client session. Dropping it closes the session (GoAway, then the
/// websocket) in the background.
#[derive(Debug)]
pub struct Session {
    opens: mpsc::Sender<OpenReply>,
    ended: CancellationToken,
    end_reason: Arc<Mutex<Option<String>>>,
}

impl Session {
    /// Starts the session over `io` on a task of the current runtime. `on_end` is called
    /// once, with the reason, when the connection ends (not when it is dropped).
    pub fn start<T>(io: T, on_end: impl FnOnce(&str) + Send + 'static) -> Self
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let mut config = Config::default();
        // hashicorp/yamux sends each write as one frame, up to the stream window; do the
        // same rather than the crate's 16 KiB pieces.
        config.set_split_send_size(yamux::DEFAULT_CREDIT as usize);
        let connection = Connection::new(io, config, Mode::Client);
        let (opens, requests) = mpsc::channel(16);
        let ended = CancellationToken::new();
        let end_reason = Arc::new(Mutex::new(None));
        tokio::spawn(drive(
            connection,
            requests,
            ended.clone(),
            end_reason.clone(),
            on_end,
        ));
        Self {
            opens,
            ended,
            end_reason,
        }
    }

    /// Opens a new outbound stream (its SYN goes out with its first frame).
    pub async fn open(&self) -> Result<Stream, SessionError> {
        let (reply, answer) = oneshot::channel();
        if self.opens.send(reply).await.is_err() {
            return Err(self.error());
        }
        match answer.await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(SessionError(e.to_string())),
            Err(_) => Err(self.error()),
        }
    }

    /// Whether the connection has ended.
    pub fn is_ended(&self) -> bool {
        self.ended.is_cancelled()
    }

    /// Resolves when the connection has ended.
    pub async fn ended(&self) {
        self.ended.cancelled().await;
    }

    fn error(&self) -> SessionError {
        let reason = self
            .end_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        SessionError(reason.unwrap_or_else(|| "closed".into()))
    }
}

/// Polls the connection until it ends: answers opens, drives every stream's I/O, and
/// refuses streams coderd opens (the Agent API has none).
async fn drive<T>(
    mut connection: Connection<T>,
    mut requests: mpsc::Receiver<OpenReply>,
    ended: CancellationToken,
    end_reason: Arc<Mutex<Option<String>>>,
    on_end: impl FnOnce(&str),
) where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut waiting: Option<OpenReply> = None;
    let outcome: Result<(), String> = poll_fn(|cx| {
        loop {
            if waiting.is_none() {
                match requests.poll_recv(cx) {
                    Poll::Ready(Some(reply)) => waiting = Some(reply),
                    // Every handle dropped: close gracefully.
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => break,
                }
            }
            match connection.poll_new_outbound(cx) {
                Poll::Ready(result) => {
                    let failed = result.as_ref().err().map(ToString::to_string);
                    if let Some(reply) = waiting.take() {
                        let _ = reply.send(result);
                    }
                    if let Some(error) = failed {
                        return Poll::Ready(Err(error));
                    }
                }
                Poll::Pending => break,
            }
        }
        loop {
            match connection.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    tracing::debug!(stream = %stream.id(), "coderd opened a yamux stream; refused");
                    drop(stream);
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.to_string())),
                Poll::Ready(None) => {
                    return Poll::Ready(Err("coderd closed the connection".into()))
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
    match outcome {
        Ok(()) => {
            let _ =
                tokio::time::timeout(CLOSE_TIMEOUT, poll_fn(|cx| connection.poll_close(cx))).await;
            *end_reason.lock().unwrap_or_else(PoisonError::into_inner) = Some("closed".into());
            ended.cancel();
        }
        Err(reason) => {
            *end_reason.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason.clone());
            ended.cancel();
            on_end(&reason);
        }
    }
}
