//! Documented shapes of the fields that identify a receipt, for providers
//! whose signature concatenates names and values without separators.
//!
//! Twilio signs `name + value` for each sorted parameter and Plivo's V3 does
//! the same for a POST form, so `ApiVersion=2010-04-01&ErrorCode=30003` and
//! the single field `ApiVersion=2010-04-01ErrorCode30003` sign alike: a
//! captured request could be re-split into a different receipt under the
//! same signature. Requiring every identifying field to have its documented
//! shape (and every name to be a provider-style `UpperCamelCase` word) leaves
//! no other split of the signed text that parses: a value cannot absorb its
//! neighbour, and a name cannot start inside one.

use super::{FieldProblem, Fields, ReceiptError};

/// One identifying field and the shape its value must have.
pub(crate) struct Rule {
    /// The field's wire name.
    pub name: &'static str,
    /// True when a value has the documented shape.
    pub valid: fn(&str) -> bool,
    /// The shape in words, for the 400 body.
    pub shape: &'static str,
}

/// What one provider requires beyond [`Rule`]s: the status field, and the
/// statuses documented to carry an error code.
pub(crate) struct Shapes {
    /// The identifying fields.
    pub rules: &'static [Rule],
    /// The status field(s).
    pub status_fields: &'static [&'static str],
    /// Statuses that always come with an error code.
    pub failure_statuses: &'static [&'static str],
    /// The error code field.
    pub error_code: &'static str,
}

impl Shapes {
    /// Every problem that makes `fields` ambiguous under a separator-less signature.
    pub(crate) fn check(&self, fields: &Fields) -> Result<(), ReceiptError> {
        let mut problems = Vec::new();
        for (name, value) in fields.pairs() {
            if !is_camel_word(name) {
                problems.push(FieldProblem::new(name, "is not a parameter name this provider sends"));
                continue;
            }
            if let Some(rule) = self.rules.iter().find(|r| r.name == name) {
                if !value.is_empty() && !(rule.valid)(value) {
                    problems.push(FieldProblem::new(name, format!("must be {}", rule.shape)));
                }
            } else if let Some(rule) = self.rules.iter().find(|r| name.starts_with(r.name)) {
                // `ErrorCode3=0003` is `ErrorCode=30003` re-split.
                problems
                    .push(FieldProblem::new(name, format!("is not a parameter (it extends {})", rule.name)));
            }
        }
        let failed = self
            .status_fields
            .iter()
            .filter_map(|f| fields.get(f))
            .any(|s| self.failure_statuses.contains(&s));
        if failed && fields.get(self.error_code).is_none() {
            problems.push(FieldProblem::new(self.error_code, "is required for a failed status"));
        }
        if problems.is_empty() { Ok(()) } else { Err(ReceiptError::InvalidFields(problems)) }
    }
}

/// `UpperCamelCase`: an ASCII capital, then ASCII letters and digits.
fn is_camel_word(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase()) && chars.all(|c| c.is_ascii_alphanumeric())
}

/// `prefix` followed by exactly `hex` lower-case hex digits (Twilio SIDs).
pub(crate) fn sid(value: &str, prefixes: &[&str], hex: usize) -> bool {
    prefixes.iter().any(|p| {
        value.strip_prefix(p).is_some_and(|rest| {
            rest.len() == hex && rest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
    })
}

/// A lower-case status word (`delivered`, `partially_delivered`).
pub(crate) fn status_word(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

/// ASCII digits only.
pub(crate) fn digits(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit())
}

/// A lower-case hyphenated UUID (Plivo message UUIDs).
pub(crate) fn uuid(value: &str) -> bool {
    let groups: Vec<&str> = value.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, len)| {
            g.len() == len && g.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert!(sid("SM0123456789abcdef0123456789abcdef", &["SM", "MM"], 32));
        assert!(!sid("SM0123456789abcdef0123456789abcdefX", &["SM"], 32));
        assert!(!sid("SM1", &["SM"], 32));
        assert!(uuid("db3ce55a-7f1d-11e1-8ea7-1231380bc196"));
        assert!(!uuid("db3ce55a-7f1d-11e1-8ea7-1231380bc196To"));
        assert!(status_word("partially_delivered") && !status_word("sentX") && !status_word(""));
        assert!(is_camel_word("RawDlrDoneDate") && !is_camel_word("3From") && !is_camel_word("a=b"));
    }
}
