//! The `boundary-log-proxy` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use boundary_log_proxy::cli::{self, Invocation};
use boundary_log_proxy::{app, logging};

fn main() -> ExitCode {
    boundary_log_proxy::malloc::tune();
    let invocation = match cli::parse_env() {
        Ok(invocation) => invocation,
        Err(exit) => return exit.report(),
    };
    if let Err(error) = logging::init(invocation.log_settings()) {
        eprintln!("error: {error}");
        return ExitCode::FAILURE;
    }
    let result = match invocation {
        Invocation::PrintConfig(config) => {
            println!("{:#}", config.to_json());
            Ok(())
        }
        Invocation::Serve(config) => app::serve(config),
        Invocation::Sink(args) => app::sink(args),
        Invocation::Loadgen(args) => app::loadgen(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
