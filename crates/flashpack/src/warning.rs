//! Warnings: things a caller should know about that do not stop the operation (e.g. a server
//! that gives no way to tell if an object changed during a load). They go to standard error
//! (`flashpack: warning: ...`) unless a program installs its own handler with [`set_handler`]
//! (the Python package turns them into Python warnings).
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! let seen = Arc::new(Mutex::new(Vec::<String>::new()));
//! let s = seen.clone();
//! flashpack::warning::set_handler(Some(Box::new(move |m: &str| s.lock().unwrap().push(m.to_string()))));
//! // ... open remote files: their warnings land in `seen` ...
//! flashpack::warning::set_handler(None); // back to standard error
//! ```
use std::sync::RwLock;

/// Receives each warning's text (it may be called from any thread).
pub type Handler = Box<dyn Fn(&str) + Send + Sync>;

static HANDLER: RwLock<Option<Handler>> = RwLock::new(None);

/// Sends every later warning to `handler`; `None` puts back the default (standard error).
pub fn set_handler(handler: Option<Handler>) {
    // A handler that panicked leaves the lock poisoned; the slot itself is still valid.
    let mut slot = HANDLER.write().unwrap_or_else(|p| p.into_inner());
    *slot = handler;
}

/// Reports `message` to the installed handler, or to standard error.
#[cfg_attr(not(feature = "remote"), allow(dead_code))] // the only warnings so far are remote ones
pub(crate) fn warn(message: &str) {
    let slot = HANDLER.read().unwrap_or_else(|p| p.into_inner());
    match slot.as_ref() {
        Some(h) => h(message),
        None => eprintln!("flashpack: warning: {message}"),
    }
}
