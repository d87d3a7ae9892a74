//! Stopping a long load or pack from another thread: a signal handler, or Python's Ctrl-C check.
//!
//! The engine looks at a [`Cancel`] between chunks (reader and writer threads alike) and returns
//! [`Error::Cancelled`] once it is set; a pack then removes its
//! temporary file and leaves the destination as it was. A pack's last step, putting the new file
//! in place, is a commit: it happens only if no cancellation came first, and once it has
//! happened a cancellation no longer applies, so an operation is never reported as cancelled
//! when its result is already in place. [`Cancel::poll`] lets a caller decide whether to cancel
//! (e.g. by running Python's signal handlers) with that commit held off meanwhile.
//!
//! ```
//! use flashpack::{cancel::Cancel, write::{pack, PackEntry, PackOptions}, Dtype, Error};
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("m.flashpack");
//! let cancel = Cancel::new();
//! cancel.cancel(); // e.g. from a SIGINT handler's thread
//! let opts = PackOptions { cancel: Some(cancel), ..Default::default() };
//! let err = pack(&path, &[PackEntry::new("b", Dtype::U8, vec![1], &[7])], &opts).unwrap_err();
//! assert!(matches!(err, Error::Cancelled { .. }));
//! assert!(!path.exists());
//! ```
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::{Error, Result};

/// A shared "stop now" request for one operation (clones share it).
#[derive(Clone, Debug, Default)]
pub struct Cancel {
    inner: Arc<Inner>,
}

/// Two handles are equal when they are the same request (clones of one [`Cancel`]).
impl PartialEq for Cancel {
    fn eq(&self, other: &Cancel) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for Cancel {}

#[derive(Debug, Default)]
struct Inner {
    requested: AtomicBool,
    /// True once the operation's result is in place (held while committing or polling).
    committed: Mutex<bool>,
    /// For a [`step`](Cancel::step): the whole operation's cancel, whose request stops it too.
    parent: Option<Cancel>,
}

/// What [`Cancel::poll`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// Still running, not cancelled.
    Running,
    /// Cancelled (now or earlier): the operation stops at its next check.
    Cancelled,
    /// The operation has committed its result; nothing is left to cancel.
    Committed,
}

impl Cancel {
    /// A handle nobody has cancelled yet.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Asks the operation to stop at its next check. Has no effect on one that has committed.
    pub fn cancel(&self) {
        self.inner.requested.store(true, Ordering::SeqCst);
    }

    /// True once [`cancel`](Self::cancel) was called (on this or, for a step, on its operation).
    pub fn is_cancelled(&self) -> bool {
        self.inner.requested.load(Ordering::SeqCst)
            || self.inner.parent.as_ref().is_some_and(Cancel::is_cancelled)
    }

    /// A cancel for one step of this operation (e.g. one file of several written into a folder
    /// that is put in place at the end): a request to cancel the operation stops the step, but
    /// the step's own commit does not count as the operation's.
    pub fn step(&self) -> Cancel {
        Cancel {
            inner: Arc::new(Inner {
                parent: Some(self.clone()),
                ..Inner::default()
            }),
        }
    }

    /// Calls `interrupted` and cancels when it returns true, unless the operation has already
    /// committed (then `interrupted` is not called). No commit can start while `interrupted`
    /// runs, so [`Poll::Cancelled`] always means the result was not put in place.
    pub fn poll(&self, interrupted: impl FnOnce() -> bool) -> Poll {
        let committed = self.lock();
        if *committed {
            return Poll::Committed;
        }
        if self.is_cancelled() || interrupted() {
            self.cancel();
            return Poll::Cancelled;
        }
        Poll::Running
    }

    /// [`Error::Cancelled`] for `path` when cancellation was asked for.
    pub(crate) fn check(&self, path: &Path) -> Result<()> {
        if self.is_cancelled() {
            return Err(Error::Cancelled {
                path: path.to_path_buf(),
            });
        }
        Ok(())
    }

    /// Runs `commit` (the step that puts the result in place) unless cancellation was asked for
    /// first; after a successful commit, the operation counts as done.
    pub(crate) fn commit<T>(&self, path: &Path, commit: impl FnOnce() -> Result<T>) -> Result<T> {
        let mut committed = self.lock();
        self.check(path)?;
        let out = commit()?;
        *committed = true;
        Ok(out)
    }

    fn lock(&self) -> MutexGuard<'_, bool> {
        // The flag stays meaningful if a poller panicked while holding the lock.
        self.inner
            .committed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// [`Cancel::check`] for an optional cancel.
pub(crate) fn check(cancel: Option<&Cancel>, path: &Path) -> Result<()> {
    cancel.map_or(Ok(()), |c| c.check(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_stops_with_its_operation_and_commits_alone() {
        let op = Cancel::new();
        let step = op.step();
        step.commit(Path::new("a"), || Ok(())).unwrap();
        assert_eq!(op.poll(|| true), Poll::Cancelled);
        let next = op.step();
        assert!(next.check(Path::new("b")).is_err());
        assert!(!Cancel::new().step().is_cancelled());
    }

    #[test]
    fn a_commit_happens_only_before_a_cancel_and_a_cancel_only_before_a_commit() {
        let path = Path::new("m.flashpack");
        let c = Cancel::new();
        assert_eq!(c.poll(|| false), Poll::Running);
        assert_eq!(c.commit(path, || Ok(1)).unwrap(), 1);
        let mut asked = false;
        assert_eq!(
            c.poll(|| {
                asked = true;
                true
            }),
            Poll::Committed
        );
        assert!(
            !asked,
            "a committed operation's poller must not run the check"
        );

        let c = Cancel::new();
        assert_eq!(c.poll(|| true), Poll::Cancelled);
        assert_eq!(c.poll(|| false), Poll::Cancelled);
        let mut ran = false;
        let err = c
            .commit(path, || {
                ran = true;
                Ok(())
            })
            .unwrap_err();
        assert!(matches!(err, Error::Cancelled { .. }) && !ran);
    }
}
