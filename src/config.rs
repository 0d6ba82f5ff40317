//! What `serve`, `sink` and `loadgen` run with: typed settings, their documented
//! defaults, and the checks every value must pass (shared by the CLI's parsers and
//! by library users who build a [`Config`] by hand).

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde_json::json;

/// The largest request coderd's gRPC server accepts (grpc-go's default receive limit).
pub const GRPC_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// The largest ring the proxy will allocate: 2^24 slots.
pub const MAX_RING_CAPACITY: usize = 1 << 24;

/// What a value must look like, in the words every error message uses.
pub mod takes {
    /// `--socket-mode`.
    pub const SOCKET_MODE: &str = "octal permission bits such as 0600, 600 or 0o600 (at most 0777)";
    /// `--coderd`.
    pub const CODERD: &str = "an http://HOST:PORT URL (h2c) or unix:/path";
    /// `--metrics-addr`.
    pub const METRICS_ADDR: &str = "an address HOST:PORT such as 127.0.0.1:9100 or localhost:9100";
    /// `sink --listen`.
    pub const LISTEN: &str = "an address HOST:PORT such as 127.0.0.1:9090, or unix:/path";
    /// `--ring-capacity`.
    pub const RING_CAPACITY: &str = "a power of two >= 2 (at most 16777216)";
    /// `--batch-max-logs`, `--max-connections`, `loadgen --connections`, `--logs-per-frame`.
    pub const POSITIVE: &str = "a whole number >= 1";
    /// `loadgen --frames`.
    pub const COUNT: &str = "a whole number >= 0";
    /// `--batch-max-bytes`.
    pub const BATCH_MAX_BYTES: &str =
        "a byte count from 1 to 4194303 (below gRPC's 4 MiB message limit)";
    /// Durations that may be zero.
    pub const DURATION: &str = "a duration with a unit, such as 0s, 250ms, 5s or 2m";
    /// Durations that must be above zero.
    pub const POSITIVE_DURATION: &str =
        "a duration above zero with a unit, such as 250ms, 5s or 2m";
    /// `--allow-uid`.
    pub const UID: &str =
        "a numeric user id such as 1000 (repeat the flag, or separate with commas)";
    /// `--log-level`.
    pub const LOG_LEVEL: &str =
        "a level (error, warn, info, debug, trace, off) or a filter such as info,boundary_log_proxy=debug";
    /// `loadgen --rate`.
    pub const RATE: &str = "frames per second, a whole number >= 1";
}

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
}

impl ConfigError {
    fn invalid(setting: &'static str, value: impl fmt::Display, takes: &'static str) -> Self {
        Self::Invalid {
            setting,
            value: value.to_string(),
            takes,
        }
    }

    /// What the setting takes, without the flag or value (the CLI's error line ends with it).
    pub fn takes(&self) -> &'static str {
        match self {
            Self::Invalid { takes, .. } => takes,
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
display_as_value_enum!(IoMode, SinkKind, LogFormat, FrameTag);

/// Where coderd's Agent API is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoderdEndpoint {
    /// `http://host:port`, HTTP/2 without TLS (h2c).
    Http(http::Uri),
    /// `unix:/path`: a Unix socket.
    Unix(PathBuf),
}

impl FromStr for CoderdEndpoint {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || ConfigError::invalid("--coderd", s, takes::CODERD);
        if let Some(path) = s.strip_prefix("unix:") {
            return unix_path(path).map(Self::Unix).ok_or_else(invalid);
        }
        let uri: http::Uri = s.parse().map_err(|_| invalid())?;
        let path_is_root = matches!(uri.path(), "" | "/") && uri.query().is_none();
        match (uri.scheme_str(), uri.authority()) {
            (Some("http"), Some(authority)) if !authority.host().is_empty() && path_is_root => {
                Ok(Self::Http(uri))
            }
            _ => Err(invalid()),
        }
    }
}

impl fmt::Display for CoderdEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Http(uri) => write!(f, "{uri}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Where `sink` listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address (h2c).
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || ConfigError::invalid("--listen", s, takes::LISTEN);
        if let Some(path) = s.strip_prefix("unix:") {
            return unix_path(path).map(Self::Unix).ok_or_else(invalid);
        }
        host_port(s).map(Self::Tcp).ok_or_else(invalid)
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// `unix:/path`, `unix:relative` or `unix:///path` (the gRPC name forms) without the scheme.
fn unix_path(rest: &str) -> Option<PathBuf> {
    let path = rest.strip_prefix("//").unwrap_or(rest);
    (!path.is_empty()).then(|| PathBuf::from(path))
}

/// `IP:PORT` or `localhost:PORT`; no other name is resolved, so parsing never waits on DNS.
fn host_port(s: &str) -> Option<SocketAddr> {
    if let Ok(addr) = s.parse() {
        return Some(addr);
    }
    let port = s.strip_prefix("localhost:")?;
    port.parse::<u16>().ok()?;
    s.to_socket_addrs().ok()?.next()
}

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFilter(String);

impl LogFilter {
    /// The directive string, as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for LogFilter {
    fn default() -> Self {
        Self("info".to_owned())
    }
}

impl FromStr for LogFilter {
    type Err = ConfigError;

    /// A bare word must be a level (a typo such as `inof` is an error, not a target
    /// name); anything with `=` or `,` must parse as `EnvFilter` directives.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || ConfigError::invalid("--log-level", s, takes::LOG_LEVEL);
        let valid = if s.trim().is_empty() {
            false
        } else if s.contains(['=', ',']) {
            s.split(',').all(|d| !d.trim().is_empty())
                && tracing_subscriber::EnvFilter::builder().parse(s).is_ok()
        } else {
            tracing::level_filters::LevelFilter::from_str(s.trim()).is_ok()
        };
        // Bare levels are stored in lower case: EnvFilter reads only those.
        let filter = if s.contains(['=', ',']) {
            s.trim().to_owned()
        } else {
            s.trim().to_ascii_lowercase()
        };
        valid.then_some(Self(filter)).ok_or_else(invalid)
    }
}

impl fmt::Display for LogFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

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
}

impl Config {
    /// Where forwarded requests go: coderd when set, else the sink (stdout by default).
    pub fn destination(&self) -> Destination<'_> {
        match &self.coderd {
            Some(endpoint) => Destination::Coderd {
                endpoint,
                auth_token: self.auth_token.as_ref(),
            },
            None => Destination::Sink(self.sink.unwrap_or_default()),
        }
    }

    /// Checks every value the CLI checks, for configs built by hand.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_socket_mode(self.socket_mode)?;
        check_ring_capacity(self.ring_capacity)?;
        check_positive("--batch-max-logs", u64::from(self.batch_max_logs))?;
        check_batch_max_bytes(self.batch_max_bytes)?;
        check_positive("--max-connections", self.max_connections as u64)?;
        check_positive_duration("--call-timeout", self.call_timeout)?;
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
}

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
    /// `--log-format`, `--log-level`.
    pub log: LogSettings,
}

fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

// ---- checks shared by the CLI parsers and `Config::validate` ----

/// `--socket-mode`: at most `0o777`.
pub fn check_socket_mode(mode: u32) -> Result<u32, ConfigError> {
    if mode <= 0o777 {
        Ok(mode)
    } else {
        Err(ConfigError::invalid(
            "--socket-mode",
            format_args!("{mode:o}"),
            takes::SOCKET_MODE,
        ))
    }
}

/// `--ring-capacity`: a power of two from 2 to [`MAX_RING_CAPACITY`].
pub fn check_ring_capacity(slots: usize) -> Result<usize, ConfigError> {
    if slots >= 2 && slots.is_power_of_two() && slots <= MAX_RING_CAPACITY {
        Ok(slots)
    } else {
        Err(ConfigError::invalid(
            "--ring-capacity",
            slots,
            takes::RING_CAPACITY,
        ))
    }
}

/// `--batch-max-bytes`: from 1 to just below [`GRPC_MAX_MESSAGE_BYTES`].
pub fn check_batch_max_bytes(bytes: usize) -> Result<usize, ConfigError> {
    if (1..GRPC_MAX_MESSAGE_BYTES).contains(&bytes) {
        Ok(bytes)
    } else {
        Err(ConfigError::invalid(
            "--batch-max-bytes",
            bytes,
            takes::BATCH_MAX_BYTES,
        ))
    }
}

fn check_positive(setting: &'static str, n: u64) -> Result<u64, ConfigError> {
    if n >= 1 {
        Ok(n)
    } else {
        Err(ConfigError::invalid(setting, n, takes::POSITIVE))
    }
}

fn check_positive_duration(setting: &'static str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        Err(ConfigError::invalid(
            setting,
            format_duration(d),
            takes::POSITIVE_DURATION,
        ))
    } else {
        Ok(d)
    }
}

// ---- parsers from text (the CLI's value parsers call these) ----

/// `0600`, `600` or `0o600`.
pub fn parse_socket_mode(s: &str) -> Result<u32, ConfigError> {
    let invalid = || ConfigError::invalid("--socket-mode", s, takes::SOCKET_MODE);
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(invalid());
    }
    let mode = u32::from_str_radix(digits, 8).map_err(|_| invalid())?;
    check_socket_mode(mode).map_err(|_| invalid())
}

/// A power of two >= 2, as a decimal number.
pub fn parse_ring_capacity(s: &str) -> Result<usize, ConfigError> {
    let invalid = || ConfigError::invalid("--ring-capacity", s, takes::RING_CAPACITY);
    let n = parse_decimal(s).ok_or_else(invalid)?;
    usize::try_from(n)
        .ok()
        .and_then(|n| check_ring_capacity(n).ok())
        .ok_or_else(invalid)
}

/// A byte count below 4 MiB.
pub fn parse_batch_max_bytes(s: &str) -> Result<usize, ConfigError> {
    let invalid = || ConfigError::invalid("--batch-max-bytes", s, takes::BATCH_MAX_BYTES);
    let n = parse_decimal(s).ok_or_else(invalid)?;
    usize::try_from(n)
        .ok()
        .and_then(|n| check_batch_max_bytes(n).ok())
        .ok_or_else(invalid)
}

/// A whole number >= 1 that fits `T`.
pub fn parse_positive<T: TryFrom<u64>>(setting: &'static str, s: &str) -> Result<T, ConfigError> {
    parse_decimal(s)
        .filter(|&n| n >= 1)
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| ConfigError::invalid(setting, s, takes::POSITIVE))
}

/// A whole number >= 0.
pub fn parse_count(setting: &'static str, s: &str) -> Result<u64, ConfigError> {
    parse_decimal(s).ok_or_else(|| ConfigError::invalid(setting, s, takes::COUNT))
}

/// `loadgen --rate`: frames per second, >= 1.
pub fn parse_rate(s: &str) -> Result<u64, ConfigError> {
    parse_decimal(s)
        .filter(|&n| n >= 1)
        .ok_or_else(|| ConfigError::invalid("--rate", s, takes::RATE))
}

/// A uid.
pub fn parse_uid(s: &str) -> Result<u32, ConfigError> {
    parse_decimal(s)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| ConfigError::invalid("--allow-uid", s, takes::UID))
}

/// A duration with a unit; zero allowed.
pub fn parse_duration(setting: &'static str, s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s.trim())
        .map_err(|_| ConfigError::invalid(setting, s, takes::DURATION))
}

/// A duration with a unit, above zero.
pub fn parse_positive_duration(setting: &'static str, s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s.trim())
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| ConfigError::invalid(setting, s, takes::POSITIVE_DURATION))
}

/// `--metrics-addr`: `IP:PORT` or `localhost:PORT`.
pub fn parse_metrics_addr(s: &str) -> Result<SocketAddr, ConfigError> {
    host_port(s).ok_or_else(|| ConfigError::invalid("--metrics-addr", s, takes::METRICS_ADDR))
}

/// Plain ASCII decimal digits (no sign, no spaces, no `_`).
fn parse_decimal(s: &str) -> Option<u64> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
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
    fn socket_mode_accepts_three_octal_spellings_and_rejects_others() {
        for s in ["0600", "600", "0o600"] {
            assert_eq!(parse_socket_mode(s), Ok(0o600), "{s}");
        }
        assert_eq!(parse_socket_mode("0"), Ok(0));
        assert_eq!(parse_socket_mode("0777"), Ok(0o777));
        for s in ["", "0o", "0800", "rw", "1777", "-600", "0x180", " 600"] {
            assert!(parse_socket_mode(s).is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn ring_capacity_must_be_a_power_of_two_at_least_two() {
        assert_eq!(parse_ring_capacity("2"), Ok(2));
        assert_eq!(parse_ring_capacity("4096"), Ok(4096));
        assert_eq!(parse_ring_capacity("16777216"), Ok(MAX_RING_CAPACITY));
        for s in [
            "0",
            "1",
            "3",
            "4095",
            "33554432",
            "-4",
            "4k",
            "",
            "99999999999999999999",
        ] {
            let err = parse_ring_capacity(s).unwrap_err();
            assert_eq!(err.takes(), takes::RING_CAPACITY, "{s}");
        }
    }

    #[test]
    fn batch_max_bytes_stays_below_the_grpc_limit() {
        assert_eq!(parse_batch_max_bytes("4194303"), Ok(4_194_303));
        assert!(parse_batch_max_bytes("4194304").is_err());
        assert!(parse_batch_max_bytes("0").is_err());
    }

    #[test]
    fn durations_need_a_unit_and_zero_is_allowed_only_where_it_means_something() {
        assert_eq!(parse_duration("--x", "0s"), Ok(Duration::ZERO));
        assert_eq!(
            parse_duration("--x", "250ms"),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(parse_duration("--x", "2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("--x", "5").is_err());
        assert!(parse_duration("--x", "soon").is_err());
        assert!(parse_positive_duration("--x", "0s").is_err());
        assert_eq!(
            parse_positive_duration("--x", "10s"),
            Ok(Duration::from_secs(10))
        );
    }

    #[test]
    fn coderd_endpoint_takes_h2c_urls_and_unix_paths_only() {
        assert_eq!(
            "unix:/run/coder.sock".parse(),
            Ok(CoderdEndpoint::Unix("/run/coder.sock".into()))
        );
        assert_eq!(
            "unix:///run/coder.sock".parse(),
            Ok(CoderdEndpoint::Unix("/run/coder.sock".into()))
        );
        let http: CoderdEndpoint = "http://127.0.0.1:3000".parse().unwrap();
        assert_eq!(http.to_string(), "http://127.0.0.1:3000/");
        for s in [
            "https://coder.example:443",
            "127.0.0.1:3000",
            "http://",
            "unix:",
            "http://h:1/api",
            "ftp://h:1",
        ] {
            assert!(s.parse::<CoderdEndpoint>().is_err(), "{s} accepted");
        }
    }

    #[test]
    fn listen_and_metrics_addresses_take_ip_or_localhost_with_port() {
        assert_eq!(
            "127.0.0.1:9090".parse(),
            Ok(ListenAddr::Tcp("127.0.0.1:9090".parse().unwrap()))
        );
        assert_eq!("unix:/tmp/s".parse(), Ok(ListenAddr::Unix("/tmp/s".into())));
        assert!(parse_metrics_addr("[::1]:9100").is_ok());
        assert_eq!(parse_metrics_addr("localhost:9100").unwrap().port(), 9100);
        for s in [
            "9100",
            "localhost",
            "127.0.0.1:99999",
            "example.com:80",
            ":9100",
        ] {
            assert!(parse_metrics_addr(s).is_err(), "{s} accepted");
        }
    }

    #[test]
    fn log_level_rejects_typos_but_takes_directives() {
        assert!("info".parse::<LogFilter>().is_ok());
        assert!("DEBUG".parse::<LogFilter>().is_ok());
        assert!("info,boundary_log_proxy=trace".parse::<LogFilter>().is_ok());
        for s in ["inof", "", "info,", "=", "loud"] {
            assert!(s.parse::<LogFilter>().is_err(), "{s:?} accepted");
        }
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
