//! Model checks only: the persister's broken twins, each its own function, and the one
//! place that chooses between them and the real [`handle`](Persister::handle). Each twin
//! plants one mistake the loom models must catch (`loom-tests/`); the comment on each says
//! which. Nothing here is compiled outside `--cfg loom`.

use super::batch::{Applied, Batch};
use super::decide::Write;
use super::reply;
use super::Persister;
use crate::sync::bug::{planted, Bug};
use crate::sync::Ordering;

impl Persister {
    /// The planted bug's twin of `handle`, or `handle` itself when none of the persister's
    /// bugs is planted.
    pub(super) fn handle_chosen(&mut self, batch: Batch) -> bool {
        if planted(Bug::ShutdownSkipsWrite) {
            self.shutdown_skips_write(batch)
        } else if planted(Bug::IgnoreOverflow) {
            self.ignore_overflow(batch)
        } else if planted(Bug::ChangeAfterReply) {
            self.change_after_reply(batch)
        } else if planted(Bug::AckBeforeWrite) {
            self.ack_before_write(batch)
        } else if planted(Bug::FlushTrustsMessages) {
            self.flush_trusts_messages(batch)
        } else if planted(Bug::PersistedFromMemory) {
            self.persisted_from_memory(batch)
        } else {
            self.handle(batch)
        }
    }

    /// Broken twin: shutting down without writing what is pending.
    fn shutdown_skips_write(&mut self, mut batch: Batch) -> bool {
        if let Some(reply) = batch.shutdown.take() {
            let _ = reply.send(Ok(0));
            return true;
        }
        self.handle(batch)
    }

    /// Broken twin: an id refused by a full channel is forgotten (the overflow flag is
    /// cleared but no scan follows).
    fn ignore_overflow(&mut self, mut batch: Batch) -> bool {
        let now = self.shared.clock.now_ms();
        self.shared.overflow.swap(false, Ordering::Relaxed);
        self.used.extend(batch.dirty.drain(..));
        self.apply_write_reply(batch, now)
    }

    /// Broken twin of the revoke and delete steps of `apply`: each caller is answered first
    /// and memory changes after, so a validation that starts once the call returned can
    /// still accept the token.
    fn change_after_reply(&mut self, mut batch: Batch) -> bool {
        let now = self.shared.clock.now_ms();
        self.take_dirty(&mut batch);
        let map = &self.shared.map;
        for (id, reply) in batch.revokes.drain(..) {
            let _ = reply.send(Ok(1));
            map.with(&id, |e| e.revoke(now));
        }
        for (id, reply) in batch.deletes.drain(..) {
            let _ = reply.send(Ok(1));
            map.remove(&id);
        }
        for (owner, reply) in batch.owner_revokes.drain(..) {
            let _ = reply.send(Ok(1));
            map.revoke_owner(&owner, now);
        }
        for (owner, reply) in batch.owner_deletes.drain(..) {
            let _ = reply.send(Ok(1));
            map.delete_owner(&owner);
        }
        self.apply_write_reply(batch, now)
    }

    /// Broken twin: callers (and flushes) answered before their write.
    fn ack_before_write(&mut self, mut batch: Batch) -> bool {
        let now = self.shared.clock.now_ms();
        self.take_dirty(&mut batch);
        let Applied {
            changes,
            pending,
            replies,
            ..
        } = self.apply(&mut batch, now);
        let write = self.decide(&changes, &pending, &batch, now);
        let early = replies.into_iter().map(|(reply, _)| reply);
        for reply in early.chain(batch.flushes.drain(..)) {
            let _ = reply.send(Ok(0));
        }
        let result = self.write(write, changes, pending, now);
        reply::send(result, Vec::new(), batch)
    }

    /// Broken twin of `decide`: a flush that trusts `Dirty` messages over the scan, so a
    /// use whose message has not arrived is not written by the flush that follows it.
    fn flush_trusts_messages(&mut self, mut batch: Batch) -> bool {
        let now = self.shared.clock.now_ms();
        self.take_dirty(&mut batch);
        let Applied {
            changes,
            pending,
            replies,
            ..
        } = self.apply(&mut batch, now);
        let write = match self.decide(&changes, &pending, &batch, now) {
            // The loom backend keeps the file backend's books, whose scan is this plus the
            // flush's.
            Write::Append { used, .. } => Write::Append {
                used,
                scan: self.scan_all,
            },
            other => other,
        };
        let result = self.write(write, changes, pending, now);
        reply::send(result, replies, batch)
    }

    /// Broken twin of `written`: after a compaction, memory's newest `last_used` is taken
    /// as written, though a validation may have set it after the snapshot read it.
    fn persisted_from_memory(&mut self, mut batch: Batch) -> bool {
        let now = self.shared.clock.now_ms();
        self.take_dirty(&mut batch);
        let Applied {
            changes,
            pending,
            replies,
            ..
        } = self.apply(&mut batch, now);
        let write = self.decide(&changes, &pending, &batch, now);
        let result = self.write(write, changes, pending, now);
        if write == Write::Compact && result.is_ok() {
            self.shared.map.with_all(|entries| {
                for entry in entries {
                    entry.mark_persisted(entry.last_used().unwrap_or(0));
                }
            });
        }
        reply::send(result, replies, batch)
    }

    /// The phases after `take_dirty`, as `handle` runs them.
    fn apply_write_reply(&mut self, mut batch: Batch, now: u64) -> bool {
        let Applied {
            changes,
            pending,
            replies,
            ..
        } = self.apply(&mut batch, now);
        let write = self.decide(&changes, &pending, &batch, now);
        let result = self.write(write, changes, pending, now);
        reply::send(result, replies, batch)
    }
}
