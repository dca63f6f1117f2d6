//! The command line: parse arguments, run one command against a store, map the outcome to
//! an exit code (0 success, 1 token rejected, 2 error).
//!
//! Secrets are read from stdin, never from argv (argv is visible to every user in `ps`), and
//! `issue` and `rotate` print only the token on stdout so that `TOKEN=$(tokencache issue NAME)`
//! works.
//! From a terminal, `validate` prompts and reads the token without echo.
//!
//! `list` and `inspect` read the store's files without the lock, so they work beside a
//! service that has the store open; `validate` then checks read-only. The commands that
//! change a store refuse one another process holds, and say how to make the change.
//!
//! `import` takes keys minted elsewhere by their SHA-256 only: a line holding a plaintext
//! key is refused, and nothing from it is echoed.

use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use tokencache::{
    redacted_path, Credits, NewToken, OwnedToken, RateLimit, RateLimitError, Refill, Rejection,
    StoreView, TokenId, TokenInfo, TokenStore, Usage, ValidToken,
};

mod import;

/// Exit code of a rejected token (`validate`).
const EXIT_REJECTED: u8 = 1;
/// Exit code of an error: bad arguments, a store that cannot be opened, a failed write.
const EXIT_ERROR: u8 = 2;

/// Manage and check API tokens kept in a tokencache store file.
#[derive(Debug, Parser)]
#[command(name = "tokencache", version, about, long_about = None)]
pub struct Cli {
    /// The store file, or a PostgreSQL URL (`postgres://user@host/db`, with the `postgres`
    /// feature): a store shared by any number of replicas.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "TOKENCACHE_STORE",
        default_value = "tokens.snap"
    )]
    store: PathBuf,

    /// The prefix of the tokens `issue` and `rotate` mint (`<prefix>_<id>_<secret>`), e.g.
    /// `sk_live`: letters, digits and `_`, at most 16 characters; default `tc`. The store
    /// records each prefix it issues under and keeps accepting tokens of all of them, so
    /// changing it never breaks a key in a client's hands. Other commands ignore it.
    #[arg(long, global = true, value_name = "PREFIX", env = "TOKENCACHE_PREFIX")]
    prefix: Option<String>,

    #[command(subcommand)]
    command: Command,
}

/// One command.
#[derive(Debug, Subcommand)]
enum Command {
    /// Issue a new token and print it on stdout (the only time the secret is shown).
    ///
    /// Creates the store file if it does not exist.
    Issue {
        /// Who or what uses the token, e.g. "ci-bot".
        name: String,
        /// A scope the token grants (repeat for several).
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// Lifetime, e.g. "30d", "12h", "90min"; no expiry if omitted.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
        #[command(flatten)]
        limit: LimitArgs,
        /// The customer, team or account the token belongs to (an opaque id, 1 to 128
        /// bytes): `list --owner`, `revoke --owner` and `owner-limit` act on all its tokens.
        #[arg(long, value_name = "ID")]
        owner: Option<String>,
        /// A metadata pair handlers read on every request (repeat for several; keys unique,
        /// at most 4 KiB in all), e.g. `--meta plan=pro`.
        #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_pair)]
        meta: Vec<(String, String)>,
        #[command(flatten)]
        credits: CreditsArgs,
        /// Print the token and its details as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Check a token read from stdin: exit 0 if valid, 1 if rejected (reason on stderr).
    ///
    /// From a terminal, prompts for the token and reads it without echo; empty input is a
    /// malformed token. Records the use in the token's `last_used`, as a service would.
    ///
    /// If another process (a running service) has the store open, checks the token
    /// read-only against the store's files instead, and says so on stderr (and
    /// `"read_only": true` in --json): the use is not recorded in `last_used`, and the rate
    /// limit is not checked (its quota lives in the service's memory).
    Validate {
        /// Also require this scope.
        #[arg(long, value_name = "SCOPE")]
        scope: Option<String>,
        /// Credits to spend, for a token with credits (default 1; 0 checks without
        /// spending). A read-only check spends nothing.
        #[arg(long, value_name = "N", default_value_t = 1)]
        cost: u64,
        /// Print the outcome as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List every token (without secrets), oldest first.
    ///
    /// Reads the store's files without locking them, so it works beside a running service
    /// that has the store open: it shows every change the service made, but `last_used` only
    /// as the service last wrote it (once per its flush interval).
    List {
        /// Only the tokens of this owner.
        #[arg(long, value_name = "ID")]
        owner: Option<String>,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id, or every token of an owner (durable when the command
    /// returns).
    ///
    /// With --owner, all the owner's tokens are revoked in one durable write (all or none),
    /// and stdout says how many were revoked now (tokens already revoked are not counted).
    Revoke {
        /// The token's id: the 8 characters after the prefix (`tc_`), as `list` shows them.
        #[arg(required_unless_present = "owner")]
        id: Option<String>,
        /// Revoke every token of this owner instead.
        #[arg(long, value_name = "ID", conflicts_with = "id")]
        owner: Option<String>,
        /// Print `{"revoked": ID}`, or `{"owner": ID, "revoked": N}` with --owner.
        #[arg(long)]
        json: bool,
    },
    /// Delete a token by its id, keeping no trace (durable when the command returns).
    ///
    /// Unlike `revoke`, nothing is kept: `validate` then says "unknown" and `list` no longer
    /// shows it. Prints `deleted ID`.
    ///
    /// With --owner, deletes every token of the owner in one durable write (all or none)
    /// and prints `deleted N tokens of owner ID`.
    Delete {
        /// The token's id, as `list` shows it.
        #[arg(required_unless_present = "owner")]
        id: Option<String>,
        /// Delete every token of this owner instead.
        #[arg(long, value_name = "ID", conflicts_with = "id")]
        owner: Option<String>,
        /// Print `{"deleted": ID}` (with --owner, `{"owner": ID, "deleted": N}`) instead.
        #[arg(long)]
        json: bool,
    },
    /// Delete every token revoked or expired more than --older-than ago; print how many.
    ///
    /// Durable when the command returns. Active tokens are never purged. --older-than is
    /// required, so that a forgotten flag purges nothing; `--older-than 0s` deletes every
    /// revoked or expired token.
    Purge {
        /// How long ago a token must have been revoked or expired, e.g. "30d", "12h", "0s".
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        older_than: Duration,
        /// Print `{"purged": N}` instead.
        #[arg(long)]
        json: bool,
    },
    /// Replace a token: print a new one on stdout, and make the old one expire after --grace.
    ///
    /// The new token has the old one's name, scopes, rate limit and lifetime; it is shown only
    /// this once, alone on stdout, so that `NEW=$(tokencache rotate ID --grace 1h)` works.
    /// The old token expires at the earlier of its own expiry and now + grace; stderr says
    /// when, and the new token's id. Both changes are one durable write.
    Rotate {
        /// The id of the token to replace, as `list` shows it.
        id: String,
        /// How long the old token keeps working, e.g. "1h", "7d", "0s" (stops at once).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// Print the new token, its details, `old_id` and `old_expires_at` as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Set or remove a token's rate limit (durable when the command returns).
    ///
    /// The new limit starts with a full burst.
    Limit {
        /// The token's id, as `list` shows it.
        id: String,
        #[command(flatten)]
        limit: LimitArgs,
        /// Remove the token's rate limit.
        #[arg(long, conflicts_with_all = ["rate_limit", "burst"], required_unless_present = "rate_limit")]
        none: bool,
    },
    /// Set or remove the rate limit every token of an owner shares (durable when the command
    /// returns).
    ///
    /// One budget for all the owner's tokens, checked beside each token's own limit (both
    /// must admit). It starts with a full burst, and applies to tokens issued later too.
    OwnerLimit {
        /// The owner, as given to `issue --owner`.
        owner: String,
        #[command(flatten)]
        limit: LimitArgs,
        /// Remove the owner's shared limit.
        #[arg(long, conflicts_with_all = ["rate_limit", "burst"], required_unless_present = "rate_limit")]
        none: bool,
    },
    /// Show a token's credits, or set or remove them (durable when the command returns).
    ///
    /// With --credits, the remaining credits become N and a refill counts its periods from
    /// now; with --clear the token has no credits (validations spend nothing); with
    /// neither, prints what is left.
    Credits {
        /// The token's id, as `list` shows it.
        id: String,
        #[command(flatten)]
        credits: CreditsArgs,
        /// Remove the token's credits.
        #[arg(long, conflicts_with = "credits")]
        clear: bool,
        /// Print the credits as one JSON object (`null`: none).
        #[arg(long)]
        json: bool,
    },
    /// Show a token's accepted validations: the total, and each UTC day of the last 30 it
    /// was used.
    ///
    /// Exact when no other process has the store open; while a service has it open, as
    /// that service last wrote them (at most one flush interval behind).
    Usage {
        /// The token's id, as `list` shows it.
        id: String,
        /// Print one JSON object: `{"id", "total", "days": [{"date", "count"}]}`.
        #[arg(long)]
        json: bool,
    },
    /// Replace a token's metadata with the KEY=VALUE pairs given (durable when the command
    /// returns).
    ///
    /// Every pair the token had is replaced; `--clear` removes them all. Requests validated
    /// afterwards read the new pairs.
    Meta {
        /// The token's id, as `list` shows it.
        id: String,
        /// The new pairs, e.g. `plan=pro tenant=t-42` (keys unique, at most 4 KiB in all).
        #[arg(value_name = "KEY=VALUE", value_parser = parse_pair, required_unless_present = "clear")]
        pairs: Vec<(String, String)>,
        /// Remove every pair.
        #[arg(long, conflicts_with = "pairs")]
        clear: bool,
    },
    /// Import keys minted elsewhere, by their SHA-256: one JSON object per line on stdin.
    ///
    /// Each line: {"sha256": "<64 hex>", "name": ..., "scopes": [...], "owner": ...,
    /// "meta": {"k": "v"}, "expires_at": RFC 3339, "created_at": RFC 3339, "rate_limit":
    /// "100/min burst 20" or {"count", "period_ms", "burst"} as `list --json` shows it};
    /// only "sha256" is required, and blank lines are skipped. The digest is of the key's
    /// exact text, e.g. `printf %s "$KEY" | sha256sum`. A line with a plaintext key field
    /// ("key", "token", "secret"...) is refused.
    ///
    /// Every line is checked first, by the same rules as the library's `import`; if any is
    /// bad, the errors name their lines and nothing is imported. Otherwise all the keys are
    /// imported in one durable write, and stdout gives each line's new id (`line N: ID`).
    /// Creates the store file if it does not exist.
    Import {
        /// Check the lines (also against the keys already in a store file) and print what
        /// would be imported, writing nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print one JSON object per imported line: `{"line": N, "id": ID}` (with
        /// --dry-run, the line's `sha256`, `name` and `owner` instead of an id).
        #[arg(long)]
        json: bool,
    },
    /// Benchmark: hammer a scratch store with a realistic request mix from many threads.
    ///
    /// Prints throughput, latency, writes and bytes written, and checks that the file
    /// matches memory afterwards; `--compare` also runs the designs tokencache replaces.
    /// With `--store postgres://...` tokencache's store is that database (use an empty one:
    /// the run's tokens are issued into it and stay); the other designs use scratch files.
    Stress(crate::stress::StressArgs),
    /// Show the store file's header, format version, journal and counts (without locking it).
    ///
    /// Works beside a running service that has the store open. The journal holds the
    /// changes made since the last snapshot; a torn tail is a write a crash cut short,
    /// never acknowledged, which the next open sets aside.
    Inspect {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// A rate limit given on the command line.
#[derive(Debug, clap::Args)]
struct CreditsArgs {
    /// Credits the token may spend: each validation spends 1 (or `validate --cost`); with
    /// none left it is refused (`usage_exceeded`, HTTP 429).
    #[arg(long, value_name = "N")]
    credits: Option<u64>,
    /// Refill the credits every DURATION (at least 1m), e.g. "1d", counted from now.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, requires = "credits", conflicts_with = "refill_day")]
    refill_every: Option<Duration>,
    /// Refill the credits on this day of every month (1-31; the last day of a shorter
    /// month), at 00:00 UTC.
    #[arg(long, value_name = "DAY", requires = "credits")]
    refill_day: Option<u8>,
    /// The credits after each refill (default: --credits).
    #[arg(long, value_name = "N", requires = "credits")]
    refill_amount: Option<u64>,
    /// Report on the change feed when spending takes the credits below N.
    #[arg(long, value_name = "N", requires = "credits")]
    alert_below: Option<u64>,
}

impl CreditsArgs {
    /// The credits given, if any (the library checks them when they are set).
    fn get(&self) -> Option<Credits> {
        let remaining = self.credits?;
        let amount = self.refill_amount.unwrap_or(remaining);
        let mut credits = Credits::new(remaining);
        if let Some(period) = self.refill_every {
            credits = credits.refill(Refill::every(period, amount));
        }
        if let Some(day) = self.refill_day {
            credits = credits.refill(Refill::monthly(day, amount));
        }
        if let Some(threshold) = self.alert_below {
            credits = credits.alert_below(threshold);
        }
        Some(credits)
    }
}

#[derive(Debug, clap::Args)]
struct LimitArgs {
    /// Requests allowed per period: N/s, N/min, N/h or N/Pms (a period of P milliseconds),
    /// e.g. "100/s" or "5/250ms", optionally with the burst, "600/min burst 20" (any limit
    /// as `list` shows it).
    #[arg(long, value_name = "N/UNIT")]
    rate_limit: Option<String>,
    /// Requests allowed at once (default: N).
    #[arg(long, value_name = "B", requires = "rate_limit")]
    burst: Option<u32>,
}

impl LimitArgs {
    /// The limit given, if any, checked once by the library's own rules: `--burst` joins the
    /// text of `--rate-limit` and `RateLimit::from_str` checks the whole limit, so the command
    /// line accepts exactly the limits `issue` and `set_rate_limit` accept.
    fn get(&self) -> Result<Option<RateLimit>, Failure> {
        let Some(rate) = &self.rate_limit else {
            return Ok(None);
        };
        let text = match self.burst {
            Some(_) if rate.contains("burst") => {
                return Err(format!(
                    "--rate-limit {rate:?} already gives a burst; drop --burst or the burst in --rate-limit"
                ))
            }
            Some(burst) => format!("{rate} burst {burst}"),
            None => rate.clone(),
        };
        let limit = text
            .parse()
            .map_err(|e: RateLimitError| format!("--rate-limit: {e}"))?;
        Ok(Some(limit))
    }
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// What a command failed with: a message for stderr.
type Failure = String;

fn run(cli: Cli) -> Result<ExitCode, Failure> {
    let path = cli.store.as_path();
    let prefix = cli.prefix.as_deref();
    match cli.command {
        Command::Issue {
            name,
            scopes,
            expires_in,
            limit,
            owner,
            meta,
            credits,
            json,
        } => {
            let mut request = NewToken::new(name).scopes(scopes);
            if let Some(lifetime) = expires_in {
                request = request.expires_in(lifetime);
            }
            if let Some(limit) = limit.get()? {
                request = request.rate_limit(limit);
            }
            if let Some(owner) = owner {
                request = request.owner(owner);
            }
            for (key, value) in meta {
                request = request.meta(key, value);
            }
            if let Some(credits) = credits.get() {
                request = request.credits(credits);
            }
            issue(path, prefix, request, json)
        }
        Command::Validate { scope, cost, json } => validate(path, scope.as_deref(), cost, json),
        Command::Credits {
            id,
            credits,
            clear,
            json,
        } => match (credits.get(), clear) {
            (None, false) => show_credits(path, &id, json),
            (credits, _) => set_credits(path, &id, credits),
        },
        Command::Usage { id, json } => show_usage(path, &id, json),
        Command::List { owner, json } => list(path, owner.as_deref(), json),
        Command::Revoke { id, owner, json } => match (id, owner) {
            (_, Some(owner)) => revoke_owner(path, &owner, json),
            (Some(id), None) => revoke(path, &id, json),
            (None, None) => Err("give a token id, or --owner ID".into()),
        },
        Command::Limit { id, limit, .. } => set_limit(path, &id, limit.get()?),
        Command::OwnerLimit { owner, limit, .. } => set_owner_limit(path, &owner, limit.get()?),
        Command::Meta { id, pairs, .. } => set_meta(path, &id, &pairs),
        Command::Import { dry_run, json } => import::run(path, dry_run, json),
        Command::Delete { id, owner, json } => match (id, owner) {
            (_, Some(owner)) => delete_owner(path, &owner, json),
            (Some(id), None) => delete(path, &id, json),
            (None, None) => Err("give a token id, or --owner ID".into()),
        },
        Command::Purge { older_than, json } => purge(path, older_than, json),
        Command::Rotate { id, grace, json } => rotate(path, prefix, &id, grace, json),
        Command::Inspect { json } => inspect(path, json),
        Command::Stress(args) => {
            let database = is_database_url(&cli.store).then_some(cli.store.as_path());
            crate::stress::run(&args, database)
        }
    }
}

/// A `KEY=VALUE` pair from the command line (split at the first `=`; the value may hold
/// more). The library checks the key's length and uniqueness.
fn parse_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE (e.g. plan=pro)")),
    }
}

/// Opens the store at `path` to mint tokens, under `prefix` if one was given.
fn open_to_mint(path: &Path, prefix: Option<&str>) -> Result<TokenStore, Failure> {
    let builder = TokenStore::builder(path);
    match prefix {
        Some(prefix) => builder.prefix(prefix),
        None => builder,
    }
    .open()
    .map_err(refusal)
}

fn issue(
    path: &Path,
    prefix: Option<&str>,
    request: NewToken,
    json: bool,
) -> Result<ExitCode, Failure> {
    let store = open_to_mint(path, prefix)?;
    let issued = store.issue(request).map_err(|e| e.to_string())?;
    let info = store.get(&issued.id());
    store.close().map_err(|e| e.to_string())?;
    let info = info.ok_or("the issued token vanished before it could be shown")?;
    if json {
        let mut object = token_json(&info);
        object["token"] = Value::from(issued.secret());
        print_json(&object)?;
    } else {
        print_line(issued.secret())?;
        eprintln!(
            "issued {} ({}) into {}; the token above is shown only once",
            info.id,
            info.name,
            redacted_path(path)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn validate(path: &Path, scope: Option<&str>, cost: u64, json: bool) -> Result<ExitCode, Failure> {
    // The store first: a mistyped --store fails at once instead of after a prompt or a read.
    let checker = Checker::open(path)?;
    let token = read_token()?;
    let outcome = checker.check(&token, scope, cost);
    let read_only = checker.close()?;
    if read_only {
        eprintln!(
            "note: the store {} is open in another process, so the token was checked read-only against its files: this use is not recorded in last_used, and the rate limit is not checked",
            redacted_path(path)
        );
    }
    match outcome {
        Ok(valid) => {
            if json {
                let info = json!({
                    "valid": true,
                    "read_only": read_only,
                    "id": valid.id().as_str(),
                    "name": valid.name(),
                    "scopes": valid.scopes().collect::<Vec<_>>(),
                    "expires_at": valid.expires_at().map(timestamp),
                    "owner": valid.owner(),
                    "meta": meta_json(valid.meta_pairs()),
                });
                print_json(&info)?;
            } else {
                print_line(&format!("valid: {} ({})", valid.id(), valid.name()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(rejection) => {
            if json {
                let mut info = json!({
                    "valid": false,
                    "read_only": read_only,
                    "reason": rejection.as_str(),
                });
                let retry_after = match rejection {
                    Rejection::RateLimited { retry_after } => Some(retry_after),
                    Rejection::UsageExceeded { retry_after } => retry_after,
                    _ => None,
                };
                if let Some(retry_after) = retry_after {
                    info["retry_after_ms"] = Value::from(retry_after.as_millis() as u64);
                }
                print_json(&info)?;
            }
            eprintln!("rejected: {}", explain(rejection));
            if token.is_empty() {
                eprintln!("no token was given: paste it at the prompt, or {PIPE_IT_IN}");
            }
            Ok(ExitCode::from(EXIT_REJECTED))
        }
    }
}

/// What `validate` checks a token against: the store, or, while another process has it
/// open, a read-only view of its files.
enum Checker {
    Store(TokenStore),
    View(Box<StoreView>),
}

impl Checker {
    /// Opens the existing store at `path`, or reads its files if another process has it open.
    fn open(path: &Path) -> Result<Checker, Failure> {
        require_existing(path)?;
        match TokenStore::open(path) {
            Ok(store) => Ok(Checker::Store(store)),
            Err(tokencache::Error::Locked { .. }) => view(path).map(|v| Checker::View(Box::new(v))),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Checks `token` (and `scope`, if given), spending `cost` of its credits (a store
    /// opened read-only spends nothing).
    fn check(&self, token: &str, scope: Option<&str>, cost: u64) -> Result<OwnedToken, Rejection> {
        match (self, scope) {
            (Checker::Store(store), None) => store.validate_cost(token, cost),
            (Checker::Store(store), Some(scope)) => store.validate_scope_cost(token, scope, cost),
            (Checker::View(view), None) => view.validate(token),
            (Checker::View(view), Some(scope)) => view.validate_scope(token, scope),
        }
        .map(ValidToken::into_owned)
    }

    /// The details of token `id`.
    fn get(&self, id: &TokenId) -> Option<TokenInfo> {
        match self {
            Checker::Store(store) => store.get(id),
            Checker::View(view) => view.get(id),
        }
    }

    fn usage(&self, id: &TokenId) -> Option<Usage> {
        match self {
            Checker::Store(store) => store.usage(id).ok(),
            Checker::View(view) => view.usage(id),
        }
    }

    /// Closes the store, if it was opened. Returns whether the check was read-only.
    fn close(self) -> Result<bool, Failure> {
        match self {
            Checker::Store(store) => store.close().map(|()| false).map_err(|e| e.to_string()),
            Checker::View(_) => Ok(true),
        }
    }
}

fn list(path: &Path, owner: Option<&str>, json: bool) -> Result<ExitCode, Failure> {
    // A database store has no files to read: it is opened, as a replica, for its list,
    // without creating or upgrading its schema (a read-only command runs no DDL).
    let tokens = if is_database_url(path) {
        TokenStore::builder(path)
            .migrate_schema(false)
            .open()
            .map_err(refusal)?
            .list()
    } else {
        view(path)?.list()
    };
    let tokens: Vec<TokenInfo> = match owner {
        Some(owner) => tokens
            .into_iter()
            .filter(|t| t.owner.as_deref() == Some(owner))
            .collect(),
        None => tokens,
    };
    if json {
        print_json(&Value::Array(tokens.iter().map(token_json).collect()))?;
        return Ok(ExitCode::SUCCESS);
    }
    write_stdout(&table(&tokens))?;
    eprintln!("{} token(s) in {}", tokens.len(), redacted_path(path));
    Ok(ExitCode::SUCCESS)
}

/// `list`'s table: one row per token under a header, each column as wide as its widest
/// cell (header included), so every column starts at the same place on every row whatever
/// a name, a status or a rate limit (`600/min burst 20`) holds. An imported key's status
/// says so (`active, imported`). Metadata comes last, unpadded, as `key=value` pairs.
fn table(tokens: &[TokenInfo]) -> String {
    const HEADER: [&str; 10] = [
        "ID",
        "NAME",
        "OWNER",
        "STATUS",
        "CREATED",
        "EXPIRES",
        "LAST USED",
        "RATE LIMIT",
        "SCOPES",
        "META",
    ];
    let when = |t: Option<DateTime<Utc>>| t.map_or_else(|| "-".to_string(), timestamp);
    let dash_if_empty = |text: String| if text.is_empty() { "-".into() } else { text };
    let rows: Vec<[String; 10]> = tokens
        .iter()
        .map(|token| {
            let status = match token.imported {
                true => format!("{}, imported", status(token)),
                false => status(token).to_string(),
            };
            let meta: Vec<String> = token.meta.iter().map(|(k, v)| format!("{k}={v}")).collect();
            [
                token.id.to_string(),
                token.name.clone(),
                token.owner.clone().unwrap_or_else(|| "-".into()),
                status,
                timestamp(token.created_at),
                when(token.expires_at),
                when(token.last_used),
                token
                    .rate_limit
                    .map_or_else(|| "-".to_string(), |l| l.to_string()),
                dash_if_empty(token.scopes.join(",")),
                dash_if_empty(meta.join(",")),
            ]
        })
        .collect();
    let mut widths = HEADER.map(|cell| cell.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = HEADER.map(str::to_string);
    for row in std::iter::once(&header).chain(&rows) {
        let last = row.len() - 1;
        for (column, (cell, width)) in row.iter().zip(widths).enumerate() {
            out.push_str(cell);
            if column < last {
                out.push_str(&" ".repeat(width - cell.chars().count() + 2));
            }
        }
        out.push('\n');
    }
    out
}

fn revoke(path: &Path, id: &str, json: bool) -> Result<ExitCode, Failure> {
    let id = change(path, id, |store, id| store.revoke(id))?;
    if json {
        print_json(&json!({ "revoked": id.as_str() }))?;
    }
    eprintln!("revoked {id}; every later validation of it is rejected");
    Ok(ExitCode::SUCCESS)
}

/// `revoke --owner`: one durable write for all the owner's tokens.
fn revoke_owner(path: &Path, owner: &str, json: bool) -> Result<ExitCode, Failure> {
    let (had, revoked) = with_store(path, |store| {
        let had = store.owned_by(owner).len();
        Ok((had, store.revoke_owner(owner)?))
    })?;
    if json {
        print_json(&json!({ "owner": owner, "revoked": revoked }))?;
    } else {
        print_line(&format!(
            "revoked {revoked} {} of owner {owner}",
            tokens_noun(revoked)
        ))?;
    }
    warn_if_unknown_owner(path, owner, had);
    Ok(ExitCode::SUCCESS)
}

/// `delete --owner`: one durable write for all the owner's tokens.
fn delete_owner(path: &Path, owner: &str, json: bool) -> Result<ExitCode, Failure> {
    let deleted = with_store(path, |store| store.delete_owner(owner))?;
    if json {
        print_json(&json!({ "owner": owner, "deleted": deleted }))?;
    } else {
        print_line(&format!(
            "deleted {deleted} {} of owner {owner}",
            tokens_noun(deleted)
        ))?;
    }
    warn_if_unknown_owner(path, owner, deleted);
    Ok(ExitCode::SUCCESS)
}

/// An owner with no tokens is no error (revoking twice is fine), but a mistyped one would
/// pass silently: say so on stderr.
fn warn_if_unknown_owner(path: &Path, owner: &str, tokens: usize) {
    if tokens == 0 {
        eprintln!(
            "note: owner {owner:?} has no tokens in {}; check the spelling with `tokencache list --json`",
            redacted_path(path)
        );
    }
}

fn tokens_noun(count: usize) -> &'static str {
    if count == 1 {
        "token"
    } else {
        "tokens"
    }
}

fn set_owner_limit(
    path: &Path,
    owner: &str,
    limit: Option<RateLimit>,
) -> Result<ExitCode, Failure> {
    let had = with_store(path, |store| {
        store.set_owner_rate_limit(owner, limit)?;
        Ok(store.owned_by(owner).len())
    })?;
    match limit {
        Some(limit) => eprintln!("the tokens of owner {owner} now share a limit of {limit}"),
        None => eprintln!("the tokens of owner {owner} share no rate limit now"),
    }
    if had == 0 && limit.is_some() {
        eprintln!(
            "note: owner {owner:?} has no tokens yet; the limit applies to those issued later"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn set_meta(path: &Path, id: &str, pairs: &[(String, String)]) -> Result<ExitCode, Failure> {
    let id = change(path, id, |store, id| store.set_meta(id, pairs))?;
    eprintln!("{id} now has {} metadata pair(s)", pairs.len());
    Ok(ExitCode::SUCCESS)
}

fn set_credits(path: &Path, id: &str, credits: Option<Credits>) -> Result<ExitCode, Failure> {
    let id = change(path, id, |store, id| store.set_credits(id, credits))?;
    match credits {
        Some(credits) => eprintln!("{id} now has {} credits", credits.remaining()),
        None => eprintln!("{id} has no credits now"),
    }
    Ok(ExitCode::SUCCESS)
}

fn show_credits(path: &Path, id: &str, json: bool) -> Result<ExitCode, Failure> {
    let id = parse_id(id)?;
    let checker = Checker::open(path)?;
    let info = checker.get(&id);
    checker.close()?;
    let info = info.ok_or_else(|| format!("no token {id} in {}", redacted_path(path)))?;
    if json {
        print_json(&info.credits.as_ref().map_or(Value::Null, credits_json))?;
    } else {
        match &info.credits {
            Some(credits) => print_line(&format!("{} credits left", credits.remaining()))?,
            None => print_line("no credits: validations spend nothing")?,
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show_usage(path: &Path, id: &str, json: bool) -> Result<ExitCode, Failure> {
    let id = parse_id(id)?;
    let checker = Checker::open(path)?;
    let usage = checker.usage(&id);
    checker.close()?;
    let usage = usage.ok_or_else(|| format!("no token {id} in {}", redacted_path(path)))?;
    if json {
        let days: Vec<Value> = usage
            .days
            .iter()
            .map(|(date, count)| json!({ "date": date.to_string(), "count": count }))
            .collect();
        print_json(&json!({ "id": id.as_str(), "total": usage.total, "days": days }))?;
    } else {
        print_line(&format!("{} validations in all", usage.total))?;
        for (date, count) in &usage.days {
            print_line(&format!("{date}  {count}"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn set_limit(path: &Path, id: &str, limit: Option<RateLimit>) -> Result<ExitCode, Failure> {
    let id = change(path, id, |store, id| store.set_rate_limit(id, limit))?;
    match limit {
        Some(limit) => eprintln!("{id} is now limited to {limit}"),
        None => eprintln!("{id} has no rate limit now"),
    }
    Ok(ExitCode::SUCCESS)
}

fn delete(path: &Path, id: &str, json: bool) -> Result<ExitCode, Failure> {
    let id = change(path, id, |store, id| store.delete(id))?;
    if json {
        print_json(&json!({ "deleted": id.as_str() }))?;
    } else {
        print_line(&format!("deleted {id}"))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn purge(path: &Path, older_than: Duration, json: bool) -> Result<ExitCode, Failure> {
    let purged = with_store(path, |store| store.purge(older_than))?;
    if json {
        print_json(&json!({ "purged": purged }))?;
    } else {
        let noun = if purged == 1 { "token" } else { "tokens" };
        print_line(&format!("purged {purged} {noun}"))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn rotate(
    path: &Path,
    prefix: Option<&str>,
    id: &str,
    grace: Duration,
    json: bool,
) -> Result<ExitCode, Failure> {
    let old_id = parse_id(id)?;
    require_existing(path)?;
    let store = open_to_mint(path, prefix)?;
    let (issued, new, old) = with_open(store, |store| {
        let issued = store.rotate(&old_id, grace)?;
        let (new, old) = (store.get(&issued.id()), store.get(&old_id));
        Ok((issued, new, old))
    })?;
    let new = new.ok_or("the new token vanished before it could be shown")?;
    let old_expires_at = old.as_ref().and_then(|old| old.expires_at);
    if json {
        let mut object = token_json(&new);
        object["token"] = Value::from(issued.secret());
        object["old_id"] = Value::from(old_id.as_str());
        object["old_expires_at"] = Value::from(old_expires_at.map(timestamp));
        print_json(&object)?;
    } else {
        print_line(issued.secret())?;
        // `rotate` refuses a revoked token, so the old one is live until it expires.
        let fate = match old_expires_at {
            Some(at) => format!("expires at {}", timestamp(at)),
            None => "never expires".to_string(),
        };
        eprintln!(
            "rotated {old_id}: it {fate}; its replacement {} ({}) is the token above, shown only once",
            new.id, new.name
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Applies one durable change to the token `id` and closes the store, reporting either error.
fn change(
    path: &Path,
    id: &str,
    apply: impl FnOnce(&TokenStore, &TokenId) -> Result<(), tokencache::Error>,
) -> Result<TokenId, Failure> {
    let id = parse_id(id)?;
    with_store(path, |store| apply(store, &id))?;
    Ok(id)
}

/// Runs `work` on the existing store at `path` and closes it. The work's error is reported
/// before the close's.
fn with_store<T>(
    path: &Path,
    work: impl FnOnce(&TokenStore) -> Result<T, tokencache::Error>,
) -> Result<T, Failure> {
    with_open(open_existing(path)?, work)
}

/// Runs `work` on `store` and closes it. The work's error is reported before the close's.
fn with_open<T>(
    store: TokenStore,
    work: impl FnOnce(&TokenStore) -> Result<T, tokencache::Error>,
) -> Result<T, Failure> {
    let result = work(&store);
    let closed = store.close();
    let value = result.map_err(|e| e.to_string())?;
    closed.map_err(|e| e.to_string())?;
    Ok(value)
}

/// A token id given on the command line, checked before the store is opened.
fn parse_id(id: &str) -> Result<TokenId, Failure> {
    id.parse().map_err(|e| format!("{e}"))
}

fn inspect(path: &Path, json: bool) -> Result<ExitCode, Failure> {
    if is_database_url(path) {
        return Err("`inspect` reads a store file; a PostgreSQL store has none (use `list`, or query the tokencache_tokens table)".into());
    }
    require_existing(path)?;
    let info = tokencache::inspect(path).map_err(|e| e.to_string())?;
    let written_at = i64::try_from(info.written_at_ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .map(timestamp);
    if json {
        print_json(&json!({
            "path": redacted_path(path),
            "format_version": info.version,
            "file_bytes": info.file_len,
            "body_bytes": info.body_len,
            "body_crc32": format!("{:08x}", info.body_crc),
            "written_at": written_at,
            "snapshot_seq": info.snapshot_seq,
            "journal_bytes": info.journal_len,
            "journal_records": info.journal_records,
            "journal_torn": info.journal_torn,
            "tokens": info.tokens,
            "revoked": info.revoked,
        }))?;
    } else {
        let torn = if info.journal_torn {
            "; ends in a torn record (a write cut short, never acknowledged: the next open sets it aside)"
        } else {
            ""
        };
        write_stdout(&format!(
            "file:           {}\nformat version: {}\nsize:           {} bytes ({} header + {} body)\nbody crc32:     {:08x}\nlast snapshot:  {}, covers journal records up to {}\njournal:        {} bytes, {} record(s) after the snapshot{torn}\ntokens:         {} ({} revoked)\n",
            redacted_path(path),
            info.version,
            info.file_len,
            info.file_len - info.body_len,
            info.body_len,
            info.body_crc,
            written_at.as_deref().unwrap_or("never"),
            info.snapshot_seq,
            info.journal_len,
            info.journal_records,
            info.tokens,
            info.revoked,
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens a store that must already exist, to change it: a mistyped `--store` must not create
/// an empty one.
fn open_existing(path: &Path) -> Result<TokenStore, Failure> {
    require_existing(path)?;
    TokenStore::open(path).map_err(refusal)
}

/// Reads the files of the existing store at `path` without locking them.
fn view(path: &Path) -> Result<StoreView, Failure> {
    require_existing(path)?;
    StoreView::read(path).map_err(|e| e.to_string())
}

/// Refuses a `--store` that names nothing, with how to create a store.
fn require_existing(path: &Path) -> Result<(), Failure> {
    if is_database_url(path) || path.exists() {
        return Ok(());
    }
    Err(format!(
        "store {} does not exist; pass --store PATH, or create it with `tokencache issue NAME`",
        redacted_path(path)
    ))
}

/// Why a command that changes the store could not open it. A store another process holds is
/// changed through that process (one process owns a store), so the message says how.
fn refusal(error: tokencache::Error) -> Failure {
    match error {
        tokencache::Error::Locked { path, lock } => format!(
            "the store {} is open in another process (a running service holds {}); make the change through that service, or stop it and run this command again",
            redacted_path(&path),
            lock.display()
        ),
        error => error.to_string(),
    }
}

/// Whether `--store` names a PostgreSQL database rather than a file (the library's rule).
fn is_database_url(path: &Path) -> bool {
    matches!(
        tokencache::Location::of(path),
        tokencache::Location::Database(_)
    )
}

/// How to give `validate` a token without a terminal.
const PIPE_IT_IN: &str = "pipe it in, e.g. `printf %s \"$TOKEN\" | tokencache validate`";

/// Reads one token: from a terminal, after a prompt on stderr and without echo; otherwise all
/// of stdin. Surrounding whitespace is ignored. Input that is empty, or not UTF-8, comes back
/// as text that no token matches (empty, or with U+FFFD), so it is a malformed token, not an
/// error.
fn read_token() -> Result<String, Failure> {
    let stdin = io::stdin();
    if stdin.is_terminal() {
        return prompt_for_token();
    }
    let mut bytes = Vec::new();
    // A token is 40 bytes; read a little more so that trailing garbage is seen and refused,
    // but never buffer an unbounded stream.
    stdin
        .take(64 * 1024)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("could not read the token from stdin: {e}"))?;
    Ok(String::from_utf8_lossy(&bytes).trim().to_string())
}

/// Prompts on stderr and reads one line from the terminal with echo off. `rpassword` reads the
/// controlling terminal (`/dev/tty`) in raw mode and restores its modes when the line ends;
/// Ctrl-C raises SIGINT before that, leaving the terminal to the shell (bash restores it).
fn prompt_for_token() -> Result<String, Failure> {
    eprint!("Token: ");
    match rpassword::read_password() {
        Ok(token) => Ok(token.trim().to_string()),
        // Ctrl-D on an empty line: no token, like empty piped input.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            eprintln!();
            Ok(String::new())
        }
        Err(e) => Err(format!(
            "could not read the token from the terminal: {e}; {PIPE_IT_IN}"
        )),
    }
}

/// The rejection's name and its advice (the rejection table in `error.rs`); a rate limit
/// adds how long to wait.
fn explain(rejection: Rejection) -> String {
    let (name, advice) = (rejection.as_str(), rejection.advice());
    match rejection {
        Rejection::RateLimited { retry_after } => {
            format!("{name}: {advice} {} ms", retry_after.as_millis())
        }
        _ => format!("{name}: {advice}"),
    }
}

fn status(token: &TokenInfo) -> &'static str {
    if token.revoked_at.is_some() {
        "revoked"
    } else if token.expires_at.is_some_and(|at| at <= Utc::now()) {
        "expired"
    } else {
        "active"
    }
}

fn token_json(token: &TokenInfo) -> Value {
    json!({
        "id": token.id.as_str(),
        "name": token.name,
        "status": status(token),
        "scopes": token.scopes,
        "created_at": timestamp(token.created_at),
        "expires_at": token.expires_at.map(timestamp),
        "revoked_at": token.revoked_at.map(timestamp),
        "last_used": token.last_used.map(timestamp),
        "rate_limit": token.rate_limit.map(|l| json!({
            "count": l.count(),
            "period_ms": l.period().as_millis() as u64,
            "burst": l.burst_size(),
        })),
        "owner": token.owner,
        "meta": meta_json(token.meta.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
        "imported": token.imported,
        "credits": token.credits.as_ref().map(credits_json),
        "uses": token.uses,
    })
}

/// A token's credits as `list --json` and `credits --json` show them.
fn credits_json(credits: &Credits) -> Value {
    let refill = credits.refill_plan().map(|refill| match refill {
        Refill::Every { period, amount } => {
            json!({ "every_ms": period.as_millis() as u64, "amount": amount })
        }
        Refill::Monthly { day, amount } => json!({ "monthly_day": day, "amount": amount }),
        _ => Value::Null,
    });
    json!({
        "remaining": credits.remaining(),
        "refill": refill,
        "alert_below": credits.alert_threshold(),
    })
}

/// Metadata pairs as one JSON object (keys are unique, so nothing is lost).
fn meta_json<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Value {
    Value::Object(
        pairs
            .map(|(k, v)| (k.to_string(), Value::from(v)))
            .collect(),
    )
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn print_json(value: &Value) -> Result<(), Failure> {
    print_line(&value.to_string())
}

fn print_line(line: &str) -> Result<(), Failure> {
    write_stdout(&format!("{line}\n"))
}

/// Writes to stdout; a closed pipe (`| head`) is an error message, not a panic.
fn write_stdout(text: &str) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| format!("could not write to stdout: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where each column of `line` starts: after every run of two or more spaces.
    fn column_starts(line: &str) -> Vec<usize> {
        let mut starts = vec![0];
        let bytes = line.as_bytes();
        for i in 2..bytes.len() {
            if bytes[i] != b' ' && bytes[i - 1] == b' ' && bytes[i - 2] == b' ' {
                starts.push(i);
            }
        }
        starts
    }

    #[test]
    fn rate_limit_help_shows_a_period_in_milliseconds() {
        use clap::CommandFactory;
        for command in ["issue", "limit", "owner-limit"] {
            let mut cli = Cli::command();
            let help = cli
                .find_subcommand_mut(command)
                .unwrap()
                .render_long_help()
                .to_string();
            assert!(help.contains("5/250ms"), "{command} --help:\n{help}");
        }
    }

    #[test]
    fn list_aligns_its_columns_when_a_limit_has_a_burst() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path().join("tokens.snap")).unwrap();
        let bursty = RateLimit::per_minute(600).burst(20);
        for request in [
            NewToken::new("bursty").rate_limit(bursty),
            NewToken::new("plain"),
            NewToken::new("limited").rate_limit(RateLimit::per_second(100)),
        ] {
            store.issue(request.scopes(["read"])).unwrap();
        }
        let text = table(&store.list());
        store.close().unwrap();

        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(text.contains("600/min burst 20"), "{text}");
        let header = column_starts(lines[0]);
        assert_eq!(header.len(), 10, "{text}");
        for line in &lines[1..] {
            assert_eq!(column_starts(line), header, "misaligned:\n{text}");
        }
    }
}
