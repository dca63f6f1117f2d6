//! What a rate limit costs `validate`: an unlimited token, a limited token that is admitted
//! (the compare-exchange path), and a limited token that is refused (a load, no write), all
//! on the real clock, in one run.
//!
//! `cargo bench --bench rate_limit`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use tokencache::{NewToken, RateLimit, TokenStore};

fn validate(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = TokenStore::open(dir.path().join("tokens.snap")).expect("open store");
    let unlimited = store.issue(NewToken::new("unlimited")).expect("issue");
    // One request per nanosecond with a 4M burst: one thread can never run out, so every
    // validation takes the admit path (load + decide + compare-exchange).
    let admitted = store
        .issue(
            NewToken::new("limited")
                .rate_limit(RateLimit::per_second(1_000_000_000).burst(4_000_000)),
        )
        .expect("issue");
    // One per hour, spent at once: every validation takes the refuse path.
    let refused = store
        .issue(NewToken::new("spent").rate_limit(RateLimit::per_hour(1).burst(1)))
        .expect("issue");
    assert!(store.validate(refused.secret()).is_ok());

    let mut group = c.benchmark_group("validate");
    group.bench_function("unlimited", |b| {
        b.iter(|| store.validate(black_box(unlimited.secret())).is_ok())
    });
    group.bench_function("limited_admitted", |b| {
        b.iter(|| {
            let ok = store.validate(black_box(admitted.secret())).is_ok();
            assert!(
                ok,
                "the limited token ran out; the bench would measure refusals"
            );
        })
    });
    group.bench_function("limited_refused", |b| {
        b.iter(|| store.validate(black_box(refused.secret())).is_err())
    });
    group.finish();
}

criterion_group!(benches, validate);
criterion_main!(benches);
