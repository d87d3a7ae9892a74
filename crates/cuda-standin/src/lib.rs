//! A strict stand-in for the CUDA driver, for tests only: it exports the driver entry points the
//! engine reaches through cudarc, backed by host memory, so the real driver calls of the CUDA
//! path (contexts, pinned memory, streams, events, copies) run on machines without a GPU.
//!
//! `make cuda-standin` installs it as `target/cuda-standin/libcuda.so.1` (and `libcuda.so`);
//! with `LD_LIBRARY_PATH=target/cuda-standin` every program of ours loads it in place of the
//! real driver. It is never shipped, and nothing measured with it is GPU evidence.
//!
//! It is at least as strict as the real driver, and stricter where that exposes our bugs:
//! - each thread has its own context stack; calls that need a context fail with
//!   `CUDA_ERROR_INVALID_CONTEXT` without one, and streams, events and allocations must be used
//!   with the context they belong to current;
//! - device allocations are tracked; a copy that leaves its allocation fails
//!   (`CUDA_ERROR_INVALID_VALUE`, as compute-sanitizer would report) instead of writing;
//! - an asynchronous host-to-device copy from memory that did not come from `cuMemHostAlloc`
//!   fails (the real driver silently makes it synchronous, which would hide a staging bug);
//! - copies run on one worker thread per stream and complete late (`CUDA_STANDIN_DELAY_US`,
//!   default 300 µs after they are enqueued), and each copy compares the source bytes it reads
//!   with a digest taken when it was enqueued: a staging buffer reused before its copy completed
//!   is recorded as a violation (and lands wrong bytes);
//! - failures are injected from the environment (`CUDA_STANDIN_FAIL=copy:3,sync:1` fails the
//!   3rd copy and the next stream synchronize) or at run time through `standin_fail`; a stream
//!   whose synchronize failed stays failed (as after a device fault) while its queued copies
//!   still run, so a caller that reuses or frees their buffers is caught;
//! - `standin_record` returns a JSON record: call counts, violations, live allocations, streams
//!   and events, and each thread's current context.
//!
//! Other settings: `CUDA_STANDIN_DEVICES` (default 2), `CUDA_STANDIN_DEVICE_BYTES` (memory per
//! device, default 4 GiB).
//!
//! Loaded from Python with ctypes (the engine loads it the same way, through cudarc):
//! ```python
//! import ctypes, json
//! cuda = ctypes.CDLL("libcuda.so.1")          # the stand-in, with LD_LIBRARY_PATH set
//! cuda.standin_fail(b"sync", 1)               # the next cuStreamSynchronize fails
//! buf = ctypes.create_string_buffer(1 << 16)
//! record = json.loads(buf.value[: cuda.standin_record(buf, len(buf))])
//! ```
pub mod api;
mod driver;
mod handles;
mod stream;
