//! `flashpack._core`: the engine's Python face. It speaks bytes, paths and plain Python values;
//! everything torch-specific lives in the `flashpack` Python package. Every call that touches the
//! disk releases the GIL; long ones (eager loads, verification, packs) run on a worker thread while
//! the calling thread keeps running Python's signal handlers, so Ctrl-C stops them (see
//! [`interruptible`]). OS errors become the matching `OSError` subclass with `errno`, `strerror`
//! and `filename` set (see [`to_py`]).
use std::os::raw::{c_int, c_void};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::time::Duration;

mod cli;
mod weights;

use flashpack::cancel::{Cancel, Poll};
use flashpack::format::{FormatVersion, Order, TensorSpec, FILE_FORMAT_V3, FILE_FORMAT_V4};
use flashpack::read::{self, IoMode, LoadOptions, Loaded};
use flashpack::sink::cuda::{self, CudaDevice};
use flashpack::sink::DeviceRegion;
use flashpack::write::{self, PackEntry, PackOptions};
use flashpack::{CheckpointError, Dtype, Error};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{
    PyFileNotFoundError, PyKeyboardInterrupt, PyMemoryError, PyNotImplementedError, PyOSError,
    PyRuntimeError, PyValueError,
};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

/// The Python exception for an engine error. An OS error with a code becomes
/// `OSError(errno, strerror, filename)`, which Python turns into its subclass for that code
/// (`FileNotFoundError`, `IsADirectoryError`, `PermissionError`, ...): `strerror` is the OS's text
/// with the step that failed, `filename` the file the call was about (a pack's destination).
/// A checkpoint's missing shard is `FileNotFoundError`, a shard the OS refuses an `OSError` of
/// the OS's subclass. Format and caller problems (a corrupt file or index included) are
/// `ValueError`, host memory running out `MemoryError`, what this build cannot do
/// `NotImplementedError`, device problems and internal errors `RuntimeError`.
fn to_py(e: Error) -> PyErr {
    match e {
        Error::Io {
            ref path,
            ref op,
            ref source,
        } => match source.raw_os_error() {
            Some(code) => {
                let text = source.to_string();
                let text = text
                    .strip_suffix(&format!(" (os error {code})"))
                    .unwrap_or(&text);
                // As Python's own `open` words it (`[Errno 2] No such file or directory:
                // 'model.safetensors'`); another operation (read, mmap, ...) is named after
                // the OS's words.
                let strerror = match op.as_ref() {
                    "open" => text.to_string(),
                    op => format!("{text} ({op})"),
                };
                PyOSError::new_err((code, strerror, path.as_os_str().to_os_string()))
            }
            None => PyOSError::new_err(e.to_string()),
        },
        Error::NotAFile { .. } => PyOSError::new_err(e.to_string()),
        // A URL's object missing, refused or not transferred (see weights::remote_error).
        Error::Remote { ref source, .. } => weights::remote_error(source, e.to_string()),
        Error::Checkpoint { ref source, .. } => match source.as_ref() {
            // A shard the index names that is not there: FileNotFoundError, as for a missing
            // file.
            CheckpointError::ShardMissing { .. } => PyFileNotFoundError::new_err(e.to_string()),
            // A shard the OS would not read: an OSError (its subclass for the OS's code), with
            // the index and the shard named.
            CheckpointError::BadShard { source, .. } if !e.is_data_error() => {
                // A shard at a URL that could not be fetched: as for the URL itself.
                if let Some(err) = weights::shard_remote_error(source, e.to_string()) {
                    return err;
                }
                match os_code(source) {
                    Some(code) => PyOSError::new_err((code, e.to_string())),
                    None => PyOSError::new_err(e.to_string()),
                }
            }
            _ => PyValueError::new_err(e.to_string()),
        },
        Error::Cancelled { .. } => PyKeyboardInterrupt::new_err(e.to_string()),
        Error::Device(_) | Error::Internal(_) => PyRuntimeError::new_err(e.to_string()),
        Error::OutOfMemory { .. } => PyMemoryError::new_err(e.to_string()),
        Error::Unsupported(_) => PyNotImplementedError::new_err(e.to_string()),
        _ => PyValueError::new_err(e.to_string()),
    }
}

/// The OS error code under an engine error (through a checkpoint's shard errors), if any.
fn os_code(e: &Error) -> Option<i32> {
    match e {
        Error::Io { source, .. } => source.raw_os_error(),
        Error::Checkpoint { source, .. } => match source.as_ref() {
            CheckpointError::BadShard { source, .. } => os_code(source),
            _ => None,
        },
        _ => None,
    }
}

/// How often the calling thread runs Python's signal handlers while engine work runs.
const SIGNAL_POLL: Duration = Duration::from_millis(20);

/// Runs `work` on a worker thread with the GIL released, while the calling thread wakes every
/// [`SIGNAL_POLL`] to run Python's signal handlers (`PyErr_CheckSignals`, which only acts on the
/// main thread). When a handler raises (Ctrl-C's `KeyboardInterrupt`, a SIGALRM handler's
/// exception), `cancel` is cancelled: the work stops at its next chunk, cleans up, and that
/// exception is raised. A handler that returns normally just runs, during the call. Once the work
/// has committed its result (a pack's rename), handlers are no longer run here: the call
/// reports its success and Python runs them after it returns, as for any call that completed.
/// Errors the engine's calls return, as Python exceptions.
pub(crate) trait IntoPyErr: Send {
    fn into_py_err(self) -> PyErr;
}

impl IntoPyErr for Error {
    fn into_py_err(self) -> PyErr {
        to_py(self)
    }
}

/// The exception for a panic caught in the engine.
fn engine_panic(panic: Box<dyn std::any::Any + Send>) -> PyErr {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    PyRuntimeError::new_err(format!(
        "flashpack: internal error (a bug, please report it): {what}"
    ))
}

pub(crate) fn interruptible<T: Send, E: IntoPyErr>(
    py: Python<'_>,
    cancel: &Cancel,
    work: impl FnOnce() -> Result<T, E> + Send,
) -> PyResult<T> {
    let mut raised: Option<PyErr> = None;
    let result = py.detach(|| {
        std::thread::scope(|s| {
            let (tx, rx) = channel();
            s.spawn(move || {
                // A panic in the engine is a bug; it reaches Python as a RuntimeError saying so,
                // not as a PanicException (a BaseException that `except Exception` misses).
                let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)));
            });
            let mut polling = true;
            loop {
                match rx.recv_timeout(SIGNAL_POLL) {
                    Ok(result) => return Some(result),
                    // The worker ended without sending (it cannot: panics are caught above).
                    Err(RecvTimeoutError::Disconnected) => return None,
                    Err(RecvTimeoutError::Timeout) if !polling => {}
                    Err(RecvTimeoutError::Timeout) => {
                        let polled = cancel.poll(|| {
                            Python::attach(|py| py.check_signals())
                                .map_err(|e| raised = Some(e))
                                .is_err()
                        });
                        polling = polled == Poll::Running;
                    }
                }
            }
        })
    });
    match (raised, result) {
        // A cancelled load may still have finished; its result is dropped.
        (Some(e), _) => Err(e),
        (None, Some(Ok(r))) => r.map_err(IntoPyErr::into_py_err),
        (None, Some(Err(panic))) => Err(engine_panic(panic)),
        (None, None) => Err(PyRuntimeError::new_err(
            "flashpack: engine worker thread failed",
        )),
    }
}

/// One tensor of a footer: where its elements sit in its block, and the earlier record it
/// shares its bytes with (tied weights stored once), if any.
#[pyclass(module = "flashpack._core", frozen, get_all)]
#[derive(Clone)]
struct Record {
    name: String,
    shape: Vec<u64>,
    /// Index into `Footer.blocks`.
    block: usize,
    /// Offset in elements from the start of the block.
    offset: u64,
    /// Number of elements.
    length: u64,
    /// The index of the first record with exactly these bytes (same block, offset and length,
    /// at least one element); None for the first one and for records sharing nothing.
    tied_to: Option<usize>,
}

#[pymethods]
impl Record {
    /// A record of a footer-shaped index that is not a FlashPack file's (a checkpoint's tensors).
    #[new]
    #[pyo3(signature = (name, shape, block, offset, length, tied_to=None))]
    fn new(
        name: String,
        shape: Vec<u64>,
        block: usize,
        offset: u64,
        length: u64,
        tied_to: Option<usize>,
    ) -> Self {
        Record {
            name,
            shape,
            block,
            offset,
            length,
            tied_to,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "Record(name={:?}, shape={:?}, block={}, offset={}, length={}, tied_to={:?})",
            self.name, self.shape, self.block, self.offset, self.length, self.tied_to
        )
    }
}

/// The records of `footer`, each with the earlier record holding the same bytes.
fn records_of(footer: &flashpack::Footer) -> Vec<Record> {
    let mut first: std::collections::HashMap<(usize, u64, u64), usize> = Default::default();
    footer
        .records()
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let tied_to = if r.length() == 0 {
                None
            } else {
                let holder = *first
                    .entry((r.block(), r.offset(), r.length()))
                    .or_insert(i);
                (holder != i).then_some(holder)
            };
            Record {
                name: r.name().to_owned(),
                shape: r.shape().to_vec(),
                block: r.block(),
                offset: r.offset(),
                length: r.length(),
                tied_to,
            }
        })
        .collect()
}

/// A FlashPack file's validated footer, read-only: what Python needs of it, decoded once by the
/// engine (Python never parses or re-derives the footer JSON; `json` is kept for the public
/// metadata dict of the original API).
#[pyclass(module = "flashpack._core", frozen, name = "Footer")]
pub(crate) struct PyFooter {
    json: Vec<u8>,
    format: &'static str,
    align_bytes: u64,
    payload_len: u64,
    total_elems: u64,
    blocks: Vec<(&'static str, u64, u64, u64)>,
    records: Vec<Py<Record>>,
    checksum_chunk_bytes: Option<u64>,
}

impl PyFooter {
    pub(crate) fn new(
        py: Python<'_>,
        footer: &flashpack::Footer,
        json: &[u8],
        payload_len: u64,
    ) -> PyResult<Py<PyFooter>> {
        let records = records_of(footer)
            .into_iter()
            .map(|r| Py::new(py, r))
            .collect::<PyResult<_>>()?;
        let footer = PyFooter {
            json: json.to_vec(),
            format: match footer.version() {
                FormatVersion::V3 => FILE_FORMAT_V3,
                FormatVersion::V4 => FILE_FORMAT_V4,
            },
            align_bytes: footer.align_bytes(),
            payload_len,
            total_elems: footer.total_elems(),
            blocks: footer
                .blocks()
                .iter()
                .map(|b| {
                    (
                        b.dtype().name(),
                        b.offset_bytes(),
                        b.length_bytes(),
                        b.length_elems(),
                    )
                })
                .collect(),
            records,
            checksum_chunk_bytes: footer.checksums().map(|c| c.chunk_bytes),
        };
        Py::new(py, footer)
    }
}

#[pymethods]
impl PyFooter {
    /// Decodes and validates footer JSON against a payload of `payload_len` bytes, as opening
    /// a file does (for a footer received from elsewhere, e.g. another rank). ValueError when
    /// it breaks a rule of the format.
    #[staticmethod]
    fn decode(py: Python<'_>, json: &[u8], payload_len: u64) -> PyResult<Py<PyFooter>> {
        let footer = flashpack::Footer::decode(json, payload_len)
            .map_err(|e| PyValueError::new_err(format!("footer: {e}")))?;
        PyFooter::new(py, &footer, json, payload_len)
    }

    /// The footer JSON exactly as stored in the file.
    #[getter]
    fn json<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.json)
    }

    /// `"flashpack_v3"` (one dtype, one block) or `"flashpack_v4"` (macroblocks).
    #[getter]
    fn format(&self) -> &'static str {
        self.format
    }

    #[getter]
    fn align_bytes(&self) -> u64 {
        self.align_bytes
    }

    /// Bytes before the footer JSON; every block lies inside them.
    #[getter]
    fn payload_len(&self) -> u64 {
        self.payload_len
    }

    /// Elements over all blocks.
    #[getter]
    fn total_elems(&self) -> u64 {
        self.total_elems
    }

    /// The validated macroblocks: `[(dtype, offset_bytes, length_bytes, length_elems), ...]`
    /// (a v3 file has one, at byte 0).
    #[getter]
    fn blocks(&self) -> Vec<(&'static str, u64, u64, u64)> {
        self.blocks.clone()
    }

    /// The tensors in file order.
    #[getter]
    fn records(&self, py: Python<'_>) -> Vec<Py<Record>> {
        self.records.iter().map(|r| r.clone_ref(py)).collect()
    }

    /// True when the file stores payload checksums.
    #[getter]
    fn has_checksums(&self) -> bool {
        self.checksum_chunk_bytes.is_some()
    }

    /// Payload bytes per checksum chunk, None without checksums.
    #[getter]
    fn checksum_chunk_bytes(&self) -> Option<u64> {
        self.checksum_chunk_bytes
    }

    fn __len__(&self) -> usize {
        self.records.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "Footer(format={:?}, blocks={}, records={}, payload_len={}, checksums={})",
            self.format,
            self.blocks.len(),
            self.records.len(),
            self.payload_len,
            self.checksum_chunk_bytes.is_some()
        )
    }
}

fn io_dict<'py>(py: Python<'py>, report: &read::LoadReport) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("threads", report.threads)?;
    d.set_item("direct_bytes", report.io.direct_bytes)?;
    d.set_item("buffered_bytes", report.io.buffered_bytes)?;
    d.set_item("remote_bytes", report.io.remote_bytes)?;
    Ok(d)
}

fn phases(list: &[(&'static str, std::time::Duration)]) -> Vec<(String, f64)> {
    list.iter()
        .map(|(n, d)| (n.to_string(), d.as_secs_f64()))
        .collect()
}

/// A loaded payload. Exposes its bytes through the (writable) buffer protocol so that
/// `torch.frombuffer` can view them without a copy; the memory lives as long as any view does.
#[pyclass(module = "flashpack._core", frozen)]
struct Payload {
    loaded: Loaded,
    footer: Py<PyFooter>,
    /// Start of the payload, taken from a `&mut` borrow when the load finished (see `__getbuffer__`).
    ptr: usize,
}

#[pymethods]
impl Payload {
    /// The file's validated footer.
    #[getter]
    fn footer(&self, py: Python<'_>) -> Py<PyFooter> {
        self.footer.clone_ref(py)
    }

    #[getter]
    fn payload_len(&self) -> u64 {
        self.loaded.payload_len()
    }

    #[getter]
    fn eager(&self) -> bool {
        self.loaded.is_eager()
    }

    /// Phase timings in seconds: `[(name, seconds), ...]`.
    #[getter]
    fn phases(&self) -> Vec<(String, f64)> {
        phases(&self.loaded.report().phases)
    }

    /// Reader threads used, and bytes read with O_DIRECT / through the page cache.
    #[getter]
    fn io<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        io_dict(py, self.loaded.report())
    }

    fn __len__(&self) -> usize {
        self.loaded.payload().len()
    }

    /// # Safety
    /// Called by CPython with a valid `view` to fill. The exported pointer stays valid while the
    /// exporter (this object) is alive, which the buffer's `obj` reference guarantees; the memory
    /// is a private mapping or owned buffer that never moves.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let this = slf.get();
        let (ptr, len) = (
            this.ptr as *mut c_void,
            this.loaded.payload().len() as ffi::Py_ssize_t,
        );
        // SAFETY: see above; writes through the view are allowed because the memory is either a
        // copy-on-write mapping (writes never reach the file) or memory we own. Rust never reads
        // or writes the payload again after `load` returns, so there is no aliasing on our side.
        unsafe { export_buffer(slf.as_any(), view, ptr, len, flags) }
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}
}

/// Fills `view` with the writable bytes `ptr..ptr + len`, exported by `owner` (which the view
/// keeps alive).
///
/// # Safety
/// `view` is the one CPython passed to `owner`'s `__getbuffer__`, and the memory stays valid,
/// unmoved and free of Rust-side access while `owner` lives.
pub(crate) unsafe fn export_buffer(
    owner: &Bound<'_, PyAny>,
    view: *mut ffi::Py_buffer,
    ptr: *mut c_void,
    len: ffi::Py_ssize_t,
    flags: c_int,
) -> PyResult<()> {
    // SAFETY: the caller's contract; `owner` is a live object, referenced by the view.
    if unsafe { ffi::PyBuffer_FillInfo(view, owner.as_ptr(), ptr, len, 0, flags) } != 0 {
        return Err(PyErr::fetch(owner.py()));
    }
    Ok(())
}

fn io_mode(io: &str) -> PyResult<IoMode> {
    match io {
        "auto" => Ok(IoMode::Auto),
        "direct" => Ok(IoMode::Direct),
        "buffered" => Ok(IoMode::Buffered),
        other => Err(PyValueError::new_err(format!(
            "io must be 'auto', 'direct' or 'buffered', not {other:?}"
        ))),
    }
}

/// Loads a FlashPack file: a private copy-on-write mapping (`eager=False`) or owned memory filled
/// by `threads` reader threads (`eager=True`).
#[pyfunction]
#[pyo3(signature = (path, eager=false, io="auto", threads=0, chunk_bytes=read::DEFAULT_READ_CHUNK_BYTES, progress=false, huge_pages=false, verify=false))]
#[allow(clippy::too_many_arguments)]
fn load(
    py: Python<'_>,
    path: std::path::PathBuf,
    eager: bool,
    io: &str,
    threads: usize,
    chunk_bytes: usize,
    progress: bool,
    huge_pages: bool,
    verify: bool,
) -> PyResult<Payload> {
    let cancel = Cancel::new();
    let opts = LoadOptions {
        eager,
        io: io_mode(io)?,
        threads,
        chunk_bytes,
        progress,
        huge_pages,
        verify,
        cancel: Some(cancel.clone()),
    };
    let mut loaded = if eager || verify {
        interruptible(py, &cancel, || read::load(&path, &opts))?
    } else {
        // A lazy load only maps the file: nothing long to interrupt.
        py.detach(|| read::load(&path, &opts)).map_err(to_py)?
    };
    let footer = PyFooter::new(
        py,
        loaded.footer(),
        loaded.footer_json(),
        loaded.payload_len(),
    )?;
    let ptr = loaded.payload_mut().as_mut_ptr() as usize;
    Ok(Payload {
        loaded,
        footer,
        ptr,
    })
}

/// An open FlashPack file with its validated footer, for loads into device memory: the footer
/// the caller sized its allocations from is the one the load streams by (same open file).
#[pyclass(module = "flashpack._core", frozen)]
struct File {
    f: read::FlashFile,
    footer: Py<PyFooter>,
}

#[pymethods]
impl File {
    /// The file's validated footer (the one a load through this handle streams by).
    #[getter]
    fn footer(&self, py: Python<'_>) -> Py<PyFooter> {
        self.footer.clone_ref(py)
    }

    #[getter]
    fn payload_len(&self) -> u64 {
        self.f.payload_len()
    }

    /// Streams payload ranges into CUDA memory on device `device`: `regions` is
    /// `[(payload_offset, length, device_address), ...]`. Returns `(phases, io)` once every copy
    /// has completed. The GIL is released throughout; the calling thread's current CUDA context
    /// (torch's current device) is unchanged afterwards.
    ///
    /// Private API: the caller (flashpack's Python code) passes addresses of device memory it
    /// owns and nothing else uses during the call (tensors it just allocated, after torch's
    /// stream was synchronized). Other addresses corrupt device memory.
    #[pyo3(signature = (device, regions, io="auto", threads=0, chunk_bytes=read::DEFAULT_READ_CHUNK_BYTES, progress=false, verify=false))]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn to_cuda<'py>(
        &self,
        py: Python<'py>,
        device: usize,
        regions: Vec<(u64, u64, u64)>,
        io: &str,
        threads: usize,
        chunk_bytes: usize,
        progress: bool,
        verify: bool,
    ) -> PyResult<(Vec<(String, f64)>, Bound<'py, PyDict>)> {
        let cancel = Cancel::new();
        let opts = LoadOptions {
            eager: true,
            io: io_mode(io)?,
            threads,
            chunk_bytes,
            progress,
            huge_pages: false,
            verify,
            cancel: Some(cancel.clone()),
        };
        let regions = regions
            .into_iter()
            .map(|(offset, len, dst)| DeviceRegion { offset, len, dst })
            .collect();
        // Interrupted, the load stops between chunks and waits for the copies in flight before
        // it returns, so the destinations are not written after this call ends.
        let report = interruptible(py, &cancel, || {
            let dev = CudaDevice::new(device)?;
            // SAFETY: the contract of this private method (its docs): the regions are device
            // memory the caller owns and nothing else touches until this returns.
            unsafe { read::load_to_device(&self.f, &dev, regions, &opts) }
        })?;
        Ok((phases(&report.phases), io_dict(py, &report)?))
    }

    /// Reads payload bytes `[offset, offset + len(buffer))` into `buffer` (a writable,
    /// C-contiguous buffer such as `tensor.numpy()` of a uint8 CPU tensor) with the eager
    /// reader, the GIL released. Returns `{"threads", "direct_bytes", "buffered_bytes"}`.
    #[pyo3(signature = (offset, buffer, io="auto", threads=0, chunk_bytes=read::DEFAULT_READ_CHUNK_BYTES, verify=false))]
    #[allow(clippy::too_many_arguments)]
    fn read_into<'py>(
        &self,
        py: Python<'py>,
        offset: u64,
        buffer: PyBuffer<u8>,
        io: &str,
        threads: usize,
        chunk_bytes: usize,
        verify: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        if buffer.readonly() || !buffer.is_c_contiguous() {
            return Err(PyValueError::new_err(
                "read_into needs a writable, C-contiguous buffer",
            ));
        }
        let cancel = Cancel::new();
        let opts = LoadOptions {
            eager: true,
            io: io_mode(io)?,
            threads,
            chunk_bytes,
            verify,
            cancel: Some(cancel.clone()),
            ..Default::default()
        };
        let (ptr, len) = (buffer.buf_ptr() as usize, buffer.len_bytes());
        let report = interruptible(py, &cancel, || {
            // SAFETY: `buffer` holds a Py_buffer on a live, writable, C-contiguous exporter for
            // the whole call, so `ptr..ptr + len` is valid for writes; the caller owns the tensor
            // behind it and does not touch it until this call returns (which waits for the
            // worker, interrupted or not).
            let dst = unsafe { std::slice::from_raw_parts_mut(ptr as *mut u8, len) };
            read::read_range(&self.f, offset, dst, &opts)
        })?;
        io_dict(py, &report)
    }
}

/// Opens a FlashPack file and validates its footer.
#[pyfunction]
fn open(py: Python<'_>, path: std::path::PathBuf) -> PyResult<File> {
    let f = py.detach(|| read::FlashFile::open(&path)).map_err(to_py)?;
    let footer = PyFooter::new(py, f.footer(), f.footer_json(), f.payload_len())?;
    Ok(File { f, footer })
}

/// True when the CUDA driver loads and initialises (no GPU work is done).
#[pyfunction]
fn cuda_available(py: Python<'_>) -> bool {
    py.detach(cuda::driver_available)
}

/// Byte counts of the pinned staging pool: allocated, idle, leaked, peak, limit.
#[pyfunction]
fn pinned_pool_stats<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
    let s = cuda::pinned_pool().map_err(to_py)?.stats();
    let d = PyDict::new(py);
    d.set_item("allocated", s.allocated)?;
    d.set_item("idle", s.idle)?;
    d.set_item("leaked", s.leaked)?;
    d.set_item("peak", s.peak)?;
    d.set_item("limit", s.limit)?;
    Ok(d)
}

/// Sets the bound on pinned staging memory (bytes); idle buffers over it are freed now.
#[pyfunction]
fn set_pinned_pool_limit(py: Python<'_>, limit: usize) -> PyResult<()> {
    let pool = cuda::pinned_pool().map_err(to_py)?;
    py.detach(|| pool.set_limit(limit));
    Ok(())
}

/// Frees the idle pinned staging buffers; returns the bytes freed.
#[pyfunction]
fn release_pinned_pool(py: Python<'_>) -> usize {
    py.detach(cuda::release_pinned_pool)
}

/// Checks a file: footer, layout and (when it has them) every payload checksum. Returns
/// `{"tensors", "payload_len", "chunks_checked", "algorithm"}`; a corrupt file raises ValueError
/// naming the first tensor in the bad chunk.
#[pyfunction]
#[pyo3(signature = (path, io="auto", threads=0, progress=false))]
fn verify<'py>(
    py: Python<'py>,
    path: std::path::PathBuf,
    io: &str,
    threads: usize,
    progress: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let cancel = Cancel::new();
    let opts = LoadOptions {
        io: io_mode(io)?,
        threads,
        progress,
        cancel: Some(cancel.clone()),
        ..Default::default()
    };
    let r = interruptible(py, &cancel, || read::verify(&path, &opts))?;
    let d = PyDict::new(py);
    d.set_item("tensors", r.tensors)?;
    d.set_item("payload_len", r.payload_len)?;
    d.set_item("chunks_checked", r.chunks_checked)?;
    d.set_item("algorithm", r.algorithm)?;
    Ok(d)
}

/// Reads and validates a file's footer.
#[pyfunction]
fn read_footer(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Py<PyFooter>> {
    let f = py.detach(|| read::FlashFile::open(&path)).map_err(to_py)?;
    PyFooter::new(py, f.footer(), f.footer_json(), f.payload_len())
}

/// The names of every dtype the format stores.
#[pyfunction]
fn dtype_names() -> Vec<&'static str> {
    Dtype::ALL.iter().map(|d| d.name()).collect()
}

/// Packs tensors into `path`. Each entry is `(name, dtype, shape, data, tied_to)` where `data` is a
/// C-contiguous byte buffer (or None when `tied_to` names the index of the entry it shares bytes with).
#[pyfunction]
#[pyo3(signature = (path, entries, align_bytes=128, largest_first=true, threads=0, progress=false, checksums=true))]
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn pack(
    py: Python<'_>,
    path: std::path::PathBuf,
    entries: Vec<(
        String,
        String,
        Vec<u64>,
        Option<PyBuffer<u8>>,
        Option<usize>,
    )>,
    align_bytes: u64,
    largest_first: bool,
    threads: usize,
    progress: bool,
    checksums: bool,
) -> PyResult<Vec<(String, f64)>> {
    let mut specs = Vec::with_capacity(entries.len());
    for (name, dtype, shape, data, tied_to) in &entries {
        let dtype: Dtype = dtype.parse().map_err(|e| {
            PyValueError::new_err(format!("{}: tensor '{name}': {e}", path.display()))
        })?;
        let bytes: &[u8] = match data {
            Some(buf) => {
                if !buf.is_c_contiguous() {
                    return Err(PyValueError::new_err(format!(
                        "tensor '{name}': data buffer is not contiguous"
                    )));
                }
                // SAFETY: `buf` holds a Py_buffer on a live, C-contiguous exporter for the whole
                // call (`entries` outlives the slice), so `buf_ptr()..+len_bytes()` is readable.
                // The caller keeps the tensor alive and does not resize it while we run.
                unsafe { std::slice::from_raw_parts(buf.buf_ptr() as *const u8, buf.len_bytes()) }
            }
            None => &[],
        };
        let mut spec = TensorSpec::new(name.clone(), dtype, shape.clone());
        spec.tied_to = *tied_to;
        specs.push(PackEntry { spec, data: bytes });
    }
    let cancel = Cancel::new();
    let opts = PackOptions {
        align_bytes,
        order: if largest_first {
            Order::LargestFirst
        } else {
            Order::AsGiven
        },
        threads,
        progress,
        checksums,
        cancel: Some(cancel.clone()),
        ..Default::default()
    };
    let report = interruptible(py, &cancel, || write::pack(&path, &specs, &opts))?;
    Ok(phases(&report.phases))
}

/// Checks that a pack could put a file at `path` (creating its folder, as a pack does) before
/// the caller spends time preparing tensors: an existing directory, a name the OS refuses or a
/// parent that is a file is the OSError the pack would end with.
#[pyfunction]
fn prepare_pack_destination(py: Python<'_>, path: std::path::PathBuf) -> PyResult<()> {
    py.detach(|| write::prepare_destination(&path))
        .map(drop)
        .map_err(to_py)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // The engine's warnings (e.g. a server with no ETag or Last-Modified) as Python
    // RuntimeWarnings, so `warnings` filters and pytest.warns see them.
    flashpack::warning::set_handler(Some(Box::new(|message: &str| {
        Python::attach(|py| {
            let category = py.get_type::<pyo3::exceptions::PyRuntimeWarning>();
            let text = std::ffi::CString::new(message.replace('\0', " ")).unwrap_or_default();
            if let Err(e) = PyErr::warn(py, &category, &text, 1) {
                // A filter that turns warnings into errors: the message is not lost.
                e.write_unraisable(py, None);
            }
        })
    })));
    m.add_class::<Payload>()?;
    m.add_class::<File>()?;
    m.add_class::<PyFooter>()?;
    m.add_class::<Record>()?;
    m.add_function(wrap_pyfunction!(open, m)?)?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_available, m)?)?;
    m.add_function(wrap_pyfunction!(pinned_pool_stats, m)?)?;
    m.add_function(wrap_pyfunction!(set_pinned_pool_limit, m)?)?;
    m.add_function(wrap_pyfunction!(release_pinned_pool, m)?)?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(read_footer, m)?)?;
    m.add_function(wrap_pyfunction!(pack, m)?)?;
    m.add_function(wrap_pyfunction!(prepare_pack_destination, m)?)?;
    m.add_function(wrap_pyfunction!(dtype_names, m)?)?;
    m.add_function(wrap_pyfunction!(cli::cli, m)?)?;
    m.add_class::<weights::PyWeightFile>()?;
    m.add_class::<weights::Memory>()?;
    m.add_function(wrap_pyfunction!(weights::open_weights, m)?)?;
    m.add_function(wrap_pyfunction!(weights::open_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(weights::write_checkpoint_index, m)?)?;
    m.add_function(wrap_pyfunction!(weights::read_job, m)?)?;
    m.add_function(wrap_pyfunction!(weights::read_job_to_cuda, m)?)?;
    m.add_function(wrap_pyfunction!(weights::is_remote, m)?)?;
    m.add_function(wrap_pyfunction!(weights::read_url, m)?)?;
    m.add_function(wrap_pyfunction!(weights::verify_url, m)?)?;
    m.add_function(wrap_pyfunction!(weights::url_size, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
