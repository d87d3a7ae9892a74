//! `flashpack._core`: the engine's Python face. It speaks bytes, paths and plain Python values;
//! everything torch-specific lives in the `flashpack` Python package. Every call that touches the
//! disk releases the GIL.
use std::os::raw::{c_int, c_void};

mod cli;

use flashpack::format::{Order, TensorSpec};
use flashpack::read::{self, IoMode, LoadOptions, Loaded};
use flashpack::sink::cuda::{self, CudaDevice};
use flashpack::sink::DeviceRegion;
use flashpack::write::{self, PackEntry, PackOptions};
use flashpack::{Dtype, Error};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

fn to_py(e: Error) -> PyErr {
    match e {
        Error::Io { .. } => PyOSError::new_err(e.to_string()),
        Error::Device(_) => PyRuntimeError::new_err(e.to_string()),
        _ => PyValueError::new_err(e.to_string()),
    }
}

fn blocks_of(footer: &flashpack::Footer) -> Vec<(&'static str, u64, u64, u64)> {
    footer
        .blocks
        .iter()
        .map(|b| {
            (
                b.dtype.name(),
                b.offset_bytes,
                b.length_bytes,
                b.length_elems,
            )
        })
        .collect()
}

fn io_dict<'py>(py: Python<'py>, report: &read::LoadReport) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("threads", report.threads)?;
    d.set_item("direct_bytes", report.io.direct_bytes)?;
    d.set_item("buffered_bytes", report.io.buffered_bytes)?;
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
    /// Start of the payload, taken from a `&mut` borrow when the load finished (see `__getbuffer__`).
    ptr: usize,
}

#[pymethods]
impl Payload {
    /// The footer JSON exactly as stored in the file.
    #[getter]
    fn footer_json<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.loaded.footer_json)
    }

    #[getter]
    fn payload_len(&self) -> u64 {
        self.loaded.payload_len
    }

    #[getter]
    fn eager(&self) -> bool {
        self.loaded.is_eager()
    }

    /// The validated macroblocks: `[(dtype, offset_bytes, length_bytes, length_elems), ...]`.
    #[getter]
    fn blocks(&self) -> Vec<(&'static str, u64, u64, u64)> {
        blocks_of(&self.loaded.footer)
    }

    /// Phase timings in seconds: `[(name, seconds), ...]`.
    #[getter]
    fn phases(&self) -> Vec<(String, f64)> {
        phases(&self.loaded.report.phases)
    }

    /// Reader threads used, and bytes read with O_DIRECT / through the page cache.
    #[getter]
    fn io<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        io_dict(py, &self.loaded.report)
    }

    fn __len__(&self) -> usize {
        self.loaded.payload_len as usize
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
            this.loaded.payload_len as ffi::Py_ssize_t,
        );
        // SAFETY: see above; writes through the view are allowed because the memory is either a
        // copy-on-write mapping (writes never reach the file) or memory we own. Rust never reads
        // or writes the payload again after `load` returns, so there is no aliasing on our side.
        if unsafe { ffi::PyBuffer_FillInfo(view, slf.as_ptr(), ptr, len, 0, flags) } != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}
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
    let opts = LoadOptions {
        eager,
        io: io_mode(io)?,
        threads,
        chunk_bytes,
        progress,
        huge_pages,
        verify,
    };
    let mut loaded = py.detach(|| read::load(&path, &opts)).map_err(to_py)?;
    let ptr = loaded.payload_mut().as_mut_ptr() as usize;
    Ok(Payload { loaded, ptr })
}

/// An open FlashPack file with its validated footer, for loads into device memory: the footer
/// the caller sized its allocations from is the one the load streams by (same open file).
#[pyclass(module = "flashpack._core", frozen)]
struct File {
    f: read::FlashFile,
}

#[pymethods]
impl File {
    #[getter]
    fn footer_json<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.f.footer_json)
    }

    #[getter]
    fn payload_len(&self) -> u64 {
        self.f.payload_len
    }

    /// `[(dtype, offset_bytes, length_bytes, length_elems), ...]`, as `Payload.blocks`.
    #[getter]
    fn blocks(&self) -> Vec<(&'static str, u64, u64, u64)> {
        blocks_of(&self.f.footer)
    }

    /// Streams payload ranges into CUDA memory on device `device`: `regions` is
    /// `[(payload_offset, length, device_address), ...]` (addresses of memory the caller owns,
    /// e.g. torch tensors' `data_ptr()`). Returns `(phases, io)` once every copy has completed.
    /// The GIL is released throughout.
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
        let opts = LoadOptions {
            eager: true,
            io: io_mode(io)?,
            threads,
            chunk_bytes,
            progress,
            huge_pages: false,
            verify,
        };
        let regions = regions
            .into_iter()
            .map(|(offset, len, dst)| DeviceRegion { offset, len, dst })
            .collect();
        let report = py
            .detach(|| -> flashpack::Result<read::LoadReport> {
                let dev = CudaDevice::new(device)?;
                read::load_to_device(&self.f, &dev, regions, &opts)
            })
            .map_err(to_py)?;
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
        let opts = LoadOptions {
            eager: true,
            io: io_mode(io)?,
            threads,
            chunk_bytes,
            verify,
            ..Default::default()
        };
        let (ptr, len) = (buffer.buf_ptr() as usize, buffer.len_bytes());
        let report = py
            .detach(|| {
                // SAFETY: `buffer` holds a Py_buffer on a live, writable, C-contiguous exporter
                // for the whole call, so `ptr..ptr + len` is valid for writes; the caller owns the
                // tensor behind it and does not touch it until this call returns.
                let dst = unsafe { std::slice::from_raw_parts_mut(ptr as *mut u8, len) };
                read::read_range(&self.f, offset, dst, &opts)
            })
            .map_err(to_py)?;
        io_dict(py, &report)
    }
}

/// Opens a FlashPack file and validates its footer.
#[pyfunction]
fn open(py: Python<'_>, path: std::path::PathBuf) -> PyResult<File> {
    let f = py.detach(|| read::FlashFile::open(&path)).map_err(to_py)?;
    Ok(File { f })
}

/// True when the CUDA driver loads and initialises (no GPU work is done).
#[pyfunction]
fn cuda_available(py: Python<'_>) -> bool {
    py.detach(cuda::driver_available)
}

/// Byte counts of the pinned staging pool: allocated, idle, peak, limit.
#[pyfunction]
fn pinned_pool_stats<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
    let s = cuda::pinned_pool().stats();
    let d = PyDict::new(py);
    d.set_item("allocated", s.allocated)?;
    d.set_item("idle", s.idle)?;
    d.set_item("peak", s.peak)?;
    d.set_item("limit", s.limit)?;
    Ok(d)
}

/// Sets the bound on pinned staging memory (bytes); idle buffers over it are freed now.
#[pyfunction]
fn set_pinned_pool_limit(py: Python<'_>, limit: usize) {
    py.detach(|| cuda::pinned_pool().set_limit(limit));
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
    let opts = LoadOptions {
        io: io_mode(io)?,
        threads,
        progress,
        ..Default::default()
    };
    let r = py.detach(|| read::verify(&path, &opts)).map_err(to_py)?;
    let d = PyDict::new(py);
    d.set_item("tensors", r.tensors)?;
    d.set_item("payload_len", r.payload_len)?;
    d.set_item("chunks_checked", r.chunks_checked)?;
    d.set_item("algorithm", r.algorithm)?;
    Ok(d)
}

/// Reads and validates a file's footer; returns its JSON text as stored.
#[pyfunction]
fn read_footer<'py>(py: Python<'py>, path: std::path::PathBuf) -> PyResult<Bound<'py, PyBytes>> {
    let f = py.detach(|| read::FlashFile::open(&path)).map_err(to_py)?;
    Ok(PyBytes::new(py, &f.footer_json))
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
        ..Default::default()
    };
    let report = py
        .detach(|| write::pack(&path, &specs, &opts))
        .map_err(to_py)?;
    Ok(phases(&report.phases))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Payload>()?;
    m.add_class::<File>()?;
    m.add_function(wrap_pyfunction!(open, m)?)?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_available, m)?)?;
    m.add_function(wrap_pyfunction!(pinned_pool_stats, m)?)?;
    m.add_function(wrap_pyfunction!(set_pinned_pool_limit, m)?)?;
    m.add_function(wrap_pyfunction!(release_pinned_pool, m)?)?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(read_footer, m)?)?;
    m.add_function(wrap_pyfunction!(pack, m)?)?;
    m.add_function(wrap_pyfunction!(dtype_names, m)?)?;
    m.add_function(wrap_pyfunction!(cli::cli, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
