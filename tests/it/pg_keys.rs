//! Keys as a product on PostgreSQL stores (schema 4): owners, metadata, owners' shared
//! limits, imported keys and prefixes reach every replica, two stores on one database of the
//! throwaway cluster (tests/it/common/pg.rs); an owner's revoke is one transaction; a failed
//! write of one of them is written again and not undone by a catch-up meanwhile; a schema 3
//! database is upgraded on open.

use crate::common;

use std::time::Duration;

use common::pg;
use sha2::{Digest, Sha256};
use tokencache::{ImportedToken, NewToken, RateLimit, Rejection, TokenStore};

/// The bound every propagation is held to (generous: a loaded CI machine).
const BOUND: Duration = Duration::from_secs(2);

fn open(url: &str) -> TokenStore {
    TokenStore::builder(url)
        .poll_interval(Duration::from_millis(200))
        .open()
        .expect("open the PostgreSQL store")
}

/// A store that writes `last_used` only when asked (so a failed transaction is retried at
/// `flush`, not at a tick) and catches up every 100 ms.
fn open_without_ticks(url: &str) -> TokenStore {
    TokenStore::builder(url)
        .poll_interval(Duration::from_millis(100))
        .flush_interval(Duration::from_secs(3600))
        .open()
        .expect("open the PostgreSQL store")
}

fn verdict(store: &TokenStore, secret: &str) -> Result<(), Rejection> {
    store.validate(secret).map(|_| ())
}

/// Makes the database refuse every statement on `table` whose new row matches `when` (a
/// trigger condition on `NEW`), so the transaction holding it fails.
fn refuse(url: &str, table: &str, when: &str) {
    pg::connect(url)
        .batch_execute(&format!(
            "CREATE OR REPLACE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$;
             CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON {table} FOR EACH ROW
                 WHEN ({when}) EXECUTE FUNCTION refuse();"
        ))
        .unwrap();
}

fn stop_refusing(url: &str, table: &str) {
    pg::connect(url)
        .batch_execute(&format!("DROP TRIGGER refuse ON {table}"))
        .unwrap();
}

/// Revokes `sentinel` by hand and waits until `store` caught up with it: every change
/// committed before is in its memory.
fn caught_up(url: &str, store: &TokenStore, sentinel: &tokencache::IssuedToken) {
    let revoke = "UPDATE tokencache_tokens SET revoked_at = 1, version = $2 WHERE id = $1";
    pg::commit_by_hand(url, revoke, &sentinel.id(), true);
    pg::within(BOUND, || {
        verdict(store, sentinel.secret()) == Err(Rejection::Revoked)
    })
    .expect("the store caught up");
}

#[test]
fn an_owner_revoked_on_one_replica_is_refused_on_the_other() {
    let url = pg::fresh_db();
    let a = open(&url);
    let b = open(&url);
    let owned: Vec<_> = (0..3)
        .map(|n| {
            a.issue(NewToken::new(format!("acme {n}")).owner("acme"))
                .unwrap()
        })
        .collect();
    let other = a.issue(NewToken::new("other").owner("globex")).unwrap();
    pg::within(BOUND, || b.owned_by("acme").len() == 3).expect("B knows acme's tokens");
    assert!(owned.iter().all(|t| verdict(&b, t.secret()).is_ok()));

    assert_eq!(a.revoke_owner("acme").unwrap(), 3);
    for token in &owned {
        pg::within(BOUND, || {
            verdict(&b, token.secret()) == Err(Rejection::Revoked)
        })
        .expect("B refuses every token of the revoked owner");
    }
    let listed = b.owned_by("acme");
    assert_eq!(listed.len(), 3, "B still lists them, revoked");
    assert!(listed.iter().all(|t| t.revoked_at.is_some()));
    assert_eq!(
        listed
            .iter()
            .map(|t| t.owner.as_deref())
            .collect::<Vec<_>>(),
        [Some("acme"); 3]
    );
    assert!(
        verdict(&b, other.secret()).is_ok(),
        "another owner's token is untouched"
    );
    // A replica opened now reads the revocations with the rows.
    let c = open(&url);
    assert!(owned
        .iter()
        .all(|t| verdict(&c, t.secret()) == Err(Rejection::Revoked)));
}

#[test]
fn revoke_owner_is_one_transaction_and_one_version_for_all_of_the_owners_tokens() {
    let url = pg::fresh_db();
    let a = open(&url);
    let requests = (0..50).map(|n| NewToken::new(format!("bulk {n}")).owner("bulk"));
    a.issue_many(requests).unwrap();
    let mut admin = pg::connect(&url);
    let counter = |admin: &mut postgres::Client| -> i64 {
        admin
            .query_one("SELECT version FROM tokencache_version", &[])
            .unwrap()
            .get(0)
    };
    let before = counter(&mut admin);
    assert_eq!(a.revoke_owner("bulk").unwrap(), 50);
    assert_eq!(
        counter(&mut admin),
        before + 1,
        "one transaction, one version"
    );
    let row = admin
        .query_one(
            "SELECT count(*), count(DISTINCT version), min(version) FROM tokencache_tokens \
             WHERE owner = 'bulk' AND revoked_at IS NOT NULL",
            &[],
        )
        .unwrap();
    let (revoked, versions, version): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((revoked, versions, version), (50, 1, before + 1));

    // delete_owner too: every row a tombstone of one version.
    assert_eq!(a.delete_owner("bulk").unwrap(), 50);
    let row = admin
        .query_one(
            "SELECT count(*) FILTER (WHERE deleted), count(DISTINCT version) \
             FROM tokencache_tokens WHERE owner = 'bulk'",
            &[],
        )
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (50, 1));
}

#[test]
fn an_owner_deleted_on_one_replica_is_unknown_on_the_other() {
    let url = pg::fresh_db();
    let a = open(&url);
    let b = open(&url);
    let owned: Vec<_> = (0..3)
        .map(|n| {
            a.issue(NewToken::new(format!("initech {n}")).owner("initech"))
                .unwrap()
        })
        .collect();
    pg::within(BOUND, || b.owned_by("initech").len() == 3).expect("B knows the tokens");
    assert_eq!(a.delete_owner("initech").unwrap(), 3);
    for token in &owned {
        pg::within(BOUND, || {
            verdict(&b, token.secret()) == Err(Rejection::Unknown)
        })
        .expect("B forgets every token of the deleted owner");
    }
    assert!(b.owned_by("initech").is_empty());
    let c = open(&url);
    assert!(c.owned_by("initech").is_empty());
    assert!(owned
        .iter()
        .all(|t| verdict(&c, t.secret()) == Err(Rejection::Unknown)));
}

#[test]
fn metadata_set_on_one_replica_is_read_on_the_other() {
    let url = pg::fresh_db();
    let a = open(&url);
    let b = open(&url);
    let token = a
        .issue(
            NewToken::new("meta")
                .owner("acme")
                .meta("plan", "free")
                .meta("note", "quote \" backslash \\ tab\t[\"x\"]"),
        )
        .unwrap();
    pg::within(BOUND, || b.get(&token.id()).is_some()).expect("B has the token");
    let info = b.get(&token.id()).unwrap();
    assert_eq!(info.owner.as_deref(), Some("acme"));
    assert_eq!(
        info.meta,
        [
            ("plan".to_string(), "free".to_string()),
            ("note".into(), "quote \" backslash \\ tab\t[\"x\"]".into())
        ],
        "the pairs in the order given, the text as given"
    );
    let valid = b.validate(token.secret()).unwrap();
    assert_eq!(valid.meta("plan"), Some("free"));
    assert_eq!(valid.owner(), Some("acme"));

    a.set_meta(&token.id(), &[("plan", "pro"), ("tenant", "t1")])
        .unwrap();
    pg::within(BOUND, || {
        b.validate(token.secret())
            .is_ok_and(|v| v.meta("plan") == Some("pro") && v.meta("tenant") == Some("t1"))
    })
    .expect("B reads the new metadata");
    assert_eq!(b.get(&token.id()).unwrap().owner.as_deref(), Some("acme"));
    // Read at open too (owner and metadata: `last_used` is B's own until it flushes).
    let c = open(&url);
    let (at_open, on_b) = (c.get(&token.id()).unwrap(), b.get(&token.id()).unwrap());
    assert_eq!((at_open.owner, at_open.meta), (on_b.owner, on_b.meta));

    // Removing every pair reaches B too.
    a.set_meta::<&str, &str>(&token.id(), &[]).unwrap();
    pg::within(BOUND, || b.get(&token.id()).unwrap().meta.is_empty())
        .expect("B drops the metadata");
}

#[test]
fn an_owner_rate_limit_set_on_one_replica_applies_on_the_other() {
    let url = pg::fresh_db();
    let a = open(&url);
    let b = open(&url);
    let first = a.issue(NewToken::new("one").owner("limited")).unwrap();
    let second = a.issue(NewToken::new("two").owner("limited")).unwrap();
    pg::within(BOUND, || b.owned_by("limited").len() == 2).expect("B has the tokens");
    let hourly = RateLimit::per_hour(1);
    a.set_owner_rate_limit("limited", Some(hourly)).unwrap();
    pg::within(BOUND, || b.owner_rate_limit("limited") == Some(hourly))
        .expect("B has the owner's limit");
    assert!(verdict(&b, first.secret()).is_ok());
    assert!(
        matches!(
            verdict(&b, second.secret()),
            Err(Rejection::RateLimited { .. })
        ),
        "one budget for both tokens on B"
    );
    let c = open(&url);
    assert_eq!(c.owner_rate_limit("limited"), Some(hourly), "read at open");
    assert!(verdict(&c, first.secret()).is_ok());
    assert!(matches!(
        verdict(&c, first.secret()),
        Err(Rejection::RateLimited { .. })
    ));

    // Removed on A: removed on B.
    a.set_owner_rate_limit("limited", None).unwrap();
    pg::within(BOUND, || b.owner_rate_limit("limited").is_none()).expect("B drops the limit");
    assert!(verdict(&b, second.secret()).is_ok());
    assert!(verdict(&b, second.secret()).is_ok());
}

#[test]
fn a_key_imported_on_one_replica_validates_on_the_other() {
    let url = pg::fresh_db();
    let a = open(&url);
    let b = open(&url);
    let key = "legacy-key-0123456789abcdef";
    let hex: String = Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let id = a
        .import(
            ImportedToken::sha256(&hex)
                .unwrap()
                .name("legacy")
                .owner("acme")
                .meta("source", "v1"),
        )
        .unwrap();
    assert!(verdict(&a, key).is_ok());
    pg::within(BOUND, || verdict(&b, key).is_ok()).expect("B accepts the imported key");
    let info = b.get(&id).unwrap();
    assert!(info.imported);
    assert_eq!(info.owner.as_deref(), Some("acme"));
    assert_eq!(b.validate(key).unwrap().meta("source"), Some("v1"));
    let c = open(&url);
    assert!(verdict(&c, key).is_ok(), "read at open too");
    assert_eq!(verdict(&c, "another-foreign-key"), Err(Rejection::Unknown));
}

#[test]
fn a_token_issued_under_a_prefix_validates_on_a_replica_opened_without_one() {
    let url = pg::fresh_db();
    let b = open(&url);
    let a = TokenStore::builder(&url)
        .prefix("sk_live")
        .poll_interval(Duration::from_millis(200))
        .open()
        .unwrap();
    let token = a.issue(NewToken::new("live")).unwrap();
    assert!(token.secret().starts_with("sk_live_"));
    pg::within(BOUND, || verdict(&b, token.secret()).is_ok())
        .expect("B, opened before with the default prefix, accepts it");
    b.close().unwrap();
    let b = open(&url);
    assert!(verdict(&b, token.secret()).is_ok(), "and after its reopen");
    let default = b.issue(NewToken::new("default")).unwrap();
    assert!(default.secret().starts_with("tc_"));
    pg::within(BOUND, || verdict(&a, default.secret()).is_ok())
        .expect("A accepts the default prefix as always");
    let prefixes: Vec<String> = pg::connect(&url)
        .query("SELECT prefix FROM tokencache_prefixes", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        prefixes,
        ["sk_live"],
        "recorded once; the default needs no record"
    );
}

#[test]
fn a_failed_set_meta_and_owner_limit_are_written_again_and_not_undone_meanwhile() {
    let url = pg::fresh_db();
    let a = open_without_ticks(&url);
    let token = a
        .issue(NewToken::new("meta").owner("acme").meta("plan", "free"))
        .unwrap();
    let sentinel = a.issue(NewToken::new("sentinel")).unwrap();
    refuse(
        &url,
        "tokencache_tokens",
        "NEW.meta @> '[[\"plan\", \"pro\"]]'",
    );
    a.set_meta(&token.id(), &[("plan", "pro")])
        .expect_err("the database refused the transaction");
    refuse(&url, "tokencache_owners", "NEW.rate_count = 7");
    let seven = RateLimit::per_hour(7);
    a.set_owner_rate_limit("acme", Some(seven))
        .expect_err("the database refused the transaction");
    // Another replica changes the row (a catch-up brings the old metadata) and sets the
    // owner's limit (the old one) meanwhile.
    let touch = "UPDATE tokencache_tokens SET version = $2 WHERE id = $1";
    pg::commit_by_hand(&url, touch, &token.id(), true);
    let mut admin = pg::connect(&url);
    admin
        .batch_execute(
            "UPDATE tokencache_version SET version = version + 1;
             INSERT INTO tokencache_owners VALUES ('acme', 3600000, 1, 1,
                 (SELECT version FROM tokencache_version));",
        )
        .unwrap();
    caught_up(&url, &a, &sentinel);
    assert_eq!(
        a.validate(token.secret()).unwrap().meta("plan"),
        Some("pro"),
        "the metadata A holds and has yet to write stands"
    );
    assert_eq!(a.owner_rate_limit("acme"), Some(seven), "so does the limit");
    stop_refusing(&url, "tokencache_tokens");
    stop_refusing(&url, "tokencache_owners");
    a.flush().expect("the retry commits");
    let b = open(&url);
    assert_eq!(
        b.validate(token.secret()).unwrap().meta("plan"),
        Some("pro")
    );
    assert_eq!(b.owner_rate_limit("acme"), Some(seven));
}

#[test]
fn a_failed_owner_delete_is_written_again_and_no_catch_up_brings_its_tokens_back() {
    let url = pg::fresh_db();
    let a = open_without_ticks(&url);
    let doomed = a.issue(NewToken::new("doomed").owner("doomed")).unwrap();
    let sentinel = a.issue(NewToken::new("sentinel")).unwrap();
    refuse(
        &url,
        "tokencache_tokens",
        "NEW.deleted AND NEW.owner = 'doomed'",
    );
    a.delete_owner("doomed")
        .expect_err("the database refused the transaction");
    assert_eq!(verdict(&a, doomed.secret()), Err(Rejection::Unknown));
    // Another replica changes the row: a catch-up reads it live.
    let touch = "UPDATE tokencache_tokens SET version = $2 WHERE id = $1";
    pg::commit_by_hand(&url, touch, &doomed.id(), true);
    caught_up(&url, &a, &sentinel);
    assert_eq!(
        verdict(&a, doomed.secret()),
        Err(Rejection::Unknown),
        "the token A deleted and has yet to write stays deleted"
    );
    stop_refusing(&url, "tokencache_tokens");
    a.flush().expect("the retry commits");
    let deleted: bool = pg::connect(&url)
        .query_one(
            "SELECT deleted FROM tokencache_tokens WHERE id = $1",
            &[&doomed.id().to_string()],
        )
        .unwrap()
        .get(0);
    assert!(deleted, "the retry wrote the tombstone");
    assert_eq!(
        verdict(&open(&url), doomed.secret()),
        Err(Rejection::Unknown)
    );
}

#[test]
fn a_schema_3_database_is_upgraded_to_4_on_open_and_keeps_its_tokens() {
    let url = pg::fresh_db();
    let a = open(&url);
    let kept = a
        .issue(NewToken::new("kept").rate_limit(RateLimit::per_second(5)))
        .unwrap();
    let revoked = a.issue(NewToken::new("revoked")).unwrap();
    a.revoke(&revoked.id()).unwrap();
    a.close().unwrap();
    // Back to schema 3, as the previous build left it.
    pg::connect(&url)
        .batch_execute(
            "ALTER TABLE tokencache_tokens DROP COLUMN owner, DROP COLUMN meta,
                 DROP COLUMN imported;
             DROP TABLE tokencache_owners, tokencache_prefixes;
             DELETE FROM tokencache_migrations WHERE version = 4;",
        )
        .unwrap();
    let refused = TokenStore::builder(&url)
        .migrate_schema(false)
        .open()
        .expect_err("an older schema, read-only");
    assert!(refused.to_string().contains("version 3"), "{refused}");

    let b = open(&url);
    assert!(verdict(&b, kept.secret()).is_ok());
    assert_eq!(verdict(&b, revoked.secret()), Err(Rejection::Revoked));
    assert_eq!(
        b.get(&kept.id()).unwrap().rate_limit,
        Some(RateLimit::per_second(5))
    );
    let mut admin = pg::connect(&url);
    let schema: i32 = admin
        .query_one("SELECT max(version) FROM tokencache_migrations", &[])
        .unwrap()
        .get(0);
    assert_eq!(schema, 4);
    let (meta, imported): (String, bool) = {
        let row = admin
            .query_one(
                "SELECT meta::text, imported FROM tokencache_tokens WHERE id = $1",
                &[&kept.id().to_string()],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(
        (meta.as_str(), imported),
        ("[]", false),
        "old rows take the defaults"
    );
    // The upgraded database takes the new fields.
    let owned = b
        .issue(NewToken::new("owned").owner("acme").meta("k", "v"))
        .unwrap();
    assert_eq!(b.revoke_owner("acme").unwrap(), 1);
    let c = open(&url);
    assert_eq!(verdict(&c, owned.secret()), Err(Rejection::Revoked));
    assert_eq!(c.get(&owned.id()).unwrap().meta, [("k".into(), "v".into())]);
}

/// Credits are kept by file stores only for now: a PostgreSQL store refuses them with an
/// error that says so, and changes nothing.
#[test]
fn credits_are_refused_with_a_reason_and_nothing_changes() {
    let url = pg::fresh_db();
    let store = open(&url);
    let credits = tokencache::Credits::new(10);
    let refused = store.issue(NewToken::new("metered").credits(credits));
    assert!(
        matches!(&refused, Err(tokencache::Error::InvalidRequest(why)) if why.contains("file stores only")),
        "{refused:?}"
    );
    assert!(store.list().is_empty());
    let plain = store.issue(NewToken::new("plain")).unwrap();
    assert!(matches!(
        store.set_credits(&plain.id(), Some(credits)),
        Err(tokencache::Error::InvalidRequest(_))
    ));
    assert!(store.set_credits(&plain.id(), None).is_err());
    assert_eq!(store.credits(&plain.id()), None);
    store.validate_cost(plain.secret(), 5).unwrap();
    store.close().unwrap();
}
