//! The data a reader reads: an open file whose first bytes hold tensor data, the names of the
//! tensors in it (for errors), and the reader policy chosen for it.
use std::fs::File;
use std::path::Path;

use super::{resident_fraction, FlashFile, LoadOptions};
use crate::{Error, Footer};

/// The reader policy for `d` ([`crate::settings::read_plan`]: direct or buffered reads,
/// readahead, threads) and the direct handle when the policy reads direct.
///
/// Direct reads (`O_DIRECT`, macOS `F_NOCACHE`, Windows `FILE_FLAG_NO_BUFFERING`: see
/// [`crate::os`]) may be refused by the filesystem (tmpfs) at open; reads then stay buffered. The
/// direct handle is opened by path, so it is only used if it is the same file as the one whose
/// footer was validated.
pub(super) fn reader_setup(d: &DataFile<'_>, opts: &LoadOptions) -> (Option<File>, usize, bool) {
    use crate::settings::{read_plan, Residency};
    let residency = match resident_fraction(d.file, d.end) {
        Ok(r) => Residency::Fraction(r),
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => Residency::Unsupported,
        Err(_) => Residency::Unknown,
    };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let plan = read_plan(opts.io, residency, opts.threads, cores);
    let direct = plan
        .direct
        .then(|| crate::os::open_direct(d.path))
        .flatten()
        .filter(|x| crate::os::same_file(x, d.file));
    (direct, plan.threads, plan.readahead)
}

/// An open file whose bytes `[0, end)` hold tensor data (a FlashPack payload, or a whole
/// safetensors file), for the shared readers.
pub(crate) struct DataFile<'a> {
    pub path: &'a Path,
    pub file: &'a File,
    pub end: u64,
    /// The tensors in the data, to name in errors.
    pub names: TensorNames<'a>,
}

/// Where a [`DataFile`]'s tensors are, to name them in errors.
#[derive(Clone, Copy)]
pub(crate) enum TensorNames<'a> {
    Footer(&'a Footer),
    Tensors(&'a [crate::format::tensors::TensorInfo]),
}

impl TensorNames<'_> {
    /// The tensors stored in data bytes `[start, end)`, e.g. "tensor 'w'".
    pub fn describe(&self, start: u64, end: u64) -> String {
        match self {
            TensorNames::Footer(f) => f.describe_range(start, end),
            TensorNames::Tensors(ts) => crate::format::describe_tensors(
                ts.iter()
                    .filter(|t| t.start < end && start < t.end)
                    .map(|t| (t.start, t.name.as_str())),
            ),
        }
    }
}

/// A device error with the file (or URL) it happened in, and the tensors of the bytes being
/// copied when that is known; other errors unchanged.
pub(crate) fn device_error_in(
    path: &Path,
    names: &TensorNames<'_>,
    e: Error,
    copying: Option<(u64, u64)>,
) -> Error {
    match e {
        Error::Device(msg) => Error::Device(match copying {
            Some((a, b)) => format!(
                "{}: {msg} (copying bytes {a}..{b}: {})",
                path.display(),
                names.describe(a, b)
            ),
            None => format!("{}: {msg}", path.display()),
        }),
        e => e,
    }
}

impl FlashFile {
    pub(crate) fn data(&self) -> DataFile<'_> {
        DataFile {
            path: &self.path,
            file: &self.file,
            end: self.payload_len,
            names: TensorNames::Footer(&self.footer),
        }
    }
}

/// How a file's tensor bytes are read (for the reader pool and the job planner): a local file,
/// or a remote object with its index.
pub(crate) enum Backing<'a> {
    Local(DataFile<'a>),
    #[cfg(feature = "remote")]
    Remote {
        path: &'a Path,
        file: &'a crate::remote::RemoteFile,
        names: TensorNames<'a>,
    },
}

impl Backing<'_> {
    pub fn path(&self) -> &Path {
        match self {
            Backing::Local(d) => d.path,
            #[cfg(feature = "remote")]
            Backing::Remote { path, .. } => path,
        }
    }

    pub fn names(&self) -> TensorNames<'_> {
        match self {
            Backing::Local(d) => d.names,
            #[cfg(feature = "remote")]
            Backing::Remote { names, .. } => *names,
        }
    }
}

/// The error of a verified load of a file without checksums (a safetensors file): the caller
/// asked for a check the file has no data for.
pub(crate) fn no_checksums(path: &Path) -> Error {
    Error::NoChecksums {
        path: path.to_path_buf(),
        safetensors: true,
    }
}
