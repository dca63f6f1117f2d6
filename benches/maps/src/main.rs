//! Which concurrent map should back `tokencache`'s token store? (docs/DESIGN.md, "The
//! token map", shows the table this printed and what it decided.)
//!
//! Run: `cd benches/maps && cargo run --release` (QUICK=1 for a short run). Results are
//! printed as markdown and also written to `results.md` (not committed).
//!
//! Every candidate implements `Store`; all timed benchmarks are generic over it (monomorphized,
//! no dyn call in the hot loop). Rounds are interleaved: round r runs every candidate once before
//! round r+1 starts, so machine noise hits all candidates alike. Reported: median [min..max].

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap as StdMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::hint::black_box;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

// ---------------------------------------------------------------- counting allocator
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

#[inline]
fn add_live(n: isize) {
    let v = LIVE.fetch_add(n, Relaxed) + n;
    if n > 0 && v > PEAK.load(Relaxed) {
        PEAK.fetch_max(v, Relaxed);
    }
}
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            add_live(l.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            add_live(l.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size() as isize, Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            add_live(new as isize - l.size() as isize);
        }
        q
    }
}
#[global_allocator]
static GLOBAL: Counting = Counting;
fn live() -> isize {
    LIVE.load(Relaxed)
}

// ---------------------------------------------------------------- token
#[repr(C, align(64))]
pub struct Token {
    digest: [u8; 32],
    last_used: AtomicU64,
    expires: AtomicU64,
    uses: AtomicU64,
    flags: AtomicU64,
}
const _: () = assert!(std::mem::size_of::<Token>() == 64);

#[inline(always)]
fn digest_of(id: u64) -> [u8; 32] {
    let mut d = [0u8; 32];
    d[0..8].copy_from_slice(&id.to_le_bytes());
    d[8..16].copy_from_slice(&id.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    d[16..24].copy_from_slice(&(id ^ 0xDEAD_BEEF_CAFE_F00D).to_le_bytes());
    d[24..32].copy_from_slice(&id.rotate_left(29).to_le_bytes());
    d
}
impl Token {
    fn new(id: u64) -> Self {
        Token {
            digest: digest_of(id),
            last_used: AtomicU64::new(0),
            expires: AtomicU64::new(u64::MAX),
            uses: AtomicU64::new(0),
            flags: AtomicU64::new(0),
        }
    }
}
/// The validate body shared by all candidates: compare digest, bump last_used only if it changed.
#[inline(always)]
fn check(t: &Token, d: &[u8; 32], now: u64) -> bool {
    if t.digest != *d {
        return false;
    }
    if t.last_used.load(Relaxed) < now {
        t.last_used.fetch_max(now, Relaxed);
    }
    true
}

// ---------------------------------------------------------------- hashers
/// Identity/passthrough hasher for random 8-byte ids.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);
impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = self.0.rotate_left(8) ^ x as u64;
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = x;
    }
}
type IdH = BuildHasherDefault<IdHasher>;
type FxH = rustc_hash::FxBuildHasher;
type SipH = RandomState;

pub trait HB: BuildHasher + Default + Clone + Send + Sync + 'static {}
impl<T: BuildHasher + Default + Clone + Send + Sync + 'static> HB for T {}

// ---------------------------------------------------------------- candidates
pub trait Store: Send + Sync + 'static {
    fn new_store() -> Self;
    fn insert(&self, id: u64);
    fn remove(&self, id: u64);
    fn validate(&self, id: u64, d: &[u8; 32], now: u64) -> bool;
    fn bulk(&self, ids: &[u64]) {
        for &id in ids {
            self.insert(id);
        }
    }
}

pub struct MutexStd<H: HB>(Mutex<StdMap<u64, Arc<Token>, H>>);
impl<H: HB> Store for MutexStd<H> {
    fn new_store() -> Self {
        Self(Mutex::new(StdMap::with_hasher(H::default())))
    }
    fn insert(&self, id: u64) {
        self.0.lock().unwrap().insert(id, Arc::new(Token::new(id)));
    }
    fn remove(&self, id: u64) {
        self.0.lock().unwrap().remove(&id);
    }
    #[inline]
    fn validate(&self, id: u64, d: &[u8; 32], now: u64) -> bool {
        let g = self.0.lock().unwrap();
        g.get(&id).is_some_and(|t| check(t, d, now))
    }
}

pub struct Dash<H: HB>(dashmap::DashMap<u64, Arc<Token>, H>);
impl<H: HB> Store for Dash<H> {
    fn new_store() -> Self {
        Self(dashmap::DashMap::with_hasher(H::default()))
    }
    fn insert(&self, id: u64) {
        self.0.insert(id, Arc::new(Token::new(id)));
    }
    fn remove(&self, id: u64) {
        self.0.remove(&id);
    }
    #[inline]
    fn validate(&self, id: u64, d: &[u8; 32], now: u64) -> bool {
        self.0.get(&id).is_some_and(|r| check(&r, d, now))
    }
}

/// Current tokencache design: copy-on-write index (ArcSwap<HashMap<id, slot>>) into an
/// append-only boxcar::Vec<Arc<Token>>. boxcar has no remove, so removed tokens stay in `slots`.
pub struct SwapBoxcar<H: HB> {
    index: arc_swap::ArcSwap<StdMap<u64, usize, H>>,
    slots: boxcar::Vec<Arc<Token>>,
    writer: Mutex<()>,
}
impl<H: HB> Store for SwapBoxcar<H> {
    fn new_store() -> Self {
        Self {
            index: arc_swap::ArcSwap::from_pointee(StdMap::with_hasher(H::default())),
            slots: boxcar::Vec::new(),
            writer: Mutex::new(()),
        }
    }
    fn insert(&self, id: u64) {
        let i = self.slots.push(Arc::new(Token::new(id)));
        let _w = self.writer.lock().unwrap();
        let mut m: StdMap<u64, usize, H> = (**self.index.load()).clone();
        m.insert(id, i);
        self.index.store(Arc::new(m));
    }
    fn remove(&self, id: u64) {
        let _w = self.writer.lock().unwrap();
        let mut m: StdMap<u64, usize, H> = (**self.index.load()).clone();
        m.remove(&id);
        self.index.store(Arc::new(m));
    }
    fn bulk(&self, ids: &[u64]) {
        let _w = self.writer.lock().unwrap();
        let mut m: StdMap<u64, usize, H> = (**self.index.load()).clone();
        for &id in ids {
            m.insert(id, self.slots.push(Arc::new(Token::new(id))));
        }
        self.index.store(Arc::new(m));
    }
    #[inline]
    fn validate(&self, id: u64, d: &[u8; 32], now: u64) -> bool {
        let g = self.index.load();
        match g.get(&id) {
            Some(&i) => self.slots.get(i).is_some_and(|t| check(t, d, now)),
            None => false,
        }
    }
}

/// MODE: 0 = default (ResizeMode::Incremental(64)), 1 = ResizeMode::Blocking,
/// 2 = default resize mode but pre-sized with builder().capacity(200_000).
pub struct Pap<H: HB, const MODE: u8>(papaya::HashMap<u64, Arc<Token>, H>);
impl<H: HB, const M: u8> Store for Pap<H, M> {
    fn new_store() -> Self {
        let b = papaya::HashMap::builder().hasher(H::default());
        let b = if M == 1 { b.resize_mode(papaya::ResizeMode::Blocking) } else { b };
        let b = if M == 2 { b.capacity(200_000) } else { b };
        Self(b.build())
    }
    fn insert(&self, id: u64) {
        self.0.pin().insert(id, Arc::new(Token::new(id)));
    }
    fn remove(&self, id: u64) {
        self.0.pin().remove(&id);
    }
    #[inline]
    fn validate(&self, id: u64, d: &[u8; 32], now: u64) -> bool {
        let m = self.0.pin();
        m.get(&id).is_some_and(|t| check(t, d, now))
    }
}

/// papaya with the Token stored inline (papaya boxes each entry and never moves it, so the
/// atomics stay valid across resizes).
pub struct PapInline<H: HB>(papaya::HashMap<u64, Token, H>);
impl<H: HB> Store for PapInline<H> {
    fn new_store() -> Self {
        Self(papaya::HashMap::builder().hasher(H::default()).build())
    }
    fn insert(&self, id: u64) {
        self.0.pin().insert(id, Token::new(id));
    }
    fn remove(&self, id: u64) {
        self.0.pin().remove(&id);
    }
    #[inline]
    fn validate(&self, id: u64, d: &[u8; 32], now: u64) -> bool {
        let m = self.0.pin();
        m.get(&id).is_some_and(|t| check(t, d, now))
    }
}

/// scc::HashIndex + sdd Guard + peek. Value must be Arc<Token>: HashIndex may relocate (copy)
/// inline values on resize, so writes to inline atomics could land in a stale copy.
pub struct SccIdx<H: HB>(scc::HashIndex<u64, Arc<Token>, H>);
impl<H: HB> Store for SccIdx<H> {
    fn new_store() -> Self {
        Self(scc::HashIndex::with_hasher(H::default()))
    }
    fn insert(&self, id: u64) {
        let _ = self.0.insert_sync(id, Arc::new(Token::new(id)));
    }
    fn remove(&self, id: u64) {
        self.0.remove_sync(&id);
    }
    #[inline]
    fn validate(&self, id: u64, d: &[u8; 32], now: u64) -> bool {
        let g = scc::Guard::new();
        self.0.peek(&id, &g).is_some_and(|t| check(t, d, now))
    }
}

/// scc::HashMap::read_sync (takes a shared bucket lock for non-primitive values).
pub struct SccMap<H: HB>(scc::HashMap<u64, Arc<Token>, H>);
impl<H: HB> Store for SccMap<H> {
    fn new_store() -> Self {
        Self(scc::HashMap::with_hasher(H::default()))
    }
    fn insert(&self, id: u64) {
        let _ = self.0.insert_sync(id, Arc::new(Token::new(id)));
    }
    fn remove(&self, id: u64) {
        self.0.remove_sync(&id);
    }
    #[inline]
    fn validate(&self, id: u64, d: &[u8; 32], now: u64) -> bool {
        self.0.read_sync(&id, |_, t| check(t, d, now)).unwrap_or(false)
    }
}

pub struct Flurry<H: HB>(flurry::HashMap<u64, Arc<Token>, H>);
impl<H: HB> Store for Flurry<H> {
    fn new_store() -> Self {
        Self(flurry::HashMap::with_hasher(H::default()))
    }
    fn insert(&self, id: u64) {
        let g = self.0.guard();
        self.0.insert(id, Arc::new(Token::new(id)), &g);
    }
    fn remove(&self, id: u64) {
        let g = self.0.guard();
        self.0.remove(&id, &g);
    }
    #[inline]
    fn validate(&self, id: u64, d: &[u8; 32], now: u64) -> bool {
        let g = self.0.guard();
        self.0.get(&id, &g).is_some_and(|t| check(t, d, now))
    }
}

// ---------------------------------------------------------------- harness
static NOW_BASE: AtomicU64 = AtomicU64::new(1);
const NOW_SHIFT: u32 = 22; // last_used "clock" ticks once per 2^22 ops per thread

/// Timed run: `seqs.len()` threads, thread t loops over seqs[t] (len power of two).
/// Returns total ops/s.
fn run_threads<S: Store>(s: &S, seqs: &[&[u64]], dur: Duration) -> f64 {
    let stop = AtomicBool::new(false);
    let bar = Barrier::new(seqs.len() + 1);
    let base = NOW_BASE.fetch_add(1, Relaxed) << 8;
    std::thread::scope(|sc| {
        let hs: Vec<_> = seqs
            .iter()
            .map(|seq| {
                let (stop, bar) = (&stop, &bar);
                let mask = seq.len() - 1;
                sc.spawn(move || {
                    bar.wait();
                    let mut n: u64 = 0;
                    let mut miss = 0u64;
                    while !stop.load(Relaxed) {
                        for _ in 0..1024 {
                            let id = seq[n as usize & mask];
                            let ok = s.validate(black_box(id), &digest_of(id), base + (n >> NOW_SHIFT));
                            miss += !ok as u64;
                            n += 1;
                        }
                    }
                    assert_eq!(miss, 0, "lookup failed");
                    n
                })
            })
            .collect();
        bar.wait();
        let t0 = Instant::now();
        std::thread::sleep(dur);
        stop.store(true, Relaxed);
        let total: u64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
        total as f64 / t0.elapsed().as_secs_f64()
    })
}

struct ReadData {
    keys: Vec<u64>,
    uniform: Vec<u64>,
    zipf: [Vec<u64>; 2],
    hot: Vec<u64>,
}

trait Cand {
    fn name(&self) -> String;
    fn populate(&mut self, keys: &[u64]);
    fn uniform_ns(&self, d: &ReadData, dur: Duration) -> f64;
    fn hot(&self, d: &ReadData, threads: usize, dur: Duration) -> f64;
    fn zipf(&self, d: &ReadData, threads: usize, dur: Duration) -> f64;
    /// returns (cycles/s, live_start, live_end, peak)
    fn churn(&self, cycles: usize, seed: u64) -> (f64, isize, isize, isize);
    /// bytes per entry at n entries
    fn bytes_per_entry(&self, n: usize, seed: u64) -> f64;
    fn insert_cost_at(&self, _n: usize) -> Option<f64> {
        None
    }
}

struct C<S: Store> {
    name: &'static str,
    s: Option<S>,
    churn_cycles: Option<usize>,
}
fn cand<S: Store>(name: &'static str) -> Box<dyn Cand> {
    Box::new(C::<S> { name, s: None, churn_cycles: None })
}
fn cand_limited<S: Store>(name: &'static str, cycles: usize) -> Box<dyn Cand> {
    Box::new(C::<S> { name, s: None, churn_cycles: Some(cycles) })
}

fn rand_ids(n: usize, seed: u64) -> Vec<u64> {
    let mut r = rand::rngs::SmallRng::seed_from_u64(seed);
    (0..n).map(|_| r.random::<u64>()).collect()
}

impl<S: Store> Cand for C<S> {
    fn name(&self) -> String {
        self.name.to_string()
    }
    fn populate(&mut self, keys: &[u64]) {
        let s = S::new_store();
        s.bulk(keys);
        self.s = Some(s);
    }
    fn uniform_ns(&self, d: &ReadData, dur: Duration) -> f64 {
        1e9 / run_threads(self.s.as_ref().unwrap(), &[&d.uniform], dur)
    }
    fn hot(&self, d: &ReadData, threads: usize, dur: Duration) -> f64 {
        let seqs: Vec<&[u64]> = (0..threads).map(|_| &d.hot[..]).collect();
        run_threads(self.s.as_ref().unwrap(), &seqs, dur)
    }
    fn zipf(&self, d: &ReadData, threads: usize, dur: Duration) -> f64 {
        let seqs: Vec<&[u64]> = (0..threads).map(|t| &d.zipf[t][..]).collect();
        run_threads(self.s.as_ref().unwrap(), &seqs, dur)
    }
    fn churn(&self, cycles: usize, seed: u64) -> (f64, isize, isize, isize) {
        let cycles = self.churn_cycles.map_or(cycles, |c| c.min(cycles));
        const LIVE_N: usize = 10_000;
        let mut ring = rand_ids(LIVE_N, seed);
        let fresh = rand_ids(cycles, seed ^ 0x5555);
        let s = S::new_store();
        s.bulk(&ring);
        let start = live();
        PEAK.store(start, Relaxed);
        let t0 = Instant::now();
        for (c, &id) in fresh.iter().enumerate() {
            s.insert(id);
            let slot = c % LIVE_N;
            s.remove(ring[slot]);
            ring[slot] = id;
        }
        let el = t0.elapsed().as_secs_f64();
        let end = live();
        let peak = PEAK.load(Relaxed);
        drop(s);
        (cycles as f64 / el, start, end, peak)
    }
    fn bytes_per_entry(&self, n: usize, seed: u64) -> f64 {
        let ids = rand_ids(n, seed);
        let before = live();
        let s = S::new_store();
        s.bulk(&ids);
        let after = live();
        drop(s);
        (after - before) as f64 / n as f64
    }
    fn insert_cost_at(&self, n: usize) -> Option<f64> {
        // only meaningful (and only called) for the copy-on-write design
        let s = S::new_store();
        s.bulk(&rand_ids(n, 99));
        let extra = rand_ids(7, 7);
        let mut v: Vec<f64> = extra
            .iter()
            .map(|&id| {
                let t = Instant::now();
                s.insert(id);
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        Some(stats(&mut v).0)
    }
}

/// (median, min, max)
fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}
fn fmt3(v: &mut [f64], scale: f64, prec: usize) -> String {
    let (m, lo, hi) = stats(v);
    format!("{:.p$} [{:.p$}–{:.p$}]", m / scale, lo / scale, hi / scale, p = prec)
}

// ---------------------------------------------------------------- guard costs & Send-ness
struct P<T: ?Sized>(PhantomData<T>);
trait Fallback {
    fn is_send(&self) -> bool {
        false
    }
    fn is_sync(&self) -> bool {
        false
    }
}
impl<T: ?Sized> Fallback for P<T> {}
impl<T: ?Sized + Send> P<T> {
    #[allow(dead_code)]
    fn is_send(&self) -> bool {
        true
    }
}
struct Q<T: ?Sized>(PhantomData<T>);
impl<T: ?Sized> Fallback for Q<T> {}
impl<T: ?Sized + Sync> Q<T> {
    #[allow(dead_code)]
    fn is_sync(&self) -> bool {
        true
    }
}
macro_rules! sendsync {
    ($out:expr, $t:ty) => {
        $out.push(format!(
            "| `{}` | {} | {} |",
            stringify!($t),
            P::<$t>(PhantomData).is_send(),
            Q::<$t>(PhantomData).is_sync()
        ))
    };
}

fn time_ns(iters: u64, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_nanos() as f64 / iters as f64
}

fn guard_costs(rounds: usize, iters: u64) -> Vec<String> {
    let pm: papaya::HashMap<u64, Arc<Token>, IdH> = papaya::HashMap::builder().hasher(IdH::default()).build();
    pm.pin().insert(1, Arc::new(Token::new(1)));
    let fm: flurry::HashMap<u64, Arc<Token>, IdH> = flurry::HashMap::with_hasher(IdH::default());
    let sw = arc_swap::ArcSwap::from_pointee(StdMap::<u64, usize, IdH>::default());
    let si: scc::HashIndex<u64, Arc<Token>, IdH> = scc::HashIndex::with_hasher(IdH::default());
    let _ = si.insert_sync(1, Arc::new(Token::new(1)));
    let names = [
        "papaya `map.guard()` (LocalGuard) create+drop",
        "papaya `map.pin()` create+drop",
        "papaya `map.owned_guard()` (OwnedGuard) create+drop",
        "papaya `pin()` + `get(hit)`",
        "sdd/scc `Guard::new()` create+drop (no outer guard)",
        "sdd/scc `Guard::new()` nested inside a live guard",
        "scc `HashIndex::peek_with(hit)` (guard inside)",
        "flurry `map.guard()` create+drop (seize 0.3)",
        "arc_swap `ArcSwap::load()` (for comparison)",
        "empty loop (overhead)",
    ];
    let mut res: Vec<Vec<f64>> = vec![vec![]; names.len()];
    for _ in 0..rounds {
        res[0].push(time_ns(iters, || drop(black_box(pm.guard()))));
        res[1].push(time_ns(iters, || drop(black_box(pm.pin()))));
        res[2].push(time_ns(iters, || drop(black_box(pm.owned_guard()))));
        res[3].push(time_ns(iters, || {
            black_box(pm.pin().get(black_box(&1)).is_some());
        }));
        res[4].push(time_ns(iters, || drop(black_box(scc::Guard::new()))));
        {
            let _outer = scc::Guard::new();
            res[5].push(time_ns(iters, || drop(black_box(scc::Guard::new()))));
        }
        res[6].push(time_ns(iters, || {
            black_box(si.peek_with(black_box(&1), |_, v| v.flags.load(Relaxed)));
        }));
        res[7].push(time_ns(iters, || drop(black_box(fm.guard()))));
        res[8].push(time_ns(iters, || drop(black_box(sw.load()))));
        res[9].push(time_ns(iters, || { black_box(0u64); }));
    }
    let mut out = vec!["| operation (1 thread) | ns, median [min–max] |".into(), "|---|---|".into()];
    for (n, v) in names.iter().zip(res.iter_mut()) {
        out.push(format!("| {} | {} |", n, fmt3(v, 1.0, 2)));
    }
    out.push(String::new());
    out.push("| type | Send | Sync |".into());
    out.push("|---|---|---|".into());
    sendsync!(out, papaya::LocalGuard<'static>);
    sendsync!(out, papaya::OwnedGuard<'static>);
    sendsync!(out, papaya::HashMapRef<'static, u64, Arc<Token>, IdH, papaya::LocalGuard<'static>>);
    sendsync!(out, papaya::HashMapRef<'static, u64, Arc<Token>, IdH, papaya::OwnedGuard<'static>>);
    sendsync!(out, scc::Guard);
    sendsync!(out, flurry::Guard<'static>);
    sendsync!(out, dashmap::mapref::one::Ref<'static, u64, Arc<Token>>);
    sendsync!(out, arc_swap::Guard<Arc<StdMap<u64, usize, IdH>>>);
    out
}

// ---------------------------------------------------------------- main
fn main() {
    let quick = std::env::var("QUICK").is_ok();
    let rounds: usize = if quick { 3 } else { 7 };
    let dur = Duration::from_millis(if quick { 60 } else { 250 });
    let churn_cycles = if quick { 100_000 } else { 1_000_000 };
    let big_n = 1_000_000;
    const N: usize = 100_000;
    const SEQ: usize = 1 << 20;
    let mut out: Vec<String> = vec![];
    let t_start = Instant::now();
    let load_start = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    // ---- data
    let keys = rand_ids(N, 42);
    let mut r = rand::rngs::SmallRng::seed_from_u64(7);
    let uniform: Vec<u64> = (0..SEQ).map(|_| keys[r.random_range(0..N)]).collect();
    let zipf_d = Zipf::new(N as f64, 1.0).unwrap();
    let zipf = [0u64, 1].map(|t| {
        let mut r = rand::rngs::SmallRng::seed_from_u64(100 + t);
        (0..SEQ).map(|_| keys[zipf_d.sample(&mut r) as usize - 1]).collect::<Vec<u64>>()
    });
    let hot = vec![keys[12345]; 1024];
    let data = ReadData { keys, uniform, zipf, hot };

    // ---- candidates (identity hasher = main matrix)
    let mut main: Vec<Box<dyn Cand>> = vec![
        cand::<MutexStd<IdH>>("Mutex<std HashMap>"),
        cand::<Dash<IdH>>("dashmap 6 (get)"),
        cand_limited::<SwapBoxcar<IdH>>("ArcSwap<HashMap>+boxcar (current)", 20_000),
        cand::<Pap<IdH, 0>>("papaya (pin+get)"),
        cand::<Pap<IdH, 1>>("papaya, ResizeMode::Blocking"),
        cand::<Pap<IdH, 2>>("papaya, Incremental, capacity(200k)"),
        cand::<PapInline<IdH>>("papaya, inline Token"),
        cand::<SccIdx<IdH>>("scc HashIndex (Guard+peek)"),
        cand::<SccMap<IdH>>("scc HashMap (read_sync)"),
        cand::<Flurry<IdH>>("flurry 0.5"),
    ];
    let mut hashers: Vec<Box<dyn Cand>> = vec![
        cand::<MutexStd<SipH>>("Mutex<std HashMap>"),
        cand::<MutexStd<FxH>>("Mutex<std HashMap>"),
        cand::<Dash<SipH>>("dashmap 6"),
        cand::<Dash<FxH>>("dashmap 6"),
        cand::<SwapBoxcar<SipH>>("ArcSwap+boxcar"),
        cand::<SwapBoxcar<FxH>>("ArcSwap+boxcar"),
        cand::<Pap<SipH, 0>>("papaya"),
        cand::<Pap<FxH, 0>>("papaya"),
        cand::<SccIdx<SipH>>("scc HashIndex"),
        cand::<SccIdx<FxH>>("scc HashIndex"),
        cand::<SccMap<SipH>>("scc HashMap"),
        cand::<SccMap<FxH>>("scc HashMap"),
        cand::<Flurry<SipH>>("flurry"),
        cand::<Flurry<FxH>>("flurry"),
    ];
    for c in main.iter_mut().chain(hashers.iter_mut()) {
        c.populate(&data.keys);
    }
    eprintln!("populated in {:?}", t_start.elapsed());

    // ---- read benchmarks, interleaved rounds
    let nm = main.len();
    let mut uni = vec![vec![]; nm];
    let mut hot1 = vec![vec![]; nm];
    let mut hot2 = vec![vec![]; nm];
    let mut hr = vec![vec![]; nm]; // per-round 2t/1t ratio
    let mut z1 = vec![vec![]; nm];
    let mut z2 = vec![vec![]; nm];
    let mut zr = vec![vec![]; nm];
    let mut hu = vec![vec![]; hashers.len()];
    for round in 0..rounds {
        for (i, c) in main.iter().enumerate() {
            uni[i].push(c.uniform_ns(&data, dur));
            let (a, b) = (c.hot(&data, 1, dur), c.hot(&data, 2, dur));
            hot1[i].push(a);
            hot2[i].push(b);
            hr[i].push(b / a);
            let (a, b) = (c.zipf(&data, 1, dur), c.zipf(&data, 2, dur));
            z1[i].push(a);
            z2[i].push(b);
            zr[i].push(b / a);
        }
        for (i, c) in hashers.iter().enumerate() {
            hu[i].push(c.uniform_ns(&data, dur));
        }
        eprintln!("read round {round} done at {:?}", t_start.elapsed());
    }
    drop(hashers);

    // ---- churn (interleaved too), memory
    let churn_rounds = if quick { 2 } else { 5 };
    let mut ch = vec![vec![]; nm];
    let mut chmem: Vec<(isize, isize, isize)> = vec![(0, 0, 0); nm];
    for round in 0..churn_rounds {
        for (i, c) in main.iter().enumerate() {
            let (tp, s, e, p) = c.churn(churn_cycles, 1000 + round as u64);
            ch[i].push(tp);
            // keep the worst (largest) end-start delta seen
            if round == 0 || e - s > chmem[i].1 - chmem[i].0 {
                chmem[i] = (s, e, p);
            }
        }
        eprintln!("churn round {round} done at {:?}", t_start.elapsed());
    }
    let bpe: Vec<f64> = main.iter().map(|c| c.bytes_per_entry(big_n, 5)).collect();
    eprintln!("bytes/entry done at {:?}", t_start.elapsed());
    let swap_idx = 2;
    let ins100k = main[swap_idx].insert_cost_at(100_000).unwrap();
    let ins1m = main[swap_idx].insert_cost_at(1_000_000).unwrap();
    let guards = guard_costs(rounds, if quick { 2_000_000 } else { 10_000_000 });

    // ---- report
    out.push(format!(
        "Rounds: {rounds} interleaved, {} ms per timed sample; validate = lookup + 32-byte digest compare + \
         `last_used` load (+ `fetch_max` once per 2^{NOW_SHIFT} ops per key-visit epoch). Identity hasher unless noted. \
         Cells: median [min–max].\n",
        dur.as_millis()
    ));
    out.push("### Reads (100k entries)\n".into());
    out.push("| candidate | uniform validate, 1 thr (ns/op) | hot key 1 thr (Mops/s) | hot key 2 thr (Mops/s total) | hot 2t/1t | Zipf(1.0) 1 thr (Mops/s) | Zipf 2 thr (Mops/s) | Zipf 2t/1t |".into());
    out.push("|---|---|---|---|---|---|---|---|".into());
    for i in 0..nm {
        out.push(format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            main[i].name(),
            fmt3(&mut uni[i], 1.0, 1),
            fmt3(&mut hot1[i], 1e6, 1),
            fmt3(&mut hot2[i], 1e6, 1),
            fmt3(&mut hr[i], 1.0, 2),
            fmt3(&mut z1[i], 1e6, 1),
            fmt3(&mut z2[i], 1e6, 1),
            fmt3(&mut zr[i], 1.0, 2),
        ));
    }
    out.push("\n### Hasher sensitivity: uniform validate, 1 thread, ns/op\n".into());
    out.push("| candidate | identity | SipHash (RandomState) | FxHash |".into());
    out.push("|---|---|---|---|".into());
    let pairs = [(0, 0), (1, 2), (2, 4), (3, 6), (7, 8), (8, 10), (9, 12)];
    for (mi, hi) in pairs {
        let id = stats(&mut uni[mi]).0;
        let sip = fmt3(&mut hu[hi], 1.0, 1);
        let fx = fmt3(&mut hu[hi + 1], 1.0, 1);
        out.push(format!("| {} | {:.1} | {} | {} |", main[mi].name(), id, sip, fx));
    }
    out.push(format!(
        "\n### Insert/remove churn ({} cycles unless noted, 10,000 live) and memory\n",
        churn_cycles
    ));
    out.push("| candidate | churn (k cycles/s) | live heap at start (KiB) | live heap at end (KiB) | end − start (KiB) | peak − start (KiB) | heap bytes/entry @1M |".into());
    out.push("|---|---|---|---|---|---|---|".into());
    for i in 0..nm {
        let (s, e, p) = chmem[i];
        out.push(format!(
            "| {} | {} | {} | {} | {:+} | {} | {:.0} |",
            main[i].name(),
            fmt3(&mut ch[i], 1e3, 1),
            s / 1024,
            e / 1024,
            (e - s) / 1024,
            (p - s) / 1024,
            bpe[i]
        ));
    }
    out.push("\n(ArcSwap+boxcar churn runs 20,000 cycles only: every insert/remove clones the whole index.)".into());
    out.push(format!(
        "\nArcSwap+boxcar single insert (clone whole index + store): median of 7 = **{:.2} ms at 100k**, **{:.2} ms at 1M** entries.\n",
        ins100k, ins1m
    ));
    out.push("### Guard cost and Send-ness\n".into());
    out.extend(guards);
    out.push(format!(
        "\nTotal run time: {:?}; /proc/loadavg at start: {} ; at end: {}",
        t_start.elapsed(),
        load_start.trim(),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    ));
    let text = out.join("\n");
    println!("{text}");
    std::fs::write("results.md", &text).unwrap();
}
