//! Country and network of a receipt's recipient.
//!
//! The country comes from the E.164 number through Google's libphonenumber
//! metadata (the `phonenumber` crate), which resolves the regions that share
//! a calling code (`+1` by area code, `+7`, `+44` and its Crown
//! Dependencies, ...). Parsing with that metadata costs several
//! microseconds, so results are remembered by the number's first
//! [`PREFIX_DIGITS`] digits, which decide the region in every numbering
//! plan of the metadata (the longest leading-digit pattern that splits a
//! shared calling code is 7 digits with the code, +39 06698 for the
//! Vatican). Only numbers that resolved are remembered: a prefix never
//! turns a valid number into "unknown".

use dlr_shared::{Destination, Network, ReceiptEvent};
use std::collections::HashMap;
use std::sync::RwLock;

use super::mcc;

/// Digits of the number (calling code included) that key the cache.
const PREFIX_DIGITS: usize = 7;

/// Most prefixes remembered; past it, new prefixes are parsed each time
/// (memory stays bounded whatever the traffic).
const CACHE_CAPACITY: usize = 100_000;

/// Derives destinations, remembering the country of each number prefix.
#[derive(Default)]
pub struct DestinationResolver {
    countries: RwLock<HashMap<u64, [u8; 2]>>,
}

impl DestinationResolver {
    /// Fills `event.destination` when it is absent and the recipient or the
    /// network code say something; keeps one the producer already set.
    pub fn enrich(&self, mut event: ReceiptEvent) -> ReceiptEvent {
        if event.destination.is_none() {
            let country = event.recipient.as_deref().and_then(|r| self.country(r));
            let network = event.network_code.as_deref().and_then(network);
            if country.is_some() || network.is_some() {
                event.destination = Some(Destination { country, network });
            }
        }
        event
    }

    /// The ISO 3166-1 alpha-2 code of an E.164 recipient (`+` optional, a
    /// channel prefix such as `whatsapp:` ignored), or `None` when it is not
    /// a number any plan knows.
    pub fn country(&self, recipient: &str) -> Option<String> {
        let digits = e164_digits(recipient)?;
        let key = prefix_key(digits);
        let cached = self.countries.read().ok()?.get(&key).copied();
        if let Some(country) = cached {
            return String::from_utf8(country.to_vec()).ok();
        }
        let country = parse_country(digits)?;
        if let Ok(mut cache) = self.countries.write()
            && cache.len() < CACHE_CAPACITY
        {
            cache.insert(key, country);
        }
        String::from_utf8(country.to_vec()).ok()
    }
}

/// The digits of an international number: 6 to 15 digits after an optional
/// `+`, after an optional `channel:` prefix. Anything else is not one.
fn e164_digits(recipient: &str) -> Option<&str> {
    let address = recipient.rsplit_once(':').map_or(recipient, |(_, number)| number).trim();
    let digits = address.strip_prefix('+').unwrap_or(address);
    (6..=15).contains(&digits.len()).then_some(())?;
    digits.bytes().all(|b| b.is_ascii_digit()).then_some(digits)
}

/// The first [`PREFIX_DIGITS`] digits as a number, tagged with how many
/// there were so that a short number never shares a key with a longer one.
fn prefix_key(digits: &str) -> u64 {
    let prefix = &digits.as_bytes()[..digits.len().min(PREFIX_DIGITS)];
    let value = prefix.iter().fold(0u64, |acc, &b| acc * 10 + u64::from(b - b'0'));
    value * 10 + prefix.len() as u64
}

/// The region's two letters; libphonenumber's ids are ISO 3166-1 alpha-2
/// codes (plus `AC` and `TA`, which ISO reserves for Ascension and Tristan
/// da Cunha).
///
/// A number the metadata finds invalid (a fictitious range such as
/// +44 7700 900xxx, or a range newer than the metadata) gets the main
/// country of its calling code, except under `+1`, where twenty-five
/// countries share the code and only a valid area code tells them apart.
fn parse_country(digits: &str) -> Option<[u8; 2]> {
    let number = phonenumber::parse(None, format!("+{digits}")).ok()?;
    let id = match number.country().id() {
        Some(id) => id.as_ref().as_bytes().try_into().ok(),
        None => main_country_of_code(number.code().value()),
    }?;
    Some(id)
}

fn main_country_of_code(code: u16) -> Option<[u8; 2]> {
    if code == 1 {
        return None;
    }
    let regions = phonenumber::metadata::DATABASE.by_code(&code)?;
    let main = regions.iter().find(|m| m.is_main_country_for_code()).or(regions.first())?;
    // "001" is libphonenumber's id for non-geographic codes (+800, +882, ...).
    main.id().as_bytes().try_into().ok()
}

/// MCC and MNC of a `network_code` (5 or 6 digits: MCC then a 2- or 3-digit
/// MNC); `None` for anything else.
pub fn network(code: &str) -> Option<Network> {
    let code = code.trim();
    if !(5..=6).contains(&code.len()) || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (mcc, mnc) = code.split_at(3);
    let country = mcc.parse().ok().and_then(mcc::country).map(str::to_owned);
    Some(Network { mcc: mcc.to_owned(), mnc: mnc.to_owned(), country })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn countries_follow_the_numbering_plan() {
        let resolver = DestinationResolver::default();
        for (number, country) in [
            ("447700900123", Some("GB")),
            ("+14155550100", Some("US")),
            ("+14165550100", Some("CA")),
            ("18095550100", Some("DO")),
            ("whatsapp:+5511987654321", Some("BR")),
            ("4915112345678", Some("DE")),
            ("77012345678", Some("KZ")),
            ("79161234567", Some("RU")),
            ("61412345678", Some("AU")),
            ("not a number", None),
            ("12", None),
            ("15555550100", None),
            ("80012345678", None),
            ("", None),
        ] {
            assert_eq!(resolver.country(number).as_deref(), country, "{number}");
            // Second time from the cache, same answer.
            assert_eq!(resolver.country(number).as_deref(), country, "{number} (cached)");
        }
    }

    #[test]
    fn network_codes_split_and_name_their_country() {
        let n = network("310410").expect("six digits");
        assert_eq!((n.mcc.as_str(), n.mnc.as_str(), n.country.as_deref()), ("310", "410", Some("US")));
        let n = network("23415").expect("five digits");
        assert_eq!((n.mcc.as_str(), n.mnc.as_str(), n.country.as_deref()), ("234", "15", Some("GB")));
        let unknown = network("99901").expect("well-formed");
        assert_eq!(unknown.country, None);
        assert_eq!(network("2341"), None);
        assert_eq!(network("23415x"), None);
        assert_eq!(network(""), None);
    }
}
