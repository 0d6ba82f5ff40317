//! The load generator (`boundary-log-proxy loadgen`): acts as boundary does, one
//! session per connection, writing realistic frames with large writes, optionally
//! rate limited, and reports frames/s, logs/s and bytes/s.
//!
//! Frames are assembled from pre-generated [`workload`](crate::workload) logs: each
//! connection keeps a table of encoded log bodies and writes them with its own
//! increasing sequence numbers (from 0), so assembling a frame is a few byte copies
//! and varints, not a protobuf encode. The bytes are exactly what prost writes for
//! the same request (see the tests), i.e. what boundary's Go runtime writes.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::encoding::{encode_varint, encoded_len_varint};
use prost::Message as _;

use crate::codec::{encode_header, Tag, HEADER_LEN, MAX_PAYLOAD_LEN};
use crate::config::{FrameTag, LoadgenArgs};
use crate::proto::agent::BoundaryLog;
use crate::workload::{Workload, EPOCH_SECONDS};

/// Distinct log bodies each connection cycles through.
const TEMPLATES: usize = 512;
/// Bytes assembled per write when not rate limited (many frames per `write_all`).
const WRITE_BYTES: usize = 256 * 1024;
/// Rate-limited writers write at least this often, so the load stays smooth.
const RATE_WRITES_PER_SECOND: f64 = 500.0;
/// How often progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Keys of the fields the generator writes (field number << 3 | wire type).
const LOG_RECORD_KEY: u8 = 0x0A; // ReportBoundaryLogsRequest.logs / BoundaryMessage.logs
const SESSION_ID_KEY: u8 = 0x12;
const PROCESS_NAME_KEY: u8 = 0x1A;
const ALLOWED_TRUE: [u8; 2] = [0x08, 0x01];
const TIME_KEY: u8 = 0x12;
const SECONDS_KEY: u8 = 0x08;
const NANOS_KEY: u8 = 0x10;
const SEQUENCE_KEY: u8 = 0x20;

/// Why a load run failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// A connection to the proxy's socket could not be opened.
    #[error("loadgen: cannot connect to {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Nothing listened on the socket within `--wait-for-socket`.
    #[error("loadgen: nothing accepted connections on {} within --wait-for-socket {}: {source}", path.display(), humantime::format_duration(*waited))]
    NotListening {
        path: PathBuf,
        waited: Duration,
        #[source]
        source: io::Error,
    },
    /// Writing to a connection failed (the proxy closed it, or went away).
    #[error("loadgen: connection {conn} failed after {frames} frames: {source}")]
    Write {
        conn: u32,
        frames: u64,
        #[source]
        source: io::Error,
    },
    /// `--logs-per-frame` makes frames over the 32768-byte payload limit.
    #[error("loadgen: {logs_per_frame} logs per frame make a {bytes}-byte payload, over the {MAX_PAYLOAD_LEN}-byte frame limit")]
    FrameTooLarge { logs_per_frame: u32, bytes: usize },
    /// A writer thread could not be started.
    #[error("loadgen: cannot start a writer thread: {0}")]
    Spawn(#[source] io::Error),
    /// A writer thread panicked.
    #[error("loadgen: a writer thread panicked")]
    Panicked,
}

/// What each log's `time` field carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Timestamps {
    /// Synthetic: [`EPOCH_SECONDS`] plus the sequence number, workload nanoseconds.
    #[default]
    Workload,
    /// The wall-clock time at which the write carrying the log is assembled, so a
    /// receiver can measure how long the log took to reach it.
    SendTime,
}

/// How [`run_with`] runs, beyond the command line's arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// What the logs' `time` field carries.
    pub timestamps: Timestamps,
    /// Print a progress line on stderr every second.
    pub progress: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            timestamps: Timestamps::Workload,
            progress: true,
        }
    }
}

/// What a run sent, and how fast.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub connections: u32,
    pub frames: u64,
    pub logs: u64,
    pub bytes: u64,
    /// From the first connect to the last byte written.
    pub elapsed: Duration,
}

impl Summary {
    pub fn frames_per_second(&self) -> f64 {
        per_second(self.frames, self.elapsed)
    }
    pub fn logs_per_second(&self) -> f64 {
        per_second(self.logs, self.elapsed)
    }
    pub fn bytes_per_second(&self) -> f64 {
        per_second(self.bytes, self.elapsed)
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "loadgen: sent {} frames, {} logs, {} bytes on {} connection{} in {:.3} s: {:.0} frames/s, {:.0} logs/s, {:.1} MB/s",
            self.frames,
            self.logs,
            self.bytes,
            self.connections,
            if self.connections == 1 { "" } else { "s" },
            self.elapsed.as_secs_f64(),
            self.frames_per_second(),
            self.logs_per_second(),
            self.bytes_per_second() / 1e6,
        )
    }
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

/// `Tag` of the codec for the command line's `--tag`.
pub fn tag(tag: FrameTag) -> Tag {
    match tag {
        FrameTag::V1 => Tag::V1,
        FrameTag::V2 => Tag::V2,
    }
}

/// One log without its time and sequence number, encoded.
#[derive(Debug, Clone)]
struct LogTemplate {
    allowed: bool,
    nanos: i32,
    /// Field 3 (`http_request`): key, length and body.
    resource: Vec<u8>,
}

/// One boundary session's frames: a session id, a process name, a table of log
/// bodies, and the next sequence number. Successive calls continue the numbering.
#[derive(Debug, Clone)]
pub struct SessionStream {
    session_id: String,
    process: &'static str,
    templates: Vec<LogTemplate>,
    tag: Tag,
    logs_per_frame: u32,
    next_seq: i32,
    next_template: usize,
}

impl SessionStream {
    /// The stream of connection number `index` (its own session, deterministic per
    /// index), `logs_per_frame` logs a frame. Fails when such frames could exceed
    /// the frame limit.
    pub fn new(index: u32, logs_per_frame: u32, tag: Tag) -> Result<Self, LoadgenError> {
        let mut workload = Workload::new(0x5EED_0000 ^ u64::from(index));
        let session_id = workload.session_id();
        let process = workload.process_name();
        let templates = (0..TEMPLATES)
            .map(|i| {
                let log = workload.log(i as i32);
                let resource = BoundaryLog {
                    resource: log.resource,
                    ..BoundaryLog::default()
                }
                .encode_to_vec();
                LogTemplate {
                    allowed: log.allowed,
                    nanos: log.time.map_or(0, |t| t.nanos),
                    resource,
                }
            })
            .collect();
        let stream = Self {
            session_id,
            process,
            templates,
            tag,
            logs_per_frame,
            next_seq: 0,
            next_template: 0,
        };
        let worst = stream.worst_payload_len();
        if worst > MAX_PAYLOAD_LEN {
            return Err(LoadgenError::FrameTooLarge {
                logs_per_frame,
                bytes: worst,
            });
        }
        Ok(stream)
    }

    /// The session id every frame carries.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The process name every frame carries.
    pub fn process_name(&self) -> &str {
        self.process
    }

    /// Logs in each frame.
    pub fn logs_per_frame(&self) -> u32 {
        self.logs_per_frame
    }

    /// Sequence number of the next log to be written.
    pub fn next_sequence_number(&self) -> i32 {
        self.next_seq
    }

    /// Appends `frames` frames to `out`, continuing the sequence numbers.
    pub fn append_frames(&mut self, frames: u64, timestamps: Timestamps, out: &mut Vec<u8>) {
        let now = match timestamps {
            Timestamps::Workload => None,
            Timestamps::SendTime => {
                let t = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                Some((t.as_secs() as i64, t.subsec_nanos() as i32))
            }
        };
        for _ in 0..frames {
            self.append_frame(now, out);
        }
    }

    fn append_frame(&mut self, now: Option<(i64, i32)>, out: &mut Vec<u8>) {
        let logs = self.logs_per_frame as usize;
        let templates = self.templates.len();
        let mut request_len = self.strings_len();
        for i in 0..logs {
            let t = &self.templates[(self.next_template + i) % templates];
            let body = body_len(t, self.time(t, now, i), self.seq(i));
            request_len += 1 + encoded_len_varint(body as u64) + body;
        }
        let payload_len = match self.tag {
            Tag::V1 => request_len,
            Tag::V2 => 1 + encoded_len_varint(request_len as u64) + request_len,
        };
        let header = encode_header(self.tag, payload_len)
            .expect("frame sizes are checked when the stream is built");
        out.reserve(HEADER_LEN + payload_len);
        out.extend_from_slice(&header);
        if self.tag == Tag::V2 {
            out.push(LOG_RECORD_KEY);
            encode_varint(request_len as u64, out);
        }
        for i in 0..logs {
            let t = &self.templates[(self.next_template + i) % templates];
            let (time, seq) = (self.time(t, now, i), self.seq(i));
            out.push(LOG_RECORD_KEY);
            encode_varint(body_len(t, time, seq) as u64, out);
            if t.allowed {
                out.extend_from_slice(&ALLOWED_TRUE);
            }
            out.push(TIME_KEY);
            encode_varint(timestamp_len(time) as u64, out);
            if time.0 != 0 {
                out.push(SECONDS_KEY);
                encode_varint(time.0 as u64, out);
            }
            if time.1 != 0 {
                out.push(NANOS_KEY);
                encode_varint(i64::from(time.1) as u64, out);
            }
            out.extend_from_slice(&t.resource);
            if seq != 0 {
                out.push(SEQUENCE_KEY);
                encode_varint(i64::from(seq) as u64, out);
            }
        }
        put_string(out, SESSION_ID_KEY, self.session_id.as_bytes());
        put_string(out, PROCESS_NAME_KEY, self.process.as_bytes());
        self.next_seq = self.next_seq.wrapping_add(logs as i32);
        self.next_template = (self.next_template + logs) % templates;
    }

    fn seq(&self, i: usize) -> i32 {
        self.next_seq.wrapping_add(i as i32)
    }

    fn time(&self, t: &LogTemplate, now: Option<(i64, i32)>, i: usize) -> (i64, i32) {
        now.unwrap_or((EPOCH_SECONDS + i64::from(self.seq(i)), t.nanos))
    }

    fn strings_len(&self) -> usize {
        string_field_len(self.session_id.len()) + string_field_len(self.process.len())
    }

    /// The largest payload a frame of this stream can have (the longest templates,
    /// the widest time and sequence numbers).
    fn worst_payload_len(&self) -> usize {
        let longest = self
            .templates
            .iter()
            .map(|t| body_len(t, (i64::MAX, i32::MAX), -1))
            .max()
            .unwrap_or(0);
        let record = 1 + encoded_len_varint(longest as u64) + longest;
        let request = record * self.logs_per_frame as usize + self.strings_len();
        match self.tag {
            Tag::V1 => request,
            Tag::V2 => 1 + encoded_len_varint(request as u64) + request,
        }
    }
}

fn timestamp_len((seconds, nanos): (i64, i32)) -> usize {
    let mut len = 0;
    if seconds != 0 {
        len += 1 + encoded_len_varint(seconds as u64);
    }
    if nanos != 0 {
        len += 1 + encoded_len_varint(i64::from(nanos) as u64);
    }
    len
}

fn body_len(t: &LogTemplate, time: (i64, i32), seq: i32) -> usize {
    let allowed = if t.allowed { ALLOWED_TRUE.len() } else { 0 };
    let ts = timestamp_len(time);
    let seq = if seq != 0 {
        1 + encoded_len_varint(i64::from(seq) as u64)
    } else {
        0
    };
    allowed + 1 + encoded_len_varint(ts as u64) + ts + t.resource.len() + seq
}

fn string_field_len(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        1 + encoded_len_varint(len as u64) + len
    }
}

fn put_string(out: &mut Vec<u8>, key: u8, text: &[u8]) {
    if !text.is_empty() {
        out.push(key);
        encode_varint(text.len() as u64, out);
        out.extend_from_slice(text);
    }
}

/// Counters shared by the writers and the progress printer.
#[derive(Debug, Default)]
struct Sent {
    frames: AtomicU64,
    logs: AtomicU64,
    bytes: AtomicU64,
}

/// Runs `args` with progress lines on stderr and synthetic timestamps.
pub fn run(args: &LoadgenArgs) -> Result<Summary, LoadgenError> {
    run_with(args, RunOptions::default())
}

/// Opens `args.connections` connections to `args.socket` and writes
/// `args.frames` frames on each (one writer thread per connection), at most
/// `args.rate` frames/s in total, then closes them. Returns once every byte is
/// written; the first failure ends the run.
pub fn run_with(args: &LoadgenArgs, options: RunOptions) -> Result<Summary, LoadgenError> {
    let streams = (0..args.connections)
        .map(|i| SessionStream::new(i, args.logs_per_frame, tag(args.tag)))
        .collect::<Result<Vec<_>, _>>()?;
    let sent = Arc::new(Sent::default());
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let per_connection_rate = args
        .rate
        .map(|rate| rate as f64 / f64::from(args.connections.max(1)));

    let progress = options.progress.then(|| {
        let (sent, done) = (sent.clone(), done.clone());
        std::thread::Builder::new()
            .name("loadgen-progress".into())
            .spawn(move || print_progress(&sent, &done, started))
    });

    let mut writers = Vec::with_capacity(streams.len());
    let mut failure = None;
    for (index, stream) in streams.into_iter().enumerate() {
        let connected = if index == 0 {
            connect_waiting(&args.socket, args.wait_for_socket, options.progress)
        } else {
            UnixStream::connect(&args.socket).map_err(|source| LoadgenError::Connect {
                path: args.socket.clone(),
                source,
            })
        };
        let conn = match connected {
            Ok(conn) => conn,
            Err(error) => {
                failure = Some(error);
                break;
            }
        };
        let job = Writer {
            conn,
            index: index as u32,
            stream,
            frames: args.frames,
            rate: per_connection_rate,
            timestamps: options.timestamps,
            sent: sent.clone(),
            started,
        };
        match std::thread::Builder::new()
            .name(format!("loadgen-{index}"))
            .spawn(move || job.run())
        {
            Ok(handle) => writers.push(handle),
            Err(error) => {
                failure = Some(LoadgenError::Spawn(error));
                break;
            }
        }
    }
    for handle in writers {
        let result = handle.join().unwrap_or(Err(LoadgenError::Panicked));
        if let (Err(error), None) = (result, &failure) {
            failure = Some(error);
        }
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Release);
    if let Some(Ok(thread)) = progress {
        thread.thread().unpark();
        let _ = thread.join();
    }
    if let Some(error) = failure {
        return Err(error);
    }
    Ok(Summary {
        connections: args.connections,
        frames: sent.frames.load(Ordering::Relaxed),
        logs: sent.logs.load(Ordering::Relaxed),
        bytes: sent.bytes.load(Ordering::Relaxed),
        elapsed,
    })
}

fn print_progress(sent: &Sent, done: &AtomicBool, started: Instant) {
    let mut last = (started, 0u64, 0u64);
    let mut next = started + PROGRESS_EVERY;
    loop {
        while !done.load(Ordering::Acquire) {
            let now = Instant::now();
            if now >= next {
                break;
            }
            std::thread::park_timeout(next - now);
        }
        if done.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        let frames = sent.frames.load(Ordering::Relaxed);
        let logs = sent.logs.load(Ordering::Relaxed);
        let secs = (now - last.0).as_secs_f64();
        eprintln!(
            "loadgen: {:.0} s: {frames} frames, {logs} logs sent; {:.0} frames/s, {:.0} logs/s",
            (now - started).as_secs_f64(),
            (frames - last.1) as f64 / secs,
            (logs - last.2) as f64 / secs,
        );
        last = (now, frames, logs);
        next += PROGRESS_EVERY;
    }
}

/// One connection's writer.
struct Writer {
    conn: UnixStream,
    index: u32,
    stream: SessionStream,
    frames: u64,
    rate: Option<f64>,
    timestamps: Timestamps,
    sent: Arc<Sent>,
    started: Instant,
}

impl Writer {
    fn run(mut self) -> Result<(), LoadgenError> {
        let frame_bytes = {
            let mut probe = Vec::new();
            self.stream
                .clone()
                .append_frames(1, self.timestamps, &mut probe);
            probe.len().max(1)
        };
        let chunk = match self.rate {
            Some(rate) => ((rate / RATE_WRITES_PER_SECOND) as u64).max(1),
            None => (WRITE_BYTES / frame_bytes).max(1) as u64,
        };
        let mut buf = Vec::with_capacity(chunk as usize * frame_bytes * 2);
        let mut written = 0u64;
        while written < self.frames {
            let n = chunk.min(self.frames - written);
            if let Some(rate) = self.rate {
                let due = self.started + Duration::from_secs_f64(written as f64 / rate);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            buf.clear();
            self.stream.append_frames(n, self.timestamps, &mut buf);
            self.conn
                .write_all(&buf)
                .map_err(|source| LoadgenError::Write {
                    conn: self.index,
                    frames: written,
                    source,
                })?;
            written += n;
            self.sent.frames.fetch_add(n, Ordering::Relaxed);
            self.sent
                .logs
                .fetch_add(n * u64::from(self.stream.logs_per_frame), Ordering::Relaxed);
            self.sent
                .bytes
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// How often a waiting connect tries again.
const WAIT_RETRY_EVERY: Duration = Duration::from_millis(25);

/// Connects to `path`, trying again for up to `wait` while the socket does not exist
/// yet (ENOENT) or nothing listens on it (ECONNREFUSED): the proxy may still be
/// starting. Says once on stderr (when `announce`) that it is waiting. Any other
/// error fails at once.
pub fn connect_waiting(
    path: &Path,
    wait: Duration,
    announce: bool,
) -> Result<UnixStream, LoadgenError> {
    let started = Instant::now();
    let mut announced = false;
    loop {
        let source = match UnixStream::connect(path) {
            Ok(conn) => {
                if announced {
                    eprintln!(
                        "loadgen: {} accepts connections after {:.1} s",
                        path.display(),
                        started.elapsed().as_secs_f64()
                    );
                }
                return Ok(conn);
            }
            Err(error) => error,
        };
        let not_yet = matches!(
            source.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
        );
        if !not_yet {
            return Err(LoadgenError::Connect {
                path: path.to_owned(),
                source,
            });
        }
        if started.elapsed() >= wait {
            return Err(LoadgenError::NotListening {
                path: path.to_owned(),
                waited: wait,
                source,
            });
        }
        if announce && !announced {
            eprintln!(
                "loadgen: waiting up to {} for {} to accept connections ({source})",
                humantime::format_duration(wait),
                path.display()
            );
            announced = true;
        }
        std::thread::sleep(WAIT_RETRY_EVERY.min(wait.saturating_sub(started.elapsed())));
    }
}

/// Connects to `path`, for callers that hold their own streams.
pub fn connect(path: &Path) -> Result<UnixStream, LoadgenError> {
    UnixStream::connect(path).map_err(|source| LoadgenError::Connect {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_message, FrameDecoder, Message};
    use crate::proto::agent::ReportBoundaryLogsRequest;
    use crate::proto::envelope::{boundary_message::Msg, BoundaryMessage};

    #[test]
    fn the_summary_counts_connections_in_the_singular_and_the_plural() {
        let summary = |connections| Summary {
            connections,
            frames: 10,
            logs: 100,
            bytes: 1000,
            elapsed: Duration::from_secs(1),
        };
        assert!(summary(1).to_string().contains(" on 1 connection in "));
        assert!(summary(8).to_string().contains(" on 8 connections in "));
    }

    fn decode_all(bytes: &[u8], tag: Tag) -> Vec<ReportBoundaryLogsRequest> {
        let mut decoder = FrameDecoder::new();
        let mut input = bytes;
        let mut out = Vec::new();
        while let Some(frame) = decoder.decode(&mut input).unwrap() {
            assert_eq!(frame.tag, tag);
            let request = match tag {
                Tag::V1 => ReportBoundaryLogsRequest::decode(frame.payload.clone()).unwrap(),
                Tag::V2 => match BoundaryMessage::decode(frame.payload.clone()).unwrap().msg {
                    Some(Msg::Logs(request)) => request,
                    other => panic!("unexpected envelope {other:?}"),
                },
            };
            // Byte for byte what prost writes for the same message.
            let again = match tag {
                Tag::V1 => request.encode_to_vec(),
                Tag::V2 => BoundaryMessage {
                    msg: Some(Msg::Logs(request.clone())),
                }
                .encode_to_vec(),
            };
            assert_eq!(frame.payload[..], again[..]);
            assert!(matches!(decode_message(frame), Ok(Message::Logs(_))));
            out.push(request);
        }
        assert_eq!(decoder.finish(), Ok(()));
        out
    }

    #[test]
    fn frames_are_canonical_protobuf_numbered_from_zero_across_calls() {
        for tag in [Tag::V1, Tag::V2] {
            let mut stream = SessionStream::new(3, 7, tag).unwrap();
            let mut bytes = Vec::new();
            stream.append_frames(2, Timestamps::Workload, &mut bytes);
            stream.append_frames(1, Timestamps::Workload, &mut bytes);
            let requests = decode_all(&bytes, tag);
            assert_eq!(requests.len(), 3);
            let seqs: Vec<i32> = requests
                .iter()
                .flat_map(|r| r.logs.iter().map(|l| l.sequence_number))
                .collect();
            assert_eq!(seqs, (0..21).collect::<Vec<_>>());
            for request in &requests {
                assert_eq!(request.session_id, stream.session_id());
                assert_eq!(request.confined_process_name, stream.process_name());
                for log in &request.logs {
                    let time = log.time.unwrap();
                    assert_eq!(time.seconds, EPOCH_SECONDS + i64::from(log.sequence_number));
                }
            }
            assert_eq!(stream.next_sequence_number(), 21);
        }
    }

    #[test]
    fn connections_get_distinct_sessions() {
        let a = SessionStream::new(0, 10, Tag::V2).unwrap();
        let b = SessionStream::new(1, 10, Tag::V2).unwrap();
        assert_ne!(a.session_id(), b.session_id());
    }

    #[test]
    fn send_time_stamps_every_log_with_the_current_time() {
        let mut stream = SessionStream::new(0, 5, Tag::V2).unwrap();
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let mut bytes = Vec::new();
        stream.append_frames(2, Timestamps::SendTime, &mut bytes);
        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        for request in decode_all(&bytes, Tag::V2) {
            for log in request.logs {
                let t = log.time.unwrap();
                let at = Duration::new(t.seconds as u64, t.nanos as u32);
                assert!(
                    before <= at && at <= after,
                    "{at:?} not in [{before:?}, {after:?}]"
                );
            }
        }
    }

    #[test]
    fn frames_over_the_limit_are_refused_up_front() {
        assert!(matches!(
            SessionStream::new(0, 400, Tag::V2),
            Err(LoadgenError::FrameTooLarge {
                logs_per_frame: 400,
                ..
            })
        ));
        assert!(SessionStream::new(0, 100, Tag::V2).is_ok());
    }
}
