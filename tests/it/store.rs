//! The store's promises, tested on real files with a manual clock (no timing assertions).

use crate::common;

use std::fs;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{manual_store, scratch, INTERVAL};
use tokencache::{Clock, Error, NewToken, Rejection, TokenId, TokenStore};

#[test]
fn issue_validate_revoke_reopen_round_trip() {
    let s = scratch();
    let (store, clock) = manual_store(&s.path);
    let kept = store
        .issue(NewToken::new("ci-bot").scopes(["read", "write"]))
        .unwrap();
    let revoked = store.issue(NewToken::new("old-bot")).unwrap();
    let token = store.validate(kept.secret()).unwrap();
    assert_eq!(token.id(), kept.id());
    assert_eq!(token.name(), "ci-bot");
    assert!(token.has_scope("read") && token.has_scope("write") && !token.has_scope("admin"));
    drop(token);
    store.revoke(&revoked.id()).unwrap();
    let used_at = clock.now_ms();
    store.close().unwrap();

    let (store, _clock) = manual_store(&s.path);
    assert_eq!(store.list().len(), 2);
    assert!(store.validate(kept.secret()).is_ok());
    assert_eq!(
        store.validate(revoked.secret()).unwrap_err(),
        Rejection::Revoked
    );
    let info = store.get(&kept.id()).unwrap();
    assert_eq!(info.name, "ci-bot");
    assert_eq!(info.scopes, ["read", "write"]);
    assert_eq!(info.last_used.unwrap().timestamp_millis() as u64, used_at);
    assert!(store.get(&revoked.id()).unwrap().revoked_at.is_some());
}

#[test]
fn every_rejection_reason() {
    let s = scratch();
    let (store, clock) = manual_store(&s.path);
    let reader = store.issue(NewToken::new("reader").scope("read")).unwrap();
    let brief = store
        .issue(NewToken::new("brief").expires_in(Duration::from_secs(10)))
        .unwrap();
    let gone = store.issue(NewToken::new("gone")).unwrap();
    store.revoke(&gone.id()).unwrap();

    assert_eq!(store.validate("").unwrap_err(), Rejection::Malformed);
    assert_eq!(
        store.validate("tc_nonsense").unwrap_err(),
        Rejection::Malformed
    );
    // A well-formed token with a valid checksum whose id is unknown.
    let stranger = {
        let other = scratch();
        let (other_store, _) = manual_store(&other.path);
        other_store
            .issue(NewToken::new("elsewhere"))
            .unwrap()
            .secret()
            .to_string()
    };
    assert_eq!(store.validate(&stranger).unwrap_err(), Rejection::Unknown);
    assert_eq!(
        store.validate(gone.secret()).unwrap_err(),
        Rejection::Revoked
    );
    assert_eq!(
        store.validate_scope(reader.secret(), "write").unwrap_err(),
        Rejection::MissingScope
    );
    assert!(store.validate_scope(reader.secret(), "read").is_ok());
    assert!(store.validate(brief.secret()).is_ok());
    clock.advance(Duration::from_secs(10));
    assert_eq!(
        store.validate(brief.secret()).unwrap_err(),
        Rejection::Expired
    );

    let stats = store.stats();
    assert_eq!(stats.rejections.malformed, 2);
    assert_eq!(stats.rejections.unknown, 1);
    assert_eq!(stats.rejections.revoked, 1);
    assert_eq!(stats.rejections.missing_scope, 1);
    assert_eq!(stats.rejections.expired, 1);
    assert_eq!(stats.validations, 2);
}

#[test]
fn wrong_secret_for_a_known_id_is_unknown() {
    let s = scratch();
    let (store, _) = manual_store(&s.path);
    let issued = store.issue(NewToken::new("bot")).unwrap();
    // Forge a token with the real id, another secret and a correct checksum.
    let forged = {
        let mut text = issued.secret()[..12].to_string();
        text.push_str("AAAAAAAAAAAAAAAAAAAAAA");
        let crc = crc32(text.as_bytes());
        text.push_str(&base62_6(crc));
        text
    };
    assert_eq!(forged.len(), tokencache::TOKEN_LEN);
    assert_eq!(store.validate(&forged).unwrap_err(), Rejection::Unknown);
}

fn crc32(bytes: &[u8]) -> u32 {
    // Bitwise CRC32 (IEEE), independent of the crate's implementation.
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn base62_6(mut value: u32) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = [0u8; 6];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    String::from_utf8(out.to_vec()).unwrap()
}

#[test]
fn mutated_tokens_are_malformed() {
    let s = scratch();
    let (store, _) = manual_store(&s.path);
    let secret = store
        .issue(NewToken::new("bot"))
        .unwrap()
        .secret()
        .to_string();
    for pos in 0..secret.len() {
        let mut bytes = secret.clone().into_bytes();
        bytes[pos] = if bytes[pos] == b'x' { b'y' } else { b'x' };
        let mutated = String::from_utf8(bytes).unwrap();
        assert_eq!(
            store.validate(&mutated).unwrap_err(),
            Rejection::Malformed,
            "position {pos}"
        );
    }
    assert_eq!(
        store.validate(&secret[..secret.len() - 1]).unwrap_err(),
        Rejection::Malformed
    );
    assert_eq!(
        store.validate(&format!("{secret}x")).unwrap_err(),
        Rejection::Malformed
    );
    assert_eq!(
        store.validate(&"x".repeat(1 << 20)).unwrap_err(),
        Rejection::Malformed
    );
}

#[test]
fn the_secret_never_reaches_the_file_or_debug_output() {
    let s = scratch();
    let (store, _) = manual_store(&s.path);
    let issued = store.issue(NewToken::new("bot")).unwrap();
    let valid = store.validate(issued.secret()).unwrap();
    store.flush().unwrap();
    let secret = issued.secret();
    let secret_part = &secret[12..34];
    for file in [s.path.clone(), common::journal_path(&s.path)] {
        let bytes = fs::read(&file).unwrap();
        assert!(!contains(&bytes, secret.as_bytes()), "{}", file.display());
        assert!(
            !contains(&bytes, secret_part.as_bytes()),
            "{}",
            file.display()
        );
    }
    for shown in [
        format!("{issued:?}"),
        format!("{valid:?}"),
        format!("{store:?}"),
        format!("{:?}", store.list()),
        format!("{:?}", store.stats()),
    ] {
        assert!(!shown.contains(secret_part), "secret in {shown}");
    }
    drop(valid);
    store.close().unwrap();
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_million_validations_send_once_and_write_once_per_interval() {
    let s = scratch();
    let (store, clock) = manual_store(&s.path);
    let issued = store.issue(NewToken::new("hot")).unwrap();
    let before = store.stats();
    for _ in 0..1_000_000 {
        store.validate(issued.secret()).unwrap();
    }
    let after = store.stats();
    assert_eq!(after.dirty_sends - before.dirty_sends, 1);
    assert_eq!(after.validations - before.validations, 1_000_000);
    assert_eq!(
        after.journal_records_written,
        before.journal_records_written
    );

    clock.advance(INTERVAL - Duration::from_millis(1));
    assert_eq!(
        store.stats().journal_records_written,
        before.journal_records_written,
        "written before the interval"
    );
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        store.stats().journal_records_written,
        before.journal_records_written + 1
    );

    // The write cleared the flag: the next use sends again, once.
    for _ in 0..1000 {
        store.validate(issued.secret()).unwrap();
    }
    assert_eq!(store.stats().dirty_sends - before.dirty_sends, 2);
    clock.advance(INTERVAL);
    assert_eq!(
        store.stats().journal_records_written,
        before.journal_records_written + 2
    );
    store.close().unwrap();
}

#[test]
fn heavy_load_writes_at_most_one_record_per_interval() {
    let s = scratch();
    let (store, clock) = manual_store(&s.path);
    let tokens: Vec<_> = (0..20)
        .map(|i| store.issue(NewToken::new(format!("t{i}"))).unwrap())
        .collect();
    let before = store.stats().journal_records_written;
    for second in 0..600u64 {
        for token in &tokens {
            store.validate(token.secret()).unwrap();
        }
        clock.advance(Duration::from_secs(1));
        let written = store.stats().journal_records_written - before;
        assert!(
            written <= second / 60 + 1,
            "{written} records after {} s",
            second + 1
        );
    }
    assert_eq!(store.stats().journal_records_written - before, 10);
}

#[test]
fn an_idle_store_writes_nothing() {
    let s = scratch();
    let (store, clock) = manual_store(&s.path);
    store.issue(NewToken::new("bot")).unwrap();
    store.close().unwrap();
    let (store, clock2) = manual_store(&s.path);
    let files = || {
        let journal = common::journal_path(&s.path);
        (fs::read(&s.path).unwrap(), fs::read(journal).unwrap())
    };
    let before = files();
    let written = store.stats();
    for _ in 0..100 {
        clock.advance(INTERVAL);
        clock2.advance(INTERVAL);
    }
    store.flush().unwrap();
    let after = store.stats();
    assert_eq!(after.bytes_written, written.bytes_written);
    assert_eq!(files(), before);
    store.close().unwrap();
    assert_eq!(files(), before, "close wrote an unchanged store");
}

#[test]
fn flush_writes_pending_last_used_and_only_once() {
    let s = scratch();
    let (store, clock) = manual_store(&s.path);
    let issued = store.issue(NewToken::new("bot")).unwrap();
    clock.advance(Duration::from_secs(5));
    store.validate(issued.secret()).unwrap();
    let written = store.stats().journal_records_written;
    store.flush().unwrap();
    store.flush().unwrap();
    assert_eq!(store.stats().journal_records_written, written + 1);
    let info = tokencache::inspect(&s.path).unwrap();
    assert_eq!(info.tokens, 1);
    assert_eq!(info.journal_records, 2, "the issue and the flush");
    drop(store);
    let (store, _) = manual_store(&s.path);
    assert_eq!(last_used_ms(&store, &issued.id()), clock.now_ms());
}

#[test]
fn drop_writes_what_is_pending() {
    let s = scratch();
    let (store, clock) = manual_store(&s.path);
    let issued = store.issue(NewToken::new("bot")).unwrap();
    clock.advance(Duration::from_secs(1));
    store.validate(issued.secret()).unwrap();
    let clone = store.clone();
    drop(store);
    drop(clone);
    let (store, _) = manual_store(&s.path);
    assert_eq!(last_used_ms(&store, &issued.id()), clock.now_ms());
}

#[test]
fn closed_store_refuses_changes_with_a_clear_error() {
    let s = scratch();
    let (store, _) = manual_store(&s.path);
    let other = store.clone();
    let issued = store.issue(NewToken::new("bot")).unwrap();
    store.close().unwrap();
    assert!(
        other.validate(issued.secret()).is_ok(),
        "validation keeps working in memory"
    );
    let err = other.issue(NewToken::new("late")).unwrap_err();
    assert!(matches!(err, Error::Closed { .. }), "{err}");
    assert!(err.to_string().contains("closed"));
    // The lock is released: the store opens again.
    drop(manual_store(&s.path));
}

#[test]
fn revoking_an_unknown_id_says_so() {
    let s = scratch();
    let (store, _) = manual_store(&s.path);
    let id: TokenId = "abcdEFGH".parse().unwrap();
    let err = store.revoke(&id).unwrap_err();
    assert!(matches!(err, Error::UnknownId(i) if i == id));
    assert!(err.to_string().contains("abcdEFGH"));
}

#[test]
fn bad_token_requests_are_refused_before_writing() {
    let s = scratch();
    let (store, _) = manual_store(&s.path);
    let written = store.stats().bytes_written;
    for bad in [
        NewToken::new(""),
        NewToken::new("x".repeat(300)),
        NewToken::new("bell\u{7}"),
        NewToken::new("ok").scope(""),
        NewToken::new("ok").scope("two words"),
    ] {
        assert!(matches!(store.issue(bad), Err(Error::InvalidRequest(_))));
    }
    assert_eq!(store.stats().bytes_written, written);
    assert!(store.list().is_empty());
}

#[test]
fn concurrent_issues_share_journal_records_and_all_survive_reopen() {
    const THREADS: usize = 8;
    const EACH: usize = 50;
    let s = scratch();
    let store = TokenStore::open(&s.path).unwrap();
    let before = store.stats().journal_records_written;
    let barrier = Arc::new(std::sync::Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = store.clone();
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                (0..EACH)
                    .map(|i| store.issue(NewToken::new(format!("t{t}-{i}"))).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let issued: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let writes = store.stats().journal_records_written - before;
    assert!(
        writes < (THREADS * EACH) as u64,
        "{writes} writes for {} issues",
        THREADS * EACH
    );
    store.close().unwrap();

    let store = TokenStore::open(&s.path).unwrap();
    assert_eq!(store.list().len(), THREADS * EACH);
    for token in &issued {
        assert!(store.validate(token.secret()).is_ok());
    }
}

#[test]
fn issue_many_is_one_write_and_all_or_nothing() {
    let s = scratch();
    let (store, _) = manual_store(&s.path);
    let before = store.stats().journal_records_written;
    let requests = (0..1000).map(|i| NewToken::new(format!("bulk-{i}")).scope("read"));
    let issued = store.issue_many(requests).unwrap();
    assert_eq!(store.stats().journal_records_written, before + 1);
    assert_eq!(issued.len(), 1000);
    assert_eq!(
        store.validate(issued[999].secret()).unwrap().name(),
        "bulk-999"
    );

    let refused = store.issue_many([NewToken::new("fine"), NewToken::new("")]);
    assert!(matches!(refused, Err(Error::InvalidRequest(_))));
    assert_eq!(store.list().len(), 1000, "a refused batch issued nothing");
    assert!(store.issue_many(Vec::new()).unwrap().is_empty());
    assert_eq!(store.stats().journal_records_written, before + 1);
    drop(store);
    let (store, _) = manual_store(&s.path);
    assert_eq!(store.list().len(), 1000);
}

/// A token's `last_used` as Unix ms (the token must exist and have been used).
fn last_used_ms(store: &TokenStore, id: &TokenId) -> u64 {
    let info = store.get(id).expect("token exists");
    info.last_used.expect("token was used").timestamp_millis() as u64
}

/// `validate` reads an index that each issue republishes: a new token validates on any
/// thread as soon as `issue` returns, while other threads keep validating older tokens
/// through every republication.
#[test]
fn issued_tokens_validate_on_every_thread_as_soon_as_issue_returns() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let first = store.issue(NewToken::new("first")).unwrap();
    let stop = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                while !stop.load(Relaxed) {
                    assert!(store.validate(first.secret()).is_ok());
                    reads.fetch_add(1, Relaxed);
                }
            });
        }
        for i in 0..50 {
            let batch = store
                .issue_many((0..i % 3 + 1).map(|j| NewToken::new(format!("t{i}-{j}"))))
                .unwrap();
            let on_another_thread = thread::scope(|inner| {
                inner
                    .spawn(|| batch.iter().all(|t| store.validate(t.secret()).is_ok()))
                    .join()
                    .unwrap()
            });
            assert!(
                on_another_thread,
                "batch {i} did not validate right after issue"
            );
        }
        stop.store(true, Relaxed);
    });
    assert!(reads.load(Relaxed) > 0, "the readers never ran");
    assert_eq!(
        store.stats().tokens,
        1 + (0..50).map(|i| i % 3 + 1).sum::<usize>()
    );
}

/// A `ValidToken` borrows the store; `into_owned` gives an `OwnedToken` that outlives it
/// and moves to another thread.
#[test]
fn an_owned_valid_token_outlives_its_store() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let issued = store.issue(NewToken::new("kept").scope("read")).unwrap();
    let owned = store.validate(issued.secret()).unwrap().into_owned();
    store.close().unwrap();
    let elsewhere = thread::spawn(move || (owned.name().to_owned(), owned.has_scope("read")));
    assert_eq!(elsewhere.join().unwrap(), ("kept".to_owned(), true));
}
