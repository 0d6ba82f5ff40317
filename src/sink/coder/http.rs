//! The coder sink's HTTP/1.1 layer (hyper): `GET /api/v2/buildinfo`, and
//! `GET /api/v2/workspaceagents/me/rpc` checked (session token, queued rejections, the
//! websocket handshake headers) and upgraded to a websocket, which `session` then runs.
//! Errors are coderd's JSON body, `{"message": ..., "detail": ...}`.

use std::convert::Infallible;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::{session, CoderSink, BUILDINFO_PATH, RPC_PATH, TOKEN_HEADER};
// The largest websocket message (and frame) taken is the proxy's own limit, 4x its
// largest (256 KiB + 12): with up to 4 messages queued for the yamux session
// (`session`), a connection buffers a few MiB inbound at most.
use crate::reporter::coder::websocket::{MAX_MESSAGE, MAX_UNSENT};

/// Most bytes tungstenite reads at a time (and zero-fills before each read): the client's
/// requests come in messages of up to a yamux frame (256 KiB), read in 64 KiB steps.
const READ_BUFFER: usize = 64 << 10;

/// coderd's answer to a token it does not know.
pub const UNAUTHORIZED_MESSAGE: &str = "Workspace agent not authorized.";
/// coderd's answer to a request without a token.
pub const SIGNED_OUT_MESSAGE: &str =
    "You are signed out or your session has expired. Please sign in again to continue.";

/// An upgrade the rpc route accepted, waiting for hyper to hand over the connection.
struct Accepted {
    connection: u64,
    on_upgrade: OnUpgrade,
}

/// Serves HTTP on `io` until it closes or is upgraded; an upgraded connection then runs
/// the websocket session on the same task. `fd` must be a descriptor of `io`'s own
/// socket (or `None`).
pub(super) async fn serve_connection<I>(sink: CoderSink, io: I, fd: Option<OwnedFd>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let accepted: Arc<Mutex<Option<Accepted>>> = Arc::default();
    let service = {
        let (sink, accepted) = (sink.clone(), accepted.clone());
        service_fn(move |request| {
            let response = route(&sink, request, &accepted);
            async move { Ok::<_, Infallible>(response) }
        })
    };
    let served = http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await;
    if let Err(error) = served {
        tracing::debug!(%error, "coder sink: HTTP connection ended");
    }
    let upgrade = accepted
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let Some(Accepted {
        connection,
        on_upgrade,
    }) = upgrade
    else {
        return;
    };
    match on_upgrade.await {
        Ok(upgraded) => {
            let websocket = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(
                    crate::reporter::coder::websocket::read_config(READ_BUFFER)
                        .max_message_size(Some(MAX_MESSAGE))
                        .max_frame_size(Some(MAX_MESSAGE))
                        .max_write_buffer_size(MAX_UNSENT),
                ),
            )
            .await;
            session::run(sink, connection, websocket, fd).await;
        }
        Err(error) => tracing::warn!(%error, connection, "coder sink: the upgrade failed"),
    }
}

fn route(
    sink: &CoderSink,
    request: Request<Incoming>,
    accepted: &Mutex<Option<Accepted>>,
) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, BUILDINFO_PATH) => buildinfo(sink),
        (&Method::GET, RPC_PATH) => rpc(sink, request, accepted),
        (_, BUILDINFO_PATH | RPC_PATH) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed.", None)
        }
        _ => error(StatusCode::NOT_FOUND, "Route not found.", None),
    }
}

fn buildinfo(sink: &CoderSink) -> Response<Full<Bytes>> {
    sink.inner
        .buildinfo_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let body = serde_json::json!({
        "external_url": "",
        "version": sink.config().version,
        "dashboard_url": "",
        "workspace_proxy": false,
    });
    json(StatusCode::OK, &body)
}

fn rpc(
    sink: &CoderSink,
    mut request: Request<Incoming>,
    accepted: &Mutex<Option<Accepted>>,
) -> Response<Full<Bytes>> {
    let (role, api_version) = query_params(request.uri().query().unwrap_or(""));
    let refuse = |status: StatusCode, message: &str, detail: Option<&str>| {
        sink.record_connect(status.as_u16(), role.clone(), api_version.clone());
        // `body_message`, not `message`: that key is the line's own text in JSON.
        tracing::info!(
            status = status.as_u16(),
            body_message = message,
            "coder sink: refused an rpc connection"
        );
        error(status, message, detail)
    };
    if let Some(expected) = sink.config().token {
        match request.headers().get(TOKEN_HEADER) {
            None => {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    SIGNED_OUT_MESSAGE,
                    Some("Cookie \"coder_session_token\" or query parameter must be provided."),
                )
            }
            Some(token) if token.as_bytes() != expected.as_bytes() => {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    UNAUTHORIZED_MESSAGE,
                    Some("The agent cannot authenticate until the workspace provision job has been completed. If the job is no longer running, this agent is invalid."),
                )
            }
            Some(_) => {}
        }
    }
    if let Some(reject) = sink.next_http_reject() {
        let status =
            StatusCode::from_u16(reject.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return refuse(status, &reject.message, None);
    }
    let key = match websocket_key(request.headers()) {
        Ok(key) => key,
        Err(problem) => return refuse(StatusCode::BAD_REQUEST, problem, None),
    };
    let connection = sink.record_connect(
        StatusCode::SWITCHING_PROTOCOLS.as_u16(),
        role.clone(),
        api_version.clone(),
    );
    tracing::info!(
        connection,
        role = role.as_deref().unwrap_or(""),
        version = api_version.as_deref().unwrap_or(""),
        "coder sink: agent API connection"
    );
    *accepted.lock().unwrap_or_else(PoisonError::into_inner) = Some(Accepted {
        connection,
        on_upgrade: hyper::upgrade::on(&mut request),
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(CONNECTION, "Upgrade")
        .header(UPGRADE, "websocket")
        .header(SEC_WEBSOCKET_ACCEPT, derive_accept_key(key.as_bytes()))
        .body(Full::default())
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "bad response", None))
}

/// The handshake's key, after checking the headers a websocket upgrade must carry.
fn websocket_key(headers: &HeaderMap) -> Result<String, &'static str> {
    let has_token = |name, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    if !has_token(CONNECTION, "upgrade") || !has_token(UPGRADE, "websocket") {
        return Err("Expected a websocket upgrade (Connection: Upgrade, Upgrade: websocket).");
    }
    if headers
        .get(http::header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err("Unsupported websocket version: expected Sec-WebSocket-Version: 13.");
    }
    headers
        .get(SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or("Missing Sec-WebSocket-Key.")
}

/// `role` and `version` from a query string (no percent-decoding: both are plain words).
fn query_params(query: &str) -> (Option<String>, Option<String>) {
    let (mut role, mut version) = (None, None);
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("role", value)) => role = Some(value.to_owned()),
            Some(("version", value)) => version = Some(value.to_owned()),
            _ => {}
        }
    }
    (role, version)
}

fn error(status: StatusCode, message: &str, detail: Option<&str>) -> Response<Full<Bytes>> {
    let mut body = serde_json::json!({ "message": message });
    if let Some(detail) = detail {
        body["detail"] = detail.into();
    }
    json(status, &body)
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_finds_role_and_version_in_any_order() {
        assert_eq!(
            query_params("version=2.0&role=boundary-log-proxy"),
            (Some("boundary-log-proxy".into()), Some("2.0".into()))
        );
        assert_eq!(query_params(""), (None, None));
    }

    #[test]
    fn a_handshake_without_the_upgrade_headers_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(SEC_WEBSOCKET_KEY, "a2V5".parse().unwrap());
        headers.insert(http::header::SEC_WEBSOCKET_VERSION, "13".parse().unwrap());
        assert!(websocket_key(&headers).is_err());
        headers.insert(CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        headers.insert(UPGRADE, "WebSocket".parse().unwrap());
        assert_eq!(websocket_key(&headers).as_deref(), Ok("a2V5"));
        headers.insert(http::header::SEC_WEBSOCKET_VERSION, "8".parse().unwrap());
        assert!(websocket_key(&headers).is_err());
    }

    #[test]
    fn errors_carry_coderds_json_body() {
        let response = error(StatusCode::UNAUTHORIZED, UNAUTHORIZED_MESSAGE, Some("why"));
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    }
}
