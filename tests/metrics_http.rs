//! The metrics server over real TCP: `/metrics` serves the registry in Prometheus text,
//! `/healthz` answers `ok` until draining and 503 after, other paths 404, and the
//! server stops when told to.

use std::time::Duration;

use boundary_log_proxy::events::{InternalEvent as _, LogsReceived};
use boundary_log_proxy::metrics::{
    bind_metrics, serve_metrics, Health, Metrics, MetricsServerError, MAX_METRICS_CONNECTIONS,
};
use prometheus::Registry;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// One HTTP/1.1 request on a fresh connection, read to the server's close.
async fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .expect("server answered within 5s")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Reply {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

#[tokio::test]
async fn serves_metrics_and_health_until_shut_down() {
    let registry = Registry::new();
    let metrics = Metrics::new(&registry).unwrap();
    LogsReceived {
        frames: 1,
        logs: 12,
    }
    .emit(&metrics);
    let health = Health::new();
    let listener = bind_metrics("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_metrics(listener, registry, health.clone(), async {
        let _ = stopped.await;
    }));

    let scrape = request(addr, "GET", "/metrics").await;
    assert_eq!(scrape.status, 200);
    assert!(
        scrape
            .head
            .contains("content-type: text/plain; version=0.0.4"),
        "{}",
        scrape.head
    );
    assert!(scrape
        .body
        .contains("# TYPE agent_boundary_log_proxy_logs_received_total counter"));
    assert!(
        scrape
            .body
            .contains("\nagent_boundary_log_proxy_logs_received_total 12\n"),
        "{}",
        scrape.body
    );
    assert!(scrape
        .body
        .contains("agent_boundary_log_proxy_logs_dropped_total{reason=\"shutdown\"} 0"));

    let healthy = request(addr, "GET", "/healthz").await;
    assert_eq!((healthy.status, healthy.body.as_str()), (200, "ok\n"));

    assert_eq!(request(addr, "GET", "/").await.status, 404);
    assert_eq!(request(addr, "GET", "/metricsx").await.status, 404);
    assert_eq!(request(addr, "POST", "/metrics").await.status, 405);

    health.set_draining();
    let draining = request(addr, "GET", "/healthz").await;
    assert_eq!(
        (draining.status, draining.body.as_str()),
        (503, "draining\n")
    );
    assert_eq!(
        request(addr, "GET", "/metrics").await.status,
        200,
        "metrics stay up while draining"
    );

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stopped within 5s")
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener closed after shutdown"
    );
}

#[tokio::test]
async fn shutdown_does_not_wait_for_an_idle_keep_alive_connection() {
    let listener = bind_metrics("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_metrics(
        listener,
        Registry::new(),
        Health::new(),
        async {
            let _ = stopped.await;
        },
    ));
    // A client that opens a connection, makes one keep-alive request and then idles.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    stop.send(()).unwrap();
    // The server force-closes stragglers after a 1s grace; an idle keep-alive
    // connection must be closed at once instead, well inside that.
    tokio::time::timeout(Duration::from_millis(500), server)
        .await
        .expect("server stopped at once despite the idle connection")
        .unwrap();
    let n = idle.read(&mut buf).await.unwrap();
    assert_eq!(n, 0, "the idle connection was closed");
}

#[tokio::test]
async fn binding_a_taken_address_fails_naming_it() {
    let taken = bind_metrics("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = taken.local_addr().unwrap();
    let error = bind_metrics(addr).await.unwrap_err();
    assert!(matches!(error, MetricsServerError::Bind { addr: a, .. } if a == addr));
    assert!(error.to_string().contains(&addr.to_string()), "{error}");
}

/// Whether the server closed `stream` within a second (it sent nothing).
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn clients_that_never_finish_a_request_cannot_take_more_than_the_connection_cap() {
    let registry = Registry::new();
    let _metrics = Metrics::new(&registry).unwrap();
    let listener = bind_metrics("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_metrics(listener, registry, Health::new(), async {
        let _ = stopped.await;
    }));
    // Clients that start a request and never finish its head, one with a long header.
    let mut stalled = Vec::new();
    for i in 0..MAX_METRICS_CONNECTIONS {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nX-Pad: ")
            .await
            .unwrap();
        if i == 0 {
            // Past what a connection may buffer: refused at once, not held.
            let _ = stream.write_all(&[b'a'; 64 << 10]).await;
            let mut answer = Vec::new();
            tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut answer))
                .await
                .expect("a long head is refused at once")
                .unwrap();
            let answer = String::from_utf8_lossy(&answer);
            assert!(
                answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
                "{answer}"
            );
            continue;
        }
        stalled.push(stream);
    }
    // Let the server take the stalled ones in; one more fills the cap.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut last = TcpStream::connect(addr).await.unwrap();
    last.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Beyond the cap a connection is closed at once.
    let mut over = TcpStream::connect(addr).await.unwrap();
    assert!(closed_by_server(&mut over).await, "closed beyond the cap");
    assert!(!closed_by_server(&mut last).await, "still within the cap");
    // Once they go, scrapes are served again.
    drop(stalled);
    drop(last);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(request(addr, "GET", "/healthz").await.status, 200);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}
