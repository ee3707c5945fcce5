//! Decoded request fields, in arrival order, before any interpretation.
//!
//! Signatures are computed over exactly what was received (including fields
//! we do not know), so the decoders keep every pair and its order, and refuse
//! bytes they cannot decode faithfully (invalid UTF-8) instead of guessing.

use serde_json::map::Entry;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::HashSet;

use super::{FieldProblem, ReceiptError};

/// Ordered `(name, value)` pairs as received. Names may repeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    /// Wraps pairs that were decoded elsewhere (tests, replays).
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        Self(pairs)
    }

    /// All pairs, for signature checks.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// True when nothing was received.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value of `name` if present with a non-blank value. Providers send
    /// empty optional fields (`client-ref=`); those mean "absent".
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.trim()).filter(|v| !v.is_empty())
    }

    /// True when `name` was sent at all, even empty.
    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    /// Names that occur more than once, in order of first repetition.
    pub fn duplicated_names(&self) -> Vec<&str> {
        // Real receipts have a dozen or two fields: comparing each name with
        // the earlier ones costs less than hashing them. The hash set bounds
        // the work for requests with up to MAX_FIELDS fields.
        let mut dups: Vec<&str> = Vec::new();
        if self.0.len() <= 32 {
            for (i, (name, _)) in self.0.iter().enumerate() {
                if self.0[..i].iter().any(|(earlier, _)| earlier == name) && !dups.contains(&name.as_str()) {
                    dups.push(name);
                }
            }
            return dups;
        }
        let mut seen = HashSet::with_capacity(self.0.len());
        let mut reported = HashSet::new();
        for (name, _) in &self.0 {
            if !seen.insert(name.as_str()) && reported.insert(name.as_str()) {
                dups.push(name.as_str());
            }
        }
        dups
    }

    /// Every field as a JSON object for the event's `raw` member; a repeated
    /// name becomes an array of its values so that nothing is dropped.
    pub fn to_raw(&self) -> Map<String, Value> {
        let mut raw = Map::with_capacity(self.0.len());
        for (name, value) in &self.0 {
            match raw.entry(name.as_str()) {
                Entry::Vacant(entry) => {
                    entry.insert(Value::String(value.clone()));
                }
                Entry::Occupied(mut entry) => match entry.get_mut() {
                    Value::Array(values) => values.push(Value::String(value.clone())),
                    existing => {
                        let first = existing.take();
                        *existing = Value::Array(vec![first, Value::String(value.clone())]);
                    }
                },
            }
        }
        raw
    }
}

/// More fields than any provider sends (Vonage ~15, Twilio ~20) by far; a
/// request with more is not a receipt, and refusing it early bounds the
/// work one request can cause.
pub const MAX_FIELDS: usize = 1000;

/// Longest status word accepted. Real ones are under 20 bytes; a longer
/// one is not a status, and it would be stored, logged and published on
/// every request.
pub const MAX_STATUS_BYTES: usize = 64;

/// Longest value of any other field. Receipts carry ids, codes, numbers and
/// short texts; the cap keeps one request from filling the status store's
/// and the logs' text columns (the body limit alone allows 64 KiB).
pub const MAX_VALUE_BYTES: usize = 8 * 1024;

/// Field names that carry a provider's status word.
const STATUS_FIELDS: [&str; 3] = ["status", "MessageStatus", "SmsStatus"];

/// What makes `name=value` unacceptable, if anything: control characters
/// (NUL, which PostgreSQL refuses in text and JSONB, and the other C0 codes
/// and DEL, which no provider sends; tab and line breaks stay allowed) and
/// over-long values. Deciding here gives the provider a 400 naming the field
/// instead of an event that the status store refuses later.
fn text_problem(name: &str, value: &str) -> Option<FieldProblem> {
    let is_control = |c: char| c.is_ascii_control() && !matches!(c, '\t' | '\n' | '\r');
    let label = || name.escape_debug().to_string();
    if name.contains(is_control) {
        return Some(FieldProblem::new(&label(), "has a control character in its name"));
    }
    if value.contains(is_control) {
        return Some(FieldProblem::new(&label(), "must not contain control characters (NUL etc.)"));
    }
    let limit = if STATUS_FIELDS.contains(&name) { MAX_STATUS_BYTES } else { MAX_VALUE_BYTES };
    (value.len() > limit).then(|| FieldProblem::new(&label(), format!("is longer than {limit} bytes")))
}

fn check_pairs(pairs: Vec<(String, String)>) -> Result<Fields, ReceiptError> {
    let problems: Vec<FieldProblem> = pairs.iter().filter_map(|(n, v)| text_problem(n, v)).collect();
    if problems.is_empty() { Ok(Fields(pairs)) } else { Err(ReceiptError::InvalidFields(problems)) }
}

/// The [`text_problem`]s of every string (member names and values, at any
/// depth) of a JSON body that is not decoded into [`Fields`], such as a
/// Messages API webhook; nested names are reported as `outer.inner`.
pub fn json_text_problems(object: &Map<String, Value>) -> Vec<FieldProblem> {
    fn walk(path: &str, value: &Value, problems: &mut Vec<FieldProblem>) {
        match value {
            Value::String(text) => problems.extend(text_problem(path, text)),
            Value::Array(items) => items.iter().for_each(|item| walk(path, item, problems)),
            Value::Object(members) => {
                for (name, member) in members {
                    let inner = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
                    problems.extend(text_problem(&inner, ""));
                    walk(&inner, member, problems);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    let mut problems = Vec::new();
    for (name, value) in object {
        problems.extend(text_problem(name, ""));
        walk(name, value, &mut problems);
    }
    problems
}

fn too_many_fields(format: &'static str) -> ReceiptError {
    ReceiptError::Malformed { format, detail: format!("more than {MAX_FIELDS} fields") }
}

/// Decodes `application/x-www-form-urlencoded` bytes (a body or a query string).
///
/// `+` is a space and `%XX` an escaped byte; the decoded bytes must be UTF-8.
pub fn decode_urlencoded(input: &[u8], format: &'static str) -> Result<Fields, ReceiptError> {
    let mut pairs = Vec::new();
    for part in input.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        if pairs.len() == MAX_FIELDS {
            return Err(too_many_fields(format));
        }
        let (name, value) = match part.iter().position(|b| *b == b'=') {
            Some(i) => (&part[..i], &part[i + 1..]),
            None => (part, &b""[..]),
        };
        let name = decode_component(name, format)?;
        let value = decode_component(value, format)?;
        pairs.push((name, value));
    }
    check_pairs(pairs)
}

fn decode_component(raw: &[u8], format: &'static str) -> Result<String, ReceiptError> {
    let not_utf8 =
        || ReceiptError::Malformed { format, detail: "percent-decoded text is not valid UTF-8".to_owned() };
    // Most values (ids, digits, words) need no decoding at all.
    if !raw.iter().any(|b| matches!(b, b'+' | b'%')) {
        return std::str::from_utf8(raw).map(str::to_owned).map_err(|_| not_utf8());
    }
    let plus_as_space: Cow<'_, [u8]> = if raw.contains(&b'+') {
        Cow::Owned(raw.iter().map(|b| if *b == b'+' { b' ' } else { *b }).collect())
    } else {
        Cow::Borrowed(raw)
    };
    let bytes: Vec<u8> = percent_encoding::percent_decode(&plus_as_space).collect();
    String::from_utf8(bytes).map_err(|_| not_utf8())
}

/// Decodes a flat JSON object into fields.
///
/// Vonage documents every value as a string, but numbers and booleans are
/// seen in the wild and carry no ambiguity, so they are kept as their JSON
/// text; `null` means absent. Nested values are refused: the SMS API never
/// sends them and a signature over them would be undefined.
pub fn decode_json_object(body: &[u8]) -> Result<Fields, ReceiptError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ReceiptError::Malformed { format: "json", detail: e.to_string() })?;
    let Value::Object(object) = value else {
        return Err(ReceiptError::Malformed { format: "json", detail: "expected a JSON object".to_owned() });
    };
    fields_from_json_object(object)
}

/// Turns an already parsed flat JSON object into fields (see
/// [`decode_json_object`] for the value rules).
pub fn fields_from_json_object(object: Map<String, Value>) -> Result<Fields, ReceiptError> {
    if object.len() > MAX_FIELDS {
        return Err(too_many_fields("json"));
    }
    let mut pairs = Vec::with_capacity(object.len());
    let mut problems = Vec::new();
    for (name, value) in object {
        match value {
            Value::String(s) => pairs.push((name, s)),
            Value::Number(n) => pairs.push((name, n.to_string())),
            Value::Bool(b) => pairs.push((name, b.to_string())),
            Value::Null => {}
            Value::Array(_) | Value::Object(_) => {
                problems.push(super::FieldProblem::new(&name, "must be a string, not a nested value"));
            }
        }
    }
    if problems.is_empty() { check_pairs(pairs) } else { Err(ReceiptError::InvalidFields(problems)) }
}

/// A plain decimal such as `0.03330000` (no exponent, no sign games).
pub(crate) fn is_decimal(value: &str) -> bool {
    let digits = value.strip_prefix('-').unwrap_or(value);
    let mut parts = digits.splitn(2, '.');
    let whole = parts.next().unwrap_or("");
    let frac = parts.next();
    !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_plus_and_percent() {
        let f = decode_urlencoded(b"a=2016-10-19+22%3A40%3A30&b=%20x&c", "form").expect("decodes");
        assert_eq!(f.get("a"), Some("2016-10-19 22:40:30"));
        assert_eq!(f.pairs()[1].1, " x");
        assert!(f.contains("c"));
        assert_eq!(f.get("c"), None);
    }

    #[test]
    fn refuses_invalid_utf8() {
        assert!(decode_urlencoded(b"a=%FF%FE", "form").is_err());
        assert!(decode_urlencoded(b"a=\xFF", "form").is_err());
    }

    #[test]
    fn stray_percent_signs_are_kept() {
        let f = decode_urlencoded(b"a=100%25&b=5%&c=%4&d=%zz&e=%e2%82%AC", "form").expect("decodes");
        let values: Vec<&str> = f.pairs().iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(values, ["100%", "5%", "%4", "%zz", "\u{20ac}"]);
    }

    #[test]
    fn many_fields_report_each_repeated_name_once() {
        let mut body = (0..40).map(|i| format!("f{i}=x")).collect::<Vec<_>>().join("&");
        body.push_str("&f3=y&f3=z&f7=y");
        let f = decode_urlencoded(body.as_bytes(), "form").expect("decodes");
        assert_eq!(f.duplicated_names(), vec!["f3", "f7"]);
        let small = decode_urlencoded(b"a=1&b=2&a=3&b=4&a=5", "form").expect("decodes");
        assert_eq!(small.duplicated_names(), vec!["a", "b"]);
    }

    #[test]
    fn json_numbers_become_text_and_nesting_is_refused() {
        let f = decode_json_object(br#"{"err-code":0,"price":0.5,"x":null}"#).expect("decodes");
        assert_eq!(f.get("err-code"), Some("0"));
        assert!(!f.contains("x"));
        assert!(decode_json_object(br#"{"a":{"b":1}}"#).is_err());
        assert!(decode_json_object(b"[1]").is_err());
        assert!(decode_json_object(b"{").is_err());
    }

    #[test]
    fn control_characters_and_overlong_words_are_refused_by_name() {
        let problem_fields = |r: Result<Fields, ReceiptError>| -> Vec<String> {
            r.err().map(|e| e.problems().iter().map(|p| p.field.clone()).collect()).unwrap_or_default()
        };
        assert_eq!(
            problem_fields(decode_urlencoded(b"messageId=A1&status=delivered%00", "form")),
            ["status"]
        );
        assert_eq!(problem_fields(decode_urlencoded(b"x=%1B%5B31m", "query")), ["x"]);
        assert_eq!(problem_fields(decode_urlencoded(b"a%00b=1", "form")), ["a\\0b"]);
        let long_status = format!("MessageStatus={}", "s".repeat(MAX_STATUS_BYTES + 1));
        assert_eq!(problem_fields(decode_urlencoded(long_status.as_bytes(), "form")), ["MessageStatus"]);
        assert_eq!(
            problem_fields(decode_json_object(br#"{"status":"delivered\u0000","err-code":"0"}"#)),
            ["status"]
        );
        let ok = format!("status={}&text=line%0Anext%09tab", "s".repeat(MAX_STATUS_BYTES));
        assert!(decode_urlencoded(ok.as_bytes(), "form").is_ok(), "64 bytes, tabs and line breaks are fine");
        let nested: Map<String, Value> =
            serde_json::from_str(r#"{"status":"rejected","error":{"title":"a\u0000"}}"#).expect("json");
        let fields: Vec<String> = json_text_problems(&nested).into_iter().map(|p| p.field).collect();
        assert_eq!(fields, ["error.title"]);
    }

    #[test]
    fn repeated_names_are_kept_in_raw() {
        let f = decode_urlencoded(b"a=1&a=2&a=3", "form").expect("decodes");
        assert_eq!(f.duplicated_names(), vec!["a"]);
        assert_eq!(f.to_raw()["a"], serde_json::json!(["1", "2", "3"]));
    }
}
