//! The shutdown drain both backends share: hand over the bytes already waiting on
//! a connection with non-blocking reads, and take the connections still queued on
//! the listener, all bounded by the shutdown deadline.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use super::policy::Admission;
use super::sys;
use super::{CloseCause, ConnectionHandler};

/// Size of each thread's scratch buffer for non-blocking reads.
pub(crate) const SCRATCH_LEN: usize = 64 * 1024;

/// Hands `handler` the bytes waiting on `fd` when called (FIONREAD), reading with
/// `MSG_DONTWAIT` until they are read, the socket is empty, or `deadline` passes.
/// Bytes the peer writes after the call started are not waited for. Returns why
/// the connection is to close: `PeerEof` when the peer had already closed its end.
pub(crate) fn drain_waiting<H: ConnectionHandler>(
    fd: BorrowedFd<'_>,
    handler: &H,
    state: &mut H::State,
    scratch: &mut [u8],
    deadline: Instant,
) -> CloseCause {
    let mut remaining = match sys::bytes_waiting(fd) {
        Ok(n) => n,
        Err(err) => return CloseCause::Error(err),
    };
    while remaining > 0 {
        if Instant::now() >= deadline {
            return CloseCause::Shutdown;
        }
        let want = remaining.min(scratch.len());
        match sys::recv(fd, &mut scratch[..want], libc::MSG_DONTWAIT) {
            Ok(0) => return CloseCause::PeerEof,
            Ok(n) => {
                remaining = remaining.saturating_sub(n);
                if handler.data(state, &scratch[..n]).is_break() {
                    return CloseCause::Handler;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) => return CloseCause::Error(err),
        }
    }
    // Peek, so a byte written after the snapshot stays unread: zero means EOF.
    let mut probe = [0u8; 1];
    match sys::recv(fd, &mut probe, libc::MSG_DONTWAIT | libc::MSG_PEEK) {
        Ok(0) => CloseCause::PeerEof,
        _ => CloseCause::Shutdown,
    }
}

/// Reads a just-accepted connection's waiting bytes (at most `max_reads` reads of
/// `scratch`) before any receive is armed for it: `Some(cause)` when it has already
/// ended. A peer that connected, wrote and left while queued on the listener is
/// handled and closed at once, so it does not hold a place under the limit while a
/// burst of accepts is processed.
pub(crate) fn read_at_accept<H: ConnectionHandler>(
    fd: BorrowedFd<'_>,
    handler: &H,
    state: &mut H::State,
    scratch: &mut [u8],
    max_reads: usize,
) -> Option<CloseCause> {
    let mut reads = 0;
    while reads < max_reads {
        match sys::recv(fd, scratch, libc::MSG_DONTWAIT) {
            Ok(0) => return Some(CloseCause::PeerEof),
            Ok(n) => {
                reads += 1;
                if handler.data(state, &scratch[..n]).is_break() {
                    return Some(CloseCause::Handler);
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return None,
            Err(err) => return Some(CloseCause::Error(err)),
        }
    }
    None
}

/// Accepts what is still queued on the (non-blocking) listener after it stopped
/// listening, and drains and closes each such connection as [`drain_waiting`] does.
pub(crate) fn drain_queued<H: ConnectionHandler>(
    listener: BorrowedFd<'_>,
    policy: &Admission,
    handler: &H,
    scratch: &mut [u8],
    deadline: Instant,
) {
    while Instant::now() < deadline {
        let conn = match sys::accept(listener, 0) {
            Ok(conn) => conn,
            Err(err) => match err.raw_os_error() {
                Some(libc::EINTR | libc::ECONNABORTED) => continue,
                // EAGAIN: queue empty; EINVAL: empty and shut down; others: give up.
                _ => return,
            },
        };
        if let Some((conn, mut state)) = policy.admit(handler, conn) {
            let cause = drain_waiting(conn.as_fd(), handler, &mut state, scratch, deadline);
            drop(conn);
            policy.release();
            handler.closed(state, cause);
        }
    }
}
