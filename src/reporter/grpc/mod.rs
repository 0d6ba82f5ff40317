//! The gRPC reporter: coderd's `Agent.ReportBoundaryLogs` over h2c or a Unix socket,
//! lazily connected and reconnecting, one deadline per call, already-encoded requests
//! put on the wire as they are.

mod codec;
mod failure;
mod probe;

use std::fmt;
use std::time::Duration;

use http::uri::PathAndQuery;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use self::codec::{Outbound, RawCodec};
use self::failure::{caused_by_transport, deadline_from_local_timeout};
pub use self::failure::{classify, oversize, Failure, Oversize};
use self::probe::CoderdProbe;
use super::{EncodedRequest, Reporter};
use crate::proto::agent::{ReportBoundaryLogsRequest, ReportBoundaryLogsResponse};

/// The gRPC method every call goes to.
pub const METHOD_PATH: &str = "/coder.agent.v2.Agent/ReportBoundaryLogs";
/// The metadata key carrying `--auth-token`.
pub const AUTH_METADATA_KEY: &str = "coder-session-token";
/// Default longest wait for one call, connecting included.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Default longest wait for a TCP or Unix connection to be established.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default largest request sent: grpc-go's (and so coderd's) default receive limit.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 << 20;
/// Largest response accepted; `ReportBoundaryLogsResponse` is empty. Checked by the
/// codec (`codec::ResponseDecoder`), not by tonic's decoding limit: tonic words its
/// refusal exactly as a server refusing our request for its size ("decoded message
/// length too large"), which the forwarder answers by splitting a request coderd has
/// already taken and sending it again.
pub(super) const MAX_RESPONSE_BYTES: usize = 64 << 10;
/// tonic's own limit on a response: what a response may make the proxy buffer before
/// the codec sees it. One byte over tonic's default (4 MiB), so that its refusal of a
/// response, which it words as a server's refusal of a request, names a limit no
/// server uses and is told apart (`response_refusal`).
const MAX_BUFFERED_RESPONSE_BYTES: usize = (4 << 20) + 1;
/// Default HTTP/2 keepalive: while a call is open and nothing was read for this
/// long, ping coderd...
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// ...and drop the connection (and reconnect) if the ping is not answered in this long.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive, so an idle connection to a vanished host is noticed and replaced.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const TCP_KEEPALIVE_RETRIES: u32 = 3;

/// Why a `GrpcReporter` could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ReporterError {
    /// The coderd URL is neither `http://HOST:PORT` nor `unix:/PATH`.
    #[error("coderd URL {url:?}: {reason} (expected http://HOST:PORT or unix:/PATH)")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The auth token cannot be sent as gRPC metadata.
    #[error("the auth token is not a valid gRPC metadata value (visible ASCII only, no spaces)")]
    InvalidAuthToken,
    /// A zero call timeout would fail every call.
    #[error("the call timeout must be above zero")]
    ZeroCallTimeout,
    /// The channel's background task needs a Tokio runtime.
    #[error("a GrpcReporter must be created inside a Tokio runtime")]
    NoRuntime,
}

/// What a `GrpcReporter` connects to and how it calls.
#[derive(Clone)]
pub struct GrpcReporterConfig {
    /// `http://HOST:PORT` (HTTP/2 without TLS) or `unix:/PATH`.
    pub coderd: String,
    /// Sent as `coder-session-token` metadata on every call.
    pub auth_token: Option<String>,
    /// Longest one call may take, waiting for a connection included; on expiry the
    /// call fails with DEADLINE_EXCEEDED.
    pub call_timeout: Duration,
    /// Longest a connection attempt may take.
    pub connect_timeout: Duration,
    /// Largest encoded request sent; a larger one fails with OUT_OF_RANGE without
    /// being sent, which [`classify`] reads as `TooLarge` (the forwarder splits it).
    pub max_message_bytes: usize,
    /// HTTP/2 keepalive, only while calls are open (no pings on an idle connection,
    /// which grpc-go servers punish): after this long without a frame from coderd, a
    /// ping is sent. Without it, a connection whose peer vanished without a reset
    /// keeps timing out every call until the kernel gives up on it. `None`: off.
    pub keepalive_interval: Option<Duration>,
    /// How long a keepalive ping may go unanswered before the connection is dropped.
    pub keepalive_timeout: Duration,
}

impl GrpcReporterConfig {
    /// The defaults for the given coderd URL: no token, 10 s calls, 5 s connects,
    /// 4 MiB requests, 20 s / 10 s keepalive.
    pub fn new(coderd: impl Into<String>) -> Self {
        Self {
            coderd: coderd.into(),
            auth_token: None,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            keepalive_interval: Some(DEFAULT_KEEPALIVE_INTERVAL),
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
        }
    }

    /// Sets the token sent as `coder-session-token`.
    pub fn auth_token(mut self, token: impl Into<String>) -> Self {
        self.auth_token = Some(token.into());
        self
    }

    /// Sets the per-call timeout.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Sets the connection timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the largest request sent.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Sets the HTTP/2 keepalive (`None` turns it off) and its ping timeout.
    pub fn keepalive(mut self, interval: Option<Duration>, timeout: Duration) -> Self {
        self.keepalive_interval = interval;
        self.keepalive_timeout = timeout;
        self
    }
}

impl fmt::Debug for GrpcReporterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcReporterConfig")
            .field("coderd", &self.coderd)
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .field("call_timeout", &self.call_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("keepalive_timeout", &self.keepalive_timeout)
            .finish()
    }
}

/// Reports to coderd over gRPC. Connects lazily (coderd may be down when it is
/// built) and reconnects by itself after the connection breaks. Cheap to clone; the
/// clones share one connection.
#[derive(Clone)]
pub struct GrpcReporter {
    grpc: tonic::client::Grpc<Channel>,
    auth_token: Option<AsciiMetadataValue>,
    call_timeout: Duration,
    max_message_bytes: usize,
    coderd: String,
    probe: CoderdProbe,
}

impl GrpcReporter {
    /// Validates the configuration and prepares the (not yet connected) channel.
    /// Must be called inside the Tokio runtime the calls will run on.
    pub fn new(config: GrpcReporterConfig) -> Result<Self, ReporterError> {
        if config.call_timeout.is_zero() {
            return Err(ReporterError::ZeroCallTimeout);
        }
        let auth_token = config
            .auth_token
            .as_deref()
            .map(|t| {
                // The header parser also takes spaces, tabs and bytes above 0x7f.
                if crate::config::token_problem(t).is_some() {
                    return Err(ReporterError::InvalidAuthToken);
                }
                t.parse::<AsciiMetadataValue>()
                    .map_err(|_| ReporterError::InvalidAuthToken)
            })
            .transpose()?;
        let mut endpoint = endpoint(&config.coderd)?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .tcp_keepalive(Some(TCP_KEEPALIVE))
            .tcp_keepalive_interval(Some(TCP_KEEPALIVE_INTERVAL))
            .tcp_keepalive_retries(Some(TCP_KEEPALIVE_RETRIES));
        if let Some(interval) = config.keepalive_interval {
            endpoint = endpoint
                .http2_keep_alive_interval(interval)
                .keep_alive_timeout(config.keepalive_timeout)
                .keep_alive_while_idle(false);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ReporterError::NoRuntime);
        }
        let grpc = tonic::client::Grpc::new(endpoint.connect_lazy())
            .max_encoding_message_size(config.max_message_bytes)
            .max_decoding_message_size(MAX_BUFFERED_RESPONSE_BYTES);
        Ok(Self {
            grpc,
            auth_token,
            call_timeout: config.call_timeout,
            max_message_bytes: config.max_message_bytes,
            probe: CoderdProbe::new(&config.coderd),
            coderd: config.coderd,
        })
    }

    /// One call: waits for the connection and the answer, both within the call timeout.
    async fn call(&self, body: Outbound) -> Result<(), Status> {
        // Checked here, not left to tonic: its limit fails the call as a reset stream,
        // which would read as a (retryable) transport error.
        let len = body.encoded_len();
        if len > self.max_message_bytes {
            return Err(Status::out_of_range(format!(
                "request of {len} bytes is over the {} byte limit",
                self.max_message_bytes
            )));
        }
        match tokio::time::timeout(self.call_timeout, self.call_unbounded(body)).await {
            Ok(Err(status)) if caused_by_transport(&status) => {
                self.probe.after_transport_failure();
                Err(status)
            }
            Ok(result) => result,
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer from coderd within {:?}",
                self.call_timeout
            ))),
        }
    }

    async fn call_unbounded(&self, body: Outbound) -> Result<(), Status> {
        let mut grpc = self.grpc.clone();
        grpc.ready()
            .await
            .map_err(|e| Status::from_error(Box::new(e)))?;
        let mut request = tonic::Request::new(body);
        // Tells coderd the deadline; the timer above enforces it here.
        request.set_timeout(self.call_timeout);
        if let Some(token) = &self.auth_token {
            request
                .metadata_mut()
                .insert(AUTH_METADATA_KEY, token.clone());
        }
        grpc.unary(request, PathAndQuery::from_static(METHOD_PATH), RawCodec)
            .await
            .map(drop)
            .map_err(deadline_from_local_timeout)
            .map_err(response_refusal)
    }
}

/// tonic's refusal of a response over [`MAX_BUFFERED_RESPONSE_BYTES`], reworded as the
/// codec words a response over [`MAX_RESPONSE_BYTES`]: coderd took the request, so it
/// must not read as the request refused for its size (`failure::oversize`).
fn response_refusal(status: Status) -> Status {
    let ours = format!("the limit is: {MAX_BUFFERED_RESPONSE_BYTES} bytes");
    if status.code() == tonic::Code::OutOfRange
        && status
            .message()
            .contains("decoded message length too large")
        && status.message().contains(&ours)
    {
        return Status::internal(format!(
            "coderd's response is over {MAX_BUFFERED_RESPONSE_BYTES} bytes, over the \
             {MAX_RESPONSE_BYTES} this proxy takes for an empty ReportBoundaryLogsResponse \
             ({})",
            status.message()
        ));
    }
    status
}

impl fmt::Debug for GrpcReporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcReporter")
            .field("coderd", &self.coderd)
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .field("call_timeout", &self.call_timeout)
            .finish_non_exhaustive()
    }
}

impl Reporter for GrpcReporter {
    async fn report_boundary_logs(
        &self,
        request: ReportBoundaryLogsRequest,
    ) -> Result<ReportBoundaryLogsResponse, Status> {
        self.call(Outbound::Message(request))
            .await
            .map(|()| ReportBoundaryLogsResponse {})
    }

    async fn report_encoded(&self, request: EncodedRequest) -> Result<(), Status> {
        self.call(Outbound::Encoded(request.bytes)).await
    }

    /// tonic's calls are awaits (connect, HTTP/2, the answer) the forwarder can drop
    /// at its deadline; nothing blocks the thread.
    fn calls_may_block(&self) -> bool {
        false
    }
}

/// Parses `http://HOST:PORT` or `unix:/PATH` into a tonic endpoint.
fn endpoint(url: &str) -> Result<Endpoint, ReporterError> {
    let invalid = |reason: &str| ReporterError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    if let Some(rest) = url.strip_prefix("unix:") {
        if rest.trim_start_matches('/').is_empty() {
            return Err(invalid("the socket path is empty"));
        }
        return Endpoint::from_shared(url.to_owned()).map_err(|e| invalid(&e.to_string()));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(invalid("TLS is not supported; use http:// (h2c)")),
        Some(_) | None => return Err(invalid("unsupported scheme")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(invalid("a path is not allowed"));
    }
    Ok(Endpoint::from(uri))
}
