//! Coder's design rebuilt in Rust, the reference the pipeline bench compares against:
//! a thread per connection reading each frame with plain blocking reads (header,
//! then payload), a full prost decode of every frame, a bounded channel of 100
//! requests that drops (and counts) when full, and one forwarding loop making one
//! gRPC call per received frame, dropping a frame at its first failed call.

use std::io::{self, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use boundary_log_proxy::codec::Tag;
use boundary_log_proxy::codec::{decode_header, HEADER_LEN};
use boundary_log_proxy::proto::agent::agent_client::AgentClient;
use boundary_log_proxy::proto::agent::ReportBoundaryLogsRequest;
use boundary_log_proxy::proto::envelope::{boundary_message::Msg, BoundaryMessage};
use prost::Message as _;
use tokio::sync::mpsc;

/// Coder's channel between the connections and the forwarding loop.
pub const CHANNEL_CAPACITY: usize = 100;

/// What the baseline counted.
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames refused because the channel was full.
    pub dropped_channel_full: AtomicU64,
    /// Logs in those frames.
    pub dropped_channel_full_logs: AtomicU64,
    /// Frames whose call failed.
    pub dropped_call_failed: AtomicU64,
    /// Logs in those frames.
    pub dropped_call_failed_logs: AtomicU64,
    /// Frames that did not decode.
    pub decode_errors: AtomicU64,
}

impl Counters {
    /// Logs dropped for any reason.
    pub fn dropped_logs(&self) -> u64 {
        self.dropped_channel_full_logs.load(Ordering::Relaxed)
            + self.dropped_call_failed_logs.load(Ordering::Relaxed)
    }
}

/// A running baseline proxy on a Unix socket, forwarding to `sink_url`.
pub struct Baseline {
    socket: PathBuf,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Baseline {
    /// Binds `socket` and starts accepting; calls go to `sink_url` (`http://HOST:PORT`).
    pub fn start(socket: &Path, sink_url: String) -> io::Result<Self> {
        let listener = UnixListener::bind(socket)?;
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<ReportBoundaryLogsRequest>(CHANNEL_CAPACITY);
        {
            let counters = counters.clone();
            std::thread::Builder::new()
                .name("baseline-forwarder".into())
                .spawn(move || forward(rx, sink_url, &counters))?;
        }
        let accept = {
            let (counters, stop) = (counters.clone(), stop.clone());
            std::thread::Builder::new()
                .name("baseline-accept".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::Acquire) {
                            return;
                        }
                        let Ok(conn) = conn else { continue };
                        let (tx, counters) = (tx.clone(), counters.clone());
                        let _ = std::thread::Builder::new()
                            .name("baseline-conn".into())
                            .spawn(move || read_connection(conn, &tx, &counters));
                    }
                })?
        };
        Ok(Self {
            socket: socket.to_owned(),
            counters,
            stop,
            accept: Some(accept),
        })
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the blocking accept so it sees the stop flag.
        let _ = UnixStream::connect(&self.socket);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// One connection: read a header, read the payload into a fresh buffer, decode it
/// fully, offer it to the channel, until the peer closes.
fn read_connection(
    mut conn: UnixStream,
    tx: &mpsc::Sender<ReportBoundaryLogsRequest>,
    counters: &Counters,
) {
    let mut header = [0u8; HEADER_LEN];
    loop {
        if conn.read_exact(&mut header).is_err() {
            return;
        }
        let Ok(header) = decode_header(header) else {
            return;
        };
        let mut payload = vec![0u8; header.len];
        if conn.read_exact(&mut payload).is_err() {
            return;
        }
        let request = match header.tag {
            Tag::V1 => ReportBoundaryLogsRequest::decode(&payload[..]).ok(),
            Tag::V2 => match BoundaryMessage::decode(&payload[..]) {
                Ok(BoundaryMessage {
                    msg: Some(Msg::Logs(request)),
                }) => Some(request),
                Ok(_) => continue,
                Err(_) => None,
            },
        };
        let Some(request) = request else {
            counters.decode_errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let logs = request.logs.len() as u64;
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(request) {
            counters
                .dropped_channel_full
                .fetch_add(1, Ordering::Relaxed);
            counters
                .dropped_channel_full_logs
                .fetch_add(logs, Ordering::Relaxed);
        }
    }
}

/// The forwarding loop: one call per received frame, in order, no retry.
fn forward(
    mut rx: mpsc::Receiver<ReportBoundaryLogsRequest>,
    sink_url: String,
    counters: &Counters,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("baseline forwarder runtime");
    runtime.block_on(async move {
        let mut client = loop {
            match AgentClient::connect(sink_url.clone()).await {
                Ok(client) => break client,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        };
        while let Some(request) = rx.recv().await {
            let logs = request.logs.len() as u64;
            if client.report_boundary_logs(request).await.is_err() {
                counters.dropped_call_failed.fetch_add(1, Ordering::Relaxed);
                counters
                    .dropped_call_failed_logs
                    .fetch_add(logs, Ordering::Relaxed);
            }
        }
    });
}
