//! Settings both binaries read the same way.
//!
//! Each binary has one `Config` struct (clap derive with `env`), so the same
//! definition gives environment variables for Kubernetes, flags for local
//! runs, documented defaults in `--help`, and a start-up error that names the
//! variable. The pieces both binaries need are defined here and flattened in.

use clap::{Args, ValueEnum};
use lapin::uri::AMQPUri;
use secrecy::{ExposeSecret, SecretString};
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
    /// Log format.
    #[arg(long = "log-format", env = "LOG_FORMAT", value_enum, default_value = "json")]
    pub format: LogFormat,
    /// Log filter, e.g. `info` or `info,dlr_ingest=debug`.
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

#[cfg(test)]
mod tests {
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
