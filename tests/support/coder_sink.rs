//! The project's own coder sink (what `sink --protocol coder` runs) in-process, standing in
//! for coderd in the coder transport tests: on a loopback port, recording every call, with
//! its fault injection at hand; and a coder reporter pointed at it.
//!
//! ```ignore
//! let coderd = TestCoderd::start(|c| c.token = Some("t".into())).await;
//! coderd.sink.fail_calls([CallFault::CutBeforeAnswer(Cut::TcpReset)]);
//! // ... serve --coder-url coderd.url() --agent-token t ...
//! let requests = coderd.delivered();
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use boundary_log_proxy::config::coder::CoderUrl;
use boundary_log_proxy::metrics::Metrics;
use boundary_log_proxy::proto::agent::ReportBoundaryLogsRequest;
use boundary_log_proxy::reporter::coder::{CoderConfig, CoderReporter};
use boundary_log_proxy::sink::coder::{CoderSink, CoderSinkConfig};
use boundary_log_proxy::sink::Sink;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A coder sink serving on a loopback port until stopped or dropped.
pub struct TestCoderd {
    pub sink: CoderSink,
    pub addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl TestCoderd {
    /// Starts a quiet sink recording every call, with coderd's defaults changed by `tweak`.
    pub async fn start(tweak: impl FnOnce(&mut CoderSinkConfig)) -> Self {
        let mut config = CoderSinkConfig {
            record_calls: true,
            ..CoderSinkConfig::default()
        };
        tweak(&mut config);
        let sink = CoderSink::new(Sink::quiet(), config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let mut coderd = Self {
            sink,
            addr,
            task: None,
        };
        coderd.serve(listener);
        coderd
    }

    fn serve(&mut self, listener: TcpListener) {
        let sink = self.sink.clone();
        self.task = Some(tokio::spawn(async move {
            sink.serve(listener, std::future::pending()).await;
        }));
    }

    /// `http://127.0.0.1:PORT`, as `--coder-url` takes it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops listening and drops every connection, as a crashed coderd would.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port, with the same state (calls, faults) as before.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = TcpListener::bind(self.addr).await.expect("rebind");
        self.serve(listener);
    }

    /// The requests coderd kept (answered, or recorded before a cut), decoded, in order.
    pub fn delivered(&self) -> Vec<ReportBoundaryLogsRequest> {
        self.sink
            .calls()
            .iter()
            .filter(|c| c.outcome.delivered())
            .map(|c| {
                ReportBoundaryLogsRequest::decode(&c.request[..]).expect("recorded requests decode")
            })
            .collect()
    }

    /// A coder reporter (library API) to this sink with `token`, and its metrics.
    pub fn reporter(&self, token: &str) -> (CoderReporter, Arc<Metrics>) {
        let metrics = Metrics::new(&prometheus::Registry::new()).expect("metrics");
        let url: CoderUrl = self.url().parse().expect("a coder URL");
        let reporter = CoderReporter::new(CoderConfig::new(url, token), metrics.clone())
            .expect("coder reporter");
        (reporter, metrics)
    }
}

impl Drop for TestCoderd {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
