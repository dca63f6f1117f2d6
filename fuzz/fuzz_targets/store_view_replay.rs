//! Journal replay over a loaded store file, through the public readers `StoreView::read`
//! and `inspect` (which read and replay as `open` does, without writing): a real store file
//! of eight tokens (revoked, expiring, rate-limited, used; two with an owner that has a
//! shared limit, one with metadata, one imported, one under the prefix `sk_live`; built once
//! per process) and a journal made from the input, a run of records after it. They must
//! never panic, must agree with each other, a view that reads holds at most the store
//! file's tokens plus the records' issues, and no token it holds has an owner or metadata
//! that `issue` would refuse.
//!
//! Input: a flags byte, then records. Each record is a length byte and that many bytes:
//! taken as the record's payload as it is (flags bit 0 clear), or read as a list of changes
//! (bit 0 set; see `changes`) that name the loaded tokens by index and are encoded as
//! FORMAT.md says, so the fuzzer reaches replay on loaded tokens instead of stopping at the
//! decoder. Every record is framed validly (sequence numbers from the store file's `seq`,
//! checksums) unless bit 1 is set, which takes each record's `seq` offset from the input;
//! bit 2 drops the journal's last byte (a torn tail).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokencache::{ImportedToken, ManualClock, NewToken, RateLimit, StoreView, TokenStore};

const JOURNAL_MAGIC: [u8; 8] = *b"\x89TKJ\r\n\x1a\n";

/// The loaded store: its file's bytes, its `seq`, its token ids, and where inputs are put.
struct Loaded {
    image: Vec<u8>,
    seq: u64,
    ids: Vec<[u8; 8]>,
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn loaded() -> &'static Loaded {
    static LOADED: OnceLock<Loaded> = OnceLock::new();
    LOADED.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("tokens.snap");
        let clock = ManualClock::new(1_767_225_600_000);
        let store = TokenStore::builder(&path)
            .clock(clock.clone())
            .open()
            .expect("open the seed store");
        let issued = store
            .issue_many([
                NewToken::new("plain"),
                NewToken::new("scoped").scopes(["read", "write"]),
                NewToken::new("expiring").expires_in(Duration::from_secs(3600)),
                NewToken::new("limited").rate_limit(RateLimit::per_second(5).burst(10)),
                NewToken::new("revoked"),
            ])
            .expect("issue");
        store.revoke(&issued[4].id()).expect("revoke");
        store.validate(issued[0].secret()).expect("valid");
        let owned = store
            .issue_many([
                NewToken::new("owned").owner("acme").meta("plan", "pro"),
                NewToken::new("owned too").owner("acme"),
            ])
            .expect("issue owned");
        store
            .set_owner_rate_limit("acme", Some(RateLimit::per_second(2)))
            .expect("owner limit");
        let digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let imported = store
            .import(ImportedToken::sha256(digest).expect("a digest").owner("globex"))
            .expect("import");
        clock.advance(Duration::from_secs(120));
        store.close().expect("close (compacts)");
        let store = TokenStore::builder(&path)
            .clock(clock.clone())
            .prefix("sk_live")
            .open()
            .expect("open under sk_live");
        let prefixed = store.issue(NewToken::new("sk_live")).expect("issue");
        store.close().expect("close (compacts)");
        let seq = tokencache::inspect(&path).expect("inspect").snapshot_seq;
        let ids = issued
            .iter()
            .chain(&owned)
            .map(|t| t.id())
            .chain([imported, prefixed.id()])
            .map(|id| {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(id.as_str().as_bytes());
                bytes
            })
            .collect();
        let image = std::fs::read(&path).expect("read the store file");
        Loaded {
            image,
            seq,
            ids,
            _dir: dir,
            path,
        }
    })
}

/// bincode 2's standard (varint) integer encoding.
fn varint(out: &mut Vec<u8>, v: u64) {
    if v < 251 {
        out.push(v as u8);
    } else if v <= u64::from(u16::MAX) {
        out.push(251);
        out.extend_from_slice(&(v as u16).to_le_bytes());
    } else if v <= u64::from(u32::MAX) {
        out.push(252);
        out.extend_from_slice(&(v as u32).to_le_bytes());
    } else {
        out.push(253);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Reads bytes off the front of a record's input, zeros once it runs out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn time(&mut self) -> u64 {
        // Around the seed store's clock, either side, in seconds.
        let offset = u64::from(u16::from_le_bytes([self.byte(), self.byte()]));
        (1_767_225_600_000 + offset * 1000).saturating_sub(30_000_000)
    }

    /// An owner: one the loaded tokens have, another, or (rarely) one `issue` refuses.
    fn owner(&mut self, out: &mut Vec<u8>) {
        let owner: &[u8] = match self.byte() % 8 {
            0..=3 => b"acme",
            4 | 5 => b"globex",
            6 => b"",
            _ => b"a\nb",
        };
        varint(out, owner.len() as u64);
        out.extend_from_slice(owner);
    }

    fn id(&mut self, ids: &[[u8; 8]]) -> [u8; 8] {
        let pick = self.byte() as usize;
        match ids.get(pick % (ids.len() + 1)) {
            Some(id) => *id,
            // An id no token has: base62 characters from the input.
            None => {
                const B62: &[u8] =
                    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
                std::array::from_fn(|_| B62[self.byte() as usize % 62])
            }
        }
    }
}

/// A record's payload from a list of changes: a count byte, then per change a kind byte
/// (the `Change` variant, journal version 2's eleven) and its fields (a token by index into
/// the loaded ids, or a new id; times around the store's clock; a rate limit's numbers as
/// bytes; owners, metadata and prefixes from short lists, some that `issue` refuses).
fn changes(input: &[u8], ids: &[[u8; 8]]) -> Vec<u8> {
    let mut input = Bytes(input);
    let count = input.byte() % 16;
    let mut out = Vec::new();
    varint(&mut out, u64::from(count));
    for _ in 0..count {
        let kind = input.byte() % 11;
        varint(&mut out, u64::from(kind));
        match kind {
            0 => {
                // Issue(Record): id, name, digest, scopes, created_at, expires_at,
                // revoked_at, last_used, rate_limit.
                out.extend_from_slice(&input.id(ids));
                let name_len = input.byte() % 8;
                varint(&mut out, u64::from(name_len));
                out.extend((0..name_len).map(|_| b'a' + input.byte() % 26));
                out.extend((0..32).map(|_| input.byte()));
                let scopes = input.byte() % 3;
                varint(&mut out, u64::from(scopes));
                for _ in 0..scopes {
                    varint(&mut out, 4);
                    out.extend_from_slice(b"read");
                }
                let created = input.time();
                varint(&mut out, created);
                for _ in 0..3 {
                    if input.byte() & 1 == 1 {
                        out.push(1);
                        let at = input.time();
                        varint(&mut out, at);
                    } else {
                        out.push(0);
                    }
                }
                rate_limit(&mut out, &mut input);
            }
            1 | 4 | 5 => {
                // Revoke, Expire, Used: id and time.
                out.extend_from_slice(&input.id(ids));
                let at = input.time();
                varint(&mut out, at);
            }
            2 => out.extend_from_slice(&input.id(ids)),
            3 => {
                out.extend_from_slice(&input.id(ids));
                rate_limit(&mut out, &mut input);
            }
            6 => {
                // Extras(ExtrasRecord): id, owner, meta pairs, imported.
                out.extend_from_slice(&input.id(ids));
                if input.byte() & 1 == 1 {
                    out.push(1);
                    input.owner(&mut out);
                } else {
                    out.push(0);
                }
                let pairs = input.byte() % 4;
                varint(&mut out, u64::from(pairs));
                for _ in 0..pairs {
                    // Keys from a short list, so some repeat (refused); a value of up to
                    // 5 KiB now and then (over the limit: refused).
                    let key = [b'k', b'0' + input.byte() % 3];
                    varint(&mut out, 2);
                    out.extend_from_slice(&key);
                    let len = match input.byte() {
                        250.. => 5000,
                        n => usize::from(n % 8),
                    };
                    varint(&mut out, len as u64);
                    out.extend(std::iter::repeat_n(b'v', len));
                }
                out.push(input.byte() & 1);
            }
            7 => {
                // RevokeOwner: owner, at.
                input.owner(&mut out);
                let at = input.time();
                varint(&mut out, at);
            }
            8 => input.owner(&mut out),
            9 => {
                input.owner(&mut out);
                rate_limit(&mut out, &mut input);
            }
            _ => {
                // Prefix: a valid one, or one that breaks the rules.
                let prefix: &[u8] = match input.byte() % 4 {
                    0 => b"sk_live",
                    1 => b"sk_test",
                    2 => b"bad-prefix",
                    _ => b"",
                };
                varint(&mut out, prefix.len() as u64);
                out.extend_from_slice(prefix);
            }
        }
    }
    out
}

/// An `Option<RateLimitRecord>` (period_ms, count, burst), from the input's bytes.
fn rate_limit(out: &mut Vec<u8>, input: &mut Bytes<'_>) {
    if input.byte() & 1 == 0 {
        out.push(0);
        return;
    }
    out.push(1);
    let period = u64::from(input.byte()) * 250;
    let count = u64::from(input.byte());
    let burst = u64::from(input.byte()) << (input.byte() % 24);
    varint(out, period);
    varint(out, count);
    varint(out, burst);
}

/// A journal after the store file's `seq`, with each payload framed as FORMAT.md says.
fn journal(base: u64, payloads: &[(Vec<u8>, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(&JOURNAL_MAGIC);
    out.extend_from_slice(&2u32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&base.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    let crc = crc32fast::hash(&out[..28]);
    out.extend_from_slice(&crc.to_le_bytes());
    for (payload, seq) in payloads {
        let start = out.len();
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(payload);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&out[start..start + 4]);
        hasher.update(&out[start + 8..]);
        let crc = hasher.finalize();
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let loaded = loaded();
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let mut payloads = Vec::new();
    let mut seq = loaded.seq;
    while let Some((&len, tail)) = rest.split_first() {
        let len = (len as usize).min(tail.len());
        let (input, tail) = tail.split_at(len);
        rest = tail;
        let payload = if flags & 1 == 1 {
            changes(input, &loaded.ids)
        } else {
            input.to_vec()
        };
        seq = if flags & 2 == 2 {
            seq.wrapping_add(u64::from(input.first().copied().unwrap_or(1)))
        } else {
            seq + 1
        };
        payloads.push((payload, seq));
        if payloads.len() == 64 {
            break;
        }
    }
    let mut journal = journal(loaded.seq, &payloads);
    if flags & 4 == 4 {
        journal.pop();
    }
    std::fs::write(&loaded.path, &loaded.image).expect("write the store file");
    std::fs::write(loaded.path.with_extension("snap.journal"), &journal)
        .expect("write the journal");

    let view = StoreView::read(&loaded.path);
    let info = tokencache::inspect(&loaded.path);
    match (&view, &info) {
        (Ok(view), Ok(info)) => {
            assert_eq!(view.len(), info.tokens, "the view and inspect disagree");
            assert!(view.len() <= loaded.ids.len() + 16 * payloads.len());
            for token in view.list() {
                assert_eq!(view.get(&token.id).as_ref(), Some(&token));
                // Replay admits only what a call could have made.
                let meta_bytes: usize = token.meta.iter().map(|(k, v)| k.len() + v.len()).sum();
                assert!(meta_bytes <= 4096, "{} bytes of metadata", meta_bytes);
                for (n, (key, _)) in token.meta.iter().enumerate() {
                    assert!(token.meta[..n].iter().all(|(k, _)| k != key), "key {key} twice");
                }
                if let Some(owner) = &token.owner {
                    assert!(!owner.is_empty() && !owner.contains('\n'), "owner {owner:?}");
                }
            }
        }
        (Err(_), Err(_)) => {}
        _ => panic!("one reader refused what the other read: {view:?} / {info:?}"),
    }
});
