//! The crate-wide error type: every failure names the file and, where there is one, the tensor.
//!
//! Pure format problems are [`FormatError`]s (no I/O, no path); the I/O layers wrap them with the
//! path of the file they concern.
//!
//! ```
//! use flashpack::{Error, FormatError};
//! let e = Error::format("model.flashpack", FormatError::BadMagic);
//! assert!(e.to_string().starts_with("model.flashpack: "));
//! ```
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::format::tensors::Target;
use crate::format::{FormatError, CHECKPOINT_INDEX_KEY};

pub(crate) mod remote;
use remote::RemoteError;

/// Crate-wide result alias.
pub type Result<T> = std::result::Result<T, Error>;

/// Any error the engine returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system call on `path` failed. `source` keeps the OS error code (for a pack,
    /// `path` is the destination, whatever failed underneath it).
    #[error("{}: {op} failed: {source}", path.display())]
    Io {
        /// The file (or folder) concerned.
        path: PathBuf,
        /// The step that failed (e.g. "open", "read footer").
        op: Cow<'static, str>,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `path` is not a regular file (a FIFO, a socket, a device): refused before anything could
    /// block on it.
    #[error("{}: is a {kind}, not a regular file", path.display())]
    NotAFile {
        /// The file (or folder) concerned.
        path: PathBuf,
        /// What it is instead ("FIFO", "socket", ...).
        kind: &'static str,
    },
    /// The operation was stopped through its [`Cancel`](crate::cancel::Cancel) before it was
    /// done; a pack left its destination as it was.
    #[error("{}: interrupted", path.display())]
    Cancelled {
        /// The file (or folder) concerned.
        path: PathBuf,
    },
    /// The file (or the tensors given to the packer) break the format contract.
    #[error("{}: {source}", path.display())]
    Format {
        /// The file (or folder) concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: FormatError,
    },
    /// A safetensors file is not valid (or tensors cannot be written as one): `source` says
    /// what is wrong and names the tensor at fault where one is.
    #[error("{}: {source}", path.display())]
    Safetensors {
        /// The file (or URL) concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Box<SafetensorsError>,
    },
    /// A checkpoint (an index json and its shard files, or a folder holding one) is not usable:
    /// `path` is the index file (or the folder, or the single weight file), `source` says what
    /// is wrong and names the shard and the tensor.
    #[error("{}: {source}", path.display())]
    Checkpoint {
        /// The file (or folder) concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Box<CheckpointError>,
    },
    /// Reading a remote object (`http(s)://`, `s3://`) failed: `url` is the object's URL as
    /// given, `source` says what went wrong (after the retries, where retrying could help).
    #[error("{url}: {source}")]
    Remote {
        /// The object's URL as given.
        url: String,
        /// The underlying error.
        #[source]
        source: Box<RemoteError>,
    },
    /// A conversion (see [`crate::convert`]) cannot be done as asked: `path` is the source,
    /// the destination or the file concerned, `source` says what is wrong.
    #[error("{}: {source}", path.display())]
    Convert {
        /// The file (or folder) concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Box<ConvertError>,
    },
    /// The caller asked for something that cannot be done: a bad option, a range outside the
    /// payload, a check the file has no data for. The text names what and where.
    #[error("{0}")]
    Invalid(String),
    /// An environment setting (`FLASHPACK_*`) the engine cannot use: the variable, its value
    /// as set (`None` when it is not valid Unicode) and why.
    #[error("{}", bad_setting(name, value.as_deref(), why))]
    BadSetting {
        /// The environment variable.
        name: String,
        /// Its value, where it is valid Unicode.
        value: Option<String>,
        /// What is wrong with it (e.g. "is not a positive number of bytes").
        why: String,
    },
    /// A check was asked of a file that carries no checksums: a FlashPack file written without
    /// them (`safetensors: false`), or a safetensors file (`safetensors: true`).
    #[error("{}: {}", path.display(), if *safetensors {
        "safetensors files carry no checksums to verify"
    } else {
        "the file has no checksums to verify (it was written without them)"
    })]
    NoChecksums {
        /// The file (or URL).
        path: PathBuf,
        /// Whether it is a safetensors file.
        safetensors: bool,
    },
    /// A byte range asked of a file or buffer that does not lie inside it.
    #[error("{}: range {offset}+{len} lies outside the {size}-byte {within}", path.display())]
    OutOfRange {
        /// The file, or the buffer's name.
        path: PathBuf,
        /// Where the range starts.
        offset: u64,
        /// Its length in bytes.
        len: u64,
        /// The size of what it should lie in.
        size: u64,
        /// What it should lie in: "payload", "buffer", "file's tensor data".
        within: &'static str,
    },
    /// A tensor asked for by name is not in the file (or load).
    #[error("{}: no tensor '{tensor}'", path.display())]
    TensorNotFound {
        /// The file.
        path: PathBuf,
        /// The name asked for.
        tensor: String,
    },
    /// An option the caller passed cannot be used: which, its value, why.
    #[error("{}: {option} {value} {why}", path.display())]
    BadOption {
        /// The file the call was about.
        path: PathBuf,
        /// The option's name (as the API spells it).
        option: &'static str,
        /// Its value, as given.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// The pinned pool's limit (`FLASHPACK_PINNED_POOL_BYTES`, or
    /// `PinnedPool::set_limit`) leaves too little for the staging buffers a device load needs:
    /// raise the limit.
    #[error(
        "{}: {buffers} staging buffers of {buffer_bytes} bytes need {need} bytes of pinned memory, \
         over the {available} bytes the pinned pool limit of {limit} bytes leaves{}{}",
        path.display(),
        leaked_note(limit.saturating_sub(*available)),
        if *checksum_chunks {
            " (the file's checksum chunks, which verified reads need whole)"
        } else {
            ""
        }
    )]
    PinnedLimitTooSmall {
        /// The file loaded (a job's first file).
        path: PathBuf,
        /// How many staging buffers.
        buffers: usize,
        /// Bytes of each.
        buffer_bytes: usize,
        /// Bytes they need together (saturating).
        need: u64,
        /// What the limit leaves: the limit less the pinned memory given up after failed device
        /// calls (the message names that part).
        available: u64,
        /// The limit.
        limit: u64,
        /// Whether the buffer size is the file's checksum chunk size (verified loads).
        checksum_chunks: bool,
    },
    /// A device (GPU) call failed, or no usable device driver was found.
    #[error("{0}")]
    Device(String),
    /// Host memory cannot hold `bytes` more bytes for `what` (an allocation the OS refused).
    /// Nothing is wrong with the file: a smaller load, fewer threads or more memory helps.
    #[error("cannot allocate {bytes} bytes of host memory for {what}")]
    OutOfMemory {
        /// How many bytes were asked for.
        bytes: u64,
        /// What they were for, or what differs.
        what: String,
    },
    /// Something valid that this build cannot do: a checksum algorithm it does not know, a
    /// dtype the target library has no type for, a feature it was built without.
    #[error("{0}")]
    Unsupported(String),
    /// candle refused a tensor of `path` (see [`crate::candle`]); `source` is candle's error.
    #[cfg(feature = "candle")]
    #[error("{}: tensor '{tensor}': {source}", path.display())]
    Candle {
        /// The file (or folder) concerned.
        path: PathBuf,
        /// The tensor concerned.
        tensor: String,
        /// The underlying error.
        #[source]
        source: Box<candle_core::Error>,
    },
    /// A broken internal invariant: a bug in this crate, reported instead of a panic.
    #[error("internal error (a bug, please report it): {0}")]
    Internal(String),
}

/// What is wrong with a safetensors file, or with tensors to be written as one (see
/// [`Error::Safetensors`], which names the file).
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    /// The file is too short to hold a safetensors header length (8 bytes).
    #[error("{NOT_A_WEIGHT_FILE}: {len} bytes is too small")]
    TooSmall {
        /// The file's size in bytes.
        len: u64,
    },
    /// The header length is over the format's limit or past the end of the file.
    #[error("{NOT_A_WEIGHT_FILE}: header length {header_len} is over the limit or past the end of the {len}-byte file")]
    HeaderLength {
        /// The header length the file's first 8 bytes give.
        header_len: u64,
        /// The file's size in bytes.
        len: u64,
    },
    /// The `safetensors` crate refused the header (its error is `source`); `tensor` and
    /// `detail` name the tensor at fault and why, where one could be found.
    #[error("{NOT_A_WEIGHT_FILE}: {source}{}", at_fault(.tensor, .detail))]
    Header {
        /// The tensor at fault, where the header names one.
        tensor: Option<String>,
        /// What is wrong with that tensor.
        detail: Option<String>,
        /// The `safetensors` crate's error.
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// The header is not JSON shaped like a safetensors header.
    #[error("{NOT_A_WEIGHT_FILE}: header: {source}")]
    HeaderJson {
        /// The JSON parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A tensor's entry does not fit the file: its shape and dtype do not match its byte range,
    /// or its bytes are not where the tensors before it end.
    #[error("{NOT_A_WEIGHT_FILE}: tensor '{tensor}': {detail}")]
    BadTensor {
        /// The tensor concerned.
        tensor: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The tensors' data does not end where the file ends.
    #[error("{NOT_A_WEIGHT_FILE}: the tensors end at byte {tensors_end}, the file at {len}")]
    TrailingBytes {
        /// One past the last tensor's last byte.
        tensors_end: u64,
        /// The file's size in bytes.
        len: u64,
    },
    /// The header of a file to be written cannot be built (the `safetensors` crate's or the
    /// JSON encoder's error is `source`).
    #[error("cannot build the safetensors header: {source}")]
    Encode {
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The header of a file to be written would be over the format's limit.
    #[error("the safetensors header would be {len} bytes, over the format's limit of {limit}")]
    HeaderTooLarge {
        /// The header's length in bytes.
        len: usize,
        /// The largest header the format allows.
        limit: usize,
    },
}

const NOT_A_WEIGHT_FILE: &str = "not a FlashPack file (no magic) nor a valid safetensors file";

/// ": tensor 'name': why" for a header error that names its tensor, else nothing.
fn at_fault(tensor: &Option<String>, detail: &Option<String>) -> String {
    match (tensor, detail) {
        (Some(t), Some(d)) => format!(": tensor '{t}': {d}"),
        (Some(t), None) => format!(": tensor '{t}'"),
        _ => String::new(),
    }
}

/// What is wrong with a checkpoint (see [`Error::Checkpoint`], which names the index file).
/// Shard names are as the index writes them (relative to the index's folder).
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The index is not valid JSON, or not shaped like a checkpoint index.
    #[error("not a valid checkpoint index: {reason}")]
    Malformed {
        /// What is wrong with it.
        reason: String,
    },
    /// The index file is larger than any real index (refused before it is read).
    #[error("the index is {size} bytes, over the limit of {limit}")]
    IndexTooLarge {
        /// The index file's size in bytes.
        size: u64,
        /// The largest index accepted, in bytes.
        limit: u64,
    },
    /// A FlashPack index of a format version this build does not read.
    #[error("unsupported index format '{format}' version {version} (this build reads '{supported}' version 1)")]
    UnsupportedIndex {
        /// The index's format name.
        format: String,
        /// The index's format version.
        version: u64,
        /// The format name this build reads.
        supported: &'static str,
    },
    /// The index lists no tensor at all.
    #[error("the index lists no tensors")]
    Empty,
    /// A tensor appears twice in the index's `weight_map`.
    #[error("tensor '{tensor}' is listed twice in weight_map")]
    DuplicateEntry {
        /// The tensor concerned.
        tensor: String,
    },
    /// A shard name that would leave the index's folder (`..`, an absolute path, a drive).
    #[error(
        "shard '{shard}' (of tensor '{tensor}') is not a plain file name inside the index's folder"
    )]
    ShardOutsideFolder {
        /// The shard file, as the index names it.
        shard: String,
        /// The tensor concerned.
        tensor: String,
    },
    /// A shard named by the index does not exist.
    #[error("shard '{shard}' (holding tensor '{tensor}') does not exist")]
    ShardMissing {
        /// The shard file, as the index names it.
        shard: String,
        /// The tensor concerned.
        tensor: String,
    },
    /// A shard cannot be opened or is not a valid weight file; `source` says why (an OS error
    /// keeps [`Error::is_data_error`] false).
    #[error("shard '{shard}' (holding tensor '{tensor}'): {source}")]
    BadShard {
        /// The shard file, as the index names it.
        shard: String,
        /// The tensor concerned.
        tensor: String,
        /// The underlying error.
        #[source]
        source: Box<Error>,
    },
    /// The index maps a tensor to a shard that does not hold it.
    #[error("tensor '{tensor}' is listed in shard '{shard}' but that file does not hold it")]
    TensorNotInShard {
        /// The tensor concerned.
        tensor: String,
        /// The shard file, as the index names it.
        shard: String,
    },
    /// A tensor is stored in two shards (the index maps it to `listed`).
    #[error("tensor '{tensor}' is in shard '{listed}' and also in shard '{other}'")]
    TensorInTwoShards {
        /// The tensor concerned.
        tensor: String,
        /// The shard the index lists the tensor in.
        listed: String,
        /// The other shard that holds it too.
        other: String,
    },
    /// A shard holds a tensor the index does not list (the index is stale or incomplete).
    #[error("shard '{shard}' holds tensor '{tensor}', which the index does not list")]
    TensorNotInIndex {
        /// The tensor concerned.
        tensor: String,
        /// The shard file, as the index names it.
        shard: String,
    },
    /// A FlashPack index's recorded size or footer digest of a shard does not match the file:
    /// the shard was replaced or changed after the index was written.
    #[error(
        "shard '{shard}' (holding tensor '{tensor}') changed since the index was written: {what}"
    )]
    ShardChanged {
        /// The shard file, as the index names it.
        shard: String,
        /// The tensor concerned.
        tensor: String,
        /// What they were for, or what differs.
        what: String,
    },
    /// A FlashPack index lists a shard that is not a FlashPack file.
    #[error("shard '{shard}' (holding tensor '{tensor}') is not a FlashPack file, as a FlashPack index requires")]
    NotAFlashPackShard {
        /// The shard file, as the index names it.
        shard: String,
        /// The tensor concerned.
        tensor: String,
    },
    /// A folder holds no index json and no weight file (of the requested variant).
    #[error("no checkpoint here: {looked_for}")]
    NothingFound {
        /// What was looked for.
        looked_for: String,
    },
    /// A folder holds several indexes or weight files and nothing says which one to use.
    #[error("ambiguous checkpoint: it holds {} (pass one of them, or a variant)", .candidates.join(", "))]
    Ambiguous {
        /// The files that could each be the checkpoint.
        candidates: Vec<String>,
    },
}

impl Error {
    /// Wraps a checkpoint problem with the index file (or folder) it was found in.
    pub fn checkpoint(path: impl AsRef<Path>, source: CheckpointError) -> Self {
        Error::Checkpoint {
            path: path.as_ref().to_path_buf(),
            source: Box::new(source),
        }
    }

    /// Wraps a conversion problem with the file (or folder) it concerns.
    pub fn convert(path: impl AsRef<Path>, source: ConvertError) -> Self {
        Error::Convert {
            path: path.as_ref().to_path_buf(),
            source: Box::new(source),
        }
    }

    /// Wraps a safetensors problem with the file (or URL) it was found in.
    pub fn safetensors(path: impl AsRef<Path>, source: SafetensorsError) -> Self {
        Error::Safetensors {
            path: path.as_ref().to_path_buf(),
            source: Box::new(source),
        }
    }

    /// Wraps a remote-read problem with the object's URL.
    pub fn remote(url: impl Into<String>, source: RemoteError) -> Self {
        Error::Remote {
            url: url.into(),
            source: Box::new(source),
        }
    }

    pub(crate) fn io(
        path: impl AsRef<Path>,
        op: impl Into<Cow<'static, str>>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            op: op.into(),
            source,
        }
    }

    pub(crate) fn out_of_memory(bytes: u64, what: impl Into<String>) -> Self {
        Error::OutOfMemory {
            bytes,
            what: what.into(),
        }
    }

    /// Wraps a format problem with the file it was found in.
    pub fn format(path: impl AsRef<Path>, source: FormatError) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// True for errors caused by the file's or caller's data, not by the OS (or an interruption).
    pub fn is_data_error(&self) -> bool {
        match self {
            Error::Io { .. }
            | Error::Device(_)
            | Error::Cancelled { .. }
            | Error::OutOfMemory { .. }
            | Error::Internal(_) => false,
            Error::Remote { source, .. } => source.is_data_error(),
            Error::Convert { source, .. } => source.is_data_error(),
            Error::Checkpoint { source, .. } => match source.as_ref() {
                CheckpointError::BadShard { source, .. } => source.is_data_error(),
                _ => true,
            },
            _ => true,
        }
    }
}

/// The part of the pinned pool's limit given up after failed device operations, as a note to a
/// message about the limit (empty when none was).
pub(crate) fn leaked_note(leaked: u64) -> String {
    if leaked == 0 {
        String::new()
    } else {
        format!(
            ", of which {leaked} bytes were given up after failed device operations (raise the \
             limit, or restart the process)"
        )
    }
}

/// `NAME="value" why`, or `NAME: why` for a value that is not Unicode.
fn bad_setting(name: &str, value: Option<&str>, why: &str) -> String {
    match value {
        Some(v) => format!("{name}={v:?} {why}"),
        None => format!("{name}: {why}"),
    }
}

/// Why a conversion cannot be done as asked (see [`Error::Convert`], which names the file):
/// options that do not fit the source or the destination, a source that cannot be written as
/// asked, a destination that is not a new file or an empty folder. The texts name the options as
/// the `flashpack` command spells them (`--to`, `--max-shard-size`, ...), which are
/// [`ConvertOptions`](crate::convert::ConvertOptions)'s fields.
///
/// ```
/// use flashpack::convert::{ConvertError, Target};
/// use flashpack::Error;
/// let e = Error::convert("out.safetensors", ConvertError::TargetMismatch {
///     to: Target::Flashpack,
///     extension: Target::Safetensors,
/// });
/// assert_eq!(
///     e.to_string(),
///     "out.safetensors: --to flashpack does not match the destination's .safetensors extension"
/// );
/// ```
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The output format asked for (`to`) is not the one the destination's extension names.
    #[error(
        "--to {} does not match the destination's .{} extension",
        to.extension(),
        extension.extension()
    )]
    TargetMismatch {
        /// The format asked for.
        to: Target,
        /// The format the destination's extension names.
        extension: Target,
    },
    /// Checksums off, an alignment or tensors left out were asked of a safetensors output.
    #[error("--no-checksums, --align-bytes and --ignore-* apply to FlashPack output only")]
    FlashPackOnlyOptions,
    /// A sharded output was asked for without a destination folder.
    #[error("--sharded and --max-shard-size write a folder: give it as the destination")]
    NeedsDestinationFolder,
    /// The filter left no tensor to write.
    #[error("every tensor was left out by --ignore-names/--ignore-prefixes/--ignore-suffixes")]
    EverythingIgnored,
    /// A sharded output keeping the source's split, of a single file that remembers none.
    #[error(
        "one file, and not converted from a sharded checkpoint, so it has no split to keep: \
         give --max-shard-size"
    )]
    NoSplitToKeep,
    /// A tensor the remembered split does not place.
    #[error(
        "tensor '{tensor}' is not in the remembered shard split (footer key \
         '{CHECKPOINT_INDEX_KEY}'): give --max-shard-size"
    )]
    NotInRememberedSplit {
        /// The tensor concerned.
        tensor: String,
    },
    /// Shards with different safetensors `__metadata__` merged into one file.
    #[error(
        "shard '{shard}' has other safetensors __metadata__ than shard '{first}' ({metadata:?} \
         vs {first_metadata:?}), and one file can keep only one; convert with --sharded to keep \
         each"
    )]
    MixedMetadata {
        /// The shard whose metadata differ.
        shard: String,
        /// The first shard.
        first: String,
        /// `shard`'s `__metadata__`.
        metadata: Option<HashMap<String, String>>,
        /// The first shard's `__metadata__`.
        first_metadata: Option<HashMap<String, String>>,
    },
    /// A pack's footer key [`CHECKPOINT_INDEX_KEY`] is not an index it could remember.
    #[error("footer key '{CHECKPOINT_INDEX_KEY}' is not a remembered index: {why}")]
    BadRememberedIndex {
        /// What is wrong with it.
        why: String,
    },
    /// A file name to write (from a remembered index) that would leave the destination.
    #[error("refusing to write '{name}': not a file name inside the destination")]
    NotInsideDestination {
        /// The name refused.
        name: String,
    },
    /// Writing one file of a sharded output failed (`source`, told without the staging
    /// folder's name, which is gone once the conversion returns).
    #[error("writing {file}: {}", staged_text(source))]
    Writing {
        /// The file being written, as named inside the destination folder.
        file: String,
        /// The underlying error.
        #[source]
        source: Box<Error>,
    },
    /// The destination of a sharded output is a folder that already holds something.
    #[error(
        "the destination folder is not empty (a checkpoint of several files is written into a \
         new or empty folder)"
    )]
    DestinationNotEmpty,
    /// A file to index is not inside the index's folder.
    #[error("not inside the index's folder {}", folder.display())]
    OutsideIndexFolder {
        /// The index's folder.
        folder: std::path::PathBuf,
    },
    /// The source holds no weight file.
    #[error("no weight file")]
    NoWeightFile,
    /// The source has no file name to name the output after.
    #[error("has no file name")]
    NoFileName,
    /// A footer key could not be encoded as JSON.
    #[error("cannot encode footer key '{key}': {source}")]
    EncodeFooterKey {
        /// The footer key.
        key: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// The index could not be encoded as JSON.
    #[error("cannot encode the index: {source}")]
    EncodeIndex {
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
}

impl ConvertError {
    /// True unless the OS failed underneath (see [`Error::is_data_error`]).
    pub fn is_data_error(&self) -> bool {
        match self {
            ConvertError::Writing { source, .. } => source.is_data_error(),
            _ => true,
        }
    }
}

/// `e` as one line, without the staging folder's path where the engine names the file it wrote.
fn staged_text(e: &Error) -> String {
    let text = e.to_string();
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let text = parts.join("; ");
    match text.split_once(": ") {
        Some((path, rest)) if path.contains(".packtmp_") => rest.to_string(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_wrapped_json_error_is_kept_as_the_source() {
        let json = serde_json::from_slice::<serde_json::Value>(b"{").unwrap_err();
        let e = Error::safetensors(
            "m.safetensors",
            SafetensorsError::HeaderJson { source: json },
        );
        let inner = e.source().and_then(|s| s.source()).expect("a source");
        assert!(inner.downcast_ref::<serde_json::Error>().is_some());
    }

    #[cfg(feature = "candle")]
    #[test]
    fn a_wrapped_candle_error_is_kept_as_the_source() {
        let candle =
            candle_core::Tensor::zeros((2, 3), candle_core::DType::F32, &candle_core::Device::Cpu)
                .and_then(|t| t.reshape((4, 2)))
                .unwrap_err();
        let e = Error::Candle {
            path: "m.flashpack".into(),
            tensor: "w".into(),
            source: Box::new(candle),
        };
        assert!(e.to_string().contains("tensor 'w'"), "{e}");
        // The boxed payload is the source (thiserror hands out the Box itself).
        let inner = e.source().expect("a source");
        assert!(inner.downcast_ref::<Box<candle_core::Error>>().is_some());
    }
}
