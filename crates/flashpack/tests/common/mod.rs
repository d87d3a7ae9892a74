//! A fake device for tests: its "streams" are threads that copy after a random delay, so a sink
//! that reused a staging buffer before its copy finished, or returned before every copy landed,
//! shows up as wrong bytes.
#![allow(dead_code)]
use std::alloc::{alloc, dealloc, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use flashpack::sink::{Device, HostAllocator, PinnedPool};
use flashpack::{Error, Result};

const ALIGN: usize = 4096;

#[derive(Default)]
pub struct FakeAlloc {
    pub live: AtomicUsize,
}

impl HostAllocator for FakeAlloc {
    fn alloc(&self, len: usize) -> Result<NonNull<u8>> {
        let layout =
            Layout::from_size_align(len.max(1), ALIGN).map_err(|e| Error::Device(e.to_string()))?;
        // SAFETY: non-zero size, valid layout.
        let p = unsafe { alloc(layout) };
        self.live.fetch_add(len, Ordering::SeqCst);
        NonNull::new(p).ok_or_else(|| Error::Device("out of memory".into()))
    }

    unsafe fn free(&self, ptr: NonNull<u8>, len: usize) {
        self.live.fetch_sub(len, Ordering::SeqCst);
        // SAFETY: allocated above with this layout.
        unsafe {
            dealloc(
                ptr.as_ptr(),
                Layout::from_size_align_unchecked(len.max(1), ALIGN),
            )
        };
    }
}

/// Completed-operation counter of one fake stream.
type Done = Arc<(Mutex<u64>, Condvar)>;

fn wait_done(done: &Done, target: u64) {
    let (m, cv) = &**done;
    let mut g = m.lock().unwrap();
    while *g < target {
        g = cv.wait(g).unwrap();
    }
}

enum Op {
    Copy {
        dst: usize,
        src: usize,
        len: usize,
        delay_us: u64,
    },
    Stop,
}

pub struct FakeStream {
    tx: Sender<Op>,
    done: Done,
    enqueued: Mutex<u64>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for FakeStream {
    fn drop(&mut self) {
        let _ = self.tx.send(Op::Stop);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

#[derive(Default)]
pub struct FakeEvent {
    target: Mutex<Option<(Done, u64)>>,
}

pub struct FakeDevice {
    pub pool: PinnedPool<FakeAlloc>,
    /// Copies whose destination starts here fail at enqueue time.
    pub fail_at: Option<usize>,
    pub copies: AtomicUsize,
    pub streams_made: AtomicUsize,
    seed: AtomicUsize,
}

impl FakeDevice {
    pub fn new(limit: usize) -> Self {
        FakeDevice {
            pool: PinnedPool::new(FakeAlloc::default(), limit),
            fail_at: None,
            copies: AtomicUsize::new(0),
            streams_made: AtomicUsize::new(0),
            seed: AtomicUsize::new(12345),
        }
    }
}

impl Device for FakeDevice {
    type Stream = FakeStream;
    type Event = FakeEvent;
    type Alloc = FakeAlloc;

    fn name(&self) -> String {
        "fake:0".into()
    }

    fn bind_thread(&self) -> Result<()> {
        Ok(())
    }

    fn create_stream(&self) -> Result<FakeStream> {
        self.streams_made.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = channel::<Op>();
        let done: Done = Arc::new((Mutex::new(0), Condvar::new()));
        let d = done.clone();
        let thread = std::thread::spawn(move || {
            while let Ok(op) = rx.recv() {
                match op {
                    Op::Copy {
                        dst,
                        src,
                        len,
                        delay_us,
                    } => {
                        std::thread::sleep(Duration::from_micros(delay_us));
                        // SAFETY: the sink guarantees src stays valid until this copy is
                        // reported done; dst is a live test destination buffer.
                        unsafe {
                            std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, len)
                        };
                        let (m, cv) = &*d;
                        *m.lock().unwrap() += 1;
                        cv.notify_all();
                    }
                    Op::Stop => return,
                }
            }
        });
        Ok(FakeStream {
            tx,
            done,
            enqueued: Mutex::new(0),
            thread: Some(thread),
        })
    }

    fn create_event(&self) -> Result<FakeEvent> {
        Ok(FakeEvent::default())
    }

    unsafe fn copy_async(
        &self,
        dst: u64,
        src: *const u8,
        len: usize,
        stream: &FakeStream,
    ) -> Result<()> {
        if self.fail_at == Some(dst as usize) {
            return Err(Error::Device("fake:0: injected copy failure".into()));
        }
        // A pseudo-random delay makes the copy finish well after the reader moved on.
        let s = self.seed.fetch_add(0x9E37_79B9, Ordering::Relaxed);
        let delay_us = ((s.wrapping_mul(2654435761) >> 7) % 300) as u64;
        let mut n = stream.enqueued.lock().unwrap();
        *n += 1;
        self.copies.fetch_add(1, Ordering::SeqCst);
        stream
            .tx
            .send(Op::Copy {
                dst: dst as usize,
                src: src as usize,
                len,
                delay_us,
            })
            .map_err(|_| Error::Device("stream thread gone".into()))
    }

    fn record(&self, event: &FakeEvent, stream: &FakeStream) -> Result<()> {
        let n = *stream.enqueued.lock().unwrap();
        *event.target.lock().unwrap() = Some((stream.done.clone(), n));
        Ok(())
    }

    fn wait_event(&self, event: &FakeEvent) -> Result<()> {
        if let Some((done, n)) = event.target.lock().unwrap().clone() {
            wait_done(&done, n);
        }
        Ok(())
    }

    fn synchronize(&self, stream: &FakeStream) -> Result<()> {
        let n = *stream.enqueued.lock().unwrap();
        wait_done(&stream.done, n);
        Ok(())
    }

    fn pool(&self) -> &PinnedPool<FakeAlloc> {
        &self.pool
    }
}
