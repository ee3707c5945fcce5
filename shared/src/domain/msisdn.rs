//! Phone numbers in E.164 form without the leading `+`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A handset number as Vonage writes it: E.164 digits without `+`.
///
/// Twilio writes `+14155551234`; the `+` is dropped so that the same handset
/// has one spelling whichever provider reported it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Msisdn(String);

impl Msisdn {
    /// Accepts 6 to 15 digits, optionally after one `+`.
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let trimmed = raw.trim();
        let digits = trimmed.strip_prefix('+').unwrap_or(trimmed);
        if digits.is_empty() {
            return Err("must not be empty");
        }
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err("must contain digits only (E.164)");
        }
        if !(6..=15).contains(&digits.len()) {
            return Err("must have 6 to 15 digits (E.164)");
        }
        Ok(Self(digits.to_owned()))
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The number with all but the last four digits masked, for logs: full
    /// phone numbers are personal data and must not end up in log storage.
    pub fn redacted(&self) -> String {
        let keep = self.0.len().saturating_sub(4);
        format!("{}{}", "*".repeat(keep), &self.0[keep..])
    }
}

impl TryFrom<String> for Msisdn {
    type Error = &'static str;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Msisdn> for String {
    fn from(m: Msisdn) -> Self {
        m.0
    }
}

impl fmt::Display for Msisdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_both_spellings() {
        assert_eq!(Msisdn::parse("+14155551234"), Msisdn::parse("14155551234"));
        assert!(Msisdn::parse("14155551234").is_ok());
    }

    #[test]
    fn rejects_non_digits_and_bad_lengths() {
        for bad in ["", "+", "abc", "1415555123x", "12345", "1234567890123456"] {
            assert!(Msisdn::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redacts_all_but_last_four() {
        let m = Msisdn::parse("14155551234").expect("valid");
        assert_eq!(m.redacted(), "*******1234");
    }
}
