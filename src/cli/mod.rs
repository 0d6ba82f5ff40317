//! The command line: clap definitions for `serve` (the default), `sink` and
//! `loadgen`, every flag also read from `BOUNDARY_LOG_PROXY_<FLAG>`, and clap's
//! errors turned into the one-line messages docs/command-line.md promises (see [`render`]).

mod coder;
mod render;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{ArgAction, Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use crate::config::{
    self, default_socket_path, AuthToken, CoderdEndpoint, Config, FrameTag, IoMode, ListenAddr,
    LoadgenArgs, LogFilter, LogFormat, LogSettings, SinkArgs, SinkKind, SinkProtocol, SpoolFsync,
};

/// Prefix of every flag's environment variable.
pub const ENV_PREFIX: &str = "BOUNDARY_LOG_PROXY_";

/// The binary's name, as clap and the messages show it.
const BIN: &str = "boundary-log-proxy";

/// `boundary-log-proxy`: carries boundary's audit logs to coderd.
#[derive(Debug, Parser)]
#[command(
    name = BIN,
    version,
    about,
    propagate_version = true,
    override_usage = "boundary-log-proxy [serve] [OPTIONS]\n       boundary-log-proxy <COMMAND> [OPTIONS]",
    after_help = "Each command's flags: boundary-log-proxy <COMMAND> --help (the proxy's: boundary-log-proxy serve --help).\n\
                  Every flag also reads BOUNDARY_LOG_PROXY_<FLAG> (e.g. BOUNDARY_LOG_PROXY_RING_CAPACITY); the flag wins."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Receive boundary's audit logs on a Unix socket and forward them (the default).
    Serve(Box<ServeArgs>),
    /// Stand in for coderd (gRPC, or coderd's own transport): print what arrives.
    Sink(SinkCmd),
    /// Act as boundary: write frames of audit logs to the proxy's socket.
    Loadgen(LoadgenCmd),
}

#[derive(Debug, Args)]
struct LogArgs {
    /// Format of this command's own logs on stderr.
    #[arg(
        long,
        env = "BOUNDARY_LOG_PROXY_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    log_format: LogFormat,
    /// Level of this command's own logs: error, warn, info, debug, trace, off, or a
    /// filter such as info,boundary_log_proxy=debug.
    #[arg(long, env = "BOUNDARY_LOG_PROXY_LOG_LEVEL", default_value = "info",
          value_parser = |s: &str| s.parse::<LogFilter>())]
    log_level: LogFilter,
}

impl From<LogArgs> for LogSettings {
    fn from(args: LogArgs) -> Self {
        Self {
            format: args.log_format,
            filter: args.log_level,
        }
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Unix socket boundary connects to [fallback: CODER_AGENT_BOUNDARY_LOG_PROXY_SOCKET_PATH, the variable boundary reads].
    #[arg(long, value_name = "PATH", env = "BOUNDARY_LOG_PROXY_SOCKET",
          default_value_os_t = default_socket_path(), value_parser = config::parse_socket_path)]
    socket: PathBuf,
    /// Permission bits of the socket file, in octal.
    #[arg(long, value_name = "OCTAL", env = "BOUNDARY_LOG_PROXY_SOCKET_MODE", default_value = "0600",
          value_parser = config::parse_socket_mode)]
    socket_mode: u32,
    /// A gRPC server implementing coder's Agent service: http://HOST:PORT (h2c) or
    /// unix:/path. Not coderd itself, which serves its Agent API over a websocket: for
    /// coderd use --coder-url.
    #[arg(long, value_name = "URL", env = "BOUNDARY_LOG_PROXY_CODERD",
          value_parser = |s: &str| s.parse::<CoderdEndpoint>())]
    coderd: Option<CoderdEndpoint>,
    /// Sent as the coder-session-token metadata on every call to --coderd.
    #[arg(long, value_name = "TOKEN", env = "BOUNDARY_LOG_PROXY_AUTH_TOKEN", hide_env_values = true,
          value_parser = |s: &str| config::parse_token("--auth-token", s))]
    auth_token: Option<String>,
    /// Embedded reporter used instead of coderd [default: stdout when neither --coderd nor
    /// --coder-url (or CODER_AGENT_URL) is given].
    #[arg(
        long,
        env = "BOUNDARY_LOG_PROXY_SINK",
        value_enum,
        conflicts_with = "coderd"
    )]
    sink: Option<SinkKind>,
    /// Serve /metrics and /healthz on this address [default: off].
    #[arg(long, value_name = "HOST:PORT", env = "BOUNDARY_LOG_PROXY_METRICS_ADDR",
          value_parser = config::parse_metrics_addr)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Socket reader: auto uses io_uring when the kernel allows it, else epoll.
    #[arg(long, env = "BOUNDARY_LOG_PROXY_IO", value_enum, default_value_t)]
    io: IoMode,
    /// Ring slots (one per received frame); a power of two >= 2.
    #[arg(long, value_name = "N", allow_negative_numbers = true, env = "BOUNDARY_LOG_PROXY_RING_CAPACITY", default_value = "4096",
          value_parser = config::parse_ring_capacity)]
    ring_capacity: usize,
    /// Most logs in one forwarded request.
    #[arg(long, value_name = "N", allow_negative_numbers = true, env = "BOUNDARY_LOG_PROXY_BATCH_MAX_LOGS", default_value = "1000",
          value_parser = |s: &str| config::parse_positive::<u32>("--batch-max-logs", s))]
    batch_max_logs: u32,
    /// Most encoded bytes in one forwarded request (below gRPC's 4 MiB limit).
    #[arg(long, value_name = "N", allow_negative_numbers = true, env = "BOUNDARY_LOG_PROXY_BATCH_MAX_BYTES", default_value = "1048576",
          value_parser = config::parse_batch_max_bytes)]
    batch_max_bytes: usize,
    /// How long to wait for more frames before sending a request that is not full.
    #[arg(long, value_name = "DURATION", env = "BOUNDARY_LOG_PROXY_BATCH_LINGER", default_value = "5ms",
          value_parser = |s: &str| config::parse_duration("--batch-linger", s))]
    batch_linger: Duration,
    /// How long a request is retried on transient errors before it is dropped; 0s drops at the first failure.
    #[arg(long, value_name = "DURATION", env = "BOUNDARY_LOG_PROXY_RETRY_MAX_ELAPSED", default_value = "30s",
          value_parser = |s: &str| config::parse_duration("--retry-max-elapsed", s))]
    retry_max_elapsed: Duration,
    /// Deadline of one ReportBoundaryLogs call.
    #[arg(long, value_name = "DURATION", env = "BOUNDARY_LOG_PROXY_CALL_TIMEOUT", default_value = "10s",
          value_parser = |s: &str| config::parse_positive_duration("--call-timeout", s))]
    call_timeout: Duration,
    /// Connections beyond this are accepted and closed at once.
    #[arg(long, value_name = "N", allow_negative_numbers = true, env = "BOUNDARY_LOG_PROXY_MAX_CONNECTIONS", default_value = "1024",
          value_parser = |s: &str| config::parse_positive::<usize>("--max-connections", s))]
    max_connections: usize,
    /// Serve only peers with this uid (repeatable, or comma-separated) [default: any peer].
    #[arg(long = "allow-uid", value_name = "UID", allow_negative_numbers = true, env = "BOUNDARY_LOG_PROXY_ALLOW_UID",
          value_delimiter = ',', value_parser = config::parse_uid)]
    allow_uid: Vec<u32>,
    /// On SIGTERM/SIGINT/SIGHUP, how long draining may take before what is unsent is counted as dropped.
    #[arg(long, value_name = "DURATION", env = "BOUNDARY_LOG_PROXY_SHUTDOWN_TIMEOUT", default_value = "5s",
          value_parser = |s: &str| config::parse_duration("--shutdown-timeout", s))]
    shutdown_timeout: Duration,
    /// Keep requests that cannot be delivered in this directory, and send them later [default: off].
    #[arg(long, value_name = "DIR", env = "BOUNDARY_LOG_PROXY_SPOOL_DIR",
          value_parser = |s: &str| config::parse_writable_dir("--spool-dir", s))]
    spool_dir: Option<PathBuf>,
    /// Most bytes the spool's files take; beyond it the ring holds what arrives (buffer_full when it overflows; spool_full at shutdown).
    #[arg(long, value_name = "N", allow_negative_numbers = true, env = "BOUNDARY_LOG_PROXY_SPOOL_MAX_BYTES", default_value = "268435456",
          value_parser = |s: &str| config::parse_positive::<u64>("--spool-max-bytes", s))]
    spool_max_bytes: u64,
    /// When spooled records are made durable: always (before they count as spooled) or interval (within 100 ms).
    #[arg(
        long,
        env = "BOUNDARY_LOG_PROXY_SPOOL_FSYNC",
        value_enum,
        default_value_t
    )]
    spool_fsync: SpoolFsync,
    #[command(flatten)]
    coder: coder::CoderArgs,
    #[command(flatten)]
    log: LogArgs,
    /// Print the effective settings as JSON (the token redacted) and exit.
    #[arg(long)]
    print_config: bool,
}

impl From<ServeArgs> for Config {
    fn from(args: ServeArgs) -> Self {
        let sink = match args.coderd {
            Some(_) => None,
            None => Some(args.sink.unwrap_or_default()),
        };
        Self {
            socket: args.socket,
            socket_mode: args.socket_mode,
            coderd: args.coderd,
            auth_token: args.auth_token.map(AuthToken::new),
            sink,
            metrics_addr: args.metrics_addr,
            io: args.io,
            ring_capacity: args.ring_capacity,
            batch_max_logs: args.batch_max_logs,
            batch_max_bytes: args.batch_max_bytes,
            batch_linger: args.batch_linger,
            retry_max_elapsed: args.retry_max_elapsed,
            call_timeout: args.call_timeout,
            max_connections: args.max_connections,
            allow_uids: args.allow_uid,
            shutdown_timeout: args.shutdown_timeout,
            log: args.log.into(),
            coder: None,
            spool_dir: args.spool_dir,
            spool_max_bytes: args.spool_max_bytes,
            spool_fsync: args.spool_fsync,
        }
    }
}

/// `loadgen`'s settings: the flags, then the socket boundary itself would use
/// (`CODER_AGENT_BOUNDARY_LOG_PROXY_SOCKET_PATH`) when `--socket` was not given, as
/// `serve` does: loadgen acts as boundary.
fn loadgen_args(
    cmd: LoadgenCmd,
    matches: Option<&clap::ArgMatches>,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<LoadgenArgs, config::ConfigError> {
    let socket_given = matches.is_some_and(|m| {
        matches!(
            m.value_source("socket"),
            Some(clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable)
        )
    });
    let mut args = LoadgenArgs::from(cmd);
    if !socket_given {
        if let Some(path) = coder::socket_from_coder(&env)? {
            args.socket = path;
        }
    }
    Ok(args)
}

/// `serve`'s settings: the flags, then the coder transport's fallbacks.
fn serve_config(
    mut args: ServeArgs,
    matches: Option<&clap::ArgMatches>,
) -> Result<Config, config::ConfigError> {
    let given = |id: &str| {
        matches.is_some_and(|m| {
            matches!(
                m.value_source(id),
                Some(
                    clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable
                )
            )
        })
    };
    let given = coder::Given {
        coderd: args.coderd.is_some(),
        sink: args.sink.is_some(),
        socket: given("socket"),
    };
    let coder_args = std::mem::replace(&mut args.coder, coder::CoderArgs::none());
    let mut config = Config::from(args);
    coder::apply(&mut config, coder_args, given, |name| {
        std::env::var_os(name)
    })?;
    // The gRPC destination's token would be silently unused without that destination.
    if config.auth_token.is_some() && config.coderd.is_none() {
        return Err(config::ConfigError::Requires {
            setting: "--auth-token",
            requires: "--coderd",
            why: match config.coder {
                Some(_) => "the coder transport sends the agent token (--agent-token) instead",
                None => "it is the token of the gRPC destination, which is not in use",
            },
        });
    }
    Ok(config)
}

#[derive(Debug, Args)]
struct SinkCmd {
    /// Where to listen: HOST:PORT or unix:/path (gRPC without TLS); HOST:PORT only with
    /// --protocol coder (HTTP/1.1).
    #[arg(long, value_name = "ADDR", env = "BOUNDARY_LOG_PROXY_LISTEN",
          value_parser = |s: &str| s.parse::<ListenAddr>())]
    listen: ListenAddr,
    /// Print only a periodic count instead of every log.
    #[arg(long, env = "BOUNDARY_LOG_PROXY_QUIET", action = ArgAction::SetTrue,
          value_parser = parse_bool)]
    quiet: bool,
    #[command(flatten)]
    log: LogArgs,
    /// What to serve: grpc (as --coderd speaks it) or coder (coderd's websocket + yamux +
    /// DRPC transport, as --coder-url speaks it).
    #[arg(long, env = "BOUNDARY_LOG_PROXY_PROTOCOL", value_enum, default_value_t)]
    protocol: SinkProtocol,
    /// With --protocol coder: accept only this session token; others get coderd's 401
    /// [default: any token].
    #[arg(long, value_name = "TOKEN", env = "BOUNDARY_LOG_PROXY_TOKEN", hide_env_values = true,
          value_parser = |s: &str| config::parse_token("--token", s))]
    token: Option<String>,
    /// With --protocol coder: the version /api/v2/buildinfo reports (to try the proxy's
    /// version gate).
    #[arg(long, value_name = "VERSION", env = "BOUNDARY_LOG_PROXY_CODER_VERSION", hide = true,
          value_parser = crate::sink::coder::parse_version)]
    coder_version: Option<String>,
}

#[derive(Debug, Args)]
struct LoadgenCmd {
    /// The proxy's socket [fallback: CODER_AGENT_BOUNDARY_LOG_PROXY_SOCKET_PATH, as serve].
    #[arg(long, value_name = "PATH", env = "BOUNDARY_LOG_PROXY_SOCKET",
          default_value_os_t = default_socket_path(), value_parser = config::parse_socket_path)]
    socket: PathBuf,
    /// Concurrent connections.
    #[arg(long, value_name = "N", allow_negative_numbers = true, env = "BOUNDARY_LOG_PROXY_CONNECTIONS", default_value = "1",
          value_parser = |s: &str| config::parse_positive::<u32>("--connections", s))]
    connections: u32,
    /// Frames each connection sends.
    #[arg(long, value_name = "M", allow_negative_numbers = true, env = "BOUNDARY_LOG_PROXY_FRAMES", default_value = "10000",
          value_parser = |s: &str| config::parse_count("--frames", s))]
    frames: u64,
    /// Logs in each frame.
    #[arg(long, value_name = "K", allow_negative_numbers = true, env = "BOUNDARY_LOG_PROXY_LOGS_PER_FRAME", default_value = "10",
          value_parser = |s: &str| config::parse_positive::<u32>("--logs-per-frame", s))]
    logs_per_frame: u32,
    /// Frames per second across all connections [default: as fast as possible].
    #[arg(long, value_name = "FRAMES_PER_S", allow_negative_numbers = true, env = "BOUNDARY_LOG_PROXY_RATE",
          value_parser = config::parse_rate)]
    rate: Option<u64>,
    /// Frame tag to write.
    #[arg(long, env = "BOUNDARY_LOG_PROXY_TAG", value_enum, default_value_t)]
    tag: FrameTag,
    /// How long to wait for the proxy to listen on the socket before giving up; 0s tries once.
    #[arg(long, value_name = "DURATION", env = "BOUNDARY_LOG_PROXY_WAIT_FOR_SOCKET", default_value = "10s",
          value_parser = |s: &str| config::parse_duration("--wait-for-socket", s))]
    wait_for_socket: Duration,
    #[command(flatten)]
    log: LogArgs,
}

impl From<SinkCmd> for SinkArgs {
    fn from(cmd: SinkCmd) -> Self {
        Self {
            listen: cmd.listen,
            quiet: cmd.quiet,
            log: cmd.log.into(),
            protocol: cmd.protocol,
            token: cmd.token.map(AuthToken::new),
            coder_version: cmd.coder_version,
        }
    }
}

impl From<LoadgenCmd> for LoadgenArgs {
    fn from(cmd: LoadgenCmd) -> Self {
        Self {
            socket: cmd.socket,
            connections: cmd.connections,
            frames: cmd.frames,
            logs_per_frame: cmd.logs_per_frame,
            rate: cmd.rate,
            tag: cmd.tag,
            wait_for_socket: cmd.wait_for_socket,
            log: cmd.log.into(),
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// Run the proxy.
    Serve(Config),
    /// Print the effective configuration (`serve --print-config`) and exit 0.
    PrintConfig(Config),
    /// Run the stand-in gRPC server.
    Sink(SinkArgs),
    /// Generate load.
    Loadgen(LoadgenArgs),
}

impl Invocation {
    /// The checks made once every value is parsed ([`Config::validate`] for `serve`).
    fn validate(&self) -> Result<(), config::ConfigError> {
        match self {
            Self::Serve(config) | Self::PrintConfig(config) => config.validate(),
            Self::Sink(args) => args.validate(),
            Self::Loadgen(_) => Ok(()),
        }
    }

    /// The credentials whichever command runs was given, which its logs must never
    /// show: `serve`'s `--auth-token` and agent token, the `sink`'s `--token`.
    pub fn secrets(&self) -> Vec<&str> {
        let tokens = match self {
            Self::Serve(config) | Self::PrintConfig(config) => vec![
                config.auth_token.as_ref(),
                config.coder.as_ref().map(|coder| &coder.token),
            ],
            Self::Sink(args) => vec![args.token.as_ref()],
            Self::Loadgen(_) => Vec::new(),
        };
        tokens
            .into_iter()
            .flatten()
            .map(AuthToken::expose)
            .collect()
    }

    /// The logging settings of whichever command runs.
    pub fn log_settings(&self) -> &LogSettings {
        match self {
            Self::Serve(config) | Self::PrintConfig(config) => &config.log,
            Self::Sink(args) => &args.log,
            Self::Loadgen(args) => &args.log,
        }
    }
}

/// Parsing stopped: help or version was asked for, or a flag was wrong.
#[derive(Debug)]
pub enum CliExit {
    /// `--help` / `--version`: print as clap renders it, exit 0.
    Info(clap::Error),
    /// A usage error: print this one line on stderr, exit 2.
    Usage(String),
}

impl CliExit {
    /// Prints the message where it belongs and returns the exit status.
    pub fn report(self) -> ExitCode {
        match self {
            Self::Info(info) => {
                let _ = info.print();
                ExitCode::SUCCESS
            }
            Self::Usage(line) => {
                eprintln!("{line}");
                ExitCode::from(2)
            }
        }
    }
}

/// Parses the process's arguments (and the `BOUNDARY_LOG_PROXY_*` environment).
pub fn parse_env() -> Result<Invocation, CliExit> {
    parse_from(std::env::args_os())
}

/// Parses `args` (the first is the program name). With no subcommand, `serve` runs.
pub fn parse_from<I, T>(args: I) -> Result<Invocation, CliExit>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let args = with_default_subcommand(args.into_iter().map(Into::into).collect());
    // `serve --version` says the program's name, not clap's `boundary-log-proxy-serve`.
    let parsed = Cli::command()
        .mut_subcommands(|sub| sub.display_name(BIN))
        .try_get_matches_from(&args)
        .and_then(|matches| Cli::from_arg_matches(&matches).map(|cli| (cli, matches)));
    match parsed {
        Ok((cli, matches)) => {
            let usage =
                |error: config::ConfigError| CliExit::Usage(render::config_error(&error, &args));
            let serve_matches = matches.subcommand_matches("serve");
            let invocation = match cli.command {
                Command::Serve(serve) if serve.print_config => {
                    Invocation::PrintConfig(serve_config(*serve, serve_matches).map_err(usage)?)
                }
                Command::Serve(serve) => {
                    Invocation::Serve(serve_config(*serve, serve_matches).map_err(usage)?)
                }
                Command::Sink(sink) => Invocation::Sink(sink.into()),
                Command::Loadgen(loadgen) => Invocation::Loadgen(
                    loadgen_args(loadgen, matches.subcommand_matches("loadgen"), |name| {
                        std::env::var_os(name)
                    })
                    .map_err(usage)?,
                ),
            };
            // Checks that need more than one value, or the whole settings, are flag
            // errors too: they exit 2 naming the flag (and its variable) like the rest.
            invocation
                .validate()
                .map_err(|error| CliExit::Usage(render::config_error(&error, &args)))?;
            Ok(invocation)
        }
        Err(error)
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) =>
        {
            Err(CliExit::Info(error))
        }
        Err(error) => Err(CliExit::Usage(render::one_line(&error, &args))),
    }
}

/// Variables the start script in `deploy/coder-workspace/` reads for itself; the
/// proxy may inherit them.
const SCRIPT_VARIABLES: [&str; 2] = ["BOUNDARY_LOG_PROXY_BIN", "BOUNDARY_LOG_PROXY_DIR"];

/// Of the variable names `names`, those starting `BOUNDARY_LOG_PROXY_` that no
/// setting of any subcommand reads, sorted: most likely misspelt settings, which
/// would otherwise be ignored without a word.
pub fn unknown_variables<I>(names: I) -> Vec<String>
where
    I: IntoIterator<Item = OsString>,
{
    fn known(command: &clap::Command, out: &mut Vec<String>) {
        for arg in command.get_arguments() {
            if let Some(env) = arg.get_env().and_then(|e| e.to_str()) {
                out.push(env.to_owned());
            }
        }
        for sub in command.get_subcommands() {
            known(sub, out);
        }
    }
    let mut names_known: Vec<String> = SCRIPT_VARIABLES.map(str::to_owned).into();
    names_known.push(crate::reader::FORCE_URING_ERRNO_ENV.to_owned());
    known(&Cli::command(), &mut names_known);
    let mut unknown: Vec<String> = names
        .into_iter()
        .filter_map(|name| name.into_string().ok())
        .filter(|name| name.starts_with("BOUNDARY_LOG_PROXY_") && !names_known.contains(name))
        .collect();
    unknown.sort();
    unknown
}

/// Inserts `serve` when the first argument is not a subcommand (or help/version).
fn with_default_subcommand(mut args: Vec<OsString>) -> Vec<OsString> {
    let first = args.get(1).and_then(|a| a.to_str());
    let insert = match first {
        None => true,
        Some("-h" | "--help" | "-V" | "--version") => false,
        Some(flag) => flag.starts_with('-'),
    };
    if insert {
        let at = args.len().min(1);
        args.insert(at, OsString::from("serve"));
    }
    args
}

/// A switch's value from its variable: the spellings clap's boolish parser takes
/// (`true`/`false`, `yes`/`no`, `on`/`off`, `1`/`0`, `y`/`n`, `t`/`f`, any case), with
/// them named in the error.
fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" | "y" | "t" => Ok(true),
        "false" | "no" | "off" | "0" | "n" | "f" => Ok(false),
        _ => Err("expected true or false (or yes/no, on/off, 1/0, y/n, t/f)".to_owned()),
    }
}

/// `BOUNDARY_LOG_PROXY_RING_CAPACITY` for `--ring-capacity`.
pub fn env_var_for(flag: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        flag.trim_start_matches('-')
            .replace('-', "_")
            .to_uppercase()
    )
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Invocation, CliExit> {
        parse_from(std::iter::once(BIN).chain(args.iter().copied()))
    }

    fn usage(args: &[&str]) -> String {
        match parse(args) {
            Err(CliExit::Usage(line)) => line,
            other => panic!("{args:?} parsed: {other:?}"),
        }
    }

    fn serve(args: &[&str]) -> Config {
        match parse(args) {
            Ok(Invocation::Serve(config)) => config,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_reads_its_boundary_log_proxy_env_var() {
        let cli = Cli::command();
        let mut checked = 0;
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if matches!(long, "help" | "version" | "print-config") {
                    continue;
                }
                let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
                assert_eq!(
                    env.as_deref(),
                    Some(env_var_for(long).as_str()),
                    "{} --{long}",
                    sub.get_name()
                );
                checked += 1;
            }
        }
        assert!(checked >= 25, "only {checked} flags checked");
    }

    #[test]
    fn a_misspelt_variable_is_named_and_every_setting_variable_is_known() {
        let names = [
            "BOUNDARY_LOG_PROXY_SPOOLDIR",
            "BOUNDARY_LOG_PROXY_SPOOL_DIR",
            "BOUNDARY_LOG_PROXY_SOCKET",
            "BOUNDARY_LOG_PROXY_QUIET",
            "BOUNDARY_LOG_PROXY_BIN",
            "BOUNDARY_LOG_PROXY_TEST_FORCE_URING_ERRNO",
            "BOUNDARY_LOG_PROXY_METRICS_ADRR",
            "CODER_AGENT_TOKEN",
            "HOME",
        ]
        .map(OsString::from);
        assert_eq!(
            unknown_variables(names),
            [
                "BOUNDARY_LOG_PROXY_METRICS_ADRR",
                "BOUNDARY_LOG_PROXY_SPOOLDIR"
            ]
        );
    }

    #[test]
    fn no_arguments_runs_serve_with_the_documented_defaults() {
        // The test process may not set BOUNDARY_LOG_PROXY_* (the cli_* tests control env);
        // in a Coder workspace the agent's variables choose other settings on purpose.
        let from_coder = [
            coder::CODER_AGENT_URL,
            coder::CODER_AGENT_BOUNDARY_LOG_PROXY_SOCKET_PATH,
        ]
        .into_iter()
        .find(|name| std::env::var_os(name).is_some());
        if let Some(name) = from_coder {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED no_arguments_runs_serve_with_the_documented_defaults: {name} is set (a Coder workspace); the binary's tests check the defaults without it"
            );
            return;
        }
        assert_eq!(serve(&[]), Config::default());
        assert_eq!(serve(&["serve"]), Config::default());
    }

    #[test]
    fn serve_flags_without_the_subcommand_name_still_serve() {
        let config = serve(&["--ring-capacity", "8", "--socket-mode=0o640"]);
        assert_eq!(config.ring_capacity, 8);
        assert_eq!(config.socket_mode, 0o640);
    }

    #[test]
    fn coderd_disables_the_sink_and_carries_the_token() {
        let config = serve(&["--coderd", "unix:/run/c.sock", "--auth-token", "t"]);
        assert_eq!(config.sink, None);
        assert_eq!(config.auth_token.unwrap().expose(), "t");
        let config = serve(&["--sink", "null"]);
        assert_eq!(config.sink, Some(SinkKind::Null));
    }

    #[test]
    fn allow_uid_repeats_and_splits_on_commas() {
        let config = serve(&["--allow-uid", "1000", "--allow-uid=1001,1002"]);
        assert_eq!(config.allow_uids, [1000, 1001, 1002]);
    }

    #[test]
    fn invalid_values_render_as_one_line_naming_flag_and_what_it_takes() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--ring-capacity", "3"],
                "error: invalid value '3' for --ring-capacity: a power of two >= 2 (at most 16777216)",
            ),
            (
                &["--io", "kqueue"],
                "error: invalid value 'kqueue' for --io: one of auto, uring, epoll",
            ),
            (
                &["--batch-linger", "5"],
                "error: invalid value '5' for --batch-linger: a duration with a unit, such as 0s, 250ms, 5s or 2m, at most 365d",
            ),
            (
                &["--ring-capacity"],
                "error: --ring-capacity needs a value: a power of two >= 2 (at most 16777216)",
            ),
            (
                &["--io"],
                "error: --io needs a value: one of auto, uring, epoll",
            ),
            (
                &["--sink", "null", "--coderd", "unix:/x"],
                "error: --sink cannot be used with --coderd: forward to coderd or to an embedded sink, not both",
            ),
            (
                &["sink"],
                "error: missing required --listen <ADDR>: an address HOST:PORT such as 127.0.0.1:9090, or unix:/path (an absolute path)",
            ),
            (
                &["frobnicate"],
                "error: unknown subcommand 'frobnicate': one of serve, sink, loadgen",
            ),
        ];
        for (args, want) in cases {
            assert_eq!(usage(args), *want, "{args:?}");
        }
    }

    #[test]
    fn unknown_flags_suggest_the_close_one() {
        let line = usage(&["--ring-capacty", "8"]);
        assert!(
            line.starts_with("error: unknown argument '--ring-capacty'"),
            "{line}"
        );
        assert!(line.contains("--ring-capacity"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn help_and_version_are_info_not_usage_errors() {
        for args in [
            &["--help"][..],
            &["-V"],
            &["serve", "--help"],
            &["loadgen", "-h"],
        ] {
            assert!(matches!(parse(args), Err(CliExit::Info(_))), "{args:?}");
        }
    }

    #[test]
    fn loadgen_and_sink_convert_to_their_args() {
        let Ok(Invocation::Loadgen(args)) = parse(&[
            "loadgen",
            "--socket",
            "/tmp/s",
            "--connections",
            "4",
            "--frames",
            "100",
            "--logs-per-frame",
            "3",
            "--rate",
            "500",
            "--tag",
            "v1",
        ]) else {
            panic!("loadgen did not parse");
        };
        assert_eq!(
            (
                args.connections,
                args.frames,
                args.logs_per_frame,
                args.rate,
                args.tag
            ),
            (4, 100, 3, Some(500), FrameTag::V1)
        );
        let Ok(Invocation::Sink(sink)) = parse(&["sink", "--listen", "unix:/tmp/a", "--quiet"])
        else {
            panic!("sink did not parse");
        };
        assert_eq!(sink.listen, ListenAddr::Unix("/tmp/a".into()));
        assert!(sink.quiet);
    }
}
