//! Heap bytes per token held by an open store, measured with a counting global allocator.
//!
//! Writes a store of N tokens (default 1,000,000; each named `token-<i>` with one scope,
//! `read`), closes it, then counts the live heap bytes `TokenStore::open` keeps while the
//! store is open: the map, the entries, names and scopes, the persister's channel.
//!
//! `cargo run --release --example memory [-- <tokens> [credits|used]]`: with `credits`,
//! every token has credits (`Credits::new(1000)`, refilled daily), which live in their own
//! allocation beside the entry; with `used`, every token was validated once before the
//! store was closed, so the reopened store holds a usage count for each.

use std::sync::atomic::Ordering::Relaxed;

use std::time::Duration;

use tokencache::{Credits, NewToken, Refill, TokenStore};

#[path = "../tests/process_wide/counting.rs"]
mod counting;

use counting::LIVE;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count: usize = match std::env::args().nth(1) {
        Some(arg) => arg.parse().map_err(|e| format!("tokens: {e}: {arg:?}"))?,
        None => 1_000_000,
    };
    let option = std::env::args().nth(2);
    let (metered, used) = match option.as_deref() {
        None => (false, false),
        Some("credits") => (true, false),
        Some("used") => (false, true),
        Some(other) => {
            return Err(
                format!("unknown option {other:?}; say `credits`, `used` or nothing").into(),
            )
        }
    };
    let daily = Credits::new(1000).refill(Refill::every(Duration::from_secs(86_400), 1000));
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("tokens.snap");
    let store = TokenStore::open(&path)?;
    let issued = store.issue_many((0..count).map(|i| {
        let token = NewToken::new(format!("token-{i}")).scope("read");
        match metered {
            true => token.credits(daily),
            false => token,
        }
    }))?;
    if used {
        for token in &issued {
            store.validate(token.secret())?;
        }
    }
    drop(issued);
    store.close()?;
    let file_bytes = std::fs::metadata(&path)?.len();

    let before = LIVE.load(Relaxed);
    let store = TokenStore::open(&path)?;
    let held = LIVE.load(Relaxed).saturating_sub(before);
    let tokens = store.stats().tokens;
    store.close()?;

    let per_token = held as f64 / tokens as f64;
    println!("tokens           {tokens}");
    println!("heap held        {held} bytes");
    let target = match (metered, used) {
        (false, false) => " (target: <= 200)",
        (true, _) => " (with credits)",
        (_, true) => " (each used once)",
    };
    println!("heap per token   {per_token:.1} bytes{target}");
    println!(
        "file per token   {:.1} bytes",
        file_bytes as f64 / tokens as f64
    );
    Ok(())
}
