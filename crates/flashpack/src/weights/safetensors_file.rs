//! safetensors headers: the dtype mapping, a local file's header parsed (by the `safetensors`
//! crate) into the tensor list, a corrupt header's tensor named, and a header written.
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use memmap2::{Mmap, MmapOptions};

use super::{Inner, TensorInfo, TensorView, WeightFile};
use crate::cancel::{self, Cancel};
use crate::progress::progress_bar;
use crate::write::{prepare_destination, Staged};
use crate::{Dtype, Error, Result, SafetensorsError};

/// A tensor's safetensors dtype and shape, or an error naming `file` and the tensor when
/// safetensors cannot store it (its dtype, or a dimension beyond `usize`).
pub(crate) fn safetensors_entry(
    file: &Path,
    name: &str,
    dtype: Dtype,
    shape: &[u64],
) -> Result<(safetensors::Dtype, Vec<usize>)> {
    let st = to_safetensors_dtype(dtype).ok_or_else(|| {
        Error::Unsupported(format!(
            "{}: tensor '{name}': {dtype} cannot be stored in safetensors",
            file.display()
        ))
    })?;
    let shape = shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<Vec<usize>, _>>()
        .map_err(|_| {
            Error::Unsupported(format!(
                "{}: tensor '{name}': a dimension of {shape:?} is beyond this platform's usize",
                file.display()
            ))
        })?;
    Ok((st, shape))
}

/// safetensors' dtype for ours, where safetensors has one.
pub fn to_safetensors_dtype(d: Dtype) -> Option<safetensors::Dtype> {
    use safetensors::Dtype as S;
    Some(match d {
        Dtype::F64 => S::F64,
        Dtype::F32 => S::F32,
        Dtype::F16 => S::F16,
        Dtype::BF16 => S::BF16,
        Dtype::F8E4M3 => S::F8_E4M3,
        Dtype::F8E4M3Fnuz => S::F8_E4M3FNUZ,
        Dtype::F8E5M2 => S::F8_E5M2,
        Dtype::F8E5M2Fnuz => S::F8_E5M2FNUZ,
        Dtype::F8E8M0 => S::F8_E8M0,
        Dtype::C64 => S::C64,
        Dtype::I64 => S::I64,
        Dtype::U64 => S::U64,
        Dtype::I32 => S::I32,
        Dtype::U32 => S::U32,
        Dtype::I16 => S::I16,
        Dtype::U16 => S::U16,
        Dtype::I8 => S::I8,
        Dtype::U8 => S::U8,
        Dtype::Bool => S::BOOL,
        Dtype::C128 | Dtype::C32 => return None,
    })
}

/// Our dtype for tensor `name`'s safetensors dtype in the file at `path` (a local path or a
/// URL), or [`Error::Unsupported`] naming both.
pub(crate) fn stored_dtype(path: &Path, name: &str, dtype: safetensors::Dtype) -> Result<Dtype> {
    from_safetensors_dtype(dtype).ok_or_else(|| {
        Error::Unsupported(format!(
            "{}: tensor '{name}': dtype {dtype:?} is not supported",
            path.display()
        ))
    })
}

/// Our dtype for safetensors', where the format stores it (sub-byte types are not stored).
pub fn from_safetensors_dtype(d: safetensors::Dtype) -> Option<Dtype> {
    Dtype::ALL
        .iter()
        .copied()
        .find(|&ours| to_safetensors_dtype(ours) == Some(d))
}

impl WeightFile {
    /// Opens a local safetensors file (`file`, `file_len` bytes long) at `path`.
    pub(super) fn open_safetensors(path: &Path, file: File, file_len: u64) -> Result<WeightFile> {
        if file_len < 8 {
            let e = SafetensorsError::TooSmall { len: file_len };
            return Err(Error::safetensors(path, e));
        }
        // SAFETY: a read-only private mapping used only to hand the safetensors parser a slice of
        // the whole file (it checks the header and every offset against the file's length); only
        // the header's pages are read here.
        let map: Mmap =
            unsafe { MmapOptions::new().map(&file) }.map_err(|e| Error::io(path, "mmap", e))?;
        let (n, meta) = safetensors::SafeTensors::read_metadata(&map)
            .map_err(|e| Error::safetensors(path, header_error(e, &map)))?;
        let data_start = 8 + n as u64;
        let mut tensors = Vec::new();
        for (name, info) in meta.tensors() {
            let dtype = stored_dtype(path, &name, info.dtype)?;
            tensors.push(TensorInfo {
                name,
                dtype,
                shape: info.shape.iter().map(|&d| d as u64).collect(),
                start: data_start + info.data_offsets.0 as u64,
                end: data_start + info.data_offsets.1 as u64,
            });
        }
        tensors.sort_by(|a, b| (a.start, &a.name).cmp(&(b.start, &b.name)));
        let inner = Inner::Safetensors {
            file,
            file_len,
            data_start,
            metadata: meta.metadata().clone(),
        };
        Ok(Self::new(path, inner, tensors))
    }
}

/// The largest header the `safetensors` crate parses or writes (100 MB); larger is
/// `HeaderTooLarge`.
pub(crate) const MAX_SAFETENSORS_HEADER: usize = 100_000_000;

/// The `safetensors` crate's refusal of `file`'s header, with the tensor at fault named where
/// the crate's error does not name it (see [`explain_safetensors_error`]).
fn header_error(source: safetensors::SafeTensorError, file: &[u8]) -> SafetensorsError {
    let (tensor, detail) = match explain_safetensors_error(&source, file) {
        Some((tensor, detail)) => (Some(tensor), Some(detail)),
        None => (None, None),
    };
    SafetensorsError::Header {
        tensor,
        detail,
        source,
    }
}

/// The tensor a `safetensors` error is about and what is wrong with it, for the errors that do
/// not name it (a bad tensor entry, a range past the end of the file); `None` for every other
/// error, so that the header is parsed again only where the crate already accepted its size.
fn explain_safetensors_error(
    e: &safetensors::SafeTensorError,
    file: &[u8],
) -> Option<(String, String)> {
    use safetensors::SafeTensorError as E;
    match e {
        E::TensorInvalidInfo | E::MetadataIncompleteBuffer | E::ValidationOverflow => {
            explain_bad_tensor(file)
        }
        _ => None,
    }
}

/// Names the first tensor (by offset) of a safetensors header that makes it invalid, and why:
/// a shape and dtype that do not match its byte range, or a range past the end of the file
/// (the `safetensors` crate's errors for these do not name the tensor). A header longer than
/// [`MAX_SAFETENSORS_HEADER`] is not parsed.
fn explain_bad_tensor(file: &[u8]) -> Option<(String, String)> {
    let n = usize::try_from(u64::from_le_bytes(file.get(..8)?.try_into().ok()?)).ok()?;
    if n > MAX_SAFETENSORS_HEADER {
        return None;
    }
    let data_start = 8usize.checked_add(n)?;
    explain_bad_entry(file.get(8..data_start)?, data_start, file.len())
}

/// As [`explain_bad_tensor`], from the header's JSON, the offset of the first tensor byte and
/// the file's length (for a file that is not all in memory).
pub(crate) fn explain_bad_entry(
    header: &[u8],
    data_start: usize,
    file_len: usize,
) -> Option<(String, String)> {
    let header: HashMap<String, serde_json::Value> = serde_json::from_slice(header).ok()?;
    let mut tensors: Vec<(&String, safetensors::tensor::TensorInfo)> = header
        .iter()
        .filter(|(name, _)| name.as_str() != "__metadata__")
        .filter_map(|(name, v)| Some((name, serde_json::from_value(v.clone()).ok()?)))
        .collect();
    tensors.sort_by_key(|(_, t)| t.data_offsets);
    tensors.into_iter().find_map(|(name, t)| {
        let bits = t
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(t.dtype.bitsize()));
        let (s, e) = t.data_offsets;
        let end = data_start.saturating_add(e);
        let why = match bits {
            Some(b) if b % 8 == 0 && e.checked_sub(s) == Some(b / 8) => {
                (end > file_len).then(|| {
                    format!(
                        "it ends at byte {end}, past the end of the {file_len}-byte file (truncated?)"
                    )
                })
            }
            _ => Some(format!(
                "its shape {:?} and dtype {:?} do not fit its data_offsets {s}..{e}",
                t.shape, t.dtype
            )),
        };
        why.map(|why| (name.clone(), why))
    })
}

/// One tensor of a safetensors file to be written: its name, dtype, shape and byte length.
pub(crate) type HeaderEntry = (String, safetensors::Dtype, Vec<usize>, usize);

/// A safetensors file's first bytes (u64 header length, JSON header padded with spaces to a
/// multiple of 8) for the tensors of `entries` stored back to back in that order, and the
/// length of the data after it. The JSON comes from the `safetensors` crate's own `Metadata`,
/// so the file is the one it would write.
pub(crate) fn safetensors_header(
    entries: Vec<HeaderEntry>,
    metadata: Option<HashMap<String, String>>,
) -> std::result::Result<(Vec<u8>, u64), SafetensorsError> {
    use safetensors::tensor::{Metadata, TensorInfo as StInfo};
    let mut offset = 0usize;
    let mut infos = Vec::with_capacity(entries.len());
    for (name, dtype, shape, len) in entries {
        let end = offset
            .checked_add(len)
            .ok_or(SafetensorsError::HeaderTooLarge {
                len: usize::MAX,
                limit: MAX_SAFETENSORS_HEADER,
            })?;
        let info = StInfo {
            dtype,
            shape,
            data_offsets: (offset, end),
        };
        offset = end;
        infos.push((name, info));
    }
    let encode =
        |e: Box<dyn std::error::Error + Send + Sync>| SafetensorsError::Encode { source: e };
    let metadata = Metadata::new(metadata, infos).map_err(|e| encode(e.into()))?;
    let mut json = serde_json::to_vec(&metadata).map_err(|e| encode(e.into()))?;
    json.resize(json.len().next_multiple_of(8), b' ');
    if json.len() > MAX_SAFETENSORS_HEADER {
        return Err(SafetensorsError::HeaderTooLarge {
            len: json.len(),
            limit: MAX_SAFETENSORS_HEADER,
        });
    }
    let mut header = (json.len() as u64).to_le_bytes().to_vec();
    header.extend_from_slice(&json);
    Ok((header, offset as u64))
}

/// Tensor bytes written per call (and per cancellation check).
const WRITE_PIECE: usize = 4 << 20;

/// Writes `tensors` as the safetensors file `dest`, bytes unchanged, laid out as the
/// `safetensors` crate lays a file out (by dtype alignment, then name), with `metadata` as its
/// `__metadata__`. Atomic like a pack: written unnamed beside `dest` and linked over it only
/// when complete and synced; `cancel` stops it between 4 MiB pieces with `dest` as it was.
pub(crate) fn write_safetensors_file(
    dest: &Path,
    tensors: &[TensorView<'_>],
    metadata: Option<HashMap<String, String>>,
    cancel: Option<&Cancel>,
    progress: bool,
) -> Result<()> {
    let mut order = Vec::with_capacity(tensors.len());
    for t in tensors {
        let (dtype, shape) = safetensors_entry(dest, t.name, t.dtype, t.shape)?;
        order.push((t, (t.name.to_string(), dtype, shape, t.data.len())));
    }
    order.sort_by(|(a, (_, da, _, _)), (b, (_, db, _, _))| {
        db.cmp(da).then_with(|| a.name.cmp(b.name))
    });
    let (order, entries): (Vec<&TensorView<'_>>, Vec<HeaderEntry>) = order.into_iter().unzip();
    let (header, data_len) =
        safetensors_header(entries, metadata).map_err(|e| Error::safetensors(dest, e))?;

    let dir = prepare_destination(dest)?;
    cancel::check(cancel, dest)?;
    let tmp = Staged::create(&dir, dest)?;
    let file = tmp.file();
    let total = header.len() as u64 + data_len;
    file.set_len(total)
        .map_err(|e| Error::io(dest, "set the new file's length", e))?;
    let write = |bytes: &[u8], at: u64| {
        use crate::os::Positioned;
        file.write_all_at(bytes, at)
            .map_err(|e| Error::io(dest, "write", e))
    };
    write(&header, 0)?;
    let bar = progress_bar(progress, total, "writing");
    let mut at = header.len() as u64;
    for t in order {
        for piece in t.data.chunks(WRITE_PIECE) {
            cancel::check(cancel, dest)?;
            write(piece, at)?;
            crate::os::start_writeback(file, at, piece.len());
            at += piece.len() as u64;
            if let Some(b) = &bar {
                b.inc(piece.len() as u64);
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    cancel::check(cancel, dest)?;
    file.sync_all().map_err(|e| Error::io(dest, "fsync", e))?;
    match cancel {
        Some(c) => c.commit(dest, || tmp.commit(dest)),
        None => tmp.commit(dest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::SafeTensorError as E;

    /// A safetensors file whose tensor 'w' says F32 [4] (16 bytes) over an 8-byte range.
    fn bad_entry() -> Vec<u8> {
        let header = br#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}"#;
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header);
        file.extend_from_slice(&[0; 8]);
        file
    }

    #[test]
    fn only_the_errors_about_a_tensor_parse_the_header_again() {
        let file = bad_entry();
        let (tensor, why) = explain_safetensors_error(&E::TensorInvalidInfo, &file).unwrap();
        assert_eq!(tensor, "w");
        assert!(why.contains("do not fit its data_offsets 0..8"), "{why}");
        for e in [E::HeaderTooLarge, E::HeaderTooSmall, E::InvalidHeaderLength] {
            assert_eq!(explain_safetensors_error(&e, &file), None, "{e:?}");
        }
    }
}
