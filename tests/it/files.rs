//! Which file a store path means and what `open` and writes do to it: symlinks, special
//! files, loose permissions, the owner and mode a write keeps, and a directory fsync that
//! fails after the rename. Real files, real links, real FIFOs; only the directory-fsync
//! failure is injected (through the fault seam in the file writer).

use crate::common;

use std::fs;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use common::{faulty_store, scratch};
use tokencache::__fault::FaultStep;
use tokencache::{Error, NewToken, TokenStore};

const EIO: i32 = 5;
const EINVAL: i32 = 22;

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Opens `path` on another thread and fails the test (instead of hanging it) if `open`
/// does not return within 20 s.
fn open_within_deadline(path: &Path) -> Result<TokenStore, Error> {
    let (tx, rx) = mpsc::channel();
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(TokenStore::open(path));
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("open hung instead of returning")
}

fn bad_path_reason(error: &Error) -> &'static str {
    match error {
        Error::BadPath { reason, .. } => reason,
        other => panic!("expected BadPath, got {other:?}"),
    }
}

#[test]
fn a_symlinked_store_is_the_file_it_points_to_and_shares_its_lock() {
    let s = scratch();
    let real_dir = s.dir.path().join("real");
    let link_dir = s.dir.path().join("link");
    fs::create_dir_all(&real_dir).unwrap();
    fs::create_dir_all(&link_dir).unwrap();
    let real = real_dir.join("tokens.snap");
    let link = link_dir.join("tokens.snap");
    let store = TokenStore::open(&real).unwrap();
    symlink(&real, &link).unwrap();

    let error = TokenStore::open(&link).unwrap_err();
    assert!(matches!(error, Error::Locked { .. }), "{error}");
    store.close().unwrap();

    let through_link = TokenStore::open(&link).unwrap();
    assert_eq!(through_link.path(), fs::canonicalize(&real).unwrap());
    let issued = through_link.issue(NewToken::new("via-link")).unwrap();
    through_link.close().unwrap();
    assert!(
        fs::symlink_metadata(&link).unwrap().is_symlink(),
        "the link stays a link"
    );
    assert!(!link_dir.join("tokens.snap.lock").exists());
    let store = TokenStore::open(&real).unwrap();
    assert!(
        store.validate(issued.secret()).is_ok(),
        "the write went to the target"
    );
}

#[test]
fn a_dangling_symlink_is_refused_not_turned_into_a_new_store() {
    let s = scratch();
    let target = s.dir.path().join("gone.snap");
    symlink(&target, &s.path).unwrap();
    let error = TokenStore::open(&s.path).unwrap_err();
    assert!(matches!(error, Error::DanglingLink { .. }), "{error}");
    assert!(error.to_string().contains("gone.snap"), "{error}");
    assert!(!target.exists());
    assert!(fs::symlink_metadata(&s.path).unwrap().is_symlink());
}

#[test]
fn a_symlink_planted_at_the_lock_path_is_not_followed() {
    let s = scratch();
    let victim = s.dir.path().join("victim");
    fs::write(&victim, b"not yours").unwrap();
    symlink(&victim, s.dir.path().join("tokens.snap.lock")).unwrap();
    assert!(TokenStore::open(&s.path).is_err());
    assert_eq!(fs::read(&victim).unwrap(), b"not yours");
    // A dangling one is not followed to create its target either.
    let s = scratch();
    let target = s.dir.path().join("created-through-link");
    symlink(&target, s.dir.path().join("tokens.snap.lock")).unwrap();
    assert!(TokenStore::open(&s.path).is_err());
    assert!(!target.exists());
}

#[test]
fn a_fifo_at_the_lock_path_is_refused_without_hanging() {
    let s = scratch();
    mkfifo(&s.dir.path().join("tokens.snap.lock"));
    let error = open_within_deadline(&s.path).unwrap_err();
    assert!(bad_path_reason(&error).contains("FIFO"), "{error}");
}

#[test]
fn a_fifo_at_the_store_path_is_refused_without_hanging_and_releases_the_lock() {
    let s = scratch();
    mkfifo(&s.path);
    let error = open_within_deadline(&s.path).unwrap_err();
    assert!(bad_path_reason(&error).contains("FIFO"), "{error}");
    // The lock was released with the refusal: a second try says the same, not "locked".
    let error = open_within_deadline(&s.path).unwrap_err();
    assert!(bad_path_reason(&error).contains("FIFO"), "{error}");
}

#[test]
fn a_symlink_to_a_device_is_refused_before_reading() {
    let s = scratch();
    symlink("/dev/zero", &s.path).unwrap();
    let error = open_within_deadline(&s.path).unwrap_err();
    assert!(bad_path_reason(&error).contains("device"), "{error}");
    let error = tokencache::inspect(&s.path).unwrap_err();
    assert!(bad_path_reason(&error).contains("device"), "{error}");
}

#[test]
fn a_directory_is_refused() {
    let s = scratch();
    fs::create_dir(&s.path).unwrap();
    let error = TokenStore::open(&s.path).unwrap_err();
    assert!(bad_path_reason(&error).contains("directory"), "{error}");
}

#[test]
fn a_header_claiming_more_than_the_file_holds_is_refused() {
    let s = scratch();
    TokenStore::open(&s.path).unwrap().close().unwrap();
    let mut image = fs::read(&s.path).unwrap();
    // body_len = 2^40, header checksum redone: an honest-looking header, a lying length.
    image[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let crc = crc32fast::hash(&image[..28]);
    image[28..32].copy_from_slice(&crc.to_le_bytes());
    fs::write(&s.path, &image).unwrap();
    let error = TokenStore::open(&s.path).unwrap_err();
    assert!(matches!(error, Error::Corrupt { .. }), "{error}");
    assert!(error.to_string().contains("truncated"), "{error}");
    assert_eq!(fs::read(&s.path).unwrap(), image);
}

#[test]
fn a_store_file_others_may_write_is_refused_with_the_fix() {
    for mode in [0o660, 0o664, 0o602, 0o666] {
        let s = scratch();
        TokenStore::open(&s.path).unwrap().close().unwrap();
        fs::set_permissions(&s.path, fs::Permissions::from_mode(mode)).unwrap();
        let image = fs::read(&s.path).unwrap();
        let error = TokenStore::open(&s.path).unwrap_err();
        assert!(matches!(error, Error::LoosePermissions { .. }), "{error}");
        let message = error.to_string();
        assert!(message.contains("chmod go-w"), "{message}");
        assert!(message.contains(&format!("{mode:04o}")), "{message}");
        assert!(
            tokencache::inspect(&s.path).is_err(),
            "inspect checks it too"
        );
        assert_eq!(fs::read(&s.path).unwrap(), image);
        fs::set_permissions(&s.path, fs::Permissions::from_mode(mode & !0o022)).unwrap();
        TokenStore::open(&s.path).unwrap().close().unwrap();
    }
}

/// As root (CI is), a write gives the new file the old one's owner and group; as anyone
/// else only the mode can be checked, since only root may give a file away.
#[test]
fn writes_keep_the_store_files_owner_group_and_mode() {
    let s = scratch();
    TokenStore::open(&s.path).unwrap().close().unwrap();
    let root = fs::metadata(&s.path).unwrap().uid() == 0;
    fs::set_permissions(&s.path, fs::Permissions::from_mode(0o640)).unwrap();
    let (uid, gid) = (4242, 4343);
    if root {
        std::os::unix::fs::chown(&s.path, Some(uid), Some(gid)).unwrap();
    } else {
        eprintln!("not root: checking the mode only");
    }
    let store = TokenStore::open(&s.path).unwrap();
    store.issue(NewToken::new("kept-owner")).unwrap();
    store.close().unwrap();
    let meta = fs::metadata(&s.path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    if root {
        assert_eq!((meta.uid(), meta.gid()), (uid, gid));
    }
}

/// A lock file `open` creates takes the store file's owner and group, so a root CLI run
/// beside a service leaves no lock file the service cannot open. As root (CI is) the store
/// file is given to another user first; as anyone else owner and group are our own.
#[test]
fn a_lock_file_open_creates_belongs_to_the_store_files_owner() {
    let s = scratch();
    TokenStore::open(&s.path).unwrap().close().unwrap();
    let lock = s.dir.path().join("tokens.snap.lock");
    fs::remove_file(&lock).unwrap();
    let root = fs::metadata(&s.path).unwrap().uid() == 0;
    let (uid, gid) = (4242, 4343);
    if root {
        std::os::unix::fs::chown(&s.path, Some(uid), Some(gid)).unwrap();
    }
    let store = TokenStore::open(&s.path).unwrap();
    let created = fs::metadata(&lock).unwrap();
    let owner = fs::metadata(&s.path).unwrap();
    assert_eq!((created.uid(), created.gid()), (owner.uid(), owner.gid()));
    if root {
        assert_eq!(
            (created.uid(), created.gid()),
            (uid, gid),
            "root's lock file"
        );
    }
    store.close().unwrap();
}

/// A UNIX socket at the store path is refused at once by `open` and `inspect`, naming the
/// path; the refusal releases the lock (a second `open` says the same, not "locked").
/// Opening a socket fails in the kernel (ENXIO) before the file-type check can name it, so
/// the error is `Error::Io` with the OS's words, not `Error::BadPath` "it is a socket"
/// (what the FIFO and device cases get): a src change to stat on ENXIO would make it so.
#[test]
fn a_socket_at_the_store_path_is_refused_and_releases_the_lock() {
    let s = scratch();
    let _listener = std::os::unix::net::UnixListener::bind(&s.path).unwrap();
    let refused = |error: Error| {
        let message = error.to_string();
        assert!(
            matches!(error, Error::Io { .. } | Error::BadPath { .. }),
            "{message}"
        );
        assert!(message.contains(s.path.to_str().unwrap()), "{message}");
        assert!(
            message.contains("No such device or address") || message.contains("socket"),
            "{message}"
        );
    };
    for _ in 0..2 {
        refused(open_within_deadline(&s.path).unwrap_err());
    }
    refused(tokencache::inspect(&s.path).unwrap_err());
    assert!(fs::symlink_metadata(&s.path)
        .unwrap()
        .file_type()
        .is_socket());
}

/// A snapshot whose rename happened but whose directory fsync failed: the caller hears the
/// error, so the token it asked for exists neither in memory nor, once the store has written
/// again (here: closed), in the files. Memory and disk agree.
#[test]
fn a_failed_directory_fsync_leaves_memory_and_disk_agreeing() {
    let s = scratch();
    let (store, _clock, plan) = faulty_store(&s.path);
    // A failed append makes the next change a snapshot (the journal is not trusted).
    plan.fail(FaultStep::Append, EIO);
    store.issue(NewToken::new("never")).unwrap_err();
    plan.clear();
    plan.fail(FaultStep::SyncDir, EIO);
    let error = store.issue(NewToken::new("renamed")).unwrap_err();
    assert!(matches!(error, Error::Io { .. }), "{error}");
    // The rename happened, but the call failed: the token is not in memory.
    assert_eq!(store.list().len(), 0);
    assert_eq!(store.stats().write_errors, 2);
    plan.clear();
    let kept = store.issue(NewToken::new("kept")).unwrap();
    store.close().unwrap();
    let reopened = TokenStore::open(&s.path).unwrap();
    let names: Vec<String> = reopened.list().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["kept"]);
    assert!(reopened.validate(kept.secret()).is_ok());
}

#[test]
fn a_filesystem_that_cannot_fsync_directories_still_takes_writes() {
    let s = scratch();
    let (store, _clock, plan) = faulty_store(&s.path);
    plan.fail(FaultStep::SyncDir, EINVAL);
    plan.fail(FaultStep::ResetSyncDir, EINVAL);
    let issued = store.issue(NewToken::new("einval")).unwrap();
    store.revoke(&issued.id()).unwrap();
    // `close` compacts: the snapshot's rename and the fresh journal's.
    store.close().unwrap();
    assert_eq!(plan.injected(), 2);
    let reopened = TokenStore::open(&s.path).unwrap();
    assert!(reopened.get(&issued.id()).unwrap().revoked_at.is_some());
}

/// A store whose journal is cut inside its last record, planted in a fresh directory (as a
/// crash leaves it): returns the scratch and the offset where the torn tail starts.
fn store_with_a_torn_tail() -> (common::Scratch, u64) {
    let open = scratch();
    let store = TokenStore::open(&open.path).unwrap();
    store.issue(NewToken::new("kept")).unwrap();
    let valid = fs::metadata(common::journal_path(&open.path))
        .unwrap()
        .len();
    store.issue(NewToken::new("torn")).unwrap();
    let snapshot = fs::read(&open.path).unwrap();
    let journal = fs::read(common::journal_path(&open.path)).unwrap();
    drop(store);
    let s = scratch();
    fs::write(&s.path, snapshot).unwrap();
    fs::write(common::journal_path(&s.path), &journal[..journal.len() - 3]).unwrap();
    for path in [s.path.clone(), common::journal_path(&s.path)] {
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    }
    (s, valid)
}

/// A journal `open` creates (none there: a store written before journals existed, or one
/// whose journal was lost) and a torn tail it sets aside take the store file's owner and
/// group, as the lock file does: run as root (the CLI, say) on a store a service owns, they
/// would otherwise be root's, mode 0600, and the service would be refused its own journal.
/// The new journal takes the store file's mode too. CI runs as root, which may give files
/// away; as anyone else every file is the runner's own, so only that is checked.
#[test]
fn a_journal_and_a_torn_file_open_creates_belong_to_the_store_files_owner() {
    let (uid, gid) = (65534, 65534);
    let root = fs::metadata("/proc/self").unwrap().uid() == 0;
    if !root {
        eprintln!("not root: checking that the files are the runner's own and modes only");
    }
    // A lost journal.
    let s = scratch();
    TokenStore::open(&s.path).unwrap().close().unwrap();
    fs::remove_file(common::journal_path(&s.path)).unwrap();
    fs::set_permissions(&s.path, fs::Permissions::from_mode(0o640)).unwrap();
    if root {
        std::os::unix::fs::chown(&s.path, Some(uid), Some(gid)).unwrap();
    }
    let owner = |path: &Path| {
        let meta = fs::metadata(path).unwrap();
        (meta.uid(), meta.gid(), meta.permissions().mode() & 0o7777)
    };
    let want = owner(&s.path);
    TokenStore::open(&s.path).unwrap().close().unwrap();
    let journal = common::journal_path(&s.path);
    assert_eq!(owner(&journal), want, "the new journal");
    if root {
        assert_eq!(want, (uid, gid, 0o640));
    }

    // A torn tail set aside.
    let (s, valid) = store_with_a_torn_tail();
    if root {
        std::os::unix::fs::chown(&s.path, Some(uid), Some(gid)).unwrap();
    }
    let (store_uid, store_gid, _) = owner(&s.path);
    let store = TokenStore::open(&s.path).unwrap();
    assert_eq!(store.list().len(), 1);
    store.close().unwrap();
    let torn = s
        .dir
        .path()
        .join(format!("tokens.snap.journal.torn-{valid}"));
    assert_eq!(owner(&torn), (store_uid, store_gid, 0o600), "the torn file");
    if root {
        assert_eq!((store_uid, store_gid), (uid, gid));
    }
}

/// Leftover `.torn-<offset>` files never stop `open`: after the first name and its 1,000
/// numbered variants are taken, the tail goes to a name with a random suffix.
#[test]
fn a_torn_tail_is_set_aside_even_when_a_thousand_names_are_taken() {
    let (s, valid) = store_with_a_torn_tail();
    let first = format!("tokens.snap.journal.torn-{valid}");
    fs::write(s.dir.path().join(&first), b"old").unwrap();
    for n in 1..=1000 {
        fs::write(s.dir.path().join(format!("{first}.{n}")), b"old").unwrap();
    }
    let journal = fs::read(common::journal_path(&s.path)).unwrap();
    let store = TokenStore::open(&s.path).unwrap();
    assert_eq!(store.list().len(), 1);
    store.close().unwrap();
    let new: Vec<_> = fs::read_dir(s.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".torn-"))
        .filter(|p| fs::read(p).unwrap() != b"old")
        .collect();
    assert_eq!(new.len(), 1, "{new:?}");
    let name = new[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with(&format!("{first}.")), "{name}");
    assert_eq!(fs::read(&new[0]).unwrap(), journal[valid as usize..]);
    assert_eq!(
        fs::metadata(&new[0]).unwrap().permissions().mode() & 0o777,
        0o600
    );
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
