//! The accept policy on both backends: the connection limit and the peer-uid list.

mod reader_common;

use std::io::Write;
use std::path::Path;

use boundary_log_proxy::reader::{IoMode, RejectReason};
use reader_common::as_uid::{connect_as_uid, open_dir_to_everyone, skip_without_root, NOBODY};
use reader_common::{peer_closed, Closed, Harness, Recorder, PATIENCE};

on_both_backends!(
    connections_over_the_limit_are_closed_at_once_and_counted,
    peer_uid_not_listed_is_refused_and_counted_while_a_listed_one_passes,
    listed_non_root_uid_passes_and_root_is_refused,
);

fn connections_over_the_limit_are_closed_at_once_and_counted(io: IoMode) {
    let h = Harness::start_with(io, Recorder::new(), |cfg| cfg.max_connections = 3);
    let mut kept: Vec<_> = (0..3).map(|_| h.connect_opened().0).collect();
    let mut extra: Vec<_> = (0..2).map(|_| h.connect()).collect();
    h.rec.expect("two Limit rejections", |s| {
        s.rejected_for(RejectReason::Limit) == 2
    });
    for client in &mut extra {
        assert!(
            peer_closed(client, PATIENCE).unwrap(),
            "an extra connection stayed open"
        );
    }
    assert_eq!(h.rec.seen().opened(), 3);

    // A closed connection gives its place back.
    drop(kept.pop());
    h.rec.expect("the close", |s| s.closed() == 1);
    let (mut late, late_id) = h.connect_opened();
    late.write_all(b"in again").unwrap();
    h.rec
        .expect("the late bytes", |s| s.conns[&late_id].bytes == b"in again");
    let seen = h.rec.seen();
    assert_eq!(seen.rejected, vec![RejectReason::Limit; 2]);
    assert_eq!(seen.opened(), 4);
}

fn peer_uid_not_listed_is_refused_and_counted_while_a_listed_one_passes(io: IoMode) {
    if skip_without_root("peer_uid_not_listed_is_refused_and_counted_while_a_listed_one_passes") {
        return;
    }
    let h = Harness::start_with(io, Recorder::new(), |cfg| {
        cfg.allow_uids = vec![0];
        cfg.socket_mode = 0o666;
    });
    open_dir_to_everyone(h.dir.path());

    let status = send_as_uid(NOBODY, &h.path, b"from nobody");
    assert_eq!(
        status, 0,
        "the uid-{NOBODY} child failed (exit status {status})"
    );
    h.rec.expect("a PeerUid rejection", |s| {
        s.rejected_for(RejectReason::PeerUid) == 1
    });
    assert_eq!(h.rec.seen().opened(), 0);

    let (mut root, root_id) = h.connect_opened();
    root.write_all(b"from root").unwrap();
    h.rec
        .expect("root's bytes", |s| s.conns[&root_id].bytes == b"from root");
    let seen = h.rec.seen();
    assert_eq!(seen.conns[&root_id].info.peer_uid, Some(0));
    assert_eq!(
        seen.conns[&root_id].info.peer_pid,
        Some(std::process::id() as i32)
    );
    assert_eq!(seen.rejected, vec![RejectReason::PeerUid]);
}

fn listed_non_root_uid_passes_and_root_is_refused(io: IoMode) {
    if skip_without_root("listed_non_root_uid_passes_and_root_is_refused") {
        return;
    }
    let h = Harness::start_with(io, Recorder::new(), |cfg| {
        cfg.allow_uids = vec![NOBODY];
        cfg.socket_mode = 0o666;
    });
    open_dir_to_everyone(h.dir.path());

    let status = send_as_uid(NOBODY, &h.path, b"from nobody");
    assert_eq!(
        status, 0,
        "the uid-{NOBODY} child failed (exit status {status})"
    );
    h.rec
        .expect("nobody's connection to end", |s| s.closed() == 1);
    {
        let seen = h.rec.seen();
        let rec = seen.nth(0);
        assert_eq!(rec.info.peer_uid, Some(NOBODY));
        assert_eq!(rec.bytes, b"from nobody");
        assert_eq!(rec.closed, vec![Closed::PeerEof]);
    }

    let mut root = h.connect();
    h.rec.expect("a PeerUid rejection", |s| {
        s.rejected_for(RejectReason::PeerUid) == 1
    });
    assert!(peer_closed(&mut root, PATIENCE).unwrap());
    assert_eq!(h.rec.seen().opened(), 1);
}

/// Connects as `uid`, sends `payload`, ends its writing side and reads until the
/// reader closes: the child's exit status (0 = all steps done).
fn send_as_uid(uid: u32, path: &Path, payload: &[u8]) -> i32 {
    connect_as_uid(uid, path, |fd| {
        // SAFETY: raw syscalls on the child's connected `fd` and on `payload`,
        // prepared before the fork.
        unsafe {
            // A refused connection may already be closed: ignore send errors.
            libc::send(
                fd,
                payload.as_ptr().cast(),
                payload.len(),
                libc::MSG_NOSIGNAL,
            );
            libc::shutdown(fd, libc::SHUT_WR);
            let mut buf = [0u8; 64];
            while libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) > 0 {}
        }
        0
    })
}
