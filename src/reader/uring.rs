//! The io_uring reader: one thread per ring, each with a multishot accept on the
//! shared listener and one multishot receive per connection into the ring's
//! provided-buffer ring. A connection costs a slot in a table and its state;
//! no buffer of its own.

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::bufring::BufRing;
use super::policy::Admission;
use super::reads::{admit_and_read, drain_queued, drain_waiting, Reserve, SCRATCH_LEN};
use super::sys;
use super::{
    spawn_worker, CloseCause, ConnectionHandler, Listeners, ReaderError, StartArgs, Started, Stop,
};

/// Submission queue entries per ring.
const SQ_ENTRIES: u32 = 256;
/// Completion queue entries per ring (the kernel keeps overflow, IORING_FEAT_NODROP).
const CQ_ENTRIES: u32 = 4096;
/// Provided buffers per ring, shared by all its connections (2 MiB in all). When
/// they run out, a connection's multishot receive ends with ENOBUFS and is armed
/// again after the batch of completions that gave them back: with more than 32
/// connections sending at once, most receives end so and are re-armed every batch
/// (at 512 busy writers about 12 re-arms per receive that delivers data, against
/// about 2 with 256 buffers; a lone connection's byte among 512 busy writers still
/// arrived in 104-166 ms, against 140 before, and among 1024 in 344-448 ms against
/// 296: a cost only for hundreds of connections sending at once).
const BUF_COUNT: u16 = 32;
/// Bytes per provided buffer, as the epoll reader's reads. Each receive also costs
/// a completion, a handler call and the kernel's fixed work, so four times fewer,
/// larger receives took less CPU per log: with the null reporter, median 108
/// against 141 ns/log for 256 x 16 KiB, alternating in one sitting (90 against
/// 96.5 and 100 against 124 in two others; PERF.md, section 0, "Tenth round").
const BUF_LEN: u32 = 64 * 1024;
/// The buffer group id of each ring's provided-buffer ring.
const BGID: u16 = 0;
/// Pause before re-arming an accept that failed (e.g. EMFILE).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// How long closing waits for cancelled receives to report their end.
const CANCEL_GRACE: Duration = Duration::from_millis(200);

/// Builds a ring with the flags the reader uses: completions are only posted when
/// this thread waits for them (DEFER_TASKRUN), falling back to plain set-up on
/// kernels without those flags.
pub(crate) fn new_ring(entries: u32, cq_entries: u32) -> io::Result<IoUring> {
    let deferred = IoUring::builder()
        .dontfork()
        .setup_cqsize(cq_entries)
        .setup_clamp()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(entries);
    match deferred {
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => IoUring::builder()
            .dontfork()
            .setup_cqsize(cq_entries)
            .setup_clamp()
            .build(entries),
        other => other,
    }
}

/// Starts one ring thread per `args.threads`, all accepting on the listener.
pub(crate) fn start<H: ConnectionHandler>(args: &StartArgs<H>) -> Result<Started, ReaderError> {
    let mut workers = Vec::with_capacity(args.threads);
    for index in 0..args.threads {
        let name = format!("blp-uring-{index}");
        let (wake_fd, rebind_fd) = match sys::eventfd().and_then(|w| Ok((w, sys::eventfd()?))) {
            Ok((wake_fd, rebind_fd)) => (Arc::new(wake_fd), Arc::new(rebind_fd)),
            Err(source) => {
                super::abandon(workers, &args.stop);
                return Err(ReaderError::WorkerSetup {
                    thread: name,
                    source,
                });
            }
        };
        let wake = Box::new(signaller(&wake_fd, "cannot wake an io_uring reader thread"));
        let rebind = Box::new(signaller(
            &rebind_fd,
            "cannot wake an io_uring reader thread for a new socket",
        ));
        let (listeners, handler, policy, stop) = (
            args.listeners.clone(),
            args.handler.clone(),
            args.policy.clone(),
            args.stop.clone(),
        );
        let setup = move || {
            let worker = RingWorker::new(listeners, handler, policy, stop, wake_fd, rebind_fd)?;
            Ok(move || worker.run())
        };
        match spawn_worker(name, setup, wake, rebind) {
            Ok(worker) => workers.push(worker),
            Err(err) => {
                super::abandon(workers, &args.stop);
                return Err(err);
            }
        }
    }
    Ok(Started { workers })
}

/// A closure that signals `fd` (an eventfd a reader thread polls), logging `failure`
/// if it cannot.
fn signaller(fd: &Arc<OwnedFd>, failure: &'static str) -> impl Fn() + Send + Sync + 'static {
    let fd = fd.clone();
    move || {
        if let Err(err) = sys::signal_eventfd(fd.as_fd()) {
            tracing::error!(error = %err, "{failure}");
        }
    }
}

/// What a completion belongs to, packed into its user_data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// The multishot accept on the listener of this generation (truncated).
    Accept(u32),
    AcceptRetry,
    Wake,
    Cancel,
    Recv(u32),
    /// The poll on the eventfd that says a new listener is waiting.
    Rebind,
}

const KIND_SHIFT: u32 = 56;

impl Op {
    fn encode(self) -> u64 {
        let (kind, slot) = match self {
            Op::Accept(generation) => (1, generation),
            Op::AcceptRetry => (2, 0),
            Op::Wake => (3, 0),
            Op::Cancel => (4, 0),
            Op::Recv(slot) => (5, slot),
            Op::Rebind => (6, 0),
        };
        (kind << KIND_SHIFT) | u64::from(slot)
    }

    fn decode(data: u64) -> Option<Op> {
        Some(match data >> KIND_SHIFT {
            1 => Op::Accept(data as u32),
            2 => Op::AcceptRetry,
            3 => Op::Wake,
            4 => Op::Cancel,
            5 => Op::Recv(data as u32),
            6 => Op::Rebind,
            _ => return None,
        })
    }
}

/// One connection of a ring.
///
/// Invariant: a slot is freed only once `state` is gone (closed was called) and no
/// receive is armed, so no completion can name a freed or reused slot.
struct Conn<S> {
    fd: OwnedFd,
    /// `None` once `closed` was called.
    state: Option<S>,
    /// A multishot receive is in flight (its last completion not yet seen).
    recv_armed: bool,
}

/// One ring and everything its thread owns.
struct RingWorker<H: ConnectionHandler> {
    ring: IoUring,
    /// Dropped by hand in the worker's Drop (the ring still open), and only once no
    /// receive can fill it and its group is unregistered; leaked otherwise.
    bufs: ManuallyDrop<BufRing>,
    conns: Vec<Option<Conn<H::State>>>,
    free: Vec<u32>,
    live: usize,
    handler: Arc<H>,
    policy: Arc<Admission>,
    listener: Arc<UnixListener>,
    /// The generation of `listener` (see [`Listeners`]), truncated.
    generation: u32,
    listeners: Arc<Listeners>,
    /// Old listeners whose accept is still in flight (cancelled), kept open until
    /// its last completion; then what is queued on them is taken and they close.
    retired: Vec<(u32, Arc<UnixListener>)>,
    stop: Arc<Stop>,
    wake_fd: Arc<OwnedFd>,
    rebind_fd: Arc<OwnedFd>,
    accept_armed: bool,
    draining: bool,
    queue_taken: bool,
    rearm: Vec<u32>,
    cqes: Vec<cqueue::Entry>,
    scratch: Vec<u8>,
    /// A descriptor for the shutdown drain to accept with when out of them.
    reserve: Reserve,
    retry_ts: types::Timespec,
}

impl<H: ConnectionHandler> RingWorker<H> {
    fn new(
        listeners: Arc<Listeners>,
        handler: Arc<H>,
        policy: Arc<Admission>,
        stop: Arc<Stop>,
        wake_fd: Arc<OwnedFd>,
        rebind_fd: Arc<OwnedFd>,
    ) -> io::Result<Self> {
        let (generation, listener) = listeners.current();
        let ring = new_ring(SQ_ENTRIES, CQ_ENTRIES)?;
        let bufs = BufRing::new(BUF_COUNT, BUF_LEN)?;
        // SAFETY: the worker owns both; its Drop frees the buffers only once no
        // receive is in flight and the group is unregistered (the kernel no longer
        // reads the ring or writes the buffers), and leaks them otherwise.
        unsafe { bufs.register(&ring.submitter(), BGID)? };
        Ok(RingWorker {
            ring,
            bufs: ManuallyDrop::new(bufs),
            conns: Vec::new(),
            free: Vec::new(),
            live: 0,
            handler,
            policy,
            listener,
            generation: generation as u32,
            listeners,
            retired: Vec::new(),
            stop,
            wake_fd,
            rebind_fd,
            accept_armed: false,
            draining: false,
            queue_taken: false,
            rearm: Vec::new(),
            cqes: Vec::with_capacity(CQ_ENTRIES as usize),
            scratch: vec![0; SCRATCH_LEN],
            reserve: Reserve::new(),
            retry_ts: types::Timespec::from(ACCEPT_RETRY),
        })
    }

    fn run(mut self) {
        self.arm_accept();
        let wake = opcode::PollAdd::new(types::Fd(self.wake_fd.as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(Op::Wake.encode());
        self.push(wake);
        self.arm_rebind();
        loop {
            if let Err(err) = self.wait() {
                tracing::error!(error = %err, "io_uring wait failed; closing this ring's connections");
                break;
            }
            self.process_completions();
            if self.draining {
                if !self.accept_armed && !self.queue_taken {
                    self.queue_taken = true;
                    drain_queued(
                        self.listener.as_fd(),
                        &self.policy,
                        &*self.handler,
                        &mut self.scratch,
                        self.stop.deadline(),
                        &mut self.reserve,
                    );
                }
                if self.queue_taken && self.live == 0 {
                    break;
                }
                if Instant::now() >= self.stop.deadline() {
                    tracing::warn!(
                        open = self.live,
                        "shutdown deadline passed; closing connections without reading more"
                    );
                    break;
                }
            }
        }
        self.close_all();
    }

    /// Submits queued entries and blocks until a completion arrives (or, while
    /// draining, until the deadline).
    fn wait(&mut self) -> io::Result<()> {
        let until = self.draining.then(|| self.stop.deadline());
        self.wait_until(until)
    }

    fn wait_until(&mut self, until: Option<Instant>) -> io::Result<()> {
        let result = match until {
            Some(until) => {
                let left = until.saturating_duration_since(Instant::now());
                let ts = types::Timespec::from(left);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submit_and_wait(1),
        };
        match result {
            Ok(_) => Ok(()),
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::EINTR | libc::ETIME | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    fn process_completions(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(self.ring.completion());
        for cqe in &cqes {
            match Op::decode(cqe.user_data()) {
                Some(Op::Recv(slot)) => self.on_recv(slot, cqe.result(), cqe.flags()),
                Some(Op::Accept(generation)) => {
                    self.on_accept(generation, cqe.result(), cqe.flags())
                }
                Some(Op::Rebind) => self.on_rebind(),
                Some(Op::AcceptRetry) => {
                    if !self.draining && !self.accept_armed {
                        self.arm_accept();
                    }
                }
                Some(Op::Wake) => self.begin_drain(),
                // A cancel's own result: the cancelled receive reports separately.
                Some(Op::Cancel) => {}
                None => tracing::error!(user_data = cqe.user_data(), "unknown io_uring completion"),
            }
        }
        self.cqes = cqes;
        for slot in std::mem::take(&mut self.rearm) {
            let open =
                matches!(&self.conns[slot as usize], Some(c) if c.state.is_some() && !c.recv_armed);
            if !open {
                continue;
            }
            if self.draining {
                self.drain_and_close(slot);
            } else {
                self.arm_recv(slot);
            }
        }
    }

    fn on_accept(&mut self, generation: u32, result: i32, flags: u32) {
        if generation != self.generation {
            self.on_retired_accept(generation, result, flags);
            return;
        }
        if !cqueue::more(flags) {
            self.accept_armed = false;
        }
        if result >= 0 {
            // SAFETY: a successful accept completion carries a new descriptor that
            // nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(result) };
            self.on_connection(fd);
        } else if !self.stop.requested() {
            // (When stopping, ECANCELED, or EINVAL from the listener shut down, is expected.)
            let err = io::Error::from_raw_os_error(-result);
            crate::events::accept_failed(crate::events::Listener::Socket, &err);
        }
        if !self.accept_armed && !self.draining && !self.stop.requested() {
            if result < 0 {
                let retry = opcode::Timeout::new(&self.retry_ts)
                    .build()
                    .user_data(Op::AcceptRetry.encode());
                self.push(retry);
            } else {
                self.arm_accept();
            }
        }
    }

    /// A completion of an old listener's accept (cancelled by `on_rebind`).
    fn on_retired_accept(&mut self, generation: u32, result: i32, flags: u32) {
        if result >= 0 {
            // SAFETY: a successful accept completion carries a new descriptor that
            // nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(result) };
            self.on_connection(fd);
        }
        if cqueue::more(flags) {
            return;
        }
        if let Some(index) = self.retired.iter().position(|(g, _)| *g == generation) {
            let (_, old) = self.retired.swap_remove(index);
            self.take_queued(&old);
        }
    }

    /// The eventfd says a new listener may be waiting: switch to it.
    fn on_rebind(&mut self) {
        let mut count = [0u8; 8];
        // Reset the (non-blocking) eventfd; EAGAIN when already reset is fine.
        let _ = sys::read(self.rebind_fd.as_fd(), &mut count);
        if self.draining || self.stop.requested() {
            return;
        }
        self.arm_rebind();
        let (generation, next) = self.listeners.current();
        let generation = generation as u32;
        if generation == self.generation {
            return;
        }
        let old = std::mem::replace(&mut self.listener, next);
        let old_generation = std::mem::replace(&mut self.generation, generation);
        if self.accept_armed {
            let cancel = opcode::AsyncCancel::new(Op::Accept(old_generation).encode())
                .build()
                .user_data(Op::Cancel.encode());
            self.push(cancel);
            self.retired.push((old_generation, old));
            self.arm_accept();
        } else {
            // An accept retry is pending; it arms the new listener.
            self.take_queued(&old);
        }
    }

    /// Accepts what is queued on an old listener (connected before its socket
    /// file went), as the multishot accept would have.
    fn take_queued(&mut self, old: &UnixListener) {
        loop {
            match sys::accept(old.as_fd(), 0) {
                Ok(fd) => self.on_connection(fd),
                Err(err)
                    if matches!(err.raw_os_error(), Some(libc::EINTR | libc::ECONNABORTED)) => {}
                Err(_) => return,
            }
        }
    }

    fn on_connection(&mut self, fd: OwnedFd) {
        // Many accepts complete in one batch, before any of their receives runs: a
        // peer that already left is read and closed now, so its place under the
        // limit is free for the next accept of the batch.
        let Some((fd, state)) = admit_and_read(&self.policy, &*self.handler, fd, &mut self.scratch)
        else {
            return;
        };
        let conn = Conn {
            fd,
            state: Some(state),
            recv_armed: false,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.conns[slot as usize] = Some(conn);
                slot
            }
            None => {
                self.conns.push(Some(conn));
                (self.conns.len() - 1) as u32
            }
        };
        self.live += 1;
        if self.draining {
            self.drain_and_close(slot);
        } else {
            self.arm_recv(slot);
        }
    }

    fn on_recv(&mut self, slot: u32, result: i32, flags: u32) {
        let more = cqueue::more(flags);
        let Some(conn) = self.conns.get_mut(slot as usize).and_then(Option::as_mut) else {
            // Cannot happen (slots outlive their receives); keep the buffer anyway.
            tracing::error!(slot, "receive completion for a free slot");
            if let Some(bid) = cqueue::buffer_select(flags) {
                // SAFETY: the buffer id comes from this completion; no bytes are read.
                let _ = unsafe { self.bufs.take(bid, 0) };
                self.bufs.recycle(bid);
            }
            return;
        };
        if !more {
            conn.recv_armed = false;
        }
        let mut close = None;
        if let Some(bid) = cqueue::buffer_select(flags) {
            let len = usize::try_from(result).unwrap_or(0);
            // SAFETY: the buffer id and the result come from this completion of a
            // receive on this ring's buffer group.
            let bytes = unsafe { self.bufs.take(bid, len) };
            if let Some(state) = conn.state.as_mut() {
                if !bytes.is_empty() && self.handler.data(state, bytes).is_break() {
                    close = Some(CloseCause::Handler);
                }
            }
            self.bufs.recycle(bid);
        }
        if conn.state.is_some() && close.is_none() {
            match result {
                0 => close = Some(CloseCause::PeerEof),
                r if r > 0 || r == -libc::ENOBUFS || r == -libc::ECANCELED => {
                    if !more {
                        // Multishot ended (buffers ran out, cancelled for the drain,
                        // or the kernel stopped it): re-arm or drain after this batch.
                        self.rearm.push(slot);
                    }
                }
                r => close = Some(CloseCause::Error(io::Error::from_raw_os_error(-r))),
            }
        }
        if let Some(cause) = close {
            self.close(slot, cause);
        }
        self.free_if_done(slot);
    }

    fn arm_accept(&mut self) {
        let accept = opcode::AcceptMulti::new(types::Fd(self.listener.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(Op::Accept(self.generation).encode());
        self.push(accept);
        self.accept_armed = true;
    }

    fn arm_rebind(&mut self) {
        let poll = opcode::PollAdd::new(types::Fd(self.rebind_fd.as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(Op::Rebind.encode());
        self.push(poll);
    }

    fn arm_recv(&mut self, slot: u32) {
        let Some(conn) = self.conns[slot as usize].as_mut() else {
            return;
        };
        let recv = opcode::RecvMulti::new(types::Fd(conn.fd.as_raw_fd()), BGID)
            .build()
            .user_data(Op::Recv(slot).encode());
        conn.recv_armed = true;
        self.push(recv);
    }

    /// Closes the connection, then calls `closed`. A receive still in flight is
    /// ended (the socket shut down so the peer sees the close at once, the receive
    /// cancelled) and the slot freed at its last completion; otherwise the slot
    /// is freed (socket closed, place under the limit given back) before `closed`.
    fn close(&mut self, slot: u32, cause: CloseCause) {
        let Some(conn) = self.conns[slot as usize].as_mut() else {
            return;
        };
        let Some(state) = conn.state.take() else {
            return;
        };
        if conn.recv_armed {
            let _ = sys::shutdown(conn.fd.as_fd(), libc::SHUT_RDWR);
            let cancel = opcode::AsyncCancel::new(Op::Recv(slot).encode())
                .build()
                .user_data(Op::Cancel.encode());
            self.push(cancel);
        } else {
            self.free_if_done(slot);
        }
        self.handler.closed(state, cause);
    }

    fn free_if_done(&mut self, slot: u32) {
        let done =
            matches!(&self.conns[slot as usize], Some(c) if c.state.is_none() && !c.recv_armed);
        if done {
            self.conns[slot as usize] = None;
            self.free.push(slot);
            self.live -= 1;
            self.policy.release();
        }
    }

    /// Shutdown began: stop accepting and end every receive; each connection is
    /// drained at its receive's last completion.
    fn begin_drain(&mut self) {
        if self.draining {
            return;
        }
        self.draining = true;
        if self.accept_armed {
            let cancel = opcode::AsyncCancel::new(Op::Accept(self.generation).encode())
                .build()
                .user_data(Op::Cancel.encode());
            self.push(cancel);
        }
        for slot in 0..self.conns.len() as u32 {
            let armed =
                matches!(&self.conns[slot as usize], Some(c) if c.state.is_some() && c.recv_armed);
            if armed {
                let cancel = opcode::AsyncCancel::new(Op::Recv(slot).encode())
                    .build()
                    .user_data(Op::Cancel.encode());
                self.push(cancel);
            }
        }
    }

    /// Hands over what is waiting on a connection whose receive is not armed, then closes it.
    fn drain_and_close(&mut self, slot: u32) {
        let Some(conn) = self.conns[slot as usize].as_mut() else {
            return;
        };
        debug_assert!(!conn.recv_armed);
        let Some(mut state) = conn.state.take() else {
            return;
        };
        let cause = drain_waiting(
            conn.fd.as_fd(),
            &*self.handler,
            &mut state,
            &mut self.scratch,
            self.stop.deadline(),
        );
        self.free_if_done(slot);
        self.handler.closed(state, cause);
    }

    /// The drain is over (or the deadline passed, or the ring failed): close what
    /// is left, then collect the cancelled receives' last completions so the
    /// buffers can be freed.
    fn close_all(&mut self) {
        self.draining = true;
        for slot in 0..self.conns.len() as u32 {
            self.close(slot, CloseCause::Shutdown);
            self.free_if_done(slot);
        }
        let until = Instant::now() + CANCEL_GRACE;
        while self.receives_in_flight() > 0 && Instant::now() < until {
            if self.wait_until(Some(until)).is_err() {
                break;
            }
            self.process_completions();
        }
    }

    fn push(&mut self, sqe: squeue::Entry) {
        loop {
            // SAFETY: every entry this worker builds refers only to descriptors it
            // keeps open until the operation's last completion (connections, the
            // listener and retired listeners, the eventfds), to the buffer group registered for the ring's
            // lifetime, or to `retry_ts`, a field of the worker read at submission.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                return;
            }
            if let Err(err) = self.ring.submit() {
                if !matches!(
                    err.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) {
                    tracing::error!(error = %err, "io_uring submit failed");
                }
                std::thread::yield_now();
            }
        }
    }

    fn receives_in_flight(&self) -> usize {
        self.conns.iter().flatten().filter(|c| c.recv_armed).count()
    }
}

impl<H: ConnectionHandler> Drop for RingWorker<H> {
    fn drop(&mut self) {
        let in_flight = self.receives_in_flight();
        if in_flight == 0 {
            match self.ring.submitter().unregister_buf_ring(BGID) {
                // SAFETY: no receive is in flight and the group is unregistered, so
                // the kernel no longer reads the ring or writes the buffers; dropped
                // once.
                Ok(()) => unsafe { ManuallyDrop::drop(&mut self.bufs) },
                Err(error) => tracing::warn!(
                    %error,
                    "cannot unregister the provided buffers; leaking them rather than freeing memory the kernel may still use"
                ),
            }
        } else {
            tracing::warn!(
                in_flight,
                "receives still in flight at exit; leaking this ring's buffers rather than freeing memory the kernel may write"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Op;

    #[test]
    fn user_data_round_trips() {
        for op in [
            Op::Accept(0),
            Op::Accept(u32::MAX),
            Op::Rebind,
            Op::AcceptRetry,
            Op::Wake,
            Op::Cancel,
            Op::Recv(0),
            Op::Recv(u32::MAX),
        ] {
            assert_eq!(Op::decode(op.encode()), Some(op));
        }
        assert_eq!(Op::decode(0), None);
    }
}
