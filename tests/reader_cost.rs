//! Measures what the reader costs, per backend (not run by default; the figures
//! are printed, only the workload's correctness is asserted):
//!
//! ```text
//! cargo test --release --test reader_cost -- --ignored --nocapture --test-threads 1
//! # syscalls per frame of the reader threads, e.g.:
//! perf trace -s -- target/release/deps/reader_cost-* --ignored --exact frames_uring
//! ```
//!
//! Clients run in a forked child process (raw syscalls only), so this process's
//! memory and threads are the reader's and the handler's alone.

use std::ops::ControlFlow;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boundary_log_proxy::reader::{
    self, CloseCause, ConnInfo, ConnectionHandler, IoMode, Peer, ReaderConfig, RejectReason,
};

/// Counts calls; per-connection state is zero-sized, so memory growth is the reader's.
#[derive(Default)]
struct Counting {
    opened: AtomicUsize,
    closed: AtomicUsize,
    calls: AtomicUsize,
    bytes: AtomicUsize,
}

impl ConnectionHandler for Counting {
    type State = ();
    fn open(&self, _: &ConnInfo) {
        self.opened.fetch_add(1, Ordering::Relaxed);
    }
    fn data(&self, _: &mut (), bytes: &[u8]) -> ControlFlow<()> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes.len(), Ordering::Relaxed);
        ControlFlow::Continue(())
    }
    fn closed(&self, _: (), _: CloseCause) {
        self.closed.fetch_add(1, Ordering::Relaxed);
    }
    fn rejected(&self, _: RejectReason, _: Peer) {}
}

fn wait_until(what: &str, timeout: Duration, cond: impl Fn() -> bool) {
    let until = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A field of /proc/self/status or /proc/meminfo, in kB.
fn proc_kb(file: &str, key: &str) -> i64 {
    let text = std::fs::read_to_string(file).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("{key} not in {file}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Lifts the soft descriptor limit to the hard one (10,000 connections need
/// 10,000 descriptors here and as many in the client child).
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write a live, initialised rlimit.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(
        limit.rlim_cur > 10_200,
        "RLIMIT_NOFILE too low: {}",
        limit.rlim_cur
    );
}

/// Voluntary context switches of this process's reader threads (wake-ups).
fn reader_wakeups() -> i64 {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.starts_with("blp-") {
            let status = entry.path().join("status");
            total += proc_kb(status.to_str().unwrap(), "voluntary_ctxt_switches:");
        }
    }
    total
}

/// A forked client process; dropping it lets the child close everything and exit.
struct Clients {
    pid: libc::pid_t,
    release_fd: libc::c_int,
}

impl Drop for Clients {
    fn drop(&mut self) {
        let mut status = 0;
        // SAFETY: closes our pipe end (the child exits on EOF), then reaps it.
        unsafe {
            libc::close(self.release_fd);
            libc::waitpid(self.pid, &mut status, 0);
        }
    }
}

/// Forks a child that opens `conns` connections to `path`, then sends `frames`
/// rounds of one `frame_len`-byte write per connection (pausing `pace` between
/// rounds), then waits to be released.
fn fork_clients(
    path: &Path,
    conns: usize,
    frames: usize,
    frame_len: usize,
    pace: Duration,
) -> Clients {
    // SAFETY: sockaddr_un is plain old data; zeroes are valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
        *dst = *src as libc::c_char;
    }
    let mut fds = vec![0 as libc::c_int; conns];
    let frame = vec![0x5au8; frame_len];
    let pace_ts = libc::timespec {
        tv_sec: pace.as_secs() as libc::time_t,
        tv_nsec: pace.subsec_nanos() as libc::c_long,
    };
    let mut ready = [0 as libc::c_int; 2];
    let mut release = [0 as libc::c_int; 2];
    // SAFETY: pipe writes two fds into the live arrays.
    assert_eq!(unsafe { libc::pipe(ready.as_mut_ptr()) }, 0);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::pipe(release.as_mut_ptr()) }, 0);
    // SAFETY: the child only makes raw syscalls on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: raw syscalls in the single-threaded child, then _exit.
        unsafe {
            libc::close(release[1]);
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            for fd in fds.iter_mut() {
                *fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                if *fd < 0
                    || libc::connect(*fd, (&addr as *const libc::sockaddr_un).cast(), len) != 0
                {
                    libc::_exit(3);
                }
            }
            libc::write(ready[1], b"c".as_ptr().cast(), 1);
            for _ in 0..frames {
                for fd in &fds {
                    if libc::write(*fd, frame.as_ptr().cast(), frame.len()) != frame.len() as isize
                    {
                        libc::_exit(4);
                    }
                }
                if !pace.is_zero() {
                    libc::nanosleep(&pace_ts, std::ptr::null_mut());
                }
            }
            libc::write(ready[1], b"s".as_ptr().cast(), 1);
            let mut b = [0u8; 1];
            libc::read(release[0], b.as_mut_ptr().cast(), 1);
            libc::_exit(0);
        }
    }
    // SAFETY: closes the parent's copies of the child's pipe ends.
    unsafe {
        libc::close(ready[1]);
        libc::close(release[0]);
    }
    let clients = Clients {
        pid,
        release_fd: release[1],
    };
    for expected in [b'c', b's'] {
        let mut b = [0u8; 1];
        // SAFETY: reads one byte into a live local.
        let n = unsafe { libc::read(ready[0], b.as_mut_ptr().cast(), 1) };
        assert_eq!((n, b[0]), (1, expected), "the client child failed");
    }
    // SAFETY: closes our read end.
    unsafe { libc::close(ready[0]) };
    clients
}

fn start(io: IoMode) -> (reader::Reader, Arc<Counting>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ReaderConfig::new(dir.path().join("s.sock"));
    cfg.io = io;
    cfg.max_connections = 100_000;
    let listener = reader::bind(&cfg.socket_path, cfg.socket_mode).unwrap();
    let counting = Arc::new(Counting::default());
    let reader = reader::start(&cfg, listener, counting.clone()).unwrap();
    (reader, counting, dir)
}

fn idle_memory(io: IoMode) {
    const N: usize = 10_000;
    raise_fd_limit();
    let (reader, counting, dir) = start(io);
    let path = dir.path().join("s.sock");
    // Warm up: threads, first allocations.
    drop(fork_clients(&path, 100, 1, 16, Duration::ZERO));
    wait_until("warm-up", Duration::from_secs(10), || {
        counting.closed.load(Ordering::Relaxed) == 100
    });
    std::thread::sleep(Duration::from_millis(200));
    let (rss0, slab0) = (
        proc_kb("/proc/self/status", "VmRSS:"),
        proc_kb("/proc/meminfo", "Slab:"),
    );

    let clients = fork_clients(&path, N, 0, 0, Duration::ZERO);
    wait_until("all open", Duration::from_secs(60), || {
        counting.opened.load(Ordering::Relaxed) == N + 100
    });
    std::thread::sleep(Duration::from_millis(300));
    let (rss1, slab1) = (
        proc_kb("/proc/self/status", "VmRSS:"),
        proc_kb("/proc/meminfo", "Slab:"),
    );
    println!(
        "{io:?}: {N} idle connections: process RSS +{} KiB = {} B/connection; \
         kernel Slab (system-wide, both socket ends) +{} KiB = {} B/connection",
        rss1 - rss0,
        (rss1 - rss0) * 1024 / N as i64,
        slab1 - slab0,
        (slab1 - slab0) * 1024 / N as i64
    );
    drop(clients);
    wait_until("all closed", Duration::from_secs(60), || {
        counting.closed.load(Ordering::Relaxed) == N + 100
    });
    reader
        .shutdown(Instant::now() + Duration::from_secs(5))
        .unwrap();
}

fn frames(io: IoMode) {
    const CONNS: usize = 100;
    const FRAMES: usize = 1_000;
    const FRAME: usize = 200;
    let pace = Duration::from_micros(
        std::env::var("BLP_COST_PACE_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    let (reader, counting, dir) = start(io);
    let wakeups0 = reader_wakeups();
    let started = Instant::now();
    let clients = fork_clients(&dir.path().join("s.sock"), CONNS, FRAMES, FRAME, pace);
    wait_until("all bytes", Duration::from_secs(120), || {
        counting.bytes.load(Ordering::Relaxed) == CONNS * FRAMES * FRAME
    });
    let elapsed = started.elapsed();
    let frames = CONNS * FRAMES;
    let calls = counting.calls.load(Ordering::Relaxed);
    let wakeups = reader_wakeups() - wakeups0;
    println!(
        "{io:?}: {frames} frames of {FRAME} B on {CONNS} connections (pace {pace:?}) in {elapsed:?}: \
         {calls} data calls ({:.2}/frame), {wakeups} reader wake-ups ({:.3}/frame)",
        calls as f64 / frames as f64,
        wakeups as f64 / frames as f64
    );
    drop(clients);
    reader
        .shutdown(Instant::now() + Duration::from_secs(5))
        .unwrap();
}

#[test]
#[ignore = "measurement; run by hand"]
fn idle_memory_uring() {
    idle_memory(IoMode::Uring);
}

#[test]
#[ignore = "measurement; run by hand"]
fn idle_memory_epoll() {
    idle_memory(IoMode::Epoll);
}

#[test]
#[ignore = "measurement; run by hand"]
fn frames_uring() {
    frames(IoMode::Uring);
}

#[test]
#[ignore = "measurement; run by hand"]
fn frames_epoll() {
    frames(IoMode::Epoll);
}
