//! deploy/coder-workspace/start-boundary-log-proxy.sh, run as a workspace's start script
//! would run it (the agent's CODER_AGENT_URL and CODER_AGENT_TOKEN in its environment)
//! against the coder sink: it returns once the proxy accepts connections on its own
//! socket, and the proxy it left running delivers to coderd.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use boundary_log_proxy::codec::Tag;
use boundary_log_proxy::workload;
use support::coder_sink::TestCoderd;
use support::proxy::{
    assert_accounting_totals, eventually, free_addr, http_get, request, stopped_totals, Client,
    Scrape, BINARY, PATIENCE,
};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/coder-workspace/start-boundary-log-proxy.sh"
);
const SESSION: &str = "5d2f0c1e-8a3b-4c7d-9e6f-1a2b3c4d5e6f";

/// Runs the script with only `env` (and PATH) in its environment.
fn run_script(env: &[(&str, &str)]) -> Output {
    let mut command = Command::new("bash");
    command.arg(SCRIPT).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command.envs(env.iter().copied());
    command.output().expect("running the script")
}

/// The proxy's pid from the script's "boundary-log-proxy (pid N) listens on ..." line.
fn started_pid(stdout: &str) -> i32 {
    stdout
        .split("(pid ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {stdout:?}"))
}

/// Stops the proxy the script started and waits until it is gone.
fn stop(pid: i32) {
    // SAFETY: kill(2) with a pid the script reported for the proxy it started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + PATIENCE;
    while !gone(pid) {
        assert!(Instant::now() < deadline, "the proxy did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The script's environment as a workspace agent gives it, with the proxy's binary, its
/// directory and metrics address; `more` added.
fn agent_env<'a>(
    state: &'a str,
    metrics: &'a str,
    url: &'a str,
    more: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("HOME", "/nonexistent"),
        ("BOUNDARY_LOG_PROXY_BIN", BINARY),
        ("BOUNDARY_LOG_PROXY_DIR", state),
        ("BOUNDARY_LOG_PROXY_METRICS_ADDR", metrics),
        ("CODER_AGENT_URL", url),
        ("CODER_AGENT_TOKEN", "agent-token"),
    ];
    env.extend_from_slice(more);
    env
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn log_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_script_leaves_a_proxy_on_its_own_socket_delivering_to_coderd() {
    let coderd = TestCoderd::start(|c| c.token = Some("agent-token".into())).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let metrics = free_addr();
    let (url, state_arg, metrics_arg) = (
        coderd.url(),
        state.display().to_string(),
        metrics.to_string(),
    );
    let (url2, state_arg2, metrics_arg2) = (url.clone(), state_arg.clone(), metrics_arg.clone());
    let output = tokio::task::spawn_blocking(move || {
        run_script(&agent_env(
            &state_arg,
            &metrics_arg,
            &url,
            // The agent's own socket: the script must not let --socket fall back to it.
            &[(
                "CODER_AGENT_BOUNDARY_LOG_PROXY_SOCKET_PATH",
                "/nonexistent/agent/boundary-audit.sock",
            )],
        ))
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stderr, "", "a first start prints nothing to stderr");
    let pid = started_pid(&stdout);

    let socket = state.join("boundary-audit.sock");
    let sent = request(SESSION, "claude-code", 0, 6);
    let mut client = Client::connect(&socket);
    client.send(&workload::frame(Tag::V2, &sent));
    client.finish();
    eventually("the logs at coderd", || coderd.delivered().len() == 1).await;
    assert_eq!(coderd.delivered()[0], sent);
    assert_eq!(
        coderd.sink.connects()[0].role.as_deref(),
        Some("boundary-log-proxy")
    );
    let (status, body) = tokio::task::spawn_blocking(move || http_get(metrics, "/metrics"))
        .await
        .unwrap()
        .expect("the metrics address the script gave");
    assert_eq!(status, 200);
    assert_eq!(Scrape::parse(&body).get("coderd_connected", None), 1);

    // Run again while the proxy serves: the script leaves it and its log alone.
    let lines_before = log_lines(&state.join("proxy.log"));
    let again = tokio::task::spawn_blocking(move || {
        run_script(&agent_env(&state_arg2, &metrics_arg2, &url2, &[]))
    })
    .await
    .unwrap();
    let again_out = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{again_out}");
    assert!(again_out.contains("already serves"), "{again_out}");
    let lines_after = log_lines(&state.join("proxy.log"));
    assert!(
        lines_after.starts_with(&lines_before),
        "the running proxy's log was kept"
    );

    tokio::task::spawn_blocking(move || stop(pid))
        .await
        .unwrap();
    let totals = stopped_totals(&log_lines(&state.join("proxy.log")));
    assert_accounting_totals(totals, 0);
    assert_eq!(totals.forwarded, 6);
}

#[test]
fn the_start_script_refuses_to_start_without_the_agents_token() {
    let output = run_script(&[
        ("HOME", "/nonexistent"),
        ("BOUNDARY_LOG_PROXY_BIN", BINARY),
        ("CODER_AGENT_URL", "http://127.0.0.1:1"),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("CODER_AGENT_TOKEN"), "{stderr}");
}

#[test]
fn the_start_script_refuses_an_empty_agent_token_as_the_proxy_would() {
    let output = run_script(&[
        ("HOME", "/nonexistent"),
        ("BOUNDARY_LOG_PROXY_BIN", BINARY),
        ("CODER_AGENT_URL", "http://127.0.0.1:1"),
        ("CODER_AGENT_TOKEN", ""),
        ("CODER_AGENT_TOKEN_FILE", "/nonexistent/token"),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("set but empty"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_script_serves_the_socket_it_is_given_and_sees_the_proxy_at_any_log_level() {
    // The proxy's "listening" line is an info line; at warn it is never written.
    let coderd = TestCoderd::start(|c| c.token = Some("agent-token".into())).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let socket = dir.path().join("custom.sock");
    let (url, state_arg, metrics_arg, socket_arg) = (
        coderd.url(),
        state.display().to_string(),
        free_addr().to_string(),
        socket.display().to_string(),
    );
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || {
        run_script(&agent_env(
            &state_arg,
            &metrics_arg,
            &url,
            &[
                ("BOUNDARY_LOG_PROXY_LOG_LEVEL", "warn"),
                ("BOUNDARY_LOG_PROXY_SOCKET", &socket_arg),
            ],
        ))
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        // Do not leave the proxy behind when the script gave up on it.
        let _ = Command::new("pkill")
            .args(["-f", &state.display().to_string()])
            .status();
    }
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "returned as soon as the proxy served"
    );
    let pid = started_pid(&stdout);
    let sent = request(SESSION, "claude-code", 0, 2);
    assert!(!state.join("boundary-audit.sock").exists());
    let mut client = Client::connect(&socket);
    client.send(&workload::frame(Tag::V2, &sent));
    client.finish();
    eventually("the logs at coderd", || coderd.delivered().len() == 1).await;
    tokio::task::spawn_blocking(move || stop(pid))
        .await
        .unwrap();
}
