//! Enums that travel as words: configuration values, metric labels, headers.
//!
//! Each such enum derives its names with `strum` (`IntoStaticStr`,
//! `VariantArray`) once; parsing a word back and listing the allowed words
//! in an error message are the same two functions for all of them.

use strum::VariantArray;

/// The variant whose name is `word`, ignoring ASCII case and surrounding
/// blanks (configuration values are typed by people).
pub fn parse<T>(word: &str) -> Option<T>
where
    T: VariantArray + Copy + Into<&'static str>,
{
    let word = word.trim();
    T::VARIANTS.iter().copied().find(|variant| (*variant).into().eq_ignore_ascii_case(word))
}

/// Every variant's name, comma-separated, for error messages.
pub fn list<T>() -> String
where
    T: VariantArray + Copy + Into<&'static str>,
{
    names::<T>().collect::<Vec<_>>().join(", ")
}

/// Every variant's name, for pre-creating metric series.
pub fn names<T>() -> impl Iterator<Item = &'static str>
where
    T: VariantArray + Copy + Into<&'static str>,
{
    T::VARIANTS.iter().map(|variant| (*variant).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Outcome;

    #[test]
    fn words_parse_back_case_insensitively() {
        assert_eq!(parse::<Outcome>(" Delivered "), Some(Outcome::Delivered));
        assert_eq!(parse::<Outcome>("deliverd"), None);
        assert_eq!(list::<Outcome>(), "delivered, failed, pending");
    }
}
