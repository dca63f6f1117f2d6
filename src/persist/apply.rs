//! The apply phase: revokes, rate limits, deletes and purges take effect in memory at
//! once; new tokens and rotations wait for the write; what other replicas committed is
//! applied as journal replay applies it.

use std::collections::HashSet;

use super::batch::{Applied, Batch, Events};
use super::Persister;
use crate::change::ChangeRef;
use crate::entry::Entry;
use crate::error::Error;
use crate::extras::Extras;
use crate::feed::{self, ChangeKind};
use crate::observe::Kind;
use crate::rate_limit::RateLimit;
use crate::token::{Digest, TokenId};

impl Persister {
    /// The apply phase. Revokes, rate limits, deletes and purges take effect in memory at
    /// once (the safe side: a revoked or deleted token is refused from now on, even if the
    /// write fails, and the next tick retries it). New tokens and rotations wait in
    /// `pending` for the write. Requests for an unknown id are answered here.
    pub(super) fn apply(&mut self, batch: &mut Batch, now: u64) -> Applied {
        let mut applied = Applied::default();
        let mut events = Events::new(self.feed.active());
        #[cfg(all(feature = "postgres", not(loom)))]
        self.apply_remote(batch, events.recording);
        let map = &self.shared.map;
        for (id, reply) in batch.revokes.drain(..) {
            let at = map.with(&id, |e| {
                // A token already revoked keeps its time: no change, no event.
                if e.revoked_at().is_none() {
                    e.revoke(now);
                    events.applied(ChangeKind::Revoked, id, events.owner(e), now);
                }
                e.revoked_at().unwrap_or(now)
            });
            applied.kinds.add(Kind::Revoke, usize::from(at.is_some()));
            applied.answer(
                reply,
                id,
                at.map(|at| ChangeRef::Revoke {
                    id: id.to_bytes(),
                    at,
                }),
            );
        }
        for (owner, reply) in batch.owner_revokes.drain(..) {
            let revoked = map.revoke_owner(&owner, now);
            events.owner_wide(ChangeKind::Revoked, &revoked, &owner, now);
            applied.kinds.add(Kind::Revoke, revoked.len());
            applied
                .changes
                .push(ChangeRef::RevokeOwner { owner, at: now });
            applied.replies.push((reply, revoked.len()));
        }
        for (owner, limit, reply) in batch.owner_limits.drain(..) {
            map.owners.set_rate_limit(&owner, limit);
            events.owner_limit(&owner, now);
            applied.kinds.add(Kind::OwnerRateLimit, 1);
            let limit = limit.map(RateLimit::to_record);
            applied
                .changes
                .push(ChangeRef::OwnerRateLimit { owner, limit });
            applied.replies.push((reply, 1));
        }
        for (id, meta, reply) in batch.metas.drain(..) {
            let extras = map.with(&id, |e| {
                let extras = match e.extras() {
                    Some(old) => old.with_meta(meta),
                    None => Extras::new(None, meta, false),
                };
                events.applied(ChangeKind::MetaSet, id, events.owner(e), now);
                extras
            });
            let extras = extras.map(|extras| {
                let record = extras.record(id).into_owned();
                map.set_extras(&id, extras);
                ChangeRef::Extras(record)
            });
            applied.kinds.add(Kind::Meta, usize::from(extras.is_some()));
            applied.answer(reply, id, extras);
        }
        for (id, meter, reply) in batch.credits.drain(..) {
            let change = match &meter {
                Some(meter) => ChangeRef::Credits(meter.record(id.to_bytes(), meter.state())),
                None => ChangeRef::NoCredits { id: id.to_bytes() },
            };
            let found = map.set_meter(&id, meter.map(|m| *m));
            if found {
                map.with(&id, |e| {
                    events.applied(ChangeKind::CreditsSet, id, events.owner(e), now);
                });
            }
            applied.kinds.add(Kind::Credits, usize::from(found));
            applied.answer(reply, id, found.then_some(change));
        }
        for (id, limit, reply) in batch.rate_limits.drain(..) {
            let found = map.set_rate_limit(&id, limit);
            if found {
                map.with(&id, |e| {
                    events.applied(ChangeKind::RateLimitSet, id, events.owner(e), now);
                });
            }
            applied.kinds.add(Kind::RateLimit, usize::from(found));
            let change = ChangeRef::SetRateLimit {
                id: id.to_bytes(),
                limit: limit.map(RateLimit::to_record),
            };
            applied.answer(reply, id, found.then_some(change));
        }
        for (id, reply) in batch.deletes.drain(..) {
            let change = ChangeRef::Delete { id: id.to_bytes() };
            let owner = map.with(&id, |e| events.owner(e)).flatten();
            let removed = map.remove(&id);
            if removed {
                events.applied(ChangeKind::Deleted, id, owner, now);
            }
            applied.kinds.add(Kind::Delete, usize::from(removed));
            applied.answer(reply, id, removed.then_some(change));
        }
        for (owner, reply) in batch.owner_deletes.drain(..) {
            let deleted = map.delete_owner(&owner);
            events.owner_wide(ChangeKind::Deleted, &deleted, &owner, now);
            applied.kinds.add(Kind::Delete, deleted.len());
            applied.changes.push(ChangeRef::DeleteOwner { owner });
            applied.replies.push((reply, deleted.len()));
        }
        for (cutoff, reply) in batch.purges.drain(..) {
            let purged = self.purge(cutoff, now, &mut applied.changes, &mut events);
            applied.kinds.add(Kind::Purge, purged);
            applied.replies.push((reply, purged));
        }
        let purge_due = self.interval_passed(self.last_purge_ms, now);
        if let (true, Some(retention)) = (purge_due, self.retention_ms) {
            self.last_purge_ms = now;
            let cutoff = now.saturating_sub(retention);
            let purged = self.purge(cutoff, now, &mut applied.changes, &mut events);
            applied.kinds.add(Kind::Purge, purged);
            if purged > 0 {
                tracing::info!(purged, "retention purged revoked and expired tokens");
            }
        }
        let mut taken = HashSet::new();
        let mut digests = HashSet::new();
        for (entries, reply) in batch.issues.drain(..) {
            if let Some(refusal) = self.refusal(&entries, &mut taken, &mut digests) {
                let _ = reply.send(Err(refusal));
                continue;
            }
            for e in &entries {
                events.pending(feed::arrival(e), e.id, events.owner(e), now);
            }
            let imported = entries.iter().filter(|e| e.is_imported()).count();
            applied.kinds.add(Kind::Import, imported);
            applied.kinds.add(Kind::Issue, entries.len() - imported);
            applied.pending.issues.extend(entries);
            applied.replies.push((reply, 1));
        }
        for (old, until, new, reply) in batch.rotations.drain(..) {
            // Checked again here: a revoke may have been applied since the caller looked.
            let checked = map.with(&old, |e| {
                crate::request::refuse_rotation(e, now).map(|()| events.owner(e))
            });
            let old_owner = match checked {
                None => {
                    let _ = reply.send(Err(Error::UnknownId(old)));
                    continue;
                }
                Some(Err(refusal)) => {
                    let _ = reply.send(Err(refusal));
                    continue;
                }
                Some(Ok(owner)) => owner,
            };
            let new = vec![*new];
            if let Some(refusal) = self.refusal(&new, &mut taken, &mut digests) {
                let _ = reply.send(Err(refusal));
                continue;
            }
            let replaced = ChangeKind::Rotated { old };
            events.pending(replaced, new[0].id, events.owner(&new[0]), now);
            events.pending(ChangeKind::ExpiryShortened, old, old_owner, now);
            applied.pending.issues.extend(new);
            applied.pending.expiries.push((old, until));
            applied.kinds.add(Kind::Rotate, 1);
            applied.replies.push((reply, 1));
        }
        applied.events = events;
        // The first token issued under a prefix the files do not hold records it, in the
        // same write, so a reopened store accepts the token whatever prefix it is given.
        let native = applied.pending.issues.iter().any(|e| !e.is_imported());
        if let (true, Some(prefix)) = (native, &self.unrecorded_prefix) {
            applied.changes.push(ChangeRef::Prefix(prefix.clone()));
            applied.records_prefix = true;
        }
        applied
    }

    /// PostgreSQL stores: applies what other replicas committed (as journal replay does;
    /// this replica's own changes come back too, and change nothing; a row read before
    /// this replica's own later write to it is not applied, see `Sink::overrides`), then
    /// notes how current memory is. If `recording`, each change that changed memory is
    /// published to the feed at once (it is durable: committed), with origin `Replica`;
    /// this replica's own changes coming back change nothing, so they are not published
    /// twice.
    #[cfg(all(feature = "postgres", not(loom)))]
    fn apply_remote(&mut self, batch: &mut Batch, recording: bool) {
        use crate::change::{Change, Changed};
        let map = &self.shared.map;
        let mut events = Vec::new();
        for read in batch.remote.drain(..) {
            let (changes, at) = (read.changes, read.at);
            self.sink.reading(read.version);
            // The tokens this group (one transaction) adds: their extras come with them.
            let mut arrived = HashSet::new();
            let first = events.len();
            for change in changes {
                if self.sink.overrides(&change) {
                    continue;
                }
                let about = recording.then(|| remote_event(&change, at)).flatten();
                // A deleted token's owner is read before it goes.
                let owner_before = match (&about, &change) {
                    (Some(_), Change::Delete { id }) => TokenId::from_bytes(*id)
                        .and_then(|id| map.with(&id, feed::owner_of))
                        .flatten(),
                    _ => None,
                };
                let changed = match crate::change::apply(map, change) {
                    Ok(changed) => changed,
                    Err(problem) => {
                        tracing::error!(store = %self.sink.path().display(), %problem, "a row in the database cannot be loaded; skipped");
                        continue;
                    }
                };
                let Some(about) = about else { continue };
                match changed {
                    Changed::Nothing => {}
                    Changed::Token(id) => {
                        if about.kind == ChangeKind::Issued {
                            arrived.insert(id);
                        } else if about.kind == ChangeKind::MetaSet && arrived.contains(&id) {
                            // An issue's or import's extras: part of its event.
                            continue;
                        }
                        let owner = match about.kind {
                            ChangeKind::Deleted => owner_before,
                            _ => map.with(&id, feed::owner_of).flatten(),
                        };
                        events.push(feed::replica(about.kind, Some(id), owner, about.at));
                    }
                    Changed::Tokens(ids) => {
                        events.extend(ids.into_iter().map(|id| {
                            feed::replica(about.kind, Some(id), about.owner.clone(), about.at)
                                .marked_owner_wide()
                        }));
                    }
                    Changed::Owner => {
                        let event = feed::replica(about.kind, None, about.owner, about.at);
                        events.push(event.marked_owner_wide());
                    }
                }
            }
            // A new token's kind (issued or imported) and owner, once its extras are in. A
            // row read first when already revoked (its issue and revoke in one catch-up)
            // is followed by its `Revoked`, so a follower never takes it for a live token.
            let read = events.split_off(first);
            for mut event in read {
                let mut revoked = false;
                if let (ChangeKind::Issued, Some(id)) = (event.kind, event.id) {
                    if let Some((kind, owner, was_revoked)) = map.with(&id, |e| {
                        (
                            feed::arrival(e),
                            feed::owner_of(e),
                            e.revoked_at().is_some(),
                        )
                    }) {
                        event.kind = kind;
                        event.owner = owner;
                        revoked = was_revoked;
                    }
                }
                let then = revoked.then(|| feed::ChangeEvent {
                    kind: ChangeKind::Revoked,
                    ..event.clone()
                });
                events.push(event);
                events.extend(then);
            }
            let counters = &self.shared.counters;
            counters
                .last_sync_at
                .fetch_max(at, std::sync::atomic::Ordering::Relaxed);
        }
        if !events.is_empty() {
            self.feed.publish(&events);
        }
    }

    /// Deletes every token revoked or expired at or before `cutoff` (Unix ms), noting each
    /// in `changes` and `events` (at `now`); returns how many.
    fn purge(
        &self,
        cutoff: u64,
        now: u64,
        changes: &mut Vec<ChangeRef<'static>>,
        events: &mut Events,
    ) -> usize {
        let map = &self.shared.map;
        let old = |at: Option<u64>| at.is_some_and(|at| at <= cutoff);
        let doomed: Vec<(TokenId, Option<String>)> = map.with_all(|entries| {
            entries
                .iter()
                .filter(|e| old(e.revoked_at()) || old(e.expires_at()))
                .map(|e| (e.id, events.owner(e)))
                .collect()
        });
        let before = changes.len();
        for (id, owner) in doomed {
            if map.remove(&id) {
                changes.push(ChangeRef::Delete { id: id.to_bytes() });
                events.applied(ChangeKind::Purged, id, owner, now);
            }
        }
        changes.len() - before
    }

    /// Why `entries` cannot join the store, if they cannot: an id already taken (in the
    /// map, or earlier in this batch), or an imported key's digest already imported. Ids
    /// are 47 random bits and `issue` pre-checks the map, so a taken id comes from two
    /// concurrent requests drawing the same one; it is not a normal path. On `None`, the
    /// entries' ids and imported digests count as taken.
    fn refusal(
        &self,
        entries: &[Entry],
        taken: &mut HashSet<TokenId>,
        digests: &mut HashSet<Digest>,
    ) -> Option<Error> {
        let map = &self.shared.map;
        let mut ids = HashSet::new();
        if let Some(e) = entries
            .iter()
            .find(|e| map.contains(&e.id) || taken.contains(&e.id) || !ids.insert(e.id))
        {
            return Some(Error::InvalidRequest(format!(
                "token id {} was drawn twice; issue again",
                e.id
            )));
        }
        let mut imported = HashSet::new();
        let twice = entries.iter().filter(|e| e.is_imported()).find(|e| {
            let digest = e.digest();
            map.contains_imported(digest) || digests.contains(digest) || !imported.insert(*digest)
        });
        if twice.is_some() {
            return Some(Error::InvalidRequest(
                "a key with this SHA-256 digest is already imported (each key is imported once); nothing was imported".into(),
            ));
        }
        taken.extend(ids);
        digests.extend(imported);
        None
    }
}

/// What a change another replica committed is, for the feed, if it is an event.
#[cfg(all(feature = "postgres", not(loom)))]
struct Remote {
    kind: ChangeKind,
    /// The row's time for an issue or a revocation, else when this replica read it.
    at: u64,
    /// The owner of an owner-wide change.
    owner: Option<String>,
}

/// The event a change another replica committed makes, if it is one. A replica cannot
/// tell a rotation from an issue, nor a purge from a delete, by the rows (an import it
/// tells once the token's extras are in). `last_used` and prefixes are no events.
#[cfg(all(feature = "postgres", not(loom)))]
fn remote_event(change: &crate::change::Change, read_at: u64) -> Option<Remote> {
    use crate::change::Change;
    let (kind, at, owner) = match change {
        Change::Issue(record) => (ChangeKind::Issued, record.created_at, None),
        Change::Revoke { at, .. } => (ChangeKind::Revoked, *at, None),
        Change::Delete { .. } => (ChangeKind::Deleted, read_at, None),
        Change::SetRateLimit { .. } => (ChangeKind::RateLimitSet, read_at, None),
        Change::Expire { .. } => (ChangeKind::ExpiryShortened, read_at, None),
        Change::Extras(_) => (ChangeKind::MetaSet, read_at, None),
        Change::RevokeOwner { owner, at } => (ChangeKind::Revoked, *at, Some(owner.clone())),
        Change::DeleteOwner { owner } => (ChangeKind::Deleted, read_at, Some(owner.clone())),
        Change::OwnerRateLimit { owner, .. } => {
            (ChangeKind::OwnerRateLimitSet, read_at, Some(owner.clone()))
        }
        // A PostgreSQL store refuses credits and counts no uses, so no row carries them.
        Change::Used { .. }
        | Change::Prefix(_)
        | Change::Credits(_)
        | Change::NoCredits { .. }
        | Change::Usage(_) => return None,
    };
    Some(Remote { kind, at, owner })
}
