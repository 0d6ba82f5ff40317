//! Non-blocking reads both backends share: reading what a connection has already
//! sent when it is accepted, the epoll reader's reads on readiness, and the
//! shutdown drain (every byte a connection's peer managed to send; the connections
//! still queued on the listener), all through one read loop.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use super::policy::Admission;
use super::sys;
use super::{CloseCause, ConnectionHandler};

/// Size of each thread's scratch buffer for non-blocking reads.
pub(crate) const SCRATCH_LEN: usize = 64 * 1024;

/// Reads of a just-accepted connection before a receive is armed for it.
const READS_AT_ACCEPT: usize = 4;

/// Reads of the shutdown drain between two looks at the deadline.
const READS_PER_DEADLINE_CHECK: usize = 4;

/// What [`read_waiting`] came to.
pub(crate) enum Read {
    /// A short read took everything queued (a stream socket's read stops short
    /// only when the queue is empty).
    TookAll,
    /// Nothing was queued (EAGAIN).
    Empty,
    /// Every read filled the buffer: more may be queued.
    MayHaveMore,
    /// The connection is to close: end of stream (`PeerEof`), the handler's
    /// verdict, or an error.
    Closed(CloseCause),
}

/// Hands `handler` what is queued on `fd`, with at most `max_reads` non-blocking
/// reads of `scratch`.
pub(crate) fn read_waiting<H: ConnectionHandler>(
    fd: BorrowedFd<'_>,
    handler: &H,
    state: &mut H::State,
    scratch: &mut [u8],
    max_reads: usize,
) -> Read {
    let mut reads = 0;
    while reads < max_reads {
        match sys::recv(fd, scratch, libc::MSG_DONTWAIT) {
            Ok(0) => return Read::Closed(CloseCause::PeerEof),
            Ok(n) => {
                reads += 1;
                if handler.data(state, &scratch[..n]).is_break() {
                    return Read::Closed(CloseCause::Handler);
                }
                if n < scratch.len() {
                    return Read::TookAll;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Read::Empty,
            Err(err) => return Read::Closed(CloseCause::Error(err)),
        }
    }
    Read::MayHaveMore
}

/// Admits a just-accepted connection and reads what it has already sent, before
/// any receive is armed for it. `None` when it was refused, or when it has already
/// ended: then it is closed here. A peer that connected, wrote and left while
/// queued on the listener so gives back its place under the limit at once, rather
/// than holding it while a burst of accepts is processed.
pub(crate) fn admit_and_read<H: ConnectionHandler>(
    policy: &Admission,
    handler: &H,
    conn: OwnedFd,
    scratch: &mut [u8],
) -> Option<(OwnedFd, H::State)> {
    let (conn, mut state) = policy.admit(handler, conn)?;
    match read_waiting(conn.as_fd(), handler, &mut state, scratch, READS_AT_ACCEPT) {
        Read::Closed(cause) => {
            close_unarmed(policy, handler, conn, state, cause);
            None
        }
        Read::TookAll | Read::Empty | Read::MayHaveMore => Some((conn, state)),
    }
}

/// Closes an admitted connection that no receive was armed for: frees its place
/// under the limit and reports why it closed.
fn close_unarmed<H: ConnectionHandler>(
    policy: &Admission,
    handler: &H,
    conn: OwnedFd,
    state: H::State,
    cause: CloseCause,
) {
    drop(conn);
    policy.release();
    handler.closed(state, cause);
}

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
    let ended = if sys::peer_hung_up(fd) {
        CloseCause::PeerEof
    } else {
        CloseCause::Shutdown
    };
    let shut = match sys::shutdown(fd, libc::SHUT_RD) {
        Ok(()) => true,
        Err(error) => {
            // Then only what is queued now is read: later writes may be lost unseen.
            tracing::warn!(%error, "shutdown(SHUT_RD) of a connection failed");
            false
        }
    };
    loop {
        if Instant::now() >= deadline {
            return CloseCause::Shutdown;
        }
        match read_waiting(fd, handler, state, scratch, READS_PER_DEADLINE_CHECK) {
            Read::Closed(CloseCause::PeerEof) => return ended,
            Read::Closed(cause) => return cause,
            Read::MayHaveMore => {}
            // Shut down, the queue ends in an end of stream: read on to it (what a
            // write in flight at the shutdown queued is read too).
            Read::TookAll if shut => {}
            // Not shut down: empty for now, later writes are not waited for.
            Read::TookAll | Read::Empty => return ended,
        }
    }
}

/// A descriptor held in reserve (`/dev/null`), so that the shutdown drain can still
/// accept a queued connection when the process is out of descriptors (EMFILE, or
/// ENFILE system-wide): the reserve is given up for that accept and taken again once
/// the connection is drained and closed. Without it, what the connections still
/// queued had sent was lost at the stop, with nothing counted.
#[derive(Debug)]
pub(crate) struct Reserve(Option<OwnedFd>);

impl Reserve {
    /// Takes the reserve (none when even that fails: the drain then does without).
    pub(crate) fn new() -> Self {
        Self(std::fs::File::open("/dev/null").ok().map(OwnedFd::from))
    }

    /// Gives the reserve up; false when there was none to give.
    fn release(&mut self) -> bool {
        self.0.take().is_some()
    }

    /// Takes the reserve again if it was given up.
    fn restore(&mut self) {
        if self.0.is_none() {
            *self = Self::new();
        }
    }
}

/// Accepts what is still queued on the (non-blocking) listener after it stopped
/// listening, and drains and closes each such connection as [`drain_waiting`] does.
/// Out of descriptors, it accepts with the one held in `reserve`.
pub(crate) fn drain_queued<H: ConnectionHandler>(
    listener: BorrowedFd<'_>,
    policy: &Admission,
    handler: &H,
    scratch: &mut [u8],
    deadline: Instant,
    reserve: &mut Reserve,
) {
    while Instant::now() < deadline {
        let conn = match sys::accept(listener, 0) {
            Ok(conn) => conn,
            Err(err) => match err.raw_os_error() {
                Some(libc::EINTR | libc::ECONNABORTED) => continue,
                Some(libc::EMFILE | libc::ENFILE) if reserve.release() => continue,
                // EAGAIN: queue empty; EINVAL: empty and shut down.
                Some(libc::EAGAIN | libc::EINVAL) => return,
                _ => {
                    tracing::error!(
                        error = %err,
                        "cannot accept the connections still queued at shutdown; what they sent is not read"
                    );
                    return;
                }
            },
        };
        if let Some((conn, mut state)) = policy.admit(handler, conn) {
            let cause = drain_waiting(conn.as_fd(), handler, &mut state, scratch, deadline);
            close_unarmed(policy, handler, conn, state, cause);
        }
        reserve.restore();
    }
}
