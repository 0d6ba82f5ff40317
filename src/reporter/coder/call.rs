//! The unary DRPC call on one yamux stream, as storj drpc's client makes it: Invoke, Message
//! and CloseSend on DRPC stream 1, written one after the other before any answer is read
//! (see `request_writes`); done at the first Message (success) or Error
//! (failure) packet, whether or not the server's CloseSend follows; then Close after a
//! success, and the stream closed (docs/coder-transport.md, "One call").

use std::borrow::Cow;
use std::io;

use bytes::Bytes;
use futures_util::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::drpc::{self, Kind, PacketReader, PacketWriter, WireError};

/// The rpc the proxy calls.
pub const REPORT_BOUNDARY_LOGS: &str = "/coder.agent.v2.Agent/ReportBoundaryLogs";

/// The DRPC stream id a fresh connection's (here: a fresh yamux stream's) first rpc uses.
pub const DRPC_STREAM: u64 = 1;

/// How a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The server answered an Error packet: the rpc failed (permanent).
    #[error("coderd: {message}")]
    Remote {
        /// drpcerr code (0 when coderd sets none).
        code: u64,
        /// The error's text.
        message: String,
    },
    /// The stream broke or ended before an answer (transient).
    #[error("{0}")]
    Transport(#[from] io::Error),
    /// The server broke the protocol (transient: another connection may do better).
    #[error("{0}")]
    Protocol(String),
}

impl From<WireError> for CallError {
    fn from(e: WireError) -> Self {
        Self::Protocol(e.to_string())
    }
}

/// The bytes a call writes first: Invoke(`rpc`), Message(`request`), CloseSend.
pub fn request_bytes(rpc: &str, request: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        drpc::packet_wire_len(drpc::Id::new(1, 2), request.len()) + 64 + rpc.len(),
    );
    let mut writer = PacketWriter::new(DRPC_STREAM);
    writer.put(&mut out, Kind::Invoke, rpc.as_bytes());
    writer.put(&mut out, Kind::Message, request);
    writer.put(&mut out, Kind::CloseSend, b"");
    out
}

/// Request data up to this size is copied behind its frame header; longer data is
/// written from where it lies, as a write of its own.
const INLINE_DATA: usize = 4 << 10;

/// The bytes of [`request_bytes`] as consecutive writes: the DRPC framing (Invoke, each
/// Message frame's header, CloseSend) in small buffers of its own, the request's data
/// borrowed where it lies rather than copied behind them, so the request's bytes are
/// copied once fewer on their way out. Each write becomes a yamux frame (or several,
/// when the stream's send window is short), and the frames queued before the session's
/// task runs usually leave in one websocket message (see `websocket::WsBytes`).
pub fn request_writes<'a>(rpc: &str, request: &'a [u8]) -> Vec<Cow<'a, [u8]>> {
    let mut writes = Vec::with_capacity(3 + 2 * request.len().div_ceil(drpc::MAX_FRAME_DATA));
    let mut head = Vec::with_capacity(64 + rpc.len());
    let mut writer = PacketWriter::new(DRPC_STREAM);
    writer.put(&mut head, Kind::Invoke, rpc.as_bytes());
    let id = writer.next_id();
    for (data, done) in drpc::packet_frames(request) {
        drpc::put_frame_header(&mut head, id, Kind::Message, done, false, data.len());
        if data.len() <= INLINE_DATA {
            head.extend_from_slice(data);
        } else {
            writes.push(Cow::Owned(std::mem::take(&mut head)));
            writes.push(Cow::Borrowed(data));
        }
    }
    writer.put(&mut head, Kind::CloseSend, b"");
    writes.push(Cow::Owned(head));
    writes
}

/// Makes one unary call of `rpc` with the encoded `request` on `stream` (a fresh yamux
/// stream) and returns the response message's bytes. The stream is closed on return,
/// whatever the outcome.
pub async fn unary<S>(stream: &mut S, rpc: &str, request: &[u8]) -> Result<Bytes, CallError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    unary_prepared(stream, &request_writes(rpc, request)).await
}

/// [`unary`] with its first writes already built by [`request_writes`].
pub async fn unary_prepared<S>(stream: &mut S, first: &[Cow<'_, [u8]>]) -> Result<Bytes, CallError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let result = exchange(stream, first).await;
    if result.is_ok() {
        // drpc's client tells the server the rpc is over unless it already read the server's
        // CloseSend; the recordings show it sent in practice, so it is always sent here. Its
        // message id follows Invoke (1), Message (2) and CloseSend (3).
        let mut close = Vec::with_capacity(4);
        drpc::put_packet(
            &mut close,
            drpc::Id::new(DRPC_STREAM, 4),
            Kind::Close,
            false,
            b"",
        );
        let _ = stream.write_all(&close).await;
    }
    // FIN; errors here change nothing about the call's outcome.
    let _ = stream.close().await;
    result
}

async fn exchange<S>(stream: &mut S, first: &[Cow<'_, [u8]>]) -> Result<Bytes, CallError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    for write in first {
        stream.write_all(write).await?;
    }
    stream.flush().await?;
    let mut reader = PacketReader::new();
    // Answers are a few bytes (an empty response message, an error's text).
    let mut buf = vec![0u8; 1024];
    loop {
        while let Some(packet) = reader.next_packet()? {
            if packet.id.stream != DRPC_STREAM {
                continue; // drpc ignores packets of other streams
            }
            match packet.kind {
                Kind::Message => return Ok(packet.data),
                Kind::Error => {
                    let (code, message) = drpc::parse_error(&packet.data);
                    return Err(CallError::Remote { code, message });
                }
                Kind::CloseSend | Kind::Close | Kind::Cancel => {
                    return Err(CallError::Protocol(format!(
                        "coderd ended the rpc ({:?}) without a response",
                        packet.kind
                    )))
                }
                Kind::Invoke | Kind::InvokeMetadata | Kind::Unknown(_) => {
                    return Err(CallError::Protocol(format!(
                        "unexpected {:?} packet from coderd",
                        packet.kind
                    )))
                }
            }
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(CallError::Transport(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the stream ended before coderd answered",
            )));
        }
        reader.push(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::io::Cursor;

    /// A stream that reads from `input` and records writes.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        written: Vec<u8>,
        closed: bool,
    }

    impl Duplex {
        fn new(input: Vec<u8>) -> Self {
            Self {
                input: Cursor::new(input),
                written: Vec::new(),
                closed: false,
            }
        }
    }

    impl AsyncRead for Duplex {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            std::pin::Pin::new(&mut self.input).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Duplex {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            self.written.extend_from_slice(buf);
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_close(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            self.closed = true;
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn the_writes_of_a_request_are_its_drpc_bytes_with_long_data_left_where_it_lies() {
        let max = drpc::MAX_FRAME_DATA;
        for len in [
            0,
            1,
            INLINE_DATA,
            INLINE_DATA + 1,
            max - 1,
            max,
            max + 1,
            max + INLINE_DATA + 1,
            2 * max + 7,
        ] {
            let request: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let writes = request_writes(REPORT_BOUNDARY_LOGS, &request);
            assert_eq!(
                writes.concat(),
                request_bytes(REPORT_BOUNDARY_LOGS, &request),
                "{len} bytes"
            );
            for write in &writes {
                if let Cow::Borrowed(data) = write {
                    assert!(
                        data.len() > INLINE_DATA,
                        "{len} bytes: short data is copied"
                    );
                    let at = data.as_ptr() as usize - request.as_ptr() as usize;
                    assert!(
                        at + data.len() <= request.len(),
                        "{len} bytes: borrowed from the request"
                    );
                }
            }
            let borrowed: usize = writes
                .iter()
                .filter_map(|w| matches!(w, Cow::Borrowed(_)).then_some(w.len()))
                .sum();
            let long: usize = request
                .chunks(max)
                .filter(|c| c.len() > INLINE_DATA)
                .map(<[u8]>::len)
                .sum();
            assert_eq!(
                borrowed, long,
                "{len} bytes: every long frame's data is borrowed"
            );
        }
    }

    fn answer(packets: &[(Kind, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = PacketWriter::new(DRPC_STREAM);
        for (kind, data) in packets {
            w.put(&mut out, *kind, data);
        }
        out
    }

    fn run(input: Vec<u8>) -> (Result<Bytes, CallError>, Duplex) {
        let mut stream = Duplex::new(input);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let result = rt.block_on(unary(&mut stream, REPORT_BOUNDARY_LOGS, b"req"));
        (result, stream)
    }

    #[test]
    fn a_message_answer_succeeds_and_the_client_sends_close_then_fin() {
        let (result, stream) = run(answer(&[(Kind::Message, b"resp"), (Kind::CloseSend, b"")]));
        assert_eq!(result.unwrap(), &b"resp"[..]);
        let mut expected = request_bytes(REPORT_BOUNDARY_LOGS, b"req");
        expected.extend([0x0b, 0x01, 0x04, 0x00]);
        assert_eq!(stream.written, expected);
        assert!(stream.closed);
    }

    #[test]
    fn a_message_without_close_send_is_still_a_success() {
        let (result, _) = run(answer(&[(Kind::Message, b"")]));
        assert_eq!(result.unwrap(), Bytes::new());
    }

    #[test]
    fn an_error_answer_is_a_remote_error_with_its_text_and_no_close() {
        let mut input = Vec::new();
        drpc::put_packet(
            &mut input,
            drpc::Id::new(1, 1),
            Kind::Error,
            false,
            &drpc::error_data(7, "batch size 1200 exceeds maximum 1000"),
        );
        let (result, stream) = run(input);
        match result {
            Err(CallError::Remote { code, message }) => {
                assert_eq!(
                    (code, message.as_str()),
                    (7, "batch size 1200 exceeds maximum 1000")
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(stream.written, request_bytes(REPORT_BOUNDARY_LOGS, b"req"));
        assert!(stream.closed);
    }

    #[test]
    fn an_early_end_of_stream_is_a_transport_error() {
        let (result, _) = run(Vec::new());
        assert!(
            matches!(result, Err(CallError::Transport(e)) if e.kind() == io::ErrorKind::UnexpectedEof)
        );
        // A packet cut in the middle is no answer either.
        let mut input = answer(&[(Kind::Message, b"resp")]);
        input.pop();
        assert!(matches!(run(input).0, Err(CallError::Transport(_))));
    }

    #[test]
    fn close_send_before_any_message_is_a_protocol_error() {
        let (result, _) = run(answer(&[(Kind::CloseSend, b"")]));
        assert!(matches!(result, Err(CallError::Protocol(_))), "{result:?}");
    }
}
