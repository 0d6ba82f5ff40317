//! Settings of the coder transport (`--coder-url`, `--agent-token[-file]`, `--coder-ca-file`,
//! `--coder-allow-agent-role`): coderd's base URL and what the client sends it. The transport
//! itself is in `reporter::coder`; docs/coder-transport.md describes both.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use super::{check_token, parse_readable_file, AuthToken, ConfigError};

/// What `--coder-url` takes.
pub const TAKES_CODER_URL: &str =
    "coderd's base URL, http://HOST[:PORT] or https://HOST[:PORT], optionally with a path";

/// Most logs coderd accepts in one `ReportBoundaryLogs` request (it answers a DRPC Error
/// beyond).
pub const CODER_MAX_LOGS_PER_REQUEST: u32 = 1000;

/// coderd's base URL: scheme (http or https), host, port and an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoderUrl {
    raw: String,
    tls: bool,
    host: String,
    port: u16,
    /// The path prefix without a trailing `/` ("" for none).
    base_path: String,
}

impl CoderUrl {
    /// `https://`: TLS with the system's roots (and `--coder-ca-file`).
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The host name or IP address (an IPv6 address without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port (80 or 443 unless given).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `Host` header value: the host, with the port unless it is the scheme's default.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// `path` (starting with `/`) under the URL's path prefix.
    pub fn path(&self, path: &str) -> String {
        format!("{}{path}", self.base_path)
    }

    /// Whether the host is a loopback address or `localhost` (plain http is fine there).
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

impl FromStr for CoderUrl {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || ConfigError::invalid("--coder-url", s, TAKES_CODER_URL);
        let uri: http::Uri = s.parse().map_err(|_| invalid())?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(invalid()),
        };
        let authority = uri.authority().ok_or_else(invalid)?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() || uri.query().is_some() || authority.as_str().contains('@') {
            return Err(invalid());
        }
        Ok(Self {
            raw: s.to_owned(),
            tls,
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            base_path: uri.path().trim_end_matches('/').to_owned(),
        })
    }
}

impl fmt::Display for CoderUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Everything the coder transport needs from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoderSettings {
    /// `--coder-url`: coderd's base URL.
    pub url: CoderUrl,
    /// `--agent-token` or the trimmed contents of `--agent-token-file`: the workspace
    /// agent's token, sent as `Coder-Session-Token`.
    pub token: AuthToken,
    /// `--coder-ca-file`: extra PEM roots trusted besides the system's.
    pub ca_file: Option<PathBuf>,
    /// `--coder-allow-agent-role`: connect to a coderd older than v2.31.0 anyway.
    pub allow_agent_role: bool,
}

/// What `--coder-ca-file` takes.
pub const TAKES_CA_FILE: &str = "a readable PEM file holding one or more CA certificates";
/// What `--agent-token-file` takes.
pub const TAKES_TOKEN_FILE: &str =
    "a readable file holding the agent token (surrounding whitespace is trimmed)";
/// Why a `--coder-url` without a token cannot be used.
pub const NO_CODER_TOKEN: &str = "give --agent-token or --agent-token-file \
     (or set CODER_AGENT_TOKEN or CODER_AGENT_TOKEN_FILE)";

/// A `--coder-ca-file`: readable, and holding at least one PEM certificate.
pub fn parse_ca_file(setting: &'static str, s: &str) -> Result<PathBuf, ConfigError> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::CertificateDer;
    let path = parse_readable_file(setting, s)?;
    let unusable = |problem: String| ConfigError::Unusable {
        setting,
        value: s.to_owned(),
        takes: TAKES_CA_FILE,
        problem,
    };
    let certs = CertificateDer::pem_file_iter(&path)
        .map_err(|e| unusable(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unusable(format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(unusable("no CERTIFICATE block in it".to_owned()));
    }
    Ok(path)
}

/// The token in a `--agent-token-file`, whitespace trimmed.
pub fn read_token_file(setting: &'static str, s: &str) -> Result<AuthToken, ConfigError> {
    let path = parse_readable_file(setting, s)?;
    let unusable = |problem: String| ConfigError::Unusable {
        setting,
        value: s.to_owned(),
        takes: TAKES_TOKEN_FILE,
        problem,
    };
    let text =
        std::fs::read_to_string(&path).map_err(|e| unusable(format!("cannot read it: {e}")))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(unusable("it is empty".to_owned()));
    }
    check_token(setting, token)?;
    Ok(AuthToken::new(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coder_urls_take_http_and_https_with_default_ports_and_a_prefix() {
        let url: CoderUrl = "https://coder.example.com".parse().unwrap();
        assert!(url.tls());
        assert_eq!((url.host(), url.port()), ("coder.example.com", 443));
        assert_eq!(url.authority(), "coder.example.com");
        assert_eq!(url.path("/api/v2/buildinfo"), "/api/v2/buildinfo");

        let url: CoderUrl = "http://127.0.0.1:3000/coder/".parse().unwrap();
        assert!(!url.tls() && url.is_loopback());
        assert_eq!(url.authority(), "127.0.0.1:3000");
        assert_eq!(url.path("/api/v2/buildinfo"), "/coder/api/v2/buildinfo");

        let url: CoderUrl = "http://[::1]:8080".parse().unwrap();
        assert_eq!(
            (url.host(), url.authority()),
            ("::1", "[::1]:8080".to_owned())
        );
        assert!(url.is_loopback());
        assert!(!"http://coder.internal"
            .parse::<CoderUrl>()
            .unwrap()
            .is_loopback());
    }

    #[test]
    fn requests_over_the_coder_transport_carry_at_most_1000_logs() {
        let coder = CoderSettings {
            url: "http://127.0.0.1:1".parse().unwrap(),
            token: AuthToken::new("t"),
            ca_file: None,
            allow_agent_role: false,
        };
        let config = |batch_max_logs, coder: Option<CoderSettings>| crate::config::Config {
            batch_max_logs,
            sink: None,
            coder,
            ..crate::config::Config::default()
        };
        assert_eq!(
            config(5000, Some(coder.clone())).max_logs_per_request(),
            1000
        );
        assert_eq!(config(200, Some(coder.clone())).max_logs_per_request(), 200);
        assert_eq!(config(5000, None).max_logs_per_request(), 5000);
        config(5000, Some(coder)).validate().unwrap();
    }

    #[test]
    fn a_token_file_is_trimmed_and_an_empty_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  s3cret-token\n").unwrap();
        let token = read_token_file("--agent-token-file", path.to_str().unwrap()).unwrap();
        assert_eq!(token.expose(), "s3cret-token");
        std::fs::write(&path, " \n").unwrap();
        let err = read_token_file("--agent-token-file", path.to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = parse_ca_file("--coder-ca-file", path.to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains("--coder-ca-file"), "{err}");
    }

    #[test]
    fn coder_urls_without_scheme_host_or_with_a_query_are_refused() {
        for s in [
            "coder.example.com",
            "ftp://coder.example.com",
            "http://",
            "https://h/?x=1",
            "unix:/run/coder.sock",
            "http://user:pw@h",
        ] {
            let err = s.parse::<CoderUrl>().unwrap_err();
            assert!(err.to_string().contains("--coder-url"), "{s}: {err}");
        }
    }
}
