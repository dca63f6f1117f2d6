//! Keys as a product on the file store: owners, metadata, imported keys and prefixes.
//!
//! One model-based test drives random sequences of calls (issue with or without owner and
//! metadata, import, revoke, revoke_owner, delete_owner, set_meta, set_owner_rate_limit,
//! rotate, delete, purge, time passing, close and reopen, reopen under another prefix) on a
//! store that compacts whenever its journal outgrows its snapshot, and checks after every
//! step, against a reference model of plain maps:
//!
//! - `validate` of every secret and foreign key ever known, and of tokens from other stores
//!   (recorded prefix: `Unknown`; prefix never issued under: `Malformed`, unless the store
//!   holds imported keys, which turns every string it cannot parse into a digest lookup);
//! - `get`, `list`, `owned_by` and `owner_rate_limit` (owner, metadata, import mark);
//! - a [`StoreView`] read of the files agrees with memory (every change is durable when
//!   its call returns), and validates as memory does.
//!
//! `TOKENCACHE_KEYS_CASES` sets the number of cases (default 48). Beside it, one test per
//! promise.

use crate::common::{self, journal_path, manual_builder, manual_store, scratch, Steps};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use sha2::{Digest as _, Sha256};
use tokencache::{
    Clock, Error, ImportedToken, ManualClock, NewToken, RateLimit, Rejection, StoreView, TokenId,
    TokenInfo, TokenStore,
};

/// The hex SHA-256 of `key`, as `sha256sum` prints it.
fn sha256_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn import_of(key: &str) -> ImportedToken {
    ImportedToken::sha256(&sha256_hex(key)).expect("a digest")
}

/// The prefixes the model opens its store with.
const PREFIXES: [&str; 3] = ["tc", "sk_live", "sk_test"];
/// Owners of the model's tokens.
const OWNERS: [&str; 3] = ["acme", "globex", "initech"];
/// Keys minted elsewhere that the model imports (some more than once, after a delete).
const FOREIGN: [&str; 4] = [
    "legacy-key-0001",
    "AKIA-0000-not-ours",
    "ghp_016charsNotOursAtAll0000000000000000",
    "x",
];

/// Tokens of other stores, one per prefix: `tc`, `sk_live`, `sk_test`, and `zz`, which
/// the model never opens with.
fn aliens() -> &'static Vec<(String, String)> {
    static ALIENS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    ALIENS.get_or_init(|| {
        let s = scratch();
        let mut aliens = Vec::new();
        for prefix in ["tc", "sk_live", "sk_test", "zz"] {
            let store = TokenStore::builder(&s.path).prefix(prefix).open().unwrap();
            let issued = store.issue(NewToken::new("alien")).unwrap();
            aliens.push((prefix.to_string(), issued.secret().to_string()));
            store.close().unwrap();
        }
        aliens
    })
}

#[derive(Clone, Debug)]
enum Action {
    /// `issue` with an owner (index into [`OWNERS`]) and a metadata value.
    Issue {
        owner: Option<usize>,
        meta: Option<u8>,
        lifetime: Option<u16>,
    },
    /// `import` of [`FOREIGN`]`[key]`, with an owner.
    Import {
        key: usize,
        owner: Option<usize>,
    },
    /// The calls on a token pick it by index among the model's tokens (mod their count).
    Revoke(usize),
    Delete(usize),
    /// `set_meta` with this value (`None`: no pairs).
    SetMeta(usize, Option<u8>),
    /// `rotate` with this grace in seconds.
    Rotate(usize, u16),
    RevokeOwner(usize),
    DeleteOwner(usize),
    /// `set_owner_rate_limit`: one a minute (`true`) or none.
    OwnerLimit(usize, bool),
    /// `purge` of tokens revoked or expired this many seconds ago.
    Purge(u16),
    /// The clock moves on this many seconds (timed writes and compactions run).
    Advance(u16),
    /// `close`, then open with the prefix [`PREFIXES`]`[n]`.
    Reopen(usize),
}

fn action() -> impl Strategy<Value = Action> {
    let owner = proptest::option::of(0..OWNERS.len());
    prop_oneof![
        5 => (owner.clone(), proptest::option::of(any::<u8>()), proptest::option::of(30u16..600))
            .prop_map(|(owner, meta, lifetime)| Action::Issue { owner, meta, lifetime }),
        2 => (0..FOREIGN.len(), owner).prop_map(|(key, owner)| Action::Import { key, owner }),
        2 => any::<usize>().prop_map(Action::Revoke),
        1 => any::<usize>().prop_map(Action::Delete),
        2 => (any::<usize>(), proptest::option::of(any::<u8>())).prop_map(|(i, v)| Action::SetMeta(i, v)),
        2 => (any::<usize>(), 0u16..300).prop_map(|(i, g)| Action::Rotate(i, g)),
        2 => (0..OWNERS.len()).prop_map(Action::RevokeOwner),
        1 => (0..OWNERS.len()).prop_map(Action::DeleteOwner),
        1 => (0..OWNERS.len(), any::<bool>()).prop_map(|(o, l)| Action::OwnerLimit(o, l)),
        1 => (0u16..600).prop_map(Action::Purge),
        2 => (1u16..400).prop_map(Action::Advance),
        2 => (0..PREFIXES.len()).prop_map(Action::Reopen),
    ]
}

/// What the model knows of one token.
#[derive(Clone, Debug, PartialEq)]
struct Def {
    name: String,
    created_at: u64,
    revoked_at: Option<u64>,
    expires_at: Option<u64>,
    owner: Option<String>,
    meta: Vec<(String, String)>,
    imported: bool,
}

impl Def {
    fn of(info: &TokenInfo) -> Def {
        let ms = |t: chrono::DateTime<chrono::Utc>| t.timestamp_millis() as u64;
        Def {
            name: info.name.clone(),
            created_at: ms(info.created_at),
            revoked_at: info.revoked_at.map(ms),
            expires_at: info.expires_at.map(ms),
            owner: info.owner.clone(),
            meta: info.meta.clone(),
            imported: info.imported,
        }
    }

    fn ended(&self, now: u64) -> bool {
        self.revoked_at.is_some() || self.expires_at.is_some_and(|at| now >= at)
    }
}

/// The reference model.
#[derive(Debug, Default)]
struct Model {
    tokens: BTreeMap<TokenId, Def>,
    /// Every secret or foreign key ever known, with the token that holds it now (`None`:
    /// deleted).
    keys: BTreeMap<String, Option<TokenId>>,
    owner_limits: BTreeMap<String, RateLimit>,
    /// Prefixes a native token was issued under: accepted for good.
    issued_under: BTreeSet<String>,
    /// Prefixes the store was opened with: accepted while open, and maybe after.
    opened_with: BTreeSet<String>,
    prefix: String,
    names: u64,
}

impl Model {
    fn pick(&self, index: usize) -> Option<TokenId> {
        let ids: Vec<TokenId> = self.tokens.keys().copied().collect();
        (!ids.is_empty()).then(|| ids[index % ids.len()])
    }

    fn name(&mut self) -> String {
        self.names += 1;
        format!("t{}", self.names)
    }

    fn has_imported(&self) -> bool {
        self.tokens.values().any(|d| d.imported)
    }

    fn delete(&mut self, id: &TokenId) {
        self.tokens.remove(id);
        for holder in self.keys.values_mut() {
            if *holder == Some(*id) {
                *holder = None;
            }
        }
    }

    fn issued(&mut self, secret: &str, id: TokenId, def: Def) {
        assert!(self.tokens.insert(id, def).is_none(), "id {id} drawn twice");
        self.keys.insert(secret.to_string(), Some(id));
        self.issued_under.insert(self.prefix.clone());
    }

    /// What `validate` of `key` may answer at `now` (memory: rate limits count).
    fn expect(&self, key: &str, now: u64) -> Vec<Result<(), Rejection>> {
        match self.keys.get(key).copied().flatten() {
            Some(id) => {
                let def = &self.tokens[&id];
                if def.revoked_at.is_some() {
                    vec![Err(Rejection::Revoked)]
                } else if def.expires_at.is_some_and(|at| now >= at) {
                    vec![Err(Rejection::Expired)]
                } else {
                    vec![Ok(())]
                }
            }
            None => self.expect_unknown(key),
        }
    }

    /// What `validate` of a string no token holds may answer.
    fn expect_unknown(&self, key: &str) -> Vec<Result<(), Rejection>> {
        if self.has_imported() {
            return vec![Err(Rejection::Unknown)];
        }
        let prefix = key.rsplitn(3, '_').nth(2);
        match prefix {
            Some(p) if p == "tc" || self.issued_under.contains(p) => vec![Err(Rejection::Unknown)],
            Some(p) if self.opened_with.contains(p) => {
                vec![Err(Rejection::Unknown), Err(Rejection::Malformed)]
            }
            _ => vec![Err(Rejection::Malformed)],
        }
    }
}

type Checked = Result<(), TestCaseError>;

macro_rules! check {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err(TestCaseError::fail(format!($($arg)*)));
        }
    };
}

struct Subject {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    clock: ManualClock,
    store: Option<TokenStore>,
}

impl Subject {
    fn open(&mut self, prefix: &str) {
        let store = TokenStore::builder(&self.path)
            .clock(self.clock.clone())
            .flush_interval(common::INTERVAL)
            // Compact whenever the journal outgrows the snapshot (checked once an interval),
            // so the files are a snapshot, a journal, or both, at random.
            .compaction_floor(0)
            .prefix(prefix)
            .open()
            .unwrap_or_else(|e| panic!("the store does not open again: {e}"));
        self.store = Some(store);
    }

    fn store(&self) -> &TokenStore {
        self.store.as_ref().expect("open store")
    }
}

fn verdict<T>(result: Result<T, Rejection>) -> Result<(), Rejection> {
    result.map(|_| ()).map_err(|r| match r {
        Rejection::RateLimited { .. } => Rejection::RateLimited {
            retry_after: Duration::ZERO,
        },
        other => other,
    })
}

/// Everything the model says about memory and the files, checked.
fn check_all(subject: &Subject, model: &Model, when: &str) -> Checked {
    let store = subject.store();
    let now = subject.clock.now_ms();
    let listed: BTreeMap<TokenId, Def> = store.list().iter().map(|i| (i.id, Def::of(i))).collect();
    check!(
        listed == model.tokens,
        "{when}: the store lists {listed:#?}\nthe model has {:#?}",
        model.tokens
    );
    for (id, def) in &model.tokens {
        let got = store.get(id).map(|i| Def::of(&i));
        check!(got.as_ref() == Some(def), "{when}: get({id}) is {got:?}");
    }
    for owner in OWNERS {
        let owned: BTreeSet<TokenId> = store.owned_by(owner).iter().map(|i| i.id).collect();
        let expected: BTreeSet<TokenId> = model
            .tokens
            .iter()
            .filter(|(_, d)| d.owner.as_deref() == Some(owner))
            .map(|(id, _)| *id)
            .collect();
        check!(
            owned == expected,
            "{when}: owned_by({owner}) is {owned:?}, the model says {expected:?}"
        );
        let limit = store.owner_rate_limit(owner);
        check!(
            limit == model.owner_limits.get(owner).copied(),
            "{when}: owner {owner} has limit {limit:?}"
        );
    }
    // The files: a view agrees with memory (last_used aside: it is written behind).
    let view = StoreView::read(&subject.path)
        .map_err(|e| TestCaseError::fail(format!("{when}: the view does not read: {e}")))?;
    let viewed: BTreeMap<TokenId, Def> = view.list().iter().map(|i| (i.id, Def::of(i))).collect();
    check!(
        viewed == model.tokens,
        "{when}: the files hold {viewed:#?}\nthe model has {:#?}",
        model.tokens
    );
    // Validation, last (it spends owners' quotas). Keys of tokens with an expiry are left
    // to memory: the view judges expiry on the system clock, not the store's manual one.
    for key in model.keys.keys() {
        let expected = model.expect(key, now);
        let got = verdict(store.validate(key));
        let limited = model.keys[key]
            .and_then(|id| model.tokens[&id].owner.as_ref())
            .is_some_and(|o| model.owner_limits.contains_key(o));
        let fits = expected.contains(&got)
            || (limited
                && expected == [Ok(())]
                && matches!(got, Err(Rejection::RateLimited { .. })));
        check!(
            fits,
            "{when}: validate({key}) is {got:?}, the model expects {expected:?}"
        );
        let timeless = model.keys[key].is_none_or(|id| model.tokens[&id].expires_at.is_none());
        if timeless {
            let seen = verdict(view.validate(key));
            check!(
                expected.contains(&seen),
                "{when}: the view validates {key} as {seen:?}, the model expects {expected:?}"
            );
        }
    }
    for key in FOREIGN.iter().filter(|k| !model.keys.contains_key(**k)) {
        let expected = model.expect_unknown(key);
        let got = verdict(store.validate(key));
        check!(
            expected.contains(&got),
            "{when}: validate of foreign {key:?} is {got:?}, the model expects {expected:?}"
        );
    }
    for (prefix, secret) in aliens() {
        let expected = model.expect_unknown(secret);
        let got = verdict(store.validate(secret));
        check!(
            expected.contains(&got),
            "{when}: a token of another store under {prefix} validates as {got:?}, the model expects {expected:?}"
        );
        let seen = verdict(view.validate(secret));
        check!(
            expected.contains(&seen),
            "{when}: the view validates a token of another store under {prefix} as {seen:?}, the model expects {expected:?}"
        );
    }
    Ok(())
}

fn run(steps: &Steps<Action>) -> Checked {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tokens.snap");
    let mut subject = Subject {
        _dir: dir,
        path,
        clock: ManualClock::default(),
        store: None,
    };
    let mut model = Model {
        prefix: "tc".into(),
        ..Model::default()
    };
    subject.open("tc");
    model.opened_with.insert("tc".into());
    check_all(&subject, &model, "after opening")?;
    for (n, action) in steps.0.iter().enumerate() {
        let when = format!("after step {} ({action:?})", n + 1);
        apply(&mut subject, &mut model, action, &when)?;
        check_all(&subject, &model, &when)?;
    }
    subject
        .store
        .take()
        .expect("open store")
        .close()
        .expect("close");
    Ok(())
}

/// An error a call may be refused with (nothing written): anything else fails the case.
fn refused<T: fmt::Debug>(result: Result<T, Error>, when: &str) -> Result<bool, TestCaseError> {
    match result {
        Ok(_) => Ok(false),
        Err(Error::UnknownId(_) | Error::InvalidRequest(_)) => Ok(true),
        Err(other) => Err(TestCaseError::fail(format!(
            "{when}: unexpected error {other}"
        ))),
    }
}

fn apply(subject: &mut Subject, model: &mut Model, action: &Action, when: &str) -> Checked {
    let now = subject.clock.now_ms();
    let secs = |s: u16| u64::from(s) * 1000;
    let meta_of = |v: Option<u8>| -> Vec<(String, String)> {
        v.map(|v| {
            vec![
                ("plan".to_string(), format!("p{v}")),
                ("tenant".to_string(), String::new()),
            ]
        })
        .unwrap_or_default()
    };
    match *action {
        Action::Issue {
            owner,
            meta,
            lifetime,
        } => {
            let name = model.name();
            let mut new = NewToken::new(name.clone());
            let owner = owner.map(|o| OWNERS[o].to_string());
            if let Some(o) = &owner {
                new = new.owner(o.clone());
            }
            let meta = meta_of(meta);
            for (k, v) in &meta {
                new = new.meta(k.clone(), v.clone());
            }
            if let Some(s) = lifetime {
                new = new.expires_in(Duration::from_secs(s.into()));
            }
            let issued = subject
                .store()
                .issue(new)
                .map_err(|e| TestCaseError::fail(format!("{when}: {e}")))?;
            check!(
                issued.secret().starts_with(&format!("{}_", model.prefix)),
                "{when}: {} is not under prefix {}",
                issued.secret(),
                model.prefix
            );
            let def = Def {
                name,
                created_at: now,
                revoked_at: None,
                expires_at: lifetime.map(|s| now + secs(s)),
                owner,
                meta,
                imported: false,
            };
            model.issued(issued.secret(), issued.id(), def);
        }
        Action::Import { key, owner } => {
            let key = FOREIGN[key];
            let name = model.name();
            let owner = owner.map(|o| OWNERS[o].to_string());
            let mut import = import_of(key).name(name.clone()).meta("source", "legacy");
            if let Some(o) = &owner {
                import = import.owner(o.clone());
            }
            let held = model.keys.get(key).copied().flatten();
            let result = subject.store().import(import);
            if held.is_some() {
                check!(refused(result, when)?, "{when}: {key:?} was imported twice");
                return Ok(());
            }
            let id = result.map_err(|e| TestCaseError::fail(format!("{when}: {e}")))?;
            let def = Def {
                name,
                created_at: now,
                revoked_at: None,
                expires_at: None,
                owner,
                meta: vec![("source".into(), "legacy".into())],
                imported: true,
            };
            check!(
                model.tokens.insert(id, def).is_none(),
                "{when}: id {id} twice"
            );
            model.keys.insert(key.to_string(), Some(id));
        }
        Action::Revoke(i) => {
            let Some(id) = model.pick(i) else {
                return Ok(());
            };
            subject
                .store()
                .revoke(&id)
                .map_err(|e| TestCaseError::fail(format!("{when}: {e}")))?;
            let def = model.tokens.get_mut(&id).expect("picked");
            def.revoked_at.get_or_insert(now);
        }
        Action::Delete(i) => {
            let Some(id) = model.pick(i) else {
                return Ok(());
            };
            subject
                .store()
                .delete(&id)
                .map_err(|e| TestCaseError::fail(format!("{when}: {e}")))?;
            model.delete(&id);
        }
        Action::SetMeta(i, value) => {
            let Some(id) = model.pick(i) else {
                return Ok(());
            };
            let meta = meta_of(value);
            subject
                .store()
                .set_meta(&id, &meta)
                .map_err(|e| TestCaseError::fail(format!("{when}: {e}")))?;
            model.tokens.get_mut(&id).expect("picked").meta = meta;
        }
        Action::Rotate(i, grace) => {
            let Some(id) = model.pick(i) else {
                return Ok(());
            };
            let old = model.tokens[&id].clone();
            let result = subject
                .store()
                .rotate(&id, Duration::from_secs(grace.into()));
            if old.ended(now) {
                check!(
                    refused(result, when)?,
                    "{when}: rotated a revoked or expired token"
                );
                return Ok(());
            }
            let issued = result.map_err(|e| TestCaseError::fail(format!("{when}: {e}")))?;
            let until = now + secs(grace);
            let new = Def {
                name: old.name.clone(),
                created_at: now,
                revoked_at: None,
                expires_at: old.expires_at.map(|at| now + (at - old.created_at)),
                owner: old.owner.clone(),
                meta: old.meta.clone(),
                imported: false,
            };
            let shortened = model.tokens.get_mut(&id).expect("picked");
            shortened.expires_at = Some(old.expires_at.map_or(until, |at| at.min(until)));
            model.issued(issued.secret(), issued.id(), new);
        }
        Action::RevokeOwner(o) => {
            let owner = OWNERS[o];
            let revoked = subject
                .store()
                .revoke_owner(owner)
                .map_err(|e| TestCaseError::fail(format!("{when}: {e}")))?;
            let mut expected = 0;
            for def in model.tokens.values_mut() {
                if def.owner.as_deref() == Some(owner) && def.revoked_at.is_none() {
                    def.revoked_at = Some(now);
                    expected += 1;
                }
            }
            check!(
                revoked == expected,
                "{when}: revoke_owner says {revoked}, the model {expected}"
            );
        }
        Action::DeleteOwner(o) => {
            let owner = OWNERS[o];
            let deleted = subject
                .store()
                .delete_owner(owner)
                .map_err(|e| TestCaseError::fail(format!("{when}: {e}")))?;
            let doomed: Vec<TokenId> = model
                .tokens
                .iter()
                .filter(|(_, d)| d.owner.as_deref() == Some(owner))
                .map(|(id, _)| *id)
                .collect();
            check!(
                deleted == doomed.len(),
                "{when}: delete_owner says {deleted}, the model {}",
                doomed.len()
            );
            for id in &doomed {
                model.delete(id);
            }
        }
        Action::OwnerLimit(o, limited) => {
            let owner = OWNERS[o];
            let limit = limited.then(|| RateLimit::per_minute(2));
            subject
                .store()
                .set_owner_rate_limit(owner, limit)
                .map_err(|e| TestCaseError::fail(format!("{when}: {e}")))?;
            match limit {
                Some(limit) => model.owner_limits.insert(owner.to_string(), limit),
                None => model.owner_limits.remove(owner),
            };
        }
        Action::Purge(age) => {
            let cutoff = now.saturating_sub(secs(age));
            let old = |at: Option<u64>| at.is_some_and(|at| at <= cutoff);
            let doomed: Vec<TokenId> = model
                .tokens
                .iter()
                .filter(|(_, d)| old(d.revoked_at) || old(d.expires_at))
                .map(|(id, _)| *id)
                .collect();
            let purged = subject
                .store()
                .purge(Duration::from_secs(age.into()))
                .map_err(|e| TestCaseError::fail(format!("{when}: {e}")))?;
            check!(
                purged == doomed.len(),
                "{when}: purged {purged}, the model {}",
                doomed.len()
            );
            for id in &doomed {
                model.delete(id);
            }
        }
        Action::Advance(s) => subject.clock.advance(Duration::from_secs(s.into())),
        Action::Reopen(p) => {
            let store = subject.store.take().expect("open store");
            store
                .close()
                .map_err(|e| TestCaseError::fail(format!("{when}: close: {e}")))?;
            let prefix = PREFIXES[p];
            subject.open(prefix);
            model.prefix = prefix.to_string();
            model.opened_with.insert(prefix.to_string());
        }
    }
    Ok(())
}

/// The property: every sequence of calls, closes and reopens under other prefixes keeps
/// the model's promises (see the module docs).
#[test]
fn random_sequences_of_owner_meta_import_and_prefix_calls_match_the_model() {
    let steps = proptest::collection::vec(action(), 1..32).prop_map(Steps);
    common::run_model("TOKENCACHE_KEYS_CASES", 48, 2048, &steps, |steps| {
        run(&steps)
    });
}

/// A store on a manual clock issuing under `prefix`.
fn open_with(path: &Path, prefix: &str) -> (TokenStore, ManualClock) {
    let (builder, clock) = manual_builder(path);
    (builder.prefix(prefix).open().expect("open store"), clock)
}

#[test]
fn a_revoked_owner_has_every_token_revoked_after_reopen() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let mut acme = Vec::new();
    for n in 0..5 {
        acme.push(
            store
                .issue(NewToken::new(format!("acme-{n}")).owner("acme"))
                .unwrap(),
        );
    }
    let other = store
        .issue(NewToken::new("globex").owner("globex"))
        .unwrap();
    let loose = store.issue(NewToken::new("no owner")).unwrap();
    // One already revoked keeps its own time and is not counted again.
    store.revoke(&acme[0].id()).unwrap();
    let first_revoked_at = store.get(&acme[0].id()).unwrap().revoked_at;
    assert_eq!(store.revoke_owner("acme").unwrap(), 4);
    assert_eq!(store.revoke_owner("nobody").unwrap(), 0);
    for token in &acme {
        assert_eq!(
            store.validate(token.secret()).unwrap_err(),
            Rejection::Revoked
        );
    }
    // Crash: the files as they are now (the journal holds the revoke_owner record).
    let crashed = common::crash_image(&s.path);
    store.close().unwrap();
    for path in [&s.path, &crashed.path] {
        let (store, _clock) = manual_store(path);
        for token in &acme {
            assert_eq!(
                store.validate(token.secret()).unwrap_err(),
                Rejection::Revoked
            );
        }
        assert!(store.validate(other.secret()).is_ok());
        assert!(store.validate(loose.secret()).is_ok());
        assert_eq!(
            store.get(&acme[0].id()).unwrap().revoked_at,
            first_revoked_at
        );
        assert_eq!(store.owned_by("acme").len(), 5);
        assert!(store
            .owned_by("acme")
            .iter()
            .all(|t| t.revoked_at.is_some()));
        store.close().unwrap();
    }
}

#[test]
fn a_deleted_owner_has_every_token_gone_after_reopen() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let acme: Vec<_> = (0..3)
        .map(|n| {
            store
                .issue(NewToken::new(format!("a{n}")).owner("acme"))
                .unwrap()
        })
        .collect();
    let other = store
        .issue(NewToken::new("globex").owner("globex"))
        .unwrap();
    assert_eq!(store.delete_owner("acme").unwrap(), 3);
    let crashed = common::crash_image(&s.path);
    store.close().unwrap();
    for path in [&s.path, &crashed.path] {
        let (store, _clock) = manual_store(path);
        for token in &acme {
            assert_eq!(
                store.validate(token.secret()).unwrap_err(),
                Rejection::Unknown
            );
        }
        assert!(store.owned_by("acme").is_empty());
        assert!(store.validate(other.secret()).is_ok());
        store.close().unwrap();
    }
}

#[test]
fn metadata_survives_journal_replay_and_compaction() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let token = store
        .issue(
            NewToken::new("svc")
                .owner("acme")
                .meta("plan", "pro")
                .meta("tenant", "t-1"),
        )
        .unwrap();
    let plain = store.issue(NewToken::new("plain")).unwrap();
    store.set_meta(&plain.id(), &[("plan", "free")]).unwrap();
    store
        .set_meta(&token.id(), &[("plan", "enterprise"), ("region", "eu")])
        .unwrap();
    let expected = |store: &TokenStore| {
        let valid = store.validate(token.secret()).unwrap();
        assert_eq!(valid.meta("plan"), Some("enterprise"));
        assert_eq!(valid.meta("region"), Some("eu"));
        assert_eq!(valid.meta("tenant"), None, "set_meta replaces every pair");
        assert_eq!(valid.owner(), Some("acme"), "set_meta keeps the owner");
        let pairs: Vec<_> = valid.meta_pairs().collect();
        assert_eq!(pairs, [("plan", "enterprise"), ("region", "eu")]);
        assert_eq!(
            store.validate(plain.secret()).unwrap().meta("plan"),
            Some("free")
        );
    };
    expected(&store);
    // Journal replay: the files as they are before any compaction.
    let replayed = common::crash_image(&s.path);
    assert!(tokencache::inspect(&replayed.path).unwrap().journal_records > 0);
    let (copy, _clock) = manual_store(&replayed.path);
    expected(&copy);
    copy.close().unwrap();
    // Compaction (close writes a snapshot and empties the journal).
    store.close().unwrap();
    assert_eq!(tokencache::inspect(&s.path).unwrap().journal_records, 0);
    let (store, _clock) = manual_store(&s.path);
    expected(&store);
    let view = StoreView::read(&s.path).unwrap();
    assert_eq!(
        view.get(&token.id()).unwrap().meta,
        store.get(&token.id()).unwrap().meta
    );
    // Removing every pair is durable too.
    store.set_meta::<&str, &str>(&token.id(), &[]).unwrap();
    store.close().unwrap();
    let (store, _clock) = manual_store(&s.path);
    assert_eq!(store.validate(token.secret()).unwrap().meta("plan"), None);
    assert_eq!(
        store.get(&token.id()).unwrap().owner.as_deref(),
        Some("acme")
    );
    store.close().unwrap();
}

#[test]
fn metadata_over_4_kib_or_with_a_repeated_key_is_refused_and_nothing_is_issued() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let big = "v".repeat(4096);
    let refusals = [
        NewToken::new("big").meta("k", big.clone()),
        NewToken::new("twice").meta("plan", "a").meta("plan", "b"),
        NewToken::new("empty key").meta("", "x"),
    ];
    for new in refusals {
        let err = store.issue(new).unwrap_err();
        assert!(matches!(err, Error::InvalidRequest(_)), "{err}");
    }
    let err = store
        .issue_many([
            NewToken::new("ok"),
            NewToken::new("twice").meta("a", "1").meta("a", "2"),
        ])
        .unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)), "{err}");
    let err = store
        .import(import_of("legacy").meta("k", big.clone()))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)), "{err}");
    assert!(
        store.list().is_empty(),
        "something was issued: {:?}",
        store.list()
    );
    assert_eq!(store.validate("legacy").unwrap_err(), Rejection::Malformed);
    // set_meta refuses the same and leaves the pairs as they were.
    let token = store.issue(NewToken::new("t").meta("plan", "pro")).unwrap();
    assert!(store.set_meta(&token.id(), &[("k", big.as_str())]).is_err());
    assert!(store
        .set_meta(&token.id(), &[("a", "1"), ("a", "2")])
        .is_err());
    assert_eq!(
        store.validate(token.secret()).unwrap().meta("plan"),
        Some("pro")
    );
    // Exactly 4 KiB of keys and values is accepted.
    store.set_meta(&token.id(), &[("k", &big[1..])]).unwrap();
    store.close().unwrap();
    let (store, _clock) = manual_store(&s.path);
    assert_eq!(store.list().len(), 1);
    assert_eq!(
        store.validate(token.secret()).unwrap().meta("k"),
        Some(&big[1..])
    );
    store.close().unwrap();
}

#[test]
fn an_imported_key_validates_and_rotates_into_a_native_token() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let key = "AKIAIOSFODNN7EXAMPLE-legacy";
    let id = store
        .import(
            import_of(key)
                .name("legacy-ci")
                .scopes(["read"])
                .owner("acme")
                .meta("plan", "pro"),
        )
        .unwrap();
    let valid = store.validate_scope(key, "read").unwrap();
    assert_eq!((valid.id(), valid.name()), (id, "legacy-ci"));
    assert_eq!(
        (valid.owner(), valid.meta("plan")),
        (Some("acme"), Some("pro"))
    );
    drop(valid);
    assert!(store.get(&id).unwrap().imported);
    assert!(
        matches!(store.import(import_of(key)), Err(Error::InvalidRequest(_))),
        "imported twice"
    );
    assert_eq!(
        store.validate("AKIAIOSFODNN7EXAMPLE-legacY").unwrap_err(),
        Rejection::Unknown
    );
    // After a reopen from the journal, and after a compaction.
    let replayed = common::crash_image(&s.path);
    let (copy, _clock) = manual_store(&replayed.path);
    assert_eq!(copy.validate(key).unwrap().id(), id);
    copy.close().unwrap();
    store.close().unwrap();
    let (store, clock) = manual_store(&s.path);
    assert_eq!(store.validate(key).unwrap().id(), id);
    assert_eq!(
        StoreView::read(&s.path)
            .unwrap()
            .validate(key)
            .unwrap()
            .id(),
        id
    );
    // Rotation: a native token with the same name, scopes, owner and metadata; the old key
    // works through the grace.
    let native = store.rotate(&id, Duration::from_secs(60)).unwrap();
    assert!(native.secret().starts_with("tc_"));
    let info = store.get(&native.id()).unwrap();
    assert!(!info.imported);
    assert_eq!(
        (info.name.as_str(), info.owner.as_deref()),
        ("legacy-ci", Some("acme"))
    );
    assert_eq!(info.meta, [("plan".to_string(), "pro".to_string())]);
    assert!(store.validate_scope(native.secret(), "read").is_ok());
    assert!(
        store.validate(key).is_ok(),
        "the old key works through the grace"
    );
    clock.advance(Duration::from_secs(61));
    assert_eq!(store.validate(key).unwrap_err(), Rejection::Expired);
    store.close().unwrap();
    let (store, _clock) = manual_builder(&s.path);
    let store = store.clock(clock.clone()).open().unwrap();
    assert!(store.validate(native.secret()).is_ok());
    assert_eq!(store.validate(key).unwrap_err(), Rejection::Expired);
    store.close().unwrap();
}

#[test]
fn a_store_without_imported_keys_says_malformed_for_foreign_strings() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let token = store.issue(NewToken::new("native")).unwrap();
    let foreign = ["legacy-key", "AKIAIOSFODNN7EXAMPLE", "", "tc_", "sk_live_x"];
    for key in foreign {
        assert_eq!(
            store.validate(key).unwrap_err(),
            Rejection::Malformed,
            "{key:?}"
        );
    }
    // With one imported key, a foreign string is looked up: unknown, not malformed.
    let id = store.import(import_of("legacy-key")).unwrap();
    assert!(store.validate("legacy-key").is_ok());
    assert_eq!(
        store.validate("AKIAIOSFODNN7EXAMPLE").unwrap_err(),
        Rejection::Unknown
    );
    // Once the last imported key is gone (deleted here, then across a reopen), the fast
    // Malformed is back.
    store.delete(&id).unwrap();
    for key in foreign {
        assert_eq!(
            store.validate(key).unwrap_err(),
            Rejection::Malformed,
            "{key:?}"
        );
    }
    store.close().unwrap();
    let (store, _clock) = manual_store(&s.path);
    for key in foreign {
        assert_eq!(
            store.validate(key).unwrap_err(),
            Rejection::Malformed,
            "{key:?}"
        );
    }
    assert!(store.validate(token.secret()).is_ok());
    store.close().unwrap();
}

#[test]
fn tokens_of_an_earlier_prefix_stay_valid_after_the_prefix_changes() {
    let s = scratch();
    let (store, _clock) = open_with(&s.path, "sk_live");
    let live = store.issue(NewToken::new("live")).unwrap();
    assert!(live.secret().starts_with("sk_live_"), "{}", live.secret());
    // The crash copy: the prefix is recorded in the journal with the first token.
    let crashed = common::crash_image(&s.path);
    store.close().unwrap();
    let (copy, _clock) = manual_store(&crashed.path);
    assert!(copy.validate(live.secret()).is_ok(), "from the journal");
    copy.close().unwrap();
    let (store, _clock) = open_with(&s.path, "sk_test");
    let test = store.issue(NewToken::new("test")).unwrap();
    assert!(test.secret().starts_with("sk_test_"));
    assert!(store.validate(live.secret()).is_ok());
    store.close().unwrap();
    // Reopened with the default prefix: both earlier prefixes, and the default, work.
    let (store, _clock) = manual_store(&s.path);
    let tc = store.issue(NewToken::new("tc")).unwrap();
    assert!(tc.secret().starts_with("tc_"));
    for token in [&live, &test, &tc] {
        assert!(store.validate(token.secret()).is_ok(), "{}", token.secret());
    }
    let view = StoreView::read(&s.path).unwrap();
    for token in [&live, &test, &tc] {
        assert!(
            view.validate(token.secret()).is_ok(),
            "view: {}",
            token.secret()
        );
    }
    store.close().unwrap();
}

#[test]
fn a_prefix_never_issued_under_is_malformed() {
    // Tokens of another store: one under `sk_live`, one under the default.
    let other = scratch();
    let (store, _clock) = open_with(&other.path, "sk_live");
    let foreign_live = store.issue(NewToken::new("x")).unwrap();
    store.close().unwrap();
    let (store, _clock) = manual_store(&other.path);
    let foreign_tc = store.issue(NewToken::new("y")).unwrap();
    store.close().unwrap();

    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    store.issue(NewToken::new("mine")).unwrap();
    // Never issued under here: refused before any lookup. The default prefix: looked up.
    assert_eq!(
        store.validate(foreign_live.secret()).unwrap_err(),
        Rejection::Malformed
    );
    assert_eq!(
        store.validate(foreign_tc.secret()).unwrap_err(),
        Rejection::Unknown
    );
    store.close().unwrap();
    let (store, _clock) = open_with(&s.path, "sk_test");
    store.issue(NewToken::new("test")).unwrap();
    assert_eq!(
        store.validate(foreign_live.secret()).unwrap_err(),
        Rejection::Malformed
    );
    store.close().unwrap();
    assert_eq!(
        StoreView::read(&s.path)
            .unwrap()
            .validate(foreign_live.secret())
            .unwrap_err(),
        Rejection::Malformed
    );
    // A prefix that breaks the rules is refused at open.
    for bad in ["", "sk-live", "a_very_long_prefix_x", "ünï"] {
        let (builder, _clock) = manual_builder(&s.path);
        let err = builder.prefix(bad).open().unwrap_err();
        assert!(matches!(err, Error::InvalidSetting(_)), "{bad:?}: {err}");
    }
}

#[test]
fn an_owner_limit_is_shared_by_the_owners_tokens() {
    let s = scratch();
    let (store, clock) = manual_store(&s.path);
    let a = store.issue(NewToken::new("a").owner("acme")).unwrap();
    let b = store.issue(NewToken::new("b").owner("acme")).unwrap();
    let other = store.issue(NewToken::new("c").owner("globex")).unwrap();
    store
        .set_owner_rate_limit("acme", Some(RateLimit::per_minute(2)))
        .unwrap();
    assert!(store.validate(a.secret()).is_ok());
    assert!(store.validate(b.secret()).is_ok());
    // Two requests between them: the third, on either token, is refused.
    assert!(matches!(
        store.validate(a.secret()),
        Err(Rejection::RateLimited { .. })
    ));
    assert!(matches!(
        store.validate(b.secret()),
        Err(Rejection::RateLimited { .. })
    ));
    for _ in 0..5 {
        assert!(
            store.validate(other.secret()).is_ok(),
            "another owner is not limited"
        );
    }
    clock.advance(Duration::from_secs(30));
    assert!(
        store.validate(b.secret()).is_ok(),
        "one request back after 30 s"
    );
    assert!(matches!(
        store.validate(a.secret()),
        Err(Rejection::RateLimited { .. })
    ));
    // The limit is durable, and applies to a token issued after it was set.
    store.close().unwrap();
    let (builder, _) = manual_builder(&s.path);
    let store = builder.clock(clock.clone()).open().unwrap();
    assert_eq!(
        store.owner_rate_limit("acme"),
        Some(RateLimit::per_minute(2))
    );
    let late = store.issue(NewToken::new("late").owner("acme")).unwrap();
    assert!(store.validate(late.secret()).is_ok());
    assert!(store.validate(a.secret()).is_ok());
    assert!(matches!(
        store.validate(late.secret()),
        Err(Rejection::RateLimited { .. })
    ));
    store.set_owner_rate_limit("acme", None).unwrap();
    for _ in 0..5 {
        assert!(store.validate(late.secret()).is_ok());
    }
    store.close().unwrap();
    let (store, _) = manual_store(&s.path);
    assert_eq!(store.owner_rate_limit("acme"), None);
    store.close().unwrap();
}

/// Rewrites the store file at `path` as a version 2 snapshot: a version 5 body with no
/// extras, owners, prefixes, credits or usage counts ends in their five empty lists (one
/// 0 byte each), and is otherwise the version 2 body.
fn downgrade_snapshot(path: &Path) {
    let mut image = std::fs::read(path).unwrap();
    assert_eq!(&image[8..12], &5u32.to_le_bytes());
    assert_eq!(
        &image[image.len() - 5..],
        &[0, 0, 0, 0, 0],
        "a body with extras"
    );
    image.truncate(image.len() - 5);
    let body_len = (image.len() - 32) as u64;
    image[8..12].copy_from_slice(&2u32.to_le_bytes());
    image[16..24].copy_from_slice(&body_len.to_le_bytes());
    let body_crc = crc32fast::hash(&image[32..]);
    image[24..28].copy_from_slice(&body_crc.to_le_bytes());
    let header_crc = crc32fast::hash(&image[..28]);
    image[28..32].copy_from_slice(&header_crc.to_le_bytes());
    std::fs::write(path, image).unwrap();
}

/// Rewrites the journal's header to version 1 (its records use only version 1 changes).
fn downgrade_journal(path: &Path) {
    let mut image = std::fs::read(path).unwrap();
    assert_eq!(&image[8..12], &4u32.to_le_bytes());
    image[8..12].copy_from_slice(&1u32.to_le_bytes());
    let header_crc = crc32fast::hash(&image[..28]);
    image[28..32].copy_from_slice(&header_crc.to_le_bytes());
    std::fs::write(path, image).unwrap();
}

#[test]
fn a_version_2_store_opens_and_is_upgraded() {
    // A store as version 2 of the format and version 1 of the journal leave it: tokens
    // without extras in the snapshot, then a revoke, a delete and an issue in the journal.
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let revoked = store.issue(NewToken::new("revoked")).unwrap();
    let deleted = store.issue(NewToken::new("deleted")).unwrap();
    let kept = store.issue(NewToken::new("kept").scopes(["read"])).unwrap();
    store.close().unwrap();
    let (store, _clock) = manual_store(&s.path);
    store.revoke(&revoked.id()).unwrap();
    store.delete(&deleted.id()).unwrap();
    let late = store.issue(NewToken::new("late")).unwrap();
    let old = common::crash_image(&s.path);
    store.close().unwrap();
    downgrade_snapshot(&old.path);
    downgrade_journal(&journal_path(&old.path));
    let info = tokencache::inspect(&old.path).unwrap();
    assert_eq!((info.version, info.journal_records), (2, 3));

    let view = StoreView::read(&old.path).unwrap();
    assert_eq!(view.len(), 3, "the view reads both old files");
    let (store, _clock) = manual_store(&old.path);
    let journal = std::fs::read(journal_path(&old.path)).unwrap();
    assert_eq!(
        &journal[8..12],
        &4u32.to_le_bytes(),
        "the version 1 journal was replaced by one of the current version"
    );
    assert_eq!(
        tokencache::inspect(&old.path).unwrap().version,
        tokencache::FORMAT_VERSION
    );
    assert_eq!(
        store.validate(revoked.secret()).unwrap_err(),
        Rejection::Revoked
    );
    assert_eq!(
        store.validate(deleted.secret()).unwrap_err(),
        Rejection::Unknown
    );
    assert!(store.validate_scope(kept.secret(), "read").is_ok());
    assert!(store.validate(late.secret()).is_ok());
    // New changes go to the new journal and survive the next open.
    let owned = store
        .issue(NewToken::new("owned").owner("acme").meta("plan", "pro"))
        .unwrap();
    let copy = common::crash_image(&old.path);
    store.close().unwrap();
    let (store, _clock) = manual_store(&copy.path);
    assert_eq!(
        store.validate(owned.secret()).unwrap().meta("plan"),
        Some("pro")
    );
    assert!(store.validate(late.secret()).is_ok());
    assert_eq!(
        store.validate(revoked.secret()).unwrap_err(),
        Rejection::Revoked
    );
    store.close().unwrap();
}

/// The committed fuzz seeds for the new parts of the formats decode and load all the way
/// (so the fuzzers start from inputs that reach extras, owners and prefixes, not from
/// ones the decoder refuses), and say what they hold.
#[test]
fn the_fuzz_seeds_of_the_new_changes_load_all_the_way() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let read = |name: &str| {
        let bytes = std::fs::read(seeds.join(name)).unwrap();
        assert_eq!(bytes[0] & 1, 1, "{name}: a framed seed");
        bytes[1..].to_vec()
    };
    let snapshot =
        tokencache::__fuzz::frame_body(&read("snapshot_decode/framed_v5_extras_owners_prefixes"));
    assert_eq!(tokencache::__fuzz::check_snapshot(&snapshot), Ok(2));
    let journal = |name: &str| {
        let payload = read(&format!("journal_replay/{name}"));
        tokencache::__fuzz::check_journal(&tokencache::__fuzz::frame_journal_record(&payload))
    };
    assert_eq!(
        journal("framed_owner_extras_limit_prefix_revoke_owner"),
        Ok(2)
    );
    assert_eq!(
        journal("framed_extras_delete_owner"),
        Ok(0),
        "the owner's token deleted"
    );
}
