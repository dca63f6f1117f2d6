//! The store's handle: the owner of the persister thread and the file lock, and the close
//! life cycle (`close`, `close_async`, the last clone dropped, a close racing another).

use std::fs::File;
use std::future::{poll_fn, Future, IntoFuture};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::error::Error;
use crate::inbox::{self, Answer, Message, Refused};
use crate::location::Location;
use crate::sync::oneshot::{self, AsyncReceiver, RecvError};
use crate::sync::thread::JoinHandle;
use crate::sync::{Arc, Mutex};
use crate::validate::Shared;

/// The owner of the persister thread and the file lock; closing happens when it drops.
pub(super) struct Handle {
    pub(super) shared: Arc<Shared>,
    pub(super) path: PathBuf,
    pub(super) location: Location,
    /// The prefix new tokens get.
    pub(super) prefix: String,
    pub(super) shutdown: Mutex<Shutdown>,
    pub(super) lock: Mutex<Option<File>>,
    /// The change feed's subscribers (the persister publishes to them).
    pub(super) feed: std::sync::Arc<crate::feed::Hub>,
}

/// Where the store is in its life.
pub(super) enum Shutdown {
    /// The persister runs.
    Running(JoinHandle<()>),
    /// One close is under way; each of these later closes hears its outcome.
    Closing(Vec<oneshot::Sender<Result<(), Error>>>),
    /// A close finished with this outcome; every later close reports it too.
    Done(Result<(), Error>),
}

/// What a close finds when it starts.
enum Claim {
    /// The persister runs: this close stops it.
    Closer(JoinHandle<()>),
    /// Another close is under way: its outcome arrives here.
    Wait(oneshot::Receiver<Result<(), Error>>),
    /// The store is closed, with this outcome.
    Closed(Result<(), Error>),
}

impl Handle {
    /// Stops the persister (which writes what is pending) and releases the lock.
    ///
    /// Every call returns the outcome of the one close that ran: a concurrent caller waits
    /// for it, so no caller reports a flush it did not see through, and a close after the
    /// persister died reports that. `first` says whether this call did the closing.
    /// (Under loom, `twins::shutdown` chooses between this and its broken twin.)
    #[cfg(not(loom))]
    pub(super) fn shutdown(&self) -> (Result<(), Error>, bool) {
        self.shutdown_once()
    }

    /// See [`shutdown`](Self::shutdown).
    fn shutdown_once(&self) -> (Result<(), Error>, bool) {
        match self.claim() {
            Claim::Closer(persister) => {
                let result = self.stop(persister);
                self.closed(result.clone());
                (result, true)
            }
            Claim::Wait(outcome) => (self.waited(outcome.recv()), false),
            Claim::Closed(result) => (result, false),
        }
    }

    /// [`shutdown`](Self::shutdown) without blocking, but for the brief join of a thread
    /// that has finished its work (see [`TokenStore::close_async`]).
    pub(super) async fn shutdown_async(&self) -> Result<(), Error> {
        match self.claim() {
            Claim::Closer(persister) => Closing::new(self, persister).run().await,
            Claim::Wait(outcome) => self.waited(outcome.await),
            Claim::Closed(result) => result,
        }
    }

    /// Starts a close: this one stops the persister, or waits for the one under way, or
    /// reports the outcome of the one that ran. The lock is held only for the look.
    fn claim(&self) -> Claim {
        let mut state = self.shutdown.lock().unwrap_or_else(|e| e.into_inner());
        match std::mem::replace(&mut *state, Shutdown::Closing(Vec::new())) {
            Shutdown::Running(persister) => Claim::Closer(persister),
            Shutdown::Closing(mut waiting) => {
                let (tell, outcome) = oneshot::channel();
                waiting.push(tell);
                *state = Shutdown::Closing(waiting);
                Claim::Wait(outcome)
            }
            Shutdown::Done(result) => {
                *state = Shutdown::Done(result.clone());
                Claim::Closed(result)
            }
        }
    }

    /// The close under way ended with `result`: later closes report it, waiting ones hear it.
    fn closed(&self, result: Result<(), Error>) {
        let mut state = self.shutdown.lock().unwrap_or_else(|e| e.into_inner());
        let waiting = match std::mem::replace(&mut *state, Shutdown::Done(result.clone())) {
            Shutdown::Closing(waiting) => waiting,
            _ => Vec::new(),
        };
        drop(state);
        for tell in waiting {
            let _ = tell.send(result.clone());
        }
    }

    /// What a close that waited for another heard. The closer always tells its outcome (if
    /// its caller goes away, [`Closing`]'s `Drop` finishes and tells), so silence means
    /// the closing thread panicked.
    fn waited(&self, outcome: Result<Result<(), Error>, RecvError>) -> Result<(), Error> {
        outcome.unwrap_or_else(|_| Err(self.died()))
    }

    /// Queues `message` for the persister and waits, blocking, for its answer.
    pub(super) fn ask(&self, message: Message, answer: Answer) -> Result<usize, Error> {
        let inbox = &self.shared.inbox;
        inbox.request(message).map_err(|r| self.refused(r))?;
        self.answered(answer.recv())
    }

    /// [`ask`](Self::ask) as a future: queues on its first poll, waits for room in a full
    /// channel and for the answer without blocking.
    pub(super) async fn ask_async(&self, message: Message, answer: Answer) -> Result<usize, Error> {
        let (inbox, mut message) = (&self.shared.inbox, Some(message));
        poll_fn(|cx| inbox.poll_request(&mut message, cx.waker()))
            .await
            .map_err(|r| self.refused(r))?;
        self.answered(answer.await)
    }

    /// Has the persister write what is pending and stop, waits for its thread, and releases
    /// the lock.
    fn stop(&self, persister: JoinHandle<()>) -> Result<(), Error> {
        let (reply, answer) = inbox::reply();
        let queued = self.shared.inbox.shut(Message::Shutdown(reply));
        let result = self.stopped(queued, || answer.recv());
        self.release(persister);
        result
    }

    /// The outcome of a close, from whether `Shutdown` was queued and, if it was, the
    /// persister's answer.
    fn stopped(
        &self,
        queued: Result<(), Refused>,
        answer: impl FnOnce() -> Result<Result<usize, Error>, RecvError>,
    ) -> Result<(), Error> {
        match queued {
            Ok(()) => self.answered(answer()).map(drop),
            Err(_) => Err(self.died()),
        }
    }

    /// Waits for the persister thread to end (after its last batch) and releases the lock.
    fn release(&self, persister: JoinHandle<()>) {
        // The thread catches its own panic, so joining only waits for it to end.
        let _ = persister.join();
        // Unlocked explicitly, not only by the drop: a child process forked meanwhile (by any
        // thread) holds a copy of the descriptor until it execs or exits, and the lock
        // belongs to the open file, so closing this copy alone would leave the store
        // `Locked` for a moment after `close` returned.
        if let Some(lock) = self.lock.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = lock.unlock();
        }
    }

    /// The persister's answer to a queued request.
    fn answered(&self, answer: Result<Result<usize, Error>, RecvError>) -> Result<usize, Error> {
        // A queued request is always answered unless the persister died: the gate keeps
        // requests from queueing behind `Shutdown`, and a dead persister drops its queue.
        answer.unwrap_or_else(|_| Err(self.died()))
    }

    /// The error for a request the inbox refused.
    fn refused(&self, refused: Refused) -> Error {
        match refused {
            Refused::Closed => Error::Closed {
                path: self.path.clone(),
            },
            Refused::Dead => self.died(),
        }
    }

    fn died(&self) -> Error {
        Error::PersisterDied {
            path: self.path.clone(),
        }
    }
}

/// The async close that stops the persister ([`TokenStore::close_async`]): queues
/// `Shutdown`, awaits the answer, then joins the thread and releases the lock.
///
/// If the future holding it is dropped before the end, `Drop` finishes the close on the
/// dropping thread (blocking until the persister's final write), so the store is never left
/// half-closed and the closes waiting for this one hear its outcome.
struct Closing<'a> {
    handle: &'a Handle,
    /// Taken when the close ends.
    persister: Option<JoinHandle<()>>,
    /// `Shutdown`, until it is queued.
    pub(super) shutdown: Option<Message>,
    answer: AsyncReceiver<Result<usize, Error>>,
}

impl<'a> Closing<'a> {
    fn new(handle: &'a Handle, persister: JoinHandle<()>) -> Closing<'a> {
        let (reply, answer) = inbox::reply();
        Closing {
            handle,
            persister: Some(persister),
            shutdown: Some(Message::Shutdown(reply)),
            answer: answer.into_future(),
        }
    }

    async fn run(mut self) -> Result<(), Error> {
        let inbox = &self.handle.shared.inbox;
        let queued = poll_fn(|cx| inbox.poll_shut(&mut self.shutdown, cx.waker())).await;
        let answer = match queued {
            Ok(()) => Some((&mut self.answer).await),
            Err(_) => None,
        };
        let result = self
            .handle
            .stopped(queued, || answer.unwrap_or(Err(RecvError)));
        self.end(result)
    }

    /// Joins the thread, releases the lock and reports `result` to the waiting closes.
    fn end(&mut self, result: Result<(), Error>) -> Result<(), Error> {
        if let Some(persister) = self.persister.take() {
            self.handle.release(persister);
        }
        self.handle.closed(result.clone());
        result
    }
}

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        if self.persister.is_none() {
            return; // ended
        }
        let queued = match self.shutdown.take() {
            Some(shutdown) => self.handle.shared.inbox.shut(shutdown),
            None => Ok(()),
        };
        if let Some(persister) = self.persister.take() {
            self.handle.release(persister);
        }
        // The thread has ended, so the answer was sent, or dropped with the queue.
        let answer =
            || match Pin::new(&mut self.answer).poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(answer) => answer,
                Poll::Pending => Err(RecvError),
            };
        let result = self.handle.stopped(queued, answer);
        if let Err(e) = self.end(result) {
            tracing::error!(file = %self.handle.path.display(), error = %e, "closing the token store after its close_async future was dropped failed");
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let (Err(e), true) = self.shutdown() {
            tracing::error!(file = %self.path.display(), error = %e, "closing the token store on drop failed");
        }
    }
}

/// Model checks only: the close's broken twin, and the one place that chooses between it
/// and the real close.
#[cfg(loom)]
mod twins {
    use super::{Handle, Shutdown};
    use crate::error::Error;
    use crate::sync::bug::{planted, Bug};

    impl Handle {
        /// `shutdown`: the real one, or its twin if `CloseWithoutWaiting` is planted.
        pub(in crate::store) fn shutdown(&self) -> (Result<(), Error>, bool) {
            if planted(Bug::CloseWithoutWaiting) {
                self.shutdown_without_waiting()
            } else {
                self.shutdown_once()
            }
        }

        /// Broken twin of `shutdown`: takes the persister under a
        /// short lock, so a second caller finds it gone and reports success at once, before the
        /// first caller's final snapshot is written.
        fn shutdown_without_waiting(&self) -> (Result<(), Error>, bool) {
            let mut state = self.shutdown.lock().unwrap_or_else(|e| e.into_inner());
            let taken = std::mem::replace(&mut *state, Shutdown::Done(Ok(())));
            drop(state);
            match taken {
                Shutdown::Running(persister) => (self.stop(persister), true),
                Shutdown::Closing(_) | Shutdown::Done(_) => (Ok(()), false),
            }
        }
    }
}
