//! The pool of page-locked (pinned) staging buffers that device loads stream through: bounded,
//! reused across loads, and freeable.
//!
//! Buffers are handed out as [`PinnedBuf`]s, which go back to the pool when dropped. A buffer
//! that a device copy may still read (its stream failed to synchronize) is never reused: the
//! device sink leaks it, and its bytes are counted apart as `leaked`, still inside the limit, so
//! pinned memory stays bounded and later loads size themselves to what is left. Every wait for
//! buffers is bounded, and a request that can never be met fails at once.
//!
//! ```
//! # #[cfg(feature = "cuda")] {
//! // The CUDA pool: its limit comes from FLASHPACK_PINNED_POOL_BYTES (read once) or is 1 GiB.
//! if let Ok(pool) = flashpack::sink::cuda::pinned_pool() {
//!     let stats = pool.stats();
//!     assert!(stats.allocated + stats.leaked <= stats.limit);
//! }
//! # }
//! ```
use std::ptr::NonNull;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::leaked_note;
use crate::{Error, Result};

/// Allocates and frees page-locked host memory (for example `cuMemHostAlloc`).
pub(crate) trait HostAllocator: Send + Sync {
    /// Allocates `len` bytes, aligned to at least 4 KiB (staging buffers take `O_DIRECT` reads).
    fn alloc(&self, len: usize) -> Result<NonNull<u8>>;
    /// Frees memory from [`HostAllocator::alloc`].
    ///
    /// # Safety
    /// `ptr` came from `alloc(len)` on this allocator, is freed once, and no copy still reads it.
    unsafe fn free(&self, ptr: NonNull<u8>, len: usize);
}

/// Byte counts of a [`PinnedPool`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Pinned bytes allocated and usable now (in use plus idle).
    pub allocated: usize,
    /// Idle bytes, kept for the next load.
    pub idle: usize,
    /// Bytes given up after failed device operations (a copy may still read them): never
    /// reused nor freed, and counted against the limit.
    pub leaked: usize,
    /// Most bytes ever allocated at once (leaked bytes included).
    pub peak: usize,
    /// Upper bound on `allocated + leaked`.
    pub limit: usize,
}

/// One allocation the pool owns.
struct Block {
    ptr: NonNull<u8>,
    cap: usize,
}

// SAFETY: a Block is the unique owner of its pinned allocation (like a Box<[u8]>); page-locked
// memory may be used and freed from any thread.
unsafe impl Send for Block {}

struct PoolState {
    idle: Vec<Block>,
    allocated: usize,
    leaked: usize,
    peak: usize,
    limit: usize,
}

impl PoolState {
    fn used(&self) -> usize {
        self.allocated + self.leaked
    }
}

/// How long a load waits for staging buffers that other loads hold, by default.
pub const DEFAULT_POOL_WAIT: Duration = Duration::from_secs(300);

/// A bounded pool of pinned staging buffers, reused across loads.
pub struct PinnedPool {
    alloc: Box<dyn HostAllocator>,
    state: Mutex<PoolState>,
    returned: Condvar,
    wait: Duration,
}

impl PinnedPool {
    pub(crate) fn new(alloc: Box<dyn HostAllocator>, limit: usize) -> Self {
        PinnedPool {
            alloc,
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                allocated: 0,
                leaked: 0,
                peak: 0,
                limit,
            }),
            returned: Condvar::new(),
            wait: DEFAULT_POOL_WAIT,
        }
    }

    /// The same pool, waiting at most `wait` for buffers other loads hold.
    #[cfg(test)]
    pub(crate) fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // Every update is a few assignments after the fallible call, so a panic while holding
        // the lock cannot leave the counts inconsistent: a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pool's byte counts now.
    pub fn stats(&self) -> PoolStats {
        let s = self.lock();
        PoolStats {
            allocated: s.allocated,
            idle: s.idle.iter().map(|b| b.cap).sum(),
            leaked: s.leaked,
            peak: s.peak,
            limit: s.limit,
        }
    }

    /// The bound on pinned bytes (allocated plus leaked).
    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    /// Bytes loads may size their staging to: the limit less the leaked bytes.
    pub(crate) fn budget(&self) -> usize {
        let s = self.lock();
        s.limit.saturating_sub(s.leaked)
    }

    /// Sets the bound; idle buffers beyond it are freed now, buffers in use when they return.
    pub fn set_limit(&self, limit: usize) {
        let mut s = self.lock();
        s.limit = limit;
        while s.used() > s.limit {
            let Some(b) = s.idle.pop() else { break };
            self.free(&mut s, b);
        }
        self.returned.notify_all();
    }

    /// Frees every idle buffer; returns the bytes freed. Buffers in use are unaffected.
    pub fn release(&self) -> usize {
        let mut s = self.lock();
        let mut freed = 0;
        for b in std::mem::take(&mut s.idle) {
            freed += b.cap;
            self.free(&mut s, b);
        }
        freed
    }

    fn free(&self, s: &mut PoolState, b: Block) {
        s.allocated -= b.cap;
        // SAFETY: `b` is owned by the pool (idle, or just handed back by its PinnedBuf), so no
        // copy reads it; it came from this allocator with this size.
        unsafe { self.alloc.free(b.ptr, b.cap) };
    }

    /// Takes between `min` and `max` buffers of at least `cap` bytes each: as many as the limit
    /// and the other loads' buffers allow now, and at least `min`.
    ///
    /// Fails at once when `min` buffers can never fit (the limit less the leaked bytes), and
    /// after the pool's wait (5 minutes) when other loads keep holding what it needs.
    pub(crate) fn take(&self, min: usize, max: usize, cap: usize) -> Result<Vec<PinnedBuf<'_>>> {
        let max = max.max(min);
        let need = min.checked_mul(cap).ok_or_else(|| {
            Error::out_of_memory(u64::MAX, format!("{min} staging buffers of {cap} bytes"))
        })?;
        let deadline = Instant::now() + self.wait;
        let mut s = self.lock();
        let mut out: Vec<Block> = Vec::with_capacity(max);
        loop {
            let budget = s.limit.saturating_sub(s.leaked);
            if need > budget {
                s.idle.append(&mut out);
                return Err(Error::PinnedLimitTooSmall {
                    path: "pinned pool".into(),
                    buffers: min,
                    buffer_bytes: cap,
                    need: need as u64,
                    available: budget as u64,
                    limit: s.limit as u64,
                    checksum_chunks: false,
                });
            }
            // An allocation failure after `min` buffers only means fewer of them.
            if let Err(e) = self.fill(&mut s, &mut out, max, cap) {
                if out.len() < min {
                    s.idle.append(&mut out);
                    self.returned.notify_all();
                    return Err(e);
                }
            }
            if out.len() >= min {
                return Ok(out
                    .into_iter()
                    .map(|block| PinnedBuf { block, pool: self })
                    .collect());
            }
            // Other loads hold the rest. Holding part while waiting could deadlock two loads,
            // so put it back and wait for buffers to come back.
            s.idle.append(&mut out);
            let now = Instant::now();
            if now >= deadline {
                // Not a caller mistake: the memory exists but other loads hold it.
                return Err(Error::out_of_memory(
                    need as u64,
                    format!(
                        "pinned staging buffers (waited {} s while other loads hold {} of the \
                         {}-byte limit{})",
                        self.wait.as_secs(),
                        s.allocated - s.idle.iter().map(|b| b.cap).sum::<usize>(),
                        s.limit,
                        leaked_note(s.leaked as u64)
                    ),
                ));
            }
            s = self
                .returned
                .wait_timeout(s, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Moves idle buffers big enough into `out`, then allocates up to `max` while under the
    /// limit (freeing idle buffers too small to use to make room).
    fn fill(&self, s: &mut PoolState, out: &mut Vec<Block>, max: usize, cap: usize) -> Result<()> {
        while out.len() < max {
            match s.idle.iter().position(|b| b.cap >= cap) {
                Some(i) => out.push(s.idle.swap_remove(i)),
                None => break,
            }
        }
        while out.len() < max {
            if s.used() + cap > s.limit {
                match s.idle.pop() {
                    Some(b) => {
                        self.free(s, b);
                        continue;
                    }
                    None => break,
                }
            }
            let ptr = self.alloc.alloc(cap)?;
            s.allocated += cap;
            s.peak = s.peak.max(s.used());
            out.push(Block { ptr, cap });
        }
        Ok(())
    }

    /// A buffer back from a load: kept for reuse, or freed when over the limit.
    fn put_back(&self, b: Block) {
        let mut s = self.lock();
        if s.used() > s.limit {
            self.free(&mut s, b);
        } else {
            s.idle.push(b);
        }
        self.returned.notify_all();
    }

    /// A buffer given up for good (a copy may still read it): counted as leaked.
    fn note_leaked(&self, cap: usize) {
        let mut s = self.lock();
        s.allocated -= cap;
        s.leaked += cap;
        self.returned.notify_all();
    }
}

impl Drop for PinnedPool {
    fn drop(&mut self) {
        self.release();
    }
}

/// One pinned staging buffer taken from a [`PinnedPool`]; it goes back to the pool when dropped.
pub(crate) struct PinnedBuf<'p> {
    block: Block,
    pool: &'p PinnedPool,
}

impl PinnedBuf<'_> {
    /// The first byte; `capacity()` bytes are valid while this buffer lives.
    pub fn as_ptr(&self) -> *mut u8 {
        self.block.ptr.as_ptr()
    }

    /// Gives the buffer up without freeing or reusing it, for when a device copy may still
    /// read it; its bytes stay counted against the pool's limit.
    pub fn leak(self) {
        self.pool.note_leaked(self.block.cap);
        std::mem::forget(self);
    }
}

impl std::fmt::Debug for PinnedBuf<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PinnedBuf({:p}, {} bytes)",
            self.block.ptr, self.block.cap
        )
    }
}

impl Drop for PinnedBuf<'_> {
    fn drop(&mut self) {
        let block = Block {
            ptr: self.block.ptr,
            cap: self.block.cap,
        };
        self.pool.put_back(block);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Plain aligned heap memory standing for pinned memory; counts live bytes.
    #[derive(Default)]
    struct TestAlloc {
        live: Arc<AtomicUsize>,
    }

    impl HostAllocator for TestAlloc {
        fn alloc(&self, len: usize) -> Result<NonNull<u8>> {
            let layout = std::alloc::Layout::from_size_align(len.max(1), 4096)
                .map_err(|e| Error::Internal(e.to_string()))?;
            // SAFETY: non-zero size.
            let p = unsafe { std::alloc::alloc(layout) };
            self.live.fetch_add(len, Ordering::SeqCst);
            NonNull::new(p).ok_or_else(|| Error::out_of_memory(len as u64, "a test buffer"))
        }

        unsafe fn free(&self, ptr: NonNull<u8>, len: usize) {
            self.live.fetch_sub(len, Ordering::SeqCst);
            // SAFETY: allocated above with this layout.
            unsafe {
                std::alloc::dealloc(
                    ptr.as_ptr(),
                    std::alloc::Layout::from_size_align_unchecked(len.max(1), 4096),
                )
            };
        }
    }

    fn pool(limit: usize) -> (PinnedPool, Arc<AtomicUsize>) {
        let alloc = TestAlloc::default();
        let live = alloc.live.clone();
        (PinnedPool::new(Box::new(alloc), limit), live)
    }

    #[test]
    fn dropped_buffers_go_back_to_the_pool_and_are_reused() {
        let (p, live) = pool(64 << 10);
        let bufs = p.take(2, 4, 8192).unwrap();
        assert_eq!(bufs.len(), 4);
        assert_eq!(p.stats().allocated, 4 * 8192);
        assert_eq!(p.stats().idle, 0);
        drop(bufs);
        let st = p.stats();
        assert_eq!(
            (st.allocated, st.idle, st.peak),
            (4 * 8192, 4 * 8192, 4 * 8192)
        );
        let again = p.take(4, 4, 8192).unwrap();
        assert_eq!(p.stats().peak, 4 * 8192, "reused, not allocated anew");
        drop(again);
        assert_eq!(p.release(), 4 * 8192);
        assert_eq!(live.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn takes_what_fits_between_min_and_max() {
        let (p, _) = pool(5 * 4096);
        let a = p.take(2, 8, 4096).unwrap();
        assert_eq!(a.len(), 5, "as many as the limit allows");
        let (q, _) = pool(5 * 4096);
        let held = q.take(3, 3, 4096).unwrap();
        let b = q.take(2, 8, 4096).unwrap();
        assert_eq!(b.len(), 2, "what the other load left");
        drop((held, b));
    }

    #[test]
    fn a_request_over_the_limit_fails_at_once() {
        let (p, _) = pool(4096);
        let t = Instant::now();
        let err = p.take(2, 2, 4096).unwrap_err();
        assert!(
            matches!(
                err,
                Error::PinnedLimitTooSmall {
                    buffers: 2,
                    buffer_bytes: 4096,
                    limit: 4096,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("the pinned pool limit of 4096 bytes"),
            "{err}"
        );
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn leaked_bytes_are_counted_apart_and_requests_size_to_what_is_left() {
        let (p, live) = pool(8 * 4096);
        let mut bufs = p.take(4, 4, 4096).unwrap();
        bufs.pop().unwrap().leak();
        bufs.pop().unwrap().leak();
        drop(bufs);
        let st = p.stats();
        assert_eq!(
            (st.allocated, st.idle, st.leaked),
            (2 * 4096, 2 * 4096, 2 * 4096)
        );
        assert_eq!(p.budget(), 6 * 4096);
        // Fail fast: 7 buffers can never fit beside the leaked ones; no waiting.
        let t = Instant::now();
        let err = p.take(7, 7, 4096).unwrap_err().to_string();
        assert!(
            err.contains("given up after failed device operations"),
            "{err}"
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        // What is left still works, and release frees all but the leaked bytes.
        assert_eq!(p.take(6, 6, 4096).unwrap().len(), 6);
        assert_eq!(p.release(), 6 * 4096);
        assert_eq!(
            live.load(Ordering::SeqCst),
            2 * 4096,
            "leaked memory is never freed"
        );
    }

    #[test]
    fn a_wait_for_buffers_other_loads_hold_is_bounded() {
        let (p, _) = pool(4 * 4096);
        let p = p.with_wait(Duration::from_millis(200));
        let held = p.take(4, 4, 4096).unwrap();
        let err = p.take(2, 2, 4096).unwrap_err();
        // Nothing is wrong with the caller's request: the memory is taken (Python's MemoryError).
        assert!(matches!(err, Error::OutOfMemory { .. }), "{err:?}");
        let err = err.to_string();
        assert!(err.contains("other loads hold"), "{err}");
        drop(held);
        assert_eq!(p.take(2, 2, 4096).unwrap().len(), 2);
    }

    #[test]
    fn a_waiting_load_proceeds_when_buffers_come_back() {
        let (p, _) = pool(2 * 4096);
        let held = p.take(2, 2, 4096).unwrap();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| p.take(2, 2, 4096).map(|b| b.len()));
            std::thread::sleep(Duration::from_millis(50));
            drop(held);
            assert_eq!(waiter.join().unwrap().unwrap(), 2);
        });
    }

    #[test]
    fn lowering_the_limit_frees_idle_buffers_now_and_busy_ones_on_return() {
        let (p, live) = pool(8 * 4096);
        let busy = p.take(2, 2, 4096).unwrap();
        drop(p.take(4, 4, 4096).unwrap());
        assert_eq!(live.load(Ordering::SeqCst), 6 * 4096);
        p.set_limit(4096);
        assert_eq!(live.load(Ordering::SeqCst), 2 * 4096);
        drop(busy);
        assert_eq!(
            live.load(Ordering::SeqCst),
            4096,
            "one returning buffer fits, one is freed"
        );
        assert_eq!((p.stats().allocated, p.stats().idle), (4096, 4096));
    }
}
