//! The `boundary-log-proxy` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use boundary_log_proxy::cli::{self, Invocation};
use boundary_log_proxy::{app, logging};

fn main() -> ExitCode {
    // SAFETY: the first thing main does: no other thread exists yet.
    unsafe { boundary_log_proxy::malloc::tune() };
    let invocation = match cli::parse_env() {
        Ok(invocation) => invocation,
        Err(exit) => return exit.report(),
    };
    // Held until main ends or writes its exit line: dropping it writes out the
    // buffered log lines.
    let log = match logging::init(invocation.log_settings(), &invocation.secrets()) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    if invocation
        .secrets()
        .iter()
        .any(|token| token.len() < logging::MIN_REDACTED_LEN)
    {
        tracing::warn!(
            "a token shorter than {} bytes is not cut out of the logs (it would match \
             ordinary words); it may appear in them at --log-level trace",
            logging::MIN_REDACTED_LEN
        );
    }
    for name in cli::unknown_variables(std::env::vars_os().map(|(name, _)| name)) {
        tracing::warn!(variable = %name, "ignoring an environment variable no setting reads (misspelt? --help names each setting's variable)");
    }
    let format = invocation.log_settings().format;
    let secrets: Vec<String> = invocation.secrets().iter().map(|s| s.to_string()).collect();
    let result = match invocation {
        Invocation::PrintConfig(config) => app::print_line(format_args!("{:#}", config.to_json())),
        Invocation::Serve(config) => app::serve(config),
        Invocation::Sink(args) => app::sink(args),
        Invocation::Loadgen(args) => app::loadgen(args),
    };
    let (error, code) = match result {
        Ok(()) => return ExitCode::SUCCESS,
        // A bad value is a flag error wherever it is found (the CLI checks first).
        Err(error @ app::AppError::Config(_)) => (error, ExitCode::from(2)),
        Err(error) => (error, ExitCode::FAILURE),
    };
    // After every buffered log line, and past any --log-level: a failed run always
    // says why, as a JSON line under --log-format json.
    drop(log);
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    eprintln!(
        "{}",
        logging::exit_line(format, &error.to_string(), &secrets)
    );
    code
}
