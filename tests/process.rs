//! Real processes and real files: SIGKILL after `issue`, the store lock across processes,
//! and files that must be refused and left untouched.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::Duration;

use common::{child, in_child, scratch};
use tokencache::{Error, NewToken, Rejection, TokenStore};

const PATH_VAR: &str = "TOKENCACHE_TEST_PATH";

/// Child: issue a token, print it once `issue` returned, then wait to be killed.
#[test]
#[ignore = "helper process for issued_and_revoked_tokens_survive_sigkill"]
fn child_issue_then_wait() {
    if !in_child() {
        return;
    }
    let path = std::env::var(PATH_VAR).unwrap();
    let store = TokenStore::builder(&path)
        .flush_interval(Duration::from_secs(3600))
        .open()
        .unwrap();
    let issued = store.issue(NewToken::new("survivor")).unwrap();
    let revoked = store.issue(NewToken::new("revoked")).unwrap();
    store.revoke(&revoked.id()).unwrap();
    println!(
        "ISSUED {} {} {}",
        issued.id(),
        issued.secret(),
        revoked.secret()
    );
    // Keep the store open (persister alive, lock held) until the parent kills us; the
    // bound only keeps an orphan from lingering if the parent dies first.
    std::thread::sleep(Duration::from_secs(120));
}

/// Child: try to open the store and report how it went.
#[test]
#[ignore = "helper process for the lock tests"]
fn child_try_open() {
    if !in_child() {
        return;
    }
    let path = std::env::var(PATH_VAR).unwrap();
    match TokenStore::open(&path) {
        Ok(store) => {
            println!("RESULT opened {}", store.list().len());
            store.close().unwrap();
        }
        Err(Error::Locked { .. }) => println!("RESULT locked"),
        Err(e) => println!("RESULT error {e}"),
    }
}

/// Reads the child's stdout until a line starting with `tag`, returning the rest.
fn read_tagged(out: &mut impl BufRead, tag: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "child exited without printing {tag}"
        );
        // libtest may print "test name ... " on the same line first.
        if let Some(at) = line.find(tag) {
            return line[at + tag.len()..].trim().to_string();
        }
    }
}

fn try_open_in_child(path: &Path) -> String {
    let output = child("child_try_open", &[(PATH_VAR, path.to_str().unwrap())])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|l| l.find("RESULT ").map(|at| l[at + 7..].to_string()))
        .unwrap_or_else(|| {
            panic!(
                "child printed no result: {stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
}

#[test]
fn issued_and_revoked_tokens_survive_sigkill() {
    let s = scratch();
    let mut proc = child(
        "child_issue_then_wait",
        &[(PATH_VAR, s.path.to_str().unwrap())],
    )
    .spawn()
    .unwrap();
    let mut out = BufReader::new(proc.stdout.take().unwrap());
    let issued = read_tagged(&mut out, "ISSUED ");
    proc.kill().unwrap(); // SIGKILL on Unix: no destructor, no flush, no close.
    proc.wait().unwrap();
    let [id, secret, revoked] = issued.split(' ').collect::<Vec<_>>()[..] else {
        panic!("unexpected child output {issued:?}");
    };

    // The kernel released the dead process's lock: the store opens, and the token is there.
    let store = TokenStore::open(&s.path).unwrap();
    let token = store.validate(secret).unwrap();
    assert_eq!(token.id().as_str(), id);
    assert_eq!(token.name(), "survivor");
    assert_eq!(store.validate(revoked).unwrap_err(), Rejection::Revoked);
    let leftovers: Vec<_> = fs::read_dir(s.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| {
            !["tokens.snap", "tokens.snap.lock", "tokens.snap.journal"].contains(&n.as_str())
        })
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

#[test]
fn a_second_open_is_refused_in_this_process_and_another() {
    let s = scratch();
    let store = TokenStore::open(&s.path).unwrap();
    store.issue(NewToken::new("first")).unwrap();

    let err = TokenStore::open(&s.path).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    assert!(err.to_string().contains("already open"), "{err}");
    assert_eq!(try_open_in_child(&s.path), "locked");

    store.close().unwrap();
    assert_eq!(try_open_in_child(&s.path), "opened 1");
    let again = TokenStore::open(&s.path).unwrap();
    assert_eq!(again.list().len(), 1);
}

/// A valid store file holding one token, and that token.
fn real_snapshot() -> (Vec<u8>, String) {
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
    let (image, _) = real_snapshot();
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

#[test]
fn unusable_paths_get_clear_errors() {
    let s = scratch();
    let err = TokenStore::open(s.dir.path()).unwrap_err();
    assert!(err.to_string().contains("is a directory"), "{err}");
    let err = TokenStore::open(s.dir.path().join("missing/tokens.snap")).unwrap_err();
    assert!(
        err.to_string().contains("directory does not exist"),
        "{err}"
    );
}
