//! Model checks only: the [`Recorder`] backend, which keeps what the files would hold
//! after each write instead of writing them.

use std::io;
use std::path::PathBuf;

use super::backend::{file_policy, AppendFailed, Compacted, Facts, Write};
use super::Sink;
use crate::change::ChangeRef;
use crate::file::WriteError;
use crate::journal;
use crate::snapshot::BodyRef;
use crate::sync::Arc;
use crate::token::TokenId;

/// Model checks only: a [`Sink`] that keeps what the files would hold after each write
/// (the last snapshot with every journal record since applied) instead of writing them, so
/// loom models do no I/O and can assert on what is "on disk" after every write.
#[derive(Clone)]
pub struct Recorder {
    written: Arc<crate::sync::Mutex<Vec<Recorded>>>,
    /// Records appended since the last compaction: the journal's "length" (the persister's
    /// copy counts; compaction runs once it passes the store's floor).
    records: u64,
}

/// Model checks only: what the files held after one write, as the [`Recorder`] saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    tokens: Vec<(TokenId, Option<u64>, Option<u64>)>,
    /// Whether this write was a compaction (a snapshot), not a journal record.
    compaction: bool,
}

impl Recorded {
    /// Whether the snapshot holds the token.
    pub fn contains(&self, id: TokenId) -> bool {
        self.tokens.iter().any(|(t, _, _)| *t == id)
    }

    /// The token's `last_used` in this snapshot (`None`: never used, or not in it).
    pub fn last_used(&self, id: TokenId) -> Option<u64> {
        self.tokens
            .iter()
            .find(|(t, _, _)| *t == id)
            .and_then(|t| t.1)
    }

    /// Whether the snapshot holds the token as revoked.
    pub fn revoked(&self, id: TokenId) -> bool {
        self.tokens.iter().any(|(t, _, r)| *t == id && r.is_some())
    }

    /// Whether this write was a compaction (a snapshot), not a journal record.
    pub fn is_compaction(&self) -> bool {
        self.compaction
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            written: Arc::new(crate::sync::Mutex::new(Vec::new())),
            records: 0,
        }
    }
}

impl Recorder {
    /// What the files held after each write so far, oldest first.
    pub fn snapshots(&self) -> Vec<Recorded> {
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// What the files hold now.
    pub fn last(&self) -> Option<Recorded> {
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .cloned()
    }
}

impl Recorder {
    /// Records the state after a write: `change` applied to the newest state.
    fn record(
        &self,
        compaction: bool,
        change: impl FnOnce(&mut Vec<(TokenId, Option<u64>, Option<u64>)>),
    ) {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let mut tokens = written.last().map(|r| r.tokens.clone()).unwrap_or_default();
        change(&mut tokens);
        written.push(Recorded { tokens, compaction });
    }
}

impl Sink for Recorder {
    fn append(&mut self, _seq: u64, changes: &[ChangeRef<'_>]) -> Result<u64, AppendFailed> {
        let id_of = |id: [u8; 8]| {
            TokenId::from_bytes(id)
                .ok_or_else(|| AppendFailed::journal(io::ErrorKind::InvalidData.into()))
        };
        let mut parsed = Vec::with_capacity(changes.len());
        for change in changes {
            parsed.push(match change {
                ChangeRef::Issue(r) => Some((id_of(r.id)?, Some((r.last_used, r.revoked_at)))),
                ChangeRef::Revoke { id, at } => Some((id_of(*id)?, Some((None, Some(*at))))),
                ChangeRef::Delete { id } => Some((id_of(*id)?, None)),
                ChangeRef::Used { id, at } => Some((id_of(*id)?, Some((Some(*at), None)))),
                ChangeRef::SetRateLimit { id, .. } | ChangeRef::Expire { id, .. } => {
                    Some((id_of(*id)?, Some((None, None))))
                }
                ChangeRef::Extras(extras) => Some((id_of(extras.id)?, Some((None, None)))),
                ChangeRef::Credits(credits) => Some((id_of(credits.id)?, Some((None, None)))),
                ChangeRef::NoCredits { id } => Some((id_of(*id)?, Some((None, None)))),
                // Changes to all of an owner's tokens, owner limits and prefixes are not
                // recorded: the models that make them check memory (the files' side is
                // `tests/crash` and `tests/it/keys.rs`).
                ChangeRef::RevokeOwner { .. }
                | ChangeRef::DeleteOwner { .. }
                | ChangeRef::OwnerRateLimit { .. }
                | ChangeRef::Prefix(_) => None,
                // The store does not count under loom (`Counter::keep_days`).
                ChangeRef::Usage(_) => None,
            });
        }
        self.records += 1;
        self.record(false, |tokens| {
            let parsed = changes.iter().zip(parsed);
            for (change, (id, what)) in parsed.filter_map(|(c, p)| Some((c, p?))) {
                let at = tokens.iter().position(|t| t.0 == id);
                match (change, at, what) {
                    (ChangeRef::Issue(_), None, Some((used, revoked))) => {
                        tokens.push((id, used, revoked))
                    }
                    (ChangeRef::Delete { .. }, Some(at), _) => {
                        tokens.remove(at);
                    }
                    (_, Some(at), Some((used, revoked))) => {
                        let token = &mut tokens[at];
                        token.1 = token.1.max(used);
                        token.2 = token.2.or(revoked);
                    }
                    _ => {}
                }
            }
        });
        Ok(0)
    }

    fn compact(&mut self, body: &BodyRef<'_, '_>) -> Result<Compacted, WriteError> {
        let tokens = body.records.iter().map(|r| {
            let id = TokenId::from_bytes(r.id).ok_or(io::ErrorKind::InvalidData)?;
            Ok((id, r.last_used, r.revoked_at))
        });
        let tokens = tokens.collect::<io::Result<Vec<_>>>()?;
        self.records = 0;
        self.record(true, |state| *state = tokens);
        Ok(Compacted {
            snapshot_bytes: 0,
            journal: Ok(0),
        })
    }

    /// The file backend's policy, with the journal's "length" counted in records.
    fn decide(&self, facts: &Facts<'_>) -> Write {
        file_policy(facts, true, journal::HEADER_LEN as u64 + self.records)
    }

    fn snapshot_at_open(&self, snapshot_len: u64) -> bool {
        snapshot_len == 0
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("<loom recorder>")
    }
}
