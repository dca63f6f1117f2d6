//! The reply phase: every caller of a batch hears the outcome of the one write they
//! shared, only once it is known.

use super::batch::Batch;
use crate::error::Error;
use crate::inbox::Reply;

/// Answers the batch's callers with `result` (`replies` with their counts, then flushes and
/// the shutdown with 0) and acknowledges its ticks. Returns whether the batch asked the
/// persister to stop.
pub(super) fn send(result: Result<(), Error>, replies: Vec<(Reply, usize)>, batch: Batch) -> bool {
    let stop = batch.shutdown.is_some();
    let counted = replies.into_iter();
    let plain = batch
        .flushes
        .into_iter()
        .chain(batch.shutdown)
        .map(|reply| (reply, 0));
    for (reply, count) in counted.chain(plain) {
        let _ = reply.send(result.clone().map(|()| count));
    }
    for ack in batch.ticks {
        let _ = ack.send(());
    }
    stop
}
