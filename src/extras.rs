//! A token's extras: its owner, its metadata and whether it was imported. Most tokens have
//! none, and an entry without them holds one null pointer. With them, an entry points at
//! one immutable [`Extras`]; `set_meta` swaps in a new one whole.

use std::borrow::Cow;
use std::sync::Arc;

use crate::owner::{self, Owner, Owners};
use crate::snapshot::{ExtrasRecord, ExtrasRef, Problem};
use crate::token::TokenId;

/// The most bytes of metadata one token carries (keys and values together).
pub(crate) const MAX_META_BYTES: usize = 4096;
/// Separates keys and values in packed metadata (none holds it).
const SEPARATOR: char = '\0';

/// A token's owner, metadata and import mark, as one immutable value.
pub(crate) struct Extras {
    pub(crate) owner: Option<Arc<Owner>>,
    /// Each key, then its value, each followed by [`SEPARATOR`], in the order given.
    meta: Box<str>,
    pub(crate) imported: bool,
}

impl Extras {
    /// Extras from their parts; `meta` must come from [`pack_meta`].
    pub(crate) fn new(owner: Option<Arc<Owner>>, meta: Box<str>, imported: bool) -> Extras {
        Extras {
            owner,
            meta,
            imported,
        }
    }

    /// The extras a record describes, checked as `NewToken` checks them (a file or a row
    /// holding what no call could have made is refused), with the owner shared through
    /// `owners`.
    pub(crate) fn from_record(
        record: ExtrasRecord,
        owners: &Owners,
    ) -> Result<(TokenId, Extras), Problem> {
        let id = TokenId::from_bytes(record.id)
            .ok_or_else(|| Problem::BadId(String::from_utf8_lossy(&record.id).into()))?;
        let bad = |why: String| Problem::BadExtras {
            id: id.to_string(),
            why,
        };
        let meta = pack_meta(&record.meta).map_err(bad)?;
        let owner = match &record.owner {
            Some(name) => {
                owner::check_name(name).map_err(bad)?;
                Some(owners.get_or_add(name))
            }
            None => None,
        };
        Ok((id, Extras::new(owner, meta, record.imported)))
    }

    /// The same owner and import mark with other metadata.
    pub(crate) fn with_meta(&self, meta: Box<str>) -> Extras {
        Extras::new(self.owner.clone(), meta, self.imported)
    }

    /// Whether there is nothing to keep: no owner, no metadata, not imported.
    pub(crate) fn is_empty(&self) -> bool {
        self.owner.is_none() && self.meta.is_empty() && !self.imported
    }

    /// Whether `other` holds the same owner, metadata and import mark (a replica's own
    /// change coming back is no change).
    pub(crate) fn same_as(&self, other: &Extras) -> bool {
        self.owner_name() == other.owner_name()
            && self.meta == other.meta
            && self.imported == other.imported
    }

    /// The owner's id.
    pub(crate) fn owner_name(&self) -> Option<&str> {
        self.owner.as_deref().map(Owner::name)
    }

    /// The value of metadata `key`: a scan of at most 4 KiB, no allocation.
    pub(crate) fn meta(&self, key: &str) -> Option<&str> {
        self.meta_pairs().find(|&(k, _)| k == key).map(|(_, v)| v)
    }

    /// Every metadata pair, in the order given.
    pub(crate) fn meta_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut parts = self.meta.split_terminator(SEPARATOR);
        std::iter::from_fn(move || Some((parts.next()?, parts.next().unwrap_or_default())))
    }

    /// The packed metadata (to copy into a new [`Extras`]).
    pub(crate) fn packed_meta(&self) -> &str {
        &self.meta
    }

    /// As a snapshot or journal record of token `id` stores it.
    pub(crate) fn record(&self, id: TokenId) -> ExtrasRef<'_> {
        ExtrasRef {
            id: id.to_bytes(),
            owner: self.owner_name().map(Cow::Borrowed),
            meta: self
                .meta_pairs()
                .map(|(k, v)| (Cow::Borrowed(k), Cow::Borrowed(v)))
                .collect(),
            imported: self.imported,
        }
    }
}

/// Checks metadata pairs and packs them in one allocation: keys 1 to 128 bytes, unique,
/// without control characters; values without NUL; at most [`MAX_META_BYTES`] of keys and
/// values together. The error says which rule a pair broke.
pub(crate) fn pack_meta<K: AsRef<str>, V: AsRef<str>>(
    pairs: &[(K, V)],
) -> Result<Box<str>, String> {
    let total: usize = pairs
        .iter()
        .map(|(k, v)| k.as_ref().len() + v.as_ref().len())
        .sum();
    if total > MAX_META_BYTES {
        return Err(format!(
            "metadata takes {total} bytes (keys and values); the limit is {MAX_META_BYTES}"
        ));
    }
    let mut packed = String::with_capacity(total + 2 * pairs.len());
    for (n, (key, value)) in pairs.iter().enumerate() {
        let (key, value) = (key.as_ref(), value.as_ref());
        if key.is_empty() || key.len() > 128 || key.chars().any(char::is_control) {
            return Err(format!(
                "metadata key {key:?} must be 1 to 128 bytes without control characters"
            ));
        }
        if value.contains(SEPARATOR) {
            return Err(format!(
                "the value of metadata key {key:?} holds a NUL character"
            ));
        }
        if pairs[..n].iter().any(|(k, _)| k.as_ref() == key) {
            return Err(format!(
                "metadata key {key:?} is given twice; keys are unique"
            ));
        }
        packed.push_str(key);
        packed.push(SEPARATOR);
        packed.push_str(value);
        packed.push(SEPARATOR);
    }
    Ok(packed.into_boxed_str())
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn metadata_packs_in_order_and_reads_back_by_key() {
        let packed = pack_meta(&[("plan", "pro"), ("tenant", ""), ("region", "eu")]).unwrap();
        let extras = Extras::new(None, packed, false);
        assert_eq!(extras.meta("plan"), Some("pro"));
        assert_eq!(extras.meta("tenant"), Some(""));
        assert_eq!(extras.meta("absent"), None);
        let pairs: Vec<_> = extras.meta_pairs().collect();
        assert_eq!(pairs, [("plan", "pro"), ("tenant", ""), ("region", "eu")]);
        assert!(!extras.is_empty());
        assert!(Extras::new(None, "".into(), false).is_empty());
    }

    #[test]
    fn metadata_over_the_limit_a_repeated_key_or_a_nul_is_refused() {
        let big = "v".repeat(MAX_META_BYTES);
        assert!(pack_meta(&[("k", big.as_str())]).is_err());
        assert!(pack_meta(&[("k", &big[1..])]).is_ok(), "exactly the limit");
        assert!(pack_meta(&[("k", "1"), ("k", "2")]).is_err());
        assert!(pack_meta(&[("", "1")]).is_err());
        assert!(pack_meta(&[("k", "a\0b")]).is_err());
        assert!(pack_meta(&[("k\0", "a")]).is_err());
    }
}

/// Arbitrary stored extras, owners' limits and prefixes (what a damaged or hand-made file,
/// or a row written by another build, may hold) either load or are refused with a
/// `Problem`: never a panic, and never a value a call could not have made.
#[cfg(all(test, not(loom)))]
mod proptests {
    use proptest::prelude::*;

    use super::*;
    use crate::map::Map;
    use crate::snapshot::{OwnerRecord, RateLimitRecord, Record};
    use crate::token::{check_prefix, Prefixes, MAX_PREFIXES};

    /// Ids: mostly from a pool of four valid ones (so extras meet their tokens, twice at
    /// times), now and then any bytes.
    fn id() -> impl Strategy<Value = [u8; 8]> {
        prop_oneof![
            4 => proptest::sample::select(vec![*b"AAAAAAAA", *b"BBBBBBBB", *b"cccccccc", *b"01234567"]),
            1 => any::<[u8; 8]>(),
        ]
    }

    /// Text near the rules' edges: empty, control characters, NULs, long.
    fn text(max: usize) -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-z]{1,8}",
            1 => Just(String::new()),
            1 => "[a-z\\x00\\n\\t]{1,6}",
            1 => (0..=max).prop_map(|n| "x".repeat(n)),
        ]
    }

    fn extras_record() -> impl Strategy<Value = ExtrasRecord> {
        let meta = proptest::collection::vec((text(200), text(5000)), 0..4);
        (id(), proptest::option::of(text(200)), meta, any::<bool>()).prop_map(
            |(id, owner, meta, imported)| ExtrasRecord {
                id,
                owner,
                meta,
                imported,
            },
        )
    }

    /// The rules as the docs state them, written out apart from the code that checks them.
    fn follows_the_rules(record: &ExtrasRecord) -> bool {
        let base62 = record.id.iter().all(u8::is_ascii_alphanumeric);
        let owner = record
            .owner
            .as_ref()
            .is_none_or(|o| (1..=128).contains(&o.len()) && !o.chars().any(char::is_control));
        let total: usize = record.meta.iter().map(|(k, v)| k.len() + v.len()).sum();
        let pairs = record.meta.iter().enumerate().all(|(n, (k, v))| {
            (1..=128).contains(&k.len())
                && !k.chars().any(char::is_control)
                && !v.contains('\0')
                && record.meta[..n].iter().all(|(other, _)| other != k)
        });
        base62 && owner && total <= MAX_META_BYTES && pairs
    }

    fn token(id: [u8; 8]) -> Record {
        Record {
            id,
            name: "t".into(),
            digest: [7; 32],
            scopes: Vec::new(),
            created_at: 1,
            expires_at: None,
            revoked_at: None,
            last_used: None,
            rate_limit: None,
        }
    }

    proptest! {
        #[test]
        fn any_extras_record_loads_as_stored_or_is_refused(record in extras_record()) {
            let owners = Owners::default();
            match Extras::from_record(record.clone(), &owners) {
                Ok((id, extras)) => {
                    prop_assert!(follows_the_rules(&record), "loaded {record:?}");
                    let back = extras.record(id).into_owned();
                    prop_assert_eq!(id.to_bytes(), record.id);
                    prop_assert_eq!(back.owner.map(|o| o.into_owned()), record.owner.clone());
                    let meta: Vec<(String, String)> = back
                        .meta
                        .into_iter()
                        .map(|(k, v)| (k.into_owned(), v.into_owned()))
                        .collect();
                    prop_assert_eq!(meta, record.meta.clone());
                    prop_assert_eq!(back.imported, record.imported);
                    for (key, value) in &record.meta {
                        prop_assert_eq!(extras.meta(key), Some(value.as_str()));
                    }
                }
                Err(_) => prop_assert!(!follows_the_rules(&record), "refused {record:?}"),
            }
        }

        #[test]
        fn any_prefixes_are_added_or_refused(
            prefixes in proptest::collection::vec(
                prop_oneof!["[a-zA-Z0-9_]{0,18}", ".{0,4}", Just("tc".to_string())],
                0..48,
            ),
        ) {
            let accepted = Prefixes::default();
            for prefix in &prefixes {
                let full = accepted.recorded().len() == MAX_PREFIXES;
                match accepted.add(prefix) {
                    Ok(_) => prop_assert!(accepted.contains(prefix.as_bytes())),
                    Err(_) => prop_assert!(check_prefix(prefix).is_err() || full, "{prefix:?}"),
                }
                prop_assert!(accepted.contains(b"tc"));
            }
            prop_assert!(accepted.recorded().len() <= MAX_PREFIXES);
            for recorded in accepted.recorded() {
                prop_assert!(check_prefix(recorded).is_ok());
            }
        }

        /// The path `open` takes for a version 3 snapshot's shared parts, on tokens loaded
        /// from the same file.
        #[test]
        fn any_shared_parts_of_a_snapshot_load_or_are_refused(
            tokens in proptest::collection::btree_set(id(), 0..4),
            extras in proptest::collection::vec(extras_record(), 0..4),
            owners in proptest::collection::vec(
                (text(200), any::<(u64, u32, u32)>()), 0..3),
            prefixes in proptest::collection::vec(
                prop_oneof!["[a-z_]{1,17}", ".{0,4}"], 0..3),
        ) {
            let records = tokens.iter().copied().map(token).collect();
            let Ok(entries) = crate::entry::load(records) else {
                return Ok(()); // an id that is not base62: refused before this step
            };
            let map = Map::with_capacity(entries.len());
            prop_assert!(map.insert_new(entries).is_ok());
            let owners: Vec<OwnerRecord> = owners
                .into_iter()
                .map(|(owner, (period_ms, count, burst))| OwnerRecord {
                    owner,
                    rate_limit: RateLimitRecord { period_ms, count, burst },
                })
                .collect();
            let loaded = crate::recover::load_shared(&map, extras.clone(), owners.clone(), prefixes.clone());
            if loaded.is_ok() {
                // Everything held is what the records said, on tokens the file holds.
                for record in &extras {
                    prop_assert!(tokens.contains(&record.id));
                    prop_assert!(follows_the_rules(record));
                }
                let mut limits = std::collections::HashMap::new();
                for owner in &owners {
                    prop_assert!(owner::check_name(&owner.owner).is_ok(), "owner {:?}", owner.owner);
                    let limit = crate::rate_limit::RateLimit::from_record(&owner.rate_limit);
                    limits.insert(owner.owner.as_str(), limit);
                }
                for (name, limit) in limits {
                    prop_assert_eq!(map.owners.rate_limit(name), limit);
                }
                for prefix in &prefixes {
                    prop_assert!(map.prefixes.contains(prefix.as_bytes()));
                }
            }
        }
    }
}
