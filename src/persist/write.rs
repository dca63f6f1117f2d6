//! The write phase: writing what the decide phase chose (a journal record, a compaction,
//! or nothing). New tokens and shortened expiries join memory only once
//! written.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use super::backend::{AppendFailed, Compacted};
use super::batch::Pending;
use super::decide::Write;
use super::Persister;
use crate::change::ChangeRef;
use crate::credits::CreditsRecord;
use crate::entry::Entry;
use crate::error::Error;
use crate::extras::Extras;
use crate::feed::{self, ChangeKind};
use crate::file::WriteError;
use crate::journal;
use crate::map::Map;
use crate::observe::Op;
use crate::snapshot::{self, BodyRef, ExtrasRef, RecordRef};
use crate::token::TokenId;
use crate::usage::UsageRecord;

impl Persister {
    /// The write phase: carries out what the decide phase chose. A change memory already
    /// holds whose write failed is written by the next due tick (a failing disk is not
    /// hammered on every message).
    pub(super) fn write(
        &mut self,
        write: Write,
        changes: Vec<ChangeRef<'static>>,
        pending: Pending,
        now: u64,
    ) -> Result<(), Error> {
        let changed_memory = !changes.is_empty();
        let result = match write {
            Write::Nothing => Ok(()),
            Write::Append { used, scan } => self.append(changes, pending, used, scan, now),
            Write::Compact => self.compact(pending, now),
        };
        if changed_memory && result.is_err() {
            self.definitions_pending = true;
        }
        result
    }

    /// `last_used` of every token used since its last write, `(id, time)` for each whose
    /// time differs from the one on disk, the credits of every token that spent since
    /// (with an event for each that crossed its alert threshold), and the usage counts
    /// of every token counted since. Looks at the tokens whose `Dirty` messages arrived,
    /// or at every token if `scan`, and at every thread's tally.
    fn take_used(&mut self, scan: bool) -> Used {
        let mut taken = Used::default();
        let map = &self.shared.map;
        let mut counts = map.usage.lock();
        let mut take = |e: &Entry| {
            counts.take(e.id, &e.uses);
            let used = e.take_for_snapshot();
            if used != e.persisted_last_used() {
                taken.times.push((e.id, used));
            }
            if let Some(meter) = e.meter() {
                let credits = meter.take_state();
                if credits.alert {
                    taken.alerts.push(e.id);
                }
                if credits.state != meter.persisted() {
                    taken
                        .credits
                        .push((e.id, meter.record(e.id.to_bytes(), credits.state)));
                }
            }
        };
        if scan {
            self.used.clear();
            map.with_all(|entries| entries.iter().for_each(|e| take(e)));
        } else {
            for id in self.used.drain() {
                map.with(&id, &mut take);
            }
        }
        counts.sweep();
        taken.usage = counts.book().take_unsaved();
        drop(counts);
        // A round that took counts looks again one interval later: a count stored just
        // after this sweep may have no `Dirty` message of its own to wake the persister.
        self.counts_waiting = !taken.usage.is_empty();
        self.scan_all = false;
        self.alert(&taken.alerts);
        taken
    }

    /// Queues the change feed's events of credits that crossed their alert threshold: they
    /// go out with the next successful write.
    fn alert(&mut self, ids: &[TokenId]) {
        if ids.is_empty() || !self.feed.active() {
            return;
        }
        let now = self.shared.clock.now_ms();
        let map = &self.shared.map;
        self.unpublished.extend(ids.iter().map(|&id| {
            let owner = map.with(&id, feed::owner_of).flatten();
            feed::local(ChangeKind::CreditsLow, Some(id), owner, now)
        }));
    }

    /// The write phase of an append: one journal record holding `changes`, the pending
    /// ones, and `last_used` if `used`. On success the pending changes join memory.
    fn append(
        &mut self,
        changes: Vec<ChangeRef<'static>>,
        pending: Pending,
        used: bool,
        scan: bool,
        now: u64,
    ) -> Result<(), Error> {
        let taken = if used {
            self.take_used(scan)
        } else {
            Used::default()
        };
        if used {
            self.last_attempt_ms = now;
        }
        let mut changes: Vec<ChangeRef<'_>> = changes;
        // Each new token's extras right after it (held here: the record borrows them).
        let extras = extras_of(&pending.issues);
        let mut extras = extras.iter().peekable();
        for entry in &pending.issues {
            changes.push(ChangeRef::Issue(entry.record(0)));
            if let Some((_, x)) = extras.next_if(|(id, _)| *id == entry.id) {
                changes.push(ChangeRef::Extras(x.record(entry.id)));
                if let Some(meter) = &x.meter {
                    changes.push(ChangeRef::Credits(
                        meter.record(entry.id.to_bytes(), meter.state()),
                    ));
                }
            }
        }
        changes.extend(pending.expiries.iter().map(|&(id, at)| ChangeRef::Expire {
            id: id.to_bytes(),
            at,
        }));
        changes.extend(taken.times.iter().map(|&(id, at)| ChangeRef::Used {
            id: id.to_bytes(),
            at,
        }));
        changes.extend(
            taken
                .credits
                .iter()
                .map(|&(_, record)| ChangeRef::Credits(record)),
        );
        changes.extend(taken.usage.iter().cloned().map(ChangeRef::Usage));
        // A backend holding failed changes (a database's: a file store compacts instead of
        // appending while any are pending) writes them even with nothing new.
        let resend = self.definitions_pending;
        if changes.is_empty() && !resend {
            return Ok(());
        }
        // Files refuse a number above `MAX_SEQ`, so the store never writes one.
        let next = self.seq.checked_add(1).filter(|&s| s <= snapshot::MAX_SEQ);
        let Some(seq) = next else {
            let error = io::Error::other("the journal's sequence numbers are used up");
            return Err(self.failed(error, "append to the journal of", "cannot number a record"));
        };
        let op = Op::write(changes.len());
        let written = self.sink.append(seq, &changes);
        if let Ok(bytes) = &written {
            op.appended(*bytes);
        }
        drop(op);
        drop(changes);
        let map = &self.shared.map;
        match written {
            Ok(bytes) => {
                self.seq = seq;
                for &(id, at) in &taken.times {
                    map.with(&id, |e| e.mark_persisted(at));
                }
                for (id, record) in &taken.credits {
                    map.with(id, |e| e.meter().map(|m| m.mark_persisted(record.state())));
                }
                self.join(pending);
                self.shared.counters.record_append(bytes);
                // The append wrote the changes the backend held from failed ones first (a
                // file store appends only when none are pending).
                self.definitions_pending = false;
                Ok(())
            }
            Err(failed) if journal::RecordTooLarge::is(&failed.error) => {
                // Nothing was written, so the number stays free (a gap would make `open`
                // refuse the journal) and the journal stays trusted: a snapshot holds a
                // batch of any size. The taken times are in memory, which it writes.
                self.compact(pending, now)
            }
            Err(AppendFailed {
                error,
                action,
                next,
            }) => {
                // The record may be on disk: its number is spent, and the next write is a
                // compaction whose snapshot covers it, so it is never replayed (the journal
                // is not trusted again). Nothing is lost: the taken tokens are dirty again.
                // Pending changes are dropped with their error.
                self.seq = seq;
                for &(id, _) in &taken.times {
                    map.with(&id, |e| e.mark_dirty());
                    self.used.insert(id);
                }
                // Credits not marked persisted are taken again by the next look at them.
                self.used.extend(taken.credits.iter().map(|&(id, _)| id));
                self.unwritten_usage(&taken.usage);
                Err(self.failed(error, action, next))
            }
        }
    }

    /// The write phase of a compaction: a snapshot of every entry plus what is pending,
    /// covering every record so far, then a fresh journal. On success (or once the new
    /// file replaced the old one) the pending changes join memory.
    pub(super) fn compact(&mut self, pending: Pending, now: u64) -> Result<(), Error> {
        let shared = self.shared.clone();
        shared
            .map
            .with_all(|entries| self.write_snapshot(entries, pending, now))
    }

    fn write_snapshot(
        &mut self,
        entries: &[&Entry],
        pending: Pending,
        now: u64,
    ) -> Result<(), Error> {
        let taken: Vec<u64> = entries.iter().map(|e| e.take_for_snapshot()).collect();
        let mut alerts = Vec::new();
        let mut credits: Vec<CreditsRecord> = entries
            .iter()
            .filter_map(|e| {
                let meter = e.meter()?;
                let taken = meter.take_state();
                if taken.alert {
                    alerts.push(e.id);
                }
                Some(meter.record(e.id.to_bytes(), taken.state))
            })
            .collect();
        credits.extend(pending.issues.iter().filter_map(|e| {
            let meter = e.meter()?;
            Some(meter.record(e.id.to_bytes(), meter.state()))
        }));
        self.alert(&alerts);
        let usage = {
            let mut counts = self.shared.map.usage.lock();
            entries.iter().for_each(|e| counts.take(e.id, &e.uses));
            counts.sweep();
            counts.book().take_all(|id| self.shared.map.contains(id))
        };
        self.used.clear();
        self.scan_all = false;
        // Two rotations of one token in a batch: the earlier expiry wins, as it does in
        // memory (`shorten_expiry`), so the file says what memory says.
        let mut expiries: HashMap<TokenId, u64> = HashMap::new();
        for &(id, until) in &pending.expiries {
            let at = expiries.entry(id).or_insert(until);
            *at = (*at).min(until);
        }
        let mut records: Vec<RecordRef<'_>> = entries
            .iter()
            .zip(&taken)
            .map(|(e, &lu)| with_expiry(e.record(lu), expiries.get(&e.id)))
            .collect();
        records.extend(pending.issues.iter().map(|e| e.record(0)));
        self.last_attempt_ms = now;
        let op = Op::compaction(records.len());
        let all = entries.iter().copied().chain(&pending.issues);
        let shared = self.shared.clone();
        let written = compact(
            self.sink.as_mut(),
            &shared.map,
            all,
            &records,
            Behind {
                credits: &credits,
                usage: &usage,
            },
            now,
            self.seq,
        );
        if let Ok(compacted) = &written {
            op.compacted(compacted.snapshot_bytes);
        }
        drop(op);
        drop(records);
        match written {
            Ok(compacted) => {
                for record in &credits {
                    let id = TokenId::from_bytes(record.id);
                    let mark = |e: &Entry| e.meter().map(|m| m.mark_persisted(record.state()));
                    id.and_then(|id| shared.map.with(&id, mark));
                }
                self.written(entries, &taken, pending, compacted.snapshot_bytes, now);
                match compacted.journal {
                    Ok(bytes) => self.shared.counters.record_compaction_bytes(bytes),
                    Err(error) => {
                        // Every change is in the snapshot; only the next write pays: it
                        // compacts again.
                        let _ = self.failed(error, "start a fresh journal beside", "the snapshot is written, but starting a fresh journal failed; the next write compacts again");
                    }
                }
                Ok(())
            }
            Err(WriteError { error, replaced }) => {
                // The callers hear the error, so what they asked for (new tokens, shortened
                // expiries) does not join memory, and every entry whose last_used may not be
                // on disk stays dirty. If the new file already replaced the store file (only
                // its directory's fsync failed), it may hold what memory lacks, and its
                // rename may not survive a power loss: the next write of any kind compacts
                // again, so nothing refused outlives it.
                for entry in entries.iter().filter(|e| e.unsaved()) {
                    entry.mark_dirty();
                }
                self.unwritten_usage(&usage);
                self.scan_all = true;
                let what = if replaced.is_some() {
                    self.definitions_pending = true;
                    "the snapshot replaced the store file, but syncing its directory failed; the next write compacts again"
                } else {
                    "snapshot write failed; will retry at the next tick"
                };
                Err(self.failed(error, "write a snapshot to", what))
            }
        }
    }

    /// After the store file took a snapshot of `entries` (with `last_used` as `taken`) and
    /// the pending changes: memory says so.
    fn written(
        &mut self,
        entries: &[&Entry],
        taken: &[u64],
        pending: Pending,
        bytes: u64,
        now: u64,
    ) {
        for (entry, &lu) in entries.iter().zip(taken) {
            entry.mark_persisted(lu);
        }
        self.join(pending);
        self.snapshot_len = bytes;
        self.definitions_pending = false;
        // The snapshot holds every prefix memory accepts, this store's own among them.
        self.unrecorded_prefix = None;
        self.shared.map.owners.forget_unused();
        self.shared.counters.record_compaction(bytes, now);
    }

    /// The write of `usage` failed: its counts are unsaved again, for the next round. (A
    /// file store's next write after a failure is a compaction, which writes every count
    /// anyway; this keeps the book true for a sink that appends again.)
    fn unwritten_usage(&mut self, usage: &[UsageRecord]) {
        self.shared.map.usage.lock().book().unwritten(usage);
        self.counts_waiting |= !usage.is_empty();
    }

    /// The pending changes join memory: their write succeeded.
    fn join(&self, pending: Pending) {
        let map = &self.shared.map;
        for (id, until) in pending.expiries {
            map.with(&id, |e| e.shorten_expiry(until));
        }
        let added = map.insert_new(pending.issues);
        // `collision` kept only ids that are not in the map.
        debug_assert!(added.is_ok(), "collision let a taken id through");
    }
}

/// What a snapshot holds of what is written behind, besides `last_used`.
pub(crate) struct Behind<'a> {
    /// The credits of the tokens that have any.
    pub(crate) credits: &'a [CreditsRecord],
    /// Every used token's usage counts.
    pub(crate) usage: &'a [UsageRecord],
}

/// Writes a snapshot of `records` (of `entries`, in order) and what was written behind of
/// them with what the tokens share in `map` (owners' limits, prefixes), covering `seq`.
pub(crate) fn compact<'e>(
    sink: &mut dyn super::Sink,
    map: &Map,
    entries: impl IntoIterator<Item = &'e Entry>,
    records: &[RecordRef<'_>],
    behind: Behind<'_>,
    written_at: u64,
    seq: u64,
) -> Result<Compacted, WriteError> {
    let extras = extras_of(entries);
    let extras: Vec<ExtrasRef<'_>> = extras.iter().map(|(id, x)| x.record(*id)).collect();
    let owners = map.owners.records();
    let prefixes = map.prefixes.recorded();
    sink.compact(&BodyRef {
        written_at,
        seq,
        records,
        extras: &extras,
        owners: &owners,
        prefixes: &prefixes,
        credits: behind.credits,
        usage: behind.usage,
    })
}

/// What a write-behind record takes from the tokens used since the last one.
#[derive(Default)]
struct Used {
    /// `last_used` times not on disk.
    times: Vec<(TokenId, u64)>,
    /// Credits spent since their last record.
    credits: Vec<(TokenId, CreditsRecord)>,
    /// Tokens whose spending crossed their alert threshold.
    alerts: Vec<TokenId>,
    /// Usage counts not on disk.
    usage: Vec<UsageRecord>,
}

/// The extras of those `entries` that have any, in order, each with its token's id.
fn extras_of<'e>(entries: impl IntoIterator<Item = &'e Entry>) -> Vec<(TokenId, Arc<Extras>)> {
    entries
        .into_iter()
        .filter_map(|e| Some((e.id, e.extras_arc().filter(|x| x.is_recorded())?)))
        .collect()
}

/// `record` with its expiry shortened to `until`, if `rotate` asked for that.
fn with_expiry<'a>(mut record: RecordRef<'a>, until: Option<&u64>) -> RecordRef<'a> {
    if let Some(&until) = until {
        record.expires_at = Some(record.expires_at.map_or(until, |at| at.min(until)));
    }
    record
}
