//! Choosing the backend: whether this kernel (and its sandbox) lets the io_uring
//! reader run, tried for real rather than guessed from the kernel version.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use io_uring::{cqueue, opcode, types, IoUring, Probe};

use super::bufring::BufRing;
use super::{uring, Backend, IoMode, ReaderError};

/// Set to an errno (e.g. `1` for EPERM) to make the io_uring probe fail as a
/// kernel or sandbox that forbids io_uring would. For tests of the fallback.
pub const FORCE_URING_ERRNO_ENV: &str = "BOUNDARY_LOG_PROXY_TEST_FORCE_URING_ERRNO";

/// Buffer group the probe registers (its ring is its own, so any id works).
const PROBE_BGID: u16 = 7;

/// Picks the backend for `mode`, logging which runs and why.
pub(crate) fn choose_backend(mode: IoMode, forced: Option<i32>) -> Result<Backend, ReaderError> {
    match mode {
        IoMode::Epoll => {
            tracing::info!(backend = "epoll", "reading with epoll (--io epoll)");
            Ok(Backend::Epoll)
        }
        IoMode::Uring => {
            probe(forced)?;
            tracing::info!(backend = "io_uring", "reading with io_uring (--io uring)");
            Ok(Backend::Uring)
        }
        IoMode::Auto => match probe(forced) {
            Ok(()) => {
                tracing::info!(
                    backend = "io_uring",
                    "reading with io_uring (--io auto: the kernel allows it)"
                );
                Ok(Backend::Uring)
            }
            Err(err) => {
                if is_forbidden(&err) {
                    tracing::info!(backend = "epoll", reason = %err, "io_uring is not allowed here; reading with epoll (--io auto)");
                } else {
                    tracing::warn!(backend = "epoll", reason = %err, "io_uring failed unexpectedly; reading with epoll (--io auto)");
                }
                Ok(Backend::Epoll)
            }
        },
    }
}

/// Errors a kernel or sandbox gives when io_uring, or a feature of it, is off:
/// seccomp and `kernel.io_uring_disabled` (EPERM), no io_uring or gVisor
/// (ENOSYS), an older kernel (EINVAL, EOPNOTSUPP).
fn is_forbidden(err: &ReaderError) -> bool {
    let ReaderError::UringUnavailable { source, .. } = err else {
        return false;
    };
    matches!(
        source.raw_os_error(),
        Some(libc::EPERM | libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP | libc::EACCES)
    )
}

fn forced_errno() -> Option<i32> {
    std::env::var(FORCE_URING_ERRNO_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
}

fn unavailable(step: &'static str, source: io::Error) -> ReaderError {
    ReaderError::UringUnavailable { step, source }
}

/// Runs [`probe_here`] on a short-lived thread of its own. Closing a ring makes the
/// kernel queue its teardown work to every thread that used the ring as a signal
/// (TWA_SIGNAL), so that thread's next sleep in a syscall with a timeout fails with
/// EINTR; the caller's thread (an embedding application's) must not get that.
pub(crate) fn probe(forced: Option<i32>) -> Result<(), ReaderError> {
    std::thread::Builder::new()
        .name("blp-uring-probe".into())
        .spawn(move || probe_here(forced))
        .map_err(|e| unavailable("spawn the probe thread", e))?
        .join()
        .unwrap_or_else(|_| {
            Err(unavailable(
                "probe",
                io::Error::other("the probe thread panicked"),
            ))
        })
}

/// Sets up a ring with the flags the reader uses, checks the opcodes it needs, and
/// runs a multishot receive into a registered buffer ring over a socket pair.
fn probe_here(forced: Option<i32>) -> Result<(), ReaderError> {
    if let Some(errno) = forced.or_else(forced_errno) {
        return Err(unavailable(
            "io_uring_setup (failure forced for testing)",
            io::Error::from_raw_os_error(errno),
        ));
    }
    // Declared before the ring, so dropped after it.
    let mut bufs = BufRing::new(2, 64).map_err(|e| unavailable("map a provided-buffer ring", e))?;
    let mut ring = uring::new_ring(8, 16).map_err(|e| unavailable("io_uring_setup", e))?;

    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| unavailable("register a probe", e))?;
    for (code, name) in [
        (opcode::AcceptMulti::CODE, "opcode accept"),
        (opcode::RecvMulti::CODE, "opcode recv"),
        (opcode::AsyncCancel::CODE, "opcode async_cancel"),
        (opcode::PollAdd::CODE, "opcode poll_add"),
        (opcode::Timeout::CODE, "opcode timeout"),
    ] {
        if !probe.is_supported(code) {
            return Err(unavailable(
                name,
                io::Error::from_raw_os_error(libc::EOPNOTSUPP),
            ));
        }
    }
    // SAFETY: `bufs` is declared before `ring`, so it outlives the registration;
    // on every path where a receive may still be in flight it is leaked below.
    unsafe { bufs.register(&ring.submitter(), PROBE_BGID) }
        .map_err(|e| unavailable("register a provided-buffer ring", e))?;

    let result = multishot_recv_works(&mut ring, &mut bufs);
    if result.is_err() {
        // The receive may still be armed: never let the kernel write freed memory.
        std::mem::forget(bufs);
    }
    result
}

/// Arms one multishot receive on a socket pair, sends a byte, and expects it with
/// "more to come"; then closes the writer and expects the final EOF completion.
fn multishot_recv_works(ring: &mut IoUring, bufs: &mut BufRing) -> Result<(), ReaderError> {
    let step = "multishot recv on a socket pair";
    let fail = |e| unavailable(step, e);
    let (reader, mut writer) = UnixStream::pair().map_err(fail)?;
    let recv = opcode::RecvMulti::new(types::Fd(reader.as_raw_fd()), PROBE_BGID)
        .build()
        .user_data(1);
    // SAFETY: the SQE references the reader socket, kept open until the final
    // completion or leaked with the buffers (see `probe`), and the registered group.
    unsafe { ring.submission().push(&recv) }
        .map_err(|_| fail(io::Error::other("submission queue full")))?;
    writer.write_all(b"x").map_err(fail)?;

    let first = wait_one(ring).map_err(fail)?;
    if let Some(bid) = cqueue::buffer_select(first.flags()) {
        let len = usize::try_from(first.result()).unwrap_or(0);
        // SAFETY: the id and result come from this completion of the group.
        let got = unsafe { bufs.take(bid, len) }.to_vec();
        bufs.recycle(bid);
        if got != b"x" {
            return Err(fail(io::Error::other("received the wrong bytes")));
        }
    } else {
        let errno = if first.result() < 0 {
            -first.result()
        } else {
            libc::EINVAL
        };
        return Err(fail(io::Error::from_raw_os_error(errno)));
    }
    if !cqueue::more(first.flags()) {
        return Err(fail(io::Error::from_raw_os_error(libc::EOPNOTSUPP)));
    }

    drop(writer);
    let last = wait_one(ring).map_err(fail)?;
    if last.result() != 0 || cqueue::more(last.flags()) {
        return Err(fail(io::Error::other("no end-of-stream completion")));
    }
    drop(reader);
    Ok(())
}

/// Waits up to a second for one completion.
fn wait_one(ring: &mut IoUring) -> io::Result<cqueue::Entry> {
    let ts = types::Timespec::from(Duration::from_secs(1));
    let args = types::SubmitArgs::new().timespec(&ts);
    loop {
        if let Some(cqe) = ring.completion().next() {
            return Ok(cqe);
        }
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => {
                return ring.completion().next().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::TimedOut, "no completion within 1s")
                });
            }
            Err(e) => return Err(e),
        }
    }
}
