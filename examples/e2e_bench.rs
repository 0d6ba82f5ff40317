//! Out-of-process end-to-end benchmark: the release binary's `serve` in its own
//! process, a writer in another (this example re-run as `writer`), and, for the
//! gRPC and coder reporters, the binary's `sink` in a third. Reports delivered
//! logs/s (from the proxy's own `/metrics`), drops, and the proxy's CPU time per
//! log (utime + stime of its process over the run, divided by the logs it
//! received), per thread as well, beside two references measured in the same run
//! on this process's thread: prost decoding the same frames, and the codec's
//! validating decode of them in isolation.
//!
//! ```text
//! cargo build --release --bin boundary-log-proxy --example e2e_bench
//! target/release/examples/e2e_bench --reporter null,grpc --runs 3
//! ```
//! (`scripts/e2e_bench.sh` does both and keeps the output under `perf/`.)
//!
//! The writer pre-encodes every frame (one session per connection, sequence
//! numbers from 0, the bytes prost writes) before the clock starts, then writes
//! them in chunks (64 KiB by default) with one blocking thread per connection, as
//! fast as the socket takes them: offered load above what the proxy can take shows
//! up as socket back-pressure on the writer, or as drops in the proxy's counters.
//! `--writer loadgen` uses the project's `loadgen` subcommand instead.
//!
//! `--reporter floor` (and `floor-copy`) replaces the proxy with this example's
//! bare receiver (re-run as `floor`): one thread that polls the connections,
//! reads 64 KiB at a time, cuts each read's frames where they lie (no copy) and
//! validates each with the codec's `decode_message`, as the proxy's reader does,
//! and does nothing else: no ring, no second thread, no request. `floor-copy`
//! also copies each frame's logs into a request buffer on the same thread, as a
//! forwarder running on the reader's thread would. Its CPU per log is what any
//! receiver that validates every frame pays on this machine at the least: the
//! floor under the proxy's figure. Its CPU is its own process's from its first
//! byte to its last log (getrusage, microseconds; the proxy's is `/proc` clock
//! ticks over the run and its settling), with no warm-up; in the CSV it is in the
//! `proxy_cpu_ns_per_log` column of the `Floor` and `FloorCopy` rows.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Children get sessions of their own (`--own-sessions`).
static OWN_SESSIONS: AtomicBool = AtomicBool::new(false);
use std::thread;
use std::time::{Duration, Instant};

use boundary_log_proxy::codec::{
    decode_header, decode_message, FrameDecoder, Message, RawFrame, Tag, HEADER_LEN,
};
use boundary_log_proxy::loadgen::{SessionStream, Timestamps};
use boundary_log_proxy::proto::agent::ReportBoundaryLogsRequest;
use boundary_log_proxy::proto::envelope::{boundary_message::Msg, BoundaryMessage};
use clap::{Parser, Subcommand, ValueEnum};
use prost::Message as _;

/// Every metric name starts with this.
const PREFIX: &str = "agent_boundary_log_proxy_";
/// How often delivery is checked once the writer is done.
const SETTLE_POLL: Duration = Duration::from_millis(2);
/// Longest a run may take to settle after the writer is done.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
/// Longest a child process may take to be ready.
const START_LIMIT: Duration = Duration::from_secs(20);
/// Session indices of the warm-up and measured writers (disjoint: no sequence
/// number goes backwards in a session the proxy already saw).
const WARMUP_INDEX: u32 = 10_000;
const MEASURED_INDEX: u32 = 20_000;

#[derive(Parser, Debug)]
#[command(about = "Out-of-process end-to-end benchmark of boundary-log-proxy serve")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The writer process (started by the harness).
    Writer(WriterArgs),
    /// The bare receiver of `--reporter floor` (started by the harness).
    Floor(FloorArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ReporterKind {
    /// `serve --sink null`.
    Null,
    /// `serve --coderd http://..` to `sink --quiet`.
    Grpc,
    /// `serve --coder-url http://..` to `sink --protocol coder --quiet`.
    Coder,
    /// Not the proxy: the bare receiver (read, frame in place, validate; one thread).
    Floor,
    /// The bare receiver, also copying each frame's logs into a request buffer.
    FloorCopy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WriterKind {
    /// This example's writer: pre-encoded frames in fixed-size chunks.
    Frames,
    /// The project's `loadgen` subcommand, unthrottled.
    Loadgen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FrameTagArg {
    V1,
    V2,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The proxy binary [default: target/release/boundary-log-proxy beside this example].
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Reporters to measure, side by side in each round.
    #[arg(long, value_delimiter = ',', default_value = "null")]
    reporter: Vec<ReporterKind>,
    /// Who writes.
    #[arg(long, value_enum, default_value_t = WriterKind::Frames)]
    writer: WriterKind,
    /// Connections (one session each).
    #[arg(long, default_value_t = 8)]
    connections: u32,
    /// Logs in each frame.
    #[arg(long, default_value_t = 10)]
    logs_per_frame: u32,
    /// Logs written in each measured run (rounded down to whole frames per connection).
    #[arg(long, default_value_t = 4_000_000)]
    logs: u64,
    /// Bytes per write.
    #[arg(long, default_value_t = 64 * 1024)]
    chunk: usize,
    /// Frame tag written.
    #[arg(long, value_enum, default_value_t = FrameTagArg::V2)]
    tag: FrameTagArg,
    /// Rounds; each measures every reporter once with a fresh proxy.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// Extra argument for `serve` (repeatable), e.g. `--proxy-arg=--io=epoll`.
    #[arg(long = "proxy-arg", allow_hyphen_values = true)]
    proxy_args: Vec<String>,
    /// Append one CSV row per measured run to this file.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Record a profile of the proxy during each measured run with `perf record`
    /// into this file (`.N` appended per run), e.g. `--perf-record /tmp/p.data`.
    #[arg(long)]
    perf_record: Option<PathBuf>,
    /// Only measure the one-thread references (prost and codec decode), `runs` times.
    #[arg(long)]
    references_only: bool,
    /// Start the proxy, the writer and the sink each in a session of its own
    /// (setsid), as separately started services are: with the kernel's
    /// autogroup scheduling each then gets its own share of the CPUs instead of
    /// every thread competing alone.
    #[arg(long)]
    own_sessions: bool,
    /// Arguments of `perf record` before `-p PID -o FILE`.
    #[arg(long, default_value = "-F 4999 -g", allow_hyphen_values = true)]
    perf_args: String,
}

#[derive(clap::Args, Debug)]
struct WriterArgs {
    #[arg(long)]
    socket: PathBuf,
    #[arg(long)]
    connections: u32,
    #[arg(long)]
    logs_per_frame: u32,
    /// Frames each connection writes.
    #[arg(long)]
    frames: u64,
    #[arg(long)]
    chunk: usize,
    /// Session index of the first connection.
    #[arg(long)]
    first_index: u32,
    #[arg(long, value_enum)]
    tag: FrameTagArg,
}

#[derive(clap::Args, Debug)]
struct FloorArgs {
    #[arg(long)]
    socket: PathBuf,
    #[arg(long)]
    connections: u32,
    /// Logs to validate before reporting.
    #[arg(long)]
    logs: u64,
    /// Also copy each frame's logs into a request buffer.
    #[arg(long)]
    copy: bool,
}

fn tag(arg: FrameTagArg) -> Tag {
    match arg {
        FrameTagArg::V1 => Tag::V1,
        FrameTagArg::V2 => Tag::V2,
    }
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Some(Cmd::Writer(args)) => writer(&args),
        Some(Cmd::Floor(args)) => floor(&args),
        None => harness(&cli.run),
    };
    if let Err(err) = result {
        eprintln!("e2e_bench: {err}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------- the writer

/// Pre-encodes, connects, says `ready`, waits for a line on stdin, writes
/// everything, says `done <elapsed ns> <cpu ns of the writing>`.
fn writer(args: &WriterArgs) -> io::Result<()> {
    let mut streams = Vec::new();
    for i in 0..args.connections {
        let mut stream =
            SessionStream::new(args.first_index + i, args.logs_per_frame, tag(args.tag))
                .map_err(io::Error::other)?;
        let mut bytes = Vec::new();
        stream.append_frames(args.frames, Timestamps::Workload, &mut bytes);
        streams.push(bytes);
    }
    let mut conns = Vec::new();
    for _ in 0..args.connections {
        conns.push(UnixStream::connect(&args.socket)?);
    }
    println!("ready");
    io::stdout().flush()?;
    let mut go = String::new();
    io::stdin().lock().read_line(&mut go)?;
    let cpu_before = process_cpu_ns();
    let started = Instant::now();
    let chunk = args.chunk.max(1);
    thread::scope(|scope| -> io::Result<()> {
        let writers: Vec<_> = conns
            .iter_mut()
            .zip(&streams)
            .map(|(conn, bytes)| {
                scope.spawn(move || -> io::Result<()> {
                    for piece in bytes.chunks(chunk) {
                        conn.write_all(piece)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in writers {
            w.join()
                .map_err(|_| io::Error::other("writer thread panicked"))??;
        }
        Ok(())
    })?;
    let elapsed = started.elapsed();
    let cpu = process_cpu_ns().saturating_sub(cpu_before);
    println!("done {} {cpu}", elapsed.as_nanos());
    io::stdout().flush()?;
    // Hold the connections until told, so the proxy sees no close during the run.
    let mut end = String::new();
    io::stdin().lock().read_line(&mut end)?;
    Ok(())
}

// ---------------------------------------------------------------- the floor

/// Bytes a read asks for.
const FLOOR_READ: usize = 64 * 1024;
/// A request buffer is started again past this many bytes (`floor-copy`).
const FLOOR_REQUEST: usize = 128 * 1024;

/// The bare receiver: accepts `connections`, says `ready`, then reads and validates
/// until `logs` logs are validated, and says `done <ns from the first byte> <cpu ns
/// of this process over the same time> <logs>`; exits at `end` on stdin.
fn floor(args: &FloorArgs) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;

    let listener = std::os::unix::net::UnixListener::bind(&args.socket)?;
    println!("listening");
    io::stdout().flush()?;
    let mut conns = Vec::new();
    for _ in 0..args.connections {
        let (conn, _) = listener.accept()?;
        conn.set_nonblocking(true)?;
        conns.push((conn, bytes::BytesMut::with_capacity(2 * FLOOR_READ)));
    }
    println!("ready");
    io::stdout().flush()?;
    let mut fds: Vec<libc::pollfd> = conns
        .iter()
        .map(|(conn, _)| libc::pollfd {
            fd: conn.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut request: Vec<u8> = Vec::with_capacity(FLOOR_REQUEST + 64 * 1024);
    let mut logs = 0u64;
    let mut started: Option<(Instant, u64)> = None;
    while logs < args.logs {
        if fds.iter().all(|pollfd| pollfd.fd < 0) {
            return Err(io::Error::other(format!(
                "floor: every connection closed at {logs} of {} logs",
                args.logs
            )));
        }
        // SAFETY: `fds` is a live array of `fds.len()` pollfd structs.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 10_000) };
        if ready < 0 {
            return Err(io::Error::last_os_error());
        }
        if ready == 0 {
            return Err(io::Error::other(format!(
                "floor: no data for 10 s at {logs} logs"
            )));
        }
        for (pollfd, (conn, buf)) in fds.iter_mut().zip(conns.iter_mut()) {
            if pollfd.revents == 0 {
                continue;
            }
            pollfd.revents = 0;
            loop {
                // Room for the read; reclaims the buffer's allocation once the
                // frames of the last read are dropped (they are, below). At most
                // FLOOR_READ bytes a read, as the proxy's readers.
                buf.reserve(FLOOR_READ);
                let spare = &mut buf.spare_capacity_mut()[..FLOOR_READ];
                // SAFETY: reads at most `spare.len()` bytes into the spare capacity.
                let n =
                    unsafe { libc::read(conn.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
                if n < 0 {
                    let err = io::Error::last_os_error();
                    if err.kind() == io::ErrorKind::WouldBlock {
                        break;
                    }
                    return Err(err);
                }
                if n == 0 {
                    // The writer closed before every log arrived: poll no more.
                    pollfd.fd = -1;
                    break;
                }
                if started.is_none() {
                    started = Some((Instant::now(), process_cpu_ns()));
                }
                // SAFETY: the kernel initialised the first `n` spare bytes.
                unsafe { buf.set_len(buf.len() + n as usize) };
                let mut data = buf.split().freeze();
                while let Some(head) = data.first_chunk::<HEADER_LEN>() {
                    let header = decode_header(*head).map_err(io::Error::other)?;
                    let end = HEADER_LEN + header.len;
                    if data.len() < end {
                        break;
                    }
                    let payload = data.slice(HEADER_LEN..end);
                    bytes::Buf::advance(&mut data, end);
                    match decode_message(RawFrame {
                        tag: header.tag,
                        payload,
                    }) {
                        Ok(Message::Logs(frame)) => {
                            logs += u64::from(frame.log_count());
                            if args.copy {
                                if request.len() > FLOOR_REQUEST {
                                    request.clear();
                                }
                                request.extend_from_slice(frame.encoded_logs());
                            }
                        }
                        Ok(_) => {}
                        Err(err) => return Err(io::Error::other(err)),
                    }
                }
                // The partial frame at the end goes to the front of the next read.
                let rest = data.to_vec();
                drop(data);
                buf.extend_from_slice(&rest);
            }
        }
    }
    std::hint::black_box(&request);
    let (t0, cpu0) = started.unwrap_or((Instant::now(), process_cpu_ns()));
    let (elapsed, cpu) = (t0.elapsed(), process_cpu_ns() - cpu0);
    println!("done {} {cpu} {logs}", elapsed.as_nanos());
    io::stdout().flush()?;
    let mut end = String::new();
    io::stdin().lock().read_line(&mut end)?;
    Ok(())
}

/// CPU time of this process (all threads, user + system), from getrusage.
fn process_cpu_ns() -> u64 {
    // SAFETY: getrusage only writes the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    ns(usage.ru_utime) + ns(usage.ru_stime)
}

/// CPU time of the calling thread.
fn thread_cpu_ns() -> u64 {
    // SAFETY: clock_gettime writes only the timespec it is given.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
        ts
    };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// ---------------------------------------------------------------- /proc

/// CPU time of a process from `/proc/PID/stat` (utime + stime, clock ticks,
/// threads that ended included), in ns.
fn proc_cpu_ns(pid: u32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = stat_ticks(&stat).ok_or_else(|| io::Error::other("unreadable stat"))?;
    Ok(ticks * 1_000_000_000 / clock_ticks())
}

/// utime + stime of a `stat` line (fields 14 and 15; the name may hold spaces).
fn stat_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state); utime is field 14.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).unwrap_or(100).max(1)
}

/// Per live thread of `pid`: (name, ns on CPU from schedstat, context switches),
/// summed by name.
fn thread_cpu(pid: u32) -> Vec<(String, u64, u64)> {
    let mut by_name: Vec<(String, u64, u64)> = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let name = fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let name = name.trim().to_owned();
        let ns = fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let switches: u64 = fs::read_to_string(dir.join("status"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        match by_name.iter_mut().find(|(n, _, _)| *n == name) {
            Some(entry) => {
                entry.1 += ns;
                entry.2 += switches;
            }
            None => by_name.push((name, ns, switches)),
        }
    }
    by_name.sort();
    by_name
}

/// Busy and total time of all CPUs from `/proc/stat`'s `cpu` line, in clock ticks:
/// busy is everything but idle and iowait (steal included, as time the machine did not
/// give us).
fn machine_ticks() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------- metrics

fn free_addr() -> io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

fn http_get(addr: SocketAddr, path: &str) -> io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (_, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other("no end of headers"))?;
    Ok(body.to_owned())
}

/// ", N requests (L logs each)" for a reporter that made calls, else nothing (the null
/// sink counts none).
fn logs_per_request(c: &Counters) -> String {
    match c.requests {
        0 => String::new(),
        n => format!(
            ", {n} requests ({:.0} logs each)",
            c.forwarded as f64 / n as f64
        ),
    }
}

/// The counters a run needs, from one scrape.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    received: u64,
    forwarded: u64,
    dropped: u64,
    buffer_full: u64,
    rejected_frames: u64,
    /// Requests the destination accepted (`forward_requests_total{result="ok"}`).
    requests: u64,
}

impl Counters {
    fn scrape(addr: SocketAddr) -> io::Result<Self> {
        let text = http_get(addr, "/metrics")?;
        let mut c = Counters::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Some(series) = series.strip_prefix(PREFIX) else {
                continue;
            };
            let value = value.parse::<f64>().unwrap_or(0.0) as u64;
            if series == "logs_received_total" {
                c.received = value;
            } else if series == "logs_forwarded_total" {
                c.forwarded = value;
            } else if series.starts_with("logs_dropped_total") {
                c.dropped += value;
                if series.contains("reason=\"buffer_full\"") {
                    c.buffer_full += value;
                }
            } else if series.starts_with("frames_rejected_total") {
                c.rejected_frames += value;
            } else if series == "forward_requests_total{result=\"ok\"}" {
                c.requests = value;
            }
        }
        Ok(c)
    }

    fn settled(&self) -> u64 {
        self.forwarded + self.dropped
    }

    fn minus(&self, before: &Counters) -> Counters {
        Counters {
            received: self.received - before.received,
            forwarded: self.forwarded - before.forwarded,
            dropped: self.dropped - before.dropped,
            buffer_full: self.buffer_full - before.buffer_full,
            rejected_frames: self.rejected_frames - before.rejected_frames,
            requests: self.requests - before.requests,
        }
    }
}

// ---------------------------------------------------------------- processes

/// A child process killed (and reaped) when dropped.
struct Proc {
    child: Child,
    name: &'static str,
}

impl Proc {
    fn spawn(name: &'static str, command: &mut Command) -> io::Result<Self> {
        if OWN_SESSIONS.load(Ordering::Relaxed) && name != "perf" {
            // SAFETY: setsid is async-signal-safe and touches no memory of ours.
            unsafe {
                command.pre_exec(|| {
                    libc::setsid();
                    Ok(())
                });
            }
        }
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("BOUNDARY_LOG_PROXY_") {
                command.env_remove(key);
            }
        }
        let child = command
            .spawn()
            .map_err(|e| io::Error::other(format!("cannot start {name}: {e}")))?;
        Ok(Self { child, name })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_alive(&mut self) -> io::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(io::Error::other(format!(
                "{} exited early: {status}",
                self.name
            ))),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: signals only our own child, which is not reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(what: &str, proc: &mut Proc, mut ready: impl FnMut() -> bool) -> io::Result<()> {
    let until = Instant::now() + START_LIMIT;
    while !ready() {
        proc.check_alive()?;
        if Instant::now() > until {
            return Err(io::Error::other(format!("{what} not ready in time")));
        }
        thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// A writer process between `ready` and its end.
struct WriterProc {
    proc: Proc,
    stdin: Option<ChildStdin>,
    stdout: Option<BufReader<ChildStdout>>,
    logs: u64,
}

impl WriterProc {
    fn start(args: &RunArgs, socket: &Path, frames: u64, first_index: u32) -> io::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut command = Command::new(exe);
        command
            .arg("writer")
            .arg("--socket")
            .arg(socket)
            .args(["--connections", &args.connections.to_string()])
            .args(["--logs-per-frame", &args.logs_per_frame.to_string()])
            .args(["--frames", &frames.to_string()])
            .args(["--chunk", &args.chunk.to_string()])
            .args(["--first-index", &first_index.to_string()])
            .args(["--tag", tag_name(args.tag)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut proc = Proc::spawn("writer", &mut command)?;
        let stdin = proc.child.stdin.take();
        let mut stdout = proc.child.stdout.take().map(BufReader::new);
        let line = read_line(stdout.as_mut())?;
        if line.trim() != "ready" {
            return Err(io::Error::other(format!("writer said {line:?}")));
        }
        Ok(Self {
            proc,
            stdin,
            stdout,
            logs: frames * u64::from(args.connections) * u64::from(args.logs_per_frame),
        })
    }

    /// Starts the writing; returns when every byte is written: (elapsed, writer CPU).
    fn go(&mut self) -> io::Result<(Duration, u64)> {
        if let Some(stdin) = self.stdin.as_mut() {
            stdin.write_all(b"go\n")?;
            stdin.flush()?;
        }
        let line = read_line(self.stdout.as_mut())?;
        let mut words = line.split_whitespace();
        if words.next() != Some("done") {
            return Err(io::Error::other(format!("writer said {line:?}")));
        }
        let mut number = || {
            words
                .next()
                .and_then(|w| w.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok((Duration::from_nanos(number()), number()))
    }

    /// Lets the writer close its connections and exit.
    fn finish(mut self) -> io::Result<()> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"end\n");
        }
        let status = self.proc.child.wait()?;
        if !status.success() {
            return Err(io::Error::other(format!("writer exited {status}")));
        }
        Ok(())
    }
}

fn tag_name(arg: FrameTagArg) -> &'static str {
    match arg {
        FrameTagArg::V1 => "v1",
        FrameTagArg::V2 => "v2",
    }
}

fn read_line(stdout: Option<&mut BufReader<ChildStdout>>) -> io::Result<String> {
    let mut line = String::new();
    if let Some(out) = stdout {
        out.read_line(&mut line)?;
    }
    Ok(line)
}

// ---------------------------------------------------------------- the harness

/// The proxy (and its sink) of one measurement.
struct Stage {
    proxy: Proc,
    sink: Option<Proc>,
    metrics: SocketAddr,
    socket: PathBuf,
    _dir: TempDir,
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> io::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let base = std::env::temp_dir().join(format!(
            "e2e-bench-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&base)?;
        Ok(Self(base))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn start_stage(args: &RunArgs, bin: &Path, reporter: ReporterKind) -> io::Result<Stage> {
    let dir = TempDir::new()?;
    let socket = dir.0.join("p.sock");
    let metrics = free_addr()?;
    let mut sink = None;
    let mut dest: Vec<String> = Vec::new();
    match reporter {
        ReporterKind::Floor | ReporterKind::FloorCopy => {
            return Err(io::Error::other("the floor runs without the proxy"))
        }
        ReporterKind::Null => dest.extend(["--sink".into(), "null".into()]),
        ReporterKind::Grpc | ReporterKind::Coder => {
            let addr = free_addr()?;
            let mut command = Command::new(bin);
            command
                .args(["sink", "--listen", &addr.to_string(), "--quiet"])
                .args(["--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            if reporter == ReporterKind::Coder {
                command.args(["--protocol", "coder"]);
                dest.extend([
                    "--coder-url".into(),
                    format!("http://{addr}"),
                    "--agent-token".into(),
                    "e2e-bench".into(),
                ]);
            } else {
                dest.extend(["--coderd".into(), format!("http://{addr}")]);
            }
            let mut proc = Proc::spawn("sink", &mut command)?;
            wait_for("sink", &mut proc, || TcpStream::connect(addr).is_ok())?;
            sink = Some(proc);
        }
    }
    let mut command = Command::new(bin);
    command
        .arg("serve")
        .arg("--socket")
        .arg(&socket)
        .args([
            "--metrics-addr",
            &metrics.to_string(),
            "--log-level",
            "warn",
        ])
        .args(&dest)
        .args(&args.proxy_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let mut proxy = Proc::spawn("serve", &mut command)?;
    wait_for("serve", &mut proxy, || {
        socket.exists() && Counters::scrape(metrics).is_ok()
    })?;
    Ok(Stage {
        proxy,
        sink,
        metrics,
        socket,
        _dir: dir,
    })
}

/// Waits until the proxy has settled (forwarded or dropped) `logs` logs in all.
fn settle(stage: &mut Stage, logs: u64) -> io::Result<Counters> {
    let until = Instant::now() + SETTLE_LIMIT;
    loop {
        let now = Counters::scrape(stage.metrics)?;
        if now.settled() >= logs && now.received >= logs {
            return Ok(now);
        }
        stage.proxy.check_alive()?;
        if Instant::now() > until {
            return Err(io::Error::other(format!(
                "not settled in {SETTLE_LIMIT:?}: {now:?}, {logs} logs written"
            )));
        }
        thread::sleep(SETTLE_POLL);
    }
}

/// One measured run's results.
struct Row {
    reporter: ReporterKind,
    logs: u64,
    counters: Counters,
    written: Duration,
    settled: Duration,
    proxy_cpu_ns: u64,
    threads: Vec<(String, u64, u64)>,
    writer_cpu_ns: u64,
    sink_cpu_ns: Option<u64>,
    load_before: String,
    load_after: String,
    /// Share of all CPUs' time spent busy (any process) over the run, 0..1.
    machine_busy: f64,
}

impl Row {
    fn delivered_per_s(&self) -> f64 {
        self.counters.forwarded as f64 / self.settled.as_secs_f64()
    }
    fn per_log(&self, ns: u64) -> f64 {
        ns as f64 / self.counters.received.max(1) as f64
    }
}

/// `perf record` attached to the proxy; stopped (SIGINT, so it writes its file) when dropped.
struct Profiler(Option<Proc>);

impl Profiler {
    fn start(args: &RunArgs, pid: u32, run: u32) -> io::Result<Self> {
        let Some(path) = &args.perf_record else {
            return Ok(Self(None));
        };
        let mut out = path.clone().into_os_string();
        out.push(format!(".{run}"));
        let mut command = Command::new("perf");
        command
            .arg("record")
            .args(args.perf_args.split_whitespace())
            .args(["-p", &pid.to_string(), "-o"])
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let proc = Proc::spawn("perf", &mut command)?;
        // perf needs a moment to attach to every thread.
        thread::sleep(Duration::from_millis(300));
        Ok(Self(Some(proc)))
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        if let Some(mut proc) = self.0.take() {
            // SAFETY: signals only our own child, which is not reaped yet.
            unsafe { libc::kill(proc.pid() as libc::pid_t, libc::SIGINT) };
            let _ = proc.child.wait();
        }
    }
}

fn measure(args: &RunArgs, bin: &Path, reporter: ReporterKind, run: u32) -> io::Result<Row> {
    let mut stage = start_stage(args, bin, reporter)?;
    let per_conn_logs = args.logs / u64::from(args.connections);
    let frames = (per_conn_logs / u64::from(args.logs_per_frame)).max(1);

    // Warm-up: a tenth of the run, other sessions.
    let warm = WriterProc::start(args, &stage.socket, (frames / 10).max(1), WARMUP_INDEX)?;
    let mut warm = warm;
    warm.go()?;
    let warm_logs = warm.logs;
    warm.finish()?;
    let before = settle(&mut stage, warm_logs)?;

    let (mut writer, logs) = match args.writer {
        WriterKind::Frames => {
            let w = WriterProc::start(args, &stage.socket, frames, MEASURED_INDEX)?;
            let logs = w.logs;
            (Some(w), logs)
        }
        WriterKind::Loadgen => (
            None,
            frames * u64::from(args.connections) * u64::from(args.logs_per_frame),
        ),
    };
    let profiler = Profiler::start(args, stage.proxy.pid(), run)?;
    let load_before = loadavg();
    let machine_before = machine_ticks();
    let proxy_before = proc_cpu_ns(stage.proxy.pid())?;
    let threads_before = thread_cpu(stage.proxy.pid());
    let sink_before = match &stage.sink {
        Some(s) => Some(proc_cpu_ns(s.pid())?),
        None => None,
    };
    let started = Instant::now();
    let (written, writer_cpu_ns) = match writer.as_mut() {
        Some(w) => w.go()?,
        None => {
            let mut command = Command::new(bin);
            command
                .arg("loadgen")
                .arg("--socket")
                .arg(&stage.socket)
                .args(["--connections", &args.connections.to_string()])
                .args(["--frames", &frames.to_string()])
                .args(["--logs-per-frame", &args.logs_per_frame.to_string()])
                .args(["--tag", tag_name(args.tag)])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut proc = Proc::spawn("loadgen", &mut command)?;
            let pid = proc.pid();
            let mut cpu = 0;
            loop {
                if let Ok(ns) = proc_cpu_ns(pid) {
                    cpu = ns;
                }
                if proc.child.try_wait()?.is_some() {
                    break;
                }
                thread::sleep(Duration::from_millis(1));
            }
            (started.elapsed(), cpu)
        }
    };
    let after = settle(&mut stage, before.settled() + logs)?;
    let settled = started.elapsed();
    let proxy_after = proc_cpu_ns(stage.proxy.pid())?;
    let threads_after = thread_cpu(stage.proxy.pid());
    let sink_after = match &stage.sink {
        Some(s) => Some(proc_cpu_ns(s.pid())?),
        None => None,
    };
    let load_after = loadavg();
    let machine_after = machine_ticks();
    drop(profiler);
    if let Some(w) = writer {
        w.finish()?;
    }
    let threads = threads_after
        .iter()
        .map(|(name, ns, switches)| {
            let (was_ns, was_switches) = threads_before
                .iter()
                .find(|(n, _, _)| n == name)
                .map_or((0, 0), |(_, b, s)| (*b, *s));
            (
                name.clone(),
                ns.saturating_sub(was_ns),
                switches.saturating_sub(was_switches),
            )
        })
        .filter(|(_, ns, _)| *ns > 0)
        .collect();
    drop(stage);
    Ok(Row {
        reporter,
        logs,
        counters: after.minus(&before),
        written,
        settled,
        proxy_cpu_ns: proxy_after - proxy_before,
        threads,
        writer_cpu_ns,
        sink_cpu_ns: sink_before.zip(sink_after).map(|(b, a)| a - b),
        load_before,
        load_after,
        machine_busy: (machine_after.0 - machine_before.0) as f64
            / (machine_after.1 - machine_before.1).max(1) as f64,
    })
}

/// One measured run of the bare receiver.
struct FloorRow {
    logs: u64,
    written: Duration,
    /// From the receiver's first byte to its last log validated.
    received: Duration,
    cpu_ns: u64,
    writer_cpu_ns: u64,
    load_before: String,
    load_after: String,
    machine_busy: f64,
}

fn measure_floor(args: &RunArgs, copy: bool) -> io::Result<FloorRow> {
    let dir = TempDir::new()?;
    let socket = dir.0.join("f.sock");
    let per_conn_logs = args.logs / u64::from(args.connections);
    let frames = (per_conn_logs / u64::from(args.logs_per_frame)).max(1);
    let logs = frames * u64::from(args.connections) * u64::from(args.logs_per_frame);
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("floor")
        .arg("--socket")
        .arg(&socket)
        .args(["--connections", &args.connections.to_string()])
        .args(["--logs", &logs.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    if copy {
        command.arg("--copy");
    }
    let mut proc = Proc::spawn("floor", &mut command)?;
    let mut stdin = proc.child.stdin.take();
    let mut stdout = proc.child.stdout.take().map(BufReader::new);
    let mut expect = |word: &str| -> io::Result<String> {
        let line = read_line(stdout.as_mut())?;
        if line.split_whitespace().next() != Some(word) {
            return Err(io::Error::other(format!("floor said {line:?}")));
        }
        Ok(line)
    };
    expect("listening")?;
    let mut writer = WriterProc::start(args, &socket, frames, MEASURED_INDEX)?;
    expect("ready")?;
    let load_before = loadavg();
    let machine_before = machine_ticks();
    let (written, writer_cpu_ns) = writer.go()?;
    let line = expect("done")?;
    let machine_after = machine_ticks();
    let load_after = loadavg();
    let numbers: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    let [received, cpu_ns, validated] = numbers[..] else {
        return Err(io::Error::other(format!("floor said {line:?}")));
    };
    if validated != logs {
        return Err(io::Error::other(format!(
            "floor validated {validated} of {logs} logs"
        )));
    }
    if let Some(mut stdin) = stdin.take() {
        let _ = stdin.write_all(b"end\n");
    }
    writer.finish()?;
    proc.child.wait()?;
    Ok(FloorRow {
        logs,
        written,
        received: Duration::from_nanos(received),
        cpu_ns,
        writer_cpu_ns,
        load_before,
        load_after,
        machine_busy: (machine_after.0 - machine_before.0) as f64
            / (machine_after.1 - machine_before.1).max(1) as f64,
    })
}

/// CPU ns per log on this thread, over the frames the writer writes.
struct References {
    /// prost's full decode of each frame's payload (after framing).
    prost: f64,
    /// The codec: framing (the copy into frame arenas) and validation.
    codec: f64,
    /// The codec's validation alone (`decode_message` of frames already cut).
    validation: f64,
}

fn references(args: &RunArgs) -> io::Result<References> {
    let frames = (200_000 / u64::from(args.logs_per_frame)).max(1);
    let mut bytes = Vec::new();
    SessionStream::new(MEASURED_INDEX, args.logs_per_frame, tag(args.tag))
        .map_err(io::Error::other)?
        .append_frames(frames, Timestamps::Workload, &mut bytes);
    let logs = frames * u64::from(args.logs_per_frame);
    let mut best = (f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..3 {
        let t = thread_cpu_ns();
        let mut prost_logs = 0u64;
        for_each_payload(&bytes, args.chunk, |tag, payload| {
            prost_logs += match tag {
                Tag::V1 => ReportBoundaryLogsRequest::decode(payload)
                    .map(|r| r.logs.len() as u64)
                    .unwrap_or(0),
                Tag::V2 => match BoundaryMessage::decode(payload) {
                    Ok(BoundaryMessage {
                        msg: Some(Msg::Logs(r)),
                    }) => r.logs.len() as u64,
                    _ => 0,
                },
            };
        });
        let prost_ns = thread_cpu_ns() - t;
        // As the reader does it: each read framed, then its frames validated while
        // their bytes are in cache; the validation timed apart.
        let t = thread_cpu_ns();
        let mut ours = 0u64;
        let mut validation_ns = 0u64;
        let mut decoder = FrameDecoder::new();
        let mut raw = Vec::new();
        for read in bytes.chunks(args.chunk.max(1)) {
            let mut input = read;
            while let Ok(Some(frame)) = decoder.decode(&mut input) {
                raw.push(frame);
            }
            let v = thread_cpu_ns();
            for frame in raw.drain(..) {
                if let Ok(Message::Logs(frame)) = decode_message(frame) {
                    ours += u64::from(frame.log_count());
                    std::hint::black_box(&frame);
                }
            }
            validation_ns += thread_cpu_ns() - v;
        }
        let ours_ns = thread_cpu_ns() - t;
        if prost_logs != logs || ours != logs {
            return Err(io::Error::other("reference decode lost logs"));
        }
        best.0 = best.0.min(prost_ns as f64 / logs as f64);
        best.1 = best.1.min(ours_ns as f64 / logs as f64);
        best.2 = best.2.min(validation_ns as f64 / logs as f64);
    }
    Ok(References {
        prost: best.0,
        codec: best.1,
        validation: best.2,
    })
}

fn for_each_payload(bytes: &[u8], chunk: usize, mut each: impl FnMut(Tag, bytes::Bytes)) {
    let mut decoder = FrameDecoder::new();
    for read in bytes.chunks(chunk.max(1)) {
        let mut input = read;
        while let Ok(Some(frame)) = decoder.decode(&mut input) {
            each(frame.tag, frame.payload);
        }
    }
}

fn harness(args: &RunArgs) -> io::Result<()> {
    OWN_SESSIONS.store(args.own_sessions, Ordering::Relaxed);
    let bin = match &args.bin {
        Some(bin) => bin.clone(),
        None => {
            let exe = std::env::current_exe()?;
            // target/<profile>/examples/e2e_bench -> target/<profile>/boundary-log-proxy
            exe.parent()
                .and_then(Path::parent)
                .map(|d| d.join("boundary-log-proxy"))
                .ok_or_else(|| io::Error::other("cannot locate the proxy binary; pass --bin"))?
        }
    };
    if !bin.exists() {
        return Err(io::Error::other(format!(
            "{} does not exist; cargo build --release --bin boundary-log-proxy",
            bin.display()
        )));
    }
    println!(
        "# e2e_bench: {} connections x {} logs/frame, {} logs a run, {}-byte writes, tag {}, writer {:?}, serve {:?}, own sessions {}",
        args.connections,
        args.logs_per_frame,
        args.logs,
        args.chunk,
        tag_name(args.tag),
        args.writer,
        args.proxy_args,
        args.own_sessions
    );
    let mut csv = match &args.csv {
        Some(path) => {
            let new = !path.exists();
            let mut file = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            if new {
                writeln!(file, "reporter,writer,connections,logs_per_frame,logs,delivered,dropped,buffer_full,seconds,delivered_logs_per_s,proxy_cpu_ns_per_log,writer_cpu_ns_per_log,sink_cpu_ns_per_log,prost_ns_per_log,codec_ns_per_log,proxy_over_prost,load_before")?;
            }
            Some(file)
        }
        None => None,
    };
    for round in 0..args.runs {
        let refs = references(args)?;
        let (prost_ns, codec_ns) = (refs.prost, refs.codec);
        println!(
            "round {round}: reference on one thread: prost decode {prost_ns:.0} ns/log, codec decode (framing + validation) {codec_ns:.0} ns/log, validation alone {:.0} ns/log; load {}",
            refs.validation,
            loadavg()
        );
        if args.references_only {
            continue;
        }
        for &reporter in &args.reporter {
            if matches!(reporter, ReporterKind::Floor | ReporterKind::FloorCopy) {
                let row = measure_floor(args, reporter == ReporterKind::FloorCopy)?;
                let per_log = |ns: u64| ns as f64 / row.logs as f64;
                let cpu = per_log(row.cpu_ns);
                println!(
                    "round {round} {reporter:?}: {} logs written and validated by the bare receiver; written in {:.3} s, validated in {:.3} s: {:.2} M logs/s; receiver CPU {cpu:.0} ns/log ({:.2} cores; {:.2}x prost's decode); writer {:.0} ns/log; machine {:.0}% busy; load {} -> {}",
                    row.logs,
                    row.written.as_secs_f64(),
                    row.received.as_secs_f64(),
                    row.logs as f64 / row.received.as_secs_f64() / 1e6,
                    row.cpu_ns as f64 / row.received.as_nanos().max(1) as f64,
                    cpu / prost_ns,
                    per_log(row.writer_cpu_ns),
                    row.machine_busy * 100.0,
                    row.load_before,
                    row.load_after,
                );
                if let Some(file) = csv.as_mut() {
                    writeln!(
                        file,
                        "{reporter:?},{:?},{},{},{},{},0,0,{:.4},{:.0},{cpu:.1},{:.1},,{prost_ns:.1},{codec_ns:.1},{:.3},{}",
                        args.writer,
                        args.connections,
                        args.logs_per_frame,
                        row.logs,
                        row.logs,
                        row.received.as_secs_f64(),
                        row.logs as f64 / row.received.as_secs_f64(),
                        per_log(row.writer_cpu_ns),
                        cpu / prost_ns,
                        row.load_before,
                    )?;
                }
                continue;
            }
            let row = measure(args, &bin, reporter, round)?;
            let proxy = row.per_log(row.proxy_cpu_ns);
            let sink = row.sink_cpu_ns.map(|ns| row.per_log(ns));
            println!(
                "round {round} {:?}: {} logs written, {} received, {} delivered, {} dropped ({} buffer_full), {} frames rejected{}; written in {:.3} s, settled in {:.3} s: {:.2} M delivered logs/s; proxy CPU {:.0} ns/log ({:.2} cores; {:.2}x prost's decode); writer {:.0} ns/log{}; machine {:.0}% busy; load {} -> {}",
                row.reporter,
                row.logs,
                row.counters.received,
                row.counters.forwarded,
                row.counters.dropped,
                row.counters.buffer_full,
                row.counters.rejected_frames,
                logs_per_request(&row.counters),
                row.written.as_secs_f64(),
                row.settled.as_secs_f64(),
                row.delivered_per_s() / 1e6,
                proxy,
                row.proxy_cpu_ns as f64 / row.settled.as_nanos() as f64,
                proxy / prost_ns,
                row.per_log(row.writer_cpu_ns),
                sink.map(|s| format!("; sink {s:.0} ns/log")).unwrap_or_default(),
                row.machine_busy * 100.0,
                row.load_before,
                row.load_after,
            );
            let threads: Vec<String> = row
                .threads
                .iter()
                .map(|(name, ns, switches)| {
                    format!(
                        "{name} {:.0} ns/log, {:.1} switches/1000 logs",
                        row.per_log(*ns),
                        row.per_log(*switches * 1000)
                    )
                })
                .collect();
            println!("    per thread (schedstat): {}", threads.join("; "));
            if let Some(file) = csv.as_mut() {
                writeln!(
                    file,
                    "{:?},{:?},{},{},{},{},{},{},{:.4},{:.0},{:.1},{:.1},{},{:.1},{:.1},{:.3},{}",
                    row.reporter,
                    args.writer,
                    args.connections,
                    args.logs_per_frame,
                    row.logs,
                    row.counters.forwarded,
                    row.counters.dropped,
                    row.counters.buffer_full,
                    row.settled.as_secs_f64(),
                    row.delivered_per_s(),
                    proxy,
                    row.per_log(row.writer_cpu_ns),
                    sink.map(|s| format!("{s:.1}")).unwrap_or_default(),
                    prost_ns,
                    codec_ns,
                    proxy / prost_ns,
                    row.load_before,
                )?;
            }
        }
    }
    Ok(())
}
