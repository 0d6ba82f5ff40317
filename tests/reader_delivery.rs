//! Bytes reach the handler intact and in order per connection, on both backends.

mod reader_common;

use std::io::Write;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use boundary_log_proxy::reader::IoMode;
use reader_common::{peer_closed, vector, Closed, Harness, Recorder, PATIENCE};

on_both_backends!(
    stream_sent_whole_arrives_intact,
    stream_sent_byte_by_byte_arrives_intact_one_byte_at_a_time,
    thousand_concurrent_connections_each_arrive_in_order,
    idle_and_half_sent_connections_do_not_hold_up_a_live_one,
    peer_eof_closes_with_peer_eof_after_all_bytes,
    handler_break_closes_only_that_connection,
    leftover_socket_is_replaced_and_serves,
    more_bytes_at_once_than_the_read_buffers_hold_arrive_in_order,
);

fn stream_sent_whole_arrives_intact(io: IoMode) {
    let payload = vector("stream_mixed.bin");
    let h = Harness::start(io);
    let (mut client, id) = h.connect_opened();
    client.write_all(&payload).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    h.rec.expect("PeerEof", |s| !s.conns[&id].closed.is_empty());
    let seen = h.rec.seen();
    let rec = &seen.conns[&id];
    assert_eq!(rec.bytes, payload);
    assert_eq!(rec.closed, vec![Closed::PeerEof]);
}

fn stream_sent_byte_by_byte_arrives_intact_one_byte_at_a_time(io: IoMode) {
    let payload = vector("stream_mixed.bin");
    let h = Harness::start(io);
    let (mut client, id) = h.connect_opened();
    for (i, byte) in payload.iter().enumerate() {
        client.write_all(std::slice::from_ref(byte)).unwrap();
        h.rec
            .expect("the byte to arrive", |s| s.conns[&id].bytes.len() == i + 1);
    }
    drop(client);
    h.rec.expect("PeerEof", |s| !s.conns[&id].closed.is_empty());
    let seen = h.rec.seen();
    let rec = &seen.conns[&id];
    assert_eq!(rec.bytes, payload);
    // Each byte was sent only after the previous one arrived: one call per byte.
    assert_eq!(rec.chunks, payload.len());
    assert_eq!(rec.closed, vec![Closed::PeerEof]);
}

/// What client `index` sends: its index, then a pattern only it produces.
fn client_payload(index: u32) -> Vec<u8> {
    let mut out = index.to_be_bytes().to_vec();
    let mut x = index.wrapping_mul(2_654_435_761).wrapping_add(1);
    for _ in 0..1500 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.push(x as u8);
    }
    out
}

fn thousand_concurrent_connections_each_arrive_in_order(io: IoMode) {
    const CLIENTS: u32 = 1000;
    let h = Harness::start(io);
    let mut clients: Vec<_> = (0..CLIENTS).map(|_| h.connect()).collect();
    let payloads: Vec<_> = (0..CLIENTS).map(client_payload).collect();
    // Every client writes its payload in three pieces, interleaved with the others.
    for piece in 0..3 {
        for (client, payload) in clients.iter_mut().zip(&payloads) {
            let third = payload.len().div_ceil(3);
            let start = (piece * third).min(payload.len());
            let end = ((piece + 1) * third).min(payload.len());
            client.write_all(&payload[start..end]).unwrap();
        }
    }
    drop(clients);
    h.rec.expect("every connection to end", |s| {
        s.closed() == CLIENTS as usize
    });
    let seen = h.rec.seen();
    assert_eq!(seen.opened(), CLIENTS as usize);
    let mut indices = Vec::new();
    for rec in seen.conns.values() {
        assert_eq!(rec.closed, vec![Closed::PeerEof]);
        let index = u32::from_be_bytes(rec.bytes[..4].try_into().unwrap());
        assert!(
            rec.bytes == payloads[index as usize],
            "client {index}'s bytes differ"
        );
        indices.push(index);
    }
    indices.sort_unstable();
    assert_eq!(indices, (0..CLIENTS).collect::<Vec<_>>());
}

fn idle_and_half_sent_connections_do_not_hold_up_a_live_one(io: IoMode) {
    let h = Harness::start(io);
    let idle: Vec<_> = (0..300).map(|_| h.connect()).collect();
    h.rec.expect("the idle ones to open", |s| s.opened() == 300);
    let (mut stuck, stuck_id) = h.connect_opened();
    stuck.write_all(&[0x01, 0x00]).unwrap(); // half a frame header
    let (mut live, live_id) = h.connect_opened();
    h.rec.expect("all 302 to open", |s| s.opened() == 302);
    for round in 1..=5u8 {
        let sent = Instant::now();
        live.write_all(&[round; 100]).unwrap();
        let arrived = h.rec.wait_for(Duration::from_secs(1), |s| {
            s.conns[&live_id].bytes.len() == usize::from(round) * 100
        });
        assert!(
            arrived,
            "round {round}: the live connection's bytes did not arrive within 1s ({:?})",
            sent.elapsed()
        );
    }
    let seen = h.rec.seen();
    assert_eq!(seen.conns[&stuck_id].bytes, [0x01, 0x00]);
    assert!(seen.conns.values().all(|c| c.closed.is_empty()));
    let idle_bytes: usize = seen
        .conns
        .iter()
        .filter(|(id, _)| **id != stuck_id && **id != live_id)
        .map(|(_, c)| c.bytes.len())
        .sum();
    assert_eq!(idle_bytes, 0);
    drop(idle);
}

fn peer_eof_closes_with_peer_eof_after_all_bytes(io: IoMode) {
    let h = Harness::start(io);
    let (mut client, id) = h.connect_opened();
    client.write_all(b"last words").unwrap();
    drop(client);
    h.rec.expect("PeerEof", |s| !s.conns[&id].closed.is_empty());
    let seen = h.rec.seen();
    assert_eq!(seen.conns[&id].bytes, b"last words");
    assert_eq!(seen.conns[&id].closed, vec![Closed::PeerEof]);
}

fn handler_break_closes_only_that_connection(io: IoMode) {
    let h = Harness::start_with(io, Recorder::breaking_on(b"STOP"), |_| {});
    let (mut doomed, doomed_id) = h.connect_opened();
    let (mut other, other_id) = h.connect_opened();

    doomed.write_all(b"hello").unwrap();
    h.rec
        .expect("hello", |s| s.conns[&doomed_id].bytes.len() == 5);
    doomed.write_all(b"STOP").unwrap();
    h.rec.expect("the Break to close it", |s| {
        !s.conns[&doomed_id].closed.is_empty()
    });
    assert!(
        peer_closed(&mut doomed, PATIENCE).unwrap(),
        "the client did not see the close"
    );
    let _ = doomed.write_all(b"after the break"); // may fail: the socket is closed

    other.write_all(b"still here").unwrap();
    h.rec.expect("the other connection's bytes", |s| {
        s.conns[&other_id].bytes == b"still here"
    });
    std::thread::sleep(Duration::from_millis(50));
    let seen = h.rec.seen();
    let doomed_rec = &seen.conns[&doomed_id];
    assert_eq!(doomed_rec.bytes, b"helloSTOP");
    assert_eq!(doomed_rec.closed, vec![Closed::Handler]);
    assert!(!doomed_rec.data_after_close);
    assert!(seen.conns[&other_id].closed.is_empty());
}

fn leftover_socket_is_replaced_and_serves(io: IoMode) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leftover.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap()); // leaves the file
    assert!(std::os::unix::net::UnixStream::connect(&path).is_err());

    let mut cfg = boundary_log_proxy::reader::ReaderConfig::new(&path);
    cfg.io = io;
    let listener = boundary_log_proxy::reader::bind(&path, cfg.socket_mode).unwrap();
    let rec = Recorder::new();
    let reader = boundary_log_proxy::reader::start(&cfg, listener, rec.clone()).unwrap();
    let mut client = std::os::unix::net::UnixStream::connect(&path).unwrap();
    client.write_all(b"through the new socket").unwrap();
    drop(client);
    rec.expect("the bytes and EOF", |s| s.closed() == 1);
    assert_eq!(rec.seen().nth(0).bytes, b"through the new socket");
    reader
        .shutdown(Instant::now() + Duration::from_secs(1))
        .unwrap();
}

/// 64 connections fill their socket buffers while the reader is held up, so far more
/// bytes are waiting at once than the io_uring buffer ring (2 MiB) can take: its
/// receives run dry (ENOBUFS) and must be re-armed without losing or reordering bytes.
fn more_bytes_at_once_than_the_read_buffers_hold_arrive_in_order(io: IoMode) {
    const CLIENTS: u32 = 64;
    const EACH: usize = 256 * 1024;
    let h = Harness::start(io);
    let (mut holder, _) = h.connect_opened();
    h.rec.gate().arm();
    holder.write_all(b"h").unwrap();
    h.rec.gate().wait_parked();

    let writers: Vec<_> = (0..CLIENTS)
        .map(|index| {
            let mut client = h.connect();
            std::thread::spawn(move || {
                let mut payload = index.to_be_bytes().to_vec();
                payload.extend((0..EACH).map(|i| (i as u32).wrapping_mul(index + 7) as u8));
                client.write_all(&payload).unwrap();
                payload
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200)); // let them fill their socket buffers
    h.rec.gate().release();
    let payloads: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    drop(holder);
    h.rec.expect("every connection to end", |s| {
        s.closed() == CLIENTS as usize + 1
    });
    let seen = h.rec.seen();
    for rec in seen.conns.values().filter(|c| c.bytes.len() > 1) {
        let index = u32::from_be_bytes(rec.bytes[..4].try_into().unwrap());
        assert!(
            rec.bytes == payloads[index as usize],
            "client {index}'s bytes differ"
        );
        assert_eq!(rec.closed, vec![Closed::PeerEof]);
    }
    assert_eq!(
        seen.conns.values().filter(|c| c.bytes.len() > 1).count(),
        CLIENTS as usize
    );
}
