//! The version gate: `GET /api/v2/buildinfo` before each connection. coderd older than
//! v2.31.0 has no `role` parameter on the rpc endpoint and would take the proxy for the
//! workspace agent itself, so the proxy refuses to connect to it unless
//! `--coder-allow-agent-role` (docs/coder-transport.md, "The version gate").

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;

use super::net::BoxIo;
use super::websocket::http_error_message;
use super::ConnectError;
use crate::config::coder::CoderUrl;

/// The endpoint, under the URL's path prefix.
pub const BUILDINFO_PATH: &str = "/api/v2/buildinfo";

/// The first coderd release that accepts `role=boundary-log-proxy`.
pub const MIN_VERSION: Version = Version(2, 31, 0);

/// Largest buildinfo body read.
const MAX_BODY: usize = 64 * 1024;

/// A release number, `vMAJOR.MINOR.PATCH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u64, pub u64, pub u64);

impl Version {
    /// The numbers at the start of a coderd version string such as `v2.31.0`,
    /// `v2.31.0-rc.1` or `v2.30.1-devel+1a2b3c`: what follows them (a pre-release or build
    /// suffix) is ignored, since coder's development builds name the release they follow.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim().strip_prefix('v').unwrap_or(text.trim());
        let core = text.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(str::parse::<u64>);
        let version = Self(
            parts.next()?.ok()?,
            parts.next()?.ok()?,
            parts.next()?.ok()?,
        );
        parts.next().is_none().then_some(version)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}.{}.{}", self.0, self.1, self.2)
    }
}

/// What the gate decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// v2.31.0 or later.
    Pass,
    /// Older (or unreadable), but `--coder-allow-agent-role` lets it through.
    Allowed(String),
    /// Older (or unreadable): refused.
    Refused(String),
}

/// Applies the gate to the `version` coderd reported.
pub fn gate(version: &str, allow_agent_role: bool) -> Gate {
    match Version::parse(version) {
        Some(v) if v >= MIN_VERSION => Gate::Pass,
        _ if allow_agent_role => Gate::Allowed(version.to_owned()),
        _ => Gate::Refused(version.to_owned()),
    }
}

/// The connection step this module is, as errors name it.
pub const STEP: &str = "GET /api/v2/buildinfo";

/// Fetches coderd's version over `io` (one HTTP/1.1 request) within `timeout`.
pub async fn fetch_version(
    io: BoxIo,
    url: &CoderUrl,
    timeout: Duration,
) -> Result<String, ConnectError> {
    tokio::time::timeout(timeout, fetch(io, url))
        .await
        .map_err(|_| ConnectError::Timeout {
            what: STEP,
            after: timeout,
        })?
}

/// What the HTTP/1.1 exchange's failure suggests to the operator, where hyper's words
/// alone do not say it.
fn http_hint(error: &hyper::Error, url: &CoderUrl) -> Option<&'static str> {
    if error.is_parse() {
        Some(
            "the server did not answer in HTTP/1.1: a gRPC endpoint (HTTP/2 only) is given \
             to --coderd, coderd's own URL to --coder-url",
        )
    } else if error.is_incomplete_message() && !url.tls() {
        Some("the server closed the connection without an answer: if it serves TLS there, use an https:// URL")
    } else {
        None
    }
}

async fn fetch(io: BoxIo, url: &CoderUrl) -> Result<String, ConnectError> {
    let network = |source: hyper::Error| ConnectError::Network {
        what: "GET /api/v2/buildinfo".into(),
        source: match http_hint(&source, url) {
            Some(hint) => std::io::Error::other(format!("{source}: {hint}")),
            None => std::io::Error::other(source),
        },
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(network)?;
    let driver = tokio::spawn(connection);
    let request = http::Request::get(url.path(BUILDINFO_PATH))
        .header(http::header::HOST, url.authority())
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ConnectError::BuildInfo(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(network)?;
    let status = response.status();
    let location = response.headers().get(http::header::LOCATION).cloned();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ConnectError::BuildInfo(format!("reading the body: {e}")))?
        .to_bytes();
    driver.abort();
    if !status.is_success() {
        let json = serde_json::from_slice::<serde_json::Value>(&body).is_ok();
        return Err(ConnectError::Http {
            what: "GET /api/v2/buildinfo",
            status: status.as_u16(),
            message: if status == http::StatusCode::NOT_FOUND && !json {
                // A web server that is not coderd (or coderd under another path).
                "not found, and not coderd's JSON: is the URL coderd's own \
                 (--coder-url, CODER_AGENT_URL)?"
                    .to_owned()
            } else {
                http_error_message(status, location.as_ref(), &body)
            },
        });
    }
    #[derive(serde::Deserialize)]
    struct BuildInfo {
        version: String,
    }
    serde_json::from_slice::<BuildInfo>(&body)
        .map(|b| b.version)
        .map_err(|e| ConnectError::BuildInfo(format!("not coderd's buildinfo JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_with_or_without_suffixes() {
        assert_eq!(Version::parse("v2.31.0"), Some(Version(2, 31, 0)));
        assert_eq!(Version::parse("2.31.4"), Some(Version(2, 31, 4)));
        assert_eq!(
            Version::parse("v2.30.1-devel+1a2b3c"),
            Some(Version(2, 30, 1))
        );
        assert_eq!(Version::parse("v2.32.0-rc.1"), Some(Version(2, 32, 0)));
        for bad in ["", "v2", "v2.31", "v2.31.0.1", "vx.y.z", "latest"] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_gate_passes_v2_31_0_and_later_and_refuses_older_unless_allowed() {
        assert_eq!(gate("v2.31.0", false), Gate::Pass);
        assert_eq!(gate("v3.0.0", false), Gate::Pass);
        assert_eq!(gate("v2.30.9", false), Gate::Refused("v2.30.9".into()));
        assert_eq!(
            gate("v0.0.0-devel", false),
            Gate::Refused("v0.0.0-devel".into())
        );
        assert_eq!(gate("garbage", false), Gate::Refused("garbage".into()));
        assert_eq!(gate("v2.30.9", true), Gate::Allowed("v2.30.9".into()));
    }
}
