//! Weight files of either format (FlashPack, safetensors) and multi-file loads for
//! `flashpack.load_file`, `flashpack.safe_open` and `flashpack.load_checkpoint`: the engine opens
//! and validates each file, maps it copy-on-write (lazy) or reads the requested byte ranges of
//! every file as one job (one reader pool, and for CUDA one set of pinned staging buffers).
//! Python only turns the bytes into tensors.
use std::collections::HashMap;
use std::os::raw::{c_int, c_void};
use std::path::{Path, PathBuf};

use flashpack::cancel::Cancel;
use flashpack::checkpoint::{Checkpoint, IndexKind, OpenOptions};
use flashpack::convert::write_index;
use flashpack::read::job::{self, JobPlan, JobRegion, Piece};
use flashpack::read::{self, LoadOptions};
use flashpack::remote::{self, RemoteError};
use flashpack::sink::cuda::CudaDevice;
#[cfg(feature = "remote")]
use flashpack::source::Source;
use flashpack::weights::{safetensors_shape, to_safetensors_dtype, Format, WeightFile};
use flashpack::{Error, FormatError};
use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyPermissionError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use crate::{interruptible, io_dict, io_mode, phases, to_py};

/// One tensor of a weight file: `(name, dtype, safetensors dtype or None, shape, start, end,
/// safetensors shape or None)`, `start..end` its bytes in the file; the safetensors shape
/// differs from `shape` for fp4 only (it counts 4-bit values, `shape` counts bytes).
type TensorRow = (
    String,
    &'static str,
    Option<String>,
    Vec<u64>,
    u64,
    u64,
    Option<Vec<usize>>,
);

/// A tensor that cannot be loaded: `(name, safetensors dtype, header shape, start, end,
/// message)`, the message naming the file, the tensor, its dtype and why.
type UnloadableRow = (String, String, Vec<u64>, u64, u64, String);

/// An open, validated weight file (FlashPack or safetensors).
#[pyclass(module = "flashpack._core", name = "WeightFile", frozen)]
pub(crate) struct PyWeightFile {
    f: WeightFile,
}

#[pymethods]
impl PyWeightFile {
    /// The file's path (a `pathlib.Path`), or its URL (a `str`) when it is remote.
    #[getter]
    fn path<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        location(py, &self.f)
    }

    /// True for a remote object (opened from a URL): it cannot be mapped, only read.
    #[getter]
    fn is_remote(&self) -> bool {
        self.f.is_remote()
    }

    /// A FlashPack file's validated footer, as `Payload.footer` (None for safetensors).
    #[getter]
    fn footer(&self, py: Python<'_>) -> PyResult<Option<Py<crate::PyFooter>>> {
        match (self.f.footer(), self.f.footer_json()) {
            (Some(footer), Some(json)) => {
                crate::PyFooter::new(py, footer, json, self.f.data_range().1).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// File bytes `(start, end)` that hold every tensor (a FlashPack file's payload).
    #[getter]
    fn data_range(&self) -> (u64, u64) {
        self.f.data_range()
    }

    /// "flashpack" or "safetensors".
    #[getter]
    fn format(&self) -> &'static str {
        match self.f.format() {
            Format::FlashPack => "flashpack",
            Format::Safetensors => "safetensors",
        }
    }

    /// Every tensor in file order (by offset).
    #[getter]
    fn tensors(&self) -> Vec<TensorRow> {
        self.f
            .tensors()
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    t.dtype.name(),
                    to_safetensors_dtype(t.dtype).map(|d| format!("{d:?}")),
                    t.shape.clone(),
                    t.start,
                    t.end,
                    safetensors_shape(t.dtype, &t.shape),
                )
            })
            .collect()
    }

    /// The tensors of a safetensors file that cannot be loaded (a dtype torch lacks, F6_E2M3
    /// and F6_E3M2; F4 with an odd last dimension), in file order: listed by `keys()`, an
    /// error when asked for.
    #[getter]
    fn unloadable(&self) -> Vec<UnloadableRow> {
        self.f
            .unloadable()
            .iter()
            .map(|u| {
                (
                    u.name.clone(),
                    u.dtype.clone(),
                    u.shape.clone(),
                    u.start,
                    u.end,
                    self.f.unloadable_error(u).to_string(),
                )
            })
            .collect()
    }

    /// The safetensors `__metadata__` (a FlashPack file's when converted from safetensors).
    #[getter]
    fn metadata(&self) -> Option<HashMap<String, String>> {
        self.f.safetensors_metadata()
    }

    /// A private copy-on-write mapping of the whole file: tensors are views at their `start`;
    /// nothing is read until touched and writes never reach the file.
    fn map(&self, py: Python<'_>) -> PyResult<Memory> {
        let mut map = py.detach(|| self.f.map_private()).map_err(to_py)?;
        let (ptr, len) = (map.as_mut_ptr() as usize, map.len());
        Ok(Memory {
            _memory: Box::new(map),
            ptr,
            len,
        })
    }
}

/// `path` as Python shows it: a `pathlib.Path`, or the URL as a `str` for a remote file (a
/// `Path` would fold its `//`).
fn location<'py>(py: Python<'py>, f: &WeightFile) -> PyResult<Bound<'py, PyAny>> {
    if f.is_remote() {
        return Ok(PyString::new(py, &f.path().to_string_lossy()).into_any());
    }
    f.path().into_pyobject(py).map(Bound::into_any)
}

/// The URL in `path` (a `str` from Python), if it is one the engine reads.
fn url_of(path: &Path) -> Option<&str> {
    path.to_str().filter(|s| remote::is_remote(s))
}

/// Opens a FlashPack or safetensors file (told apart by content) and validates its index:
/// a local path, or a URL (`http(s)://`, `s3://`, `hf://`), of which only the index is fetched.
/// The engine decides which ([`WeightFile::open_location_with`]); Ctrl-C stops a URL's requests
/// at once (a stalled server included).
#[pyfunction]
pub(crate) fn open_weights(py: Python<'_>, path: PathBuf) -> PyResult<PyWeightFile> {
    let cancel = Cancel::new();
    let location = remote::LocationOptions::cancelled_by(&cancel);
    let f = interruptible(py, &cancel, || {
        WeightFile::open_location_with(&path, &location)
    })?;
    Ok(PyWeightFile { f })
}

/// Opens the weight file at `url` (a URL only: `verify_url`'s), its requests stopped by `cancel`.
#[cfg(feature = "remote")]
fn open_file_url(url: &str, cancel: &Cancel) -> flashpack::Result<WeightFile> {
    WeightFile::open_url(url, settings(cancel)?)
}

#[cfg(not(feature = "remote"))]
fn open_file_url(url: &str, _cancel: &Cancel) -> flashpack::Result<WeightFile> {
    WeightFile::open_location(url)
}

/// Remote settings from the environment, stopped by `cancel` (a Ctrl-C during the call).
#[cfg(feature = "remote")]
fn settings(cancel: &Cancel) -> flashpack::Result<remote::RemoteSettings> {
    Ok(remote::RemoteSettings::from_env()?.with_cancel(Some(cancel.clone())))
}

/// Opens a checkpoint (a weight file, an index json, or a folder holding one of those; `variant`
/// picks e.g. `fp16` files in a folder) and validates it: the index and the shards agree. Returns
/// `(resolved path, shards)`, the shards sorted by name, each tensor in exactly one of them.
/// A URL names a weight file or an index json (ending in `.json`), whose shards are the objects
/// beside it; the resolved location is then the URL (a `str`).
#[pyfunction]
#[pyo3(signature = (path, variant=None))]
pub(crate) fn open_checkpoint<'py>(
    py: Python<'py>,
    path: PathBuf,
    variant: Option<String>,
) -> PyResult<(Bound<'py, PyAny>, Vec<PyWeightFile>)> {
    let opts = OpenOptions { variant };
    let cancel = Cancel::new();
    let location = remote::LocationOptions::cancelled_by(&cancel);
    let ckpt = interruptible(py, &cancel, || {
        Checkpoint::open_location_with(&path, &opts, &location)
    })?;
    // A URL's resolved location is the URL (a `str`), a local one a path.
    let resolved = match url_of(ckpt.path()) {
        Some(url) => url.into_pyobject(py)?.into_any(),
        None => ckpt.path().into_pyobject(py)?.into_any(),
    };
    let shards = ckpt
        .into_shards()
        .into_iter()
        .map(|s| PyWeightFile { f: s.into_file() })
        .collect();
    Ok((resolved, shards))
}

/// Writes a checkpoint index json at `path` for weight files `files` (each inside the index's
/// folder): `kind` "safetensors" (`*.safetensors.index.json`, as transformers writes) or
/// "flashpack" (the multi-file FlashPack index: every file a FlashPack file, with its size and
/// footer digest). Atomic; a tensor in two files is an error naming both.
#[pyfunction]
pub(crate) fn write_checkpoint_index(
    py: Python<'_>,
    path: PathBuf,
    kind: &str,
    files: Vec<PathBuf>,
) -> PyResult<()> {
    let kind = match kind {
        "safetensors" => IndexKind::Safetensors,
        "flashpack" => IndexKind::FlashPack,
        other => {
            return Err(PyValueError::new_err(format!(
                "index kind must be 'safetensors' or 'flashpack', not {other:?}"
            )))
        }
    };
    py.detach(|| write_index(&path, kind, &files, Default::default()))
        .map_err(to_py)
}

/// Loaded bytes (a copy-on-write mapping or owned memory), through the writable buffer protocol
/// so that `torch.frombuffer` views them without a copy; alive as long as any view is.
#[pyclass(module = "flashpack._core", frozen)]
pub(crate) struct Memory {
    /// The mapping or owned memory, only held: its bytes are reached through `ptr`.
    _memory: Box<dyn std::any::Any + Send + Sync>,
    /// Start of the memory, taken from a `&mut` borrow when it was made (as `Payload`'s).
    ptr: usize,
    len: usize,
}

#[pymethods]
impl Memory {
    fn __len__(&self) -> usize {
        self.len
    }

    /// # Safety
    /// Called by CPython with a valid `view` to fill. The pointer stays valid while this object
    /// lives (the buffer's `obj` reference); the memory is a private mapping or owned memory that
    /// never moves, and Rust never touches it again after the load returned.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let this = slf.get();
        let (ptr, len) = (this.ptr as *mut c_void, this.len as ffi::Py_ssize_t);
        // SAFETY: see above; writes through the view are allowed (copy-on-write or owned).
        unsafe { crate::export_buffer(slf.as_any(), view, ptr, len, flags) }
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}
}

/// The job reading `pieces` of `files`; `verify`: one that checks the FlashPack checksums of
/// every chunk it reads (its spans widened to whole checksum chunks).
fn plan(files: &[&WeightFile], pieces: &[(usize, u64, u64)], verify: bool) -> PyResult<JobPlan> {
    let pieces: Vec<Piece> = pieces
        .iter()
        .map(|&(file, start, end)| Piece { file, start, end })
        .collect();
    if verify {
        JobPlan::verified(files, &pieces).map_err(to_py)
    } else {
        JobPlan::new(files, &pieces).map_err(to_py)
    }
}

#[allow(clippy::too_many_arguments)]
fn job_options(
    io: &str,
    threads: usize,
    chunk_bytes: usize,
    progress: bool,
    huge_pages: bool,
    verify: bool,
    cancel: &Cancel,
) -> PyResult<LoadOptions> {
    Ok(LoadOptions {
        eager: true,
        io: io_mode(io)?,
        threads,
        chunk_bytes,
        progress,
        huge_pages,
        verify,
        cancel: Some(cancel.clone()),
    })
}

/// Reads byte ranges `pieces` (`[(file index, start, end), ...]`) of `files` (local, remote or
/// both) into new owned host memory as one job. Returns `(memory, offsets, phases, io)`: piece
/// `i` is at `offsets[i]`. `verify` checks the FlashPack checksums of every chunk read (a
/// ValueError naming the tensor on a mismatch; refused for safetensors files, which have none).
#[pyfunction]
#[pyo3(signature = (files, pieces, io="auto", threads=0, chunk_bytes=read::DEFAULT_READ_CHUNK_BYTES, progress=false, huge_pages=false, verify=false))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub(crate) fn read_job<'py>(
    py: Python<'py>,
    files: Vec<Py<PyWeightFile>>,
    pieces: Vec<(usize, u64, u64)>,
    io: &str,
    threads: usize,
    chunk_bytes: usize,
    progress: bool,
    huge_pages: bool,
    verify: bool,
) -> PyResult<(Memory, Vec<u64>, Vec<(String, f64)>, Bound<'py, PyDict>)> {
    let refs: Vec<&WeightFile> = files.iter().map(|f| &f.get().f).collect();
    let plan = plan(&refs, &pieces, verify)?;
    let cancel = Cancel::new();
    let opts = job_options(
        io,
        threads,
        chunk_bytes,
        progress,
        huge_pages,
        verify,
        &cancel,
    )?;
    let (mut memory, report) = interruptible(py, &cancel, || job::read_host(&refs, &plan, &opts))?;
    let offsets = (0..pieces.len())
        .map(|i| plan.offset(i).unwrap_or(0))
        .collect();
    let slice = memory.as_mut_slice();
    let (ptr, len) = (slice.as_mut_ptr() as usize, slice.len());
    let memory = Memory {
        _memory: Box::new(memory),
        ptr,
        len,
    };
    Ok((
        memory,
        offsets,
        phases(&report.phases),
        io_dict(py, &report)?,
    ))
}

/// Streams byte ranges of `files` into CUDA memory on device `device` as one job through the
/// pinned staging pool: `pieces` is `[(file index, start, end, device address), ...]`. Returns
/// `(phases, io)` once every copy has completed; the caller's current CUDA context is unchanged.
///
/// Private API, as `File.to_cuda`, and unsafe in Python's sense: the addresses must be device
/// memory the caller owns, each `end - start` bytes long, that nothing else uses during the
/// call. Nothing here can check that (the driver only refuses unmapped addresses; a wrong
/// mapped one overwrites other memory), so only `flashpack.loading._load_cuda` calls it, with
/// the addresses of tensors it has just allocated.
///
/// Remote files stream through the same pinned pool (parallel ranged GETs into staging
/// buffers); `verify` as for [`read_job`].
#[pyfunction]
#[pyo3(signature = (files, pieces, device, io="auto", threads=0, chunk_bytes=read::DEFAULT_READ_CHUNK_BYTES, progress=false, verify=false))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub(crate) fn read_job_to_cuda<'py>(
    py: Python<'py>,
    files: Vec<Py<PyWeightFile>>,
    pieces: Vec<(usize, u64, u64, u64)>,
    device: usize,
    io: &str,
    threads: usize,
    chunk_bytes: usize,
    progress: bool,
    verify: bool,
) -> PyResult<(Vec<(String, f64)>, Bound<'py, PyDict>)> {
    let refs: Vec<&WeightFile> = files.iter().map(|f| &f.get().f).collect();
    let ranges: Vec<(usize, u64, u64)> = pieces.iter().map(|&(f, s, e, _)| (f, s, e)).collect();
    let plan = plan(&refs, &ranges, verify)?;
    let regions: Vec<JobRegion> = pieces
        .iter()
        .enumerate()
        .map(|(piece, &(_, _, _, dst))| JobRegion { piece, dst })
        .collect();
    if regions.is_empty() {
        return Err(PyValueError::new_err("read_job_to_cuda: no pieces to load"));
    }
    let cancel = Cancel::new();
    let opts = job_options(io, threads, chunk_bytes, progress, false, verify, &cancel)?;
    // Interrupted, the job stops between chunks and waits for the copies in flight.
    let report = interruptible(py, &cancel, || {
        let dev = CudaDevice::new(device)?;
        // SAFETY: this private function's contract: the addresses are device memory the caller
        // owns, one piece long each, untouched by anything else until this returns.
        unsafe { job::read_cuda(&refs, &plan, &dev, &regions, &opts) }
    })?;
    Ok((phases(&report.phases), io_dict(py, &report)?))
}

/// The exception for a URL's failure (`message` names the URL and says what went wrong), as for
/// a local file: a missing object is `FileNotFoundError`, refused access `PermissionError` (both
/// with `errno` set), a malformed URL `ValueError`, any other failure an `OSError`.
pub(crate) fn remote_error(e: &RemoteError, message: String) -> PyErr {
    match e {
        RemoteError::NotFound => PyFileNotFoundError::new_err((ENOENT, message)),
        RemoteError::Denied { .. } => PyPermissionError::new_err((EACCES, message)),
        RemoteError::BadUrl(_) => PyValueError::new_err(message),
        _ => PyOSError::new_err(message),
    }
}

/// A checkpoint's shard at a URL that could not be fetched (`message` names the index and the
/// shard): as [`remote_error`]; None when the shard's failure is not a remote one.
pub(crate) fn shard_remote_error(shard: &Error, message: String) -> Option<PyErr> {
    match shard {
        Error::Remote { source, .. } => Some(remote_error(source, message)),
        _ => None,
    }
}

/// `errno` values of the `OSError`s for a missing object and refused access (the same on every
/// platform Python runs on).
const ENOENT: i32 = 2;
const EACCES: i32 = 13;

/// True when `location` is a URL the engine reads (`http://`, `https://`, `s3://`, `hf://`)
/// rather than a local path (any path, a name that is not UTF-8 included).
#[pyfunction]
pub(crate) fn is_remote(location: PathBuf) -> bool {
    url_of(&location).is_some()
}

/// The whole object at `url` (a config or an index json), at most `limit` bytes: a larger
/// object is a ValueError naming the URL and its size, before anything is fetched. Ctrl-C stops
/// it at once (KeyboardInterrupt): the request in flight is dropped.
#[pyfunction]
pub(crate) fn read_url<'py>(
    py: Python<'py>,
    url: &str,
    limit: u64,
) -> PyResult<Bound<'py, PyBytes>> {
    let cancel = Cancel::new();
    let bytes = interruptible(py, &cancel, || read_small(url, limit, &cancel))?;
    Ok(PyBytes::new(py, &bytes))
}

/// The size in bytes of the object at `url` (one HEAD request): a missing object is a
/// FileNotFoundError naming the URL, refused access a PermissionError. For probing which of
/// a model folder's files exist at a URL.
#[pyfunction]
pub(crate) fn url_size(py: Python<'_>, url: &str) -> PyResult<u64> {
    let cancel = Cancel::new();
    interruptible(py, &cancel, || remote_size(url, &cancel))
}

#[cfg(feature = "remote")]
fn remote_size(url: &str, cancel: &Cancel) -> flashpack::Result<u64> {
    Source::open_url(url, settings(cancel)?).map(|s| s.len())
}

#[cfg(not(feature = "remote"))]
fn remote_size(url: &str, _cancel: &Cancel) -> flashpack::Result<u64> {
    Err(Error::remote(url, RemoteError::NotBuilt))
}

/// Checks the remote FlashPack file at `url` without keeping it: its footer and layout (as
/// every open does), then every payload chunk against its checksum as the parts arrive
/// (parallel ranged GETs into per-thread scratch buffers, so memory stays bounded). Returns
/// `{"tensors", "payload_len", "chunks_checked", "algorithm"}` as `verify` does for a path;
/// a corrupt chunk is a ValueError naming the URL and the tensors in it; Ctrl-C stops it.
#[pyfunction]
#[pyo3(signature = (url, threads=0, progress=false))]
pub(crate) fn verify_url<'py>(
    py: Python<'py>,
    url: &str,
    threads: usize,
    progress: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let cancel = Cancel::new();
    let opts = LoadOptions {
        threads,
        progress,
        cancel: Some(cancel.clone()),
        ..Default::default()
    };
    let report = interruptible(py, &cancel, || {
        let wf = open_file_url(url, &cancel)?;
        if wf.format() != Format::FlashPack {
            // What verifying a local safetensors file says (it has no FlashPack trailer).
            return Err(Error::format(url, FormatError::BadMagic));
        }
        let report = wf.verify(&opts)?;
        Ok(report)
    })?;
    let d = PyDict::new(py);
    d.set_item("tensors", report.tensors)?;
    d.set_item("payload_len", report.payload_len)?;
    d.set_item("chunks_checked", report.chunks_checked)?;
    d.set_item("algorithm", report.algorithm)?;
    Ok(d)
}

#[cfg(feature = "remote")]
fn read_small(url: &str, limit: u64, cancel: &Cancel) -> flashpack::Result<Vec<u8>> {
    let file = Source::open_url(url, settings(cancel)?)?;
    if file.len() > limit {
        return Err(Error::BadOption {
            path: url.into(),
            option: "limit",
            value: limit.to_string(),
            why: format!(
                "is too small: the object is {} bytes, over the limit for a whole-object read",
                file.len()
            ),
        });
    }
    let len = usize::try_from(file.len()).map_err(|_| Error::OutOfMemory {
        bytes: file.len(),
        what: format!("{url}: a whole-object read"),
    })?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, 0)?;
    Ok(buf)
}

#[cfg(not(feature = "remote"))]
fn read_small(url: &str, _limit: u64, _cancel: &Cancel) -> flashpack::Result<Vec<u8>> {
    Err(Error::remote(url, RemoteError::NotBuilt))
}
