//! A caller's one-shot reply from the persister: sent once, received either blocking
//! (`Receiver::recv`) or awaited (`Receiver` is `IntoFuture`; its future is `AsyncReceiver`).
//!
//! Normally the `oneshot` crate. Under `--cfg loom`, a model with the same interface made of
//! loom's primitives, so the models keep checking how every caller hears its answer.

#[cfg(not(loom))]
pub(crate) use ::oneshot::{channel, AsyncReceiver, Receiver, RecvError, Sender};

#[cfg(loom)]
pub(crate) use self::model::{channel, AsyncReceiver, Receiver, RecvError, Sender};

/// A one-shot channel made of a loom `Mutex` and `Condvar`, with the waker of an awaiting
/// receiver kept under the same lock.
#[cfg(loom)]
mod model {
    use std::future::{Future, IntoFuture};
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use loom::sync::{Arc, Condvar, Mutex};

    struct Slot<T> {
        value: Option<T>,
        /// The sender sent or was dropped: no value will come after this.
        sender_done: bool,
        waker: Option<Waker>,
    }

    struct Chan<T> {
        slot: Mutex<Slot<T>>,
        changed: Condvar,
    }

    /// The sending half; `send` consumes it.
    pub(crate) struct Sender<T>(Arc<Chan<T>>);
    /// The receiving half: `recv` blocks, `into_future` awaits.
    pub(crate) struct Receiver<T>(Arc<Chan<T>>);
    /// The receiving half as a future.
    pub(crate) struct AsyncReceiver<T>(Arc<Chan<T>>);

    /// The sender was dropped without sending (as the crate's).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct RecvError;

    /// The receiver was gone; the value is handed back (as the crate's).
    #[derive(Debug)]
    pub(crate) struct SendError<T>(#[allow(dead_code)] pub T);

    pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
        let chan = Arc::new(Chan {
            slot: Mutex::new(Slot {
                value: None,
                sender_done: false,
                waker: None,
            }),
            changed: Condvar::new(),
        });
        (Sender(chan.clone()), Receiver(chan))
    }

    impl<T> Sender<T> {
        pub(crate) fn send(self, value: T) -> Result<(), SendError<T>> {
            let mut slot = self.0.slot.lock().unwrap();
            if Arc::strong_count(&self.0) == 1 {
                return Err(SendError(value));
            }
            slot.value = Some(value);
            Ok(())
            // `Drop` marks the slot done and wakes the receiver.
        }
    }

    impl<T> Drop for Sender<T> {
        fn drop(&mut self) {
            let mut slot = self.0.slot.lock().unwrap();
            slot.sender_done = true;
            let waker = slot.waker.take();
            drop(slot);
            self.0.changed.notify_all();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    impl<T> Chan<T> {
        /// The answer, once the sender is done: its value, or `RecvError`.
        fn take(slot: &mut Slot<T>) -> Option<Result<T, RecvError>> {
            match slot.value.take() {
                Some(value) => Some(Ok(value)),
                None if slot.sender_done => Some(Err(RecvError)),
                None => None,
            }
        }
    }

    impl<T> Receiver<T> {
        pub(crate) fn recv(self) -> Result<T, RecvError> {
            let mut slot = self.0.slot.lock().unwrap();
            loop {
                if let Some(answer) = Chan::take(&mut slot) {
                    return answer;
                }
                slot = self.0.changed.wait(slot).unwrap();
            }
        }
    }

    impl<T> IntoFuture for Receiver<T> {
        type Output = Result<T, RecvError>;
        type IntoFuture = AsyncReceiver<T>;

        fn into_future(self) -> AsyncReceiver<T> {
            AsyncReceiver(self.0.clone())
        }
    }

    impl<T> Future for AsyncReceiver<T> {
        type Output = Result<T, RecvError>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let mut slot = self.0.slot.lock().unwrap();
            match Chan::take(&mut slot) {
                Some(answer) => Poll::Ready(answer),
                None => {
                    slot.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }
    }
}
