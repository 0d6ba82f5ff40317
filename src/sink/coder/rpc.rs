//! The DRPC server side of the coder sink, one yamux stream at a time, as storj drpc's
//! server answers a unary call: read Invoke and Message (the client's CloseSend and Close
//! need no answer), then answer Message (the empty `ReportBoundaryLogsResponse`) and
//! CloseSend, or a single Error packet; close the stream when the client has closed its
//! side. Unknown methods get drpc's "protocol error: unknown rpc" Error; requests over the
//! log limit get coderd's "batch size N exceeds maximum of M". Faults queued on the sink
//! apply here, one call each.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt as _};

use super::{Call, CallFault, CoderSink, Cut, Outcome, REPORT_BOUNDARY_LOGS};
use crate::reporter::coder::drpc::{self, error_data, Kind, PacketReader, PacketWriter};
use crate::sink::Received;

/// How long a call cut after its answer waits for the client to close the stream (that
/// is, to have read the answer) before cutting anyway.
const ANSWER_READ_GRACE: Duration = Duration::from_secs(1);

/// Bytes read from a stream at a time.
const READ_BYTES: usize = 16 << 10;

type Stream = Compat<yamux::Stream>;

/// What to do after a call.
enum Next {
    /// Keep reading the stream.
    Continue,
    /// Cut the connection once the client has closed the stream.
    CutAfterClose(Cut),
    /// The connection is being cut: stop.
    Stop,
}

/// Serves the calls the client makes on `stream` until it closes its side, then closes ours.
pub(super) async fn serve_stream(
    sink: CoderSink,
    connection: u64,
    stream: yamux::Stream,
    cut: mpsc::UnboundedSender<Cut>,
) {
    let mut stream = stream.compat();
    // Accept the stream at once, as hashicorp yamux does (the yamux crate would ACK it only
    // with the answer): an empty data frame carrying the ACK.
    if let Err(error) = stream.write(&[]).await {
        tracing::debug!(%error, connection, "coder sink: acknowledging a yamux stream");
        return;
    }
    // Requests come in frames of up to 64 KiB, read in up to READ_BYTES at a time.
    let mut reader = PacketReader::with_capacity(drpc::MAX_FRAME_DATA + READ_BYTES);
    let mut scratch = vec![0u8; READ_BYTES];
    // The DRPC stream invoked and its method, until the call is answered.
    let mut invoked: Option<(u64, String)> = None;
    loop {
        let packet = match reader.next_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => match read_more(&mut stream, &mut reader, &mut scratch).await {
                Ok(0) => break,
                Ok(_) => continue,
                Err(error) => {
                    tracing::debug!(%error, connection, "coder sink: reading a yamux stream");
                    return;
                }
            },
            Err(error) => {
                // drpc ends the transport on malformed input; so does the sink, for this stream.
                tracing::warn!(%error, connection, "coder sink: malformed DRPC input");
                return;
            }
        };
        match packet.kind {
            Kind::Invoke => {
                let rpc = String::from_utf8_lossy(&packet.data).into_owned();
                if rpc == REPORT_BOUNDARY_LOGS {
                    invoked = Some((packet.id.stream, rpc));
                } else {
                    invoked = None;
                    let text = format!("protocol error: unknown rpc: {rpc:?}");
                    tracing::info!(connection, %rpc, "coder sink: unknown rpc");
                    if answer_error(&mut stream, packet.id.stream, &text)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            Kind::Message => {
                let Some((drpc_stream, rpc)) = invoked.take_if(|(id, _)| *id == packet.id.stream)
                else {
                    continue;
                };
                let call = CallContext {
                    sink: &sink,
                    connection,
                    drpc_stream,
                    rpc,
                };
                match call.answer(&mut stream, packet.data, &cut).await {
                    Next::Continue => {}
                    Next::Stop => return,
                    Next::CutAfterClose(how) => {
                        let _ = tokio::time::timeout(ANSWER_READ_GRACE, async {
                            let mut rest = [0u8; 256];
                            while stream.read(&mut rest).await.is_ok_and(|n| n > 0) {}
                        })
                        .await;
                        let _ = cut.send(how);
                        return;
                    }
                }
            }
            // The client's CloseSend, Close, Cancel, metadata and errors need no answer.
            _ => {}
        }
    }
    let _ = stream.shutdown().await;
}

/// Reads what the client sent next into `reader` through `scratch`; 0 at the end of the
/// stream. Not `read_buf` into the reader's buffer: through the futures-to-tokio
/// compatibility layer that zeroes the reserved spare capacity (16 KiB) on every read.
async fn read_more(
    stream: &mut Stream,
    reader: &mut PacketReader,
    scratch: &mut [u8],
) -> std::io::Result<usize> {
    let n = stream.read(scratch).await?;
    reader.push(&scratch[..n]);
    Ok(n)
}

/// One call being answered.
struct CallContext<'a> {
    sink: &'a CoderSink,
    connection: u64,
    drpc_stream: u64,
    rpc: String,
}

impl CallContext<'_> {
    async fn answer(
        self,
        stream: &mut Stream,
        data: Bytes,
        cut: &mpsc::UnboundedSender<Cut>,
    ) -> Next {
        let _in_flight = self.sink.call_in_flight();
        let config = self.sink.config();
        // A quiet sink validates and counts the request without building prost's structs.
        let decoded = self.sink.sink().decode(&data);
        let logs = decoded.as_ref().map_or(0, Received::logs);
        let fault = self.sink.next_call_fault();
        if !config.latency.is_zero() {
            tokio::time::sleep(config.latency).await;
        }
        let request = match decoded {
            Ok(request) => request,
            Err(error) => {
                let text = format!("unmarshal ReportBoundaryLogsRequest: {error}");
                return self.refuse(stream, data, 0, text).await;
            }
        };
        let mut next = Next::Continue;
        match fault {
            Some(CallFault::Error(text)) => return self.refuse(stream, data, logs, text).await,
            Some(CallFault::CutBeforeAnswer(how)) => {
                self.deliver(&request, data, logs, Outcome::Cut(how));
                tracing::info!(connection = self.connection, cut = ?how, "coder sink: cutting the connection before answering");
                let _ = cut.send(how);
                return Next::Stop;
            }
            Some(CallFault::CutAfterAnswer(how)) => next = Next::CutAfterClose(how),
            None => {}
        }
        if let Some(max) = config.max_logs.filter(|max| logs > *max) {
            let text = format!("batch size {logs} exceeds maximum of {max}");
            return self.refuse(stream, data, logs, text).await;
        }
        if let Err(error) = self.sink.sink().record_received(&request) {
            let text = format!("sink: writing log lines: {error}");
            return self.refuse(stream, data, logs, text).await;
        }
        self.record(data, logs, Outcome::Answered);
        let mut out = BytesMut::new();
        let mut writer = PacketWriter::new(self.drpc_stream);
        writer.put(&mut out, Kind::Message, &[]);
        writer.put(&mut out, Kind::CloseSend, &[]);
        if write(stream, &out).await.is_err() {
            return Next::Stop;
        }
        next
    }

    /// Counts and prints the request (coderd stored it), and records the call.
    fn deliver(&self, request: &Received, data: Bytes, logs: usize, outcome: Outcome) {
        if let Err(error) = self.sink.sink().record_received(request) {
            tracing::warn!(%error, "coder sink: cannot print the logs");
        }
        self.record(data, logs, outcome);
    }

    fn record(&self, request: Bytes, logs: usize, outcome: Outcome) {
        self.sink.record_call(Call {
            connection: self.connection,
            rpc: self.rpc.clone(),
            request,
            logs,
            outcome,
        });
    }

    async fn refuse(&self, stream: &mut Stream, data: Bytes, logs: usize, text: String) -> Next {
        tracing::info!(connection = self.connection, error = %text, "coder sink: answering a DRPC error");
        let sent = answer_error(stream, self.drpc_stream, &text).await;
        self.record(data, logs, Outcome::Error(text));
        match sent {
            Ok(()) => Next::Continue,
            Err(()) => Next::Stop,
        }
    }
}

/// Answers DRPC stream `drpc_stream` with one Error packet (code 0, as drpc sends an error
/// without a code).
async fn answer_error(stream: &mut Stream, drpc_stream: u64, text: &str) -> Result<(), ()> {
    let mut out = BytesMut::new();
    PacketWriter::new(drpc_stream).put(&mut out, Kind::Error, &error_data(0, text));
    write(stream, &out).await
}

async fn write(stream: &mut Stream, bytes: &[u8]) -> Result<(), ()> {
    let written = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    written.await.map_err(|error| {
        tracing::debug!(%error, "coder sink: writing an answer");
    })
}
