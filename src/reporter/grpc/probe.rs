//! Diagnosis of a `--coderd` destination whose gRPC calls fail at the transport: when it
//! answers coderd's `GET /api/v2/buildinfo`, it is coderd itself, which serves its Agent
//! API over DRPC on a websocket (`--coder-url`), not over gRPC, and the log says so.

use std::time::Duration;

use crate::config::coder::CoderUrl;
use crate::reporter::coder::{buildinfo, net::Connector};
use crate::sync::atomic::{AtomicBool, Ordering};
use crate::sync::Arc;

/// Longest the probe waits for the connection, and then for buildinfo's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks the destination, after a call failed at the transport, whether it is coderd
/// (see [`CoderdProbe::after_transport_failure`]). Cheap to clone; clones share the
/// question. `None` for destinations coderd cannot be (`unix:`).
#[derive(Debug, Clone)]
pub(super) struct CoderdProbe(Option<Arc<Probe>>);

#[derive(Debug)]
struct Probe {
    /// The destination as an `http://` base URL.
    url: CoderUrl,
    started: AtomicBool,
}

impl CoderdProbe {
    /// A probe of the `--coderd` URL `coderd`.
    pub(super) fn new(coderd: &str) -> Self {
        let url = coderd.parse::<CoderUrl>().ok().filter(|url| !url.tls());
        Self(url.map(|url| {
            Arc::new(Probe {
                url,
                started: AtomicBool::new(false),
            })
        }))
    }

    /// A call failed at the transport: asks the destination in the background (one
    /// HTTP/1.1 request on a connection of its own) whether it is coderd, and if coderd
    /// answers, logs an error naming the flag to use. Once the request is made, whatever
    /// comes back (coderd's answer, an HTTP error, another body, or nothing within the
    /// timeout) settles the question. A connection that cannot be made settles nothing:
    /// the next failure asks again, so a coderd that comes up later is still recognised.
    pub(super) fn after_transport_failure(&self) {
        let Some(probe) = &self.0 else {
            return;
        };
        if probe.started.swap(true, Ordering::Relaxed) {
            return;
        }
        let probe = probe.clone();
        tokio::spawn(async move {
            let url = &probe.url;
            let Ok(connector) = Connector::new(url.clone(), None, PROBE_TIMEOUT) else {
                return;
            };
            let Ok(io) = connector.connect().await else {
                probe.started.store(false, Ordering::Relaxed);
                return;
            };
            if let Ok(version) = buildinfo::fetch_version(io, url, PROBE_TIMEOUT).await {
                tracing::error!(
                    coderd = %url,
                    version,
                    "--coderd {url} is coderd {version}, which serves its Agent API over \
                     DRPC on a websocket, not gRPC: every call fails; forward to it with \
                     --coder-url {url} (and the agent's token) instead"
                );
            }
        });
    }
}
