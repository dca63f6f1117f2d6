//! Hostile input: strings that are not tokens, and files that are not (intact) stores.
//! Every one gets a clear answer; nothing panics and nothing stored is changed.

mod common;

use std::fs;

use common::{manual_store, scratch};
use tokencache::{Error, NewToken, Rejection, TokenStore, TOKEN_LEN};

fn refused(store: &TokenStore, candidate: &str) -> Rejection {
    match store.validate(candidate) {
        Ok(token) => panic!("accepted {candidate:?} as {}", token.id()),
        Err(rejection) => rejection,
    }
}

/// Strings that are not tokens are `Malformed` (or, shaped right with a valid checksum,
/// `Unknown`), and none panics.
#[test]
fn hostile_token_strings_are_malformed_or_unknown() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let good = store.issue(NewToken::new("good")).unwrap();
    let secret = good.secret();
    let megabyte = "a".repeat(1 << 20);
    let hostile = [
        String::new(),
        " ".into(),
        "\t\n\r ".into(),
        " ".repeat(TOKEN_LEN),
        "\0".into(),
        "\0".repeat(TOKEN_LEN),
        format!("{secret}\0"),
        format!("\0{}", &secret[1..]),
        megabyte.clone(),
        format!("{secret}{megabyte}"),
        format!("tc_{}", "A".repeat(TOKEN_LEN - 3)),
        format!("TC_{}", &secret[3..]),
        format!("gh_{}", &secret[3..]),
        format!("ghp_{}", &secret[4..]),
        format!("tc_{}", "garbage"),
        format!("{}$", &secret[..TOKEN_LEN - 1]),
        secret[..TOKEN_LEN - 1].into(),
        format!("{secret}x"),
        format!(" {secret}"),
        format!("{secret} "),
        format!("Bearer {secret}"),
        secret.to_uppercase(),
        secret.to_lowercase(),
        // Unicode look-alikes: Cyrillic а/о/с and a fullwidth digit for their ASCII twins.
        secret.replacen('a', "\u{430}", 1),
        secret.replacen('o', "\u{43E}", 1),
        secret.replacen('c', "\u{441}", 1),
        secret.replacen('1', "\u{FF11}", 1),
        secret.replacen('_', "\u{FF3F}", 1),
        // Bidirectional and invisible marks.
        format!("\u{200F}{secret}"),
        format!("{}\u{202E}{}", &secret[..10], &secret[10..]),
        format!("{}\u{200B}{}", &secret[..20], &secret[20..]),
        format!("\u{FEFF}{secret}"),
        format!("{}\u{301}", &secret[..TOKEN_LEN - 1]),
    ];
    for candidate in &hostile {
        if candidate == secret {
            continue; // a replacen that found nothing to replace
        }
        let rejection = refused(&store, candidate);
        assert_eq!(rejection, Rejection::Malformed, "{candidate:?}");
    }
    assert!(store.validate(secret).is_ok());
}

/// Every single-character substitution of a valid token, by every byte value that keeps the
/// string UTF-8 and by a sample of multi-byte characters, is refused. CRC32 detects every
/// single-character change, so all of them are `Malformed`: none reaches the map.
#[test]
fn every_single_character_mutation_is_refused() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let good = store.issue(NewToken::new("good")).unwrap();
    let secret = good.secret();
    let replacements: Vec<char> = (0u8..=127)
        .map(char::from)
        .chain([
            '\u{80}',
            '\u{A0}',
            '\u{430}',
            '\u{200F}',
            '\u{FF10}',
            '\u{1F600}',
        ])
        .collect();
    let mut tried = 0;
    for at in 0..TOKEN_LEN {
        for &c in &replacements {
            if secret.as_bytes()[at] == c as u8 && c.is_ascii() {
                continue;
            }
            let mut mutated = String::with_capacity(TOKEN_LEN + 4);
            mutated.push_str(&secret[..at]);
            mutated.push(c);
            mutated.push_str(&secret[at + 1..]);
            assert_eq!(
                refused(&store, &mutated),
                Rejection::Malformed,
                "{mutated:?}"
            );
            tried += 1;
        }
        // Deletion and duplication of this character.
        let deleted = format!("{}{}", &secret[..at], &secret[at + 1..]);
        assert_eq!(refused(&store, &deleted), Rejection::Malformed);
        let doubled = format!("{}{}", &secret[..=at], &secret[at..]);
        assert_eq!(refused(&store, &doubled), Rejection::Malformed);
    }
    assert_eq!(tried, TOKEN_LEN * (replacements.len() - 1));
    let stats = store.stats();
    assert_eq!(stats.rejections.malformed, (tried + 2 * TOKEN_LEN) as u64);
    assert_eq!(stats.rejections.unknown, 0);
    assert!(store.validate(secret).is_ok());
}

/// A real snapshot with a few tokens (one revoked, one rate-limited, one used).
fn real_snapshot() -> Vec<u8> {
    let s = scratch();
    let (store, clock) = manual_store(&s.path);
    let a = store
        .issue(NewToken::new("a").scopes(["read", "write"]))
        .unwrap();
    let b = store.issue(NewToken::new("b")).unwrap();
    store
        .issue(NewToken::new("c").rate_limit(tokencache::RateLimit::per_minute(60)))
        .unwrap();
    store.revoke(&b.id()).unwrap();
    clock.advance(common::INTERVAL);
    store.validate(a.secret()).unwrap();
    store.close().unwrap();
    fs::read(&s.path).unwrap()
}

/// Opens `bytes` as a store file and expects a refusal that names the file and says what
/// is wrong, with the file left exactly as it was.
fn assert_refused(path: &std::path::Path, bytes: &[u8], what: &str) {
    fs::write(path, bytes).unwrap();
    let err = match TokenStore::open(path) {
        Ok(_) => panic!("{what}: opened"),
        Err(e) => e,
    };
    let message = err.to_string();
    assert!(
        matches!(err, Error::Corrupt { .. } | Error::FutureVersion { .. }),
        "{what}: {message}"
    );
    assert!(
        message.contains(path.to_str().unwrap()),
        "{what}: {message}"
    );
    assert_eq!(
        fs::read(path).unwrap(),
        bytes,
        "{what}: the file was changed"
    );
}

#[test]
fn every_truncation_of_a_real_snapshot_is_refused_untouched() {
    let image = real_snapshot();
    let s = scratch();
    for len in 0..image.len() {
        assert_refused(&s.path, &image[..len], &format!("truncated to {len}"));
    }
    let mut longer = image.clone();
    longer.push(0);
    assert_refused(&s.path, &longer, "one byte appended");
}

#[test]
fn bit_flips_in_a_real_snapshot_are_refused_untouched() {
    let image = real_snapshot();
    let s = scratch();
    // Every bit of the 32-byte header, then every 7th bit of the body.
    let bits = (0..32 * 8).chain((32 * 8..image.len() * 8).step_by(7));
    let mut flips = 0;
    for bit in bits {
        let mut flipped = image.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert_refused(&s.path, &flipped, &format!("bit {bit} flipped"));
        flips += 1;
    }
    assert!(flips > 256);
    // And the intact image still opens.
    fs::write(&s.path, &image).unwrap();
    assert_eq!(TokenStore::open(&s.path).unwrap().list().len(), 3);
}

#[test]
fn foreign_files_are_refused_untouched() {
    let s = scratch();
    for (bytes, what) in [
        (&b"{\"tokens\": []}"[..], "JSON"),
        (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "PNG"),
        (b"SQLite format 3\0", "SQLite"),
        (&[0u8; 4096][..], "zeros"),
        (b"\x89TKC\r\n\x1a\n", "magic only"),
    ] {
        assert_refused(&s.path, bytes, what);
    }
}

/// The checks `open` runs are also exposed (hidden) for the fuzz targets; they agree.
#[test]
fn the_fuzz_entry_points_agree_with_open() {
    let image = real_snapshot();
    assert_eq!(tokencache::__fuzz::check_snapshot(&image), Ok(3));
    assert!(tokencache::__fuzz::check_snapshot(&image[..40]).is_err());
    assert!(tokencache::__fuzz::parse_token("tc_").is_none());
}
