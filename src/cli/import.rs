//! `tokencache import`: keys minted elsewhere, one JSON object per line on stdin, known by
//! their SHA-256 only.
//!
//! Every line is checked before anything is written: first its shape here (JSON, known
//! fields, a digest, times, a rate limit, no digest twice), then by the library's own rules,
//! since `import_many` checks every key before its one durable write and writes nothing if
//! any is refused. Only when the library refuses does the command look for which lines it
//! refused, importing them a chunk at a time into a scratch store, so that the error names
//! them; the store itself is never written on that path. `--dry-run` runs the whole import
//! against a scratch copy of the store's files, so it checks exactly what the import would,
//! keys already in the store included, and writes nothing to the store.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use tokencache::{redacted_path, Error, ImportedToken, RateLimit, RateLimitError, TokenStore};

use super::{is_database_url, print_json, print_line, refusal, token_json, Failure};

/// Field names that would hold the key itself. A line with one is refused before its
/// other fields are read, and the value is never echoed.
const PLAINTEXT_FIELDS: [&str; 8] = [
    "key",
    "token",
    "secret",
    "plaintext",
    "api_key",
    "apikey",
    "password",
    "value",
];

/// The longest line read (a line carries at most 4 KiB of metadata, 64 scopes and a name).
const MAX_LINE: usize = 64 * 1024;

/// How many bad lines an error lists before it only counts the rest.
const SHOWN_ERRORS: usize = 20;

/// Keys imported at a time into the scratch store when looking for the refused lines.
const CHUNK: usize = 256;

/// One line of input. Unknown fields are refused: a misspelt `expires_at` must not import
/// a key that never expires.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    sha256: String,
    name: Option<String>,
    scopes: Option<Vec<String>>,
    owner: Option<String>,
    meta: Option<BTreeMap<String, String>>,
    expires_at: Option<String>,
    created_at: Option<String>,
    rate_limit: Option<Value>,
}

/// A checked line: its number (from 1) and the key it imports.
struct Parsed {
    line: usize,
    key: ImportedToken,
}

/// Runs `import` on the store at `path`.
pub(super) fn run(path: &Path, dry_run: bool, json: bool) -> Result<ExitCode, Failure> {
    let keys = read_keys()?;
    if dry_run {
        return rehearse(path, &keys, json);
    }
    let store = TokenStore::open(path).map_err(refusal)?;
    let result = store.import_many(keys.iter().map(|k| k.key.clone()));
    let closed = store.close();
    let ids = match result {
        Ok(ids) => ids,
        Err(error) => return Err(explain(error, &keys, None)),
    };
    closed.map_err(|e| e.to_string())?;
    for (parsed, id) in keys.iter().zip(&ids) {
        if json {
            print_json(&json!({ "line": parsed.line, "id": id.as_str() }))?;
        } else {
            print_line(&format!("line {}: {id}", parsed.line))?;
        }
    }
    eprintln!(
        "imported {} key(s) into {} in one durable write",
        ids.len(),
        redacted_path(path)
    );
    Ok(ExitCode::SUCCESS)
}

/// `--dry-run`: the import, run on a scratch copy of the store's files (or an empty
/// scratch store if there are none), then thrown away.
fn rehearse(path: &Path, keys: &[Parsed], json: bool) -> Result<ExitCode, Failure> {
    let scratch = Scratch::copy_of(path)?;
    let store = scratch.open()?;
    let result = store.import_many(keys.iter().map(|k| k.key.clone()));
    let infos: Vec<_> = match &result {
        Ok(ids) => ids.iter().map(|id| store.get(id)).collect(),
        Err(_) => Vec::new(),
    };
    // A scratch store: its close reports nothing worth stopping for.
    let _ = store.close();
    if let Err(error) = result {
        return Err(explain(error, keys, Some(&scratch)));
    }
    for (parsed, info) in keys.iter().zip(infos) {
        let info = info.ok_or("an imported key vanished from the scratch store")?;
        if json {
            let mut object = token_json(&info);
            if let Some(fields) = object.as_object_mut() {
                // The id is drawn at random when the keys are imported for real.
                fields.remove("id");
                fields.remove("last_used");
                fields.remove("revoked_at");
            }
            object["line"] = Value::from(parsed.line);
            object["sha256"] = Value::from(parsed.key.digest_hex());
            print_json(&object)?;
        } else {
            let owner = info
                .owner
                .as_deref()
                .map_or_else(String::new, |o| format!(" of owner {o}"));
            print_line(&format!(
                "line {}: would import {:?}{owner}, sha256 {}",
                parsed.line,
                info.name,
                parsed.key.digest_hex()
            ))?;
        }
    }
    let note = if is_database_url(path) {
        " (a database store is not copied: keys already in it were not checked)"
    } else {
        ""
    };
    eprintln!(
        "dry run: {} key(s) would be imported into {}; nothing was written{note}",
        keys.len(),
        redacted_path(path)
    );
    Ok(ExitCode::SUCCESS)
}

/// The error of an import the library refused, naming the lines it refused: the line
/// whose digest the store already holds, or those a scratch store refuses one at a time.
/// `scratch` is the store the import was tried on if it was one (`--dry-run`; it is
/// unchanged, since a refused import writes nothing).
fn explain(error: Error, keys: &[Parsed], scratch: Option<&Scratch>) -> Failure {
    let Error::InvalidRequest(message) = &error else {
        return format!("{error}; nothing was imported");
    };
    if let Some(parsed) = keys.iter().find(|k| message.contains(&k.key.digest_hex())) {
        return format!("line {}: {message}", parsed.line);
    }
    let empty;
    let scratch = match scratch {
        Some(scratch) => scratch,
        None => match Scratch::empty() {
            Ok(created) => {
                empty = created;
                &empty
            }
            Err(_) => return format!("{error}; nothing was imported"),
        },
    };
    match refused_lines(scratch, keys) {
        Ok(errors) if !errors.is_empty() => listing(&errors),
        _ => format!("{error}; nothing was imported"),
    }
}

/// The lines the library refuses, each with its reason: imported into `scratch` a chunk
/// at a time, and one at a time within a refused chunk (writes to the scratch store only).
fn refused_lines(scratch: &Scratch, keys: &[Parsed]) -> Result<Vec<String>, Failure> {
    let store = scratch.open()?;
    let mut errors = Vec::new();
    for chunk in keys.chunks(CHUNK) {
        if store
            .import_many(chunk.iter().map(|k| k.key.clone()))
            .is_ok()
        {
            continue;
        }
        for parsed in chunk {
            if let Err(e) = store.import(parsed.key.clone()) {
                errors.push(format!("line {}: {e}", parsed.line));
            }
        }
    }
    let _ = store.close();
    Ok(errors)
}

/// Reads and checks every line of stdin; the keys if all are good, else every error.
fn read_keys() -> Result<Vec<Parsed>, Failure> {
    let stdin = io::stdin();
    if stdin.is_terminal() {
        return Err("import reads keys from stdin, one JSON object per line: e.g. `tokencache import < keys.jsonl`".into());
    }
    let mut reader = stdin.lock();
    let mut keys = Vec::new();
    let mut errors = Vec::new();
    let mut first_line_of: HashMap<String, usize> = HashMap::new();
    let mut bytes = Vec::new();
    for number in 1.. {
        bytes.clear();
        let read = reader
            .by_ref()
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut bytes)
            .map_err(|e| format!("could not read stdin: {e}"))?;
        if read == 0 {
            break;
        }
        if bytes.len() > MAX_LINE {
            errors.push(format!(
                "line {number}: longer than {MAX_LINE} bytes; reading stopped here"
            ));
            break;
        }
        let Ok(text) = std::str::from_utf8(&bytes) else {
            errors.push(format!("line {number}: not UTF-8"));
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        match parse(text) {
            Ok(key) => match first_line_of.get(&key.digest_hex()) {
                Some(first) => errors.push(format!(
                    "line {number}: the same sha256 as line {first}; give each key once"
                )),
                None => {
                    first_line_of.insert(key.digest_hex(), number);
                    keys.push(Parsed { line: number, key });
                }
            },
            Err(e) => errors.push(format!("line {number}: {e}")),
        }
    }
    if !errors.is_empty() {
        return Err(listing(&errors));
    }
    if keys.is_empty() {
        return Err("no keys on stdin: give one JSON object per line, e.g. {\"sha256\": \"<64 hex>\", \"name\": \"legacy-ci\"}".into());
    }
    Ok(keys)
}

/// Errors, one per line (the first [`SHOWN_ERRORS`], then a count), and the outcome.
fn listing(errors: &[String]) -> Failure {
    let mut text = errors
        .iter()
        .take(SHOWN_ERRORS)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n  ");
    if errors.len() > SHOWN_ERRORS {
        text.push_str(&format!("\n  ... and {} more", errors.len() - SHOWN_ERRORS));
    }
    format!(
        "{} bad line(s); nothing was imported:\n  {text}",
        errors.len()
    )
}

/// One line's key. Never echoes a plaintext key: a field that would hold one is refused
/// by name, and a `sha256` that is not a digest (perhaps the key itself) is not shown.
fn parse(text: &str) -> Result<ImportedToken, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        format!(
            "not a JSON object: {} (column {})",
            e.to_string()
                .split(" at line ")
                .next()
                .unwrap_or("unreadable"),
            e.column()
        )
    })?;
    let Value::Object(fields) = &value else {
        return Err("not a JSON object: give one {...} per line".into());
    };
    if let Some(field) = fields
        .keys()
        .find(|k| PLAINTEXT_FIELDS.contains(&k.to_ascii_lowercase().as_str()))
    {
        return Err(format!(
            "field {field:?} would hold the key itself; import takes only the key's SHA-256 (\"sha256\": the output of `printf %s \"$KEY\" | sha256sum`), so no plaintext key is stored or logged"
        ));
    }
    let line: Line = serde_json::from_value(value).map_err(|e| e.to_string())?;
    let mut key = ImportedToken::sha256(&line.sha256).map_err(|_| {
        format!(
            "\"sha256\" must be 64 hexadecimal characters, the SHA-256 of the key (e.g. `printf %s \"$KEY\" | sha256sum`); this one has {} characters (not shown: it may be the key itself)",
            line.sha256.chars().count()
        )
    })?;
    if let Some(name) = line.name {
        key = key.name(name);
    }
    if let Some(scopes) = line.scopes {
        key = key.scopes(scopes);
    }
    if let Some(owner) = line.owner {
        key = key.owner(owner);
    }
    for (k, v) in line.meta.unwrap_or_default() {
        key = key.meta(k, v);
    }
    if let Some(at) = line.expires_at {
        key = key.expires_at(time("expires_at", &at)?);
    }
    if let Some(at) = line.created_at {
        key = key.created_at(time("created_at", &at)?);
    }
    if let Some(limit) = line.rate_limit {
        key = key.rate_limit(rate_limit(&limit)?);
    }
    Ok(key)
}

/// An RFC 3339 time.
fn time(field: &str, text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|e| {
            format!("{field:?} {text:?} is not an RFC 3339 time (e.g. 2027-01-31T00:00:00Z): {e}")
        })
}

/// A rate limit as the CLI writes it ("100/min burst 20") or as `list --json` shows it
/// ({"count", "period_ms", "burst"}), checked by the library's one parser.
fn rate_limit(value: &Value) -> Result<RateLimit, String> {
    let text = match value {
        Value::String(text) => text.clone(),
        Value::Object(fields) => {
            let number = |name: &str| fields.get(name).and_then(Value::as_u64);
            let (Some(count), Some(period_ms)) = (number("count"), number("period_ms")) else {
                return Err("\"rate_limit\" as an object needs \"count\" and \"period_ms\" (and may have \"burst\")".into());
            };
            if let Some(extra) = fields
                .keys()
                .find(|k| !["count", "period_ms", "burst"].contains(&k.as_str()))
            {
                return Err(format!("\"rate_limit\" has an unknown field {extra:?}"));
            }
            match fields.get("burst") {
                None | Some(Value::Null) => format!("{count}/{period_ms}ms"),
                Some(burst) => {
                    let burst = burst
                        .as_u64()
                        .ok_or("\"rate_limit\" \"burst\" must be a whole number")?;
                    format!("{count}/{period_ms}ms burst {burst}")
                }
            }
        }
        _ => {
            return Err(
                "\"rate_limit\" must be a string like \"100/min burst 20\" or an object {\"count\", \"period_ms\", \"burst\"}".into(),
            )
        }
    };
    text.parse()
        .map_err(|e: RateLimitError| format!("\"rate_limit\": {e}"))
}

/// A throwaway store in a temporary directory, removed when dropped.
struct Scratch {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Scratch {
    /// An empty scratch store.
    fn empty() -> Result<Scratch, Failure> {
        let dir = tempfile::tempdir()
            .map_err(|e| format!("could not create a scratch directory to check the keys: {e}"))?;
        let path = dir.path().join("scratch.snap");
        Ok(Scratch { _dir: dir, path })
    }

    /// A scratch store holding a copy of the files of the store at `path` (the store file
    /// and its journal; not its lock), or an empty one if there is no store file there.
    fn copy_of(path: &Path) -> Result<Scratch, Failure> {
        let scratch = Scratch::empty()?;
        if is_database_url(path) || !path.exists() {
            return Ok(scratch);
        }
        let copy = |from: &Path, to: &Path| {
            std::fs::copy(from, to).map_err(|e| {
                format!(
                    "could not copy {} to check the import against it: {e}",
                    from.display()
                )
            })
        };
        copy(path, &scratch.path)?;
        let journal = with_suffix(path, ".journal");
        if journal.exists() {
            copy(&journal, &with_suffix(&scratch.path, ".journal"))?;
        }
        Ok(scratch)
    }

    fn open(&self) -> Result<TokenStore, Failure> {
        TokenStore::open(&self.path).map_err(|e| format!("could not open a scratch store: {e}"))
    }
}

/// `path` with `suffix` appended to its file name (`tokens.snap` -> `tokens.snap.journal`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}
