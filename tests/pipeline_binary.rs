//! The whole pipeline through the `boundary-log-proxy` binary: `serve` with the
//! stdout sink or `--coderd` (the fake coderd, or the `sink` subcommand), frames
//! written to its Unix socket, `/metrics` scraped live, and SIGTERM.

mod support;

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use boundary_log_proxy::codec::Tag;
use boundary_log_proxy::config::IoMode;
use support::coderd::{Behaviour, FakeCoderd, TOKEN_KEY};
use support::proxy::{
    all_logs, assert_accounting_totals, free_addr, http_get, logs_by_session, request,
    stopped_totals, vector, Client, Exited, Process, Scrape, PATIENCE,
};
use tonic::Code;

const VECTOR_SESSION: &str = "7d1f5a7e-3c2b-4f7e-9a51-0c6e2d9b8a41";

/// The stdout sink's line for `v1_single.bin`'s log, as docs/command-line.md spells it.
const V1_SINGLE_LINE: &str = r#"{"msg":"boundary_request","decision":"allow","http_method":"POST","http_url":"https://api.github.com/repos/coder/coder/pulls?page=0&per_page=100","matched_rule":"domain=*.github.com","event_time":"2025-11-26T00:00:00.123456789Z","sequence_number":0,"session_id":"7d1f5a7e-3c2b-4f7e-9a51-0c6e2d9b8a41","confined_process_name":"claude-code"}"#;
/// The line for the fourth log of `v2_logs.bin`: denied, so no `matched_rule`.
const V2_LOGS_DENIED_LINE: &str = r#"{"msg":"boundary_request","decision":"deny","http_method":"POST","http_url":"https://api.github.com/repos/coder/coder/pulls?page=3&per_page=100","event_time":"2025-11-26T00:00:03.123456789Z","sequence_number":3,"session_id":"7d1f5a7e-3c2b-4f7e-9a51-0c6e2d9b8a41","confined_process_name":"claude-code"}"#;

/// `serve` with its socket in `dir`, JSON logs, and `extra` flags; waits for the socket.
async fn serve(dir: &Path, extra: &[&str]) -> (Process, PathBuf) {
    let socket = dir.join("boundary.sock");
    let socket_arg = socket.to_str().expect("UTF-8 temp path").to_owned();
    let mut args = vec!["serve", "--socket", &socket_arg, "--log-format", "json"];
    args.extend_from_slice(extra);
    let mut proxy = Process::spawn(&args);
    proxy.wait_for_socket(&socket, "listening").await;
    (proxy, socket)
}

/// Asserts a clean exit: status 0, socket removed, accounting exact with nothing
/// left, and returns the totals of the `stopped` line.
fn assert_clean_exit(exited: &Exited, socket: &Path) -> boundary_log_proxy::metrics::Accounting {
    assert!(
        exited.status.success(),
        "exit {:?}; stderr:\n{}",
        exited.status,
        exited.stderr.join("\n")
    );
    assert!(!socket.exists(), "the socket file is removed on exit");
    let totals = stopped_totals(&exited.stderr);
    assert_accounting_totals(totals, 0);
    totals
}

async fn the_stdout_sink_prints_the_contract_json_lines(io: IoMode) {
    let dir = tempfile::tempdir().unwrap();
    let io = io.to_string();
    let (proxy, socket) = serve(dir.path(), &["--io", &io]).await;
    let mut client = Client::connect(&socket);
    client
        .send(&vector("v1_single.bin"))
        .send(&vector("v2_logs.bin"));
    support::proxy::eventually("11 lines on stdout", || proxy.stdout.len() >= 11).await;

    let exited = proxy.terminate().await;
    assert_eq!(exited.stdout.len(), 11, "{:#?}", exited.stdout);
    assert_eq!(exited.stdout[0], V1_SINGLE_LINE);
    assert_eq!(exited.stdout[4], V2_LOGS_DENIED_LINE);
    for (i, line) in exited.stdout.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        assert_eq!(v["session_id"], VECTOR_SESSION);
        let seq = if i == 0 { 0 } else { i - 1 };
        assert_eq!(v["sequence_number"], seq, "order kept: {line}");
        assert_eq!(v["decision"] == "allow", v.get("matched_rule").is_some());
    }
    let problems = logged_at_least_warn(&exited.stderr);
    assert!(problems.is_empty(), "warnings or errors: {problems:#?}");
    let totals = assert_clean_exit(&exited, &socket);
    assert_eq!((totals.received, totals.forwarded), (11, 11));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_sends_the_auth_token_to_coderd_and_never_logs_it() {
    let coderd = FakeCoderd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = coderd.addr();
    let (proxy, socket) = serve(
        dir.path(),
        &["--coderd", &url, "--auth-token", "s3cret-t0ken"],
    )
    .await;
    let sent: Vec<_> = (0..3).map(|i| request("tok", "codex", i * 2, 2)).collect();
    let mut client = Client::connect(&socket);
    for r in &sent {
        client.send_request(Tag::V2, r);
    }
    assert!(coderd.wait_for_logs(6, PATIENCE).await);
    let got = coderd.requests();
    assert!(
        got.iter()
            .all(|r| r.token.as_deref() == Some("s3cret-t0ken")),
        "every call carries {TOKEN_KEY}: {:?}",
        got.iter().map(|r| &r.token).collect::<Vec<_>>()
    );
    let requests: Vec<_> = got.into_iter().map(|r| r.request).collect();
    assert_eq!(all_logs(&requests), all_logs(&sent));

    let exited = proxy.terminate().await;
    assert!(exited.stdout.is_empty(), "no sink output with --coderd");
    let listening = exited
        .stderr
        .iter()
        .find(|line| line.contains("listening"))
        .expect("a listening line");
    assert!(
        listening.contains(&format!("gRPC {url}")),
        "the start-up line names where the logs go: {listening}"
    );
    assert!(
        !exited.stderr.join("\n").contains("s3cret"),
        "the token never appears in the proxy's logs"
    );
    let totals = assert_clean_exit(&exited, &socket);
    assert_eq!(totals.forwarded, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_max_elapsed_zero_drops_the_failed_batch_and_forwards_the_next() {
    let coderd = FakeCoderd::start().await;
    coderd.set_behaviour(Behaviour::fail_next(1, Code::Unavailable));
    let dir = tempfile::tempdir().unwrap();
    let (url, metrics) = (coderd.addr(), free_addr());
    let metrics_arg = metrics.to_string();
    let (proxy, socket) = serve(
        dir.path(),
        &[
            "--coderd",
            &url,
            "--retry-max-elapsed",
            "0s",
            "--metrics-addr",
            &metrics_arg,
        ],
    )
    .await;
    let mut client = Client::connect(&socket);
    client.send_request(Tag::V2, &request("s", "codex", 0, 3));
    let scrape = proxy
        .scrape_until(metrics, "the first batch dropped", |s| {
            // One event bumps several counters; a scrape may land between them.
            s.get("batches_dropped_total", Some(r#"reason="forward_failed""#)) == 1
                && s.get("logs_dropped_total", Some(r#"reason="forward_failed""#)) > 0
        })
        .await;
    assert_eq!(
        scrape.get("logs_dropped_total", Some(r#"reason="forward_failed""#)),
        3
    );
    assert_eq!(scrape.get("batches_forwarded_total", None), 0);

    let second = request("s", "codex", 3, 4);
    client.send_request(Tag::V2, &second);
    assert!(coderd.wait_for_logs(4, PATIENCE).await);
    let scrape = proxy
        .scrape_until(metrics, "the second batch forwarded", |s| {
            s.get("batches_forwarded_total", None) == 1
                && s.get("logs_forwarded_total", None) > 0
                && s.get("forward_requests_total", Some(r#"result="ok""#)) > 0
        })
        .await;
    assert_eq!(scrape.get("logs_forwarded_total", None), 4);
    assert_eq!(
        scrape.get(
            "forward_requests_total",
            Some(r#"result="retryable_error""#)
        ),
        1
    );
    assert_eq!(
        scrape.get("forward_requests_total", Some(r#"result="ok""#)),
        1
    );
    assert_eq!(coderd.calls(), 2, "no retry with 0s");
    assert_eq!(coderd.requests()[0].request, second);
    assert_accounting_totals(scrape.accounting(), 0);

    let exited = proxy.terminate().await;
    let totals = assert_clean_exit(&exited, &socket);
    assert_eq!((totals.forwarded, totals.dropped_forward_failed), (4, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_delivers_everything_buffered_and_exits_zero() {
    const CONNS: usize = 3;
    const FRAMES: i32 = 100;
    const LOGS: usize = 5;
    let total = CONNS as u64 * FRAMES as u64 * LOGS as u64;
    let coderd = FakeCoderd::start().await;
    // Slow calls and small requests: a backlog builds up behind coderd.
    coderd.set_behaviour(Behaviour::normal().with_delay(Duration::from_millis(40)));
    let dir = tempfile::tempdir().unwrap();
    let (url, metrics) = (coderd.addr(), free_addr());
    let metrics_arg = metrics.to_string();
    let (proxy, socket) = serve(
        dir.path(),
        &[
            "--coderd",
            &url,
            "--batch-max-logs",
            "50",
            "--metrics-addr",
            &metrics_arg,
        ],
    )
    .await;

    let sessions: Vec<String> = (0..CONNS).map(|c| format!("load-{c}")).collect();
    let writers: Vec<_> = sessions
        .iter()
        .cloned()
        .map(|session| {
            let mut client = Client::connect(&socket);
            std::thread::spawn(move || {
                let sent: Vec<_> = (0..FRAMES)
                    .map(|i| request(&session, "claude-code", i * LOGS as i32, LOGS))
                    .collect();
                for r in &sent {
                    client.send_request(Tag::V2, r);
                }
                // Keep the connection open through SIGTERM, as boundary does.
                (client, sent)
            })
        })
        .collect();
    let written: Vec<(Client, Vec<_>)> = writers.into_iter().map(|w| w.join().unwrap()).collect();

    let scrape = proxy
        .scrape_until(metrics, "every written log received", |s| {
            s.get("logs_received_total", None) == total
        })
        .await;
    let pending = total - scrape.accounting().settled();
    assert!(
        pending > 0,
        "still buffered at SIGTERM (otherwise this is not under load)"
    );
    let exited = proxy.terminate().await;

    assert!(exited.stdout.is_empty(), "no sink output with --coderd");
    let problems = logged_at_least_warn(&exited.stderr);
    assert!(problems.is_empty(), "warnings or errors: {problems:#?}");
    let totals = assert_clean_exit(&exited, &socket);
    assert_eq!(totals.received, total);
    assert_eq!(totals.forwarded, total, "everything buffered was delivered");
    assert_eq!(coderd.logs_received() as u64, total);
    let got = logs_by_session(coderd.requests().iter().map(|r| &r.request));
    for (session, (mut client, sent)) in sessions.iter().zip(written) {
        assert_eq!(
            got[&(session.clone(), "claude-code".to_owned())],
            all_logs(&sent),
            "{session}: all logs, in order"
        );
        assert!(
            client.closed_by_proxy(PATIENCE),
            "the proxy closed {session}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_coderd_down_the_ring_fills_and_every_log_is_counted() {
    let coderd = FakeCoderd::start().await;
    coderd.set_behaviour(Behaviour::fail_all(Code::Unavailable));
    let dir = tempfile::tempdir().unwrap();
    let (url, metrics) = (coderd.addr(), free_addr());
    let metrics_arg = metrics.to_string();
    let (proxy, socket) = serve(
        dir.path(),
        &[
            "--coderd",
            &url,
            "--ring-capacity",
            "4",
            // One frame a request: the forwarder holds only a few frames while stuck.
            "--batch-max-logs",
            "2",
            "--shutdown-timeout",
            "1s",
            "--metrics-addr",
            &metrics_arg,
        ],
    )
    .await;
    let mut client = Client::connect(&socket);
    client.send_request(Tag::V2, &request("down", "codex", 0, 2));
    assert!(
        coderd.wait_for_calls(1, PATIENCE).await,
        "the forwarder is retrying"
    );
    for i in 1..40 {
        client.send_request(Tag::V2, &request("down", "codex", i * 2, 2));
    }
    proxy
        .scrape_until(metrics, "all 80 logs received", |s| {
            s.get("logs_received_total", None) == 80
        })
        .await;
    // The stuck forwarder holds at most a few frames (--batch-max-logs 2: a request is
    // one frame, a drain pass two): one in delivery, the next waiting its turn and the
    // rest of its pass, a pass queued, a pass in hand on the drain thread; 7 at most.
    // So after the flood the ring is full and stays full: more frames are all dropped
    // (at least 50 - 4 - 7), and the gauge shows it.
    for i in 40..50 {
        client.send_request(Tag::V2, &request("down", "codex", i * 2, 2));
    }
    proxy
        .scrape_until(metrics, "all 100 logs received", |s| {
            s.get("logs_received_total", None) == 100
        })
        .await;
    // A frame is counted received just before the ring refuses it: let the last
    // drop's counters land before reading them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let scrape = proxy.scrape_until(metrics, "a scrape", |_| true).await;
    let full_batches = scrape.get("batches_dropped_total", Some(r#"reason="buffer_full""#));
    let full_logs = scrape.get("logs_dropped_total", Some(r#"reason="buffer_full""#));
    assert!(full_batches >= 39, "the ring overflowed:\n{}", scrape.text);
    assert_eq!(full_logs, 2 * full_batches);
    assert_eq!(scrape.get("ring_capacity", None), 4);
    assert_eq!(
        scrape.get("ring_occupancy", None),
        4,
        "the gauge shows the full ring"
    );
    assert_accounting_totals(scrape.accounting(), 100 - full_logs);

    let sigterm = std::time::Instant::now();
    let exited = proxy.terminate().await;
    assert!(
        sigterm.elapsed() < Duration::from_secs(3),
        "exits within --shutdown-timeout 1s (and some slack): {:?}",
        sigterm.elapsed()
    );
    let totals = assert_clean_exit(&exited, &socket);
    assert_eq!(totals.forwarded, 0);
    assert_eq!(totals.dropped_buffer_full, full_logs);
    assert_eq!(
        totals.dropped_shutdown,
        100 - full_logs,
        "what could not be delivered before the shutdown timeout is counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_subcommand_receives_what_serve_forwards() {
    let dir = tempfile::tempdir().unwrap();
    let sink_socket = dir.path().join("sink.sock");
    let listen = format!("unix:{}", sink_socket.display());
    let mut sink = Process::spawn(&["sink", "--listen", &listen, "--log-format", "json"]);
    sink.wait_for_socket(&sink_socket, "sink listening").await;
    let (proxy, socket) = serve(dir.path(), &["--coderd", &listen]).await;

    Client::connect(&socket)
        .send(&vector("v1_single.bin"))
        .send(&vector("v2_logs.bin"));
    support::proxy::eventually("11 lines printed by the sink", || sink.stdout.len() >= 11).await;

    let exited = proxy.terminate().await;
    assert_clean_exit(&exited, &socket);
    let sunk = sink.terminate().await;
    assert!(sunk.status.success(), "sink exit: {:?}", sunk.status);
    assert!(!sink_socket.exists(), "the sink removes its socket");
    assert_eq!(sunk.stdout.len(), 11, "{:#?}", sunk.stdout);
    assert_eq!(sunk.stdout[0], V1_SINGLE_LINE);
    assert_eq!(sunk.stdout[4], V2_LOGS_DENIED_LINE);
}

/// The README's "whole pipeline on one machine" block in its worst order: `loadgen`
/// runs before `serve` has bound the socket. It says it waits, connects once the
/// proxy listens, and all 30 logs reach the sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_started_before_serve_waits_for_the_socket_and_every_log_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let sink_socket = dir.path().join("sink.sock");
    let listen = format!("unix:{}", sink_socket.display());
    let mut sink = Process::spawn(&[
        "sink",
        "--listen",
        &listen,
        "--quiet",
        "--log-format",
        "json",
    ]);
    sink.wait_for_socket(&sink_socket, "sink listening").await;
    let socket = dir.path().join("boundary.sock");
    let socket_arg = socket.to_str().expect("UTF-8 temp path").to_owned();
    let loadgen = Process::spawn(&[
        "loadgen",
        "--socket",
        &socket_arg,
        "--connections",
        "2",
        "--frames",
        "5",
        "--logs-per-frame",
        "3",
    ]);
    support::proxy::eventually("loadgen saying it waits for the socket", || {
        loadgen
            .stderr
            .get()
            .iter()
            .any(|line| line.contains("waiting up to 10s for"))
    })
    .await;

    let metrics = free_addr();
    let metrics_arg = metrics.to_string();
    let (proxy, socket) = serve(
        dir.path(),
        &["--coderd", &listen, "--metrics-addr", &metrics_arg],
    )
    .await;
    let loaded = loadgen.wait().await;
    assert!(
        loaded.status.success(),
        "loadgen: {:?}\n{}",
        loaded.status,
        loaded.stderr.join("\n")
    );
    assert!(
        loaded
            .stderr
            .iter()
            .any(|line| line.contains("accepts connections after")),
        "loadgen says when the wait ended: {:?}",
        loaded.stderr
    );
    proxy
        .scrape_until(metrics, "30 logs forwarded", |s| {
            s.get("logs_forwarded_total", None) == 30
        })
        .await;
    let exited = proxy.terminate().await;
    assert_eq!(assert_clean_exit(&exited, &socket).forwarded, 30);
    assert!(sink.terminate().await.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_metrics_pass_promtool_and_healthz_answers() {
    let coderd = FakeCoderd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (url, metrics) = (coderd.addr(), free_addr());
    let metrics_arg = metrics.to_string();
    let (proxy, socket) = serve(
        dir.path(),
        &["--coderd", &url, "--metrics-addr", &metrics_arg],
    )
    .await;
    // Some of everything: logs, a status report, a skipped frame, a closed connection.
    Client::connect(&socket)
        .send(&vector("stream_mixed.bin"))
        .send(&vector("v2_status.bin"));
    let mut bad = Client::connect(&socket);
    bad.send(&vector("v1_too_large_header.bin"));
    assert!(bad.closed_by_proxy(PATIENCE));
    assert!(coderd.wait_for_logs(17, PATIENCE).await);
    let scrape = proxy
        .scrape_until(metrics, "17 logs forwarded", |s| {
            s.get("logs_forwarded_total", None) == 17
        })
        .await;
    assert_eq!(
        scrape.get(
            "logs_dropped_total",
            Some(r#"reason="boundary_channel_full""#)
        ),
        10
    );
    assert_eq!(
        scrape.get("frames_rejected_total", Some(r#"reason="too_large""#)),
        1
    );
    assert!(scrape.get("forward_latency_seconds_count", None) >= 1);
    assert_accounting_totals(scrape.accounting(), 0);
    promtool_check(&scrape);

    let health = tokio::task::spawn_blocking(move || http_get(metrics, "/healthz"))
        .await
        .unwrap()
        .expect("/healthz answers");
    assert_eq!(health.0, 200, "{health:?}");

    let exited = proxy.terminate().await;
    let totals = assert_clean_exit(&exited, &socket);
    assert_eq!(totals.forwarded, 17);
}

/// The JSON log lines at WARN or ERROR.
fn logged_at_least_warn(stderr: &[String]) -> Vec<&String> {
    stderr
        .iter()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .map_or(true, |v| v["level"] == "WARN" || v["level"] == "ERROR")
        })
        .collect()
}

/// `promtool check metrics` on the scrape; skipped with a notice if promtool is absent.
fn promtool_check(scrape: &Scrape) {
    use std::io::Write as _;
    let promtool = Path::new("/usr/bin/promtool");
    let promtool = if promtool.exists() {
        promtool.to_owned()
    } else {
        match std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join("promtool"))
            .find(|p| p.exists())
        {
            Some(found) => found,
            None => {
                support::as_uid::skip(
                    "promtool check metrics of a live scrape",
                    "promtool is not installed (apt-get install prometheus)",
                );
                return;
            }
        }
    };
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

on_io_modes!(the_stdout_sink_prints_the_contract_json_lines);

/// A rejection's warning tells the operator where to look: a rejected frame names its
/// connection and what was wrong with it, a rejected connection whose process it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_are_logged_with_their_connection_and_cause() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, socket) = serve(dir.path(), &["--sink", "null"]).await;
    let mut client = Client::connect(&socket);
    client.send(&vector("v1_garbage_protobuf.bin"));
    client.send(&vector("unknown_tag.bin"));
    assert!(client.closed_by_proxy(PATIENCE), "an unknown tag closes it");
    let exited = proxy.terminate().await;
    let warned = |what: &str, parts: &[&str]| {
        exited
            .stderr
            .iter()
            .find(|line| line.contains(what) && parts.iter().all(|p| line.contains(p)))
            .cloned()
            .unwrap_or_else(|| panic!("no {what} line with {parts:?}:\n{:#?}", exited.stderr))
    };
    let decode = warned("rejected a frame", &["decode_error", "\"conn\":1"]);
    assert!(decode.contains("\"error\":"), "{decode}");
    let tag = warned("rejected a frame", &["unsupported_tag", "\"conn\":1"]);
    assert!(tag.contains("\"error\":"), "{tag}");

    // A peer whose uid is not allowed.
    let me = std::fs::metadata("/proc/self").unwrap().uid();
    let dir = tempfile::tempdir().unwrap();
    let other = (me + 1).to_string();
    let (proxy, socket) = serve(dir.path(), &["--sink", "null", "--allow-uid", &other]).await;
    let mut client = Client::connect(&socket);
    assert!(client.closed_by_proxy(PATIENCE), "not an allowed uid");
    let exited = proxy.terminate().await;
    let line = exited
        .stderr
        .iter()
        .find(|line| line.contains("rejected a connection"))
        .unwrap_or_else(|| panic!("no rejection line:\n{:#?}", exited.stderr));
    assert!(line.contains(&format!("\"peer_uid\":{me}")), "{line}");
    assert!(
        line.contains(&format!("\"peer_pid\":{}", std::process::id())),
        "{line}"
    );
}

/// `--metrics-addr HOST:0` binds a port the kernel picks: the start-up line names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listening_line_names_the_metrics_port_actually_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _socket) = serve(
        dir.path(),
        &["--sink", "null", "--metrics-addr", "127.0.0.1:0"],
    )
    .await;
    let exited = proxy.terminate().await;
    let listening = exited
        .stderr
        .iter()
        .find_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            (v["fields"]["message"] == "listening").then_some(v)
        })
        .expect("a listening line");
    let metrics = listening["fields"]["metrics"].as_str().unwrap().to_owned();
    let port: u16 = metrics.rsplit(':').next().unwrap().parse().unwrap();
    assert!(metrics.starts_with("127.0.0.1:") && port != 0, "{metrics}");
}
