//! Drives the real binary: invalid flag values exit 2 with one stderr line naming the
//! flag, help and version exit 0, and the environment fills flags the command line
//! leaves out.

use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_boundary-log-proxy");

/// The binary with no `BOUNDARY_LOG_PROXY_*` inherited from the test's environment.
fn proxy(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("BOUNDARY_LOG_PROXY_") {
            command.env_remove(key);
        }
    }
    command.args(args).envs(env.iter().copied());
    command.output().expect("running the binary")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn print_config(args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut all = vec!["serve", "--print-config"];
    all.extend_from_slice(args);
    let output = proxy(&all, env);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    serde_json::from_slice(&output.stdout).expect("print-config prints JSON")
}

#[track_caller]
fn assert_usage_error(args: &[&str], env: &[(&str, &str)], names: &[&str], takes: &str) {
    let output = proxy(args, env);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {err}");
    assert!(output.stdout.is_empty(), "{args:?} printed to stdout");
    assert_eq!(err.lines().count(), 1, "{args:?}: not one line:\n{err}");
    assert!(err.starts_with("error: "), "{args:?}: {err}");
    for name in names {
        assert!(err.contains(name), "{args:?}: {err:?} does not name {name}");
    }
    assert!(
        err.contains(takes),
        "{args:?}: {err:?} does not say it takes {takes:?}"
    );
}

#[test]
fn invalid_values_exit_2_with_one_line_naming_the_flag_and_what_it_takes() {
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["--ring-capacity", "3"],
            "--ring-capacity",
            "power of two >= 2",
        ),
        (
            &["--ring-capacity", "0"],
            "--ring-capacity",
            "power of two >= 2",
        ),
        (
            &["serve", "--ring-capacity=1"],
            "--ring-capacity",
            "power of two >= 2",
        ),
        (
            &["--batch-linger", "5"],
            "--batch-linger",
            "duration with a unit",
        ),
        (
            &["--shutdown-timeout", "soon"],
            "--shutdown-timeout",
            "duration with a unit",
        ),
        (&["--call-timeout", "0s"], "--call-timeout", "above zero"),
        (&["--socket-mode", "0800"], "--socket-mode", "octal"),
        (&["--socket-mode", "rw-------"], "--socket-mode", "octal"),
        (&["--io", "kqueue"], "--io", "auto, uring, epoll"),
        (&["--sink", "file"], "--sink", "stdout, null"),
        (&["--metrics-addr", "nope"], "--metrics-addr", "HOST:PORT"),
        (
            &["--metrics-addr", "127.0.0.1:70000"],
            "--metrics-addr",
            "HOST:PORT",
        ),
        (
            &["--coderd", "coder.example"],
            "--coderd",
            "http://HOST:PORT",
        ),
        (
            &["--batch-max-bytes", "4194304"],
            "--batch-max-bytes",
            "4 MiB",
        ),
        (&["--batch-max-logs", "0"], "--batch-max-logs", ">= 1"),
        (&["--max-connections", "-1"], "--max-connections", ">= 1"),
        (&["--allow-uid", "root"], "--allow-uid", "numeric user id"),
        (&["--log-format", "xml"], "--log-format", "text, json"),
        (&["--log-level", "loud"], "--log-level", "level"),
        (&["--ring-capacity"], "--ring-capacity", "power of two >= 2"),
        (&["loadgen", "--tag", "v3"], "--tag", "v1, v2"),
        (&["loadgen", "--connections", "0"], "--connections", ">= 1"),
        (&["sink", "--listen", "somewhere"], "--listen", "HOST:PORT"),
    ];
    for (args, flag, takes) in cases {
        assert_usage_error(args, &[], &[flag], takes);
    }
}

#[test]
fn socket_path_too_long_for_a_unix_address_is_a_flag_error() {
    let long = format!("/tmp/{}", "s".repeat(110));
    assert_usage_error(&["--socket", &long], &[], &["--socket"], "107 bytes");
    assert_usage_error(
        &["loadgen", "--socket", ""],
        &[],
        &["--socket"],
        "107 bytes",
    );
}

#[test]
fn sink_together_with_coderd_is_a_flag_error() {
    assert_usage_error(
        &["--sink", "stdout", "--coderd", "http://127.0.0.1:3000"],
        &[],
        &["--sink", "--coderd"],
        "not both",
    );
}

#[test]
fn unknown_flag_and_subcommand_exit_2_with_one_line() {
    assert_usage_error(&["--frobnicate"], &[], &["--frobnicate"], "--help");
    assert_usage_error(
        &["serve", "--ring-capacty", "8"],
        &[],
        &["--ring-capacty"],
        "--ring-capacity",
    );
    assert_usage_error(
        &["frobnicate"],
        &[],
        &["frobnicate"],
        "serve, sink, loadgen",
    );
}

#[test]
fn invalid_value_from_the_environment_names_the_variable() {
    assert_usage_error(
        &[],
        &[("BOUNDARY_LOG_PROXY_RING_CAPACITY", "3")],
        &["--ring-capacity", "BOUNDARY_LOG_PROXY_RING_CAPACITY"],
        "power of two >= 2",
    );
}

#[test]
fn help_and_version_exit_0_on_stdout() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["sink", "--help"],
        &["loadgen", "--help"],
    ] {
        let output = proxy(args, &[]);
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains("Usage:"), "{args:?}: {text}");
    }
    let serve_help = String::from_utf8_lossy(&proxy(&["serve", "--help"], &[]).stdout).into_owned();
    assert!(
        serve_help.contains("BOUNDARY_LOG_PROXY_RING_CAPACITY"),
        "{serve_help}"
    );
    let version = proxy(&["--version"], &[]);
    assert_eq!(version.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn print_config_shows_the_documented_defaults_without_a_subcommand_too() {
    let expected_socket = std::env::temp_dir().join("boundary-audit.sock");
    for config in [print_config(&[], &[]), {
        let output = proxy(&["--print-config"], &[]);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        serde_json::from_slice(&output.stdout).unwrap()
    }] {
        assert_eq!(config["socket"], expected_socket.display().to_string());
        assert_eq!(config["socket_mode"], "0600");
        assert_eq!(config["sink"], "stdout");
        assert_eq!(config["coderd"], Value::Null);
        assert_eq!(config["metrics_addr"], Value::Null);
        assert_eq!(config["io"], "auto");
        assert_eq!(config["ring_capacity"], 4096);
        assert_eq!(config["batch_max_logs"], 1000);
        assert_eq!(config["batch_max_bytes"], 1_048_576);
        assert_eq!(config["batch_linger"], "5ms");
        assert_eq!(config["retry_max_elapsed"], "30s");
        assert_eq!(config["call_timeout"], "10s");
        assert_eq!(config["max_connections"], 1024);
        assert_eq!(config["allow_uids"], serde_json::json!([]));
        assert_eq!(config["shutdown_timeout"], "5s");
        assert_eq!(config["log"]["format"], "text");
        assert_eq!(config["log"]["level"], "info");
    }
}

#[test]
fn environment_fills_flags_and_the_flag_wins() {
    let env = [
        ("BOUNDARY_LOG_PROXY_RING_CAPACITY", "64"),
        ("BOUNDARY_LOG_PROXY_RETRY_MAX_ELAPSED", "0s"),
        ("BOUNDARY_LOG_PROXY_SOCKET_MODE", "0o660"),
        ("BOUNDARY_LOG_PROXY_METRICS_ADDR", "127.0.0.1:9100"),
        ("BOUNDARY_LOG_PROXY_ALLOW_UID", "1000,1001"),
        ("BOUNDARY_LOG_PROXY_IO", "epoll"),
        ("BOUNDARY_LOG_PROXY_LOG_FORMAT", "json"),
    ];
    let from_env = print_config(&[], &env);
    assert_eq!(from_env["ring_capacity"], 64);
    assert_eq!(from_env["retry_max_elapsed"], "0s");
    assert_eq!(from_env["socket_mode"], "0660");
    assert_eq!(from_env["metrics_addr"], "127.0.0.1:9100");
    assert_eq!(from_env["allow_uids"], serde_json::json!([1000, 1001]));
    assert_eq!(from_env["io"], "epoll");
    assert_eq!(from_env["log"]["format"], "json");

    let flags_win = print_config(
        &[
            "--ring-capacity",
            "128",
            "--io=uring",
            "--allow-uid",
            "7",
            "--socket-mode",
            "600",
        ],
        &env,
    );
    assert_eq!(flags_win["ring_capacity"], 128);
    assert_eq!(flags_win["io"], "uring");
    assert_eq!(flags_win["allow_uids"], serde_json::json!([7]));
    assert_eq!(flags_win["socket_mode"], "0600");
    assert_eq!(
        flags_win["retry_max_elapsed"], "0s",
        "env still fills the rest"
    );
}

#[test]
fn coderd_from_the_environment_replaces_the_sink_and_hides_the_token() {
    let config = print_config(
        &[],
        &[
            ("BOUNDARY_LOG_PROXY_CODERD", "unix:/run/coder/agent.sock"),
            ("BOUNDARY_LOG_PROXY_AUTH_TOKEN", "very-secret"),
        ],
    );
    assert_eq!(config["coderd"], "unix:/run/coder/agent.sock");
    assert_eq!(config["sink"], Value::Null);
    assert_eq!(config["auth_token"], "<redacted>");
    assert!(!config.to_string().contains("very-secret"));
}
