//! Hostile input: strings that are not tokens, and files that are not (intact) stores.
//! Every one gets a clear answer; nothing panics and nothing stored is changed (every test
//! of a refused store file is here; a refused journal: `journal`).

use crate::common;

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

/// A journal header (as the store writes it) whose first record will be `base + 1`.
fn journal_header(base: u64) -> Vec<u8> {
    let mut header = b"\x89TKJ\r\n\x1a\n".to_vec();
    header.extend_from_slice(&1u32.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&base.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    let crc = crc32fast::hash(&header);
    header.extend_from_slice(&crc.to_le_bytes());
    header
}

/// A store file (the current version, checksummed) holding no token and covering journal
/// records up to `seq`: bincode's varints, `written_at` 0, `seq` as `253` and 8 bytes,
/// then six empty lists.
fn snapshot_with_seq(seq: u64) -> Vec<u8> {
    let mut body = vec![0, 253];
    body.extend_from_slice(&seq.to_le_bytes());
    // No records, extras, owner limits, prefixes, credits or usage counts.
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    tokencache::__fuzz::frame_body(&body)
}

/// Writes `files` (name, bytes) beside a store in a fresh directory, private.
fn plant(files: &[(&str, &[u8])]) -> common::Scratch {
    use std::os::unix::fs::PermissionsExt;
    let s = scratch();
    for (name, bytes) in files {
        let path = s.dir.path().join(name);
        fs::write(&path, bytes).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    }
    s
}

/// A sequence number near `u64::MAX` in a checksummed file (a snapshot's `seq`, a
/// journal's `base`) leaves no room for the next record: `open`, `inspect` and
/// `StoreView::read` refuse it, naming the file, and nothing panics (in a debug build an
/// overflow would) or wraps around (in a release build later records would be skipped).
#[test]
fn a_sequence_number_near_u64_max_is_refused_naming_the_file() {
    let a_record_after = |base: u64| {
        // One `Delete` of an id nobody has, as record `base + 1` (wrapping: as a hostile
        // file would give it).
        let mut journal = journal_header(base);
        let payload = [1u8, 2, b'a', b'b', b'c', b'd', b'1', b'2', b'3', b'4'];
        let framed = tokencache::__fuzz::frame_journal_record(&payload);
        let mut record = framed[32..].to_vec();
        record[8..16].copy_from_slice(&base.wrapping_add(1).to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&record[..4]);
        crc.update(&record[8..]);
        record[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
        journal.extend_from_slice(&record);
        journal
    };
    // (what, store file, journal, the file the error must name)
    type Case = (&'static str, Vec<u8>, Option<Vec<u8>>, &'static str);
    let cases: Vec<Case> = vec![
        (
            "snapshot seq u64::MAX",
            snapshot_with_seq(u64::MAX),
            None,
            "tokens.snap",
        ),
        (
            "snapshot seq u64::MAX - 1, journal base u64::MAX - 1 with a record",
            snapshot_with_seq(u64::MAX - 1),
            Some(a_record_after(u64::MAX - 1)),
            "tokens.snap",
        ),
        (
            "snapshot seq 2^63, no record",
            snapshot_with_seq(1 << 63),
            Some(journal_header(1 << 63)),
            "tokens.snap",
        ),
        (
            "journal base u64::MAX - 1",
            snapshot_with_seq(5),
            Some(a_record_after(u64::MAX - 1)),
            "tokens.snap.journal",
        ),
        (
            "journal base u64::MAX",
            snapshot_with_seq(5),
            Some(a_record_after(u64::MAX)),
            "tokens.snap.journal",
        ),
    ];
    for (what, snapshot, journal, named) in cases {
        let mut files = vec![("tokens.snap", &snapshot[..])];
        if let Some(journal) = &journal {
            files.push(("tokens.snap.journal", &journal[..]));
        }
        let s = plant(&files);
        let named = s.dir.path().join(named);
        let errors = [
            TokenStore::open(&s.path).err(),
            tokencache::inspect(&s.path).err(),
            tokencache::StoreView::read(&s.path).err(),
        ];
        for error in errors {
            let error = error.unwrap_or_else(|| panic!("{what}: accepted"));
            let message = error.to_string();
            assert!(matches!(error, Error::Corrupt { .. }), "{what}: {message}");
            assert!(
                message.contains(&format!("{} cannot be used", named.display())),
                "{what}: {message}"
            );
            assert!(message.contains("2^63"), "{what}: {message}");
        }
        assert_eq!(fs::read(&s.path).unwrap(), snapshot, "{what}");
    }
    // The fuzz entry point (the journal alone, replayed onto nothing) refuses it too.
    let error = tokencache::__fuzz::check_journal(&a_record_after(u64::MAX)).unwrap_err();
    assert!(error.contains("SeqTooLarge"), "{error}");
    // And one below the largest allowed (2^63 - 1) still opens and takes a change, which
    // gets the largest.
    let s = plant(&[("tokens.snap", &snapshot_with_seq(u64::MAX / 2 - 1))]);
    let store = TokenStore::open(&s.path).unwrap();
    store.issue(NewToken::new("after")).unwrap();
    store.close().unwrap();
    assert_eq!(TokenStore::open(&s.path).unwrap().list().len(), 1);
}

/// A valid store file holding one token, and that token.
fn one_token_snapshot() -> (Vec<u8>, String) {
    let s = scratch();
    let store = TokenStore::open(&s.path).unwrap();
    let secret = store
        .issue(NewToken::new("bot"))
        .unwrap()
        .secret()
        .to_string();
    store.close().unwrap();
    (fs::read(&s.path).unwrap(), secret)
}

fn assert_refused_untouched(bytes: &[u8], expect: &str) {
    let s = scratch();
    fs::write(&s.path, bytes).unwrap();
    for _ in 0..2 {
        // Twice: a refused open must also release the lock.
        let err = TokenStore::open(&s.path).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(s.path.to_str().unwrap()),
            "does not name the file: {message}"
        );
        assert!(
            message.contains(expect),
            "{message:?} does not say {expect:?}"
        );
        assert_eq!(fs::read(&s.path).unwrap(), bytes, "the file was changed");
    }
}

#[test]
fn damaged_foreign_and_future_files_are_refused_and_untouched() {
    let (image, _) = one_token_snapshot();
    assert_refused_untouched(&image[..image.len() - 1], "truncated");
    assert_refused_untouched(&image[..10], "truncated");
    let mut flipped = image.clone();
    *flipped.last_mut().unwrap() ^= 0x40;
    assert_refused_untouched(&flipped, "damaged");
    assert_refused_untouched(b"{\"tokens\": {}}\n", "not a tokencache store");
    assert_refused_untouched(b"", "truncated");

    let mut future = image.clone();
    future[8..12].copy_from_slice(&7u32.to_le_bytes());
    let crc = crc32fast::hash(&future[..28]);
    future[28..32].copy_from_slice(&crc.to_le_bytes());
    let s = scratch();
    fs::write(&s.path, &future).unwrap();
    let err = TokenStore::open(&s.path).unwrap_err();
    assert!(
        matches!(
            err,
            Error::FutureVersion {
                found: 7,
                supported: tokencache::FORMAT_VERSION,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade"));
    assert_eq!(fs::read(&s.path).unwrap(), future);
}

/// A store that `open` refuses keeps everything beside it, its own leftover temp files
/// included: nothing is removed before the store file was read and checked.
#[test]
fn a_refused_store_loses_no_file_beside_it() {
    let s = scratch();
    TokenStore::open(&s.path).unwrap().close().unwrap();
    let mut image = fs::read(&s.path).unwrap();
    let last = image.len() - 1;
    image[last] ^= 0xff;
    fs::write(&s.path, &image).unwrap();
    let temp = s.dir.path().join(".tokens.snap.tcA1b2C3d4.tmp");
    fs::write(&temp, &image[..10]).unwrap();
    let error = TokenStore::open(&s.path).unwrap_err();
    assert!(matches!(error, Error::Corrupt { .. }), "{error}");
    assert_eq!(fs::read(&temp).unwrap(), &image[..10]);
    assert_eq!(fs::read(&s.path).unwrap(), image);
}
