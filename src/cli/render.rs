//! Turns any clap error into the single line docs/command-line.md promises:
//! `error: invalid value 'x' for --flag: what it takes`.

use std::ffi::{OsStr, OsString};

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory as _, Parser as _};

use super::{env_var_for, Cli, BIN};
use crate::config::ConfigError;

fn context_str(error: &clap::Error, kind: ContextKind) -> Option<String> {
    match error.get(kind)? {
        ContextValue::String(s) => Some(s.clone()),
        ContextValue::Strings(v) => Some(v.join(", ")),
        ContextValue::StyledStr(s) => Some(s.to_string()),
        ContextValue::StyledStrs(v) => Some(
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ContextValue::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `--ring-capacity <N>` -> `--ring-capacity`.
fn flag_of(arg: &str) -> &str {
    arg.split([' ', '=']).next().unwrap_or(arg)
}

/// ` (from BOUNDARY_LOG_PROXY_X)` when the bad value came from the environment:
/// the flag is absent from the command line and its variable holds that value (or
/// a list containing it).
fn source_note(flag: &str, value: Option<&str>, args: &[OsString]) -> String {
    let on_command_line = args.iter().skip(1).any(|a| {
        a.to_str()
            .is_some_and(|a| a == flag || a.starts_with(&format!("{flag}=")))
    });
    let var = env_var_for(flag);
    // The variable may hold a list (`--allow-uid`'s `1000,root`): the bad value is a part.
    let from_env = !on_command_line
        && std::env::var_os(&var).is_some_and(|v| {
            value.is_none_or(|value| {
                v == OsStr::new(value) || v.to_str().is_some_and(|v| v.contains(value))
            })
        });
    if from_env {
        format!(" (from {var})")
    } else {
        String::new()
    }
}

/// The setting whose value is not UTF-8 (clap does not say which): the first such
/// word on the command line (`--flag=value`, or the value after `--flag`), else the
/// first flag of this subcommand whose variable holds such a value.
fn not_utf8_setting(args: &[OsString]) -> Option<String> {
    use std::os::unix::ffi::OsStrExt as _;
    let words: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    if let Some(at) = (1..words.len()).find(|&i| std::str::from_utf8(words[i]).is_err()) {
        let word = words[at];
        let flag = if word.starts_with(b"--") {
            word.split(|&b| b == b'=').next().unwrap_or(word)
        } else if at > 1 && words[at - 1].starts_with(b"--") {
            words[at - 1]
        } else {
            return Some(format!("argument {at}"));
        };
        return Some(String::from_utf8_lossy(flag).into_owned());
    }
    let cli = Cli::command();
    let sub = cli.find_subcommand(subcommand(args))?;
    let named = sub.get_arguments().find_map(|arg| {
        let var = arg.get_env()?;
        let value = std::env::var_os(var)?;
        value.to_str().is_none().then(|| {
            format!(
                "--{} (from {})",
                arg.get_long().unwrap_or_default(),
                var.to_string_lossy()
            )
        })
    });
    named
}

/// What a flag takes, found by running its own parser on an empty value.
fn takes_of(flag: &str) -> Option<String> {
    let long = flag.strip_prefix("--")?;
    let cli = Cli::command();
    let (sub, arg) = cli.get_subcommands().find_map(|sub| {
        let arg = sub
            .get_arguments()
            .find(|arg| arg.get_long() == Some(long))?;
        Some((sub.get_name(), arg))
    })?;
    let possible = arg.get_possible_values();
    if !possible.is_empty() {
        let names: Vec<_> = possible.iter().map(|p| p.get_name()).collect();
        return Some(format!("one of {}", names.join(", ")));
    }
    let from_parser = Cli::try_parse_from([BIN, sub, &format!("{flag}=")])
        .err()
        .filter(|error| {
            context_str(error, ContextKind::InvalidArg).is_some_and(|a| flag_of(&a) == flag)
        })
        .and_then(|error| config_error_of(&error).map(|e| e.takes().to_owned()));
    from_parser.or_else(|| {
        arg.get_value_names()
            .and_then(|names| names.first())
            .map(|name| name.to_string())
    })
}

fn config_error_of(error: &clap::Error) -> Option<&ConfigError> {
    std::error::Error::source(error)?.downcast_ref::<ConfigError>()
}

/// The subcommand whose flags were being parsed (`parse_from` has already put `serve`
/// in front of bare flags).
fn subcommand(args: &[OsString]) -> &str {
    args.get(1)
        .and_then(|a| a.to_str())
        .filter(|a| ["serve", "sink", "loadgen"].contains(a))
        .unwrap_or("serve")
}

/// Where the flags of the subcommand being parsed are listed.
fn help_hint(args: &[OsString]) -> String {
    format!("see '{BIN} {} --help'", subcommand(args))
}

/// `--retry-max-elapsed -1s`: clap takes `-1s` for short flags and reports `-1` as
/// unknown. When the unknown argument is the start of a word that follows a flag
/// taking a value, returns that flag and the word.
fn hyphen_value(unknown: &str, args: &[OsString]) -> Option<(String, String)> {
    if !unknown.starts_with('-') || unknown.starts_with("--") {
        return None;
    }
    let words: Vec<&str> = args.iter().map(|a| a.to_str()).collect::<Option<_>>()?;
    let at = (2..words.len()).find(|&i| {
        let word = words[i];
        word.starts_with(unknown) && !word.starts_with("--")
    })?;
    let long = words[at - 1]
        .strip_prefix("--")
        .filter(|f| !f.contains('='))?;
    let cli = Cli::command();
    let sub = cli.find_subcommand(subcommand(args))?;
    let arg = sub.get_arguments().find(|a| a.get_long() == Some(long))?;
    arg.get_action()
        .takes_values()
        .then(|| (format!("--{long}"), words[at].to_owned()))
}

/// The line for a flag whose value starts with `-`: the flag's own error for that
/// value, or how to give such a value when it is a valid one.
fn hyphen_value_line(flag: &str, value: &str, args: &[OsString]) -> String {
    let sub = subcommand(args);
    match Cli::try_parse_from([BIN, sub, &format!("{flag}={value}")]) {
        Err(error)
            if matches!(
                error.kind(),
                ErrorKind::ValueValidation | ErrorKind::InvalidValue
            ) =>
        {
            one_line(&error, args)
        }
        _ => format!(
            "error: {flag} needs a value: to give one that starts with '-', write {flag}={value}"
        ),
    }
}

/// Renders a check made after parsing ([`crate::config::Config::validate`]) as the
/// same one line a bad value gets, naming the variable when the value came from it.
pub(super) fn config_error(error: &ConfigError, args: &[OsString]) -> String {
    let value = match error {
        ConfigError::Invalid { value, .. } | ConfigError::Unusable { value, .. } => {
            Some(value.as_str())
        }
        ConfigError::Secret { .. } | ConfigError::Requires { .. } => None,
    };
    let note = source_note(error.setting(), value, args);
    let line = error.with_note(&note);
    // `--token needs --protocol coder`: also say where the other setting came from.
    let other = match error {
        ConfigError::Requires { requires, .. } => flag_of(requires),
        _ => "",
    };
    let other_note = if other.is_empty() {
        String::new()
    } else {
        source_note(other, None, args)
    };
    format!("error: {line}{other_note}")
}

/// Renders any clap error as the single line docs/command-line.md promises.
pub(super) fn one_line(error: &clap::Error, args: &[OsString]) -> String {
    let arg = context_str(error, ContextKind::InvalidArg).unwrap_or_default();
    let flag = flag_of(&arg);
    let value = context_str(error, ContextKind::InvalidValue);
    match error.kind() {
        ErrorKind::ValueValidation => {
            let value = value.unwrap_or_default();
            let note = source_note(flag, Some(&value), args);
            match config_error_of(error) {
                // The parser's own words; a secret's value is never repeated.
                Some(config_error) => format!("error: {}", config_error.with_note(&note)),
                None => {
                    let takes = std::error::Error::source(error)
                        .map(ToString::to_string)
                        .unwrap_or_else(|| "a valid value".to_owned());
                    format!("error: invalid value '{value}' for {flag}{note}: {takes}")
                }
            }
        }
        ErrorKind::InvalidValue => {
            let takes = match context_str(error, ContextKind::ValidValue) {
                Some(valid) if !valid.is_empty() => format!("one of {valid}"),
                _ => takes_of(flag).unwrap_or_else(|| "a value".to_owned()),
            };
            match value.filter(|v| !v.is_empty()) {
                Some(value) => {
                    let note = source_note(flag, Some(&value), args);
                    format!("error: invalid value '{value}' for {flag}{note}: {takes}")
                }
                None => {
                    // An empty variable is the usual way to get here without the flag.
                    let note = source_note(flag, Some(""), args);
                    format!("error: {flag}{note} needs a value: {takes}")
                }
            }
        }
        ErrorKind::ArgumentConflict => {
            let prior = context_str(error, ContextKind::PriorArg).unwrap_or_default();
            let prior = flag_of(&prior);
            if prior == flag {
                // clap reports a repeated flag as a conflict with itself.
                return format!("error: {flag} was given twice: give it once");
            }
            let why = if [flag, prior].contains(&"--sink") && [flag, prior].contains(&"--coderd") {
                "forward to coderd or to an embedded sink, not both"
            } else {
                "give only one of them"
            };
            let flag_note = source_note(flag, None, args);
            let prior_note = source_note(prior, None, args);
            format!("error: {flag}{flag_note} cannot be used with {prior}{prior_note}: {why}")
        }
        ErrorKind::UnknownArgument => {
            if let Some((flag, value)) = hyphen_value(&arg, args) {
                return hyphen_value_line(&flag, &value, args);
            }
            let hint = context_str(error, ContextKind::SuggestedArg)
                .map(|s| format!(" (did you mean '{}'?)", flag_of(&s)))
                .unwrap_or_default();
            let help = help_hint(args);
            format!("error: unknown argument '{arg}'{hint}: {help}")
        }
        ErrorKind::InvalidUtf8 => match not_utf8_setting(args) {
            Some(setting) => format!("error: invalid value for {setting}: UTF-8 text"),
            None => "error: an argument or variable is not UTF-8 text".to_owned(),
        },
        ErrorKind::InvalidSubcommand => {
            let name = context_str(error, ContextKind::InvalidSubcommand).unwrap_or_default();
            format!("error: unknown subcommand '{name}': one of serve, sink, loadgen")
        }
        ErrorKind::MissingRequiredArgument => {
            let missing = context_str(error, ContextKind::InvalidArg).unwrap_or_default();
            let takes = takes_of(flag_of(&missing))
                .map(|t| format!(": {t}"))
                .unwrap_or_default();
            format!("error: missing required {missing}{takes}")
        }
        _ => {
            let rendered = error.render().to_string();
            let first = rendered
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim();
            let first = first.strip_prefix("error: ").unwrap_or(first);
            format!("error: {first}")
        }
    }
}
