//! The coder transport's flags (`--coder-url`, `--agent-token[-file]`, `--coder-ca-file`,
//! `--coder-allow-agent-role`) and the fallbacks to the variables coder's agent sets
//! (`CODER_AGENT_URL`, `CODER_AGENT_TOKEN[_FILE]`, `CODER_AGENT_BOUNDARY_LOG_PROXY_SOCKET_PATH`),
//! which clap cannot express (one variable per flag). See docs/command-line.md.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, Args};

use crate::config::coder::{
    parse_ca_file, read_token_file, CoderSettings, CoderUrl, NO_CODER_TOKEN,
};
use crate::config::{self, AuthToken, Config, ConfigError};

/// coder's agent exports these; they count after the proxy's own variables.
pub const CODER_AGENT_URL: &str = "CODER_AGENT_URL";
/// The agent token coder's agent was given.
pub const CODER_AGENT_TOKEN: &str = "CODER_AGENT_TOKEN";
/// A file holding it.
pub const CODER_AGENT_TOKEN_FILE: &str = "CODER_AGENT_TOKEN_FILE";
/// The socket boundary writes to.
pub const CODER_AGENT_BOUNDARY_LOG_PROXY_SOCKET_PATH: &str =
    "CODER_AGENT_BOUNDARY_LOG_PROXY_SOCKET_PATH";

#[derive(Debug, Args)]
pub(super) struct CoderArgs {
    /// coderd's base URL: forward over coder's Agent API (websocket + yamux + DRPC), as
    /// the workspace agent does [fallback: CODER_AGENT_URL, when neither --coderd nor --sink].
    #[arg(long, value_name = "URL", env = "BOUNDARY_LOG_PROXY_CODER_URL",
          conflicts_with_all = ["coderd", "sink"],
          value_parser = |s: &str| s.parse::<CoderUrl>())]
    coder_url: Option<CoderUrl>,
    /// The workspace agent's token, sent as Coder-Session-Token [fallback: CODER_AGENT_TOKEN].
    #[arg(long, value_name = "TOKEN", env = "BOUNDARY_LOG_PROXY_AGENT_TOKEN", hide_env_values = true,
          value_parser = |s: &str| config::parse_token("--agent-token", s))]
    agent_token: Option<String>,
    /// Read the agent token from this file, whitespace trimmed [fallback: CODER_AGENT_TOKEN_FILE].
    #[arg(long, value_name = "PATH", env = "BOUNDARY_LOG_PROXY_AGENT_TOKEN_FILE",
          conflicts_with = "agent_token",
          value_parser = |s: &str| read_token_file("--agent-token-file", s))]
    agent_token_file: Option<AuthToken>,
    /// Extra PEM root certificates to trust for an https:// --coder-url, besides the system's.
    #[arg(long, value_name = "PATH", env = "BOUNDARY_LOG_PROXY_CODER_CA_FILE",
          value_parser = |s: &str| parse_ca_file("--coder-ca-file", s))]
    coder_ca_file: Option<PathBuf>,
    /// Connect to a coderd older than v2.31.0 anyway (it then takes the proxy for the agent itself).
    #[arg(long, env = "BOUNDARY_LOG_PROXY_CODER_ALLOW_AGENT_ROLE", action = ArgAction::SetTrue,
          value_parser = super::parse_bool)]
    coder_allow_agent_role: bool,
}

impl CoderArgs {
    /// No coder flag given.
    pub(super) fn none() -> Self {
        Self {
            coder_url: None,
            agent_token: None,
            agent_token_file: None,
            coder_ca_file: None,
            coder_allow_agent_role: false,
        }
    }
}

/// What else decides the coder settings: whether the other destinations or `--socket` were
/// given (on the command line or through their `BOUNDARY_LOG_PROXY_*` variable).
pub(super) struct Given {
    pub(super) coderd: bool,
    pub(super) sink: bool,
    pub(super) socket: bool,
}

/// Fills `config.coder` (and the socket fallback) from the flags and, after them, coder's
/// agent variables as read by `env`.
pub(super) fn apply(
    config: &mut Config,
    mut args: CoderArgs,
    given: Given,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<(), ConfigError> {
    if !given.socket {
        if let Some(path) = socket_from_coder(&env)? {
            config.socket = path;
        }
    }
    let (url, url_setting) = match args.coder_url.take() {
        Some(url) => (url, "--coder-url"),
        None if !given.coderd && !given.sink => {
            match text(env(CODER_AGENT_URL), CODER_URL_FROM_CODER)? {
                Some(url) => (
                    url.parse().map_err(|e| rename(e, CODER_URL_FROM_CODER))?,
                    CODER_URL_FROM_CODER,
                ),
                None => return refuse_unused_coder_settings(&args),
            }
        }
        None => return refuse_unused_coder_settings(&args),
    };
    if args.coder_ca_file.is_some() && !url.tls() {
        return Err(ConfigError::Requires {
            setting: "--coder-ca-file",
            requires: "an https:// coderd URL",
            why: "a plain http:// connection uses no certificate",
        });
    }
    let token = match (args.agent_token, args.agent_token_file) {
        (Some(token), _) => AuthToken::new(token),
        (None, Some(token)) => token,
        (None, None) => match (
            secret_text(env(CODER_AGENT_TOKEN), TOKEN_FROM_CODER)?,
            text(env(CODER_AGENT_TOKEN_FILE), TOKEN_FILE_FROM_CODER)?,
        ) {
            (Some(token), _) => {
                config::check_token(TOKEN_FROM_CODER, &token)?;
                AuthToken::new(token)
            }
            (None, Some(path)) => read_token_file(TOKEN_FILE_FROM_CODER, &path)?,
            (None, None) => {
                return Err(ConfigError::Requires {
                    setting: url_setting,
                    requires: "an agent token",
                    why: NO_CODER_TOKEN,
                })
            }
        },
    };
    config.sink = None;
    config.coder = Some(CoderSettings {
        url,
        token,
        ca_file: args.coder_ca_file,
        allow_agent_role: args.coder_allow_agent_role,
    });
    Ok(())
}

/// Without the coder transport, a coder transport setting given (as a flag or its
/// `BOUNDARY_LOG_PROXY_*` variable) would be silently unused: a flag error naming it.
/// coder's agent variables are only fallbacks and are not looked at here.
fn refuse_unused_coder_settings(args: &CoderArgs) -> Result<(), ConfigError> {
    let given = [
        ("--agent-token", args.agent_token.is_some()),
        ("--agent-token-file", args.agent_token_file.is_some()),
        ("--coder-ca-file", args.coder_ca_file.is_some()),
        ("--coder-allow-agent-role", args.coder_allow_agent_role),
    ];
    match given.into_iter().find(|(_, given)| *given) {
        Some((setting, _)) => Err(ConfigError::Requires {
            setting,
            requires: "--coder-url",
            why: "it is a setting of the coder transport, which is not in use",
        }),
        None => Ok(()),
    }
}

/// The socket path boundary itself reads (`CODER_AGENT_BOUNDARY_LOG_PROXY_SOCKET_PATH`),
/// if set; a bad one is a flag error naming `--socket` and the variable.
pub(super) fn socket_from_coder(
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Option<std::path::PathBuf>, ConfigError> {
    text(
        env(CODER_AGENT_BOUNDARY_LOG_PROXY_SOCKET_PATH),
        SOCKET_FROM_CODER,
    )?
    .map(|path| config::parse_socket_path(&path).map_err(|e| rename(e, SOCKET_FROM_CODER)))
    .transpose()
}

/// What the proxy says a variable's value must be when it is not text.
const NOT_TEXT: &str = "UTF-8 text";

/// One of coder's variables as text. Set to bytes that are not UTF-8 it must not
/// read as unset: the proxy would then quietly not use it (print logs instead of
/// forwarding them to coderd, or make its socket where boundary does not look).
/// A flag error naming it (exit 2) instead.
fn text(value: Option<OsString>, setting: &'static str) -> Result<Option<String>, ConfigError> {
    value
        .map(|value| {
            value.into_string().map_err(|value| ConfigError::Invalid {
                setting,
                value: value.to_string_lossy().into_owned(),
                takes: NOT_TEXT,
            })
        })
        .transpose()
}

/// [`text`] for a secret: the error does not show the value.
fn secret_text(
    value: Option<OsString>,
    setting: &'static str,
) -> Result<Option<String>, ConfigError> {
    text(value, setting).map_err(|_| ConfigError::Secret {
        setting,
        takes: NOT_TEXT,
        problem: "the variable holds other bytes".to_owned(),
    })
}

/// How an error names a value taken from one of coder's variables: the flag it stands
/// for, and the variable (a bad value exits 2 naming both).
const SOCKET_FROM_CODER: &str = "--socket (from CODER_AGENT_BOUNDARY_LOG_PROXY_SOCKET_PATH)";
const CODER_URL_FROM_CODER: &str = "--coder-url (from CODER_AGENT_URL)";
const TOKEN_FROM_CODER: &str = "--agent-token (from CODER_AGENT_TOKEN)";
const TOKEN_FILE_FROM_CODER: &str = "--agent-token-file (from CODER_AGENT_TOKEN_FILE)";

/// The same error, naming the flag and the variable the value came from.
fn rename(error: ConfigError, variable: &'static str) -> ConfigError {
    match error {
        ConfigError::Invalid { value, takes, .. } => ConfigError::Invalid {
            setting: variable,
            value,
            takes,
        },
        ConfigError::Unusable {
            value,
            takes,
            problem,
            ..
        } => ConfigError::Unusable {
            setting: variable,
            value,
            takes,
            problem,
        },
        ConfigError::Secret { takes, problem, .. } => ConfigError::Secret {
            setting: variable,
            takes,
            problem,
        },
        ConfigError::Requires { requires, why, .. } => ConfigError::Requires {
            setting: variable,
            requires,
            why,
        },
    }
}
