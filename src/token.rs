//! The token format: `tc_<id>_<secret><checksum>`, and the only type that holds a secret.
//!
//! A token is 40 ASCII characters: the prefix `tc_`, an 8-character public id (base62, the
//! lookup key shown in logs and lists), `_`, a 22-character base62 secret (≥ 130 bits from
//! the OS CSPRNG), and a 6-character base62 CRC32 of everything before it. The checksum lets
//! [`parse`] refuse a mistyped or random string before any map lookup (the way GitHub's
//! `ghp_` tokens carry one for secret scanners): CRC32 detects every single-character change.
//! Only the SHA-256 digest of the whole token is ever stored.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// Every token starts with this.
pub const PREFIX: &str = "tc_";
const ID_LEN: usize = 8;
const SECRET_LEN: usize = 22;
const CHECKSUM_LEN: usize = 6;
const ID_START: usize = PREFIX.len();
const SEPARATOR_AT: usize = ID_START + ID_LEN;
const SECRET_START: usize = SEPARATOR_AT + 1;
const CHECKSUM_START: usize = SECRET_START + SECRET_LEN;
/// The length of every token, in bytes.
pub const TOKEN_LEN: usize = CHECKSUM_START + CHECKSUM_LEN;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `DIGIT[b]` is the base62 value of byte `b`, or `INVALID`.
const INVALID: u8 = 0xFF;
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

/// Checks a candidate token's shape and checksum and returns its id, without allocating.
///
/// The length is checked first, so a megabyte-long string costs one comparison.
pub(crate) fn parse(token: &str) -> Option<TokenId> {
    let bytes = token.as_bytes();
    if bytes.len() != TOKEN_LEN
        || &bytes[..ID_START] != PREFIX.as_bytes()
        || bytes[SEPARATOR_AT] != b'_'
    {
        return None;
    }
    let base62 =
        |range: std::ops::Range<usize>| bytes[range].iter().all(|&b| DIGIT[b as usize] != INVALID);
    if !base62(ID_START..SEPARATOR_AT) || !base62(SECRET_START..TOKEN_LEN) {
        return None;
    }
    let expected = decode_checksum(&bytes[CHECKSUM_START..])?;
    if crc32fast::hash(&bytes[..CHECKSUM_START]) != expected {
        return None;
    }
    let mut id = [0; ID_LEN];
    id.copy_from_slice(&bytes[ID_START..SEPARATOR_AT]);
    Some(TokenId(id))
}

/// The SHA-256 digest under which a token is stored.
pub(crate) fn digest(token: &str) -> Digest {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh random token and its id, from the OS CSPRNG.
pub(crate) fn generate() -> Result<(String, TokenId), getrandom::Error> {
    let mut text = [0u8; TOKEN_LEN];
    text[..ID_START].copy_from_slice(PREFIX.as_bytes());
    fill_base62(&mut text[ID_START..SEPARATOR_AT])?;
    text[SEPARATOR_AT] = b'_';
    fill_base62(&mut text[SECRET_START..CHECKSUM_START])?;
    let checksum = crc32fast::hash(&text[..CHECKSUM_START]);
    encode_checksum(checksum, &mut text[CHECKSUM_START..]);
    let mut id = [0; ID_LEN];
    id.copy_from_slice(&text[ID_START..SEPARATOR_AT]);
    let token: String = text.iter().map(|&b| char::from(b)).collect();
    Ok((token, TokenId(id)))
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

    #[test]
    fn generated_tokens_parse_to_their_id() {
        for _ in 0..1000 {
            let (token, id) = generate().unwrap();
            assert_eq!(token.len(), TOKEN_LEN);
            assert!(token.starts_with(PREFIX));
            assert_eq!(parse(&token), Some(id));
            assert_eq!(id.as_str().parse::<TokenId>(), Ok(id));
        }
    }

    #[test]
    fn every_single_character_change_is_refused() {
        let (token, _) = generate().unwrap();
        let mut changed = 0;
        for pos in 0..token.len() {
            for &replacement in ALPHABET.iter().chain(b"_-. ") {
                let mut bytes = token.clone().into_bytes();
                if bytes[pos] == replacement {
                    continue;
                }
                bytes[pos] = replacement;
                let mutated = String::from_utf8(bytes).unwrap();
                assert_eq!(parse(&mutated), None, "accepted {mutated} (position {pos})");
                changed += 1;
            }
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
        let (secret, id) = generate().unwrap();
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
                if parse(&candidate).is_some() {
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
                prop_assert_eq!(parse(&candidate).is_some(), good);
            }

            #[test]
            fn generated_tokens_round_trip(_n in 0..64u8) {
                let (token, id) = generate().unwrap();
                prop_assert_eq!(parse(&token), Some(id));
                prop_assert_eq!(token.parse::<TokenId>().ok(), None);
                prop_assert_eq!(id.as_str().parse::<TokenId>(), Ok(id));
            }
        }
    }
}
