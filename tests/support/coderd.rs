//! A fake coderd for integration tests: a real tonic server for
//! `Agent.ReportBoundaryLogs` on loopback TCP or a Unix socket in a temp dir.
//!
//! It records every request it accepts (decoded, and its raw bytes as they arrived)
//! with its `coder-session-token` metadata, and can be scripted:
//!
//! ```ignore
//! let coderd = FakeCoderd::start().await;          // or FakeCoderd::start_unix()
//! let url = coderd.addr();                        // "http://127.0.0.1:PORT" / "unix:/PATH"
//! coderd.set_behaviour(Behaviour::fail_next(2, Code::Unavailable));
//! coderd.set_behaviour(Behaviour::normal().with_delay(Duration::from_millis(500)));
//! coderd.set_behaviour(Behaviour::fail_all(Code::Unavailable)); // up, but refusing
//! coderd.set_behaviour(Behaviour::normal().with_max_message_bytes(64 << 10)); // tonic's limit
//! coderd.set_behaviour(Behaviour::normal().with_max_logs(1000)); // coderd's "batch size" error
//! coderd.stop().await;                            // stops listening (graceful, as coderd)
//! coderd.restart().await;                         // listens again on the same port / path
//! assert!(coderd.wait_for_logs(10, Duration::from_secs(5)).await);
//! let got = coderd.requests();                    // accepted requests, in arrival order
//! ```
//!
//! Semantics: a call's outcome (scripted failure or not) is decided when it arrives,
//! then the delay is slept, then it is answered. Only calls answered OK are recorded
//! in `requests()`; `calls()` counts every call that reached the handler. A call
//! whose client gave up during the delay is not recorded (tonic drops the handler).
//! Recorded state survives `stop()` / `restart()`. Dropping the fake stops it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use std::convert::Infallible;
use std::task::{Context, Poll};

use boundary_log_proxy::proto::agent::{ReportBoundaryLogsRequest, ReportBoundaryLogsResponse};
use boundary_log_proxy::reporter::grpc::METHOD_PATH;
use bytes::{Buf as _, Bytes};
use prost::Message as _;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, StdError};
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};

/// The metadata key the proxy sends its token in.
pub const TOKEN_KEY: &str = "coder-session-token";
/// Longest `stop()` waits for in-flight calls before abandoning the server task.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How the fake answers calls; see the module docs for the order of effects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Behaviour {
    /// Each call sleeps this long before it is answered.
    pub delay: Duration,
    /// The next `n` calls fail with the code; later calls are answered normally.
    pub fail_next: Option<(u32, Code)>,
    /// While set, every call fails with this code.
    pub fail_all: Option<Code>,
    /// Largest request accepted, in bytes: tonic's own receive limit
    /// (`max_decoding_message_size`), which refuses a larger one with OUT_OF_RANGE
    /// before the handler sees it. `None`: tonic's default (4 MiB).
    pub max_message_bytes: Option<usize>,
    /// Most logs accepted in one request; more are refused as coderd does, with an
    /// UNKNOWN status saying "batch size N exceeds maximum M".
    pub max_logs: Option<usize>,
}

impl Behaviour {
    /// Accept everything at once.
    pub fn normal() -> Self {
        Self::default()
    }

    /// Fail the next `n` calls with `code`.
    pub fn fail_next(n: u32, code: Code) -> Self {
        Self {
            fail_next: Some((n, code)),
            ..Self::default()
        }
    }

    /// Fail every call with `code` until told otherwise.
    pub fn fail_all(code: Code) -> Self {
        Self {
            fail_all: Some(code),
            ..Self::default()
        }
    }

    /// Also sleep `delay` in every call.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Also refuse requests over `bytes` (tonic's receive limit).
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = Some(bytes);
        self
    }

    /// Also refuse requests of more than `logs` logs (coderd's batch size limit).
    pub fn with_max_logs(mut self, logs: usize) -> Self {
        self.max_logs = Some(logs);
        self
    }
}

/// One accepted call.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The request as decoded.
    pub request: ReportBoundaryLogsRequest,
    /// The request's bytes as they arrived.
    pub raw: Bytes,
    /// The `coder-session-token` metadata, if sent.
    pub token: Option<String>,
}

#[derive(Default)]
struct State {
    recorded: Mutex<Recorded>,
    changed: Notify,
}

#[derive(Default)]
struct Recorded {
    accepted: Vec<Received>,
    logs: usize,
    calls: u64,
    /// Calls refused for `max_logs`.
    refused_logs: u64,
    behaviour: Behaviour,
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Handles one call: records the metadata, applies the behaviour, decodes, records.
#[derive(Clone)]
struct Handler(Arc<State>);

impl Handler {
    async fn handle(
        self,
        request: Request<Bytes>,
    ) -> Result<Response<ReportBoundaryLogsResponse>, Status> {
        let token = request
            .metadata()
            .get(TOKEN_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (delay, failure) = {
            let mut rec = self.0.lock();
            rec.calls += 1;
            let behaviour = &mut rec.behaviour;
            let failure = match (&mut behaviour.fail_next, behaviour.fail_all) {
                (_, Some(code)) => Some(code),
                (Some((left, code)), None) if *left > 0 => {
                    *left -= 1;
                    Some(*code)
                }
                _ => None,
            };
            (rec.behaviour.delay, failure)
        };
        self.0.changed.notify_waiters();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some(code) = failure {
            return Err(Status::new(code, "fake coderd: scripted failure"));
        }
        let raw = request.into_inner();
        let request = ReportBoundaryLogsRequest::decode(raw.clone())
            .map_err(|e| Status::internal(format!("fake coderd: decoding: {e}")))?;
        let max_logs = self.0.lock().behaviour.max_logs;
        if let Some(max) = max_logs.filter(|&max| request.logs.len() > max) {
            self.0.lock().refused_logs += 1;
            return Err(Status::unknown(format!(
                "batch size {} exceeds maximum {max}",
                request.logs.len()
            )));
        }
        {
            let mut rec = self.0.lock();
            rec.logs += request.logs.len();
            rec.accepted.push(Received {
                request,
                raw,
                token,
            });
        }
        self.0.changed.notify_waiters();
        Ok(Response::new(ReportBoundaryLogsResponse {}))
    }
}

impl tonic::server::UnaryService<Bytes> for Handler {
    type Response = ReportBoundaryLogsResponse;
    type Future = BoxFuture<Response<ReportBoundaryLogsResponse>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        Box::pin(self.clone().handle(request))
    }
}

/// The Agent service, hand-written so the handler sees the request's raw bytes.
#[derive(Clone)]
struct FakeAgent(Handler);

impl tonic::server::NamedService for FakeAgent {
    const NAME: &'static str = "coder.agent.v2.Agent";
}

impl<B> tower::Service<http::Request<B>> for FakeAgent
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != METHOD_PATH {
            return Box::pin(async { Ok(Status::unimplemented("fake coderd").into_http()) });
        }
        let handler = self.0.clone();
        let max_bytes = handler.0.lock().behaviour.max_message_bytes;
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RawRequestCodec);
            if let Some(max) = max_bytes {
                grpc = grpc.max_decoding_message_size(max);
            }
            Ok(grpc.unary(handler, request).await)
        })
    }
}

/// Server side: requests come in as bytes, responses go out through prost.
#[derive(Clone, Copy)]
struct RawRequestCodec;

impl Codec for RawRequestCodec {
    type Encode = ReportBoundaryLogsResponse;
    type Decode = Bytes;
    type Encoder = ResponseEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> ResponseEncoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

struct ResponseEncoder;

impl Encoder for ResponseEncoder {
    type Item = ReportBoundaryLogsResponse;
    type Error = Status;

    fn encode(
        &mut self,
        item: ReportBoundaryLogsResponse,
        dst: &mut EncodeBuf<'_>,
    ) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("fake coderd: encoding: {e}")))
    }
}

struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[derive(Debug, Clone)]
enum Place {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// The fake coderd; see the module docs.
pub struct FakeCoderd {
    state: Arc<State>,
    place: Place,
    running: Option<Running>,
    _dir: Option<tempfile::TempDir>,
}

impl FakeCoderd {
    /// Listens on `127.0.0.1:0`.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let place = Place::Tcp(listener.local_addr().expect("local addr"));
        let mut fake = Self {
            state: Arc::default(),
            place,
            running: None,
            _dir: None,
        };
        fake.serve(Listener::Tcp(listener));
        fake
    }

    /// Listens on a Unix socket in a fresh temp dir.
    pub async fn start_unix() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("coderd.sock");
        let listener = UnixListener::bind(&path).expect("bind unix socket");
        let mut fake = Self {
            state: Arc::default(),
            place: Place::Unix(path),
            running: None,
            _dir: Some(dir),
        };
        fake.serve(Listener::Unix(listener));
        fake
    }

    /// The URL to give the proxy's `--coderd`: `http://127.0.0.1:PORT` or `unix:/PATH`.
    pub fn addr(&self) -> String {
        match &self.place {
            Place::Tcp(addr) => format!("http://{addr}"),
            Place::Unix(path) => format!("unix:{}", path.display()),
        }
    }

    /// Replaces the behaviour (a `fail_next` count starts afresh).
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.state.lock().behaviour = behaviour;
    }

    /// Accepted requests, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        self.state.lock().accepted.clone()
    }

    /// Logs in accepted requests.
    pub fn logs_received(&self) -> usize {
        self.state.lock().logs
    }

    /// Calls that reached the handler, failed ones included (not those tonic refused
    /// for `max_message_bytes`, which never reach it).
    pub fn calls(&self) -> u64 {
        self.state.lock().calls
    }

    /// Calls refused for `max_logs`.
    pub fn refused_for_logs(&self) -> u64 {
        self.state.lock().refused_logs
    }

    /// Whether it is listening.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Waits until at least `n` logs were accepted; false on timeout.
    pub async fn wait_for_logs(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |rec| rec.logs >= n).await
    }

    /// Waits until at least `n` calls arrived; false on timeout.
    pub async fn wait_for_calls(&self, n: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, |rec| rec.calls >= n).await
    }

    async fn wait_until(&self, timeout: Duration, done: impl Fn(&Recorded) -> bool) -> bool {
        let wait = async {
            loop {
                let changed = self.state.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if done(&self.state.lock()) {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// Stops listening, as coderd does on shutdown: no new connections, open ones are
    /// sent GOAWAY and closed once their calls are answered. No-op when stopped.
    pub async fn stop(&mut self) {
        let Some(Running { stop, mut task }) = self.running.take() else {
            return;
        };
        let _ = stop.send(());
        if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
            task.abort();
        }
        if let Place::Unix(path) = &self.place {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Listens again on the same port or path (stopping first if running). Recorded
    /// requests and the behaviour are kept.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = match &self.place {
            Place::Tcp(addr) => Listener::Tcp(TcpListener::bind(addr).await.expect("rebind port")),
            Place::Unix(path) => Listener::Unix(UnixListener::bind(path).expect("rebind socket")),
        };
        self.serve(listener);
    }

    fn serve(&mut self, listener: Listener) {
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            // A dropped sender (the fake was dropped) stops the server too.
            let _ = stopped.await;
        };
        let router = tonic::transport::Server::builder()
            .add_service(FakeAgent(Handler(Arc::clone(&self.state))));
        let task = tokio::spawn(async move {
            let served = match listener {
                Listener::Tcp(l) => {
                    router
                        .serve_with_incoming_shutdown(TcpIncoming::from(l), shutdown)
                        .await
                }
                Listener::Unix(l) => {
                    router
                        .serve_with_incoming_shutdown(UnixListenerStream::new(l), shutdown)
                        .await
                }
            };
            served.expect("fake coderd server failed");
        });
        self.running = Some(Running { stop, task });
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}
