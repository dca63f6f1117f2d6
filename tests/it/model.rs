//! A model-based fault test of the file store: random sequences of calls (issue,
//! issue_many, revoke, delete, rotate, set_rate_limit, purge, validate, flush, time passing),
//! each with a write fault (write, fsync, rename or directory fsync of a journal append or a
//! compaction) injected at random, with clean closes, crashes and reopens in between, checked
//! after every step and every reopen against a plain reference model:
//!
//! - memory says exactly what the model says (a failed issue or rotation leaves no token; a
//!   revoke, delete, limit or purge whose write failed is in force in memory all the same);
//! - after a clean close, the reopened store is memory as it was, `last_used` included;
//! - after a crash (the files copied as they are between two calls, which is what SIGKILL
//!   leaves: every write is synchronous with its call), every token is in a state the model
//!   allows: what the last successful write left, or what a failed write may have left;
//!   nothing acknowledged is lost, and `last_used` is at least what the last flush wrote;
//! - after any successful write, the files equal memory: a change whose write failed is no
//!   longer "maybe", so a revoked or deleted token is never valid again, and a refused issue
//!   never appears.
//!
//! A failing case is shrunk and printed as a numbered list of steps. CI runs
//! `TOKENCACHE_MODEL_CASES` cases (default 64); a long run:
//! `TOKENCACHE_MODEL_CASES=5000 cargo test --release --all-features --test it model:: -- --nocapture`.

use crate::common;
use common::Steps;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tokencache::__fault::{FaultPlan, FaultStep};
use tokencache::{Clock, Error, ManualClock, NewToken, RateLimit, Rejection, TokenId, TokenStore};

const EIO: i32 = 5;
const INTERVAL: Duration = Duration::from_secs(60);

/// One call, with the write fault armed while it runs (if any).
#[derive(Clone)]
struct Step {
    action: Action,
    fault: Option<FaultStep>,
}

#[derive(Clone, Debug)]
enum Action {
    /// `issue` with this lifetime in seconds (`None`: never expires).
    Issue(Option<u16>),
    /// `issue_many` of this many tokens.
    IssueMany(u8),
    /// The calls on a token pick it by index among the tokens the model knows (mod their
    /// count), so a shrunk sequence keeps pointing at tokens.
    Revoke(usize),
    Delete(usize),
    /// `rotate` with this grace in seconds.
    Rotate(usize, u16),
    /// `set_rate_limit`: one a minute (`true`) or none.
    Limit(usize, bool),
    Validate(usize),
    /// `purge` of tokens revoked or expired this many seconds ago.
    Purge(u16),
    Flush,
    /// The clock moves on this many seconds (timed writes run).
    Advance(u16),
    /// `close`, then open again.
    CloseReopen,
    /// The process dies between two calls; the files are opened by the next process.
    Crash,
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.fault {
            Some(step) => write!(f, "{:?} with {step:?} failing", self.action),
            None => write!(f, "{:?}", self.action),
        }
    }
}

fn action() -> impl Strategy<Value = Action> {
    let lifetime = proptest::option::of(30u16..600);
    prop_oneof![
        4 => lifetime.prop_map(Action::Issue),
        1 => (0u8..4).prop_map(Action::IssueMany),
        3 => any::<usize>().prop_map(Action::Revoke),
        2 => any::<usize>().prop_map(Action::Delete),
        2 => (any::<usize>(), 0u16..300).prop_map(|(i, g)| Action::Rotate(i, g)),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(i, l)| Action::Limit(i, l)),
        4 => any::<usize>().prop_map(Action::Validate),
        1 => (0u16..600).prop_map(Action::Purge),
        2 => Just(Action::Flush),
        2 => (1u16..120).prop_map(Action::Advance),
        1 => Just(Action::CloseReopen),
        1 => Just(Action::Crash),
    ]
}

fn fault() -> impl Strategy<Value = Option<FaultStep>> {
    let steps = [
        FaultStep::Append,
        FaultStep::AppendSync,
        FaultStep::Write,
        FaultStep::Fsync,
        FaultStep::Rename,
        FaultStep::SyncDir,
        FaultStep::ResetWrite,
        FaultStep::ResetFsync,
        FaultStep::ResetRename,
        FaultStep::ResetSyncDir,
    ];
    prop_oneof![
        3 => Just(None),
        1 => proptest::sample::select(steps.to_vec()).prop_map(Some),
    ]
}

fn steps() -> impl Strategy<Value = Steps<Step>> {
    let step = (action(), fault()).prop_map(|(action, fault)| Step { action, fault });
    proptest::collection::vec(step, 1..40).prop_map(Steps)
}

/// What the model knows of a token's definition (everything a write makes durable).
#[derive(Clone, Debug, PartialEq)]
struct Def {
    name: String,
    created_at: u64,
    revoked_at: Option<u64>,
    expires_at: Option<u64>,
    limit: Option<RateLimit>,
}

/// A token the model knows by id (issued, or rotated in, with an acknowledgement; or seen
/// after a reopen).
#[derive(Debug)]
struct Known {
    secret: Option<String>,
    /// What memory holds now (`None`: deleted).
    memory: Option<Def>,
    /// Every state the files may hold after a crash: what the last successful write left,
    /// and what each failed write since may have left.
    on_disk: Vec<Option<Def>>,
    /// The newest accepted validation (Unix ms).
    used: Option<u64>,
    /// `last_used` as the last successful flush or close wrote it: a crash keeps at least this.
    used_flushed: Option<u64>,
}

/// The reference model: plain data, one step at a time.
#[derive(Debug, Default)]
struct Model {
    known: BTreeMap<TokenId, Known>,
    /// Tokens whose issue or rotation failed: never in memory, but a failed fsync may have
    /// left them in the files, so a crash may bring them back until a write succeeds.
    ghosts: Vec<Def>,
    /// Names are unique per issue, so a ghost is found by its name.
    issued: u64,
}

impl Model {
    fn ids(&self) -> Vec<TokenId> {
        self.known.keys().copied().collect()
    }

    fn pick(&self, index: usize) -> Option<TokenId> {
        let ids = self.ids();
        (!ids.is_empty()).then(|| ids[index % ids.len()])
    }

    fn name(&mut self) -> String {
        self.issued += 1;
        format!("t{}", self.issued)
    }

    fn learn(&mut self, id: TokenId, secret: Option<String>, def: Def) {
        let known = Known {
            secret,
            memory: Some(def.clone()),
            on_disk: vec![Some(def)],
            used: None,
            used_flushed: None,
        };
        assert!(
            self.known.insert(id, known).is_none(),
            "id {id} drawn twice"
        );
    }

    /// Memory changed `id` to `def` before the write that fails or succeeds.
    fn change(&mut self, id: TokenId, def: Option<Def>) {
        let known = self.known.get_mut(&id).expect("known id");
        known.memory = def.clone();
        known.on_disk.push(def);
    }

    /// A write succeeded: the files equal memory, so nothing is "maybe" any more.
    fn written(&mut self) {
        for known in self.known.values_mut() {
            known.on_disk = vec![known.memory.clone()];
        }
        self.ghosts.clear();
    }

    /// A flush or close succeeded: `last_used` is on disk too.
    fn flushed(&mut self) {
        self.written();
        for known in self.known.values_mut() {
            known.used_flushed = known.used;
        }
    }
}

/// The system under test: a store on a manual clock with a fault plan, in a directory of
/// its own (a crash moves on to a copy of the files).
struct Subject {
    dir: tempfile::TempDir,
    path: PathBuf,
    clock: ManualClock,
    plan: FaultPlan,
    store: Option<TokenStore>,
}

impl Subject {
    fn new() -> Subject {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tokens.snap");
        let clock = ManualClock::default();
        let mut subject = Subject {
            dir,
            path,
            clock,
            plan: FaultPlan::default(),
            store: None,
        };
        subject.open();
        subject
    }

    fn open(&mut self) {
        let store = TokenStore::builder(&self.path)
            .clock(self.clock.clone())
            .flush_interval(INTERVAL)
            // Compact whenever the journal outgrows the snapshot (at a size check, once an
            // interval), so sequences reach compactions as often as appends.
            .compaction_floor(0)
            .fault_plan(self.plan.clone())
            .open()
            .unwrap_or_else(|e| panic!("the store does not open again: {e}"));
        self.store = Some(store);
    }

    fn store(&self) -> &TokenStore {
        self.store.as_ref().expect("open store")
    }

    /// The files as a SIGKILL between two calls leaves them, in a new directory; the old
    /// process's store is dropped afterwards without touching them.
    fn crash(&mut self) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tokens.snap");
        copy_if_there(&self.path, &path);
        copy_if_there(
            &common::journal_path(&self.path),
            &common::journal_path(&path),
        );
        let old = self.store.take();
        self.dir = dir;
        self.path = path;
        // The old store closes into the old directory, which nobody reads again.
        drop(old);
        self.open();
    }
}

fn copy_if_there(from: &Path, to: &Path) {
    if from.exists() {
        std::fs::copy(from, to).expect("copy a store file");
    }
}

/// How a call that changes the store ended.
enum Outcome<T> {
    Done(T),
    /// Refused before anything was written (unknown id, a token that cannot be rotated).
    Refused,
    /// The write failed: memory holds what the call applied at once.
    Failed,
}

fn outcome<T>(result: Result<T, Error>) -> Outcome<T> {
    match result {
        Ok(value) => Outcome::Done(value),
        Err(Error::UnknownId(_) | Error::InvalidRequest(_)) => Outcome::Refused,
        Err(Error::Io { .. }) => Outcome::Failed,
        Err(other) => panic!("unexpected error: {other}"),
    }
}

fn def_of(info: &tokencache::TokenInfo) -> Def {
    let ms = |t: chrono::DateTime<chrono::Utc>| t.timestamp_millis() as u64;
    Def {
        name: info.name.clone(),
        created_at: ms(info.created_at),
        revoked_at: info.revoked_at.map(ms),
        expires_at: info.expires_at.map(ms),
        limit: info.rate_limit,
    }
}

fn used_of(info: &tokencache::TokenInfo) -> Option<u64> {
    info.last_used.map(|t| t.timestamp_millis() as u64)
}

type Checked = Result<(), TestCaseError>;

macro_rules! check {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err(TestCaseError::fail(format!($($arg)*)));
        }
    };
}

/// Memory says exactly what the model says; `exact_used` also compares `last_used`.
fn check_memory(store: &TokenStore, model: &Model, exact_used: bool, when: &str) -> Checked {
    let listed: BTreeMap<TokenId, tokencache::TokenInfo> =
        store.list().into_iter().map(|t| (t.id, t)).collect();
    for (id, info) in &listed {
        let known = model.known.get(id);
        check!(
            known.is_some_and(|k| k.memory.is_some()),
            "{when}: token {id} ({}) is in the store but the model has none (a refused issue, or a deleted token, came back)",
            info.name
        );
    }
    for (id, known) in &model.known {
        let actual = listed.get(id);
        check!(
            actual.map(def_of) == known.memory,
            "{when}: token {id}: the store has {:?}, the model {:?}",
            actual.map(def_of),
            known.memory
        );
        if let (true, Some(info)) = (exact_used, actual) {
            check!(
                used_of(info) == known.used,
                "{when}: token {id}: last_used is {:?}, the model says {:?}",
                used_of(info),
                known.used
            );
        }
    }
    Ok(())
}

/// After a crash: every token is in a state the model allows; then the model takes what
/// the store holds as the truth.
fn check_crash(store: &TokenStore, model: &mut Model) -> Checked {
    let mut listed: BTreeMap<TokenId, tokencache::TokenInfo> =
        store.list().into_iter().map(|t| (t.id, t)).collect();
    for (id, known) in model.known.iter_mut() {
        let actual = listed.remove(id);
        let def = actual.as_ref().map(def_of);
        check!(
            known.on_disk.contains(&def),
            "after a crash: token {id} is {def:?}; the files may hold only one of {:?}",
            known.on_disk
        );
        let used = actual.as_ref().and_then(used_of);
        if actual.is_some() {
            check!(
                used >= known.used_flushed && used <= known.used,
                "after a crash: token {id}: last_used {used:?} is not between the flushed {:?} and the newest {:?}",
                known.used_flushed,
                known.used
            );
        }
        known.memory = def.clone();
        known.on_disk = vec![def];
        known.used = used;
        known.used_flushed = used;
    }
    // Whatever else is there must be a failed issue or rotation that reached the files.
    for (id, info) in listed {
        let def = def_of(&info);
        check!(
            model.ghosts.contains(&def),
            "after a crash: token {id} {def:?} is neither known nor a failed write that may have reached the files (ghosts: {:?})",
            model.ghosts
        );
        model.learn(id, None, def);
    }
    model.ghosts.clear();
    Ok(())
}

fn run(steps: &Steps<Step>) -> Checked {
    let mut subject = Subject::new();
    let mut model = Model::default();
    for (n, step) in steps.0.iter().enumerate() {
        let when = format!("after step {} ({step:?})", n + 1);
        if let Some(at) = step.fault {
            subject.plan.fail(at, EIO);
        }
        apply(&mut subject, &mut model, &step.action, &when)?;
        subject.plan.clear();
        if !matches!(step.action, Action::Crash) {
            check_memory(subject.store(), &model, false, &when)?;
        }
    }
    Ok(())
}

fn apply(subject: &mut Subject, model: &mut Model, action: &Action, when: &str) -> Checked {
    let now = subject.clock.now_ms();
    let secs = |s: u16| u64::from(s) * 1000;
    match *action {
        Action::Issue(lifetime) => {
            let name = model.name();
            let mut new = NewToken::new(name.clone());
            if let Some(s) = lifetime {
                new = new.expires_in(Duration::from_secs(s.into()));
            }
            let def = Def {
                name,
                created_at: now,
                revoked_at: None,
                expires_at: lifetime.map(|s| now + secs(s)),
                limit: None,
            };
            match outcome(subject.store().issue(new)) {
                Outcome::Done(issued) => {
                    model.written();
                    model.learn(issued.id(), Some(issued.secret().to_owned()), def);
                }
                Outcome::Failed => model.ghosts.push(def),
                Outcome::Refused => check!(false, "{when}: issue refused"),
            }
        }
        Action::IssueMany(count) => {
            let defs: Vec<Def> = (0..count)
                .map(|_| Def {
                    name: model.name(),
                    created_at: now,
                    revoked_at: None,
                    expires_at: None,
                    limit: None,
                })
                .collect();
            let requests = defs.iter().map(|d| NewToken::new(d.name.clone()));
            match outcome(subject.store().issue_many(requests)) {
                Outcome::Done(issued) => {
                    if count > 0 {
                        model.written();
                    }
                    for (token, def) in issued.into_iter().zip(defs) {
                        model.learn(token.id(), Some(token.secret().to_owned()), def);
                    }
                }
                Outcome::Failed => model.ghosts.extend(defs),
                Outcome::Refused => check!(false, "{when}: issue_many refused"),
            }
        }
        Action::Revoke(index) => {
            let Some(id) = model.pick(index) else {
                return Ok(());
            };
            let memory = model.known[&id].memory.clone();
            let result = outcome(subject.store().revoke(&id));
            let revoked = memory.clone().map(|mut d| {
                d.revoked_at.get_or_insert(now);
                d
            });
            changed(model, id, memory.is_some(), revoked, result, when)?;
        }
        Action::Delete(index) => {
            let Some(id) = model.pick(index) else {
                return Ok(());
            };
            let found = model.known[&id].memory.is_some();
            let result = outcome(subject.store().delete(&id));
            changed(model, id, found, None, result, when)?;
        }
        Action::Limit(index, limited) => {
            let Some(id) = model.pick(index) else {
                return Ok(());
            };
            let limit = limited.then(|| RateLimit::per_minute(1));
            let memory = model.known[&id].memory.clone();
            let result = outcome(subject.store().set_rate_limit(&id, limit));
            let set = memory.clone().map(|mut d| {
                d.limit = limit;
                d
            });
            changed(model, id, memory.is_some(), set, result, when)?;
        }
        Action::Rotate(index, grace) => {
            let Some(id) = model.pick(index) else {
                return Ok(());
            };
            let memory = model.known[&id].memory.clone();
            let result = outcome(
                subject
                    .store()
                    .rotate(&id, Duration::from_secs(grace.into())),
            );
            let Some(old) = memory else {
                check!(
                    matches!(result, Outcome::Refused),
                    "{when}: rotated a deleted token"
                );
                return Ok(());
            };
            let ended = old.revoked_at.is_some() || old.expires_at.is_some_and(|at| now >= at);
            if ended {
                check!(
                    matches!(result, Outcome::Refused),
                    "{when}: rotated a revoked or expired token"
                );
                return Ok(());
            }
            let until = now + secs(grace);
            let mut shortened = old.clone();
            shortened.expires_at = Some(old.expires_at.map_or(until, |at| at.min(until)));
            let new = Def {
                name: old.name.clone(),
                created_at: now,
                revoked_at: None,
                expires_at: old.expires_at.map(|at| now + (at - old.created_at)),
                limit: old.limit,
            };
            match result {
                Outcome::Done(issued) => {
                    model.change(id, Some(shortened));
                    model.written();
                    model.learn(issued.id(), Some(issued.secret().to_owned()), new);
                }
                Outcome::Failed => {
                    // Neither half is in memory; either may be in the files.
                    let known = model.known.get_mut(&id).expect("known id");
                    known.on_disk.push(Some(shortened));
                    model.ghosts.push(new);
                }
                Outcome::Refused => check!(false, "{when}: rotation of a live token refused"),
            }
        }
        Action::Validate(index) => {
            let Some(id) = model.pick(index) else {
                return Ok(());
            };
            let Some(secret) = model.known[&id].secret.clone() else {
                return Ok(());
            };
            let verdict = subject.store().validate(&secret).map(|_| ());
            let memory = model.known[&id].memory.clone();
            let expected = match &memory {
                None => Err(Rejection::Unknown),
                Some(d) if d.revoked_at.is_some() => Err(Rejection::Revoked),
                Some(d) if d.expires_at.is_some_and(|at| now >= at) => Err(Rejection::Expired),
                Some(_) => Ok(()),
            };
            let limited = memory.as_ref().is_some_and(|d| d.limit.is_some());
            let fits = verdict == expected
                || (limited
                    && expected.is_ok()
                    && matches!(verdict, Err(Rejection::RateLimited { .. })));
            check!(
                fits,
                "{when}: token {id} validated as {verdict:?}; the model expects {expected:?}"
            );
            if verdict.is_ok() {
                let known = model.known.get_mut(&id).expect("known id");
                known.used = known.used.max(Some(now));
            }
        }
        Action::Purge(age) => {
            let cutoff = now.saturating_sub(secs(age));
            let old = |at: Option<u64>| at.is_some_and(|at| at <= cutoff);
            let doomed: Vec<TokenId> = model
                .known
                .iter()
                .filter(|(_, k)| {
                    k.memory
                        .as_ref()
                        .is_some_and(|d| old(d.revoked_at) || old(d.expires_at))
                })
                .map(|(id, _)| *id)
                .collect();
            let result = outcome(subject.store().purge(Duration::from_secs(age.into())));
            for id in &doomed {
                model.change(*id, None);
            }
            match result {
                Outcome::Done(purged) => {
                    check!(
                        purged == doomed.len(),
                        "{when}: purged {purged}, the model expects {}",
                        doomed.len()
                    );
                    if purged > 0 {
                        model.written();
                    }
                }
                Outcome::Failed => {}
                Outcome::Refused => check!(false, "{when}: purge refused"),
            }
        }
        Action::Flush => match outcome(subject.store().flush()) {
            Outcome::Done(()) => model.flushed(),
            Outcome::Failed => {}
            Outcome::Refused => check!(false, "{when}: flush refused"),
        },
        Action::Advance(s) => subject.clock.advance(Duration::from_secs(s.into())),
        Action::CloseReopen => {
            let store = subject.store.take().expect("open store");
            let closed = store.close();
            subject.plan.clear();
            subject.open();
            match closed {
                Ok(()) => {
                    model.flushed();
                    check_memory(subject.store(), model, true, &format!("{when}, reopened"))?;
                }
                // A failed close is a crash as far as the files go.
                Err(Error::Io { .. }) => check_crash(subject.store(), model)?,
                Err(other) => check!(false, "{when}: close failed: {other}"),
            }
        }
        Action::Crash => {
            subject.plan.clear();
            subject.crash();
            check_crash(subject.store(), model)?;
        }
    }
    Ok(())
}

/// A revoke, delete or limit on `id`: memory takes `after` at once if the token was
/// `found`, whether the write succeeds or not.
fn changed(
    model: &mut Model,
    id: TokenId,
    found: bool,
    after: Option<Def>,
    result: Outcome<()>,
    when: &str,
) -> Checked {
    match (found, result) {
        (true, Outcome::Done(())) => {
            model.change(id, after);
            model.written();
        }
        (true, Outcome::Failed) => model.change(id, after),
        (false, Outcome::Refused) => {}
        (true, Outcome::Refused) => check!(false, "{when}: a call on live token {id} refused"),
        (false, _) => check!(
            false,
            "{when}: a call on deleted token {id} was not refused"
        ),
    }
    Ok(())
}

/// The property: every sequence of calls, faults, closes and crashes keeps the model's
/// promises (see the module docs).
#[test]
fn random_sequences_with_write_faults_and_crashes_keep_every_promise() {
    common::run_model("TOKENCACHE_MODEL_CASES", 64, 4096, &steps(), |steps| {
        run(&steps)
    });
}

/// The sequence the model test finds first on a store that closes without writing a
/// change whose write failed: a revoke that fails, then a clean close.
#[test]
fn a_revoke_whose_write_failed_survives_a_clean_close() {
    for fault in [FaultStep::Append, FaultStep::AppendSync] {
        let steps = Steps(vec![
            Step {
                action: Action::Issue(None),
                fault: None,
            },
            Step {
                action: Action::Revoke(0),
                fault: Some(fault),
            },
            Step {
                action: Action::CloseReopen,
                fault: None,
            },
        ]);
        if let Err(e) = run(&steps) {
            panic!("{steps:?}{e}");
        }
    }
}
