//! The sink's coder protocol: coderd's Agent API as coderd serves it (docs/coder-transport.md),
//! so the proxy's coder reporter runs the whole real protocol on one machine, plus the faults
//! the integration tests inject. Layers, one file each, outermost first: `http` (buildinfo,
//! the session token, the websocket upgrade), `session` (websocket messages <-> the yamux
//! server session, keep-alive pings of both), `frames` (yamux frame boundaries, for those
//! pings), `rpc` (the DRPC server side of one unary call on one yamux stream).
//!
//! The state lives in [`CoderSink`]; clones share it, so a test keeps one to inject faults
//! and read what arrived while the server runs.

mod frames;
mod http;
mod rpc;
mod session;

use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::AsFd as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::Sink;

/// The route coderd serves its build information on.
pub const BUILDINFO_PATH: &str = "/api/v2/buildinfo";
/// The route coderd upgrades to the Agent API's websocket.
pub const RPC_PATH: &str = "/api/v2/workspaceagents/me/rpc";
/// The header carrying the agent's token.
pub const TOKEN_HEADER: &str = "Coder-Session-Token";
/// The one DRPC method served.
pub const REPORT_BOUNDARY_LOGS: &str = "/coder.agent.v2.Agent/ReportBoundaryLogs";
/// Most logs coderd accepts in one request (its `maxBoundaryLogsPerBatch`).
pub const MAX_LOGS_PER_REQUEST: usize = 1000;
/// What `/api/v2/buildinfo` reports unless told otherwise: the first coderd with `role`.
pub const DEFAULT_VERSION: &str = "v2.31.0";

/// What `--coder-version` takes.
const VERSION_FORM: &str =
    "a version such as v2.31.0 (v, then three numbers, then any -pre or +build part)";

/// Parses a coderd version as `/api/v2/buildinfo` reports it: `v2.31.0`, `v2.31.0-rc.1`,
/// `v2.31.0+abc123`; the `v` may be left out.
pub fn parse_version(s: &str) -> Result<String, crate::config::ConfigError> {
    let invalid = || crate::config::ConfigError::invalid("--coder-version", s, VERSION_FORM);
    let core = s.strip_prefix('v').unwrap_or(s);
    let core = core.split(['-', '+']).next().unwrap_or("");
    let numbers: Vec<&str> = core.split('.').collect();
    let numeric = |n: &&str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
    if numbers.len() != 3
        || !numbers.iter().all(numeric)
        || s.bytes().any(|b| !b.is_ascii_graphic())
    {
        return Err(invalid());
    }
    Ok(s.to_owned())
}

/// Pings of one kind (websocket or yamux) sent to the client: one every `interval`, and
/// the connection is closed when its answer has not arrived `timeout` after it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Between one ping and the next.
    pub interval: Duration,
    /// How long an answer may take.
    pub timeout: Duration,
}

/// How the coder sink behaves; [`Default`] is coderd's behaviour.
#[derive(Debug, Clone)]
pub struct CoderSinkConfig {
    /// The `version` of `/api/v2/buildinfo`. Default [`DEFAULT_VERSION`].
    pub version: String,
    /// The only session token accepted; `None` accepts any (and none).
    pub token: Option<String>,
    /// Requests with more logs are answered with coderd's DRPC Error; `None`: no limit.
    /// Default [`MAX_LOGS_PER_REQUEST`].
    pub max_logs: Option<usize>,
    /// Waited before answering each call (calls on other streams are not held up).
    pub latency: Duration,
    /// Websocket pings: coderd's heartbeat, every 15 s. `None`: none sent.
    pub websocket_keepalive: Option<Keepalive>,
    /// Yamux pings: hashicorp yamux's keep-alive, every 30 s with a 10 s write timeout.
    pub yamux_keepalive: Option<Keepalive>,
    /// Keep every call's request bytes in [`CoderSink::calls`] (tests; memory grows).
    pub record_calls: bool,
}

impl Default for CoderSinkConfig {
    fn default() -> Self {
        Self {
            version: DEFAULT_VERSION.to_owned(),
            token: None,
            max_logs: Some(MAX_LOGS_PER_REQUEST),
            latency: Duration::ZERO,
            websocket_keepalive: Some(Keepalive {
                interval: Duration::from_secs(15),
                timeout: Duration::from_secs(10),
            }),
            yamux_keepalive: Some(Keepalive {
                interval: Duration::from_secs(30),
                timeout: Duration::from_secs(10),
            }),
            record_calls: false,
        }
    }
}

/// How a connection is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The TCP connection is closed (FIN) without a word.
    TcpClose,
    /// The TCP connection is reset (`SO_LINGER` 0, then close: RST).
    TcpReset,
    /// A websocket close frame (1011, internal error), then the TCP connection is closed.
    WebsocketClose,
}

/// A fault applied to one ReportBoundaryLogs call, in the order they were queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallFault {
    /// Answer a DRPC Error (code 0) with this text; the logs count as not delivered.
    Error(String),
    /// Answer normally, then cut the connection once the client has closed the call's
    /// stream (it has read the answer), or after a second.
    CutAfterAnswer(Cut),
    /// Record the request as received (coderd stored it), then cut the connection
    /// without answering: the client cannot know, so it sends the logs again.
    CutBeforeAnswer(Cut),
}

/// An answer to the next websocket upgrade instead of the upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReject {
    /// The HTTP status.
    pub status: u16,
    /// The `message` of coderd's JSON error body.
    pub message: String,
}

/// How a recorded call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answered with the (empty) response: delivered.
    Answered,
    /// Answered with a DRPC Error with this text: not delivered.
    Error(String),
    /// Recorded, then the connection was cut before the answer: delivered, but the client
    /// did not learn it.
    Cut(Cut),
}

impl Outcome {
    /// Whether coderd kept the logs.
    pub fn delivered(&self) -> bool {
        matches!(self, Self::Answered | Self::Cut(_))
    }
}

/// One call as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The connection it came on, numbered from 1 in the order of the upgrades.
    pub connection: u64,
    /// The DRPC method.
    pub rpc: String,
    /// The request's protobuf bytes, as received.
    pub request: Bytes,
    /// Logs in the request (0 if it did not decode).
    pub logs: usize,
    /// How it ended.
    pub outcome: Outcome,
}

/// One request for the rpc route, upgraded or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Numbered from 1 in arrival order.
    pub id: u64,
    /// The HTTP status answered (101 when upgraded).
    pub status: u16,
    /// The `role` query parameter, if any.
    pub role: Option<String>,
    /// The `version` query parameter (the Agent API version asked for), if any.
    pub api_version: Option<String>,
}

/// Counts of the keep-alive pings sent and answered, over all connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepaliveCounts {
    /// Websocket pings sent.
    pub websocket_pings: u64,
    /// Websocket pongs received for them.
    pub websocket_pongs: u64,
    /// Yamux pings sent.
    pub yamux_pings: u64,
    /// Yamux pings answered (ACK).
    pub yamux_pongs: u64,
    /// Connections closed because a ping was not answered in time.
    pub timeouts: u64,
}

/// The coder-protocol sink: serves connections, holds the faults to inject and what arrived.
#[derive(Debug, Clone)]
pub struct CoderSink {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    sink: Sink,
    config: Mutex<CoderSinkConfig>,
    call_faults: Mutex<VecDeque<CallFault>>,
    http_rejects: Mutex<VecDeque<HttpReject>>,
    calls: Mutex<Vec<Call>>,
    connects: Mutex<Vec<Connect>>,
    buildinfo_requests: AtomicU64,
    keepalive: KeepaliveCounters,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

#[derive(Debug, Default)]
struct KeepaliveCounters {
    websocket_pings: AtomicU64,
    websocket_pongs: AtomicU64,
    yamux_pings: AtomicU64,
    yamux_pongs: AtomicU64,
    timeouts: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl CoderSink {
    /// A coder sink handing each delivered request to `sink` (which prints or counts it).
    pub fn new(sink: Sink, config: CoderSinkConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                sink,
                config: Mutex::new(config),
                call_faults: Mutex::default(),
                http_rejects: Mutex::default(),
                calls: Mutex::default(),
                connects: Mutex::default(),
                buildinfo_requests: AtomicU64::new(0),
                keepalive: KeepaliveCounters::default(),
                in_flight: AtomicU64::new(0),
                max_in_flight: AtomicU64::new(0),
            }),
        }
    }

    /// The printing/counting sink behind it.
    pub fn sink(&self) -> &Sink {
        &self.inner.sink
    }

    /// The configuration now in force.
    pub fn config(&self) -> CoderSinkConfig {
        lock(&self.inner.config).clone()
    }

    /// Changes the configuration; connections and calls that start later see the change.
    pub fn configure(&self, change: impl FnOnce(&mut CoderSinkConfig)) {
        change(&mut lock(&self.inner.config));
    }

    /// Queues faults for the next calls, one call each, in order.
    pub fn fail_calls(&self, faults: impl IntoIterator<Item = CallFault>) {
        lock(&self.inner.call_faults).extend(faults);
    }

    /// Queues answers for the next websocket upgrades, one upgrade each, in order.
    pub fn reject_connects(&self, rejects: impl IntoIterator<Item = HttpReject>) {
        lock(&self.inner.http_rejects).extend(rejects);
    }

    /// Every call so far, in the order they were answered (kept only with `record_calls`).
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.inner.calls).clone()
    }

    /// Every request for the rpc route so far.
    pub fn connects(&self) -> Vec<Connect> {
        lock(&self.inner.connects).clone()
    }

    /// How many times `/api/v2/buildinfo` was asked.
    pub fn buildinfo_requests(&self) -> u64 {
        self.inner.buildinfo_requests.load(Ordering::Relaxed)
    }

    /// The most calls that were being answered at the same time (latency included).
    pub fn max_calls_in_flight(&self) -> u64 {
        self.inner.max_in_flight.load(Ordering::Relaxed)
    }

    /// The keep-alive counts so far.
    pub fn keepalive(&self) -> KeepaliveCounts {
        let k = &self.inner.keepalive;
        KeepaliveCounts {
            websocket_pings: k.websocket_pings.load(Ordering::Relaxed),
            websocket_pongs: k.websocket_pongs.load(Ordering::Relaxed),
            yamux_pings: k.yamux_pings.load(Ordering::Relaxed),
            yamux_pongs: k.yamux_pongs.load(Ordering::Relaxed),
            timeouts: k.timeouts.load(Ordering::Relaxed),
        }
    }

    /// Accepts connections on `listener` until `shutdown` completes, then drops every
    /// connection (no goodbye: a stopping sink looks like a crashed coderd).
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        // A descriptor of its own on the socket, for an injected reset: a
                        // raw number could name another connection's socket by then.
                        let fd = stream.as_fd().try_clone_to_owned().ok();
                        tracing::debug!(%peer, "coder sink: connection accepted");
                        let connection = http::serve_connection(self.clone(), stream, fd);
                        connections.spawn(connection);
                    }
                    Err(error) => {
                        // Out of file descriptors and the like: wait rather than spin.
                        crate::events::accept_failed(crate::events::Listener::CoderSink, &error);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        connections.shutdown().await;
    }

    /// Serves one already accepted connection of any kind (a TLS stream, say). A
    /// [`Cut::TcpReset`] on it only closes it.
    pub async fn serve_connection<I>(&self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        http::serve_connection(self.clone(), io, None).await;
    }

    /// Counts a call in flight until the guard drops.
    fn call_in_flight(&self) -> InFlight<'_> {
        let now = self.inner.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.inner.max_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(&self.inner.in_flight)
    }

    fn next_call_fault(&self) -> Option<CallFault> {
        lock(&self.inner.call_faults).pop_front()
    }

    fn next_http_reject(&self) -> Option<HttpReject> {
        lock(&self.inner.http_rejects).pop_front()
    }

    fn record_call(&self, call: Call) {
        if lock(&self.inner.config).record_calls {
            lock(&self.inner.calls).push(call);
        }
    }

    fn record_connect(
        &self,
        status: u16,
        role: Option<String>,
        api_version: Option<String>,
    ) -> u64 {
        let mut connects = lock(&self.inner.connects);
        let id = connects.len() as u64 + 1;
        connects.push(Connect {
            id,
            status,
            role,
            api_version,
        });
        id
    }
}

/// One call in flight; dropping it ends the call.
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_as_coderd_reports_them_parse_and_others_do_not() {
        for good in ["v2.31.0", "2.30.2", "v2.31.0-rc.1", "v2.31.0+abc123"] {
            assert_eq!(parse_version(good).as_deref(), Ok(good));
        }
        for bad in [
            "",
            "latest",
            "v2.31",
            "v2.31.0.1",
            "v2..0",
            "v2.31.0 ",
            "vx.1.2",
        ] {
            assert!(parse_version(bad).is_err(), "{bad:?}");
        }
    }
}
