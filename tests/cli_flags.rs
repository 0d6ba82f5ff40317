//! Drives the real binary: invalid flag values exit 2 with one stderr line naming the
//! flag, help and version exit 0, and the environment fills flags the command line
//! leaves out.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_boundary-log-proxy");

/// The binary with none of its variables inherited from the test's environment:
/// `BOUNDARY_LOG_PROXY_*`, nor the `CODER_AGENT_*` a Coder workspace sets.
fn command() -> Command {
    let mut command = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if is_proxy_variable(&key.to_string_lossy()) {
            command.env_remove(key);
        }
    }
    command
}

/// The binary run to completion with `args` and `env`.
fn proxy(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = command();
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

/// A value that is not UTF-8 (Linux allows any bytes in arguments and variables):
/// clap refuses it without naming anything; the line names the flag, and the variable
/// when the value came from one.
#[test]
fn a_value_that_is_not_utf8_names_its_flag_or_variable() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt as _;
    let bad = OsStr::from_bytes(b"/tmp/\xff.sock");
    let mut flag_bad = std::ffi::OsString::from("--socket=");
    flag_bad.push(bad);
    /// Arguments, variables set, and what the error line must name.
    type Run<'a> = (Vec<&'a OsStr>, Vec<(&'a str, &'a OsStr)>, &'a str);
    let runs: [Run; 5] = [
        (
            vec![OsStr::new("serve"), OsStr::new("--socket"), bad],
            vec![],
            "--socket",
        ),
        (
            vec![OsStr::new("serve"), flag_bad.as_os_str()],
            vec![],
            "--socket",
        ),
        (
            vec![OsStr::new("loadgen"), OsStr::new("--socket"), bad],
            vec![],
            "--socket",
        ),
        (
            vec![OsStr::new("serve"), OsStr::new("--print-config")],
            vec![("BOUNDARY_LOG_PROXY_RING_CAPACITY", bad)],
            "--ring-capacity (from BOUNDARY_LOG_PROXY_RING_CAPACITY)",
        ),
        // The variable of a flag loadgen does not have (sink's --listen) is not it.
        (
            vec![OsStr::new("loadgen")],
            vec![
                ("BOUNDARY_LOG_PROXY_LISTEN", bad),
                ("BOUNDARY_LOG_PROXY_SOCKET", bad),
            ],
            "--socket (from BOUNDARY_LOG_PROXY_SOCKET)",
        ),
    ];
    for (args, env, names) in runs {
        let mut command = command();
        command.args(&args);
        command.envs(env);
        let output = command.output().expect("running the binary");
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: not one line:\n{err}");
        assert!(
            err.contains(names),
            "{args:?}: {err:?} does not name {names}"
        );
        assert!(err.contains("UTF-8"), "{args:?}: {err}");
    }
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

/// The binary run with a bound on its time: a value wrongly accepted would start a
/// server that never exits; that fails the test instead of hanging it.
fn proxy_bounded(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = command();
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("running the binary");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("reaping the binary");
            panic!(
                "{args:?} {env:?} was accepted and kept running; stderr:\n{}",
                stderr(&output)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().expect("collecting the output")
}

/// One bad value of one flag: `says` is a piece of the one line it must produce.
struct Bad {
    sub: &'static str,
    flag: &'static str,
    value: &'static str,
    says: &'static str,
}

const fn bad(
    sub: &'static str,
    flag: &'static str,
    value: &'static str,
    says: &'static str,
) -> Bad {
    Bad {
        sub,
        flag,
        value,
        says,
    }
}

/// Tokens are secrets: their rows start with this, and no message may show it.
const SECRET: &str = "s3cr";

/// Bad values for every flag that takes one, in every subcommand. A flag added to
/// the command line without rows here fails `every_flag_has_rows_in_the_bad_value_table`.
const BAD_VALUES: &[Bad] = &[
    bad("serve", "--socket", "", "107 bytes"),
    bad("serve", "--socket-mode", "0800", "octal"),
    bad("serve", "--socket-mode", "-600", "octal"),
    bad("serve", "--socket-mode", "01000", "at most 0777"),
    bad("serve", "--socket-mode", "0", "with a write bit"),
    bad("serve", "--socket", "/tmp/audit.sock/", "not ending in '/'"),
    bad("serve", "--socket", "/tmp/.", "not ending in '/'"),
    bad("serve", "--socket-mode", "0444", "with a write bit"),
    bad("serve", "--coderd", "coder.example", "http://HOST:PORT"),
    bad(
        "serve",
        "--coderd",
        "https://coder.example:443",
        "http://HOST:PORT",
    ),
    bad("serve", "--coderd", "unix:", "unix:/path"),
    bad(
        "serve",
        "--coderd",
        "http://127.0.0.1:99999",
        "http://HOST:PORT",
    ),
    bad("serve", "--coderd", "http://127.0.0.1:", "http://HOST:PORT"),
    bad(
        "serve",
        "--coderd",
        "http://user@127.0.0.1:1",
        "http://HOST:PORT",
    ),
    bad("serve", "--coderd", "http://-bad-:1", "http://HOST:PORT"),
    bad(
        "serve",
        "--auth-token",
        "s3cret\n",
        "a newline (0x0a) at its end",
    ),
    bad("serve", "--auth-token", "s3cret\r\n", "a carriage return"),
    bad(
        "serve",
        "--auth-token",
        "s3cr\x01et",
        "a control character (0x01)",
    ),
    bad("serve", "--auth-token", "s3cr\u{e9}t", "non-ASCII"),
    bad("serve", "--auth-token", "s3cr et", "a space"),
    bad("serve", "--auth-token", "", "empty"),
    bad("serve", "--sink", "file", "stdout, null"),
    // An empty value (an empty variable, or `--sink=`) names its variable too.
    bad("serve", "--sink", "", "stdout, null"),
    bad("serve", "--metrics-addr", "nope", "HOST:PORT"),
    bad("serve", "--metrics-addr", "127.0.0.1:70000", "HOST:PORT"),
    bad("serve", "--metrics-addr", "example.com:80", "HOST:PORT"),
    bad("serve", "--io", "kqueue", "auto, uring, epoll"),
    bad("serve", "--io", "", "auto, uring, epoll"),
    bad("serve", "--ring-capacity", "3", "power of two >= 2"),
    bad("serve", "--ring-capacity", "-4", "power of two >= 2"),
    bad("serve", "--ring-capacity", "33554432", "at most 16777216"),
    bad("serve", "--batch-max-logs", "0", ">= 1"),
    bad("serve", "--batch-max-logs", "-1", ">= 1"),
    bad("serve", "--batch-max-logs", "1e3", ">= 1"),
    bad("serve", "--batch-max-bytes", "4194304", "4 MiB"),
    bad("serve", "--batch-max-bytes", "0", "4 MiB"),
    bad("serve", "--batch-linger", "5", "duration with a unit"),
    bad(
        "serve",
        "--batch-linger",
        "-5ms",
        "negative duration is not allowed",
    ),
    bad(
        "serve",
        "--retry-max-elapsed",
        "-1s",
        "negative duration is not allowed",
    ),
    bad(
        "serve",
        "--retry-max-elapsed",
        "soon",
        "duration with a unit",
    ),
    bad("serve", "--call-timeout", "0s", "above zero"),
    bad(
        "serve",
        "--call-timeout",
        "-1s",
        "negative duration is not allowed",
    ),
    bad("serve", "--max-connections", "0", ">= 1"),
    bad("serve", "--max-connections", "-1", ">= 1"),
    bad("serve", "--allow-uid", "root", "numeric user id"),
    bad("serve", "--allow-uid", "1000,root", "numeric user id"),
    bad("serve", "--allow-uid", "-1", "numeric user id"),
    bad("serve", "--allow-uid", "4294967296", "numeric user id"),
    bad(
        "serve",
        "--shutdown-timeout",
        "-5s",
        "negative duration is not allowed",
    ),
    bad("serve", "--shutdown-timeout", "5", "duration with a unit"),
    bad(
        "serve",
        "--shutdown-timeout",
        "500000000000y",
        "at most 365d",
    ),
    bad("serve", "--batch-linger", "366d", "at most 365d"),
    bad("serve", "--retry-max-elapsed", "400d", "at most 365d"),
    bad("serve", "--call-timeout", "2y", "at most 365d"),
    bad("loadgen", "--wait-for-socket", "1000y", "at most 365d"),
    bad("serve", "--spool-dir", "", "directory"),
    bad(
        "serve",
        "--spool-dir",
        "/dev/null/spool",
        "/dev/null is not a directory",
    ),
    bad("serve", "--spool-max-bytes", "0", ">= 1"),
    bad("serve", "--spool-max-bytes", "-1", ">= 1"),
    bad("serve", "--spool-max-bytes", "256MiB", ">= 1"),
    bad("serve", "--spool-fsync", "never", "always, interval"),
    bad("serve", "--log-format", "xml", "text, json"),
    bad("serve", "--log-format", "", "text, json"),
    bad("serve", "--log-level", "loud", "level"),
    bad("serve", "--log-level", "info,", "level"),
    bad("sink", "--listen", "somewhere", "HOST:PORT"),
    bad("sink", "--listen", "unix:", "unix:/path"),
    bad("sink", "--log-format", "xml", "text, json"),
    bad("sink", "--protocol", "http", "grpc, coder"),
    bad("sink", "--token", "s3cret\n", "a newline (0x0a) at its end"),
    bad("sink", "--token", "s3cr\u{e9}t", "non-ASCII"),
    bad("sink", "--token", "", "empty"),
    bad("sink", "--log-level", "loud", "level"),
    bad("sink", "--coder-version", "latest", "v2.31.0"),
    bad("loadgen", "--socket", "", "107 bytes"),
    bad("loadgen", "--connections", "0", ">= 1"),
    bad("loadgen", "--frames", "-1", ">= 0"),
    bad("loadgen", "--frames", "ten", ">= 0"),
    bad("loadgen", "--logs-per-frame", "0", ">= 1"),
    bad("loadgen", "--rate", "0", ">= 1"),
    bad("loadgen", "--tag", "v3", "v1, v2"),
    bad(
        "loadgen",
        "--wait-for-socket",
        "-1s",
        "negative duration is not allowed",
    ),
    bad("loadgen", "--wait-for-socket", "10", "duration with a unit"),
    bad("loadgen", "--log-format", "xml", "text, json"),
    bad("loadgen", "--log-level", "loud", "level"),
    bad("serve", "--coder-url", "coder.example.com", "http://HOST"),
    bad(
        "serve",
        "--coder-url",
        "ftp://coder.example.com",
        "https://HOST",
    ),
    bad("serve", "--agent-token", "s3cr et", "a space"),
    bad(
        "serve",
        "--agent-token-file",
        "/nonexistent/token",
        "a file this user can read",
    ),
    bad(
        "serve",
        "--coder-ca-file",
        "/nonexistent/ca.pem",
        "a file this user can read",
    ),
    bad(
        "serve",
        "--spool-dir",
        "",
        "a directory this user can write in",
    ),
    bad(
        "serve",
        "--spool-dir",
        "/dev/null/spool",
        "a directory this user can write in",
    ),
    bad("serve", "--spool-max-bytes", "0", "a whole number >= 1"),
    bad(
        "serve",
        "--spool-max-bytes",
        "256MiB",
        "a whole number >= 1",
    ),
    bad("serve", "--spool-fsync", "sometimes", "always, interval"),
];

/// Switches (no value on the command line) whose variable can still be bad.
const BAD_SWITCH_VARIABLES: &[Bad] = &[
    bad("sink", "--quiet", "maybe", "--quiet"),
    bad(
        "serve",
        "--coder-allow-agent-role",
        "maybe",
        "--coder-allow-agent-role",
    ),
];

/// Flags with nothing that can be bad: no value and no variable.
const NOTHING_TO_BE_BAD: &[&str] = &["--print-config", "--help", "--version"];

/// Flags that are fine alone but not together: (arguments, variables, what the one
/// line must name, what it must say).
type Combination = (
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
    &'static [&'static str],
    &'static str,
);

const BAD_COMBINATIONS: &[Combination] = &[
    // The gRPC destination's token without that destination would be silently unused.
    (
        &["serve", "--sink", "null", "--auth-token", "t0ken"],
        &[],
        &["--auth-token", "--coderd"],
        "needs",
    ),
    (
        &["serve"],
        &[("BOUNDARY_LOG_PROXY_AUTH_TOKEN", "t0ken")],
        &["--auth-token", "--coderd"],
        "needs",
    ),
    (
        &["sink", "--listen", "127.0.0.1:1", "--token", "t0ken"],
        &[],
        &["--token", "--protocol coder"],
        "needs",
    ),
    (
        &["sink", "--listen", "127.0.0.1:1"],
        &[("BOUNDARY_LOG_PROXY_TOKEN", "t0ken")],
        &["--token", "BOUNDARY_LOG_PROXY_TOKEN", "--protocol coder"],
        "needs",
    ),
    (
        &[
            "sink",
            "--listen",
            "127.0.0.1:1",
            "--coder-version",
            "v2.30.0",
        ],
        &[],
        &["--coder-version", "--protocol coder"],
        "needs",
    ),
    (
        &["sink", "--protocol", "coder"],
        &[("BOUNDARY_LOG_PROXY_LISTEN", "unix:/tmp/never.sock")],
        &["--listen", "BOUNDARY_LOG_PROXY_LISTEN", "--protocol coder"],
        "HOST:PORT",
    ),
];

#[test]
fn flags_that_do_not_go_together_exit_2_naming_both() {
    for (args, env, names, says) in BAD_COMBINATIONS {
        let output = proxy_bounded(args, env);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: not one line:\n{err}");
        for name in *names {
            assert!(
                err.contains(name),
                "{args:?} {env:?}: {err:?} does not name {name}"
            );
        }
        assert!(
            err.contains(says),
            "{args:?}: {err:?} does not say {says:?}"
        );
        assert!(!err.contains("t0ken"), "{err:?} shows the token");
    }
}

/// Settings every run of `sub` needs besides the flag under test, so the run would
/// reach the point of binding if the bad value were accepted; `socket` must not appear.
fn base_args(sub: &str, flag: &str, dir: &Path) -> Vec<String> {
    let path = |name: &str| dir.join(name).to_str().expect("UTF-8 temp dir").to_owned();
    let mut args = vec![sub.to_owned()];
    let mut add = |f: &str, v: String| {
        if f != flag {
            args.extend([f.to_owned(), v]);
        }
    };
    match sub {
        "serve" => add("--socket", path("never.sock")),
        "sink" => add("--listen", format!("unix:{}", path("never.sock"))),
        "loadgen" => {
            add("--socket", path("never.sock"));
            add("--wait-for-socket", "0s".to_owned());
        }
        _ => unreachable!("{sub}"),
    }
    args
}

#[track_caller]
fn assert_flag_error(row: &Bad, args: &[String], env: &[(&str, &str)], from_env: bool) {
    let dir_args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = proxy_bounded(&dir_args, env);
    let err = stderr(&output);
    let var = boundary_log_proxy::cli::env_var_for(row.flag);
    let case = format!(
        "{} {} {:?} (from the environment: {from_env})",
        row.sub, row.flag, row.value
    );
    assert_eq!(output.status.code(), Some(2), "{case}: {err}");
    assert!(output.stdout.is_empty(), "{case}: printed to stdout");
    assert_eq!(err.lines().count(), 1, "{case}: not one line:\n{err}");
    assert!(err.starts_with("error: "), "{case}: {err}");
    assert!(
        err.contains(row.flag),
        "{case}: {err:?} does not name the flag"
    );
    assert_eq!(
        err.contains(&var),
        from_env,
        "{case}: {err:?} and the variable {var}"
    );
    assert!(
        err.contains(row.says),
        "{case}: {err:?} does not say {:?}",
        row.says
    );
    assert!(!err.contains(SECRET), "{case}: {err:?} shows the token");
}

#[test]
fn every_bad_value_of_every_flag_exits_2_naming_the_flag_and_its_variable() {
    for row in BAD_VALUES {
        let dir = tempfile::tempdir().unwrap();
        let base = base_args(row.sub, row.flag, dir.path());
        // --flag VALUE, --flag=VALUE, and the variable.
        let mut spaced = base.clone();
        spaced.extend([row.flag.to_owned(), row.value.to_owned()]);
        assert_flag_error(row, &spaced, &[], false);
        let mut joined = base.clone();
        joined.push(format!("{}={}", row.flag, row.value));
        assert_flag_error(row, &joined, &[], false);
        let var = boundary_log_proxy::cli::env_var_for(row.flag);
        assert_flag_error(row, &base, &[(&var, row.value)], true);
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "{} {} {:?}: something was created before the value was refused",
            row.sub,
            row.flag,
            row.value
        );
    }
    for row in BAD_SWITCH_VARIABLES {
        let dir = tempfile::tempdir().unwrap();
        let var = boundary_log_proxy::cli::env_var_for(row.flag);
        let base = base_args(row.sub, row.flag, dir.path());
        assert_flag_error(row, &base, &[(&var, row.value)], true);
    }
}

#[test]
fn every_flag_has_rows_in_the_bad_value_table() {
    use clap::CommandFactory as _;
    let cli = boundary_log_proxy::cli::Cli::command();
    let mut missing = Vec::new();
    for sub in cli.get_subcommands() {
        for arg in sub.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let flag = format!("--{long}");
            let covered = BAD_VALUES
                .iter()
                .chain(BAD_SWITCH_VARIABLES)
                .any(|row| row.sub == sub.get_name() && row.flag == flag)
                || NOTHING_TO_BE_BAD.contains(&flag.as_str());
            if !covered {
                missing.push(format!("{} {flag}", sub.get_name()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "add bad values for these flags to BAD_VALUES in tests/cli_flags.rs: {missing:?}"
    );
}

#[test]
fn a_token_of_visible_ascii_is_accepted_and_never_printed() {
    let config = print_config(
        &["--coderd", "http://127.0.0.1:3000"],
        &[("BOUNDARY_LOG_PROXY_AUTH_TOKEN", "s3cret-Tok.en_~!")],
    );
    assert_eq!(config["auth_token"], "<redacted>");
    assert!(!config.to_string().contains(SECRET));
}

#[test]
fn a_flag_given_twice_says_so() {
    for args in [
        &["--ring-capacity", "8", "--ring-capacity", "16"][..],
        &["serve", "--print-config", "--print-config"],
        &["loadgen", "--tag", "v1", "--tag=v2"],
    ] {
        let flag = args.iter().find(|a| a.starts_with("--")).unwrap();
        let flag = flag.split('=').next().unwrap();
        assert_usage_error(args, &[], &[flag], "given twice");
        let err = stderr(&proxy(args, &[]));
        assert!(!err.contains("cannot be used with"), "{args:?}: {err}");
    }
}

#[test]
fn an_unknown_flag_points_at_the_help_of_its_subcommand() {
    for (args, help) in [
        (&["--frobnicate"][..], "'boundary-log-proxy serve --help'"),
        (
            &["serve", "--frobnicate"],
            "'boundary-log-proxy serve --help'",
        ),
        (
            &["loadgen", "--frobnicate"],
            "'boundary-log-proxy loadgen --help'",
        ),
        (
            &["sink", "--listen", "127.0.0.1:1", "--frobnicate"],
            "'boundary-log-proxy sink --help'",
        ),
    ] {
        assert_usage_error(args, &[], &["--frobnicate"], help);
    }
}

#[test]
fn a_value_starting_with_a_dash_is_judged_by_its_flag_not_taken_for_a_flag() {
    assert_usage_error(
        &["--retry-max-elapsed", "-1s"],
        &[],
        &["--retry-max-elapsed", "'-1s'"],
        "negative duration",
    );
    // A dash-led value the flag would take is shown how to pass.
    assert_usage_error(
        &["--socket", "-weird"],
        &[],
        &["--socket"],
        "--socket=-weird",
    );
}

#[test]
fn serve_help_lists_every_serve_flag_including_print_config() {
    let output = proxy(&["serve", "--help"], &[]);
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--print-config",
        "--socket",
        "--auth-token",
        "--shutdown-timeout",
    ] {
        assert!(help.contains(flag), "serve --help lacks {flag}:\n{help}");
    }
    let top = String::from_utf8_lossy(&proxy(&["--help"], &[]).stdout).into_owned();
    assert!(
        top.contains("boundary-log-proxy serve --help"),
        "the top-level help lists no flags, so it says where they are:\n{top}"
    );
    let loadgen = String::from_utf8_lossy(&proxy(&["loadgen", "--help"], &[]).stdout).into_owned();
    assert!(loadgen.contains("--wait-for-socket"), "{loadgen}");
}

#[test]
fn print_config_into_a_closed_pipe_exits_quietly_instead_of_panicking() {
    // `serve --print-config | head -1`: the reader goes away before the JSON is written.
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let output = command()
        .args(["serve", "--print-config"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("running the binary");
    let err = stderr(&output);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(output.status.code(), Some(0), "{err}");
}

/// The binary's own variables and the `CODER_AGENT_*` ones coder's agent sets in a
/// workspace (`CODER_AGENT_URL` alone switches `serve` to the coder transport).
fn is_proxy_variable(name: &str) -> bool {
    name.starts_with("BOUNDARY_LOG_PROXY_") || name.starts_with("CODER_AGENT_")
}

#[test]
fn loadgen_logs_per_frame_too_many_for_one_frame_is_a_flag_error() {
    for logs in ["160", "100000"] {
        let output = proxy_bounded(
            &[
                "loadgen",
                "--socket",
                "/tmp/never-a-proxy.sock",
                "--wait-for-socket",
                "0s",
                "--logs-per-frame",
                logs,
            ],
            &[],
        );
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{logs}: {err}");
        assert_eq!(err.lines().count(), 1, "{logs}: not one line:\n{err}");
        assert!(err.contains("--logs-per-frame"), "{err}");
        assert!(err.contains("32768"), "{err}");
    }
}

#[test]
fn every_command_prints_the_programs_name_and_version() {
    let expected = format!("boundary-log-proxy {}\n", env!("CARGO_PKG_VERSION"));
    for args in [
        &["--version"][..],
        &["serve", "--version"],
        &["sink", "--version"],
        &["loadgen", "--version"],
    ] {
        let output = proxy_bounded(args, &[]);
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            expected,
            "{args:?}"
        );
    }
}

#[test]
fn a_misspelt_variable_is_warned_of_by_name_and_a_right_one_is_not() {
    // A typo in an environment file would otherwise turn a setting off unseen
    // (`BOUNDARY_LOG_PROXY_SPOOLDIR`: no spool).
    let output = proxy(
        &["serve", "--print-config"],
        &[("BOUNDARY_LOG_PROXY_SPOOLDIR", "/var/lib/spool")],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(
        err.contains("WARN") && err.contains("BOUNDARY_LOG_PROXY_SPOOLDIR"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let output = proxy(
        &["serve", "--print-config"],
        &[("BOUNDARY_LOG_PROXY_SPOOL_DIR", spool.to_str().unwrap())],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(!stderr(&output).contains("WARN"), "{}", stderr(&output));
}

/// With `--log-format json` every line on stderr is a JSON object, the error a
/// failed start exits 1 with too (it was a plain `error: ...` line among them); and
/// no `--log-level` silences that error, in either format.
#[test]
fn a_failed_start_says_why_in_its_log_format_whatever_the_log_level() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("audit.sock");
    for (format, level) in [
        ("json", "info"),
        ("json", "off"),
        ("json", "warn,boundary_log_proxy=off"),
        ("text", "off"),
    ] {
        let output = proxy(
            &[
                "serve",
                "--socket",
                socket.to_str().unwrap(),
                "--log-format",
                format,
                "--log-level",
                level,
                "--metrics-addr",
                &addr,
            ],
            &[],
        );
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{format} {level}: {err}");
        let last = err.lines().last().expect("an error line");
        if format == "json" {
            for line in err.lines() {
                serde_json::from_str::<Value>(line)
                    .unwrap_or_else(|_| panic!("{level}: not JSON: {line}"));
            }
            let last: Value = serde_json::from_str(last).unwrap();
            assert_eq!(last["level"], "ERROR");
            let error = last["fields"]["error"].as_str().unwrap();
            assert!(error.contains(&addr), "{error}");
        } else {
            assert!(
                last.starts_with("error: ") && last.contains(&addr),
                "{last}"
            );
        }
    }
}
