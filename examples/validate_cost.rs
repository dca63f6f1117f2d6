//! Instructions and simulated cache misses per validation, counted by callgrind rather than
//! timed, so the figure does not move with the machine's noise (docs/BENCHMARKS.md):
//!
//! ```sh
//! cargo build --release --example validate_cost
//! valgrind --tool=callgrind --cache-sim=yes --toggle-collect='validate_cost::hits' \
//!     --toggle-collect='validate_cost::floor' target/release/examples/validate_cost
//! callgrind_annotate --inclusive=yes callgrind.out.* | grep -E 'validate_cost::(hits|floor)'
//! ```
//!
//! Both loops make `ROUNDS` passes over the same 1,024 tokens spread over a 100,000-token
//! store: `hits` validates them, `floor` hashes them and probes a plain `HashMap` (the
//! least any digest-keyed store can do). Divide each function's counts by
//! `ROUNDS × 1,024`.
//!
//! With `VALIDATE_COST_ALL=1`, each loop makes 3 passes over all 100,000 tokens in a
//! shuffled order instead (divide by 300,000): every validation then reaches a token the
//! loop has not touched for a while, as `validate/hit/100k` does.

use std::collections::HashMap;
use std::hint::black_box;

use sha2::{Digest, Sha256};
use tokencache::{NewToken, TokenStore};

const TOKENS: usize = 100_000;
const SPREAD: usize = 1024;
const ROUNDS: usize = 100;
/// Passes over every token with `VALIDATE_COST_ALL=1`.
const ROUNDS_ALL: usize = 3;

#[inline(never)]
fn hits(store: &TokenStore, secrets: &[String], rounds: usize) -> usize {
    let mut accepted = 0;
    for _ in 0..rounds {
        for secret in secrets {
            accepted += usize::from(store.validate(black_box(secret)).is_ok());
        }
    }
    accepted
}

#[inline(never)]
fn floor(
    map: &HashMap<[u8; 32], u64, foldhash::fast::RandomState>,
    secrets: &[String],
    rounds: usize,
) -> u64 {
    let mut found = 0;
    for _ in 0..rounds {
        for secret in secrets {
            let digest: [u8; 32] = Sha256::digest(black_box(secret).as_bytes()).into();
            found += map.get(&digest).copied().unwrap_or(0);
        }
    }
    found
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    // `TOKENCACHE_BENCH_USAGE_DAYS=0`: the same build without usage counting.
    let days = std::env::var("TOKENCACHE_BENCH_USAGE_DAYS")
        .ok()
        .and_then(|days| days.parse().ok())
        .unwrap_or(30);
    let store = TokenStore::builder(dir.path().join("tokens.snap"))
        .usage_days(days)
        .open()?;
    let issued = store.issue_many((0..TOKENS).map(|i| NewToken::new(format!("token-{i}"))))?;
    let all = std::env::var("VALIDATE_COST_ALL").is_ok_and(|v| v == "1");
    let (spread, rounds) = if all {
        (TOKENS, ROUNDS_ALL)
    } else {
        (SPREAD, ROUNDS)
    };
    let mut secrets: Vec<String> = issued
        .iter()
        .step_by(TOKENS / spread)
        .take(spread)
        .map(|t| t.secret().to_owned())
        .collect();
    if all {
        // A fixed shuffle (xorshift), so both builds of a comparison walk the same order.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for i in (1..secrets.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            secrets.swap(i, (x % (i as u64 + 1)) as usize);
        }
    }
    let mut map = HashMap::with_capacity_and_hasher(TOKENS, Default::default());
    for (i, token) in issued.iter().enumerate() {
        map.insert(Sha256::digest(token.secret().as_bytes()).into(), i as u64);
    }
    let accepted = hits(&store, &secrets, rounds);
    let found = floor(&map, &secrets, rounds);
    println!(
        "{} validations accepted, {} probes ({found} summed)",
        accepted,
        rounds * secrets.len()
    );
    store.close()?;
    Ok(())
}
