//! The token format: `<prefix>_<id>_<secret><checksum>`, and the only type that holds a
//! secret.
//!
//! A token is ASCII: a prefix (`tc` unless the store sets one: 1 to 16 letters, digits or
//! underscores, e.g. `sk_live`), `_`, an 8-character public id (base62, the lookup key
//! shown in logs and lists), `_`, a 22-character base62 secret (≥ 130 bits from the OS
//! CSPRNG), and a 6-character base62 CRC32 of everything before it. With `tc` it is 40
//! characters. The checksum lets
//! [`parse`] refuse a mistyped or random string before any map lookup (the way GitHub's
//! `ghp_` tokens carry one for secret scanners): CRC32 detects every single-character change.
//! Only the SHA-256 digest of the whole token is ever stored.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// How a token with the default prefix starts (every store accepts it).
pub const PREFIX: &str = "tc_";
/// The default prefix, without its `_`.
pub(crate) const DEFAULT_PREFIX: &str = "tc";
/// The longest prefix a store may set.
pub(crate) const MAX_PREFIX_LEN: usize = 16;
/// The most prefixes one store records (each `Builder::prefix` ever used adds one).
pub(crate) const MAX_PREFIXES: usize = 32;
const ID_LEN: usize = 8;
const SECRET_LEN: usize = 22;
const CHECKSUM_LEN: usize = 6;
/// What follows the prefix: `_`, the id, `_`, the secret, the checksum.
const TAIL_LEN: usize = 1 + ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN;
/// The length of a token with the default prefix, in bytes.
pub const TOKEN_LEN: usize = DEFAULT_PREFIX.len() + TAIL_LEN;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `DIGIT[b]` is the base62 value of byte `b`, or `INVALID`.
const INVALID: u8 = 0xFF;
/// The bit every `INVALID` byte has and no digit value (0-61) has.
const INVALID_BIT: u8 = 0x80;
const DIGIT: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// A SHA-256 digest of a token: what the store keeps instead of the token.
pub(crate) type Digest = [u8; 32];

/// The public id of a token: 8 base62 characters, safe to log and show.
///
/// Parse one from a string with [`str::parse`]; a full token is not an id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId([u8; ID_LEN]);

impl TokenId {
    /// The id as text, e.g. `"a1B2c3D4"`.
    pub fn as_str(&self) -> &str {
        // The bytes are base62 ASCII by construction (`from_bytes` checks), so this is UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The raw id bytes, as stored in snapshots.
    pub(crate) fn to_bytes(self) -> [u8; ID_LEN] {
        self.0
    }

    /// An id from stored bytes, if they are base62.
    pub(crate) fn from_bytes(bytes: [u8; ID_LEN]) -> Option<TokenId> {
        bytes
            .iter()
            .all(|&b| DIGIT[b as usize] != INVALID)
            .then_some(TokenId(bytes))
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({})", self.as_str())
    }
}

/// The error of parsing a [`TokenId`] from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a token id: expected {ID_LEN} characters from 0-9, A-Z, a-z (the part after `tc_` in a token)")]
pub struct ParseIdError;

impl FromStr for TokenId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes: [u8; ID_LEN] = s.as_bytes().try_into().map_err(|_| ParseIdError)?;
        TokenId::from_bytes(bytes).ok_or(ParseIdError)
    }
}

/// The prefixes a store accepts: the default `tc`, and every prefix it recorded. Append
/// only, so a reader needs no lock: each slot is set once (by the persister, or while
/// loading) and read with one load.
#[derive(Default)]
pub(crate) struct Prefixes {
    /// Boxed: the slots are 24 bytes each, and a map holding them inline makes every value
    /// holding a map (a `StoreView`) large.
    slots: Box<[std::sync::OnceLock<Box<str>>; MAX_PREFIXES]>,
}

impl Prefixes {
    /// Whether tokens with this prefix (the bytes before the `_` that precedes the id)
    /// are accepted.
    #[inline]
    pub(crate) fn contains(&self, prefix: &[u8]) -> bool {
        prefix == DEFAULT_PREFIX.as_bytes()
            || self
                .slots
                .iter()
                .map_while(|slot| slot.get())
                .any(|p| p.as_bytes() == prefix)
    }

    /// Accepts `prefix` from now on; `Ok(true)` if it is new. Refused if it is not a
    /// prefix ([`check_prefix`]) or the store already records [`MAX_PREFIXES`].
    pub(crate) fn add(&self, prefix: &str) -> Result<bool, String> {
        check_prefix(prefix)?;
        if self.contains(prefix.as_bytes()) {
            return Ok(false);
        }
        for slot in self.slots.iter() {
            // Only one thread adds (the persister, or the opening one), so a slot found
            // empty stays free for this `set`.
            if slot.get().is_none() {
                return Ok(slot.set(prefix.into()).is_ok());
            }
        }
        Err(format!(
            "the store already records {MAX_PREFIXES} prefixes, the most it keeps; reuse one of them"
        ))
    }

    /// The recorded prefixes, in the order they were added (the default is not recorded).
    pub(crate) fn recorded(&self) -> Vec<&str> {
        self.slots
            .iter()
            .map_while(|slot| slot.get())
            .map(|p| &**p)
            .filter(|&p| p != DEFAULT_PREFIX)
            .collect()
    }
}

/// Whether `prefix` can prefix tokens: 1 to 16 ASCII letters, digits or underscores. The
/// error says what is wrong.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), String> {
    let fits = (1..=MAX_PREFIX_LEN).contains(&prefix.len());
    if !fits
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(format!(
            "prefix {prefix:?} must be 1 to {MAX_PREFIX_LEN} ASCII letters, digits or underscores"
        ));
    }
    Ok(())
}

/// Checks a candidate token's shape, prefix and checksum and returns its id, without
/// allocating.
///
/// The length is checked first, so a megabyte-long string costs one comparison; the
/// prefix next, so a token of another product or environment costs a few more.
#[inline]
pub(crate) fn parse(token: &str, prefixes: &Prefixes) -> Option<TokenId> {
    let bytes = token.as_bytes();
    let len = bytes.len();
    // The default prefix on its own path: with the length and offsets constants (an
    // array), the compiler drops the bounds checks and unrolls the loops.
    if let Ok(fixed) = <&[u8; DEFAULT_PREFIX.len() + TAIL_LEN]>::try_from(bytes) {
        if fixed.starts_with(DEFAULT_PREFIX.as_bytes()) {
            return parse_tail(fixed, DEFAULT_PREFIX.len());
        }
    }
    if !(TAIL_LEN + 1..=TAIL_LEN + MAX_PREFIX_LEN).contains(&len)
        || !prefixes.contains(&bytes[..len - TAIL_LEN])
    {
        return None;
    }
    parse_tail(bytes, len - TAIL_LEN)
}

/// The checks after the prefix, which takes the first `prefix_len` bytes (the caller
/// checked it and that `bytes` is `prefix_len + TAIL_LEN` long).
#[inline(always)]
fn parse_tail(bytes: &[u8], prefix_len: usize) -> Option<TokenId> {
    let id_start = prefix_len + 1;
    let separator_at = id_start + ID_LEN;
    let secret_start = separator_at + 1;
    let checksum_start = secret_start + SECRET_LEN;
    if bytes[prefix_len] != b'_' || bytes[separator_at] != b'_' {
        return None;
    }
    // OR of every digit value, no branch per byte: valid digits are below 62, so the
    // high bit is set only by an `INVALID` byte.
    let digits = |range: std::ops::Range<usize>| {
        bytes[range]
            .iter()
            .fold(0, |acc, &b| acc | DIGIT[b as usize])
    };
    if (digits(id_start..separator_at) | digits(secret_start..bytes.len())) & INVALID_BIT != 0 {
        return None;
    }
    let expected = decode_checksum(&bytes[checksum_start..])?;
    if crc32fast::hash(&bytes[..checksum_start]) != expected {
        return None;
    }
    let mut id = [0; ID_LEN];
    id.copy_from_slice(&bytes[id_start..separator_at]);
    Some(TokenId(id))
}

/// The SHA-256 digest under which a token is stored.
pub(crate) fn digest(token: &str) -> Digest {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh random token under `prefix` (one [`check_prefix`] accepts) and its id, from
/// the OS CSPRNG.
pub(crate) fn generate(prefix: &str) -> Result<(String, TokenId), getrandom::Error> {
    let mut text = [0u8; MAX_PREFIX_LEN + TAIL_LEN];
    let len = prefix.len() + TAIL_LEN;
    let id_start = prefix.len() + 1;
    let separator_at = id_start + ID_LEN;
    let checksum_start = separator_at + 1 + SECRET_LEN;
    text[..prefix.len()].copy_from_slice(prefix.as_bytes());
    text[prefix.len()] = b'_';
    fill_base62(&mut text[id_start..separator_at])?;
    text[separator_at] = b'_';
    fill_base62(&mut text[separator_at + 1..checksum_start])?;
    let checksum = crc32fast::hash(&text[..checksum_start]);
    encode_checksum(checksum, &mut text[checksum_start..len]);
    let mut id = [0; ID_LEN];
    id.copy_from_slice(&text[id_start..separator_at]);
    let token: String = text[..len].iter().map(|&b| char::from(b)).collect();
    Ok((token, TokenId(id)))
}

/// A fresh random id (for an imported key, which brings none), from the OS CSPRNG.
pub(crate) fn generate_id() -> Result<TokenId, getrandom::Error> {
    let mut id = [0; ID_LEN];
    fill_base62(&mut id)?;
    Ok(TokenId(id))
}

/// Fills `out` with uniformly random base62 characters (rejection sampling: bytes ≥ 248
/// are dropped so that `b % 62` carries no bias).
fn fill_base62(out: &mut [u8]) -> Result<(), getrandom::Error> {
    let mut filled = 0;
    let mut random = [0u8; 64];
    while filled < out.len() {
        getrandom::fill(&mut random)?;
        for &b in random.iter().filter(|&&b| b < 248) {
            if filled == out.len() {
                break;
            }
            out[filled] = ALPHABET[(b % 62) as usize];
            filled += 1;
        }
    }
    Ok(())
}

fn encode_checksum(mut value: u32, out: &mut [u8]) {
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
}

/// The checksum's value, or `None` if a digit is invalid or the value overflows a `u32`
/// (so that two spellings never decode to the same checksum).
fn decode_checksum(text: &[u8]) -> Option<u32> {
    let mut value: u64 = 0;
    for &b in text {
        let digit = DIGIT[b as usize];
        if digit == INVALID {
            return None;
        }
        value = value * 62 + u64::from(digit);
    }
    u32::try_from(value).ok()
}

/// A newly issued token: the only value that ever holds a secret.
///
/// Show [`secret`](Self::secret) to its owner once; the store keeps only a digest and cannot
/// show it again. `Debug` prints the id only.
pub struct IssuedToken {
    pub(crate) secret: String,
    pub(crate) id: TokenId,
}

impl IssuedToken {
    /// The full token to hand to the client, e.g. `tc_a1B2c3D4_...`.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The token's public id.
    pub fn id(&self) -> TokenId {
        self.id
    }
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHECKSUM_START: usize = TOKEN_LEN - CHECKSUM_LEN;
    const SECRET_START: usize = CHECKSUM_START - SECRET_LEN;

    /// Parses with the default prefixes only.
    fn parse_tc(token: &str) -> Option<TokenId> {
        parse(token, &Prefixes::default())
    }

    #[test]
    fn a_recorded_prefix_is_accepted_and_any_other_refused() {
        let prefixes = Prefixes::default();
        let (token, id) = generate("sk_live").unwrap();
        assert!(token.starts_with("sk_live_") && token.len() == 7 + TAIL_LEN);
        assert_eq!(parse(&token, &prefixes), None, "not recorded yet");
        assert_eq!(prefixes.add("sk_live"), Ok(true));
        assert_eq!(prefixes.add("sk_live"), Ok(false));
        assert_eq!(parse(&token, &prefixes), Some(id));
        let (old, old_id) = generate(DEFAULT_PREFIX).unwrap();
        assert_eq!(
            parse(&old, &prefixes),
            Some(old_id),
            "tc is always accepted"
        );
        let other = format!("sk_test{}", &token[7..]);
        assert_eq!(parse(&other, &prefixes), None, "another prefix, same tail");
        assert_eq!(prefixes.recorded(), ["sk_live"]);
        let longest = "p".repeat(MAX_PREFIX_LEN);
        let (long, long_id) = generate(&longest).unwrap();
        prefixes.add(&longest).unwrap();
        assert_eq!(parse(&long, &prefixes), Some(long_id));
    }

    #[test]
    fn prefixes_are_short_and_plain() {
        for good in ["tc", "sk_live", "ghp", "A1_", &"x".repeat(MAX_PREFIX_LEN)] {
            assert!(check_prefix(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "sk-live",
            "sk live",
            "é",
            &"x".repeat(MAX_PREFIX_LEN + 1),
        ] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
        let prefixes = Prefixes::default();
        for n in 0..MAX_PREFIXES {
            prefixes.add(&format!("p{n}")).unwrap();
        }
        assert!(prefixes.add("onemore").is_err());
        assert!(prefixes.contains(b"p0") && prefixes.contains(b"tc"));
    }

    #[test]
    fn every_single_character_change_of_a_prefixed_token_is_refused() {
        let prefixes = Prefixes::default();
        prefixes.add("sk_live").unwrap();
        let (token, _) = generate("sk_live").unwrap();
        for (_, mutated) in single_character_changes(&token) {
            assert_eq!(parse(&mutated, &prefixes), None, "accepted {mutated}");
        }
    }

    /// Every string that differs from `token` in one character (a base62 one, or one of
    /// `_-. `), with the position changed.
    fn single_character_changes(token: &str) -> impl Iterator<Item = (usize, String)> + '_ {
        (0..token.len()).flat_map(move |pos| {
            ALPHABET
                .iter()
                .chain(b"_-. ")
                .filter(move |&&replacement| token.as_bytes()[pos] != replacement)
                .map(move |&replacement| {
                    let mut bytes = token.as_bytes().to_vec();
                    bytes[pos] = replacement;
                    (pos, String::from_utf8(bytes).unwrap())
                })
        })
    }

    #[test]
    fn generated_tokens_parse_to_their_id() {
        for _ in 0..1000 {
            let (token, id) = generate(DEFAULT_PREFIX).unwrap();
            assert_eq!(token.len(), TOKEN_LEN);
            assert!(token.starts_with(PREFIX));
            assert_eq!(parse_tc(&token), Some(id));
            assert_eq!(id.as_str().parse::<TokenId>(), Ok(id));
        }
    }

    #[test]
    fn every_single_character_change_is_refused() {
        let (token, _) = generate(DEFAULT_PREFIX).unwrap();
        let mut changed = 0;
        for (pos, mutated) in single_character_changes(&token) {
            assert_eq!(
                parse_tc(&mutated),
                None,
                "accepted {mutated} (position {pos})"
            );
            changed += 1;
        }
        assert!(changed > 40 * 60);
    }

    #[test]
    fn checksum_overflowing_u32_is_refused() {
        assert_eq!(decode_checksum(b"zzzzzz"), None);
        assert_eq!(decode_checksum(b"4gfFC3"), Some(u32::MAX));
        let mut out = [0; 6];
        encode_checksum(u32::MAX, &mut out);
        assert_eq!(&out, b"4gfFC3");
    }

    #[test]
    fn ids_reject_non_base62_and_wrong_lengths() {
        for bad in ["", "abc", "abcdefgh1", "abcd-fgh", "abcdéfg", "tc_abcdefgh"] {
            assert_eq!(bad.parse::<TokenId>(), Err(ParseIdError), "{bad:?}");
        }
    }

    #[test]
    fn issued_token_debug_hides_the_secret() {
        let (secret, id) = generate(DEFAULT_PREFIX).unwrap();
        let issued = IssuedToken {
            secret: secret.clone(),
            id,
        };
        let shown = format!("{issued:?}");
        assert!(!shown.contains(&secret[SECRET_START..CHECKSUM_START]));
        assert!(shown.contains(id.as_str()));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_string_parses_without_panicking(candidate in any::<String>()) {
                if parse_tc(&candidate).is_some() {
                    // Only a well-formed token with a correct checksum gets through.
                    let bytes = candidate.as_bytes();
                    prop_assert_eq!(bytes.len(), TOKEN_LEN);
                    prop_assert!(candidate.starts_with(PREFIX));
                    let mut expected = [0u8; CHECKSUM_LEN];
                    encode_checksum(crc32fast::hash(&bytes[..CHECKSUM_START]), &mut expected);
                    prop_assert_eq!(&bytes[CHECKSUM_START..], &expected[..]);
                }
            }

            #[test]
            fn token_shaped_strings_parse_only_with_their_checksum(
                body in "[0-9A-Za-z]{8}_[0-9A-Za-z]{22}[0-9A-Za-z]{6}",
            ) {
                let candidate = format!("{PREFIX}{body}");
                let bytes = candidate.as_bytes();
                let mut expected = [0u8; CHECKSUM_LEN];
                encode_checksum(crc32fast::hash(&bytes[..CHECKSUM_START]), &mut expected);
                let good = bytes[CHECKSUM_START..] == expected;
                prop_assert_eq!(parse_tc(&candidate).is_some(), good);
            }

            #[test]
            fn generated_tokens_round_trip(_n in 0..64u8) {
                let (token, id) = generate(DEFAULT_PREFIX).unwrap();
                prop_assert_eq!(parse_tc(&token), Some(id));
                prop_assert_eq!(token.parse::<TokenId>().ok(), None);
                prop_assert_eq!(id.as_str().parse::<TokenId>(), Ok(id));
            }
        }
    }
}
