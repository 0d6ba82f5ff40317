//! The real binary (`serve --coder-url`) against the project's coder sink standing in for
//! coderd, over loopback: logs arrive byte for byte, and every fault coderd's transport can
//! show (wrong token, old coderd, DRPC errors, the 1000-log limit, connections cut after a
//! call or before its answer, slow calls, idle keep-alives, an outage at shutdown, TLS with
//! a private CA) ends with every log delivered or counted. After each test the books
//! balance: `received == forwarded + dropped` on the binary's last `stopped` line.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use boundary_log_proxy::codec::Tag;
use boundary_log_proxy::sink::coder::{CallFault, Cut, Keepalive, Outcome};
use boundary_log_proxy::workload;
use prost::Message as _;
use support::coder_sink::TestCoderd;
use support::proxy::{
    assert_accounting_totals, eventually, free_addr, request, stopped_totals, Client, Exited,
    Process, Scrape,
};
use tokio::net::TcpListener;

const PROCESS: &str = "claude-code";

/// A session id per test client (UUIDs, as boundary sends).
fn session(n: u32) -> String {
    format!("0b6c4e3a-7f2d-4c1e-9a8b-{n:012x}")
}

/// The binary serving a socket in a temp dir, forwarding over the coder transport.
struct Proxy {
    process: Process,
    socket: PathBuf,
    metrics: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Proxy {
    async fn start(coder_url: &str, token: &str, extra: &[&str]) -> Self {
        Self::spawn(&["--coder-url", coder_url, "--agent-token", token], extra).await
    }

    /// The binary forwarding to `destination` (its flags), with `extra` flags.
    async fn spawn(destination: &[&str], extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("proxy.sock");
        let metrics = free_addr();
        let (socket_arg, metrics_arg) = (socket.display().to_string(), metrics.to_string());
        let mut args = vec![
            "serve",
            "--socket",
            &socket_arg,
            "--metrics-addr",
            &metrics_arg,
            "--log-format",
            "json",
        ];
        args.extend_from_slice(destination);
        args.extend_from_slice(extra);
        let mut process = Process::spawn(&args);
        process.wait_for_socket(&socket, "listening").await;
        Self {
            process,
            socket,
            metrics,
            _dir: dir,
        }
    }

    fn connect(&self) -> Client {
        Client::connect(&self.socket)
    }

    async fn scrape_until(&self, what: &str, cond: impl Fn(&Scrape) -> bool) -> Scrape {
        self.process.scrape_until(self.metrics, what, cond).await
    }

    async fn forwarded(&self, n: u64) -> Scrape {
        self.scrape_until(&format!("{n} logs forwarded"), |s| {
            s.get("logs_forwarded_total", None) >= n
        })
        .await
    }

    /// Waits until exactly `n` logs are counted dropped as `forward_failed`.
    async fn forward_failed(&self, n: u64) -> Scrape {
        self.scrape_until(&format!("{n} logs dropped as forward_failed"), |s| {
            s.get("logs_dropped_total", Some("reason=\"forward_failed\"")) == n
        })
        .await
    }

    /// Whether a JSON log line on stderr contains all of `parts`.
    fn logged_with(&self, parts: &[&str]) -> bool {
        self.process
            .stderr
            .get()
            .iter()
            .any(|line| parts.iter().all(|p| line.contains(p)))
    }

    /// Waits until a log line contains all of `parts`. An event is counted before it is
    /// logged, and stderr is read by another thread: a scrape showing the count does not
    /// mean the line has been read yet.
    async fn logs_eventually(&self, parts: &[&str]) {
        let what = format!("a log line with {parts:?}");
        eventually(&what, || self.logged_with(parts)).await;
    }

    /// SIGTERM; checks the exit and the books on the `stopped` line.
    async fn stop(self) -> Exited {
        let exited = self.process.terminate().await;
        assert!(
            exited.status.success(),
            "{:?}\n{}",
            exited.status,
            exited.stderr.join("\n")
        );
        assert_accounting_totals(stopped_totals(&exited.stderr), 0);
        exited
    }
}

/// Connects and writes `frames` frames of `logs` logs of session `session(n)`; returns the
/// encoded logs written, in order.
fn write_session(
    proxy: &Proxy,
    n: u32,
    first_seq: i32,
    frames: usize,
    logs: usize,
) -> Vec<Vec<u8>> {
    let mut client = proxy.connect();
    let mut written = Vec::new();
    for f in 0..frames {
        let request = request(&session(n), PROCESS, first_seq + (f * logs) as i32, logs);
        written.extend(request.logs.iter().map(|l| l.encode_to_vec()));
        client.send(&workload::frame(Tag::V2, &request));
    }
    client.finish();
    written
}

/// The top-level fields of a request as raw bytes: (session_id, logs).
fn raw_fields(request: &[u8]) -> (String, Vec<Vec<u8>>) {
    fn varint(bytes: &mut &[u8]) -> u64 {
        let mut value = 0;
        for shift in (0..64).step_by(7) {
            let byte = bytes[0];
            *bytes = &bytes[1..];
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                break;
            }
        }
        value
    }
    let (mut session, mut logs) = (String::new(), Vec::new());
    let mut rest = request;
    while !rest.is_empty() {
        let key = varint(&mut rest);
        assert_eq!(key & 7, 2, "every field of a request is length-delimited");
        let len = varint(&mut rest) as usize;
        let (value, tail) = rest.split_at(len);
        rest = tail;
        match key >> 3 {
            1 => logs.push(value.to_vec()),
            2 => session = String::from_utf8(value.to_vec()).unwrap(),
            _ => {}
        }
    }
    (session, logs)
}

/// Every log coderd kept, as raw bytes by session, in the order the calls were answered.
fn delivered_raw(coderd: &TestCoderd) -> BTreeMap<String, Vec<Vec<u8>>> {
    let mut out: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for call in coderd.sink.calls().iter().filter(|c| c.outcome.delivered()) {
        let (session, logs) = raw_fields(&call.request);
        out.entry(session).or_default().extend(logs);
    }
    out
}

fn sorted(mut logs: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    logs.sort();
    logs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_arrives_byte_for_byte_over_the_coder_transport() {
    let coderd = TestCoderd::start(|c| c.token = Some("agent-token".into())).await;
    let proxy = Proxy::start(&coderd.url(), "agent-token", &[]).await;
    let written: Vec<_> = (1..=3)
        .map(|n| (session(n), write_session(&proxy, n, 0, 40, 7)))
        .collect();
    let scrape = proxy.forwarded(3 * 40 * 7).await;
    assert_accounting_totals(scrape.accounting(), 0);
    assert_eq!(scrape.get("coderd_connected", None), 1);
    assert_eq!(
        scrape.get("coderd_connects_total", Some("result=\"ok\"")),
        1
    );

    let delivered = delivered_raw(&coderd);
    for (session, logs) in &written {
        assert!(
            delivered[session] == *logs,
            "session {session}: the logs differ from those written (or their order)"
        );
    }
    assert_eq!(delivered.len(), 3);
    let calls = coderd.sink.calls();
    assert!(
        calls.iter().all(|c| c.outcome == Outcome::Answered),
        "{calls:?}"
    );
    let connects = coderd.sink.connects();
    assert_eq!(connects.len(), 1);
    assert_eq!(connects[0].role.as_deref(), Some("boundary-log-proxy"));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_logged_with_coderds_message_counted_and_survived() {
    let coderd = TestCoderd::start(|c| c.token = Some("right".into())).await;
    let proxy = Proxy::start(&coderd.url(), "wrong", &["--retry-max-elapsed", "1s"]).await;
    write_session(&proxy, 1, 0, 1, 5);
    let scrape = proxy.forward_failed(5).await;
    assert!(scrape.get("coderd_connects_total", Some("result=\"http_error\"")) >= 1);
    assert_eq!(scrape.get("coderd_connected", None), 0);
    proxy
        .logs_eventually(&["401", "Workspace agent not authorized."])
        .await;
    assert!(coderd.sink.calls().is_empty());
    assert!(coderd.sink.connects().iter().all(|c| c.status == 401));
    // Still serving: the next log is counted too.
    write_session(&proxy, 2, 0, 1, 1);
    proxy.forward_failed(6).await;
    proxy.stop().await;
}

/// With no retry budget a transient failure is the request's last attempt: its log
/// line says so, not that it will be retried (it said "will retry" and the logs were
/// dropped in the same millisecond).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_with_no_retry_budget_left_is_not_logged_as_retried() {
    let mut coderd = TestCoderd::start(|_| {}).await;
    coderd.stop().await;
    let proxy = Proxy::start(&coderd.url(), "t", &["--retry-max-elapsed", "0s"]).await;
    write_session(&proxy, 1, 0, 1, 5);
    proxy.forward_failed(5).await;
    proxy
        .logs_eventually(&["forwarding failed; no retries left", "--retry-max-elapsed"])
        .await;
    assert!(!proxy.logged_with(&["will retry"]));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coderd_below_v2_31_is_refused_before_the_upgrade_and_counted() {
    let coderd = TestCoderd::start(|c| c.version = "v2.30.0".into()).await;
    let proxy = Proxy::start(&coderd.url(), "t", &["--retry-max-elapsed", "1s"]).await;
    write_session(&proxy, 1, 0, 2, 3);
    let scrape = proxy.forward_failed(6).await;
    assert!(scrape.get("coderd_connects_total", Some("result=\"refused_version\"")) >= 1);
    proxy.logs_eventually(&["v2.30.0"]).await;
    assert!(coderd.sink.buildinfo_requests() >= 1);
    assert!(coderd.sink.connects().is_empty(), "never upgraded");
    proxy.stop().await;
}

/// `--coderd` names a gRPC Agent service. Pointed at coderd itself, which serves no gRPC,
/// every call fails as a transport error; the proxy finds coderd's buildinfo there and
/// says to use `--coder-url`. The logs are retried and then counted, as for any outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coderd_given_as_the_grpc_destination_is_named_with_the_flag_to_use_instead() {
    let coderd = TestCoderd::start(|c| c.version = "v2.31.2".into()).await;
    let url = coderd.url();
    let proxy = Proxy::spawn(&["--coderd", &url], &["--retry-max-elapsed", "1s"]).await;
    write_session(&proxy, 1, 0, 1, 5);
    proxy.forward_failed(5).await;
    proxy
        .logs_eventually(&["is coderd v2.31.2", "--coder-url", &url])
        .await;
    assert!(coderd.sink.buildinfo_requests() >= 1);
    assert!(coderd.sink.calls().is_empty());
    proxy.stop().await;
}

/// The same when coderd comes up only after the proxy first failed to connect: a
/// refused connection leaves nothing to ask, so the question is asked again later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coderd_given_as_the_grpc_destination_is_named_even_when_it_came_up_later() {
    let mut coderd = TestCoderd::start(|c| c.version = "v2.31.2".into()).await;
    coderd.stop().await;
    let url = coderd.url();
    let proxy = Proxy::spawn(&["--coderd", &url], &["--retry-max-elapsed", "30s"]).await;
    write_session(&proxy, 1, 0, 1, 5);
    proxy
        .logs_eventually(&["forwarding failed", "refused"])
        .await;
    coderd.restart().await;
    proxy
        .logs_eventually(&["is coderd v2.31.2", "--coder-url", &url])
        .await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drpc_error_is_counted_forward_failed_at_once_without_a_retry() {
    let coderd = TestCoderd::start(|_| {}).await;
    coderd
        .sink
        .fail_calls([CallFault::Error("injected failure".into())]);
    // A retry budget far beyond the test's patience: a drop seen in time was not retried.
    let proxy = Proxy::start(&coderd.url(), "t", &["--retry-max-elapsed", "10m"]).await;
    write_session(&proxy, 1, 0, 1, 4);
    proxy.forward_failed(4).await;
    assert_eq!(coderd.sink.calls().len(), 1, "sent once");
    proxy.logs_eventually(&["injected failure"]).await;
    let written = write_session(&proxy, 2, 0, 1, 2);
    let scrape = proxy.forwarded(2).await;
    assert_accounting_totals(scrape.accounting(), 0);
    assert_eq!(delivered_raw(&coderd)[&session(2)], written);
    assert_eq!(
        coderd.sink.connects().len(),
        1,
        "an error does not end the connection"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_never_carry_more_than_1000_logs_whatever_the_batch_settings() {
    let coderd = TestCoderd::start(|_| {}).await;
    let proxy = Proxy::start(
        &coderd.url(),
        "t",
        &["--batch-max-logs", "5000", "--batch-linger", "200ms"],
    )
    .await;
    // Frames of 200 logs (near the 32 KiB frame limit) and of 150, quicker than the linger.
    let mut written = write_session(&proxy, 1, 0, 15, 200);
    written.extend(write_session(&proxy, 2, 0, 10, 150));
    let scrape = proxy.forwarded(4500).await;
    assert_accounting_totals(scrape.accounting(), 0);
    let calls = coderd.sink.calls();
    assert!(
        calls
            .iter()
            .all(|c| c.logs <= 1000 && c.outcome == Outcome::Answered),
        "{:?}",
        calls
            .iter()
            .map(|c| (c.logs, &c.outcome))
            .collect::<Vec<_>>()
    );
    let delivered = delivered_raw(&coderd);
    assert_eq!(delivered[&session(1)], written[..3000]);
    assert_eq!(delivered[&session(2)], written[3000..]);
    assert!(
        calls.iter().any(|c| c.logs == 1000),
        "the batch settings alone would have sent more"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_after_a_call_is_replaced_and_nothing_is_lost_or_repeated() {
    let coderd = TestCoderd::start(|_| {}).await;
    let proxy = Proxy::start(&coderd.url(), "t", &[]).await;
    let mut written = write_session(&proxy, 1, 0, 1, 3);
    let mut total = 3;
    proxy.forwarded(total).await;
    for (i, cut) in [Cut::TcpClose, Cut::TcpReset, Cut::WebsocketClose]
        .into_iter()
        .enumerate()
    {
        coderd.sink.fail_calls([CallFault::CutAfterAnswer(cut)]);
        // The cut call; then, once the proxy has seen the connection go (so that no call
        // can be on its way over it), one that must go over a new connection.
        for second in [false, true] {
            if second {
                proxy
                    .scrape_until("the cut noticed", |s| s.get("coderd_connected", None) == 0)
                    .await;
            }
            written.extend(write_session(&proxy, 1, total as i32, 1, 3));
            total += 3;
            proxy.forwarded(total).await;
        }
        assert_eq!(
            coderd.sink.connects().len(),
            i + 2,
            "{cut:?}: reconnected once"
        );
    }
    let scrape = proxy.forwarded(total).await;
    assert_eq!(
        scrape.get("logs_dropped_total", Some("reason=\"forward_failed\"")),
        0
    );
    assert_eq!(
        scrape.get("coderd_connects_total", Some("result=\"ok\"")),
        4
    );
    assert_eq!(
        delivered_raw(&coderd)[&session(1)],
        written,
        "each log once, in order"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_after_coderd_recorded_a_call_but_before_it_answered_repeats_only_that_call() {
    let coderd = TestCoderd::start(|_| {}).await;
    let proxy = Proxy::start(&coderd.url(), "t", &[]).await;
    let mut written = Vec::new();
    let mut repeated = Vec::new();
    let mut total = 0;
    for cut in [Cut::TcpClose, Cut::TcpReset, Cut::WebsocketClose] {
        coderd.sink.fail_calls([CallFault::CutBeforeAnswer(cut)]);
        let logs = write_session(&proxy, 1, total as i32, 1, 4);
        total += 4;
        proxy.forwarded(total).await;
        repeated.extend(logs.iter().cloned());
        written.extend(logs);
    }
    let scrape = proxy.forwarded(total).await;
    assert_accounting_totals(scrape.accounting(), 0);
    assert_eq!(
        scrape.get("logs_forwarded_total", None),
        total,
        "forwarded once each"
    );
    assert_eq!(
        scrape.get("logs_dropped_total", Some("reason=\"forward_failed\"")),
        0
    );
    let delivered = delivered_raw(&coderd).remove(&session(1)).unwrap();
    let mut want = written.clone();
    want.extend(repeated);
    assert_eq!(
        sorted(delivered),
        sorted(want),
        "every log, and the cut calls' logs twice"
    );
    let cut_calls = coderd
        .sink
        .calls()
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Cut(_)))
        .count();
    assert_eq!(cut_calls, 3);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_seconds_of_latency_per_call_with_four_calls_in_flight() {
    let coderd = TestCoderd::start(|c| c.latency = Duration::from_secs(2)).await;
    let proxy = Proxy::start(&coderd.url(), "t", &[]).await;
    // Four connections, four sessions: four requests that may be in flight together.
    let written: Vec<_> = (1..=4)
        .map(|n| (session(n), write_session(&proxy, n, 0, 1, 5)))
        .collect();
    let scrape = proxy.forwarded(20).await;
    assert_accounting_totals(scrape.accounting(), 0);
    assert_eq!(
        coderd.sink.max_calls_in_flight(),
        4,
        "the four calls were held at the same time"
    );
    let delivered = delivered_raw(&coderd);
    for (session, logs) in &written {
        assert_eq!(&delivered[session], logs);
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_proxy_answers_websocket_and_yamux_keepalive_pings() {
    // Pings often, with room for a busy machine to answer each.
    let quick = Some(Keepalive {
        interval: Duration::from_millis(100),
        timeout: Duration::from_secs(5),
    });
    let coderd = TestCoderd::start(|c| {
        c.websocket_keepalive = quick;
        c.yamux_keepalive = quick;
    })
    .await;
    let proxy = Proxy::start(&coderd.url(), "t", &[]).await;
    write_session(&proxy, 1, 0, 1, 2);
    proxy.forwarded(2).await;
    eventually("five answered pings of each kind", || {
        let k = coderd.sink.keepalive();
        k.websocket_pongs >= 5 && k.yamux_pongs >= 5
    })
    .await;
    assert_eq!(coderd.sink.keepalive().timeouts, 0);
    assert_eq!(
        coderd.sink.connects().len(),
        1,
        "the idle connection was kept"
    );
    let scrape = proxy.forwarded(2).await;
    assert_eq!(scrape.get("coderd_connected", None), 1);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_coderd_outage_meets_the_shutdown_timeout() {
    let mut coderd = TestCoderd::start(|_| {}).await;
    let proxy = Proxy::start(
        &coderd.url(),
        "t",
        &["--shutdown-timeout", "2s", "--retry-max-elapsed", "10m"],
    )
    .await;
    write_session(&proxy, 1, 0, 1, 3);
    proxy.forwarded(3).await;
    coderd.stop().await;
    write_session(&proxy, 1, 3, 4, 5);
    proxy
        .scrape_until("the outage's logs received", |s| {
            s.get("logs_received_total", None) == 23
        })
        .await;
    proxy.process.sigterm();
    // The shutdown timeout, plus room for a busy machine to start and reap a process.
    let exited = proxy.process.wait_within(Duration::from_secs(2 + 5)).await;
    assert!(exited.status.success(), "{:?}", exited.status);
    let totals = stopped_totals(&exited.stderr);
    assert_accounting_totals(totals, 0);
    assert_eq!(totals.forwarded, 3);
    assert_eq!(
        totals.dropped_shutdown + totals.dropped_forward_failed,
        20,
        "{totals:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_coderd_holds_a_call_unanswered_meets_the_shutdown_timeout() {
    // coderd takes the call and sits on it: the call is an await the forwarder drops at
    // its deadline, wherever it runs.
    let coderd = TestCoderd::start(|c| c.latency = Duration::from_secs(60)).await;
    let proxy = Proxy::start(
        &coderd.url(),
        "t",
        &["--shutdown-timeout", "1s", "--call-timeout", "120s"],
    )
    .await;
    write_session(&proxy, 1, 0, 1, 4);
    eventually("coderd holds the call", || {
        coderd.sink.max_calls_in_flight() == 1
    })
    .await;
    let started = std::time::Instant::now();
    proxy.process.sigterm();
    let exited = proxy.process.wait_within(Duration::from_secs(1 + 5)).await;
    assert!(exited.status.success(), "{:?}", exited.status);
    assert!(
        started.elapsed() < Duration::from_secs(1) + Duration::from_millis(1500),
        "exit took {:?}",
        started.elapsed()
    );
    let totals = stopped_totals(&exited.stderr);
    assert_accounting_totals(totals, 0);
    assert_eq!(
        (totals.forwarded, totals.dropped_shutdown),
        (0, 4),
        "{totals:?}"
    );
}

/// A TLS front for the sink with a self-signed certificate for 127.0.0.1 made here;
/// returns its port and the certificate's PEM file.
async fn tls_coderd(coderd: &TestCoderd, dir: &std::path::Path) -> (SocketAddr, PathBuf) {
    tls_coderd_with(coderd, dir, rcgen::IsCa::NoCa).await
}

/// As [`tls_coderd`], the certificate marked as a CA or not (`openssl req -x509` marks
/// its self-signed certificates `CA:TRUE`).
async fn tls_coderd_with(
    coderd: &TestCoderd,
    dir: &std::path::Path,
    is_ca: rcgen::IsCa,
) -> (SocketAddr, PathBuf) {
    use tokio_rustls::rustls;
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("certificate parameters");
    params.is_ca = is_ca;
    let signing_key = rcgen::KeyPair::generate().expect("a key");
    let cert = params
        .self_signed(&signing_key)
        .expect("a self-signed certificate");
    let pem = dir.join("coderd-ca.pem");
    std::fs::write(&pem, cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sink = coderd.sink.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, sink) = (acceptor.clone(), sink.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    sink.serve_connection(tls).await;
                }
            });
        }
    });
    (addr, pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_a_coderd_with_a_private_ca_needs_coder_ca_file() {
    let coderd = TestCoderd::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let (addr, pem) = tls_coderd(&coderd, dir.path()).await;
    let url = format!("https://{addr}");

    let trusting = Proxy::start(&url, "t", &["--coder-ca-file", pem.to_str().unwrap()]).await;
    let written = write_session(&trusting, 1, 0, 3, 4);
    let scrape = trusting.forwarded(12).await;
    assert_eq!(
        scrape.get("coderd_connects_total", Some("result=\"ok\"")),
        1
    );
    assert_eq!(delivered_raw(&coderd)[&session(1)], written);
    trusting.stop().await;

    // Without the CA the certificate is not trusted: nothing is sent, all is counted.
    let doubting = Proxy::start(&url, "t", &["--retry-max-elapsed", "1s"]).await;
    write_session(&doubting, 2, 0, 1, 4);
    let scrape = doubting.forward_failed(4).await;
    assert!(scrape.get("coderd_connects_total", Some("result=\"network_error\"")) >= 1);
    assert!(!delivered_raw(&coderd).contains_key(&session(2)));
    doubting.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_ca_certificate_as_coderds_own_is_refused_with_what_to_do() {
    // rustls refuses a certificate marked CA:TRUE as the server's own, even when it is the
    // trusted one; the operator must learn why, not only that the handshake failed.
    let coderd = TestCoderd::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let (addr, pem) = tls_coderd_with(&coderd, dir.path(), ca).await;
    let url = format!("https://{addr}");
    let proxy = Proxy::start(
        &url,
        "t",
        &[
            "--coder-ca-file",
            pem.to_str().unwrap(),
            "--retry-max-elapsed",
            "1s",
        ],
    )
    .await;
    write_session(&proxy, 1, 0, 1, 2);
    proxy.forward_failed(2).await;
    // The failure says what is wrong with the certificate and what to do.
    proxy
        .logs_eventually(&["CA:TRUE", "CA:FALSE", "--coder-ca-file"])
        .await;
    assert!(delivered_raw(&coderd).is_empty());
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_binary_serves_the_coder_protocol_to_the_proxy_binary() {
    let listen = free_addr().to_string();
    let sink = Process::spawn(&[
        "sink",
        "--listen",
        &listen,
        "--protocol",
        "coder",
        "--token",
        "T",
        "--log-format",
        "json",
    ]);
    eventually("the sink listening", || sink.logged("sink listening")).await;
    let url = format!("http://{listen}");

    let refused = Proxy::start(&url, "not-T", &["--retry-max-elapsed", "1s"]).await;
    write_session(&refused, 1, 0, 1, 2);
    refused
        .scrape_until("a 401 counted", |s| {
            s.get("coderd_connects_total", Some("result=\"http_error\"")) >= 1
        })
        .await;
    refused
        .logs_eventually(&["401", "Workspace agent not authorized."])
        .await;
    refused.stop().await;

    let proxy = Proxy::start(&url, "T", &[]).await;
    let sent = request(&session(1), PROCESS, 0, 3);
    let mut client = proxy.connect();
    client.send(&workload::frame(Tag::V2, &sent));
    client.finish();
    proxy.forwarded(3).await;
    proxy.stop().await;
    eventually("three JSON lines printed", || sink.stdout.len() == 3).await;
    let lines = sink.stdout.get();
    for (line, log) in lines.iter().zip(&sent.logs) {
        let printed: serde_json::Value = serde_json::from_str(line).expect("a JSON line per log");
        assert_eq!(printed["msg"], "boundary_request");
        assert_eq!(printed["session_id"], session(1));
        assert_eq!(printed["sequence_number"], log.sequence_number);
    }
    let exited = sink.terminate().await;
    assert!(exited.status.success(), "{:?}", exited.stderr);
}
