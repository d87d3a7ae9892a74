//! What a weight file holds, as values: its format, and each tensor's name, dtype, shape and
//! byte range (the index a FlashPack footer or a safetensors header gives). Re-exported from
//! [`weights`](crate::weights), where users meet them.
use std::path::Path;

use super::Dtype;

/// A weight file's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A FlashPack file.
    FlashPack,
    /// A safetensors file.
    Safetensors,
}

/// One tensor of a file: where its bytes are (file offsets `[start, end)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name.
    pub name: String,
    /// Its stored element type.
    pub dtype: Dtype,
    /// Its shape (`[]` for a scalar).
    pub shape: Vec<u64>,
    /// File offset of its first byte.
    pub start: u64,
    /// One past its last byte.
    pub end: u64,
}

/// A tensor of a safetensors file that the engine lists but cannot load: its dtype has no
/// torch type (`F6_E2M3`, `F6_E3M2`), or it is `F4` with an odd last dimension (torch's
/// `float4_e2m1fn_x2` holds two values per byte). The file still opens, its other tensors
/// load, and asking for this one is
/// [`WeightFile::unloadable_error`](crate::weights::WeightFile::unloadable_error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnloadableTensor {
    /// The tensor's name.
    pub name: String,
    /// Its safetensors dtype name (`"F6_E2M3"`).
    pub dtype: String,
    /// Its shape as the header gives it.
    pub shape: Vec<u64>,
    /// File offset of its first byte.
    pub start: u64,
    /// One past its last byte.
    pub end: u64,
    /// Why it cannot be loaded.
    pub reason: String,
}

/// An output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A FlashPack file (`.flashpack`).
    Flashpack,
    /// A safetensors file (`.safetensors`).
    Safetensors,
}

impl Target {
    /// The file extension of this format, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Target::Flashpack => "flashpack",
            Target::Safetensors => "safetensors",
        }
    }

    /// The format `path`'s extension names (any case), if it names one.
    pub fn by_extension(path: &Path) -> Option<Target> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "flashpack" => Some(Target::Flashpack),
            "safetensors" => Some(Target::Safetensors),
            _ => None,
        }
    }

    /// The other format than `format`'s (what a conversion writes when nothing says).
    pub fn other_than(format: Format) -> Target {
        match format {
            Format::FlashPack => Target::Safetensors,
            Format::Safetensors => Target::Flashpack,
        }
    }
}
