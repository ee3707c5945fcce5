//! Which endpoints the http handler delivers to: the endpoints file
//! (`WORKER_WEBHOOKS_FILE`), or the one-endpoint shorthand
//! (`WORKER_HTTP_URL`, `WORKER_HTTP_SECRET`).
//!
//! The file is TOML, typically a mounted Kubernetes Secret since it holds
//! the signing secrets:
//!
//! ```toml
//! [[endpoints]]
//! name = "crm"                                 # label in metrics, logs, park headers
//! url = "https://crm.internal/hooks/sms-status"
//! secrets = ["whsec_new...", "whsec_old..."]   # first signs; all are sent during rotation
//! outcomes = ["delivered", "failed"]           # optional filters
//! providers = ["twilio", "vonage-sms"]
//! accounts = ["AC123"]
//! max_in_flight = 64                           # optional limits
//! timeout_ms = 10000
//! max_per_second = 50
//! ```
//!
//! It is read once, at start-up, into [`EndpointSpec`]s; anything wrong
//! stops start-up with the file, the endpoint and the key in the message,
//! never with a secret's value.

use dlr_shared::{Outcome, Provider, ReceiptEvent, words};
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;
use toml::{Table, Value};
use url::Url;

use super::signing::{SigningKey, SigningKeys};
use crate::envelope::{EndpointName, Step};
use crate::handlers::HandlerKind;

/// Longest endpoint name: it is a metrics label and part of headers.
const MAX_NAME_LEN: usize = 64;

/// Keys an endpoint table may have.
const KEYS: &[&str] = &[
    "name",
    "url",
    "secrets",
    "outcomes",
    "providers",
    "accounts",
    "max_in_flight",
    "timeout_ms",
    "max_per_second",
];

/// Why the endpoints cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    /// The file as a whole.
    #[error("WORKER_WEBHOOKS_FILE {path}: {problem}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// One key of one endpoint.
    #[error("WORKER_WEBHOOKS_FILE {path}: endpoint {endpoint}: key `{key}`: {problem}")]
    Key {
        /// The file.
        path: String,
        /// Its name, or its position when it has no usable name.
        endpoint: String,
        /// The key.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// An environment variable of the shorthand.
    #[error("{variable}: {problem}")]
    Variable {
        /// The variable.
        variable: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// Which events an endpoint wants; an absent filter matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointFilter {
    /// Outcomes, if restricted.
    pub outcomes: Option<Vec<Outcome>>,
    /// Providers, if restricted.
    pub providers: Option<Vec<Provider>>,
    /// Provider accounts (Vonage api key, Twilio AccountSid), if restricted.
    pub accounts: Option<Vec<String>>,
}

impl EndpointFilter {
    /// Whether `event` goes to the endpoint.
    pub fn matches(&self, event: &ReceiptEvent) -> bool {
        self.outcomes.as_ref().is_none_or(|o| o.contains(&event.outcome))
            && self.providers.as_ref().is_none_or(|p| p.contains(&event.provider))
            && self
                .accounts
                .as_ref()
                .is_none_or(|a| event.account.as_ref().is_some_and(|acc| a.contains(acc)))
    }
}

/// One endpoint, parsed.
#[derive(Debug, Clone)]
pub struct EndpointSpec {
    /// Its name.
    pub name: EndpointName,
    /// What the done list and the park headers call it: `http:<name>` for
    /// the file's endpoints; plain `http` for the shorthand's, since with
    /// the shorthand an event goes to one endpoint at most (the outcome
    /// picks it), so the headers stay as they were before endpoints.
    pub step: Step,
    /// Where events are posted.
    pub url: Url,
    /// Its secrets, current first.
    pub keys: SigningKeys,
    /// Which events it gets.
    pub filter: EndpointFilter,
    /// Most requests in flight to it at once.
    pub max_in_flight: Option<NonZeroUsize>,
    /// Timeout of one request.
    pub timeout: Duration,
    /// Most requests per second, if limited.
    pub max_per_second: Option<f64>,
}

/// What an endpoint gets when its file (or the shorthand) does not say.
#[derive(Debug, Clone, Copy)]
pub struct EndpointDefaults {
    /// `WORKER_HTTP_TIMEOUT_MS`.
    pub timeout: Duration,
    /// `WORKER_HTTP_MAX_IN_FLIGHT`.
    pub max_in_flight: Option<NonZeroUsize>,
}

/// Reads and parses the endpoints file.
pub fn load_file(path: &Path, defaults: EndpointDefaults) -> Result<Vec<EndpointSpec>, EndpointsError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| EndpointsError::File {
        path: shown.clone(),
        problem: format!("cannot read: {error}"),
    })?;
    parse_file(&shown, &text, defaults)
}

/// Parses the text of an endpoints file; `path` is only for messages.
pub fn parse_file(
    path: &str,
    text: &str,
    defaults: EndpointDefaults,
) -> Result<Vec<EndpointSpec>, EndpointsError> {
    let file_error = |problem: String| EndpointsError::File { path: path.to_owned(), problem };
    let table: Table = text.parse().map_err(|error: toml::de::Error| file_error(error.to_string()))?;
    if let Some(key) = table.keys().find(|key| key.as_str() != "endpoints") {
        return Err(file_error(format!("unknown top-level key `{key}` (expected [[endpoints]])")));
    }
    let Some(Value::Array(entries)) = table.get("endpoints") else {
        return Err(file_error("no [[endpoints]]: list at least one endpoint".to_owned()));
    };
    if entries.is_empty() {
        return Err(file_error("no [[endpoints]]: list at least one endpoint".to_owned()));
    }
    let mut specs: Vec<EndpointSpec> = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let Value::Table(entry) = entry else {
            return Err(file_error(format!("endpoints entry {} is not a table", index + 1)));
        };
        let spec = parse_endpoint(path, index, entry, defaults)?;
        if specs.iter().any(|s| s.name == spec.name) {
            return Err(EndpointsError::Key {
                path: path.to_owned(),
                endpoint: format!("{:?}", spec.name.as_str()),
                key: "name".to_owned(),
                problem: "is used by an earlier endpoint; names must be unique".to_owned(),
            });
        }
        specs.push(spec);
    }
    Ok(specs)
}

fn parse_endpoint(
    path: &str,
    index: usize,
    entry: &Table,
    defaults: EndpointDefaults,
) -> Result<EndpointSpec, EndpointsError> {
    let endpoint = match entry.get("name").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => format!("{name:?}"),
        _ => format!("#{}", index + 1),
    };
    let error = |key: &str, problem: String| EndpointsError::Key {
        path: path.to_owned(),
        endpoint: endpoint.clone(),
        key: key.to_owned(),
        problem,
    };
    if let Some(key) = entry.keys().find(|key| !KEYS.contains(&key.as_str())) {
        return Err(error(key, format!("unknown key (expected one of {})", KEYS.join(", "))));
    }
    let name = match entry.get("name") {
        None => return Err(error("name", "is required".to_owned())),
        Some(value) => parse_name(value).map_err(|problem| error("name", problem))?,
    };
    let url = match entry.get("url") {
        None => return Err(error("url", "is required".to_owned())),
        Some(Value::String(text)) => parse_url(text).map_err(|problem| error("url", problem))?,
        Some(_) => return Err(error("url", "must be a string".to_owned())),
    };
    let keys = match entry.get("secrets") {
        None => {
            return Err(error("secrets", "is required (one or more Standard Webhooks secrets)".to_owned()));
        }
        Some(value) => {
            let secrets = strings(value).map_err(|problem| error("secrets", problem))?;
            let mut keys = Vec::new();
            for (i, secret) in secrets.iter().enumerate() {
                keys.push(
                    SigningKey::parse(secret)
                        .map_err(|problem| error("secrets", format!("entry {}: {problem}", i + 1)))?,
                );
            }
            SigningKeys::new(keys)
                .ok_or_else(|| error("secrets", "must list at least one secret".to_owned()))?
        }
    };
    let filter = EndpointFilter {
        outcomes: entry
            .get("outcomes")
            .map(words_of::<Outcome>)
            .transpose()
            .map_err(|p| error("outcomes", p))?,
        providers: entry
            .get("providers")
            .map(words_of::<Provider>)
            .transpose()
            .map_err(|p| error("providers", p))?,
        accounts: entry.get("accounts").map(strings).transpose().map_err(|p| error("accounts", p))?,
    };
    let max_in_flight = match entry.get("max_in_flight") {
        None => defaults.max_in_flight,
        Some(value) => Some(
            positive_integer(value)
                .and_then(|n| {
                    NonZeroUsize::new(usize::try_from(n).unwrap_or(usize::MAX)).ok_or_else(String::new)
                })
                .map_err(|p| error("max_in_flight", p))?,
        ),
    };
    let timeout = match entry.get("timeout_ms") {
        None => defaults.timeout,
        Some(value) => Duration::from_millis(positive_integer(value).map_err(|p| error("timeout_ms", p))?),
    };
    let max_per_second = match entry.get("max_per_second") {
        None => None,
        Some(value) => Some(positive_number(value).map_err(|p| error("max_per_second", p))?),
    };
    Ok(EndpointSpec {
        name,
        step: Step::Endpoint(name),
        url,
        keys,
        filter,
        max_in_flight,
        timeout,
        max_per_second,
    })
}

/// A bounded label that also fits the done-list header (no `,` or `:`).
fn parse_name(value: &Value) -> Result<EndpointName, String> {
    let Value::String(name) = value else { return Err("must be a string".to_owned()) };
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.chars().all(allowed) {
        return Err(format!(
            "{name:?}: use 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.' (it is a metrics label)"
        ));
    }
    Ok(EndpointName::configured(name))
}

fn parse_url(text: &str) -> Result<Url, String> {
    let url: Url = text.parse().map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme {} is not http or https", url.scheme()));
    }
    Ok(url)
}

fn strings(value: &Value) -> Result<Vec<String>, String> {
    let Value::Array(items) = value else { return Err("must be a list of strings".to_owned()) };
    let strings: Vec<String> = items
        .iter()
        .map(|item| item.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
        .collect::<Option<_>>()
        .ok_or_else(|| "must be a list of non-empty strings".to_owned())?;
    if strings.is_empty() {
        return Err("is empty (leave the key out to match everything)".to_owned());
    }
    Ok(strings)
}

fn words_of<T>(value: &Value) -> Result<Vec<T>, String>
where
    T: strum::VariantArray + Copy + Into<&'static str>,
{
    strings(value)?
        .iter()
        .map(|word| {
            words::parse::<T>(word).ok_or_else(|| format!("{word:?} is not one of {}", words::list::<T>()))
        })
        .collect()
}

fn positive_integer(value: &Value) -> Result<u64, String> {
    match value.as_integer() {
        Some(n) if n > 0 => Ok(n.unsigned_abs()),
        _ => Err("must be a whole number above 0".to_owned()),
    }
}

fn positive_number(value: &Value) -> Result<f64, String> {
    let number = value.as_float().or_else(|| value.as_integer().map(|n| n as f64));
    match number {
        Some(n) if n > 0.0 && n.is_finite() => Ok(n),
        _ => Err("must be a number above 0".to_owned()),
    }
}

/// The shorthand: `WORKER_HTTP_URL` for every outcome, overridden per
/// outcome by `WORKER_HTTP_URL_<OUTCOME>` (an endpoint named after the
/// outcome), signed with the secrets of `WORKER_HTTP_SECRET`
/// (space-separated during a rotation, current first).
pub fn shorthand(
    default_url: Option<&Url>,
    per_outcome: &[(Outcome, Option<&Url>)],
    secret: &str,
    defaults: EndpointDefaults,
) -> Result<Vec<EndpointSpec>, EndpointsError> {
    let variable = |variable: &'static str, problem: String| EndpointsError::Variable { variable, problem };
    let mut keys = Vec::new();
    for (i, part) in secret.split_whitespace().enumerate() {
        keys.push(
            SigningKey::parse(part)
                .map_err(|p| variable("WORKER_HTTP_SECRET", format!("secret {}: {p}", i + 1)))?,
        );
    }
    let keys = SigningKeys::new(keys).ok_or_else(|| {
        variable("WORKER_HTTP_SECRET", "is required when the http handler is used".to_owned())
    })?;
    let spec = |name: &str, url: &Url, outcomes: Option<Vec<Outcome>>| EndpointSpec {
        name: EndpointName::configured(name),
        step: Step::Handler(HandlerKind::Http),
        url: url.clone(),
        keys: keys.clone(),
        filter: EndpointFilter { outcomes, ..Default::default() },
        max_in_flight: defaults.max_in_flight,
        timeout: defaults.timeout,
        max_per_second: None,
    };
    let mut specs = Vec::new();
    let overridden: Vec<Outcome> =
        per_outcome.iter().filter(|(_, url)| url.is_some()).map(|(o, _)| *o).collect();
    if let Some(url) = default_url {
        let outcomes: Vec<Outcome> =
            Outcome::ALL.iter().copied().filter(|o| !overridden.contains(o)).collect();
        if !outcomes.is_empty() {
            let filter = (outcomes.len() < Outcome::ALL.len()).then_some(outcomes);
            specs.push(spec("default", url, filter));
        }
    }
    for (outcome, url) in per_outcome {
        if let Some(url) = url {
            specs.push(spec(outcome.as_str(), url, Some(vec![*outcome])));
        }
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: EndpointDefaults =
        EndpointDefaults { timeout: Duration::from_secs(5), max_in_flight: None };

    fn error_of(text: &str) -> String {
        parse_file("/etc/dlr/webhooks.toml", text, DEFAULTS).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn parses_a_full_endpoint() {
        let specs = parse_file(
            "f",
            r#"
            [[endpoints]]
            name = "crm"
            url = "https://crm.internal/hooks"
            secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "c2Vjb25k"]
            outcomes = ["delivered", "failed"]
            providers = ["twilio", "vonage-sms"]
            accounts = ["AC1"]
            max_in_flight = 64
            timeout_ms = 10000
            max_per_second = 2.5

            [[endpoints]]
            name = "all"
            url = "http://all.internal/"
            secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
            "#,
            DEFAULTS,
        )
        .unwrap_or_default();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].name.as_str(), "crm");
        assert_eq!(specs[0].filter.outcomes, Some(vec![Outcome::Delivered, Outcome::Failed]));
        assert_eq!(specs[0].filter.providers, Some(vec![Provider::Twilio, Provider::VonageSms]));
        assert_eq!(specs[0].max_in_flight.map(NonZeroUsize::get), Some(64));
        assert_eq!(specs[0].timeout, Duration::from_secs(10));
        assert_eq!(specs[0].max_per_second, Some(2.5));
        assert_eq!(specs[1].filter, EndpointFilter::default());
        assert_eq!(specs[1].timeout, Duration::from_secs(5));
    }

    #[test]
    fn errors_name_the_file_the_endpoint_and_the_key() {
        let secret = r#"secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]"#;
        let cases = [
            (
                format!("[[endpoints]]\nname = \"crm\"\nurl = \"ftp://x\"\n{secret}"),
                "endpoint \"crm\": key `url`",
            ),
            (format!("[[endpoints]]\nurl = \"http://x\"\n{secret}"), "endpoint #1: key `name`"),
            (format!("[[endpoints]]\nname = \"a b\"\nurl = \"http://x\"\n{secret}"), "key `name`"),
            (
                "[[endpoints]]\nname = \"crm\"\nurl = \"http://x\"\nsecrets = [\"whsec_!!hidden!!\"]"
                    .to_owned(),
                "key `secrets`: entry 1: is not base64",
            ),
            (
                format!(
                    "[[endpoints]]\nname = \"crm\"\nurl = \"http://x\"\n{secret}\noutcomes = [\"delivred\"]"
                ),
                "key `outcomes`: \"delivred\" is not one of delivered, failed, pending",
            ),
            (
                format!(
                    "[[endpoints]]\nname = \"crm\"\nurl = \"http://x\"\n{secret}\nproviders = [\"smoke-signals\"]"
                ),
                "key `providers`",
            ),
            (
                format!("[[endpoints]]\nname = \"crm\"\nurl = \"http://x\"\n{secret}\nsecret = \"x\""),
                "key `secret`: unknown key",
            ),
            (
                format!("[[endpoints]]\nname = \"crm\"\nurl = \"http://x\"\n{secret}\ntimeout_ms = 0"),
                "key `timeout_ms`",
            ),
            (
                format!("[[endpoints]]\nname = \"crm\"\nurl = \"http://x\"\n{secret}\nmax_per_second = -1"),
                "key `max_per_second`",
            ),
            (
                format!(
                    "[[endpoints]]\nname = \"crm\"\nurl = \"http://x\"\n{secret}\n[[endpoints]]\nname = \"crm\"\nurl = \"http://y\"\n{secret}"
                ),
                "must be unique",
            ),
            ("[[endpoints]]\nname = \"crm\"\nurl = \"http://x\"".to_owned(), "key `secrets`: is required"),
            ("endpoints = []".to_owned(), "list at least one endpoint"),
            ("[endpoint]\nname = 1".to_owned(), "unknown top-level key `endpoint`"),
            ("[[endpoints]\nname =".to_owned(), "/etc/dlr/webhooks.toml"),
        ];
        for (text, expected) in cases {
            let error = error_of(&text);
            assert!(error.starts_with("WORKER_WEBHOOKS_FILE /etc/dlr/webhooks.toml: "), "{error}");
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
            assert!(!error.contains("hidden"), "a secret leaked: {error}");
        }
    }

    #[test]
    fn filters_match_outcome_provider_and_account() {
        let event = ReceiptEvent::from_json(
            br#"{"schema_version":1,"event_id":"0b9f6e0c3a3f4e1d8c2b7a6f5e4d3c2b","provider":"twilio",
                "message_id":"SM1","account":"AC1","outcome":"failed","status":"failed","status_recognised":true,
                "received_at":"2026-11-30T10:00:00Z","raw":{}}"#,
        );
        let Ok(event) = event else { panic!("a valid event") };
        let filter = |outcomes: Option<Vec<Outcome>>,
                      providers: Option<Vec<Provider>>,
                      accounts: Option<Vec<&str>>| {
            EndpointFilter {
                outcomes,
                providers,
                accounts: accounts.map(|a| a.into_iter().map(str::to_owned).collect()),
            }
        };
        assert!(filter(None, None, None).matches(&event));
        assert!(
            filter(Some(vec![Outcome::Failed]), Some(vec![Provider::Twilio]), Some(vec!["AC1"]))
                .matches(&event)
        );
        assert!(!filter(Some(vec![Outcome::Delivered]), None, None).matches(&event));
        assert!(!filter(None, Some(vec![Provider::Telnyx]), None).matches(&event));
        assert!(!filter(None, None, Some(vec!["AC2"])).matches(&event));
    }

    #[test]
    fn shorthand_splits_per_outcome_overrides_and_reads_rotated_secrets() {
        let default: Url = "http://all/".parse().unwrap_or_else(|_| panic!("url"));
        let failed: Url = "http://failed/".parse().unwrap_or_else(|_| panic!("url"));
        let specs = shorthand(
            Some(&default),
            &[(Outcome::Delivered, None), (Outcome::Failed, Some(&failed)), (Outcome::Pending, None)],
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw c2Vjb25k",
            DEFAULTS,
        )
        .unwrap_or_default();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].filter.outcomes, Some(vec![Outcome::Delivered, Outcome::Pending]));
        assert_eq!(specs[1].name.as_str(), "failed");
        assert_eq!(specs[0].keys.signature_header("i", 1, b"").split(' ').count(), 2);
        let error = shorthand(Some(&default), &[], "not base64!", DEFAULTS).err().map(|e| e.to_string());
        assert!(error.unwrap_or_default().starts_with("WORKER_HTTP_SECRET: secret 1: is not base64"));
    }
}
