//! The coder transport's flags on the real binary (docs/command-line.md): `--coder-url`
//! with its token, exactly one destination, and the fallbacks to the variables coder's
//! agent sets (`CODER_AGENT_URL`, `CODER_AGENT_TOKEN[_FILE]`,
//! `CODER_AGENT_BOUNDARY_LOG_PROXY_SOCKET_PATH`) after the proxy's own.

use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_boundary-log-proxy");

/// The binary with neither `BOUNDARY_LOG_PROXY_*` nor `CODER_AGENT_*` inherited.
fn command() -> Command {
    let mut command = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("BOUNDARY_LOG_PROXY_") || key_text.starts_with("CODER_AGENT_") {
            command.env_remove(key);
        }
    }
    command
}

/// [`command`] run to completion with `args` and `env`.
fn proxy(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = command();
    command.args(args).envs(env.iter().copied());
    command.output().expect("running the binary")
}

fn print_config(args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut all = vec!["serve", "--print-config"];
    all.extend_from_slice(args);
    let output = proxy(&all, env);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{all:?} {env:?}: {stderr}");
    serde_json::from_slice(&output.stdout).expect("print-config prints JSON")
}

#[track_caller]
fn assert_flag_error(args: &[&str], env: &[(&str, &str)], names: &[&str]) {
    let mut all = vec!["serve"];
    all.extend_from_slice(args);
    let output = proxy(&all, env);
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: not one line:\n{err}");
    for name in names {
        assert!(
            err.contains(name),
            "{args:?} {env:?}: {err:?} does not name {name}"
        );
    }
}

#[test]
fn coder_url_with_a_token_selects_the_coder_transport_and_redacts_the_token() {
    let config = print_config(
        &[
            "--coder-url",
            "https://coder.example.com",
            "--agent-token",
            "s3cret",
        ],
        &[],
    );
    assert_eq!(config["coder"]["url"], "https://coder.example.com");
    assert_eq!(config["coder"]["agent_token"], "<redacted>");
    assert_eq!(config["coder"]["allow_agent_role"], false);
    assert_eq!(config["sink"], Value::Null);
    assert_eq!(config["coderd"], Value::Null);
    assert!(!config.to_string().contains("s3cret"));
}

#[test]
fn coder_url_without_any_token_is_a_flag_error() {
    assert_flag_error(
        &["--coder-url", "http://127.0.0.1:3000"],
        &[],
        &["--coder-url", "needs an agent token"],
    );
    assert_flag_error(
        &[],
        &[("CODER_AGENT_URL", "http://127.0.0.1:3000")],
        &["--coder-url (from CODER_AGENT_URL)", "needs an agent token"],
    );
}

#[test]
fn a_missing_token_does_not_call_a_good_url_invalid() {
    let output = proxy(&["serve", "--coder-url", "http://127.0.0.1:3000"], &[]);
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(!err.contains("invalid value"), "{err}");
}

#[test]
fn two_destinations_are_a_flag_error_from_flags_or_their_variables() {
    let token = ("BOUNDARY_LOG_PROXY_AGENT_TOKEN", "t");
    assert_flag_error(
        &[
            "--coder-url",
            "http://127.0.0.1:1",
            "--coderd",
            "http://127.0.0.1:2",
        ],
        &[token],
        &["--coder-url", "--coderd"],
    );
    assert_flag_error(
        &["--coder-url", "http://127.0.0.1:1", "--sink", "null"],
        &[token],
        &["--coder-url", "--sink"],
    );
    assert_flag_error(
        &["--sink", "null"],
        &[
            ("BOUNDARY_LOG_PROXY_CODER_URL", "http://127.0.0.1:1"),
            token,
        ],
        &["--coder-url", "--sink"],
    );
}

#[test]
fn coder_agent_url_and_token_count_only_when_no_other_destination_is_given() {
    let agent = [
        ("CODER_AGENT_URL", "http://127.0.0.1:3000"),
        ("CODER_AGENT_TOKEN", "t"),
    ];
    let config = print_config(&[], &agent);
    assert_eq!(config["coder"]["url"], "http://127.0.0.1:3000");
    assert_eq!(config["sink"], Value::Null);

    let config = print_config(&["--sink", "null"], &agent);
    assert_eq!(
        (config["coder"].clone(), config["sink"].clone()),
        (Value::Null, "null".into())
    );
    let config = print_config(&["--coderd", "http://127.0.0.1:9"], &agent);
    assert_eq!(config["coder"], Value::Null);

    // The proxy's own variable wins over coder's.
    let mut env = agent.to_vec();
    env.push(("BOUNDARY_LOG_PROXY_CODER_URL", "http://127.0.0.1:4000"));
    assert_eq!(
        print_config(&[], &env)["coder"]["url"],
        "http://127.0.0.1:4000"
    );
}

#[test]
fn a_bad_coder_agent_url_names_the_variable() {
    assert_flag_error(
        &[],
        &[
            ("CODER_AGENT_URL", "coder.example.com"),
            ("CODER_AGENT_TOKEN", "t"),
        ],
        &["CODER_AGENT_URL"],
    );
}

/// A coder variable set to bytes that are not UTF-8 is a flag error naming it, not a
/// variable read as unset: an unreadable CODER_AGENT_URL used to leave the proxy
/// printing logs instead of forwarding them to coderd, exit 0 and no word.
#[test]
fn a_coder_variable_that_is_not_utf8_is_a_flag_error_naming_it() {
    use std::os::unix::ffi::OsStrExt as _;
    let not_utf8 = std::ffi::OsStr::from_bytes(b"http://127.0.0.1:1/\xff");
    let good = [
        ("CODER_AGENT_URL", "http://127.0.0.1:4000"),
        ("CODER_AGENT_TOKEN", "t0ken-abcdefgh"),
    ];
    for variable in [
        "CODER_AGENT_URL",
        "CODER_AGENT_TOKEN",
        "CODER_AGENT_TOKEN_FILE",
        "CODER_AGENT_BOUNDARY_LOG_PROXY_SOCKET_PATH",
    ] {
        let mut command = command();
        for (key, value) in good.iter().filter(|(key, _)| *key != variable) {
            if !(variable == "CODER_AGENT_TOKEN_FILE" && *key == "CODER_AGENT_TOKEN") {
                command.env(key, value);
            }
        }
        let output = command
            .env(variable, not_utf8)
            .args(["serve", "--print-config"])
            .output()
            .expect("running the binary");
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{variable}: {err}");
        assert!(err.contains(variable), "{variable}: {err}");
        assert!(err.contains("UTF-8"), "{variable}: {err}");
        assert!(
            output.stdout.is_empty(),
            "{variable}: no configuration printed"
        );
        if variable == "CODER_AGENT_TOKEN" {
            assert!(
                !err.contains("127.0.0.1:1/"),
                "a token is never shown: {err}"
            );
        }
    }
}

#[test]
fn token_files_are_read_trimmed_and_an_empty_one_names_its_flag_or_variable() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("token");
    std::fs::write(&good, "\n  t0ken \n").unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "  \n").unwrap();
    let (good, empty) = (good.to_str().unwrap(), empty.to_str().unwrap());
    let url = ["--coder-url", "http://127.0.0.1:1"];

    let config = print_config(&[&url[..], &["--agent-token-file", good]].concat(), &[]);
    assert_eq!(config["coder"]["agent_token"], "<redacted>");
    print_config(&url, &[("CODER_AGENT_TOKEN_FILE", good)]);

    assert_flag_error(
        &[&url[..], &["--agent-token-file", empty]].concat(),
        &[],
        &["--agent-token-file", "empty"],
    );
    assert_flag_error(
        &url,
        &[("CODER_AGENT_TOKEN_FILE", empty)],
        &["CODER_AGENT_TOKEN_FILE"],
    );
    assert_flag_error(
        &[
            &url[..],
            &["--agent-token", "t", "--agent-token-file", good],
        ]
        .concat(),
        &[],
        &["--agent-token-file", "--agent-token"],
    );
}

#[test]
fn a_ca_file_without_a_certificate_is_a_flag_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "no certificate here\n").unwrap();
    assert_flag_error(
        &[
            "--coder-url",
            "https://c.example",
            "--agent-token",
            "t",
            "--coder-ca-file",
            ca.to_str().unwrap(),
        ],
        &[],
        &["--coder-ca-file"],
    );
}

#[test]
fn the_socket_falls_back_to_the_variable_boundary_reads_after_the_proxys_own() {
    let boundary = (
        "CODER_AGENT_BOUNDARY_LOG_PROXY_SOCKET_PATH",
        "/tmp/from-boundary.sock",
    );
    assert_eq!(
        print_config(&[], &[boundary])["socket"],
        "/tmp/from-boundary.sock"
    );
    let own = ("BOUNDARY_LOG_PROXY_SOCKET", "/tmp/own.sock");
    assert_eq!(
        print_config(&[], &[boundary, own])["socket"],
        "/tmp/own.sock"
    );
    assert_eq!(
        print_config(&["--socket", "/tmp/flag.sock"], &[boundary])["socket"],
        "/tmp/flag.sock"
    );
}

#[test]
fn coder_urls_of_other_schemes_are_flag_errors() {
    assert_flag_error(
        &[
            "--coder-url",
            "ftp://coder.example.com",
            "--agent-token",
            "t",
        ],
        &[],
        &["--coder-url"],
    );
}

#[test]
fn loadgen_writes_to_the_socket_boundary_would_use_unless_told_otherwise() {
    // Nothing listens on any of these: the error names the path loadgen tried.
    let tried = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["loadgen", "--frames", "1", "--wait-for-socket", "0s"];
        all.extend_from_slice(args);
        let output = proxy(&all, env);
        assert!(!output.status.success(), "{args:?} {env:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let boundary = (
        "CODER_AGENT_BOUNDARY_LOG_PROXY_SOCKET_PATH",
        "/nonexistent/from-boundary.sock",
    );
    assert!(tried(&[], &[boundary]).contains("/nonexistent/from-boundary.sock"));
    let own = ("BOUNDARY_LOG_PROXY_SOCKET", "/nonexistent/own.sock");
    assert!(tried(&[], &[boundary, own]).contains("/nonexistent/own.sock"));
    assert!(tried(&["--socket", "/nonexistent/flag.sock"], &[boundary])
        .contains("/nonexistent/flag.sock"));
}

/// A PEM file in `dir` holding one (self-signed) certificate.
fn ca_file(dir: &std::path::Path) -> std::path::PathBuf {
    let ca = dir.join("ca.pem");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(&ca, certified.cert.pem()).unwrap();
    ca
}

// The tests below pass --print-config: without the check they fail at once instead of
// serving until killed.

#[test]
fn a_coder_transport_setting_without_the_coder_transport_is_a_flag_error() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t\n").unwrap();
    let ca = ca_file(dir.path());
    let grpc = ["--coderd", "http://127.0.0.1:3000"];
    for (flag, value) in [
        ("--agent-token", Some("t")),
        ("--agent-token-file", Some(token.to_str().unwrap())),
        ("--coder-ca-file", Some(ca.to_str().unwrap())),
        ("--coder-allow-agent-role", None),
    ] {
        let given: Vec<&str> = [flag].into_iter().chain(value).collect();
        // With the gRPC destination, the embedded sink, or no destination at all.
        for destination in [&grpc[..], &["--sink", "null"][..], &[][..]] {
            assert_flag_error(
                &[&["--print-config"][..], destination, &given[..]].concat(),
                &[],
                &[flag, "--coder-url"],
            );
        }
    }
    // The proxy's own variable counts as the flag.
    assert_flag_error(
        &["--print-config", grpc[0], grpc[1]],
        &[("BOUNDARY_LOG_PROXY_AGENT_TOKEN", "t")],
        &["--agent-token", "--coder-url"],
    );
    // The agent's own variables are only fallbacks: they are no error with --coderd.
    print_config(
        &grpc,
        &[
            ("CODER_AGENT_URL", "https://coder.example.com"),
            ("CODER_AGENT_TOKEN", "t"),
        ],
    );
}

#[test]
fn the_grpc_token_with_the_coder_transport_is_a_flag_error() {
    for (args, env) in [
        (
            &[
                "--print-config",
                "--coder-url",
                "https://c.example",
                "--agent-token",
                "a",
                "--auth-token",
                "b",
            ][..],
            &[][..],
        ),
        (
            &["--print-config", "--agent-token", "a", "--auth-token", "b"][..],
            &[("CODER_AGENT_URL", "https://c.example")][..],
        ),
    ] {
        assert_flag_error(args, env, &["--auth-token", "--coderd", "--agent-token"]);
    }
}

#[test]
fn a_ca_file_for_a_plain_http_coderd_is_a_flag_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file(dir.path());
    assert_flag_error(
        &[
            "--print-config",
            "--coder-url",
            "http://127.0.0.1:3000",
            "--agent-token",
            "t",
            "--coder-ca-file",
            ca.to_str().unwrap(),
        ],
        &[],
        &["--coder-ca-file", "https://"],
    );
}

#[test]
fn a_boolean_variable_that_is_not_one_names_the_spellings_it_takes() {
    let env = [
        ("BOUNDARY_LOG_PROXY_CODER_URL", "http://127.0.0.1:1"),
        ("BOUNDARY_LOG_PROXY_AGENT_TOKEN", "t"),
        ("BOUNDARY_LOG_PROXY_CODER_ALLOW_AGENT_ROLE", "maybe"),
    ];
    assert_flag_error(
        &["--print-config"],
        &env,
        &[
            "BOUNDARY_LOG_PROXY_CODER_ALLOW_AGENT_ROLE",
            "maybe",
            "true or false",
        ],
    );
    for (yes, no) in [("true", "false"), ("1", "0"), ("YES", "No"), ("on", "off")] {
        let role = |v| print_config(&[], &[env[0], env[1], (env[2].0, v)]);
        assert_eq!(role(yes)["coder"]["allow_agent_role"], true, "{yes}");
        assert_eq!(role(no)["coder"]["allow_agent_role"], false, "{no}");
    }
    // The sink's --quiet reads its variable the same way.
    let output = proxy(
        &["sink", "--listen", "127.0.0.1:1"],
        &[("BOUNDARY_LOG_PROXY_QUIET", "maybe")],
    );
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(err.contains("true or false"), "{err}");
}
