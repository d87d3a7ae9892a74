//! Streams and events: each stream is a worker thread that runs its queue in order, each copy no
//! earlier than the stand-in's delay after it was enqueued, so work completes late as on a GPU.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use xxhash_rust::xxh3::xxh3_64;

use crate::driver::{driver, DeviceAlloc};

/// Work queued on a stream.
pub enum Op {
    /// Copy `len` bytes from pinned host memory at `src` (inside the allocation starting at
    /// `pinned`) into `dst` at `dst_off`, not before `due`; `digest` is the source's digest
    /// when the copy was enqueued.
    Copy {
        src: usize,
        len: usize,
        pinned: usize,
        dst: Arc<DeviceAlloc>,
        dst_off: usize,
        due: Instant,
        digest: u64,
    },
    /// Marks `event`'s recording number `gen` complete.
    Signal { event: Arc<Event>, gen: u64 },
}

#[derive(Default)]
struct Queue {
    ops: VecDeque<Op>,
    submitted: u64,
    completed: u64,
    closed: bool,
}

pub struct Stream {
    pub ctx: usize,
    queue: Mutex<Queue>,
    changed: Condvar,
    /// Set by an injected synchronize failure: like a stream after a device fault, every later
    /// call on it fails too (its queued work still runs, so its buffers are still read).
    broken: AtomicBool,
}

impl Stream {
    /// A stream with its worker thread running (None when no thread can be started).
    pub fn start(ctx: usize) -> Option<Arc<Stream>> {
        let st = Arc::new(Stream {
            ctx,
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
            broken: AtomicBool::new(false),
        });
        let worker = st.clone();
        std::thread::Builder::new()
            .name("cuda-standin-stream".into())
            .spawn(move || worker.run())
            .ok()?;
        Some(st)
    }

    pub fn set_broken(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    pub fn push(&self, op: Op) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.ops.push_back(op);
        q.submitted += 1;
        self.changed.notify_all();
    }

    /// Waits for everything enqueued so far.
    pub fn synchronize(&self) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let target = q.submitted;
        while q.completed < target {
            q = self.changed.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn idle(&self) -> bool {
        let q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.completed == q.submitted
    }

    /// Stops the worker once the queued work is done (as `cuStreamDestroy` lets it finish).
    pub fn close(&self) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.closed = true;
        self.changed.notify_all();
    }

    fn run(&self) {
        loop {
            let op = {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if let Some(op) = q.ops.pop_front() {
                        break op;
                    }
                    if q.closed {
                        return;
                    }
                    q = self.changed.wait(q).unwrap_or_else(|e| e.into_inner());
                }
            };
            execute(op);
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.completed += 1;
            self.changed.notify_all();
        }
    }
}

fn execute(op: Op) {
    match op {
        Op::Copy {
            src,
            len,
            pinned,
            dst,
            dst_off,
            due,
            digest,
        } => {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let changed = {
                let mut data = dst.data.lock().unwrap_or_else(|e| e.into_inner());
                let out = &mut data[dst_off..dst_off + len];
                // SAFETY: `src..src + len` lies inside a live pinned allocation (checked when the
                // copy was enqueued; cuMemFreeHost waits for this copy before freeing it). If the
                // engine rewrites the buffer before this copy completes, these bytes race with
                // that write: exactly the bug this harness exists to expose (the digest below
                // records it).
                unsafe { std::ptr::copy_nonoverlapping(src as *const u8, out.as_mut_ptr(), len) };
                xxh3_64(out) != digest
            };
            driver().unpin_source(pinned);
            if changed {
                driver().violation(format!(
                    "staging memory {src:#x}+{len} changed between cuMemcpyHtoDAsync and the copy \
                     (a buffer was reused before its copy completed)"
                ));
            }
        }
        Op::Signal { event, gen } => event.complete(gen),
    }
}

/// An event: complete when the stream work before its latest record has run.
pub struct Event {
    pub ctx: usize,
    /// (number of records, number completed)
    state: Mutex<(u64, u64)>,
    done: Condvar,
}

impl Event {
    pub fn new(ctx: usize) -> Arc<Event> {
        Arc::new(Event {
            ctx,
            state: Mutex::new((0, 0)),
            done: Condvar::new(),
        })
    }

    /// A new recording; returns its number.
    pub fn record(&self) -> u64 {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 += 1;
        s.0
    }

    fn complete(&self, gen: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.1 = s.1.max(gen);
        self.done.notify_all();
    }

    pub fn is_complete(&self) -> bool {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.1 >= s.0
    }

    /// Waits for the latest recording (returns at once for an event never recorded).
    pub fn wait(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let target = s.0;
        while s.1 < target {
            s = self.done.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }
}
