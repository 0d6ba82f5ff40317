//! The coder reporter: coderd's Agent API as storj DRPC over hashicorp yamux over a
//! websocket, the way coder's own agent calls it (docs/coder-transport.md). One file per
//! layer, top-down: [`CoderReporter`] (here) makes each `ReportBoundaryLogs` call with
//! [`call`] on a stream of the [`session`] (yamux) over the [`websocket`], opened on a
//! [`net`] connection after the [`buildinfo`] version gate; [`drpc`] is the wire codec.

pub mod buildinfo;
pub mod call;
pub mod drpc;
pub mod net;
pub mod session;
pub mod websocket;

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use self::buildinfo::Gate;
use self::call::{CallError, REPORT_BOUNDARY_LOGS};
use self::net::{Connector, TlsSetupError};
use self::session::Session;
use super::{EncodedRequest, Reporter};
use crate::config::coder::{CoderSettings, CoderUrl};
use crate::events::{
    CoderdConnectFailed, CoderdConnected, CoderdDisconnected, InternalEvent as _,
    NonUuidSessionForwarded,
};
use crate::metrics::{CoderdConnectResult, Metrics};
use crate::proto::agent::{ReportBoundaryLogsRequest, ReportBoundaryLogsResponse};

/// Default longest wait for each connection step (TCP+TLS, buildinfo, upgrade).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default longest wait for one call, connecting included (see `send_prepared`).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why connecting to coderd failed. Every one is transient for the forwarder: the call
/// fails with UNAVAILABLE and is retried (on a new connection) under `--retry-max-elapsed`.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP, TLS or the HTTP exchange broke.
    #[error("{what}: {source}")]
    Network {
        /// The step.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A step took longer than the connect timeout.
    #[error("{what}: timed out after {after:?}")]
    Timeout {
        /// The step.
        what: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// coderd answered with an HTTP error (401 for a wrong token).
    #[error("{what}: coderd answered HTTP {status}: {message}")]
    Http {
        /// The request.
        what: &'static str,
        /// The HTTP status.
        status: u16,
        /// coderd's `message` (and `detail`).
        message: String,
    },
    /// The websocket handshake failed for another reason.
    #[error("websocket upgrade: {0}")]
    Upgrade(String),
    /// `/api/v2/buildinfo` answered something unreadable.
    #[error("GET /api/v2/buildinfo: {0}")]
    BuildInfo(String),
    /// coderd is older than v2.31.0 and `--coder-allow-agent-role` is not set.
    #[error(
        "coderd {version} is older than v2.31.0: it would take this proxy for the workspace \
         agent itself (marking the agent connected and disconnected with it); not connecting. \
         Upgrade coderd, or pass --coder-allow-agent-role to accept that"
    )]
    RefusedVersion {
        /// The version coderd reported.
        version: String,
    },
}

impl ConnectError {
    /// How `coderd_connects_total` counts it.
    pub fn result(&self) -> CoderdConnectResult {
        match self {
            Self::Http { .. } => CoderdConnectResult::HttpError,
            Self::RefusedVersion { .. } => CoderdConnectResult::RefusedVersion,
            _ => CoderdConnectResult::NetworkError,
        }
    }
}

/// Why a `CoderReporter` could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CoderSetupError {
    /// The TLS settings (system roots, `--coder-ca-file`).
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// A zero call timeout would fail every call.
    #[error("the call timeout must be above zero")]
    ZeroCallTimeout,
}

/// What a [`CoderReporter`] connects to and how it calls.
#[derive(Clone, PartialEq, Eq)]
pub struct CoderConfig {
    /// coderd's base URL.
    pub url: CoderUrl,
    /// The workspace agent's token, sent as `Coder-Session-Token`.
    pub token: String,
    /// Extra PEM roots for `https://`.
    pub ca_file: Option<PathBuf>,
    /// Connect to coderd older than v2.31.0 anyway.
    pub allow_agent_role: bool,
    /// Longest one call may take, connecting included; on expiry it fails with UNAVAILABLE
    /// and the connection it used is replaced.
    pub call_timeout: Duration,
    /// Longest each connection step may take.
    pub connect_timeout: Duration,
}

impl CoderConfig {
    /// Defaults for `url` and `token`: no extra roots, the version gate on, 10 s calls, 5 s
    /// connection steps.
    pub fn new(url: CoderUrl, token: impl Into<String>) -> Self {
        Self {
            url,
            token: token.into(),
            ca_file: None,
            allow_agent_role: false,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// From the command line's settings.
    pub fn from_settings(settings: &CoderSettings, call_timeout: Duration) -> Self {
        Self {
            ca_file: settings.ca_file.clone(),
            allow_agent_role: settings.allow_agent_role,
            call_timeout,
            ..Self::new(settings.url.clone(), settings.token.expose())
        }
    }
}

impl std::fmt::Debug for CoderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoderConfig")
            .field("url", &self.url.to_string())
            .field("token", &"<redacted>")
            .field("ca_file", &self.ca_file)
            .field("allow_agent_role", &self.allow_agent_role)
            .field("call_timeout", &self.call_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// Reports to coderd over the coder transport. Connects lazily and once for all callers
/// (concurrent calls share one session, a yamux stream each), and replaces the connection
/// after any transport failure. Cheap to clone; clones share the connection.
#[derive(Clone, Debug)]
pub struct CoderReporter {
    inner: Arc<Inner>,
    /// Shared by the reporter's clones (`None` in the task of a connect attempt): when
    /// the last goes, an attempt under way stops, so that no session is opened, and
    /// no "connected" logged, for a reporter nobody holds any more.
    _owners: Option<Arc<Owners>>,
}

/// Cancels `Inner::gone` when the reporter's last clone is dropped.
#[derive(Debug)]
struct Owners(CancellationToken);

impl Drop for Owners {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

#[derive(Debug)]
struct Inner {
    config: CoderConfig,
    connector: Connector,
    metrics: Arc<Metrics>,
    /// The session calls use, while it lives.
    current: Mutex<Option<Arc<Session>>>,
    /// Held while connecting, so one attempt runs at a time and callers wait for it; holds
    /// the last attempt's failure.
    connecting: Arc<tokio::sync::Mutex<Option<Status>>>,
    /// The step the attempt under way is in (for the callers that stop waiting for it).
    step: Mutex<&'static str>,
    /// Connection attempts finished, so a waiter sees whether one ended while it waited.
    attempts: AtomicU64,
    /// Cancelled when the reporter's last clone is dropped ([`Owners`]).
    gone: CancellationToken,
}

impl CoderReporter {
    /// A reporter that connects on its first call. Must be called inside a Tokio runtime.
    pub fn new(config: CoderConfig, metrics: Arc<Metrics>) -> Result<Self, CoderSetupError> {
        if config.call_timeout.is_zero() {
            return Err(CoderSetupError::ZeroCallTimeout);
        }
        let connector = Connector::new(
            config.url.clone(),
            config.ca_file.as_deref(),
            config.connect_timeout,
        )?;
        if !config.url.tls() && !config.url.is_loopback() {
            tracing::warn!(
                url = %config.url,
                "--coder-url is plain http:// to a host that is not loopback: the agent token \
                 and the audit logs travel unencrypted"
            );
        }
        let gone = CancellationToken::new();
        Ok(Self {
            _owners: Some(Arc::new(Owners(gone.clone()))),
            inner: Arc::new(Inner {
                config,
                connector,
                metrics,
                current: Mutex::new(None),
                connecting: Arc::new(tokio::sync::Mutex::new(None)),
                step: Mutex::new("connecting"),
                attempts: AtomicU64::new(0),
                gone,
            }),
        })
    }

    /// A reporter already connected (for tests and callers that want to fail early).
    pub async fn connect(config: CoderConfig, metrics: Arc<Metrics>) -> Result<Self, Status> {
        let reporter =
            Self::new(config, metrics).map_err(|e| Status::invalid_argument(e.to_string()))?;
        reporter.session().await?;
        Ok(reporter)
    }

    /// Whether a session to coderd is up now.
    pub fn is_connected(&self) -> bool {
        self.live().is_some()
    }

    /// Sends encoded `ReportBoundaryLogsRequest` bytes as they are: OK, UNKNOWN with
    /// coderd's text for a DRPC Error (permanent), UNAVAILABLE for anything that went wrong
    /// on the way (transient).
    pub async fn send(&self, request: &[u8]) -> Result<(), Status> {
        self.send_prepared(&call::request_writes(REPORT_BOUNDARY_LOGS, request))
            .await
    }

    /// [`CoderReporter::send`] with the call's first writes already built by
    /// [`call::request_writes`].
    ///
    /// The call timeout counts from here, connecting included. A call whose deadline comes
    /// while connecting fails, naming the step, but the attempt goes on to its end (each
    /// step within the connect timeout), counted then, and the session it opens is there
    /// for the next call. When the answer does not come in time the stream is abandoned;
    /// the session is replaced only if it was up before this call began: one opened for
    /// this call is kept, and the next call has the whole timeout for its answer.
    /// Otherwise a coderd whose connecting, or connecting and answering together, take
    /// longer than the timeout would be reconnected for ever, and nothing delivered.
    async fn send_prepared(&self, first: &[Cow<'_, [u8]>]) -> Result<(), Status> {
        let timeout = self.inner.config.call_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let was_up = self.live();
        let session = self.session_by(Some(deadline)).await?;
        let work = async {
            let mut stream = session.open().await.map_err(|e| {
                self.discard(&session, &e.to_string());
                Status::unavailable(format!("coderd: opening a stream: {e}"))
            })?;
            match call::unary_prepared(&mut stream, first).await {
                Ok(_response) => Ok(()),
                Err(CallError::Remote { message, .. }) => Err(Status::unknown(message)),
                Err(e) => {
                    self.discard(&session, &e.to_string());
                    Err(Status::unavailable(format!("coderd: {e}")))
                }
            }
        };
        match tokio::time::timeout_at(deadline, work).await {
            Ok(result) => result,
            Err(_) => {
                let reason = format!("no answer within the call timeout ({timeout:?})");
                if was_up.is_some_and(|up| Arc::ptr_eq(&up, &session)) {
                    self.discard(&session, &reason);
                }
                Err(Status::unavailable(format!("coderd: {reason}")))
            }
        }
    }

    fn live(&self) -> Option<Arc<Session>> {
        let current = self
            .inner
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        current.as_ref().filter(|s| !s.is_ended()).cloned()
    }

    /// Stops using `session` (if it is still the current one) so the next call reconnects.
    fn discard(&self, session: &Arc<Session>, reason: &str) {
        let mut current = self
            .inner
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, session)) {
            *current = None;
            if !session.is_ended() {
                CoderdDisconnected { reason }.emit(&self.inner.metrics);
            }
        }
    }

    /// The live session, connecting if there is none. Concurrent callers share one attempt
    /// and its outcome.
    async fn session(&self) -> Result<Arc<Session>, Status> {
        self.session_by(None).await
    }

    /// [`CoderReporter::session`], waiting until `deadline` at most. The attempt to
    /// connect runs in a task of its own and is not cut short when its caller stops
    /// waiting.
    async fn session_by(
        &self,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Arc<Session>, Status> {
        if let Some(session) = self.live() {
            return Ok(session);
        }
        let wait = async {
            let seen = self.inner.attempts.load(Ordering::Acquire);
            let mut last_failure = self.inner.connecting.clone().lock_owned().await;
            if let Some(session) = self.live() {
                return Ok(session);
            }
            if self.inner.attempts.load(Ordering::Acquire) != seen {
                if let Some(status) = last_failure.as_ref() {
                    return Err(status.clone());
                }
            }
            let this = Self {
                inner: self.inner.clone(),
                _owners: None,
            };
            tokio::spawn(async move {
                tokio::select! {
                    outcome = this.attempt(&mut last_failure) => outcome,
                    () = this.inner.gone.cancelled() => {
                        Err(Status::unavailable("coderd: the reporter was dropped"))
                    }
                }
            })
            .await
            .unwrap_or_else(|e| Err(Status::unavailable(format!("coderd: connecting: {e}"))))
        };
        let Some(deadline) = deadline else {
            return wait.await;
        };
        tokio::time::timeout_at(deadline, wait)
            .await
            .unwrap_or_else(|_| {
                let step = *self
                    .inner
                    .step
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                Err(Status::unavailable(format!(
                    "coderd: {step}: still connecting at the call timeout ({:?}); the attempt \
                     goes on",
                    self.inner.config.call_timeout
                )))
            })
    }

    /// One attempt to connect, counted and logged, its failure kept in `last_failure`
    /// (the lock callers wait on).
    async fn attempt(&self, last_failure: &mut Option<Status>) -> Result<Arc<Session>, Status> {
        let outcome = self.open_session().await;
        self.inner.attempts.fetch_add(1, Ordering::Release);
        match outcome {
            Ok((session, version)) => {
                *last_failure = None;
                let mut current = self
                    .inner
                    .current
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                *current = Some(session.clone());
                // Under the lock a replaced session's end takes too (`open_session`), so
                // that end cannot set the gauge to 0 after this sets it to 1.
                CoderdConnected {
                    url: &self.inner.config.url.to_string(),
                    version: &version,
                }
                .emit(&self.inner.metrics);
                if session.is_ended() {
                    // It ended before it was stored here: its end found another (or no)
                    // session current and may have set the gauge already; set it again.
                    CoderdDisconnected {
                        reason: "the session ended as it was opened",
                    }
                    .emit(&self.inner.metrics);
                }
                drop(current);
                Ok(session)
            }
            Err(error) => {
                let text = error.to_string();
                CoderdConnectFailed {
                    result: error.result(),
                    url: &self.inner.config.url.to_string(),
                    error: &text,
                }
                .emit(&self.inner.metrics);
                let status = Status::unavailable(format!("coderd: {text}"));
                *last_failure = Some(status.clone());
                Err(status)
            }
        }
    }

    /// Version gate, websocket upgrade, yamux session; and coderd's version. Names each
    /// step in `Inner::step` as it begins.
    async fn open_session(&self) -> Result<(Arc<Session>, String), ConnectError> {
        let config = &self.inner.config;
        let at = |name| {
            *self
                .inner
                .step
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = name
        };
        at("connecting");
        let io = self.inner.connector.connect().await?;
        at(buildinfo::STEP);
        let version = buildinfo::fetch_version(io, &config.url, config.connect_timeout).await?;
        match buildinfo::gate(&version, config.allow_agent_role) {
            Gate::Pass => {}
            Gate::Allowed(version) => tracing::warn!(
                %version,
                "coderd is older than v2.31.0; connecting anyway (--coder-allow-agent-role): \
                 coderd takes this connection for the workspace agent's own"
            ),
            Gate::Refused(version) => return Err(ConnectError::RefusedVersion { version }),
        }
        at("connecting");
        let io = self.inner.connector.connect().await?;
        at("websocket upgrade");
        let ws = tokio::time::timeout(
            config.connect_timeout,
            websocket::upgrade(io, &config.url, &config.token),
        )
        .await
        .map_err(|_| ConnectError::Timeout {
            what: "websocket upgrade",
            after: config.connect_timeout,
        })??;
        let reporter = Arc::downgrade(&self.inner);
        let session = Session::start(ws, move |reason| {
            // Only while this session is the one in use: a session replaced earlier may end
            // after its successor connected.
            let Some(inner) = reporter.upgrade() else {
                return;
            };
            let current = inner.current.lock().unwrap_or_else(PoisonError::into_inner);
            let replaced = current.as_ref().is_some_and(|current| !current.is_ended());
            if !replaced {
                CoderdDisconnected { reason }.emit(&inner.metrics);
            }
        });
        Ok((Arc::new(session), version.to_string()))
    }

    /// Sends `request` and, once delivered, counts its logs if its session id is not a
    /// UUID. The id is read from `records_end` (where the forwarder's requests keep
    /// it, after the log records) when known: a scan from the start hops from record
    /// to record, about 12 ns per log, 4% of the proxy's CPU on this path in profiles.
    async fn send_counting(
        &self,
        request: &[u8],
        records_end: Option<u32>,
        logs: u64,
    ) -> Result<(), Status> {
        let first = call::request_writes(REPORT_BOUNDARY_LOGS, request);
        let trailer = records_end
            .and_then(|at| request.get(at as usize..))
            .unwrap_or(request);
        let non_uuid = session_id(trailer).filter(|id| !is_uuid(id));
        self.send_prepared(&first).await?;
        if let Some(session_id) = non_uuid {
            NonUuidSessionForwarded { logs, session_id }.emit(&self.inner.metrics);
        }
        Ok(())
    }
}

impl Reporter for CoderReporter {
    async fn report_boundary_logs(
        &self,
        request: ReportBoundaryLogsRequest,
    ) -> Result<ReportBoundaryLogsResponse, Status> {
        let bytes = request.encode_to_vec();
        self.send_counting(&bytes, None, request.logs.len() as u64)
            .await?;
        Ok(ReportBoundaryLogsResponse {})
    }

    async fn report_encoded(&self, request: EncodedRequest) -> Result<(), Status> {
        self.send_counting(&request.bytes, request.records_end, u64::from(request.logs))
            .await
    }

    /// Every wait in a call (connect, TLS, the websocket upgrade, yamux, the answer) is
    /// an await the forwarder can drop at its deadline; nothing blocks the thread.
    fn calls_may_block(&self) -> bool {
        false
    }
}

/// The `session_id` (field 2) of an encoded `ReportBoundaryLogsRequest`, read without
/// decoding the logs: the empty string when absent (proto3's default, which is what
/// coderd sees), `None` if malformed. The last occurrence wins, as in protobuf.
pub fn session_id(bytes: &[u8]) -> Option<&str> {
    /// A varint at `*at`, advancing past it.
    #[inline(always)]
    fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *bytes.get(*at)?;
            *at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(value);
            }
        }
        None
    }
    let mut found = Some("");
    let mut at = 0;
    while at < bytes.len() {
        let key = varint(bytes, &mut at)?;
        let skip = match key & 7 {
            0 => {
                varint(bytes, &mut at)?;
                0
            }
            1 => 8,
            5 => 4,
            2 => usize::try_from(varint(bytes, &mut at)?).ok()?,
            _ => return None,
        };
        let end = at.checked_add(skip).filter(|&end| end <= bytes.len())?;
        if key == (2 << 3 | 2) {
            found = Some(std::str::from_utf8(&bytes[at..end]).ok()?);
        }
        at = end;
    }
    found
}

/// Whether `text` is a UUID in a form Go's `uuid.Parse` (github.com/google/uuid, which
/// coderd uses) accepts: `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, after `urn:uuid:` (any
/// case), between two more bytes (meant as braces, which `uuid.Parse` does not check),
/// or 32 hex digits.
pub fn is_uuid(text: &str) -> bool {
    let bytes = text.as_bytes();
    let dashed = |s: &[u8]| {
        s.len() == 36
            && s.iter().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => *b == b'-',
                _ => b.is_ascii_hexdigit(),
            })
    };
    match bytes.len() {
        32 => bytes.iter().all(u8::is_ascii_hexdigit),
        36 => dashed(bytes),
        38 => dashed(&bytes[1..37]),
        45 => bytes[..9].eq_ignore_ascii_case(b"urn:uuid:") && dashed(&bytes[9..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_read_from_the_encoded_request() {
        let request = ReportBoundaryLogsRequest {
            logs: vec![Default::default(), Default::default()],
            session_id: "6f1c2b9a-2d4e-4c1b-9b8e-0a1b2c3d4e5f".into(),
            confined_process_name: "curl".into(),
        };
        let bytes = request.encode_to_vec();
        assert_eq!(
            session_id(&bytes),
            Some("6f1c2b9a-2d4e-4c1b-9b8e-0a1b2c3d4e5f")
        );
        assert_eq!(
            session_id(&ReportBoundaryLogsRequest::default().encode_to_vec()),
            Some(""),
            "absent: proto3's default, as coderd reads it"
        );
        assert_eq!(session_id(&bytes[..bytes.len() - 7]), None, "cut short");
    }

    #[test]
    fn uuids_are_recognised_in_the_forms_go_accepts() {
        for ok in [
            "6f1c2b9a-2d4e-4c1b-9b8e-0a1b2c3d4e5f",
            "6F1C2B9A-2D4E-4C1B-9B8E-0A1B2C3D4E5F",
            "{6f1c2b9a-2d4e-4c1b-9b8e-0a1b2c3d4e5f}",
            "urn:uuid:6f1c2b9a-2d4e-4c1b-9b8e-0a1b2c3d4e5f",
            "6f1c2b9a2d4e4c1b9b8e0a1b2c3d4e5f",
            // uuid.Parse skips the first of 38 bytes and ignores the last.
            "(6f1c2b9a-2d4e-4c1b-9b8e-0a1b2c3d4e5f)",
        ] {
            assert!(is_uuid(ok), "{ok}");
        }
        for bad in [
            "",
            "session-1",
            "6f1c2b9a-2d4e-4c1b-9b8e-0a1b2c3d4e5",
            "6f1c2b9a-2d4e-4c1b-9b8e_0a1b2c3d4e5f",
            "6f1c2b9a-2d4e-4c1b-9b8e-0a1b2c3d4e5g",
            "urn:uuid:6f1c2b9a-2d4e-4c1b-9b8e-0a1b2c3d4e5",
            "é6f1c2b9a-2d4e-4c1b-9b8e-0a1b2c3d4e5f",
        ] {
            assert!(!is_uuid(bad), "{bad}");
        }
    }

    #[test]
    fn connect_errors_count_under_their_result() {
        let http = ConnectError::Http {
            what: "websocket upgrade",
            status: 401,
            message: "Agent token not authorized.".into(),
        };
        assert_eq!(http.result(), CoderdConnectResult::HttpError);
        assert!(http.to_string().contains("401") && http.to_string().contains("not authorized"));
        let old = ConnectError::RefusedVersion {
            version: "v2.30.0".into(),
        };
        assert_eq!(old.result(), CoderdConnectResult::RefusedVersion);
        assert!(old.to_string().contains("v2.30.0"));
        let timeout = ConnectError::Timeout {
            what: "connecting",
            after: Duration::from_secs(5),
        };
        assert_eq!(timeout.result(), CoderdConnectResult::NetworkError);
    }
}
