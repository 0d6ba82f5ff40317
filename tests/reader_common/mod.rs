//! Shared helpers for the reader tests: a handler that records every call per
//! connection, and a harness that binds a socket in a temp dir and runs a reader.
#![allow(dead_code)] // each test binary uses a different part

#[path = "../support/as_uid.rs"]
pub mod as_uid;

use std::collections::BTreeMap;
use std::io;
use std::ops::ControlFlow;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use boundary_log_proxy::reader::{
    self, Backend, CloseCause, ConnInfo, ConnectionHandler, IoMode, Peer, Reader, ReaderConfig,
    RejectReason,
};

/// Generous bound for things that should happen at once (CI machines are slow).
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Generates `name::uring` and `name::epoll` tests calling `name(IoMode)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn uring() {
                if let Some(why) = boundary_log_proxy::reader::uring_unavailable() {
                    $crate::reader_common::as_uid::skip(
                        concat!(stringify!($name), "::uring"),
                        &format!("io_uring is not available here: {why}"),
                    );
                    return;
                }
                super::$name(boundary_log_proxy::reader::IoMode::Uring)
            }
            #[test]
            fn epoll() {
                super::$name(boundary_log_proxy::reader::IoMode::Epoll)
            }
        }
    )*};
}

/// How a connection ended, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    PeerEof,
    Error(String),
    Handler,
    Shutdown,
}

impl From<CloseCause> for Closed {
    fn from(cause: CloseCause) -> Self {
        match cause {
            CloseCause::PeerEof => Closed::PeerEof,
            CloseCause::Error(e) => Closed::Error(e.to_string()),
            CloseCause::Handler => Closed::Handler,
            CloseCause::Shutdown => Closed::Shutdown,
        }
    }
}

/// Everything the handler saw of one connection.
#[derive(Debug, Clone)]
pub struct ConnRecord {
    pub info: ConnInfo,
    pub bytes: Vec<u8>,
    pub chunks: usize,
    pub closed: Vec<Closed>,
    /// Set if `data` was called after `closed`.
    pub data_after_close: bool,
}

#[derive(Debug, Default)]
pub struct Seen {
    /// By connection id (ids grow in accept order).
    pub conns: BTreeMap<u64, ConnRecord>,
    pub rejected: Vec<RejectReason>,
}

impl Seen {
    pub fn opened(&self) -> usize {
        self.conns.len()
    }
    pub fn closed(&self) -> usize {
        self.conns.values().filter(|c| !c.closed.is_empty()).count()
    }
    pub fn nth(&self, n: usize) -> &ConnRecord {
        self.conns.values().nth(n).expect("no such connection")
    }
    pub fn rejected_for(&self, reason: RejectReason) -> usize {
        self.rejected.iter().filter(|r| **r == reason).count()
    }
}

/// Records every call; `data` returns `Break` once a connection's bytes contain
/// `break_marker`; the first `data` call waits while `hold` is closed.
#[derive(Default)]
pub struct Recorder {
    seen: Mutex<Seen>,
    changed: Condvar,
    break_marker: Option<Vec<u8>>,
    gate: Gate,
}

/// A latch the handler's `data` waits on, to keep a reader thread busy.
#[derive(Default)]
pub struct Gate {
    armed: Mutex<bool>,
    released: Condvar,
    /// Set once `data` is parked at the gate.
    parked: Mutex<bool>,
    parked_cv: Condvar,
}

impl Gate {
    pub fn arm(&self) {
        *self.armed.lock().unwrap() = true;
    }
    pub fn release(&self) {
        *self.armed.lock().unwrap() = false;
        self.released.notify_all();
    }
    fn pass(&self) {
        let mut armed = self.armed.lock().unwrap();
        if *armed {
            *self.parked.lock().unwrap() = true;
            self.parked_cv.notify_all();
        }
        while *armed {
            armed = self.released.wait(armed).unwrap();
        }
    }
    pub fn wait_parked(&self) {
        let parked = self.parked.lock().unwrap();
        let (parked, _) = self
            .parked_cv
            .wait_timeout_while(parked, PATIENCE, |p| !*p)
            .unwrap();
        assert!(*parked, "the handler never reached the gate");
    }
}

impl Recorder {
    pub fn new() -> Arc<Self> {
        Arc::new(Recorder::default())
    }

    pub fn breaking_on(marker: &[u8]) -> Arc<Self> {
        Arc::new(Recorder {
            break_marker: Some(marker.to_vec()),
            ..Recorder::default()
        })
    }

    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    pub fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap()
    }

    /// Waits until `cond` holds (up to `timeout`); returns whether it did.
    pub fn wait_for(&self, timeout: Duration, cond: impl Fn(&Seen) -> bool) -> bool {
        let seen = self.seen.lock().unwrap();
        let (seen, _) = self
            .changed
            .wait_timeout_while(seen, timeout, |s| !cond(s))
            .unwrap();
        cond(&seen)
    }

    /// Like `wait_for` with [`PATIENCE`], failing the test with `what` on timeout.
    pub fn expect(&self, what: &str, cond: impl Fn(&Seen) -> bool) {
        if !self.wait_for(PATIENCE, &cond) {
            panic!(
                "timed out waiting for {what}; seen: {:?}",
                summary(&self.seen())
            );
        }
    }

    fn update(&self, f: impl FnOnce(&mut Seen)) {
        f(&mut self.seen.lock().unwrap());
        self.changed.notify_all();
    }
}

fn summary(seen: &Seen) -> String {
    format!(
        "{} opened, {} closed, rejected {:?}, first: {:?}",
        seen.opened(),
        seen.closed(),
        seen.rejected,
        seen.conns
            .values()
            .next()
            .map(|c| (c.bytes.len(), &c.closed))
    )
}

impl ConnectionHandler for Recorder {
    type State = u64;

    fn open(&self, info: &ConnInfo) -> u64 {
        let record = ConnRecord {
            info: *info,
            bytes: Vec::new(),
            chunks: 0,
            closed: Vec::new(),
            data_after_close: false,
        };
        self.update(|s| {
            assert!(s.conns.insert(info.id, record).is_none(), "id reused");
        });
        info.id
    }

    fn data(&self, id: &mut u64, bytes: &[u8]) -> ControlFlow<()> {
        self.gate.pass();
        let mut flow = ControlFlow::Continue(());
        self.update(|s| {
            let rec = s.conns.get_mut(id).expect("data for an unknown connection");
            rec.data_after_close |= !rec.closed.is_empty();
            rec.bytes.extend_from_slice(bytes);
            rec.chunks += 1;
            if let Some(marker) = &self.break_marker {
                if rec.bytes.windows(marker.len()).any(|w| w == marker) {
                    flow = ControlFlow::Break(());
                }
            }
        });
        flow
    }

    fn closed(&self, id: u64, cause: CloseCause) {
        self.update(|s| {
            s.conns
                .get_mut(&id)
                .expect("closed for an unknown connection")
                .closed
                .push(cause.into());
        });
    }

    fn rejected(&self, reason: RejectReason, _peer: Peer) {
        self.update(|s| s.rejected.push(reason));
    }
}

/// A reader on a fresh socket in a temp dir, recording into `rec`.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub rec: Arc<Recorder>,
    pub reader: Option<Reader>,
}

impl Harness {
    pub fn start(io: IoMode) -> Harness {
        Harness::start_with(io, Recorder::new(), |_| {})
    }

    pub fn start_with(
        io: IoMode,
        rec: Arc<Recorder>,
        tweak: impl FnOnce(&mut ReaderConfig),
    ) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boundary-audit.sock");
        let mut cfg = ReaderConfig::new(&path);
        cfg.io = io;
        cfg.max_connections = 20_000;
        tweak(&mut cfg);
        let listener = reader::bind(&cfg.socket_path, cfg.socket_mode).unwrap();
        let reader = reader::start(&cfg, listener, rec.clone()).unwrap();
        assert_eq!(reader.backend(), expected_backend(io));
        Harness {
            dir,
            path,
            rec,
            reader: Some(reader),
        }
    }

    pub fn connect(&self) -> UnixStream {
        UnixStream::connect(&self.path).unwrap()
    }

    /// Connects and waits until the reader opened the connection; returns its id.
    pub fn connect_opened(&self) -> (UnixStream, u64) {
        let before = self.rec.seen().opened();
        let stream = self.connect();
        self.rec
            .expect("the connection to open", |s| s.opened() > before);
        let id = *self.rec.seen().conns.keys().last().unwrap();
        (stream, id)
    }

    pub fn shutdown(&mut self, within: Duration) {
        if let Some(reader) = self.reader.take() {
            reader.shutdown(Instant::now() + within).unwrap();
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = reader.shutdown(Instant::now() + Duration::from_secs(1));
        }
    }
}

pub fn expected_backend(io: IoMode) -> Backend {
    match io {
        IoMode::Epoll => Backend::Epoll,
        IoMode::Auto if boundary_log_proxy::reader::uring_unavailable().is_some() => Backend::Epoll,
        _ => Backend::Uring,
    }
}

/// The shared test vectors; missing vectors fail the test.
pub fn vector(name: &str) -> Vec<u8> {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors")).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("test vector {}: {e}", path.display()))
}

/// Reads until EOF or an error (a reset counts as closed); `Ok(true)` on close.
pub fn peer_closed(stream: &mut UnixStream, timeout: Duration) -> io::Result<bool> {
    use std::io::Read;
    stream.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(true),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(false)
            }
            Err(e) => return Err(e),
        }
    }
}

/// Names of this process's threads (from /proc/self/task/*/comm).
pub fn thread_names() -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        if let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) {
            names.push(comm.trim().to_owned());
        }
    }
    names
}
