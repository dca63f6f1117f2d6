//! The schema, created on first open and versioned: `tokencache_migrations` records each
//! migration applied; each runs once, in order, under an advisory lock so replicas opening
//! a new database together do not race.

use postgres::Client;

use super::describe;

/// The migrations, in order; migration `n` is `MIGRATIONS[n - 1]`. Never edit one that
/// shipped: add the next.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: tokens (one row per token, removed only as a tombstone older than the horizon,
    // from migration 3 on: a delete is a tombstone, so it reaches the other replicas
    // through the version poll), the commit-ordered version counter.
    "CREATE TABLE tokencache_tokens (
        id             text PRIMARY KEY,
        name           text NOT NULL,
        digest         bytea NOT NULL,
        scopes         text[] NOT NULL,
        created_at     bigint NOT NULL,
        expires_at     bigint,
        revoked_at     bigint,
        last_used      bigint,
        rate_period_ms bigint,
        rate_count     integer,
        rate_burst     integer,
        version        bigint NOT NULL,
        deleted        boolean NOT NULL DEFAULT false
    );
    CREATE INDEX tokencache_tokens_version ON tokencache_tokens (version);
    CREATE TABLE tokencache_version (
        one     boolean PRIMARY KEY DEFAULT true CHECK (one),
        version bigint NOT NULL
    );
    INSERT INTO tokencache_version (one, version) VALUES (true, 0);",
    // 2: rate counts and bursts as bigint (a u32 count over i32::MAX was clamped, so
    // replicas enforced different limits); the commit log, one random stamp per version, by
    // which a replica tells that the counter went back (a failover to a standby that missed
    // commits, a restore) even once it has passed the replica's last version again. The
    // current version gets a stamp so every version from here on has one.
    "ALTER TABLE tokencache_tokens
        ALTER COLUMN rate_count TYPE bigint,
        ALTER COLUMN rate_burst TYPE bigint;
    CREATE TABLE tokencache_commits (
        version bigint PRIMARY KEY,
        stamp   bigint NOT NULL
    );
    INSERT INTO tokencache_commits (version, stamp)
        SELECT version, (random() * 9.2e18)::bigint FROM tokencache_version;",
    // 3: bounded tables and `last_used` across replicas. `deleted_at` (Unix ms, the
    // deleting replica's clock) dates each tombstone, so tombstones older than the horizon
    // can be removed; the tombstones already there are dated at this upgrade (by the
    // database's clock), so none goes before one horizon from now. `tokencache_pruned`
    // holds the greatest version of a tombstone removed: a replica whose last version read
    // is below it may have missed a delete, and reloads. `used_xid` is the transaction that
    // last moved `last_used` forward, by which a replica reads the `last_used` changes
    // committed since its last look (see `listen.rs`). No column is rewritten.
    "ALTER TABLE tokencache_tokens
        ADD COLUMN deleted_at bigint,
        ADD COLUMN used_xid bigint;
    UPDATE tokencache_tokens SET deleted_at = (extract(epoch FROM now()) * 1000)::bigint
        WHERE deleted;
    CREATE INDEX tokencache_tokens_deleted_at ON tokencache_tokens (deleted_at) WHERE deleted;
    CREATE INDEX tokencache_tokens_used_xid ON tokencache_tokens (used_xid)
        WHERE used_xid IS NOT NULL;
    CREATE TABLE tokencache_pruned (
        one     boolean PRIMARY KEY DEFAULT true CHECK (one),
        version bigint NOT NULL
    );
    INSERT INTO tokencache_pruned (one, version) VALUES (true, 0);",
    // 4: keys as a product. Each token's owner (indexed: `revoke_owner` and `delete_owner`
    // are one UPDATE by owner), its metadata as a jsonb array of `[key, value]` pairs in
    // the order given (pairs stay pairs and keep their order, an operator can query them
    // with jsonb operators, and a batch of new tokens passes them as one text per row
    // through the batched INSERT), and whether it was imported (its digest is of a key
    // minted elsewhere). Owners' shared rate limits, a removed one kept as NULLs so the
    // removal reaches the other replicas by its version. The prefixes the store issued
    // under, each with the version that first recorded it, read by version as the rest.
    // The new columns have constant defaults: no row is rewritten.
    "ALTER TABLE tokencache_tokens
        ADD COLUMN owner text,
        ADD COLUMN meta jsonb NOT NULL DEFAULT '[]',
        ADD COLUMN imported boolean NOT NULL DEFAULT false;
    CREATE INDEX tokencache_tokens_owner ON tokencache_tokens (owner) WHERE owner IS NOT NULL;
    CREATE TABLE tokencache_owners (
        owner          text PRIMARY KEY,
        rate_period_ms bigint,
        rate_count     bigint,
        rate_burst     bigint,
        version        bigint NOT NULL
    );
    CREATE INDEX tokencache_owners_version ON tokencache_owners (version);
    CREATE TABLE tokencache_prefixes (
        prefix  text PRIMARY KEY,
        version bigint NOT NULL
    );",
];

/// Serializes migrations across replicas (`pg_advisory_xact_lock`): "tokencac" in ASCII.
const MIGRATION_LOCK: i64 = 0x746f_6b65_6e63_6163;

/// Checks, without changing anything, that the schema is exactly the one this build
/// writes: a read-only open (`Builder::migrate_schema(false)`, the CLI's `list`) must not
/// run DDL, so a missing or older schema is refused with what to do.
pub(super) fn check(client: &mut Client) -> Result<i32, String> {
    let known = MIGRATIONS.len() as i32;
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('tokencache_migrations') IS NOT NULL",
            &[],
        )
        .map_err(|e| describe(&e))?
        .get(0);
    let found: Option<i32> = match exists {
        false => None,
        true => Some(
            client
                .query_one(
                    "SELECT coalesce(max(version), 0) FROM tokencache_migrations",
                    &[],
                )
                .map_err(|e| describe(&e))?
                .get(0),
        ),
    };
    match found {
        Some(current) if current == known => Ok(known),
        Some(current) if current > known => Err(format!(
            "the database's tokencache schema is version {current}, but this build knows up to version {known}; upgrade tokencache"
        )),
        Some(current) => Err(format!(
            "the database's tokencache schema is version {current}, older than this build's {known}, and a read-only open does not upgrade it; open the store once with a service (or a command that changes it) to migrate"
        )),
        None => Err(
            "the database has no tokencache schema (no store was ever opened on it), and a read-only open does not create one; check the URL, or open the store once with a service or `tokencache issue`".into(),
        ),
    }
}

/// Brings the schema up to date; returns its version. Refuses a database whose schema is
/// newer than this build knows.
pub(super) fn migrate(client: &mut Client) -> Result<i32, String> {
    let mut tx = client.transaction().map_err(|e| describe(&e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(|e| describe(&e))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS tokencache_migrations (
            version    integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .map_err(|e| describe(&e))?;
    let current: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM tokencache_migrations",
            &[],
        )
        .map_err(|e| describe(&e))?
        .get(0);
    let known = MIGRATIONS.len() as i32;
    if current > known {
        return Err(format!(
            "the database's tokencache schema is version {current}, but this build knows up to version {known}; upgrade tokencache"
        ));
    }
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = n as i32 + 1;
        tx.batch_execute(sql)
            .map_err(|e| format!("migration {version}: {}", describe(&e)))?;
        tx.execute(
            "INSERT INTO tokencache_migrations (version) VALUES ($1)",
            &[&version],
        )
        .map_err(|e| describe(&e))?;
        tracing::info!(version, "applied a tokencache schema migration");
    }
    tx.commit().map_err(|e| describe(&e))?;
    Ok(known)
}
