//! Shutdown on both backends: waiting bytes are handed over before the close, new
//! connects are refused, and no thread is left behind. Also the backend choice.
//!
//! Tests here count this process's threads by name, so they run one at a time.

mod reader_common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use boundary_log_proxy::reader::{
    self, Backend, IoMode, Reader, ReaderConfig, ReaderError, FORCE_URING_ERRNO_ENV,
};
use reader_common::{peer_closed, thread_names, Closed, Harness, Recorder, PATIENCE};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

on_both_backends!(
    shutdown_hands_over_bytes_already_waiting_then_closes,
    shutdown_reports_peer_eof_for_a_peer_that_had_already_closed,
    connects_are_refused_once_shutdown_starts,
    deadline_already_passed_closes_every_connection_exactly_once,
    reader_threads_are_gone_after_shutdown,
    dropping_the_reader_stops_it_and_closes_its_connections,
);

/// Shuts `reader` down on another thread; returns its join handle.
fn shutdown_in_background(
    reader: Reader,
    within: Duration,
) -> std::thread::JoinHandle<Result<(), ReaderError>> {
    std::thread::spawn(move || reader.shutdown(Instant::now() + within))
}

/// Bulk connections of the drain test, and what each sends: together more than
/// the io_uring reader's buffer ring holds (2 MiB), so some receives run dry and
/// their bytes are still in the socket when shutdown reads them.
const BULK: usize = 48;
const BULK_EACH: usize = 120_000;

fn bulk_payload(index: usize) -> Vec<u8> {
    (0..BULK_EACH)
        .map(|i| (i * (index + 3) / 7) as u8)
        .collect()
}

/// The gate holds the reader thread inside `data` of a first connection while the
/// others' bytes pile up unread; then shutdown must still hand them all over.
fn shutdown_hands_over_bytes_already_waiting_then_closes(io: IoMode) {
    let _serial = serial();
    let mut h = Harness::start(io);
    let (mut a, a_id) = h.connect_opened();
    let (mut b, b_id) = h.connect_opened();
    let mut bulk: Vec<_> = (0..BULK).map(|_| h.connect_opened()).collect();
    h.rec.gate().arm();
    a.write_all(b"a1").unwrap();
    h.rec.gate().wait_parked();
    a.write_all(b"-a2 waiting").unwrap();
    b.write_all(b"b waiting").unwrap();
    // Connected while the reader is busy: not accepted yet when shutdown starts.
    let mut queued = h.connect();
    queued.write_all(b"queued waiting").unwrap();

    let stopping = shutdown_in_background(h.reader.take().unwrap(), PATIENCE);
    std::thread::sleep(Duration::from_millis(100));
    // Written after the stop signal but before the busy reader thread sees it, so
    // io_uring learns of the stop before these bytes and must read them in the drain.
    for (index, (client, _)) in bulk.iter_mut().enumerate() {
        client.set_write_timeout(Some(PATIENCE)).unwrap();
        client.write_all(&bulk_payload(index)).unwrap();
    }
    h.rec.gate().release();
    stopping.join().unwrap().unwrap();

    let seen = h.rec.seen();
    assert_eq!(seen.conns[&a_id].bytes, b"a1-a2 waiting");
    assert_eq!(seen.conns[&b_id].bytes, b"b waiting");
    for (index, (_, id)) in bulk.iter().enumerate() {
        assert!(
            seen.conns[id].bytes == bulk_payload(index),
            "bulk {index} differs"
        );
        assert_eq!(seen.conns[id].closed, vec![Closed::Shutdown]);
    }
    let queued_rec = seen
        .conns
        .values()
        .find(|r| r.bytes.starts_with(b"queued"))
        .expect("the queued connection was not drained");
    assert_eq!(queued_rec.bytes, b"queued waiting");
    assert_eq!(queued_rec.closed, vec![Closed::Shutdown]);
    assert_eq!(seen.opened(), BULK + 3);
    for id in [a_id, b_id] {
        assert_eq!(seen.conns[&id].closed, vec![Closed::Shutdown], "conn {id}");
    }
    drop(seen);
    let bulk_clients = bulk.iter_mut().map(|(client, _)| client);
    for client in [&mut a, &mut b, &mut queued]
        .into_iter()
        .chain(bulk_clients)
    {
        assert!(peer_closed(client, PATIENCE).unwrap());
    }
}

fn shutdown_reports_peer_eof_for_a_peer_that_had_already_closed(io: IoMode) {
    let _serial = serial();
    let mut h = Harness::start(io);
    let (mut a, _) = h.connect_opened();
    let (mut b, b_id) = h.connect_opened();
    h.rec.gate().arm();
    a.write_all(b"x").unwrap();
    h.rec.gate().wait_parked();
    b.write_all(b"goodbye").unwrap();
    drop(b);

    let stopping = shutdown_in_background(h.reader.take().unwrap(), PATIENCE);
    std::thread::sleep(Duration::from_millis(100));
    h.rec.gate().release();
    stopping.join().unwrap().unwrap();
    let seen = h.rec.seen();
    assert_eq!(seen.conns[&b_id].bytes, b"goodbye");
    assert_eq!(seen.conns[&b_id].closed, vec![Closed::PeerEof]);
}

fn connects_are_refused_once_shutdown_starts(io: IoMode) {
    let _serial = serial();
    let mut h = Harness::start(io);
    let (mut a, _) = h.connect_opened();
    h.rec.gate().arm();
    a.write_all(b"x").unwrap();
    h.rec.gate().wait_parked();

    let stopping = shutdown_in_background(h.reader.take().unwrap(), PATIENCE);
    std::thread::sleep(Duration::from_millis(100));
    // The reader is still busy (held in `data`), yet no longer accepts.
    let refused = UnixStream::connect(&h.path).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    h.rec.gate().release();
    stopping.join().unwrap().unwrap();
    let err = UnixStream::connect(&h.path).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert_eq!(h.rec.seen().opened(), 1);
}

fn deadline_already_passed_closes_every_connection_exactly_once(io: IoMode) {
    let _serial = serial();
    let mut h = Harness::start(io);
    let mut clients: Vec<_> = (0..20).map(|_| h.connect_opened().0).collect();
    h.rec.gate().arm();
    clients[0].write_all(b"x").unwrap();
    h.rec.gate().wait_parked();
    for client in &mut clients[1..] {
        client.write_all(b"late").unwrap();
    }
    let stopping = shutdown_in_background(h.reader.take().unwrap(), Duration::ZERO);
    std::thread::sleep(Duration::from_millis(100));
    h.rec.gate().release();
    stopping.join().unwrap().unwrap();
    let seen = h.rec.seen();
    assert_eq!(seen.opened(), 20);
    for rec in seen.conns.values() {
        assert_eq!(rec.closed.len(), 1, "closed more or less than once");
        assert!(!rec.data_after_close);
    }
}

fn reader_thread_names(names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| n.starts_with("blp-") || n.starts_with("iou-"))
        .cloned()
        .collect()
}

/// Waits (briefly: an exited thread may linger in /proc for a moment after its
/// join) until no reader thread is left.
fn assert_reader_threads_gone() {
    let until = Instant::now() + PATIENCE;
    loop {
        let left = reader_thread_names(&thread_names());
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < until, "threads left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn reader_threads_are_gone_after_shutdown(io: IoMode) {
    let _serial = serial();
    assert_reader_threads_gone();
    let mut h = Harness::start_with(io, Recorder::new(), |cfg| cfg.threads = 3);
    let names = h.reader.as_ref().unwrap().thread_names();
    let prefix = match io {
        IoMode::Epoll => "blp-epoll",
        _ => "blp-uring",
    };
    assert_eq!(
        names,
        (0..3).map(|i| format!("{prefix}-{i}")).collect::<Vec<_>>()
    );
    let running = thread_names();
    for name in &names {
        assert!(running.contains(name), "{name} is not running: {running:?}");
    }
    let clients: Vec<_> = (0..30).map(|_| h.connect()).collect();
    h.rec.expect("30 open", |s| s.opened() == 30);
    h.shutdown(PATIENCE);
    assert_reader_threads_gone();
    assert_eq!(h.rec.seen().closed(), 30);
    drop(clients);
}

fn dropping_the_reader_stops_it_and_closes_its_connections(io: IoMode) {
    let _serial = serial();
    assert_reader_threads_gone();
    let mut h = Harness::start(io);
    let (mut client, id) = h.connect_opened();
    drop(h.reader.take());
    assert_reader_threads_gone();
    assert_eq!(h.rec.seen().conns[&id].closed, vec![Closed::Shutdown]);
    assert!(peer_closed(&mut client, PATIENCE).unwrap());
}

fn start_forced(
    io: IoMode,
    errno: Option<i32>,
) -> (Result<Reader, ReaderError>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ReaderConfig::new(dir.path().join("s.sock"));
    cfg.io = io;
    cfg.force_uring_errno = errno;
    let listener = reader::bind(&cfg.socket_path, cfg.socket_mode).unwrap();
    (reader::start(&cfg, listener, Recorder::new()), dir)
}

#[test]
fn auto_uses_io_uring_where_the_kernel_allows_it() {
    let _serial = serial();
    if let Some(why) = reader::uring_unavailable() {
        reader_common::as_uid::skip(
            "auto_uses_io_uring_where_the_kernel_allows_it",
            &format!("io_uring is not available here: {why}"),
        );
        return;
    }
    let (reader, _dir) = start_forced(IoMode::Auto, None);
    assert_eq!(reader.unwrap().backend(), Backend::Uring);
}

#[test]
fn forced_io_uring_failure_falls_back_to_epoll_under_auto() {
    let _serial = serial();
    let (reader, dir) = start_forced(IoMode::Auto, Some(libc::EPERM));
    let reader = reader.unwrap();
    assert_eq!(reader.backend(), Backend::Epoll);
    assert_eq!(reader.thread_names(), vec!["blp-epoll-0".to_owned()]);
    // And it serves.
    let mut client = UnixStream::connect(dir.path().join("s.sock")).unwrap();
    client.write_all(b"via epoll").unwrap();
    reader.shutdown(Instant::now() + PATIENCE).unwrap();
}

#[test]
fn forced_io_uring_failure_is_an_error_under_uring() {
    let _serial = serial();
    let (reader, _dir) = start_forced(IoMode::Uring, Some(libc::ENOSYS));
    let err = reader.unwrap_err();
    assert!(
        matches!(&err, ReaderError::UringUnavailable { source, .. } if source.raw_os_error() == Some(libc::ENOSYS)),
        "{err}"
    );
    assert!(err.to_string().contains("io_uring"), "{err}");
}

#[test]
fn forcing_through_the_environment_variable_falls_back_too() {
    let _serial = serial();
    // Only this test touches the variable, and tests here run one at a time.
    std::env::set_var(FORCE_URING_ERRNO_ENV, libc::EPERM.to_string());
    let (auto, _d1) = start_forced(IoMode::Auto, None);
    let (uring, _d2) = start_forced(IoMode::Uring, None);
    std::env::remove_var(FORCE_URING_ERRNO_ENV);
    assert_eq!(auto.unwrap().backend(), Backend::Epoll);
    assert!(matches!(uring, Err(ReaderError::UringUnavailable { .. })));
}

#[test]
fn epoll_mode_never_probes_io_uring() {
    let _serial = serial();
    let (reader, _dir) = start_forced(IoMode::Epoll, Some(libc::EPERM));
    assert_eq!(reader.unwrap().backend(), Backend::Epoll);
}
