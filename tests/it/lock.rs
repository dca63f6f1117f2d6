//! The store lock, in this process and across processes (a child process tries to open
//! the store). SIGKILL: `crash`; files refused untouched: `hostile`; unusable paths: `files`.

use crate::common;

use std::path::Path;

use common::{in_child, scratch, spawn_child_test};
use tokencache::{Error, NewToken, TokenStore};

const PATH_VAR: &str = "TOKENCACHE_TEST_PATH";

/// Child process of the lock tests (not a test of its own): tries to open the store and
/// reports how it went.
#[test]
#[ignore = "child process of a_second_open_is_refused_in_this_process_and_another"]
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

fn try_open_in_child(path: &Path) -> String {
    let output = spawn_child_test(
        "lock::child_try_open",
        &[(PATH_VAR, path.to_str().unwrap())],
    )
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
