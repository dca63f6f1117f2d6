//! The secret never leaves `IssuedToken`: not in the file, not in any `Debug`/`Display`
//! output, not in the logs. Store and lock files are private to their owner.

use crate::common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{faulty_store, manual_store, scratch, INTERVAL};
use tokencache::__fault::FaultStep;
use tokencache::{Error, NewToken, RateLimit, Rejection, TokenStore};

/// Everything every thread logs, at every level, in this test binary.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let writer = common::LogBuffer(logs.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        logs
    })
    .clone()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The random part of a token (between the id and the checksum): if any 16 consecutive
/// characters of it appear, the secret leaked.
fn secret_fragments(secret: &str) -> Vec<&str> {
    let random = &secret[12..34];
    (0..=random.len() - 16)
        .map(|at| &random[at..at + 16])
        .collect()
}

fn assert_no_secret(what: &str, shown: &[u8], secrets: &[&str]) {
    for secret in secrets {
        for fragment in secret_fragments(secret) {
            assert!(
                !contains(shown, fragment.as_bytes()),
                "{what} contains part of a secret: {}",
                String::from_utf8_lossy(shown)
            );
        }
    }
}

/// Drives every path that writes a file, logs, or formats a value, then looks for the
/// secrets in all of it.
#[test]
fn secrets_never_reach_files_debug_display_or_logs() {
    let logs = captured_logs();
    let s = scratch();
    let (store, clock, plan) = faulty_store(&s.path);
    let a = store
        .issue(
            NewToken::new("a")
                .scopes(["read"])
                .expires_in(Duration::from_secs(3600))
                .rate_limit(RateLimit::per_second(1).burst(1)),
        )
        .unwrap();
    let b = store.issue(NewToken::new("b")).unwrap();
    let secrets = [a.secret(), b.secret()];

    let valid = store.validate(a.secret()).unwrap();
    let mut shown: Vec<(String, String)> = vec![
        ("IssuedToken".into(), format!("{a:?}")),
        ("ValidToken".into(), format!("{valid:?}")),
        ("OwnedToken".into(), format!("{:?}", valid.into_owned())),
        ("TokenInfo".into(), format!("{:?}", store.get(&a.id()))),
        ("list".into(), format!("{:?}", store.list())),
        ("TokenStore".into(), format!("{store:?}")),
        ("TokenId".into(), format!("{} {:?}", a.id(), a.id())),
    ];
    let limited = store.validate(a.secret()).unwrap_err();
    assert!(matches!(limited, Rejection::RateLimited { .. }));
    let scope = store.validate_scope(b.secret(), "admin").unwrap_err();
    let forged = format!("{}x", &a.secret()[..tokencache::TOKEN_LEN - 1]);
    let malformed = store.validate(&forged).unwrap_err();
    store.revoke(&b.id()).unwrap();
    let revoked = store.validate(b.secret()).unwrap_err();
    for rejection in [
        limited,
        scope,
        malformed,
        revoked,
        Rejection::Unknown,
        Rejection::Expired,
    ] {
        shown.push(("Rejection".into(), format!("{rejection} {rejection:?}")));
    }

    // Every error a caller can get, with the secrets around.
    let mut errors: Vec<Error> = Vec::new();
    plan.fail(FaultStep::Append, 28);
    plan.fail(FaultStep::Rename, 28);
    errors.push(store.issue(NewToken::new("c")).unwrap_err());
    errors.push(store.revoke(&a.id()).unwrap_err());
    clock.advance(INTERVAL); // a retry that fails and logs
    plan.clear();
    clock.advance(INTERVAL);
    errors.push(TokenStore::open(&s.path).unwrap_err()); // Locked
    errors.push(store.revoke(&"zzzzzzzz".parse().unwrap()).unwrap_err()); // UnknownId
    errors.push(store.issue(NewToken::new("")).unwrap_err()); // InvalidRequest
    errors.push(
        store
            .set_rate_limit(&a.id(), Some(RateLimit::per_second(0)))
            .unwrap_err(),
    );
    shown.push(("Stats".into(), format!("{:?}", store.stats())));
    store.flush().unwrap();
    store.clone().close().unwrap();
    errors.push(store.flush().unwrap_err()); // Closed
    drop(store);
    let file = fs::read(&s.path).unwrap();
    let journal = fs::read(common::journal_path(&s.path)).unwrap();
    shown.push((
        "SnapshotInfo".into(),
        format!("{:?}", tokencache::inspect(&s.path).unwrap()),
    ));
    let corrupt = scratch();
    fs::write(&corrupt.path, &file[..file.len() - 1]).unwrap();
    errors.push(TokenStore::open(&corrupt.path).unwrap_err()); // Corrupt
    errors.push(TokenStore::open(corrupt.dir.path()).unwrap_err()); // BadPath
    let mut future = file.clone();
    future[8..12].copy_from_slice(&(tokencache::FORMAT_VERSION + 1).to_le_bytes());
    let crc = crc32fast::hash(&future[..28]);
    future[28..32].copy_from_slice(&crc.to_le_bytes());
    fs::write(&corrupt.path, &future).unwrap();
    errors.push(TokenStore::open(&corrupt.path).unwrap_err()); // FutureVersion
    let dangling = corrupt.dir.path().join("dangling.snap");
    std::os::unix::fs::symlink(corrupt.dir.path().join("nowhere"), &dangling).unwrap();
    errors.push(TokenStore::open(&dangling).unwrap_err()); // DanglingLink
    fs::write(&corrupt.path, &file).unwrap();
    fs::set_permissions(&corrupt.path, fs::Permissions::from_mode(0o666)).unwrap();
    errors.push(TokenStore::open(&corrupt.path).unwrap_err()); // LoosePermissions
    for error in &errors {
        shown.push(("Error".into(), format!("{error} {error:?}")));
    }
    let kinds: Vec<&str> = errors
        .iter()
        .map(|e| match e {
            Error::Io { .. } => "Io",
            Error::Locked { .. } => "Locked",
            Error::UnknownId(_) => "UnknownId",
            Error::InvalidRequest(_) => "InvalidRequest",
            Error::InvalidRateLimit(_) => "InvalidRateLimit",
            Error::Closed { .. } => "Closed",
            Error::Corrupt { .. } => "Corrupt",
            Error::BadPath { .. } => "BadPath",
            Error::FutureVersion { .. } => "FutureVersion",
            Error::DanglingLink { .. } => "DanglingLink",
            Error::LoosePermissions { .. } => "LoosePermissions",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "Io",
            "Io",
            "Locked",
            "UnknownId",
            "InvalidRequest",
            "InvalidRateLimit",
            "Closed",
            "Corrupt",
            "BadPath",
            "FutureVersion",
            "DanglingLink",
            "LoosePermissions"
        ]
    );

    for (what, text) in &shown {
        assert_no_secret(what, text.as_bytes(), &secrets);
    }
    assert_no_secret("the store file", &file, &secrets);
    assert_no_secret("the journal", &journal, &secrets);
    // The file holds the tokens (so the search above looked at real content).
    assert!(contains(&file, a.id().as_str().as_bytes()));

    let logs = logs.lock().unwrap().clone();
    // The capture works: the failed writes were logged, with the token ids.
    let text = String::from_utf8_lossy(&logs);
    assert!(text.contains("snapshot write failed"), "{text}");
    assert!(text.contains(a.id().as_str()), "{text}");
    assert_no_secret("the logs", &logs, &secrets);
}

/// The store file, its journal and its lock file are readable by their owner only, also
/// after compactions replaced the store file and the journal.
#[test]
fn store_and_lock_files_are_private() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let files = [
        s.path.clone(),
        s.path.with_extension("snap.lock"),
        common::journal_path(&s.path),
    ];
    for n in 0..3 {
        store.issue(NewToken::new(format!("t{n}"))).unwrap();
        for path in &files {
            let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} is mode {mode:o}", path.display());
        }
    }
    store.close().unwrap();
    for path in &files {
        let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode,
            0o600,
            "after close: {} is mode {mode:o}",
            path.display()
        );
    }
}
