//! What `serve`, `sink` and `loadgen` run with: typed settings and their documented
//! defaults. The values' forms and checks (shared by the CLI's parsers and by library
//! users who build a [`Config`] by hand) live in [`values`].

pub mod coder;
pub mod values;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

pub use values::{
    check_batch_max_bytes, check_ring_capacity, check_socket_mode, check_socket_path,
    parse_batch_max_bytes, parse_count, parse_duration, parse_metrics_addr, parse_positive,
    parse_positive_duration, parse_rate, parse_ring_capacity, parse_socket_mode, parse_socket_path,
    parse_uid, takes, CoderdEndpoint, ListenAddr, LogFilter, GRPC_MAX_MESSAGE_BYTES,
    MAX_RING_CAPACITY, MAX_SOCKET_PATH_BYTES,
};
use values::{check_duration, check_positive, check_positive_duration};
pub use values::{
    check_token, parse_readable_file, parse_token, parse_writable_dir, token_problem,
};

/// One thing wrong with a setting. `Display` says what the value must be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A value does not have the form or range the setting takes.
    #[error("invalid value '{value}' for {setting}: {takes}")]
    Invalid {
        /// The flag it came from, e.g. `--ring-capacity`.
        setting: &'static str,
        /// The value as given.
        value: String,
        /// What the setting takes.
        takes: &'static str,
    },
    /// A secret (a token) that cannot be used; the message never shows the value.
    #[error("invalid value for {setting}: {takes}; {problem}")]
    Secret {
        /// The flag it came from, e.g. `--auth-token`.
        setting: &'static str,
        /// What the setting takes.
        takes: &'static str,
        /// What is wrong with this value, without quoting it.
        problem: String,
    },
    /// A setting given without another it only works with.
    #[error("{setting} needs {requires}: {why}")]
    Requires {
        /// The flag given, e.g. `--token`.
        setting: &'static str,
        /// What it needs, e.g. `--protocol coder`.
        requires: &'static str,
        /// Why, in a few words.
        why: &'static str,
    },
    /// A value of the right form that cannot be used, such as a file that cannot be read.
    #[error("invalid value '{value}' for {setting}: {takes}; {problem}")]
    Unusable {
        /// The flag it came from.
        setting: &'static str,
        /// The value as given.
        value: String,
        /// What the setting takes.
        takes: &'static str,
        /// What went wrong, e.g. the I/O error.
        problem: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(
        setting: &'static str,
        value: impl fmt::Display,
        takes: &'static str,
    ) -> Self {
        Self::Invalid {
            setting,
            value: value.to_string(),
            takes,
        }
    }

    /// What the setting takes, without the flag or value (the CLI's error line ends with it).
    pub fn takes(&self) -> &'static str {
        match self {
            Self::Invalid { takes, .. }
            | Self::Secret { takes, .. }
            | Self::Unusable { takes, .. } => takes,
            Self::Requires { why, .. } => why,
        }
    }

    /// The flag the value belongs to, e.g. `--auth-token`.
    pub fn setting(&self) -> &'static str {
        match self {
            Self::Invalid { setting, .. }
            | Self::Secret { setting, .. }
            | Self::Unusable { setting, .. }
            | Self::Requires { setting, .. } => setting,
        }
    }

    /// The message with `note` (such as ` (from BOUNDARY_LOG_PROXY_X)`) after the flag.
    pub fn with_note(&self, note: &str) -> String {
        match self {
            Self::Invalid {
                setting,
                value,
                takes,
            } => format!("invalid value '{value}' for {setting}{note}: {takes}"),
            Self::Secret {
                setting,
                takes,
                problem,
            } => format!("invalid value for {setting}{note}: {takes}; {problem}"),
            Self::Unusable {
                setting,
                value,
                takes,
                problem,
            } => format!("invalid value '{value}' for {setting}{note}: {takes}; {problem}"),
            Self::Requires {
                setting,
                requires,
                why,
            } => format!("{setting}{note} needs {requires}: {why}"),
        }
    }
}

/// `$TMPDIR/boundary-audit.sock`: where boundary connects unless told otherwise.
pub fn default_socket_path() -> PathBuf {
    std::env::temp_dir().join("boundary-audit.sock")
}

/// Which socket reader `serve` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum IoMode {
    /// io_uring when the kernel allows it, else epoll; the choice is logged.
    #[default]
    Auto,
    /// io_uring only; start fails when the kernel refuses it.
    Uring,
    /// epoll (readiness + nonblocking reads).
    Epoll,
}

/// The embedded reporters used instead of coderd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SinkKind {
    /// One JSON line per log on stdout, named as coderd logs them.
    #[default]
    Stdout,
    /// Discard every request (it still counts as forwarded).
    Null,
}

/// The format of the proxy's own logs on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Which frame tag `loadgen` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FrameTag {
    /// TagV1: a bare `ReportBoundaryLogsRequest`.
    V1,
    /// TagV2: the `BoundaryMessage` envelope.
    #[default]
    V2,
}

macro_rules! display_as_value_enum {
    ($($ty:ty),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let value = clap::ValueEnum::to_possible_value(self)
                    .expect("no variant is skipped");
                f.write_str(value.get_name())
            }
        }
    )*};
}
/// When the disk spool makes what it writes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SpoolFsync {
    /// fsync every record before it counts as spooled.
    Always,
    /// fsync what was written at most 100 ms later.
    #[default]
    Interval,
}

display_as_value_enum!(IoMode, SinkKind, LogFormat, FrameTag, SpoolFsync);

/// The session token sent as `coder-session-token`. Never printed: `Debug` and the
/// effective-config dump show `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthToken(String);

impl AuthToken {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token itself, for the request metadata.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

/// A validated tracing filter: a bare level, or `EnvFilter` directives.
/// How the proxy logs about itself (stderr).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogSettings {
    /// `--log-format`; default `text`.
    pub format: LogFormat,
    /// `--log-level`; default `info`.
    pub filter: LogFilter,
}

impl LogSettings {
    fn to_json(&self) -> serde_json::Value {
        json!({ "format": self.format.to_string(), "level": self.filter.as_str() })
    }
}

/// Everything `serve` needs. [`Config::default`] holds the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `--socket`: where boundary connects. Default [`default_socket_path`],
    /// `$TMPDIR/boundary-audit.sock`.
    pub socket: PathBuf,
    /// `--socket-mode`: permission bits of the socket file. Default `0600`.
    pub socket_mode: u32,
    /// `--coderd`: the Agent API. Default none (an embedded sink is used).
    pub coderd: Option<CoderdEndpoint>,
    /// `--auth-token`: sent as `coder-session-token` on every call. Default none.
    pub auth_token: Option<AuthToken>,
    /// The embedded sink, `None` exactly when `coderd` is set. `--sink`; default
    /// `stdout` when `--coderd` is absent.
    pub sink: Option<SinkKind>,
    /// `--metrics-addr`: where `/metrics` and `/healthz` are served. Default none (off).
    pub metrics_addr: Option<SocketAddr>,
    /// `--io`: the socket reader. Default `auto`.
    pub io: IoMode,
    /// `--ring-capacity`: ring slots, one per received frame; a power of two >= 2.
    /// Default 4096.
    pub ring_capacity: usize,
    /// `--batch-max-logs`: most logs in one forwarded request. Default 1000.
    pub batch_max_logs: u32,
    /// `--batch-max-bytes`: most encoded bytes in one forwarded request; below gRPC's
    /// 4 MiB limit. Default 1 MiB (1048576).
    pub batch_max_bytes: usize,
    /// `--batch-linger`: how long the forwarder waits for more frames before sending a
    /// request that is not full. Default 5ms.
    pub batch_linger: Duration,
    /// `--retry-max-elapsed`: how long one request is retried on transient errors
    /// before it is dropped as `forward_failed`; `0s` drops at the first failure.
    /// Default 30s.
    pub retry_max_elapsed: Duration,
    /// `--call-timeout`: deadline of one `ReportBoundaryLogs` call. Default 10s.
    pub call_timeout: Duration,
    /// `--max-connections`: open connections beyond this are closed at once. Default 1024.
    pub max_connections: usize,
    /// `--allow-uid`: when not empty, only peers with these uids are served.
    /// Default empty (any peer).
    pub allow_uids: Vec<u32>,
    /// `--shutdown-timeout`: how long a graceful shutdown may take. Default 5s.
    pub shutdown_timeout: Duration,
    /// `--log-format`, `--log-level`: default `text`, `info`.
    pub log: LogSettings,
    /// `--coder-url` and what goes with it: coderd's Agent API over the coder transport
    /// (docs/coder-transport.md). Default none.
    pub coder: Option<coder::CoderSettings>,
    /// `--spool-dir`: where undeliverable requests are kept on disk. Default none (off).
    pub spool_dir: Option<PathBuf>,
    /// `--spool-max-bytes`: most bytes the spool's files take. Default 256 MiB.
    pub spool_max_bytes: u64,
    /// `--spool-fsync`: when spooled records are made durable. Default `interval`.
    pub spool_fsync: SpoolFsync,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: default_socket_path(),
            socket_mode: 0o600,
            coderd: None,
            auth_token: None,
            sink: Some(SinkKind::Stdout),
            metrics_addr: None,
            io: IoMode::Auto,
            ring_capacity: 4096,
            batch_max_logs: 1000,
            batch_max_bytes: 1 << 20,
            batch_linger: Duration::from_millis(5),
            retry_max_elapsed: Duration::from_secs(30),
            call_timeout: Duration::from_secs(10),
            max_connections: 1024,
            allow_uids: Vec::new(),
            shutdown_timeout: Duration::from_secs(5),
            log: LogSettings::default(),
            coder: None,
            spool_dir: None,
            spool_max_bytes: crate::spool::DEFAULT_MAX_BYTES,
            spool_fsync: SpoolFsync::Interval,
        }
    }
}

/// Where `serve` sends what it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination<'a> {
    /// coderd's Agent API.
    Coderd {
        /// Where it is.
        endpoint: &'a CoderdEndpoint,
        /// The session token, if any.
        auth_token: Option<&'a AuthToken>,
    },
    /// An embedded sink.
    Sink(SinkKind),
    /// coderd's Agent API over the coder transport (DRPC over yamux over a websocket).
    Coder(&'a coder::CoderSettings),
}

impl Config {
    /// Where forwarded requests go: coderd when set, else the sink (stdout by default).
    pub fn destination(&self) -> Destination<'_> {
        if let Some(coder) = &self.coder {
            return Destination::Coder(coder);
        }
        match &self.coderd {
            Some(endpoint) => Destination::Coderd {
                endpoint,
                auth_token: self.auth_token.as_ref(),
            },
            None => Destination::Sink(self.sink.unwrap_or_default()),
        }
    }

    /// Most logs the forwarder puts in one request: `--batch-max-logs`, and at most 1000
    /// over the coder transport (coderd refuses more).
    pub fn max_logs_per_request(&self) -> u32 {
        match self.coder {
            Some(_) => self.batch_max_logs.min(coder::CODER_MAX_LOGS_PER_REQUEST),
            None => self.batch_max_logs,
        }
    }

    /// Checks every value the CLI checks, for configs built by hand.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_engine()?;
        self.validate_destination()
    }

    /// The checks of the settings the library's `Server` runs with (socket, ring,
    /// batching, connections, deadlines, spool); `Server::new` makes them. The
    /// destination and its tokens are the binary's to use, checked by
    /// [`Config::validate`].
    pub fn validate_engine(&self) -> Result<(), ConfigError> {
        check_socket_path(&self.socket)?;
        check_socket_mode(self.socket_mode)?;
        check_ring_capacity(self.ring_capacity)?;
        check_positive("--batch-max-logs", u64::from(self.batch_max_logs))?;
        check_batch_max_bytes(self.batch_max_bytes)?;
        check_positive("--max-connections", self.max_connections as u64)?;
        check_positive_duration("--call-timeout", self.call_timeout)?;
        check_duration("--call-timeout", self.call_timeout)?;
        check_duration("--batch-linger", self.batch_linger)?;
        check_duration("--retry-max-elapsed", self.retry_max_elapsed)?;
        check_duration("--shutdown-timeout", self.shutdown_timeout)?;
        check_positive("--spool-max-bytes", self.spool_max_bytes)?;
        Ok(())
    }

    fn validate_destination(&self) -> Result<(), ConfigError> {
        if let Some(token) = &self.auth_token {
            check_token("--auth-token", token.expose())?;
        }
        if let Some(coder) = &self.coder {
            check_token("--agent-token", coder.token.expose())?;
            let other = match (&self.coderd, self.sink) {
                (Some(coderd), _) => Some(("--coderd", coderd.to_string())),
                (None, Some(sink)) => Some(("--sink", sink.to_string())),
                (None, None) => None,
            };
            if let Some((setting, value)) = other {
                return Err(ConfigError::invalid(
                    setting,
                    value,
                    "not allowed together with --coder-url: give one destination",
                ));
            }
        }
        if self.coderd.is_some() && self.sink.is_some() {
            return Err(ConfigError::invalid(
                "--sink",
                self.sink.unwrap_or_default(),
                "not allowed together with --coderd",
            ));
        }
        Ok(())
    }

    /// The effective settings as JSON (for `serve --print-config`); the token is redacted.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "socket": self.socket.display().to_string(),
            "socket_mode": format!("{:04o}", self.socket_mode),
            "coderd": self.coderd.as_ref().map(ToString::to_string),
            "auth_token": self.auth_token.as_ref().map(|_| "<redacted>"),
            "sink": self.sink.map(|s| s.to_string()),
            "metrics_addr": self.metrics_addr.map(|a| a.to_string()),
            "io": self.io.to_string(),
            "ring_capacity": self.ring_capacity,
            "batch_max_logs": self.batch_max_logs,
            "batch_max_bytes": self.batch_max_bytes,
            "batch_linger": format_duration(self.batch_linger),
            "retry_max_elapsed": format_duration(self.retry_max_elapsed),
            "call_timeout": format_duration(self.call_timeout),
            "max_connections": self.max_connections,
            "allow_uids": self.allow_uids,
            "shutdown_timeout": format_duration(self.shutdown_timeout),
            "log": self.log.to_json(),
            "coder": self.coder.as_ref().map(|c| json!({
                "url": c.url.to_string(),
                "agent_token": "<redacted>",
                "ca_file": c.ca_file.as_ref().map(|p| p.display().to_string()),
                "allow_agent_role": c.allow_agent_role,
            })),
            "spool_dir": self.spool_dir.as_ref().map(|d| d.display().to_string()),
            "spool_max_bytes": self.spool_max_bytes,
            "spool_fsync": self.spool_fsync.to_string(),
        })
    }
}

/// What `boundary-log-proxy sink` runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkArgs {
    /// `--listen`: where the gRPC server listens.
    pub listen: ListenAddr,
    /// `--quiet`: print only a periodic count instead of every log.
    pub quiet: bool,
    /// `--log-format`, `--log-level`.
    pub log: LogSettings,
    /// `--protocol`: gRPC (default) or coderd's own transport.
    pub protocol: SinkProtocol,
    /// `--token`: with the coder protocol, the only session token accepted. Default: any.
    pub token: Option<AuthToken>,
    /// `--coder-version` (hidden): the version `/api/v2/buildinfo` reports.
    pub coder_version: Option<String>,
}

impl SinkArgs {
    /// The checks that need more than one setting: `--token` and `--coder-version`
    /// belong to `--protocol coder`, which listens on TCP only.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let coder = "--protocol coder";
        match self.protocol {
            SinkProtocol::Grpc if self.token.is_some() => Err(ConfigError::Requires {
                setting: "--token",
                requires: coder,
                why: "the gRPC sink takes any caller",
            }),
            SinkProtocol::Grpc if self.coder_version.is_some() => Err(ConfigError::Requires {
                setting: "--coder-version",
                requires: coder,
                why: "only coderd's transport has a buildinfo version",
            }),
            SinkProtocol::Coder if matches!(self.listen, ListenAddr::Unix(_)) => {
                Err(ConfigError::invalid(
                    "--listen",
                    &self.listen,
                    "with --protocol coder, an address HOST:PORT (coderd's transport runs over TCP)",
                ))
            }
            _ => Ok(()),
        }
    }
}

/// The protocol `boundary-log-proxy sink` serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SinkProtocol {
    /// `Agent.ReportBoundaryLogs` over gRPC (h2c), as `serve --coderd` speaks it.
    #[default]
    Grpc,
    /// coderd's Agent API: websocket + yamux + DRPC, as `serve --coder-url` speaks it.
    Coder,
}
display_as_value_enum!(SinkProtocol);

/// What `boundary-log-proxy loadgen` runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadgenArgs {
    /// `--socket`: the proxy's socket. Default [`default_socket_path`].
    pub socket: PathBuf,
    /// `--connections`: concurrent connections. Default 1.
    pub connections: u32,
    /// `--frames`: frames each connection sends. Default 10000.
    pub frames: u64,
    /// `--logs-per-frame`: logs in each frame. Default 10.
    pub logs_per_frame: u32,
    /// `--rate`: frames per second across all connections. Default none (as fast as possible).
    pub rate: Option<u64>,
    /// `--tag`: frame tag written. Default `v2`.
    pub tag: FrameTag,
    /// `--wait-for-socket`: how long to wait for the proxy to listen before giving
    /// up. Default [`DEFAULT_WAIT_FOR_SOCKET`]; zero tries once.
    pub wait_for_socket: Duration,
    /// `--log-format`, `--log-level`.
    pub log: LogSettings,
}

/// `loadgen --wait-for-socket`'s default: long enough for a proxy started a moment
/// before to bind its socket.
pub const DEFAULT_WAIT_FOR_SOCKET: Duration = Duration::from_secs(10);

/// A duration as the flags take it, in days and smaller units (`365d`, `1m 30s`,
/// `250ms`): humantime's own form counts months of 30.44 days, which the flags refuse
/// (365d would print as `11months 30days 3h 50m 24s`).
pub(super) fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    let nanos = u64::from(d.subsec_nanos());
    let mut parts = Vec::new();
    for (unit, name) in [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")] {
        if secs >= unit {
            parts.push(format!("{}{name}", secs / unit));
            secs %= unit;
        }
    }
    for (n, name) in [
        (nanos / 1_000_000, "ms"),
        (nanos / 1_000 % 1_000, "us"),
        (nanos % 1_000, "ns"),
    ] {
        if n > 0 {
            parts.push(format!("{n}{name}"));
        }
    }
    if parts.is_empty() {
        "0s".to_owned()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_validation_and_use_stdout_sink() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(config.destination(), Destination::Sink(SinkKind::Stdout));
        assert_eq!(
            config.socket,
            std::env::temp_dir().join("boundary-audit.sock")
        );
        assert_eq!(config.ring_capacity, 4096);
        assert!(config.batch_max_bytes < GRPC_MAX_MESSAGE_BYTES);
    }

    #[test]
    fn validate_rejects_what_the_cli_would_reject() {
        let bad = [
            Config {
                ring_capacity: 3,
                ..Config::default()
            },
            Config {
                batch_max_bytes: GRPC_MAX_MESSAGE_BYTES,
                ..Config::default()
            },
            Config {
                call_timeout: Duration::ZERO,
                ..Config::default()
            },
            Config {
                max_connections: 0,
                ..Config::default()
            },
            Config {
                shutdown_timeout: Duration::from_secs(u64::MAX),
                ..Config::default()
            },
            Config {
                coderd: Some(CoderdEndpoint::Unix("/x".into())),
                sink: Some(SinkKind::Null),
                ..Config::default()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }

    #[test]
    fn auth_token_never_shows_in_debug_or_json() {
        let config = Config {
            coderd: Some("http://127.0.0.1:1".parse().unwrap()),
            auth_token: Some(AuthToken::new("s3cret-token")),
            sink: None,
            ..Config::default()
        };
        assert!(!format!("{config:?}").contains("s3cret"));
        assert!(!config.to_json().to_string().contains("s3cret"));
        assert_eq!(config.auth_token.as_ref().unwrap().expose(), "s3cret-token");
    }
}
