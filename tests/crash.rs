//! Crash torture with real processes and real SIGKILL.
//!
//! A child process (this test binary, re-executed) opens a store with a 50 ms flush interval
//! on the real clock and loops: issue, validate in bursts, revoke, delete, rotate. It prints
//! each change only after the call returned. The parent kills it with SIGKILL at a random moment, reopens the
//! store and checks that every acknowledged change survived, that the file opens, that no
//! temp file is left to trip a later open, and that `last_used` on disk is at most about one
//! flush interval behind the kill.
//!
//! `TOKENCACHE_CRASH_ROUNDS` (default 200) sets the number of kills,
//! `TOKENCACHE_CRASH_SEED` replays a run (the seed is printed).

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{child, in_child, scratch};
use tokencache::{Clock, Error, IssuedToken, NewToken, Rejection, TokenStore};

const PATH_VAR: &str = "TOKENCACHE_TEST_PATH";
const SEED_VAR: &str = "TOKENCACHE_CHILD_SEED";
const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// Allowance on top of one flush interval for a snapshot to be written (fsync on a shared,
/// loaded machine) before `last_used` on disk must have caught up.
const SLACK_MS: u64 = 400;
/// Tokens one child issues at most (each issue rewrites the whole file).
const ISSUES_PER_CHILD: usize = 8;
/// A fresh store every this many rounds, so files stay small and rounds stay fast.
const ROUNDS_PER_STORE: usize = 25;

/// splitmix64: a tiny seeded PRNG, enough to spread kill times and child choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Child: works on the store until killed. Every line is printed after the call it reports
/// returned (`println!` on a pipe flushes per line: stdout is line-buffered).
#[test]
#[ignore = "helper process for sigkill_at_random_moments_loses_nothing_acknowledged"]
fn child_work_until_killed() {
    if !in_child() {
        return;
    }
    let path = std::env::var(PATH_VAR).unwrap();
    let mut rng = Rng(std::env::var(SEED_VAR).unwrap().parse().unwrap());
    let store = TokenStore::builder(&path)
        .flush_interval(FLUSH_INTERVAL)
        .open()
        .unwrap();
    println!("@READY");
    let mut live: Vec<IssuedToken> = Vec::new();
    let mut issued = 0;
    // The bound only keeps an orphan from lingering if the parent dies.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if issued < ISSUES_PER_CHILD && (live.is_empty() || rng.below(4) == 0) {
            let token = store.issue(NewToken::new("crash")).unwrap();
            println!("@I {} {}", token.id(), token.secret());
            live.push(token);
            issued += 1;
        }
        if !live.is_empty() {
            let token = &live[rng.below(live.len() as u64) as usize];
            for _ in 0..200 {
                store.validate(token.secret()).unwrap();
            }
            // `validate` stamps last_used with a later read of the same clock (the store's
            // `SystemClock` word, which may lag the system clock by a tick).
            let before = tokencache::SystemClock.now_ms();
            store.validate(token.secret()).unwrap();
            println!("@V {} {before}", token.id());
        }
        if live.len() > 1 && rng.below(12) == 0 {
            let token = live.swap_remove(rng.below(live.len() as u64) as usize);
            // Intent first: a revoke cut short by the kill may or may not be on disk.
            println!("@r {}", token.id());
            store.revoke(&token.id()).unwrap();
            println!("@R {}", token.id());
        }
        if live.len() > 1 && rng.below(12) == 0 {
            let token = live.swap_remove(rng.below(live.len() as u64) as usize);
            println!("@d {}", token.id());
            store.delete(&token.id()).unwrap();
            println!("@D {}", token.id());
        }
        if issued < ISSUES_PER_CHILD && !live.is_empty() && rng.below(12) == 0 {
            let old = live[rng.below(live.len() as u64) as usize].id();
            // The old token keeps validating for the hour of grace.
            let new = store.rotate(&old, Duration::from_secs(3600)).unwrap();
            println!("@T {old} {} {}", new.id(), new.secret());
            live.push(new);
            issued += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What a token is, as `validate` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Live,
    Revoked,
    /// `Unknown`: deleted.
    Deleted,
}

/// What the parent knows about one acknowledged token.
struct Known {
    secret: String,
    state: State,
    /// A revoke or delete was started but not acknowledged: either outcome is correct.
    intent: Option<State>,
}

/// The acknowledged lines of one child: complete lines only (a line cut by the kill was
/// never acknowledged).
fn acknowledged(stdout: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(stdout);
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    // libtest may print "test name ... " on the same line first.
    complete
        .lines()
        .filter_map(|l| l.find('@').map(|at| l[at + 1..].to_string()))
        .collect()
}

fn temp_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tokens.snap.") && n.ends_with(".tmp"))
        .collect()
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let rounds: usize = std::env::var("TOKENCACHE_CRASH_ROUNDS")
        .map(|r| r.parse().expect("TOKENCACHE_CRASH_ROUNDS is a number"))
        .unwrap_or(200);
    let seed: u64 = std::env::var("TOKENCACHE_CRASH_SEED")
        .map(|s| s.parse().expect("TOKENCACHE_CRASH_SEED is a number"))
        .unwrap_or_else(|_| now_ms());
    println!("crash torture: {rounds} rounds, seed {seed} (TOKENCACHE_CRASH_SEED={seed} replays the kill times)");
    let mut rng = Rng(seed);
    let started = Instant::now();

    let mut s = scratch();
    let mut known: HashMap<String, Known> = HashMap::new();
    let (mut acked_issues, mut acked_revokes, mut last_used_checks) = (0, 0, 0);
    let (mut acked_deletes, mut acked_rotations) = (0, 0);
    let (mut killed_before_ready, mut rounds_with_temps, mut max_lag_ms) = (0, 0, 0u64);
    let mut cut_short = 0;
    for round in 0..rounds {
        if round % ROUNDS_PER_STORE == 0 && round > 0 {
            s = scratch();
            known.clear();
        }
        let child_seed = rng.next().to_string();
        // Mostly within the first 600 ms (startup, open, work); now and then right away.
        let delay = Duration::from_millis(match rng.below(8) {
            0 => rng.below(5),
            _ => rng.below(600),
        });
        let mut proc = child(
            "child_work_until_killed",
            &[
                (PATH_VAR, s.path.to_str().unwrap()),
                (SEED_VAR, &child_seed),
            ],
        )
        .spawn()
        .unwrap();
        let mut stdout = proc.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = stdout.read_to_end(&mut bytes);
            bytes
        });
        std::thread::sleep(delay);
        let killed_at = now_ms();
        proc.kill().unwrap(); // SIGKILL: no destructor, no flush, no close.
        let status = proc.wait().unwrap();
        let mut stderr = String::new();
        proc.stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let lines = acknowledged(&reader.join().unwrap());
        assert_eq!(
            status.signal(),
            Some(9),
            "round {round} (seed {seed}): the child did not die by SIGKILL but {status}:\n{stderr}"
        );

        // Replay what the child acknowledged.
        let mut validated: HashMap<String, Vec<u64>> = HashMap::new();
        for line in &lines {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts[..] {
                ["READY"] => {}
                ["I", id, secret] | ["T", _, id, secret] => {
                    if parts[0] == "T" {
                        acked_rotations += 1;
                    } else {
                        acked_issues += 1;
                    }
                    known.insert(
                        id.to_string(),
                        Known {
                            secret: secret.to_string(),
                            state: State::Live,
                            intent: None,
                        },
                    );
                }
                ["V", id, at] => validated
                    .entry(id.to_string())
                    .or_default()
                    .push(at.parse().unwrap()),
                ["r", id] => known.get_mut(id).unwrap().intent = Some(State::Revoked),
                ["d", id] => known.get_mut(id).unwrap().intent = Some(State::Deleted),
                ["R", id] | ["D", id] => {
                    let state = if parts[0] == "R" {
                        acked_revokes += 1;
                        State::Revoked
                    } else {
                        acked_deletes += 1;
                        State::Deleted
                    };
                    let token = known.get_mut(id).unwrap();
                    token.state = state;
                    token.intent = None;
                }
                _ => panic!("round {round}: unexpected child line {line:?}"),
            }
        }
        if !lines.iter().any(|l| l == "READY") {
            killed_before_ready += 1;
        }

        // Whatever the crash left, the next open works and removes stale temp files.
        if !temp_files(s.dir.path()).is_empty() {
            rounds_with_temps += 1;
        }
        let store = match TokenStore::builder(&s.path)
            .flush_interval(FLUSH_INTERVAL)
            .open()
        {
            Ok(store) => store,
            Err(e) => panic!("round {round} (seed {seed}): reopen after SIGKILL failed: {e}"),
        };
        assert!(
            temp_files(s.dir.path()).is_empty(),
            "round {round}: open left temp files {:?}",
            temp_files(s.dir.path())
        );

        // last_used on disk is at most about one interval behind: every validation reported
        // more than interval + slack before the kill must be in the file. Read it before
        // this process validates anything.
        for (id, times) in &validated {
            let Some(info) = store.get(&id.parse().unwrap()) else {
                // Deleted after it was validated: the state check below says if rightly.
                let token = &known[id];
                assert!(
                    token.state == State::Deleted || token.intent == Some(State::Deleted),
                    "round {round} (seed {seed}): token {id} is gone but was never deleted"
                );
                continue;
            };
            let on_disk = info.last_used.map_or(0, |t| t.timestamp_millis() as u64);
            let deadline = killed_at.saturating_sub(FLUSH_INTERVAL.as_millis() as u64 + SLACK_MS);
            if let Some(&required) = times.iter().filter(|&&t| t <= deadline).max() {
                last_used_checks += 1;
                let newest = *times.iter().max().unwrap();
                max_lag_ms = max_lag_ms.max(newest.saturating_sub(on_disk));
                assert!(
                    on_disk >= required,
                    "round {round} (seed {seed}): token {id} was validated at {required}, \
                     {} ms before the kill, but last_used on disk is {on_disk}",
                    killed_at - required
                );
            }
        }

        // Every acknowledged issue and rotation validates; every acknowledged revoke stays
        // revoked and every acknowledged delete stays deleted.
        for (id, token) in &mut known {
            let seen = match store.validate(&token.secret) {
                Ok(_) => State::Live,
                Err(Rejection::Revoked) => State::Revoked,
                Err(Rejection::Unknown) => State::Deleted,
                Err(r) => panic!("round {round} (seed {seed}): token {id} gives {r}"),
            };
            match token.intent.take() {
                // Whatever this open sees is final: the child is dead, nobody else writes.
                Some(intent) => {
                    cut_short += 1;
                    assert!(
                        seen == token.state || seen == intent,
                        "round {round} (seed {seed}): token {id} was {:?}, then {intent:?} \
                         was started, but it is {seen:?}",
                        token.state
                    );
                    token.state = seen;
                }
                None => assert_eq!(
                    seen, token.state,
                    "round {round} (seed {seed}): acknowledged token {id} changed"
                ),
            }
        }
        store.close().unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "crash torture: {rounds} kills in {:.1} s; {acked_issues} acknowledged issues, \
         {acked_rotations} rotations, {acked_revokes} revokes and {acked_deletes} deletes all \
         survived; {last_used_checks} last_used bounds checked, the newest validation of a \
         checked token was at most {max_lag_ms} ms ahead of disk; {rounds_with_temps} rounds \
         left temp files (removed by open); {killed_before_ready} kills before the store opened; \
         {cut_short} revokes or deletes cut short by the kill",
        elapsed.as_secs_f64()
    );
    // Not vacuous: the run must have exercised what it claims to check.
    if rounds >= 50 {
        assert!(acked_issues > 0 && acked_revokes > 0 && last_used_checks > 0);
        assert!(acked_deletes > 0 && acked_rotations > 0);
    }
}

/// What a crashed writer leaves (`.tokens.snap.tcXXXXXXXX.tmp`, empty or the start of a
/// snapshot) is removed by the next open, which then reads the real file; other files in
/// the directory are left alone, including another store's live temp file and a user's
/// file of a similar name.
#[test]
fn open_removes_stale_temp_files_and_nothing_else() {
    let s = scratch();
    let store = TokenStore::open(&s.path).unwrap();
    let token = store.issue(NewToken::new("kept")).unwrap();
    store.close().unwrap();
    let dir = s.dir.path();
    let image = fs::read(&s.path).unwrap();
    let stale: [(&str, &[u8]); 3] = [
        (".tokens.snap.tcA1b2C3d4.tmp", &image[..image.len() / 2]),
        (".tokens.snap.tcZZZZZZZZ.tmp", b""),
        (".tokens.snap.tc00000000.tmp", &image[..5]),
    ];
    for (name, bytes) in stale {
        fs::write(dir.join(name), bytes).unwrap();
    }
    // Not this store's: other shapes, another store's live temp, a user's notes, and a
    // name of the right shape holding something no writer of ours wrote.
    let others: [(&str, &[u8]); 7] = [
        (".tokens.snap.tcA1b2C3d4.tmp.keep", &image),
        (".tokens.snap.bak.tcA1b2C3d4.tmp", &image),
        (".tokens.snap.bak.Ab12Cd.tmp", &image),
        (".tokens.snap.my notes.tmp", b"keep me"),
        (".tokens.snap.a1B2c3.tmp", &image),
        (".other.snap.tcA1b2C3d4.tmp", &image),
        (".tokens.snap.tcKeepMe00.tmp", b"keep me"),
    ];
    for (name, bytes) in others {
        fs::write(dir.join(name), bytes).unwrap();
    }
    let store = TokenStore::open(&s.path).unwrap();
    assert!(store.validate(token.secret()).is_ok());
    for (name, _) in stale {
        assert!(!dir.join(name).exists(), "{name} was not removed");
    }
    for (name, bytes) in others {
        assert_eq!(fs::read(dir.join(name)).unwrap(), bytes, "{name}");
    }
    store.close().unwrap();
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
