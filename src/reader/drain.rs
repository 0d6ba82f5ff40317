//! The shutdown drain both backends share: hand over every byte a connection's peer
//! managed to send (its later writes fail), take the connections still queued on
//! the listener, all bounded by the shutdown deadline.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use super::policy::Admission;
use super::sys;
use super::{CloseCause, ConnectionHandler};

/// Size of each thread's scratch buffer for non-blocking reads.
pub(crate) const SCRATCH_LEN: usize = 64 * 1024;

/// Hands `handler` every byte the peer managed to send, then reports why the
/// connection is to close: `PeerEof` when the peer had already closed its end.
///
/// The receive side is shut down first (`SHUT_RD`): on a Unix stream socket the
/// peer's later writes then fail with EPIPE, so boundary knows they were not taken,
/// while what is already queued stays readable up to an end of stream. Reading a
/// snapshot and closing instead would throw away, unseen and uncounted, whatever
/// the peer wrote between the snapshot and the close (a blocked writer refills the
/// queue as soon as it is read). Bounded by `deadline`.
pub(crate) fn drain_waiting<H: ConnectionHandler>(
    fd: BorrowedFd<'_>,
    handler: &H,
    state: &mut H::State,
    scratch: &mut [u8],
    deadline: Instant,
) -> CloseCause {
    // Asked before our own shutdown, which marks the receive side ended too.
    let peer_gone = sys::peer_hung_up(fd);
    let ended = if peer_gone {
        CloseCause::PeerEof
    } else {
        CloseCause::Shutdown
    };
    if let Err(error) = sys::shutdown(fd, libc::SHUT_RD) {
        // Then only what is queued now is read: later writes may be lost unseen.
        tracing::warn!(%error, "shutdown(SHUT_RD) of a connection failed");
    }
    loop {
        if Instant::now() >= deadline {
            return CloseCause::Shutdown;
        }
        match sys::recv(fd, scratch, libc::MSG_DONTWAIT) {
            Ok(0) => return ended,
            Ok(n) => {
                if handler.data(state, &scratch[..n]).is_break() {
                    return CloseCause::Handler;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            // Only when the shutdown failed: the queue is empty for now.
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return ended,
            Err(err) => return CloseCause::Error(err),
        }
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
