//! Stream and event handles: the small integers the driver API hands out for the streams and
//! events it creates. Above both `driver` (state, settings) and `stream` (the worker threads), so
//! neither has to know the other's tables.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::driver::{CUresult, INVALID_HANDLE};
use crate::stream::{Event, Stream};

/// Handles are numbered from here up, far from device pointers and small integers.
const HANDLE_BASE: usize = 0x5_0000;

#[derive(Default)]
struct Tables {
    streams: HashMap<usize, Arc<Stream>>,
    events: HashMap<usize, Arc<Event>>,
    next: usize,
}

pub struct Handles(Mutex<Tables>);

/// The process-wide handle tables.
pub fn handles() -> &'static Handles {
    static HANDLES: OnceLock<Handles> = OnceLock::new();
    HANDLES.get_or_init(|| {
        Handles(Mutex::new(Tables {
            next: HANDLE_BASE,
            ..Tables::default()
        }))
    })
}

impl Handles {
    fn lock(&self) -> MutexGuard<'_, Tables> {
        // A panic while holding the lock leaves the tables consistent (each step is one insert
        // or remove), so a poisoned lock is still usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next(t: &mut Tables) -> usize {
        t.next += 1;
        t.next
    }

    pub fn add_stream(&self, st: Arc<Stream>) -> usize {
        let mut t = self.lock();
        let h = Self::next(&mut t);
        t.streams.insert(h, st);
        h
    }

    pub fn stream(&self, h: usize) -> Result<Arc<Stream>, CUresult> {
        self.lock().streams.get(&h).cloned().ok_or(INVALID_HANDLE)
    }

    pub fn remove_stream(&self, h: usize) -> Result<Arc<Stream>, CUresult> {
        self.lock().streams.remove(&h).ok_or(INVALID_HANDLE)
    }

    pub fn add_event(&self, ev: Arc<Event>) -> usize {
        let mut t = self.lock();
        let h = Self::next(&mut t);
        t.events.insert(h, ev);
        h
    }

    pub fn event(&self, h: usize) -> Result<Arc<Event>, CUresult> {
        self.lock().events.get(&h).cloned().ok_or(INVALID_HANDLE)
    }

    pub fn remove_event(&self, h: usize) -> Result<Arc<Event>, CUresult> {
        self.lock().events.remove(&h).ok_or(INVALID_HANDLE)
    }

    /// Live streams and events, for the JSON record.
    pub fn counts(&self) -> (usize, usize) {
        let t = self.lock();
        (t.streams.len(), t.events.len())
    }
}
