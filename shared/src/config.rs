//! Settings both binaries read the same way.
//!
//! Each binary has one `Config` struct (clap derive with `env`), so the same
//! definition gives environment variables for Kubernetes, flags for local
//! runs, documented defaults in `--help`, and a start-up error that names the
//! variable. The pieces both binaries need are defined here and flattened in.

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, Command, ValueEnum};
use lapin::uri::AMQPUri;
use secrecy::{ExposeSecret, SecretString};
use std::error::Error as _;
use std::fmt;
use std::time::Duration;

use crate::amqp::Topology;

/// Default broker address: the local RabbitMQ with the guest account.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Broker connection settings.
#[derive(Debug, Clone, Args)]
pub struct BrokerConfig {
    /// AMQP URI of RabbitMQ (`amqps://` for TLS), or a comma-separated list
    /// of the URIs of a cluster's nodes: the first that answers is used, the
    /// next one after a connection loss. Holds the password: never logged.
    #[arg(long = "amqp-url", env = "AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_default_value = false)]
    pub url: SecretString,
    /// Names this process's broker connection (`ingest@<name>`,
    /// `worker@<name>`) in RabbitMQ's management UI and logs. Kubernetes
    /// sets HOSTNAME to the pod name.
    #[arg(long = "instance-name", env = "HOSTNAME", default_value = "local")]
    pub instance_name: String,
    /// Exchange and queue names.
    #[command(flatten)]
    pub topology: Topology,
}

impl BrokerConfig {
    /// The broker addresses from `AMQP_URL`, checked once at start-up so a
    /// typo is a start-up error instead of an unready process retrying forever.
    pub fn addresses(&self) -> Result<AmqpUrls, AmqpUrlError> {
        AmqpUrls::parse(self.url.expose_secret())
    }
}

/// One broker node's address from `AMQP_URL`, parsed. It holds the
/// password, so `Debug` and `Display` show only scheme, host, port and vhost.
#[derive(Clone)]
pub struct AmqpAddress {
    uri: AMQPUri,
    shown: String,
}

impl AmqpAddress {
    /// The parsed URI to connect with (credentials included).
    pub fn uri(&self) -> &AMQPUri {
        &self.uri
    }
}

impl fmt::Display for AmqpAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for AmqpAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// The broker nodes to try, in order: never empty. A single URI is a list
/// of one, which behaves exactly like the single address it always was.
#[derive(Clone, Debug)]
pub struct AmqpUrls(Vec<AmqpAddress>);

/// `AMQP_URL` does not parse. The message names the variable and which
/// entry is wrong but never repeats the entry: it may hold a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "AMQP_URL: {problem} (expected amqp[s]://user:password@host:port/vhost, several separated by commas)"
)]
pub struct AmqpUrlError {
    problem: String,
}

impl AmqpUrls {
    /// Parses a comma-separated list of AMQP URIs (a comma inside a
    /// password must be written `%2C`, as in any URI).
    pub fn parse(raw: &str) -> Result<Self, AmqpUrlError> {
        let entries: Vec<&str> = raw.split(',').map(str::trim).collect();
        let count = entries.len();
        let mut addresses = Vec::with_capacity(count);
        for (index, entry) in entries.into_iter().enumerate() {
            let position =
                if count == 1 { "the URI".to_owned() } else { format!("entry {} of {count}", index + 1) };
            let address = parse_one(entry)
                .map_err(|problem| AmqpUrlError { problem: format!("{position} {problem}") })?;
            addresses.push(address);
        }
        Ok(Self(addresses))
    }

    /// The addresses in the configured order.
    pub fn addresses(&self) -> &[AmqpAddress] {
        &self.0
    }
}

/// Checks one URI. Errors describe the problem without quoting the input.
fn parse_one(entry: &str) -> Result<AmqpAddress, String> {
    if entry.is_empty() {
        return Err("is empty".to_owned());
    }
    let url = url::Url::parse(entry).map_err(|e| format!("is not a URI: {e}"))?;
    let scheme = url.scheme();
    if scheme != "amqp" && scheme != "amqps" {
        return Err(format!("has scheme {scheme:?}; it must be amqp or amqps"));
    }
    if url.cannot_be_a_base() || url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".to_owned());
    }
    let mut uri: AMQPUri = entry.parse().map_err(|e: String| {
        // amq-protocol-uri quotes some query values; keep the password out anyway.
        let e = match url.password().filter(|p| !p.is_empty()) {
            Some(password) => e.replace(password, "***"),
            None => e,
        };
        format!("is not an AMQP URI: {e}")
    })?;
    // amq-protocol-uri only takes a host *name* from the URL and falls back
    // to localhost for an IP address; connecting to 10.0.0.5 must not
    // silently go to this machine's broker instead.
    if let Some(host) = url.host() {
        uri.authority.host = match host {
            url::Host::Ipv6(ip) => ip.to_string(),
            other => other.to_string(),
        };
    }
    let shown = format!(
        "{scheme}://{}:{}/{}",
        url.host_str().unwrap_or_default(),
        uri.authority.port,
        url.path().trim_start_matches('/')
    );
    Ok(AmqpAddress { uri, shown })
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines, for terminals.
    Text,
}

/// Logging settings. The level filter itself is `RUST_LOG` (tracing's
/// `EnvFilter` syntax), defaulting to `info`.
#[derive(Debug, Clone, Args)]
pub struct LogConfig {
    /// Log format (case-insensitive).
    #[arg(long = "log-format", env = "LOG_FORMAT", value_enum, ignore_case = true, default_value = "json")]
    pub format: LogFormat,
    /// Log filter, e.g. `info` or `info,dlr_worker=debug`. lapin's own lines
    /// are off unless named here: every broker failure is reported by our
    /// code with its cause, and lapin's would repeat it or print message bodies.
    #[arg(long = "log-level", env = "RUST_LOG", default_value = "info")]
    pub level: String,
}

/// Parses a whole number of milliseconds into a `Duration` (for clap).
pub fn parse_millis(value: &str) -> Result<Duration, String> {
    value
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("{value:?} is not a whole number of milliseconds"))
}

/// Parses a whole number of seconds into a `Duration` (for clap).
pub fn parse_seconds(value: &str) -> Result<Duration, String> {
    value
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("{value:?} is not a whole number of seconds"))
}

/// Parses a whole number of milliseconds, refusing 0, for timeouts and
/// intervals where zero would mean "never works" rather than "off".
pub fn parse_nonzero_millis(value: &str) -> Result<Duration, String> {
    parse_millis(value).and_then(nonzero)
}

/// Parses a whole number of seconds, refusing 0 (see [`parse_nonzero_millis`]).
pub fn parse_nonzero_seconds(value: &str) -> Result<Duration, String> {
    parse_seconds(value).and_then(nonzero)
}

fn nonzero(duration: Duration) -> Result<Duration, String> {
    if duration.is_zero() { Err("must be greater than 0".to_owned()) } else { Ok(duration) }
}

/// Environment variables whose values can hold a password or a token: never
/// shown by `--help`. Matched by name so that an option added later is
/// covered without anyone remembering `hide_env_values`.
fn holds_secret(env: &str) -> bool {
    ["URL", "SECRET", "TOKEN", "PASSWORD", "KEY"].iter().any(|word| env.contains(word))
}

/// Applies the command-line rules both binaries share to a clap command:
/// environment values that can hold a secret are hidden from `--help`, and
/// (with `global`) top-level options are accepted after a subcommand too.
pub fn harden(mut command: Command, global: bool) -> Command {
    command = command.mut_args(|arg| {
        let secret = arg.get_env().and_then(|e| e.to_str()).is_some_and(holds_secret);
        let arg = if secret { arg.hide_env_values(true) } else { arg };
        if global && !arg.is_positional() { arg.global(true) } else { arg }
    });
    command.mut_subcommands(|sub| harden(sub, false))
}

/// Parses flags and environment into `T` like `T::parse()`, except that an
/// error names the binary and the environment variable (what the README and
/// the Kubernetes manifests set), never only the flag, and exits with 2.
pub fn parse_or_exit<T: clap::Parser>(binary: &str, global: bool) -> T {
    let command = harden(T::command(), global);
    let parsed = command.try_get_matches().and_then(|mut matches| T::from_arg_matches_mut(&mut matches));
    match parsed {
        Ok(value) => value,
        Err(error) => match error.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => error.exit(),
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => error.exit(),
            _ => {
                eprintln!("{}", describe_error(binary, &harden(T::command(), global), &error));
                std::process::exit(2);
            }
        },
    }
}

/// The one-line message for a clap error: `<binary>: <VARIABLE> ...`.
pub fn describe_error(binary: &str, command: &Command, error: &clap::Error) -> String {
    let args: Vec<String> = match error.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => vec![arg.clone()],
        Some(ContextValue::Strings(args)) => args.clone(),
        _ => Vec::new(),
    };
    let found: Vec<(String, &clap::Arg)> =
        args.iter().filter_map(|a| find_arg(command, flag_of(a)).map(|arg| (a.clone(), arg))).collect();
    let named = |(rendered, arg): &(String, &clap::Arg)| match arg.get_env().and_then(|e| e.to_str()) {
        Some(env) => format!("{env} (flag {})", flag_of(rendered)),
        None => flag_of(rendered).to_owned(),
    };
    match (error.kind(), found.first()) {
        (ErrorKind::ValueValidation | ErrorKind::InvalidValue, Some(first)) => {
            let value = match error.get(ContextKind::InvalidValue) {
                Some(ContextValue::String(value)) => value.clone(),
                _ => String::new(),
            };
            let shown = if first.1.is_hide_env_values_set() {
                "(value hidden)".to_owned()
            } else {
                format!("{value:?}")
            };
            let why = match (error.source(), error.get(ContextKind::ValidValue)) {
                (Some(source), _) => source.to_string(),
                (None, Some(ContextValue::Strings(valid))) => format!("expected one of {}", valid.join(", ")),
                _ => "invalid value".to_owned(),
            };
            format!("{binary}: {}: {shown} is invalid: {why}", named(first))
        }
        (ErrorKind::MissingRequiredArgument, Some(_)) => {
            let names: Vec<String> = found.iter().map(named).collect();
            format!("{binary}: {} must be set", names.join(", "))
        }
        _ => {
            let rendered = error.render().to_string();
            let first_line = rendered.lines().next().unwrap_or_default();
            format!("{binary}: {}", first_line.trim_start_matches("error: "))
        }
    }
}

/// `--addr <ADDR>` -> `--addr`.
fn flag_of(rendered: &str) -> &str {
    rendered.split([' ', '=']).next().unwrap_or(rendered)
}

fn find_arg<'a>(command: &'a Command, flag: &str) -> Option<&'a clap::Arg> {
    let long = flag.strip_prefix("--")?;
    command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))
        .or_else(|| command.get_subcommands().find_map(|sub| find_arg(sub, flag)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    #[command(name = "demo")]
    struct Demo {
        #[arg(long = "timeout-ms", env = "DEMO_TIMEOUT_MS", default_value = "5", value_parser = parse_nonzero_millis)]
        timeout: Duration,
        #[arg(long = "db-url", env = "DEMO_DB_URL")]
        db_url: Option<String>,
        #[command(flatten)]
        log: LogConfig,
    }

    fn error_of(args: &[&str]) -> String {
        let command = harden(Demo::command(), false);
        match command.clone().try_get_matches_from(args) {
            Ok(_) => "parsed".to_owned(),
            Err(error) => describe_error("demo", &command, &error),
        }
    }

    #[test]
    fn value_errors_name_the_binary_and_the_variable() {
        let message = error_of(&["demo", "--timeout-ms", "0"]);
        assert!(message.starts_with("demo: DEMO_TIMEOUT_MS (flag --timeout-ms)"), "{message}");
        assert!(message.contains("greater than 0"), "{message}");
        let message = error_of(&["demo", "--log-format", "yaml"]);
        assert!(message.contains("LOG_FORMAT") && message.contains("json, text"), "{message}");
    }

    #[test]
    fn log_format_is_case_insensitive() {
        let command = harden(Demo::command(), false);
        let matches = command.try_get_matches_from(["demo", "--log-format", "JSON"]);
        assert!(matches.is_ok());
    }

    #[test]
    fn secret_env_values_are_hidden() {
        let command = harden(Demo::command(), false);
        let arg = command.get_arguments().find(|a| a.get_long() == Some("db-url"));
        assert!(arg.is_some_and(clap::Arg::is_hide_env_values_set));
        let arg = command.get_arguments().find(|a| a.get_long() == Some("timeout-ms"));
        assert!(arg.is_some_and(|a| !a.is_hide_env_values_set()));
    }
}

#[cfg(test)]
mod amqp_url_tests {
    use super::*;

    #[test]
    fn a_single_uri_is_a_list_of_one() {
        let urls = AmqpUrls::parse("amqp://guest:guest@127.0.0.1:5672/%2f").expect("parses");
        assert_eq!(urls.addresses().len(), 1);
        let uri = urls.addresses()[0].uri();
        assert_eq!(uri.authority.host, "127.0.0.1");
        assert_eq!(uri.authority.port, 5672);
        assert_eq!(uri.vhost, "/");
        assert_eq!(uri.authority.userinfo.password, "guest");
    }

    #[test]
    fn a_list_keeps_its_order_and_each_entry_its_own_host_and_port() {
        let urls = AmqpUrls::parse(
            "amqp://u:p@10.0.0.5:5701/%2f, amqp://u:p@rabbit-2.internal:5702/dlr,amqps://u:p@[::1]/%2f",
        )
        .expect("parses");
        let hosts: Vec<(String, u16, String)> = urls
            .addresses()
            .iter()
            .map(|a| (a.uri().authority.host.clone(), a.uri().authority.port, a.uri().vhost.clone()))
            .collect();
        assert_eq!(
            hosts,
            vec![
                ("10.0.0.5".to_owned(), 5701, "/".to_owned()),
                ("rabbit-2.internal".to_owned(), 5702, "dlr".to_owned()),
                ("::1".to_owned(), 5671, "/".to_owned()),
            ]
        );
    }

    #[test]
    fn syntax_errors_name_the_variable_and_the_entry() {
        for (raw, expected) in [
            ("http://guest:guest@localhost:5672/", "AMQP_URL: the URI has scheme \"http\""),
            ("rabbit on localhost", "AMQP_URL: the URI is not a URI"),
            ("amqp://u:p@h:1/%2f,", "AMQP_URL: entry 2 of 2 is empty"),
            ("amqp://u:p@h:1/%2f,amqp://u:p@h:notaport/", "AMQP_URL: entry 2 of 2 is not a URI"),
            ("amqp:nohost", "AMQP_URL: the URI has no host"),
        ] {
            let error = AmqpUrls::parse(raw).expect_err(raw).to_string();
            assert!(error.starts_with(expected), "{raw:?} gave {error:?}");
        }
    }

    #[test]
    fn neither_errors_nor_debug_output_show_the_password() {
        for raw in [
            "http://user:s3cretpw@localhost:5672/",
            "amqp://user:s3cretpw@localhost:99999/",
            "amqp://user:s3cretpw@localhost:5672/%2f?heartbeat=x",
            "amqp://user:s3cretpw@localhost:5672/%2f?auth_mechanism=s3cretpw",
        ] {
            let error = AmqpUrls::parse(raw).expect_err(raw).to_string();
            assert!(!error.contains("s3cretpw"), "{error}");
        }
        let urls = AmqpUrls::parse("amqp://user:s3cretpw@localhost:5672/%2f").expect("parses");
        let shown = format!("{urls:?} {}", urls.addresses()[0]);
        assert!(!shown.contains("s3cretpw"), "{shown}");
        assert!(shown.contains("localhost:5672"), "{shown}");
    }
}
