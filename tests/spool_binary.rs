//! The disk spool end to end with the real binary and a gRPC coderd that is down:
//! 50,000 logs arrive (far more than the 4096-frame ring holds), the proxy stops
//! (SIGTERM, or SIGKILL in the middle of the outage), and a new proxy on the same
//! spool directory delivers every spooled log once coderd is back, each session in
//! order, nothing counted as dropped. Also: a second proxy on a spool directory in
//! use is refused with exit 1.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use support::coderd::{Behaviour, FakeCoderd, Received};
use support::faults::{frames, write_frames};
use support::proxy::{
    assert_accounting_totals, eventually, free_addr, stopped_totals, Exited, Process, Scrape,
    PATIENCE,
};

/// Deletes the directory `path` a running proxy writes in, then runs `then` (which
/// may put something else at the path). The proxy may start a file in it while it
/// is being removed (ENOTEMPTY), or make it again before `then` runs: tried until
/// both succeed in turn.
fn replace_directory(path: &Path, then: impl Fn(&Path) -> std::io::Result<()>) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let removed = match std::fs::remove_dir_all(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        };
        let done = removed.and_then(|()| then(path));
        if done.is_ok() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "could not replace {}: {done:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

const SESSIONS: usize = 5;
const FRAMES_PER_SESSION: usize = 1000;
const LOGS_PER_FRAME: usize = 10;
const LOGS: u64 = (SESSIONS * FRAMES_PER_SESSION * LOGS_PER_FRAME) as u64;

struct Serve {
    proxy: Process,
    socket: std::path::PathBuf,
    metrics: SocketAddr,
}

async fn serve(dir: &Path, coderd: &str, extra: &[&str]) -> Serve {
    let socket = dir.join("boundary.sock");
    let spool = dir.join("spool");
    let metrics = free_addr();
    let (socket_arg, spool_arg, metrics_arg) = (
        socket.to_str().unwrap().to_owned(),
        spool.to_str().unwrap().to_owned(),
        metrics.to_string(),
    );
    let mut args = vec![
        "serve",
        "--socket",
        &socket_arg,
        "--coderd",
        coderd,
        "--spool-dir",
        &spool_arg,
        "--metrics-addr",
        &metrics_arg,
        "--shutdown-timeout",
        "3s",
        "--log-format",
        "json",
    ];
    if !extra.contains(&"--call-timeout") {
        args.extend(["--call-timeout", "2s"]);
    }
    args.extend_from_slice(extra);
    let mut proxy = Process::spawn(&args);
    proxy.wait_for_socket(&socket, "listening").await;
    Serve {
        proxy,
        socket,
        metrics,
    }
}

/// Writes every session's frames on its own connection, in bursts of 100 frames
/// (each well under the ring's size) `pause` apart; returns the frames written whole.
async fn boundary_writes(socket: &Path, pause: Duration) -> usize {
    let mut writers = Vec::new();
    for s in 0..SESSIONS {
        let socket = socket.to_owned();
        writers.push(tokio::task::spawn_blocking(move || {
            let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
            let all = frames(
                &format!("session-{s}"),
                0,
                FRAMES_PER_SESSION,
                LOGS_PER_FRAME,
            );
            let mut written = 0;
            for burst in all.chunks(100) {
                let n = write_frames(&mut stream, burst);
                written += n;
                if n < burst.len() {
                    break;
                }
                std::thread::sleep(pause);
            }
            written
        }));
    }
    let mut total = 0;
    for w in writers {
        total += w.await.unwrap();
    }
    total
}

/// [`boundary_writes`], checking that every frame was written whole.
async fn write_everything(serve: &Serve, pause: Duration) {
    assert_eq!(
        boundary_writes(&serve.socket, pause).await,
        SESSIONS * FRAMES_PER_SESSION
    );
}

/// Each session's sequence numbers in the order coderd accepted them.
fn arrival_order(requests: &[Received]) -> BTreeMap<String, Vec<i32>> {
    let mut out: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for r in requests {
        out.entry(r.request.session_id.clone())
            .or_default()
            .extend(r.request.logs.iter().map(|l| l.sequence_number));
    }
    out
}

fn every_log_in_order() -> BTreeMap<String, Vec<i32>> {
    (0..SESSIONS)
        .map(|s| {
            let n = (FRAMES_PER_SESSION * LOGS_PER_FRAME) as i32;
            (format!("session-{s}"), (0..n).collect())
        })
        .collect()
}

fn assert_exit_0(exited: &Exited) {
    assert!(
        exited.status.success(),
        "exit {:?}; stderr:\n{}",
        exited.status,
        exited.stderr.join("\n")
    );
}

/// Restarts coderd, runs a proxy on the same spool, and waits until `logs` logs
/// were delivered and the spool is empty; returns the proxy's final totals.
async fn replay_after_restart(
    dir: &Path,
    coderd: &mut FakeCoderd,
    logs: u64,
) -> boundary_log_proxy::metrics::Accounting {
    coderd.restart().await;
    let second = serve(dir, &coderd.addr(), &[]).await;
    let scrape = second
        .proxy
        .scrape_until(second.metrics, "the spool replayed", |s: &Scrape| {
            s.get("logs_forwarded_total", None) >= logs && s.get("spool_logs", None) == 0
        })
        .await;
    assert_eq!(scrape.get("logs_replayed_total", None), logs);
    let exited = second.proxy.terminate().await;
    assert_exit_0(&exited);
    stopped_totals(&exited.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coderd_down_50000_logs_then_sigterm_and_a_restart_deliver_every_log_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut coderd = FakeCoderd::start().await;
    coderd.stop().await;
    let first = serve(dir.path(), &coderd.addr(), &[]).await;
    write_everything(&first, Duration::from_millis(10)).await;
    let scrape = first
        .proxy
        .scrape_until(first.metrics, "every log spooled", |s: &Scrape| {
            s.get("logs_received_total", None) == LOGS && s.get("spool_logs", None) == LOGS
        })
        .await;
    assert_eq!(scrape.get("ring_occupancy", None), 0);
    let exited = first.proxy.terminate().await;
    assert_exit_0(&exited);
    let stopped = stopped_totals(&exited.stderr);
    assert_eq!(stopped.received, LOGS);
    assert_eq!(stopped.spooled, LOGS, "{stopped:?}");
    assert_eq!(stopped.settled(), 0, "nothing dropped: {stopped:?}");
    assert_accounting_totals(stopped, 0);

    let replayed = replay_after_restart(dir.path(), &mut coderd, LOGS).await;
    assert_eq!(replayed.recovered, LOGS);
    assert_eq!(replayed.forwarded, LOGS);
    assert_eq!(replayed.settled(), LOGS, "nothing dropped: {replayed:?}");
    assert_accounting_totals(replayed, 0);
    assert_eq!(
        arrival_order(&coderd.requests()),
        every_log_in_order(),
        "every log once, each session in order"
    );
}

/// A proxy on `dir` that spooled every log written while coderd was down, and
/// that coderd (still down).
async fn every_log_spooled(dir: &Path) -> (Serve, FakeCoderd) {
    let mut coderd = FakeCoderd::start().await;
    coderd.stop().await;
    let first = serve(dir, &coderd.addr(), &[]).await;
    write_everything(&first, Duration::from_millis(10)).await;
    first
        .proxy
        .scrape_until(first.metrics, "every log spooled", |s: &Scrape| {
            s.get("spool_logs", None) == LOGS
        })
        .await;
    (first, coderd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_directory_deleted_during_the_outage_is_made_again_and_a_restart_delivers_everything(
) {
    // A tmp cleaner (or an operator) deletes the spool directory while it holds the
    // outage's logs: they live on in the open files only, so the proxy writes them
    // into the directory made again, and the next proxy replays them.
    let dir = tempfile::tempdir().unwrap();
    let (first, mut coderd) = every_log_spooled(dir.path()).await;
    replace_directory(&dir.path().join("spool"), |_| Ok(()));
    let message = "the disk spool's directory or files were deleted or replaced; wrote the records it held into it again";
    eventually("the spool directory made again", || {
        first.proxy.logged(message)
    })
    .await;
    let exited = first.proxy.terminate().await;
    assert_exit_0(&exited);
    assert_eq!(stopped_totals(&exited.stderr).spooled, LOGS);

    let replayed = replay_after_restart(dir.path(), &mut coderd, LOGS).await;
    assert_eq!(replayed.recovered, LOGS);
    assert_eq!(replayed.settled(), LOGS, "nothing dropped: {replayed:?}");
    assert_eq!(
        arrival_order(&coderd.requests()),
        every_log_in_order(),
        "every log once, each session in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_directory_deleted_and_replaced_by_a_file_counts_its_logs_at_stop_not_as_spooled() {
    // The directory cannot be made again (a file took its name): the records live
    // only in the open files and end with the process. The stop counts them as
    // spool_full; it said spool_logs=50000 and a restart found nothing.
    let dir = tempfile::tempdir().unwrap();
    let (first, _coderd) = every_log_spooled(dir.path()).await;
    let spool = dir.path().join("spool");
    replace_directory(&spool, |path| std::fs::write(path, b"not a directory"));
    eventually("the failed rebuild logged", || {
        first
            .proxy
            .logged("making the deleted disk spool directory again")
    })
    .await;
    let exited = first.proxy.terminate().await;
    assert_exit_0(&exited);
    let totals = stopped_totals(&exited.stderr);
    assert_eq!(totals.spooled, 0, "{totals:?}");
    assert_eq!(totals.dropped_spool_full, LOGS, "{totals:?}");
    assert_accounting_totals(totals, 0);
    assert!(
        exited
            .stderr
            .iter()
            .any(|l| l
                .contains("the disk spool's files were deleted and could not be written again")),
        "{:#?}",
        exited.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_in_the_middle_of_the_outage_loses_no_log_that_reached_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let mut coderd = FakeCoderd::start().await;
    coderd.stop().await;
    let first = serve(dir.path(), &coderd.addr(), &["--spool-fsync", "always"]).await;
    let writing = {
        let socket = first.socket.clone();
        tokio::spawn(async move { boundary_writes(&socket, Duration::from_millis(100)).await })
    };
    // Mid-outage, while boundary is still writing.
    let before_kill = first
        .proxy
        .scrape_until(first.metrics, "a part spooled", |s: &Scrape| {
            s.get("logs_spooled_total", None) >= LOGS / 3
        })
        .await;
    first.proxy.signal(libc::SIGKILL);
    let spooled = before_kill.get("logs_spooled_total", None);
    let killed = first.proxy.wait().await;
    assert!(!killed.status.success());
    let _ = writing.await;
    assert!(spooled < LOGS, "killed before the end: {spooled}");

    coderd.restart().await;
    let second = serve(dir.path(), &coderd.addr(), &[]).await;
    let at_start = second.proxy.scrape(second.metrics).await;
    let recovered = at_start.get("logs_recovered_total", None);
    assert!(recovered >= spooled, "{recovered} found, {spooled} spooled");
    let scrape = second
        .proxy
        .scrape_until(second.metrics, "the spool replayed", |s: &Scrape| {
            s.get("spool_logs", None) == 0
        })
        .await;
    let corrupt = scrape.get("logs_dropped_total", Some(r#"reason="spool_corrupt""#));
    assert_eq!(
        scrape.get("logs_forwarded_total", None),
        recovered - corrupt
    );
    let exited = second.proxy.terminate().await;
    assert_exit_0(&exited);
    let totals = stopped_totals(&exited.stderr);
    assert_accounting_totals(totals, 0);

    // Each session got a gap-free prefix of its logs, in order, each once: the
    // spool kept the oldest frames, and only what was spooled came back.
    let got = arrival_order(&coderd.requests());
    let mut delivered = 0u64;
    for (session, seqs) in &got {
        assert_eq!(
            *seqs,
            (0..seqs.len() as i32).collect::<Vec<_>>(),
            "{session}"
        );
        delivered += seqs.len() as u64;
    }
    assert!(
        delivered >= spooled,
        "every log spooled before the kill was delivered: {delivered} of {spooled}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coderd_that_stops_answering_sends_the_backlog_to_the_spool_not_to_buffer_full() {
    // coderd hangs: it neither answers nor refuses a call until the call timeout
    // (5 s here), by which time the ring has overflowed. Once a call has gone
    // unanswered for 2 s and the ring is half full, the backlog goes to the spool:
    // nothing is dropped, and once coderd answers again (the calls it hangs on time
    // out and are retried) every log arrives, each session in order.
    let dir = tempfile::tempdir().unwrap();
    let coderd = FakeCoderd::start().await;
    coderd.set_behaviour(Behaviour::normal().with_delay(Duration::from_secs(3600)));
    let first = serve(dir.path(), &coderd.addr(), &["--call-timeout", "5s"]).await;
    // Five sessions writing 100 frames every 500 ms: 1000 frames a second, which
    // fill half the 4096-frame ring in about 2 s and all of it in about 4 s.
    write_everything(&first, Duration::from_millis(500)).await;
    first
        .proxy
        .scrape_until(first.metrics, "every log received", |s: &Scrape| {
            s.get("logs_received_total", None) == LOGS
        })
        .await;
    coderd.set_behaviour(Behaviour::normal());
    let scrape = first
        .proxy
        .scrape_until(first.metrics, "every log delivered", |s: &Scrape| {
            s.get("logs_forwarded_total", None) == LOGS && s.get("spool_logs", None) == 0
        })
        .await;
    assert_eq!(
        scrape.get("logs_dropped_total", Some("reason=\"buffer_full\"")),
        0
    );
    assert!(scrape.get("logs_spooled_total", None) > 0);
    let exited = first.proxy.terminate().await;
    assert_exit_0(&exited);
    let stopped = stopped_totals(&exited.stderr);
    assert_eq!(stopped.settled(), LOGS, "nothing dropped: {stopped:?}");
    assert_accounting_totals(stopped, 0);
    assert_eq!(
        arrival_order(&coderd.requests()),
        every_log_in_order(),
        "every log once, each session in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_proxy_on_a_spool_directory_in_use_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let coderd = FakeCoderd::start().await;
    let first = serve(dir.path(), &coderd.addr(), &[]).await;
    let other = dir.path().join("other.sock");
    let spool = dir.path().join("spool");
    let second = Process::spawn(&[
        "serve",
        "--socket",
        other.to_str().unwrap(),
        "--coderd",
        &coderd.addr(),
        "--spool-dir",
        spool.to_str().unwrap(),
    ]);
    let exited = second.wait().await;
    assert_eq!(exited.status.code(), Some(1), "{:?}", exited.stderr);
    let stderr = exited.stderr.join("\n");
    assert!(stderr.contains("in use by another process"), "{stderr}");
    assert!(!other.exists(), "refused before binding its socket");
    let mut first = first;
    assert!(first.proxy.is_running(), "the owner keeps running");
    assert_exit_0(&first.proxy.terminate().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_goes_to_the_spool_while_every_delivery_slot_is_retrying() {
    // Five sessions written all at once: four requests take the four delivery slots
    // and retry against the stopped coderd before any of them has failed, and no
    // slot frees up for minutes (--retry-max-elapsed). The ring fills; that alone
    // must send the backlog to the spool, not the end of a request's retries.
    let dir = tempfile::tempdir().unwrap();
    let mut coderd = FakeCoderd::start().await;
    coderd.stop().await;
    let first = serve(dir.path(), &coderd.addr(), &["--retry-max-elapsed", "10m"]).await;
    write_everything(&first, Duration::ZERO).await;
    let scrape = first
        .proxy
        .scrape_until(first.metrics, "the backlog spooled", |s: &Scrape| {
            s.get("logs_spooled_total", None) > 0
        })
        .await;
    assert!(scrape.get("spool_logs", None) > 0);
    let exited = first.proxy.terminate().await;
    assert_exit_0(&exited);
    let stopped = stopped_totals(&exited.stderr);
    assert_accounting_totals(stopped, 0);
    // Everything not lost to the full ring is on disk at exit, and comes back.
    assert_eq!(stopped.spooled, LOGS - stopped.dropped_buffer_full);
    let replayed = replay_after_restart(dir.path(), &mut coderd, stopped.spooled).await;
    assert_eq!(replayed.forwarded, stopped.spooled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_smaller_than_a_request_may_be_is_warned_of_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let coderd = FakeCoderd::start().await;
    let small = serve(dir.path(), &coderd.addr(), &["--spool-max-bytes", "20000"]).await;
    let exited = small.proxy.terminate().await;
    assert_exit_0(&exited);
    let stderr = exited.stderr.join("\n");
    assert!(stderr.contains("--spool-max-bytes is smaller"), "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    let large = serve(dir.path(), &coderd.addr(), &[]).await;
    let exited = large.proxy.terminate().await;
    assert!(!exited.stderr.join("\n").contains("--spool-max-bytes"));
}

/// With coderd down, a proxy whose 8192-frame ring holds all 5,000 frames and whose
/// 1 MB spool holds a few thousand logs, after every log was received: the spool
/// holds some, the ring the rest.
async fn full_spool_outage(dir: &Path, coderd: &FakeCoderd) -> (Serve, Scrape) {
    let first = serve(
        dir,
        &coderd.addr(),
        &[
            "--ring-capacity",
            "8192",
            "--batch-max-logs",
            "100",
            "--spool-max-bytes",
            "1000000",
        ],
    )
    .await;
    write_everything(&first, Duration::from_millis(10)).await;
    let scrape = first
        .proxy
        .scrape_until(first.metrics, "every log received", |s: &Scrape| {
            s.get("logs_received_total", None) == LOGS && s.get("spool_logs", None) > 0
        })
        .await;
    (first, scrape)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_holds_back_what_the_ring_still_has_room_for_instead_of_dropping_it() {
    // 50,000 logs in 5,000 frames while coderd is down: an 8192-frame ring holds
    // every frame. Past half full the backlog moves to a 1 MB spool, which fills
    // after a few thousand logs; the rest must wait in the ring (back-pressure), not
    // be dropped as `spool_full`, and arrive in order once coderd is back.
    let dir = tempfile::tempdir().unwrap();
    let mut coderd = FakeCoderd::start().await;
    coderd.stop().await;
    let (first, _) = full_spool_outage(dir.path(), &coderd).await;
    // The operator is told, once, why the ring now fills (nothing said so before).
    eventually("the full spool logged", || {
        first
            .proxy
            .logged("the disk spool is full (--spool-max-bytes): newer logs wait in the ring until a replay frees room")
    })
    .await;
    coderd.restart().await;
    let full = "reason=\"spool_full\"";
    let scrape = first
        .proxy
        .scrape_until(first.metrics, "every log settled", |s: &Scrape| {
            s.get("logs_forwarded_total", None) + s.get("logs_dropped_total", Some(full)) == LOGS
                && s.get("spool_logs", None) == 0
        })
        .await;
    assert_eq!(
        scrape.get("logs_dropped_total", Some(full)),
        0,
        "logs dropped as spool_full while the ring had room for them"
    );
    assert_eq!(
        scrape.get("logs_dropped_total", Some("reason=\"buffer_full\"")),
        0
    );
    let exited = first.proxy.terminate().await;
    assert_exit_0(&exited);
    assert_accounting_totals(stopped_totals(&exited.stderr), 0);
    assert_eq!(
        arrival_order(&coderd.requests()),
        every_log_in_order(),
        "every log once, each session in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_full_spool_and_coderd_down_counts_what_waited_in_memory_as_spool_full() {
    // What waited in the ring behind a full spool has nowhere to go at shutdown: it
    // is counted `spool_full`, the accounting closes, and the stop is prompt.
    let dir = tempfile::tempdir().unwrap();
    let mut coderd = FakeCoderd::start().await;
    coderd.stop().await;
    let (first, scrape) = full_spool_outage(dir.path(), &coderd).await;
    assert!(
        scrape.get("ring_occupancy", None) > 0,
        "the ring holds the rest"
    );
    let started = std::time::Instant::now();
    let exited = first.proxy.terminate().await;
    assert_exit_0(&exited);
    assert!(
        started.elapsed() < Duration::from_secs(3 + 5),
        "stopped in {:?}",
        started.elapsed()
    );
    let stopped = stopped_totals(&exited.stderr);
    assert_accounting_totals(stopped, 0);
    assert!(stopped.dropped_spool_full > 0, "{stopped:?}");
    assert_eq!(
        stopped.spooled + stopped.dropped_spool_full,
        LOGS,
        "{stopped:?}"
    );
    // Every one of them in a "dropped logs" line: no line limiter holds back part of
    // what is only dropped at the end (found by a review: 30 of 410 were logged).
    let logged: u64 = exited
        .stderr
        .iter()
        .filter(|line| line.contains("dropped logs") && line.contains("spool_full"))
        .filter_map(|line| {
            // The proxy logs JSON here: `"logs":N`.
            let at = line.find("\"logs\":")? + "\"logs\":".len();
            let digits: String = line[at..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse::<u64>().ok()
        })
        .sum();
    assert_eq!(logged, stopped.dropped_spool_full, "{:#?}", exited.stderr);
}
