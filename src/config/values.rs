//! The forms settings take on the command line and the checks on their ranges: one
//! parser per kind of value, each failing with what the flag takes.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::{format_duration, ConfigError};

/// The largest request coderd's gRPC server accepts (grpc-go's default receive limit).
pub const GRPC_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// The largest ring the proxy will allocate: 2^24 slots.
pub const MAX_RING_CAPACITY: usize = 1 << 24;

/// The longest duration any flag takes: far beyond any sensible setting, and far
/// from where adding it to a clock reading could overflow (a 500000000000y shutdown
/// timeout made the process panic at SIGTERM).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The longest Unix socket path the kernel takes (`sun_path` less its NUL).
pub const MAX_SOCKET_PATH_BYTES: usize = 107;

/// What a value must look like, in the words every error message uses.
pub mod takes {
    /// `--socket`.
    pub const SOCKET: &str =
        "a file's path of 1 to 107 bytes (the Unix socket address limit), not ending in '/', '.' or '..'";
    /// `--socket-mode`.
    pub const SOCKET_MODE: &str = "octal permission bits such as 0600, 600 or 0o600 (at most 0777, with a write bit: connecting needs write permission)";
    /// `--coderd`.
    pub const CODERD: &str = "an http://HOST:PORT URL (h2c) or unix:/path (an absolute path)";
    /// `--metrics-addr`.
    pub const METRICS_ADDR: &str = "an address HOST:PORT such as 127.0.0.1:9100 or localhost:9100";
    /// `sink --listen`.
    pub const LISTEN: &str =
        "an address HOST:PORT such as 127.0.0.1:9090, or unix:/path (an absolute path)";
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
    pub const DURATION: &str = "a duration with a unit, such as 0s, 250ms, 5s or 2m, at most 365d";
    /// Durations given in months or years.
    pub const CALENDAR_DURATION: &str =
        "a duration with a unit of days or smaller, such as 0s, 250ms, 5s, 2m or 7d, at most 365d; months (M) and years (y) are not taken: 1M would be a month, not a minute";
    /// Durations that may be zero, given a negative value.
    pub const NEGATIVE_DURATION: &str =
        "a duration of zero or more with a unit, such as 0s, 250ms, 5s or 2m, at most 365d; a negative duration is not allowed";
    /// Durations that must be above zero.
    pub const POSITIVE_DURATION: &str =
        "a duration above zero with a unit, such as 250ms, 5s or 2m, at most 365d";
    /// Durations that must be above zero, given a negative value.
    pub const NEGATIVE_POSITIVE_DURATION: &str =
        "a duration above zero with a unit, such as 250ms, 5s or 2m, at most 365d; a negative duration is not allowed";
    /// `--auth-token` and other tokens sent as a request header.
    pub const TOKEN: &str =
        "a token of visible ASCII characters (no spaces, control characters such as a trailing newline, or non-ASCII text)";
    /// Files the proxy reads at start-up.
    pub const READABLE_FILE: &str = "the path of a file this user can read";
    /// Directories the proxy writes in (created when missing).
    pub const WRITABLE_DIR: &str =
        "the path of a directory this user can write in, or of one it can create";
    /// `--allow-uid`.
    pub const UID: &str =
        "a numeric user id such as 1000 (repeat the flag, or separate with commas)";
    /// `--log-level`.
    pub const LOG_LEVEL: &str =
        "a level (error, warn, info, debug, trace, off) or a filter such as info,boundary_log_proxy=debug";
    /// `loadgen --rate`.
    pub const RATE: &str = "frames per second, a whole number >= 1";
}

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
            (Some("http"), Some(authority)) if is_host_and_port(authority) && path_is_root => {
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

/// `HOST:PORT` and nothing else: no user info, a port from 1 to 65535 (the URI parser
/// takes `h:`, `h:99999` and `user@h:1`, which would fail only at the first call).
fn is_host_and_port(authority: &http::uri::Authority) -> bool {
    let port_ok = authority.port_u16().is_some_and(|port| port != 0);
    port_ok && !authority.as_str().contains('@') && is_valid_host(authority.host())
}

/// An IPv4 address, a bracketed IPv6 address, or a DNS name (labels of letters,
/// digits and inner hyphens, at most 63 bytes each, 253 in all).
pub fn is_valid_host(host: &str) -> bool {
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `unix:/path`, `unix:relative` or `unix:///path` (the gRPC name forms) without the scheme.
/// The path of `unix:/path` or `unix:///path`: absolute only, since a relative one
/// would depend on the directory the proxy was started in (`/` under systemd).
fn unix_path(rest: &str) -> Option<PathBuf> {
    let path = rest.strip_prefix("//").unwrap_or(rest);
    (path.starts_with('/') && names_a_file(std::path::Path::new(path))).then(|| PathBuf::from(path))
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

/// A directory the proxy will write in (and create, with its parents, when missing):
/// empty, a path whose existing part is not a directory, or a directory this user
/// cannot write in is a flag error naming the flag.
pub fn parse_writable_dir(setting: &'static str, s: &str) -> Result<PathBuf, ConfigError> {
    use std::os::unix::ffi::OsStrExt as _;
    let unusable = |problem: String| ConfigError::Unusable {
        setting,
        value: s.to_owned(),
        takes: takes::WRITABLE_DIR,
        problem,
    };
    if s.is_empty() {
        return Err(ConfigError::invalid(setting, s, takes::WRITABLE_DIR));
    }
    let path = PathBuf::from(s);
    // The nearest part of the path that exists must be a directory we may write in.
    let mut existing = path.as_path();
    let meta = loop {
        match std::fs::metadata(existing) {
            Ok(meta) => break meta,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                existing = match existing.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => parent,
                    _ => std::path::Path::new("."),
                };
            }
            Err(e) => return Err(unusable(format!("{}: {e}", existing.display()))),
        }
    };
    if !meta.is_dir() {
        return Err(unusable(format!(
            "{} is not a directory",
            existing.display()
        )));
    }
    let c_path = std::ffi::CString::new(existing.as_os_str().as_bytes())
        .map_err(|_| ConfigError::invalid(setting, s, takes::WRITABLE_DIR))?;
    // SAFETY: access(2) reads the NUL-terminated path and nothing else.
    if unsafe { libc::access(c_path.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(unusable(format!(
            "cannot write in {}: {e}",
            existing.display()
        )));
    }
    Ok(path)
}

// ---- checks shared by the CLI parsers and `Config::validate` ----

/// `--socket`: not empty and short enough for a Unix socket address.
pub fn check_socket_path(path: &std::path::Path) -> Result<&std::path::Path, ConfigError> {
    let len = path.as_os_str().len();
    // A trailing '/', '.' or '..' names a directory: the socket (a file) could not be
    // made there, and the error would blame the wrong directory.
    let names_a_file = names_a_file(path);
    if (1..=MAX_SOCKET_PATH_BYTES).contains(&len) && names_a_file {
        Ok(path)
    } else {
        Err(ConfigError::invalid(
            "--socket",
            path.display(),
            takes::SOCKET,
        ))
    }
}

/// True when the path's last part is a file name: not empty (a trailing '/'), `.`
/// or `..`.
fn names_a_file(path: &std::path::Path) -> bool {
    let bytes = path.as_os_str().as_encoded_bytes();
    let last = bytes.rsplit(|&b| b == b'/').next().unwrap_or(bytes);
    !matches!(last, b"" | b"." | b"..")
}

/// `--socket`.
pub fn parse_socket_path(s: &str) -> Result<PathBuf, ConfigError> {
    let path = PathBuf::from(s);
    check_socket_path(&path)?;
    Ok(path)
}

/// `--socket-mode`: at most `0o777`.
pub fn check_socket_mode(mode: u32) -> Result<u32, ConfigError> {
    // Connecting to a Unix socket needs write permission on it: a mode with no write
    // bit lets no one but root connect, while the proxy would look healthy.
    if mode <= 0o777 && mode & 0o222 != 0 {
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

pub(super) fn check_positive(setting: &'static str, n: u64) -> Result<u64, ConfigError> {
    if n >= 1 {
        Ok(n)
    } else {
        Err(ConfigError::invalid(setting, n, takes::POSITIVE))
    }
}

/// Any duration setting: at most [`MAX_DURATION`].
pub(super) fn check_duration(setting: &'static str, d: Duration) -> Result<Duration, ConfigError> {
    if d <= MAX_DURATION {
        Ok(d)
    } else {
        Err(ConfigError::invalid(
            setting,
            format_duration(d),
            takes::DURATION,
        ))
    }
}

pub(super) fn check_positive_duration(
    setting: &'static str,
    d: Duration,
) -> Result<Duration, ConfigError> {
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

/// `-1s`, `- 5m`: a sign the duration parser would only call "invalid".
fn is_negative(s: &str) -> bool {
    s.trim_start().starts_with('-')
}

/// A duration with a unit; zero allowed.
pub fn parse_duration(setting: &'static str, s: &str) -> Result<Duration, ConfigError> {
    if is_negative(s) {
        return Err(ConfigError::invalid(setting, s, takes::NEGATIVE_DURATION));
    }
    if has_calendar_unit(s) {
        return Err(ConfigError::invalid(setting, s, takes::CALENDAR_DURATION));
    }
    humantime::parse_duration(s.trim())
        .ok()
        .filter(|d| *d <= MAX_DURATION)
        .ok_or_else(|| ConfigError::invalid(setting, s, takes::DURATION))
}

/// True when a duration names months or years (`M`, `month[s]`, `y`, `year[s]`,
/// humantime's calendar units): `1M` is a month to humantime, a minute to most
/// readers, and no setting here needs either.
fn has_calendar_unit(s: &str) -> bool {
    s.split(|c: char| !c.is_ascii_alphabetic())
        .any(|unit| ["M", "month", "months", "y", "year", "years"].contains(&unit))
}

/// A duration with a unit, above zero.
pub fn parse_positive_duration(setting: &'static str, s: &str) -> Result<Duration, ConfigError> {
    if is_negative(s) {
        return Err(ConfigError::invalid(
            setting,
            s,
            takes::NEGATIVE_POSITIVE_DURATION,
        ));
    }
    if has_calendar_unit(s) {
        return Err(ConfigError::invalid(setting, s, takes::CALENDAR_DURATION));
    }
    humantime::parse_duration(s.trim())
        .ok()
        .filter(|d| !d.is_zero() && *d <= MAX_DURATION)
        .ok_or_else(|| ConfigError::invalid(setting, s, takes::POSITIVE_DURATION))
}

/// What is wrong with a token, without showing it: `None` when it is one or more
/// visible ASCII characters (`0x21..=0x7e`), what HTTP/2 and gRPC carry in a header
/// value unchanged.
pub fn token_problem(token: &str) -> Option<String> {
    if token.is_empty() {
        return Some("this one is empty".to_owned());
    }
    let (at, byte) = token
        .bytes()
        .enumerate()
        .find(|&(_, b)| !(0x21..=0x7e).contains(&b))?;
    let what = match byte {
        b'\n' => "a newline (0x0a)".to_owned(),
        b'\r' => "a carriage return (0x0d)".to_owned(),
        b'\t' => "a tab (0x09)".to_owned(),
        b' ' => "a space".to_owned(),
        0x80.. => "a non-ASCII character".to_owned(),
        control => format!("a control character (0x{control:02x})"),
    };
    let place = if at + 1 == token.len() {
        "at its end".to_owned()
    } else {
        format!("at byte {} of {}", at + 1, token.len())
    };
    Some(format!("this one has {what} {place}"))
}

/// A token sent as a request header (`--auth-token`); the error never shows it.
pub fn check_token(setting: &'static str, token: &str) -> Result<(), ConfigError> {
    match token_problem(token) {
        None => Ok(()),
        Some(problem) => Err(ConfigError::Secret {
            setting,
            takes: takes::TOKEN,
            problem,
        }),
    }
}

/// A token given as a flag's value.
pub fn parse_token(setting: &'static str, s: &str) -> Result<String, ConfigError> {
    check_token(setting, s)?;
    Ok(s.to_owned())
}

/// A file that must be readable when the proxy starts: opening it is the check, so
/// a missing file, a directory or a permission problem is a flag error naming the flag.
pub fn parse_readable_file(setting: &'static str, s: &str) -> Result<PathBuf, ConfigError> {
    let path = PathBuf::from(s);
    let unusable = |problem: String| ConfigError::Unusable {
        setting,
        value: s.to_owned(),
        takes: takes::READABLE_FILE,
        problem,
    };
    if s.is_empty() {
        return Err(ConfigError::invalid(setting, s, takes::READABLE_FILE));
    }
    let file = std::fs::File::open(&path).map_err(|e| unusable(format!("cannot open it: {e}")))?;
    match file.metadata() {
        Ok(meta) if meta.is_dir() => Err(unusable("it is a directory".to_owned())),
        Ok(_) => Ok(path),
        Err(e) => Err(unusable(format!("cannot read it: {e}"))),
    }
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
    fn socket_mode_accepts_three_octal_spellings_and_rejects_others() {
        for s in ["0600", "600", "0o600"] {
            assert_eq!(parse_socket_mode(s), Ok(0o600), "{s}");
        }
        assert_eq!(parse_socket_mode("0777"), Ok(0o777));
        assert_eq!(
            parse_socket_mode("0020"),
            Ok(0o020),
            "a group that may connect"
        );
        // No write bit: no one but root could connect.
        for s in [
            "", "0o", "0800", "rw", "1777", "-600", "0x180", " 600", "0", "0444",
        ] {
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
    fn socket_path_must_fit_a_unix_socket_address() {
        assert!(parse_socket_path("/tmp/boundary-audit.sock").is_ok());
        assert!(parse_socket_path(&format!("/{}", "a".repeat(106))).is_ok());
        assert!(parse_socket_path(&format!("/{}", "a".repeat(107))).is_err());
        assert!(parse_socket_path("").is_err());
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
        assert_eq!(parse_duration("--x", "365d"), Ok(MAX_DURATION));
        assert!(parse_duration("--x", "366d").is_err());
        assert!(parse_positive_duration("--x", "500000000000y").is_err());
        assert_eq!(
            parse_positive_duration("--x", "10s"),
            Ok(Duration::from_secs(10))
        );
        // A bare 0 is the one number without a unit: it is 0 in every unit.
        assert_eq!(parse_duration("--x", "0"), Ok(Duration::ZERO));
    }

    #[test]
    fn months_and_years_are_refused_so_1m_in_capitals_is_not_a_month() {
        for calendar in ["1M", "2months", "1 month", "1y", "1year 2d", "30s 1M"] {
            let error = parse_duration("--x", calendar).unwrap_err();
            assert_eq!(error.takes(), takes::CALENDAR_DURATION, "{calendar}");
            let error = parse_positive_duration("--x", calendar).unwrap_err();
            assert_eq!(error.takes(), takes::CALENDAR_DURATION, "{calendar}");
        }
        assert_eq!(parse_duration("--x", "1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("--x", "2min"), Ok(Duration::from_secs(120)));
    }

    #[test]
    fn a_printed_duration_is_in_days_or_smaller_and_reads_back_the_same() {
        for (d, printed) in [
            (MAX_DURATION, "365d"),
            (Duration::ZERO, "0s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_secs(90), "1m 30s"),
            (Duration::from_nanos(86_400_000_000_001), "1d 1ns"),
            (Duration::from_micros(1_500_002), "1s 500ms 2us"),
        ] {
            assert_eq!(format_duration(d), printed);
            assert_eq!(parse_duration("--x", printed), Ok(d), "{printed}");
        }
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
            "unix:relative.sock",
            "unix:/run/coder/",
            "unix:/run/..",
            "unix://run/coder.sock",
            "http://h:1/api",
            "ftp://h:1",
            "http://127.0.0.1:99999",
            "http://127.0.0.1:0",
            "http://127.0.0.1:",
            "http://127.0.0.1",
            "http://user@127.0.0.1:1",
            "http://-bad-:1",
            "http://a..b:1",
            "http://[::1:1",
            "http://[zz]:1",
        ] {
            assert!(s.parse::<CoderdEndpoint>().is_err(), "{s} accepted");
        }
        for s in [
            "http://[::1]:3000",
            "http://coder.internal:3000",
            "http://localhost:1",
        ] {
            assert!(s.parse::<CoderdEndpoint>().is_ok(), "{s} refused");
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
    fn writable_dirs_and_readable_files_are_checked_where_they_are_named() {
        let dir = std::env::temp_dir().join(format!("blp-values-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "t").unwrap();
        let (dir_s, file_s) = (dir.to_str().unwrap(), file.to_str().unwrap());

        assert!(parse_writable_dir("--d", dir_s).is_ok());
        let missing = format!("{dir_s}/not/yet/there");
        assert!(parse_writable_dir("--d", &missing).is_ok(), "created later");
        assert!(parse_writable_dir("--d", "").is_err());
        let err = parse_writable_dir("--d", &format!("{file_s}/sub")).unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");

        assert_eq!(parse_readable_file("--f", file_s), Ok(file.clone()));
        let err = parse_readable_file("--f", &format!("{dir_s}/absent")).unwrap_err();
        assert!(err.to_string().contains("cannot open it"), "{err}");
        let err = parse_readable_file("--f", dir_s).unwrap_err();
        assert!(err.to_string().contains("directory"), "{err}");
        assert!(parse_readable_file("--f", "").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tokens_are_visible_ascii_and_the_problem_never_quotes_them() {
        assert_eq!(token_problem("s3cret-Tok.en_~!"), None);
        for (token, says) in [
            ("", "empty"),
            ("s3cret\n", "a newline (0x0a) at its end"),
            ("s3 cret", "a space at byte 3 of 7"),
            ("s3cr\u{e9}t", "a non-ASCII character"),
            ("s3\x7fx", "a control character (0x7f)"),
            ("s3\tx", "a tab"),
        ] {
            let problem = token_problem(token).unwrap_or_default();
            assert!(problem.contains(says), "{token:?}: {problem}");
            assert!(!problem.contains("s3"), "{problem}");
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
}
