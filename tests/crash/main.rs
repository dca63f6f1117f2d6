//! Crash torture with real processes and real SIGKILL (every SIGKILL test is here).
//!
//! A child process (this test binary, re-executed) opens a store with a 50 ms flush interval
//! on the real clock, under the prefix `sk_live` or the default one at random, and loops:
//! issue (some tokens with an owner, half with credits; each with a metadata counter),
//! import a foreign key,
//! validate in bursts, revoke, delete, rotate, set metadata, revoke or delete every token
//! of an owner. It prints
//! each change only after the call returned. The parent kills it with SIGKILL at a random moment, reopens the
//! store (always with the default prefix) and checks that every acknowledged change
//! survived (tokens issued under `sk_live` and imported keys validate, metadata reads back,
//! an owner's revoked or deleted tokens stay so), that a change cut short by the kill is all
//! or nothing (an owner's tokens are all revoked, or none), that the file opens, that no
//! temp file is left to trip a later open, and that `last_used` and the credits spent on
//! disk are at most about one flush interval behind the kill (every validation spends one
//! credit of a token that has credits: the credits on disk are never below what was
//! granted less the spending acknowledged and the burst in flight, nor above it less the
//! spending acknowledged more than an interval before the kill).
//!
//! `TOKENCACHE_CRASH_ROUNDS` (default 200) sets the number of kills,
//! `TOKENCACHE_CRASH_SEED` replays a run (the seed is printed).
//!
//! Also: a child killed right after `issue` and `revoke` returned keeps both, and open
//! removes what a crashed writer left.
//!
//! A binary of its own, not a module of `tests/it/`: it spawns hundreds of children, and a
//! child holds a copy of every file this process has open (the store locks of other tests
//! included) from its fork until its exec. A test there that closes a store and reopens it
//! at that moment finds it `Locked` (flock belongs to the open file, which the child
//! shares); among `tests/it/`'s thousands of reopens that happened about once a run.

// The helpers of `tests/it/`, included: this binary is that crate's crash area, run on its
// own (see below), not a second set of helpers.
#[path = "../it/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{in_child, scratch, spawn_child_test};
use tokencache::__fault::{FaultPlan, FaultStep};
use tokencache::{Clock, Credits, ImportedToken, NewToken, Rejection, TokenId, TokenStore};

const PATH_VAR: &str = "TOKENCACHE_TEST_PATH";
const SEED_VAR: &str = "TOKENCACHE_CHILD_SEED";
/// Set for a child that crashes (aborts) when a compaction reaches this step (`{:?}` of a
/// `FaultStep`); the child closes the store after a random number of changes, and close
/// compacts.
const CRASH_STEP_VAR: &str = "TOKENCACHE_CRASH_STEP";
const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// Allowance on top of one flush interval for a snapshot to be written (fsync on a shared,
/// loaded machine) before `last_used` on disk must have caught up.
const SLACK_MS: u64 = 400;
/// Tokens one child issues at most.
const ISSUES_PER_CHILD: usize = 24;
/// A fresh store every this many rounds, so files stay small and rounds stay fast.
const ROUNDS_PER_STORE: usize = 25;
/// The owners of the children's tokens (shared by every child of a store, so one child's
/// `revoke_owner` reaches tokens an earlier child issued).
const OWNERS: [&str; 3] = ["acme", "globex", "initech"];
/// The prefix half the children issue under; the parent reopens with the default.
const OTHER_PREFIX: &str = "sk_live";
/// The metadata key holding each token's counter (bumped by `set_meta`).
const META_KEY: &str = "rev";
/// The credits half the issued tokens get: more than a child ever spends.
const GRANT: u64 = 1_000_000_000;
/// Validations in one burst (the last one stamped and reported).
const BURST: u64 = 201;

/// A token the child may still use: its id, secret (or foreign key) and owner.
struct Live {
    id: TokenId,
    secret: String,
    owner: Option<&'static str>,
}

/// The hex SHA-256 of a foreign key, as an importer would have it.
fn sha256_hex(key: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

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

/// Child process of the SIGKILL tests below (not a test of its own): works on the store
/// until killed. Every line is printed after the call it reports
/// returned (`println!` on a pipe flushes per line: stdout is line-buffered).
#[test]
#[ignore = "child process of sigkill_at_random_moments_loses_nothing_acknowledged and a_crash_at_every_compaction_step_loses_nothing_acknowledged"]
fn child_work_until_killed() {
    if !in_child() {
        return;
    }
    let path = std::env::var(PATH_VAR).unwrap();
    let mut rng = Rng(std::env::var(SEED_VAR).unwrap().parse().unwrap());
    let plan = FaultPlan::default();
    let seed = rng.next();
    let prefix = if rng.below(2) == 0 {
        OTHER_PREFIX
    } else {
        "tc"
    };
    // A floor of 0: the journal is compacted whenever it outgrows the snapshot (checked
    // once per interval), so kills land in compactions too.
    let store = TokenStore::builder(&path)
        .flush_interval(FLUSH_INTERVAL)
        .compaction_floor(0)
        .prefix(prefix)
        .fault_plan(plan.clone())
        .open()
        .unwrap();
    let crash_step = std::env::var(CRASH_STEP_VAR).ok().map(|name| {
        let step = FaultStep::COMPACTION
            .into_iter()
            .find(|s| format!("{s:?}") == name)
            .expect("a compaction step");
        // Armed only now: `open` itself compacts a new store.
        plan.crash(step);
        step
    });
    let mut changes_left = 5 + rng.below(40);
    println!("@READY");
    let mut live: Vec<Live> = Vec::new();
    let mut issued = 0;
    let mut revision = 0u64;
    let owner_of = |n: u64| (n < OWNERS.len() as u64).then(|| OWNERS[n as usize]);
    let shown = |owner: Option<&str>| owner.unwrap_or("-").to_string();
    // The bound only keeps an orphan from lingering if the parent dies.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if issued < ISSUES_PER_CHILD && (live.is_empty() || rng.below(4) == 0) {
            let owner = owner_of(rng.below(5));
            let mut new = NewToken::new("crash").meta(META_KEY, "0");
            if let Some(owner) = owner {
                new = new.owner(owner);
            }
            let metered = rng.below(2) == 0;
            if metered {
                new = new.credits(Credits::new(GRANT));
            }
            let token = store.issue(new).unwrap();
            let credits = metered.then_some(GRANT);
            println!(
                "@I {} {} {} {}",
                token.id(),
                token.secret(),
                shown(owner),
                shown_credits(credits)
            );
            live.push(Live {
                id: token.id(),
                secret: token.secret().to_string(),
                owner,
            });
            issued += 1;
        }
        if issued < ISSUES_PER_CHILD && rng.below(16) == 0 {
            // A key minted elsewhere: only its digest reaches the store.
            let key = format!("legacy-{seed:x}-{issued}");
            let owner = owner_of(rng.below(5));
            let mut import = ImportedToken::sha256(&sha256_hex(&key))
                .unwrap()
                .name("imported")
                .meta(META_KEY, "0");
            if let Some(owner) = owner {
                import = import.owner(owner);
            }
            let id = store.import(import).unwrap();
            println!("@P {id} {key} {} -", shown(owner));
            live.push(Live {
                id,
                secret: key,
                owner,
            });
            issued += 1;
        }
        if !live.is_empty() {
            let token = &live[rng.below(live.len() as u64) as usize];
            for _ in 1..BURST {
                store.validate(&token.secret).unwrap();
            }
            // `validate` stamps last_used with a later read of the same clock (the store's
            // `SystemClock` word, which may lag the system clock by a tick).
            let before = tokencache::SystemClock.now_ms();
            store.validate(&token.secret).unwrap();
            println!("@V {} {before}", token.id);
        }
        if live.len() > 1 && rng.below(12) == 0 {
            let token = live.swap_remove(rng.below(live.len() as u64) as usize);
            // Intent first: a revoke cut short by the kill may or may not be on disk.
            println!("@r {}", token.id);
            store.revoke(&token.id).unwrap();
            println!("@R {}", token.id);
        }
        if live.len() > 1 && rng.below(12) == 0 {
            let token = live.swap_remove(rng.below(live.len() as u64) as usize);
            println!("@d {}", token.id);
            store.delete(&token.id).unwrap();
            println!("@D {}", token.id);
        }
        if !live.is_empty() && rng.below(8) == 0 {
            let id = live[rng.below(live.len() as u64) as usize].id;
            revision += 1;
            let value = format!("{seed:x}.{revision}");
            println!("@m {id} {value}");
            store.set_meta(&id, &[(META_KEY, value.as_str())]).unwrap();
            println!("@M {id} {value}");
        }
        if live.len() > 1 && rng.below(24) == 0 {
            // Every token of the owner, this child's and earlier children's, in one write.
            let owner = OWNERS[rng.below(OWNERS.len() as u64) as usize];
            let delete = rng.below(3) == 0;
            let (intent, done) = if delete { ("x", "X") } else { ("o", "O") };
            println!("@{intent} {owner}");
            let n = if delete {
                store.delete_owner(owner).unwrap()
            } else {
                store.revoke_owner(owner).unwrap()
            };
            println!("@{done} {owner} {n}");
            live.retain(|t| t.owner != Some(owner));
        }
        if issued < ISSUES_PER_CHILD && !live.is_empty() && rng.below(12) == 0 {
            let old = &live[rng.below(live.len() as u64) as usize];
            // The old token keeps validating for the hour of grace; the new one keeps its
            // owner and metadata (and is native, if the old one was imported).
            let new = store.rotate(&old.id, Duration::from_secs(3600)).unwrap();
            // The replacement holds what the old token had left (and spends apart).
            let credits = store.credits(&new.id()).map(|c| c.remaining());
            println!(
                "@T {} {} {} {}",
                old.id,
                new.id(),
                new.secret(),
                shown_credits(credits)
            );
            live.push(Live {
                id: new.id(),
                secret: new.secret().to_string(),
                owner: old.owner,
            });
            issued += 1;
        }
        if crash_step.is_some() {
            changes_left = changes_left.saturating_sub(1);
            if changes_left == 0 {
                // A change, so close has a record to compact; the plan aborts the process at
                // the armed step (unless a timed compaction reached it already).
                let token = store
                    .issue(NewToken::new("last").meta(META_KEY, "0"))
                    .unwrap();
                println!("@I {} {} - -", token.id(), token.secret());
                let _ = store.close();
                unreachable!("close compacted without reaching the crash step");
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Credits as a child line shows them: the remaining count, or `-` for none.
fn shown_credits(credits: Option<u64>) -> String {
    credits.map_or("-".into(), |c| c.to_string())
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
    owner: Option<String>,
    imported: bool,
    /// The metadata counter as last acknowledged.
    meta: String,
    /// A `set_meta` to this value was started but not acknowledged.
    meta_intent: Option<String>,
    /// The credits left as the parent knows them exactly (given at issue or rotation, or
    /// read back and spent by the parent's own check), before this round's child spent.
    credits: Option<u64>,
    /// Accepted validations as the files held them when the parent last closed the store.
    uses: u64,
    /// Learned from this round's child: only its tokens can have a burst in flight.
    fresh: bool,
}

/// A `revoke_owner` or `delete_owner` started but not acknowledged: the owner, what it
/// would make of its tokens, and the tokens it reaches (as the parent knows them).
struct OwnerIntent {
    owner: String,
    state: State,
    ids: Vec<String>,
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

/// What the parent learned from every child of one store, and tallies for the report.
#[derive(Default)]
struct Torture {
    known: HashMap<String, Known>,
    acked_issues: usize,
    acked_rotations: usize,
    acked_revokes: usize,
    acked_deletes: usize,
    acked_imports: usize,
    acked_metas: usize,
    acked_owner_revokes: usize,
    acked_owner_deletes: usize,
    /// Tokens an acknowledged `revoke_owner` or `delete_owner` reached.
    owner_tokens: usize,
    /// Owner revokes or deletes cut short by the kill (each found all or nothing).
    owner_cut_short: usize,
    /// Acknowledged tokens issued under [`OTHER_PREFIX`] checked after a reopen with the
    /// default prefix.
    prefixed_checks: usize,
    owner_intent: Option<OwnerIntent>,
    last_used_checks: usize,
    max_lag_ms: u64,
    /// Tokens with credits whose spending more than an interval before a kill was checked
    /// to be on disk.
    credit_checks: usize,
    /// Tokens with credits no child spent from, found exactly as the parent left them.
    credit_exact_checks: usize,
    /// The most spending acknowledged but not on disk (credits given back by the crash).
    max_given_back: u64,
    /// How long before the kill the oldest acknowledged spending missing from disk was.
    max_given_back_ms: u64,
    /// Tokens whose validations more than an interval before a kill were found counted.
    uses_checks: usize,
    /// Tokens no child validated, found with exactly the counts the parent left.
    uses_exact_checks: usize,
    /// The most acknowledged validations a crash left uncounted.
    max_uncounted: u64,
    /// How long before the kill the oldest of them was acknowledged.
    max_uncounted_ms: u64,
    cut_short: usize,
    rounds_with_temps: usize,
    killed_before_ready: usize,
    /// Rounds after which the store file covered more journal records than before: a
    /// compaction ran during the child's life.
    rounds_with_compactions: usize,
    snapshot_seq: u64,
}

/// One child, run until it is killed or crashes itself.
struct Round {
    round: usize,
    seed: u64,
    /// When the parent killed the child (`None`: it crashed at an injected step).
    killed_at: Option<u64>,
    lines: Vec<String>,
}

impl Torture {
    /// Adds an acknowledged token.
    fn learn(
        &mut self,
        id: &str,
        secret: &str,
        owner: Option<String>,
        imported: bool,
        meta: String,
        credits: Option<u64>,
    ) {
        let known = Known {
            secret: secret.to_string(),
            state: State::Live,
            intent: None,
            owner,
            imported,
            meta,
            meta_intent: None,
            credits,
            uses: 0,
            fresh: true,
        };
        self.known.insert(id.to_string(), known);
    }

    /// Takes in what the child acknowledged; returns the validation times per token.
    fn acknowledge(&mut self, round: &Round) -> HashMap<String, Vec<u64>> {
        let mut validated: HashMap<String, Vec<u64>> = HashMap::new();
        for line in &round.lines {
            let parts: Vec<&str> = line.split(' ').collect();
            let owner_of = |shown: &str| (shown != "-").then(|| shown.to_string());
            match parts[..] {
                ["READY"] => {}
                ["I", id, secret, owner, credits] | ["P", id, secret, owner, credits] => {
                    let imported = parts[0] == "P";
                    if imported {
                        self.acked_imports += 1;
                    } else {
                        self.acked_issues += 1;
                    }
                    let credits = credits.parse().ok();
                    self.learn(id, secret, owner_of(owner), imported, "0".into(), credits);
                }
                ["T", old, id, secret, credits] => {
                    self.acked_rotations += 1;
                    let old = &self.known[old];
                    let (owner, meta) = (old.owner.clone(), old.meta.clone());
                    self.learn(id, secret, owner, false, meta, credits.parse().ok());
                }
                ["m", id, value] => {
                    self.known.get_mut(id).unwrap().meta_intent = Some(value.to_string());
                }
                ["M", id, value] => {
                    self.acked_metas += 1;
                    let token = self.known.get_mut(id).unwrap();
                    token.meta = value.to_string();
                    token.meta_intent = None;
                }
                ["o", owner] | ["x", owner] => {
                    // A revoke reaches the owner's live tokens; a delete, revoked ones too.
                    let state = if parts[0] == "o" {
                        State::Revoked
                    } else {
                        State::Deleted
                    };
                    let mut ids = Vec::new();
                    for (id, token) in &mut self.known {
                        let reached = match state {
                            State::Revoked => token.state == State::Live,
                            _ => token.state != State::Deleted,
                        };
                        if reached && token.owner.as_deref() == Some(owner) {
                            token.intent = Some(state);
                            ids.push(id.clone());
                        }
                    }
                    self.owner_intent = Some(OwnerIntent {
                        owner: owner.to_string(),
                        state,
                        ids,
                    });
                }
                ["O", owner, n] | ["X", owner, n] => {
                    let intent = self.owner_intent.take().unwrap();
                    assert_eq!(intent.owner, owner);
                    if parts[0] == "O" {
                        self.acked_owner_revokes += 1;
                    } else {
                        self.acked_owner_deletes += 1;
                    }
                    // The count also holds tokens whose issue the kill cut short before
                    // the child printed them (unknown here), so it is at least ours.
                    let n: usize = n.parse().unwrap();
                    assert!(
                        n >= intent.ids.len(),
                        "round {}: {line:?} but the owner had {} tokens",
                        round.round,
                        intent.ids.len()
                    );
                    self.owner_tokens += intent.ids.len();
                    for id in &intent.ids {
                        let token = self.known.get_mut(id).unwrap();
                        token.state = intent.state;
                        token.intent = None;
                    }
                }
                ["V", id, at] => validated
                    .entry(id.to_string())
                    .or_default()
                    .push(at.parse().unwrap()),
                ["r", id] => self.known.get_mut(id).unwrap().intent = Some(State::Revoked),
                ["d", id] => self.known.get_mut(id).unwrap().intent = Some(State::Deleted),
                ["R", id] | ["D", id] => {
                    let state = if parts[0] == "R" {
                        self.acked_revokes += 1;
                        State::Revoked
                    } else {
                        self.acked_deletes += 1;
                        State::Deleted
                    };
                    let token = self.known.get_mut(id).unwrap();
                    token.state = state;
                    token.intent = None;
                }
                _ => panic!("round {}: unexpected child line {line:?}", round.round),
            }
        }
        if !round.lines.iter().any(|l| l == "READY") {
            self.killed_before_ready += 1;
        }
        validated
    }

    /// Reopens the store the child left and checks that every acknowledged change is there.
    fn check(&mut self, path: &Path, round: &Round) {
        let (n, seed) = (round.round, round.seed);
        let validated = self.acknowledge(round);
        let dir = path.parent().unwrap();
        // Whatever the crash left, the next open works and removes stale temp files.
        if !temp_files(dir).is_empty() {
            self.rounds_with_temps += 1;
        }
        if let Ok(info) = tokencache::inspect(path) {
            if info.snapshot_seq > self.snapshot_seq {
                self.rounds_with_compactions += 1;
            }
            self.snapshot_seq = info.snapshot_seq;
        }
        let store = match TokenStore::builder(path)
            .flush_interval(FLUSH_INTERVAL)
            .open()
        {
            Ok(store) => store,
            Err(e) => panic!("round {n} (seed {seed}): reopen after the crash failed: {e}"),
        };
        assert!(
            temp_files(dir).is_empty(),
            "round {n}: open left temp files {:?}",
            temp_files(dir)
        );

        // last_used on disk is at most about one interval behind: every validation reported
        // more than interval + slack before the kill must be on disk. Read it before this
        // process validates anything.
        for (id, times) in validated.iter().filter(|_| round.killed_at.is_some()) {
            let Some(info) = store.get(&id.parse().unwrap()) else {
                // Deleted after it was validated: the state check below says if rightly.
                let token = &self.known[id];
                assert!(
                    token.state == State::Deleted || token.intent == Some(State::Deleted),
                    "round {n} (seed {seed}): token {id} is gone but was never deleted"
                );
                continue;
            };
            let killed_at = round.killed_at.unwrap_or_default();
            let on_disk = info.last_used.map_or(0, |t| t.timestamp_millis() as u64);
            let deadline = killed_at.saturating_sub(FLUSH_INTERVAL.as_millis() as u64 + SLACK_MS);
            if let Some(&required) = times.iter().filter(|&&t| t <= deadline).max() {
                self.last_used_checks += 1;
                let newest = *times.iter().max().unwrap();
                self.max_lag_ms = self.max_lag_ms.max(newest.saturating_sub(on_disk));
                assert!(
                    on_disk >= required,
                    "round {n} (seed {seed}): token {id} was validated at {required}, \
                     {} ms before the kill, but last_used on disk is {on_disk}",
                    killed_at - required
                );
            }
        }

        self.check_credits(&store, round, &validated);
        self.check_uses(&store, round, &validated);

        // Every acknowledged issue, import and rotation validates (under either prefix);
        // every acknowledged revoke stays revoked and every acknowledged delete stays
        // deleted; owner and metadata read back.
        let mut seen_states = HashMap::new();
        for (id, token) in &mut self.known {
            let seen = match store.validate(&token.secret) {
                Ok(_) => State::Live,
                Err(Rejection::Revoked) => State::Revoked,
                Err(Rejection::Unknown) => State::Deleted,
                // A store left with no imported key answers a foreign string `Malformed`
                // without a lookup: for an imported token, as unknown as `Unknown`.
                Err(Rejection::Malformed) if token.imported => State::Deleted,
                Err(r) => panic!(
                    "round {n} (seed {seed}): token {id} gives {r} (state {:?}, intent {:?}, imported {}, secret starts {:?})",
                    token.state,
                    token.intent,
                    token.imported,
                    &token.secret[..token.secret.len().min(10)]
                ),
            };
            seen_states.insert(id.clone(), seen);
            token.fresh = false;
            if seen == State::Live {
                // This validation spent one: the close below writes what is left.
                token.credits = token.credits.map(|c| c - 1);
            }
            if token.secret.starts_with(OTHER_PREFIX) && token.state == State::Live {
                self.prefixed_checks += 1;
            }
            if let Some(info) = store.get(&id.parse().unwrap()) {
                assert_eq!(
                    (info.owner.as_ref(), info.imported),
                    (token.owner.as_ref(), token.imported),
                    "round {n} (seed {seed}): token {id} lost its owner or import mark"
                );
                let meta = info
                    .meta
                    .iter()
                    .find(|(k, _)| k == META_KEY)
                    .map(|(_, v)| v);
                let meta = meta.unwrap_or_else(|| {
                    panic!("round {n} (seed {seed}): token {id} lost its metadata")
                });
                match token.meta_intent.take() {
                    Some(started) => assert!(
                        *meta == token.meta || *meta == started,
                        "round {n} (seed {seed}): token {id} has metadata {meta}, neither \
                         {} nor the {started} cut short",
                        token.meta
                    ),
                    None => assert_eq!(
                        *meta, token.meta,
                        "round {n} (seed {seed}): acknowledged metadata of {id} changed"
                    ),
                }
                token.meta = meta.clone();
            }
            match token.intent.take() {
                // Whatever this open sees is final: the child is dead, nobody else writes.
                Some(intent) => {
                    self.cut_short += 1;
                    assert!(
                        seen == token.state || seen == intent,
                        "round {n} (seed {seed}): token {id} was {:?}, then {intent:?} \
                         was started, but it is {seen:?}",
                        token.state
                    );
                    token.state = seen;
                }
                None => assert_eq!(
                    seen, token.state,
                    "round {n} (seed {seed}): acknowledged token {id} changed"
                ),
            }
        }
        // An owner's revoke or delete cut short by the kill: one journal record, so every
        // token it reaches changed, or none did.
        if let Some(intent) = self.owner_intent.take() {
            self.owner_cut_short += 1;
            let changed: Vec<bool> = intent
                .ids
                .iter()
                .map(|id| seen_states[id] == intent.state)
                .collect();
            assert!(
                changed.iter().all(|&c| c) || changed.iter().all(|&c| !c),
                "round {n} (seed {seed}): {:?} of owner {} cut short left some of its tokens \
                 changed and some not: {:?}",
                intent.state,
                intent.owner,
                intent
                    .ids
                    .iter()
                    .map(|id| (id, seen_states[id]))
                    .collect::<Vec<_>>()
            );
        }
        // The parent's own validations above counted too; close writes every count.
        for (id, token) in &mut self.known {
            if let Ok(usage) = store.usage(&id.parse().unwrap()) {
                token.uses = usage.total;
            }
        }
        store.close().unwrap();
        // The close compacted: the next round's child starts from a fresh snapshot.
        self.snapshot_seq = tokencache::inspect(path).unwrap().snapshot_seq;
    }
}

impl Torture {
    /// The credits on disk after the crash, read before the parent spends any: for a token
    /// of this round's child, never below what it had less the spending acknowledged and a
    /// burst in flight, and (after a kill) never above it less the spending acknowledged
    /// more than an interval (plus slack) before the kill; any other token exactly as the
    /// parent left it. Each token's figure becomes what the parent knows.
    fn check_credits(
        &mut self,
        store: &TokenStore,
        round: &Round,
        validated: &HashMap<String, Vec<u64>>,
    ) {
        let (n, seed) = (round.round, round.seed);
        for (id, token) in &mut self.known {
            let Some(before) = token.credits else {
                continue;
            };
            let Some(credits) = store.credits(&id.parse().unwrap()) else {
                assert!(
                    store.get(&id.parse().unwrap()).is_none(),
                    "round {n} (seed {seed}): token {id} lost its credits"
                );
                continue;
            };
            let left = credits.remaining();
            token.credits = Some(left);
            if !token.fresh {
                self.credit_exact_checks += 1;
                assert_eq!(
                    left, before,
                    "round {n} (seed {seed}): token {id} no child spent from changed its credits"
                );
                continue;
            }
            let bursts = Bursts::of(validated, id);
            let acknowledged = bursts.acknowledged();
            assert!(
                left + acknowledged + BURST >= before,
                "round {n} (seed {seed}): token {id} had {before} credits and the child \
                 acknowledged {acknowledged} spent (and a burst of {BURST} may have been in \
                 flight), but {left} are left: more was taken than spent"
            );
            let Some(killed_at) = round.killed_at else {
                assert!(
                    left <= before,
                    "round {n} (seed {seed}): token {id} gained credits"
                );
                continue;
            };
            let required = bursts.required(killed_at);
            if required > 0 {
                self.credit_checks += 1;
            }
            assert!(
                left <= before - required,
                "round {n} (seed {seed}): token {id} spent {required} credits more than \
                 {} ms before the kill, but the files hold {left} of {before}",
                FLUSH_INTERVAL.as_millis() as u64 + SLACK_MS
            );
            // Spending acknowledged but not on disk: the newest bursts.
            let given_back = (left + acknowledged).saturating_sub(before);
            self.max_given_back = self.max_given_back.max(given_back);
            let age = bursts.oldest_missing_ms(given_back, killed_at);
            self.max_given_back_ms = self.max_given_back_ms.max(age);
        }
    }
}

impl Torture {
    /// The usage counts on disk after the crash, read before the parent validates any: for
    /// a token of this round's child, never above what it had plus the validations
    /// acknowledged and a burst in flight, and (after a kill) never below what it had plus
    /// the validations acknowledged more than an interval (plus slack) before the kill; any
    /// other token exactly as the parent left it.
    fn check_uses(
        &mut self,
        store: &TokenStore,
        round: &Round,
        validated: &HashMap<String, Vec<u64>>,
    ) {
        let (n, seed) = (round.round, round.seed);
        for (id, token) in &self.known {
            let Ok(usage) = store.usage(&id.parse().unwrap()) else {
                continue; // deleted: the state check says if rightly
            };
            let (counted, before) = (usage.total, token.uses);
            if !token.fresh {
                self.uses_exact_checks += 1;
                assert_eq!(
                    counted, before,
                    "round {n} (seed {seed}): token {id} no child validated changed its counts"
                );
                continue;
            }
            let bursts = Bursts::of(validated, id);
            let acknowledged = bursts.acknowledged();
            assert!(
                counted <= before + acknowledged + BURST,
                "round {n} (seed {seed}): token {id} counts {counted} validations, but {before} \
                 were on disk and the child acknowledged {acknowledged} (and a burst of {BURST} \
                 may have been in flight)"
            );
            let Some(killed_at) = round.killed_at else {
                continue;
            };
            let required = bursts.required(killed_at);
            if required > 0 {
                self.uses_checks += 1;
            }
            assert!(
                counted >= before + required,
                "round {n} (seed {seed}): token {id} was validated {required} times more than \
                 {} ms before the kill, but the files count {counted} of them over {before}",
                FLUSH_INTERVAL.as_millis() as u64 + SLACK_MS
            );
            let uncounted = (before + acknowledged).saturating_sub(counted);
            self.max_uncounted = self.max_uncounted.max(uncounted);
            let age = bursts.oldest_missing_ms(uncounted, killed_at);
            self.max_uncounted_ms = self.max_uncounted_ms.max(age);
        }
    }
}

/// A token's bursts of validations this round's child acknowledged (each `BURST`
/// validations, at the time it reported), oldest first.
struct Bursts(Vec<u64>);

impl Bursts {
    fn of(validated: &HashMap<String, Vec<u64>>, id: &str) -> Bursts {
        let mut bursts = validated.get(id).cloned().unwrap_or_default();
        bursts.sort_unstable();
        Bursts(bursts)
    }

    /// The validations acknowledged.
    fn acknowledged(&self) -> u64 {
        self.0.len() as u64 * BURST
    }

    /// The validations acknowledged more than an interval (plus slack) before `killed_at`:
    /// the files must hold them.
    fn required(&self, killed_at: u64) -> u64 {
        let deadline = killed_at.saturating_sub(FLUSH_INTERVAL.as_millis() as u64 + SLACK_MS);
        self.0.iter().filter(|&&t| t <= deadline).count() as u64 * BURST
    }

    /// How long before `killed_at` the oldest of the newest bursts that `missing`
    /// validations span was acknowledged (0 if none is missing).
    fn oldest_missing_ms(&self, missing: u64, killed_at: u64) -> u64 {
        let bursts = missing.div_ceil(BURST) as usize;
        match self.0.len().checked_sub(bursts).and_then(|i| self.0.get(i)) {
            Some(&oldest) if bursts > 0 => killed_at.saturating_sub(oldest),
            _ => 0,
        }
    }
}

/// Runs the child on `path` (with `env` added); kills it with SIGKILL after `kill_after`,
/// or waits for it to crash itself if `None`. Returns what it acknowledged.
fn run_child(
    path: &Path,
    child_seed: u64,
    env: &[(&str, &str)],
    kill_after: Option<Duration>,
) -> (Option<u64>, Vec<String>, std::process::ExitStatus, String) {
    let child_seed = child_seed.to_string();
    let mut vars = vec![(PATH_VAR, path.to_str().unwrap()), (SEED_VAR, &child_seed)];
    vars.extend_from_slice(env);
    let mut proc = spawn_child_test("child_work_until_killed", &vars)
        .spawn()
        .unwrap();
    let mut stdout = proc.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes);
        bytes
    });
    let mut killed_at = None;
    if let Some(delay) = kill_after {
        std::thread::sleep(delay);
        killed_at = Some(now_ms());
        proc.kill().unwrap(); // SIGKILL: no destructor, no flush, no close.
    }
    let status = proc.wait().unwrap();
    let mut stderr = String::new();
    proc.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let lines = acknowledged(&reader.join().unwrap());
    (killed_at, lines, status, stderr)
}

/// The number in environment variable `name`, or `default`.
fn env_number<T: std::str::FromStr>(name: &str, default: impl FnOnce() -> T) -> T {
    std::env::var(name)
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} is a number")))
        .unwrap_or_else(|_| default())
}

/// The seed from `TOKENCACHE_CRASH_SEED`, or the time.
fn seed() -> u64 {
    env_number("TOKENCACHE_CRASH_SEED", now_ms)
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let rounds: usize = env_number("TOKENCACHE_CRASH_ROUNDS", || 200);
    let seed = seed();
    println!("crash torture: {rounds} rounds, seed {seed} (TOKENCACHE_CRASH_SEED={seed} replays the kill times)");
    let mut rng = Rng(seed);
    let started = Instant::now();

    let mut s = scratch();
    let mut torture = Torture::default();
    let mut totals = Torture::default();
    for round in 0..rounds {
        if round % ROUNDS_PER_STORE == 0 && round > 0 {
            s = scratch();
            totals.add(std::mem::take(&mut torture));
        }
        let child_seed = rng.next();
        // Mostly within the first 600 ms (startup, open, work); now and then right away.
        let delay = Duration::from_millis(match rng.below(8) {
            0 => rng.below(5),
            _ => rng.below(600),
        });
        let (killed_at, lines, status, stderr) = run_child(&s.path, child_seed, &[], Some(delay));
        assert_eq!(
            status.signal(),
            Some(9),
            "round {round} (seed {seed}): the child did not die by SIGKILL but {status}:\n{stderr}"
        );
        torture.check(
            &s.path,
            &Round {
                round,
                seed,
                killed_at,
                lines,
            },
        );
    }
    totals.add(torture);
    let t = totals;
    println!(
        "crash torture: {rounds} kills in {:.1} s; {} acknowledged issues, {} rotations, {} \
         revokes and {} deletes all survived; {} rounds ran a compaction; {} last_used bounds \
         checked, the newest validation of a checked token was at most {} ms ahead of disk; \
         {} tokens' credits spent an interval before a kill found on disk, at most {} spent \
         credits given back, \
         the oldest of them {} ms before the kill, {} checked exact; \
         {} tokens' validations an interval before a kill found counted, at most {} \
         acknowledged validations uncounted, the oldest {} ms before the kill, {} counts \
         checked exact; \
         {} rounds left temp files (removed by open); {} kills before the store opened; {} \
         revokes or deletes cut short by the kill; {} imports, {} set_meta, {} revoke_owner \
         and {} delete_owner (reaching {} tokens) acknowledged and kept, {} owner changes cut \
         short found all or nothing; {} checks of {OTHER_PREFIX} tokens after reopening with \
         the default prefix",
        started.elapsed().as_secs_f64(),
        t.acked_issues,
        t.acked_rotations,
        t.acked_revokes,
        t.acked_deletes,
        t.rounds_with_compactions,
        t.last_used_checks,
        t.max_lag_ms,
        t.credit_checks,
        t.max_given_back,
        t.max_given_back_ms,
        t.credit_exact_checks,
        t.uses_checks,
        t.max_uncounted,
        t.max_uncounted_ms,
        t.uses_exact_checks,
        t.rounds_with_temps,
        t.killed_before_ready,
        t.cut_short,
        t.acked_imports,
        t.acked_metas,
        t.acked_owner_revokes,
        t.acked_owner_deletes,
        t.owner_tokens,
        t.owner_cut_short,
        t.prefixed_checks,
    );
    // Not vacuous: the run must have exercised what it claims to check.
    if rounds >= 50 {
        assert!(t.acked_issues > 0 && t.acked_revokes > 0 && t.last_used_checks > 0);
        assert!(t.acked_deletes > 0 && t.acked_rotations > 0);
        assert!(t.acked_imports > 0 && t.acked_metas > 0 && t.prefixed_checks > 0);
        assert!(t.acked_owner_revokes > 0 && t.owner_tokens > 0);
        assert!(t.rounds_with_compactions > 0, "no compaction ran");
        assert!(t.credit_checks > 0 && t.credit_exact_checks > 0);
        assert!(t.uses_checks > 0 && t.uses_exact_checks > 0);
    }
}

/// A crash (abort, through the fault seam) at each step of a compaction: after the
/// snapshot's temp file is written, synced, renamed, its directory synced, and at each step
/// of replacing the journal. Every acknowledged change survives each, and nothing is
/// applied twice (a revoke stays revoked, a delete stays deleted, no token comes back).
/// `TOKENCACHE_CRASH_STEP_ROUNDS` (default 4) rounds per step.
#[test]
fn a_crash_at_every_compaction_step_loses_nothing_acknowledged() {
    let per_step: usize = env_number("TOKENCACHE_CRASH_STEP_ROUNDS", || 4);
    let seed = seed();
    println!("compaction crashes: {per_step} rounds per step, seed {seed}");
    let mut rng = Rng(seed);
    let mut totals = Torture::default();
    let mut round = 0;
    for step in FaultStep::COMPACTION {
        let s = scratch();
        let mut torture = Torture::default();
        for _ in 0..per_step {
            let name = format!("{step:?}");
            let env = [(CRASH_STEP_VAR, name.as_str())];
            let (_, lines, status, stderr) = run_child(&s.path, rng.next(), &env, None);
            assert_eq!(
                status.signal(),
                Some(libc::SIGABRT),
                "round {round} (seed {seed}): the child did not crash at {step:?} but {status}:\n{stderr}"
            );
            torture.check(
                &s.path,
                &Round {
                    round,
                    seed,
                    killed_at: None,
                    lines,
                },
            );
            round += 1;
        }
        totals.add(torture);
    }
    let t = totals;
    println!(
        "compaction crashes: {round} crashes; {} acknowledged issues, {} rotations, {} revokes \
         and {} deletes all survived, with {} imports, {} set_meta and {} owner revokes or \
         deletes; {} rounds left temp files (removed by open)",
        t.acked_issues,
        t.acked_rotations,
        t.acked_revokes,
        t.acked_deletes,
        t.acked_imports,
        t.acked_metas,
        t.acked_owner_revokes + t.acked_owner_deletes,
        t.rounds_with_temps,
    );
    assert!(t.acked_issues > 0 && t.acked_revokes + t.acked_deletes > 0);
}

impl Torture {
    /// Adds the tallies of `other` (a finished store's) to these.
    fn add(&mut self, other: Torture) {
        self.acked_issues += other.acked_issues;
        self.acked_rotations += other.acked_rotations;
        self.acked_revokes += other.acked_revokes;
        self.acked_deletes += other.acked_deletes;
        self.acked_imports += other.acked_imports;
        self.acked_metas += other.acked_metas;
        self.acked_owner_revokes += other.acked_owner_revokes;
        self.acked_owner_deletes += other.acked_owner_deletes;
        self.owner_tokens += other.owner_tokens;
        self.owner_cut_short += other.owner_cut_short;
        self.prefixed_checks += other.prefixed_checks;
        self.last_used_checks += other.last_used_checks;
        self.max_lag_ms = self.max_lag_ms.max(other.max_lag_ms);
        self.credit_checks += other.credit_checks;
        self.credit_exact_checks += other.credit_exact_checks;
        self.max_given_back = self.max_given_back.max(other.max_given_back);
        self.max_given_back_ms = self.max_given_back_ms.max(other.max_given_back_ms);
        self.uses_checks += other.uses_checks;
        self.uses_exact_checks += other.uses_exact_checks;
        self.max_uncounted = self.max_uncounted.max(other.max_uncounted);
        self.max_uncounted_ms = self.max_uncounted_ms.max(other.max_uncounted_ms);
        self.cut_short += other.cut_short;
        self.rounds_with_temps += other.rounds_with_temps;
        self.killed_before_ready += other.killed_before_ready;
        self.rounds_with_compactions += other.rounds_with_compactions;
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

/// Child process of `issued_and_revoked_tokens_survive_sigkill` (not a test of its own):
/// issues a token, prints it once `issue` returned, then waits to be killed.
#[test]
#[ignore = "child process of issued_and_revoked_tokens_survive_sigkill"]
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

#[test]
fn issued_and_revoked_tokens_survive_sigkill() {
    let s = scratch();
    let mut proc = spawn_child_test(
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
