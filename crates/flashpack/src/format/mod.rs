//! The FlashPack file format, as pure functions: dtypes, the layout planner and the footer codec.
//!
//! Nothing here does I/O. A file is `[payload][footer JSON][u64 LE JSON length]["FLASHPK\0"]`;
//! `docs/FORMAT.md` in the repository is the contract, `docs/ARCHITECTURE.md` how the crate is
//! built around it.
//!
//! ```
//! use flashpack::format::{plan, Order, TensorSpec, Footer};
//! use flashpack::Dtype;
//! let specs = vec![
//!     TensorSpec::new("w", Dtype::F32, vec![4, 4]),
//!     TensorSpec::new("step", Dtype::I64, vec![]),
//! ];
//! let layout = plan(&specs, 128, Order::LargestFirst).unwrap();
//! let json = layout.footer.encode().unwrap();
//! let back = Footer::decode(&json, layout.payload_len).unwrap();
//! assert_eq!(back, layout.footer);
//! ```
mod checksum;
mod dtype;
mod footer;
mod layout;
pub(crate) mod safetensors_header;
pub(crate) mod tensors;

pub use checksum::{digest, Checksums, ChunkMismatch, CHECKSUMS_KEY};
pub(crate) use checksum::{Hasher, CHECKSUM_CHUNK_ALIGN, DEFAULT_CHECKSUM_CHUNK, XXH3_64};
pub use dtype::Dtype;
pub(crate) use footer::describe_tensors;
pub use footer::{Footer, FormatVersion, Macroblock, Record, FILE_FORMAT_V3, FILE_FORMAT_V4};
pub use layout::{plan, Layout, Order, Placement, TensorSpec};

/// The 8 bytes that end every FlashPack file.
pub const MAGIC: &[u8; 8] = b"FLASHPK\0";
/// Bytes after the footer JSON: its u64 length and the magic.
pub(crate) const TRAILER_LEN: u64 = 16;
/// Largest footer JSON a reader accepts (256 MiB: over a million tensors with checksums for
/// 100 TB). A longer claimed length is refused before anything is allocated for it, so a sparse
/// or crafted file cannot make the reader allocate its apparent size.
pub(crate) const MAX_FOOTER_BYTES: u64 = 256 << 20;
/// FlashPack footer key of a pack converted from a checkpoint of several files: the source
/// index's `metadata` and `weight_map` (tensor -> shard file name), so converting back restores
/// the same shards (see docs/FORMAT.md).
pub const CHECKPOINT_INDEX_KEY: &str = "checkpoint_index";
/// Where the footer JSON of a `file_len`-byte FlashPack file lies, from its trailer (the last
/// [`TRAILER_LEN`] bytes, magic already checked): `(payload_len, json_len)`, the JSON being
/// bytes `payload_len..payload_len + json_len`. A length past the file or over
/// [`MAX_FOOTER_BYTES`] is refused, so nothing is allocated for a crafted one.
pub(crate) fn footer_span(
    trailer: &[u8; TRAILER_LEN as usize],
    file_len: u64,
) -> Result<(u64, u64), FormatError> {
    let room = file_len
        .checked_sub(TRAILER_LEN)
        .ok_or(FormatError::TooSmall { size: file_len })?;
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&trailer[..8]);
    let json_len = u64::from_le_bytes(len_bytes);
    if json_len > room {
        return Err(FormatError::JsonLengthTooLarge { json_len, room });
    }
    if json_len > MAX_FOOTER_BYTES {
        return Err(FormatError::FooterTooLarge {
            json_len,
            max: MAX_FOOTER_BYTES,
        });
    }
    Ok((room - json_len, json_len))
}

/// The writer's default alignment in bytes.
pub const DEFAULT_ALIGN_BYTES: u64 = 128;

/// A broken format contract: in a footer being read, or in tensors being packed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("file is too small ({size} bytes) to hold a FlashPack footer")]
    /// The file is shorter than a trailer.
    TooSmall {
        /// The file's size in bytes.
        size: u64,
    },
    #[error("bad magic: the file does not end with \"FLASHPK\\0\" (not a FlashPack file)")]
    /// The file does not end with the FlashPack magic.
    BadMagic,
    #[error("footer JSON length {json_len} is larger than the {room} bytes before the trailer (truncated or corrupt file)")]
    /// The trailer claims a footer longer than the bytes before it.
    JsonLengthTooLarge {
        /// The footer length the trailer claims.
        json_len: u64,
        /// Bytes before the trailer.
        room: u64,
    },
    #[error(
        "footer JSON length {json_len} is over the {max}-byte limit (corrupt or crafted file)"
    )]
    /// The trailer claims a footer longer than a reader accepts (256 MiB).
    FooterTooLarge {
        /// The footer length the trailer claims.
        json_len: u64,
        /// The largest footer accepted.
        max: u64,
    },
    #[error("footer is not valid UTF-8 JSON: {0}")]
    /// The footer is not valid JSON, or not shaped as the format says.
    Json(String),
    #[error("unknown format {0:?} (expected \"flashpack_v3\" or \"flashpack_v4\")")]
    /// The `format` key names a format this version does not read.
    UnknownFormat(String),
    #[error("footer is missing the key {0:?}")]
    /// A key the format requires is missing.
    MissingKey(&'static str),
    #[error("unknown dtype {0:?}")]
    /// A dtype name the format does not define.
    UnknownDtype(String),
    #[error("macroblock {block}: {problem}")]
    /// A macroblock breaks a rule of the format.
    Block {
        /// Index of the block in the footer.
        block: usize,
        /// What is wrong with it.
        problem: String,
    },
    #[error("macroblocks {a} and {b} overlap")]
    /// Two macroblocks share bytes.
    BlocksOverlap {
        /// The lower-numbered block.
        a: usize,
        /// The higher-numbered block.
        b: usize,
    },
    #[error("tensor '{name}': {problem}")]
    /// A tensor's record breaks a rule of the format (or, when packing, its data does not fit its spec).
    Tensor {
        /// The tensor's name.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    #[error("tensor name '{0}' appears more than once")]
    /// Two tensors have the same name.
    DuplicateName(String),
    #[error("{0}")]
    /// Totals or sizes that do not agree with each other.
    Inconsistent(String),
    #[error("cannot encode the footer as JSON: {0}")]
    /// The footer could not be written as JSON.
    Encode(String),
    #[error("the payload is {actual} bytes but the footer declares {declared}: bytes were added to or removed from the file, which would shift every tensor (corrupt file)")]
    /// The payload is not the size the footer declares.
    PayloadSize {
        /// Payload bytes the footer declares.
        declared: u64,
        /// Payload bytes the file holds.
        actual: u64,
    },
    #[error("no tensors to pack")]
    /// There is nothing to pack.
    Empty,
    #[error("checksum mismatch in payload bytes {start}..{end}, which hold {tensors}: the file is corrupt")]
    /// A payload chunk does not match its checksum.
    ChecksumMismatch {
        /// First payload byte of the chunk.
        start: u64,
        /// One past its last byte.
        end: u64,
        /// The tensors stored in that range, first one first (e.g. "tensor 'w' and 2 others").
        tensors: String,
    },
}

impl FormatError {
    pub(crate) fn tensor(name: &str, problem: impl Into<String>) -> Self {
        FormatError::Tensor {
            name: name.to_string(),
            problem: problem.into(),
        }
    }
    pub(crate) fn block(block: usize, problem: impl Into<String>) -> Self {
        FormatError::Block {
            block,
            problem: problem.into(),
        }
    }
}

pub(crate) fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Byte alignment of a block's start: `lcm(align_bytes, elem_size)`, or `elem_size` when
/// unaligned; `None` when it overflows (only a crafted `align_bytes` can do that).
pub(crate) fn block_alignment(align_bytes: u64, elem_size: u64) -> Option<u64> {
    if align_bytes == 0 {
        Some(elem_size)
    } else {
        (align_bytes / gcd(align_bytes, elem_size)).checked_mul(elem_size)
    }
}

/// Element alignment of a tensor inside its block (0 = none).
pub(crate) fn element_alignment(align_bytes: u64, elem_size: u64) -> u64 {
    if align_bytes == 0 {
        0
    } else {
        align_bytes / gcd(align_bytes, elem_size)
    }
}

/// Number of elements of a shape (`[]` is a scalar: 1), or `None` on overflow.
pub(crate) fn numel(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
}

pub(crate) fn round_up(x: u64, to: u64) -> Option<u64> {
    if to <= 1 {
        return Some(x);
    }
    x.checked_add((to - x % to) % to)
}
