//! safetensors files written: a tensor's safetensors entry, a header built, a file written (a
//! file's header is read by [`crate::source::header`], local or remote).
use std::collections::HashMap;
use std::path::Path;

use super::TensorView;
use crate::cancel::{self, Cancel};
use crate::format::safetensors_header::{
    safetensors_shape, to_safetensors_dtype, MAX_SAFETENSORS_HEADER,
};
use crate::progress::progress_bar;
use crate::write::{prepare_destination, Staged};
use crate::{Dtype, Error, Result, SafetensorsError};

/// A tensor's safetensors dtype and header shape, or an error naming `file` and the tensor
/// when safetensors cannot store it (its dtype, a 0-dim fp4 pair, or a dimension beyond
/// `usize`).
pub(crate) fn safetensors_entry(
    file: &Path,
    name: &str,
    dtype: Dtype,
    shape: &[u64],
) -> Result<(safetensors::Dtype, Vec<usize>)> {
    let unsupported =
        |why: String| Error::Unsupported(format!("{}: tensor '{name}': {why}", file.display()));
    let st = to_safetensors_dtype(dtype)
        .ok_or_else(|| unsupported(format!("{dtype} cannot be stored in safetensors")))?;
    let shape = safetensors_shape(dtype, shape).ok_or_else(|| {
        unsupported(format!(
            "{dtype} of shape {shape:?} has no safetensors shape (a 0-dim fp4 pair, or a \
             dimension beyond this platform's usize)"
        ))
    })?;
    Ok((st, shape))
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
    use crate::format::safetensors_header::{from_safetensors_dtype, from_safetensors_entry};

    #[test]
    fn fp4_shapes_count_values_there_and_bytes_here() {
        use safetensors::Dtype as S;
        assert_eq!(
            from_safetensors_entry(S::F4, &[3, 8]).unwrap(),
            (Dtype::F4E2M1X2, vec![3, 4])
        );
        assert_eq!(
            from_safetensors_entry(S::F4, &[2, 0]).unwrap(),
            (Dtype::F4E2M1X2, vec![2, 0])
        );
        assert!(from_safetensors_entry(S::F4, &[2, 3])
            .unwrap_err()
            .contains("even"));
        assert!(from_safetensors_entry(S::F6_E2M3, &[4])
            .unwrap_err()
            .contains("F6_E2M3"));
        assert!(from_safetensors_entry(S::F6_E3M2, &[4])
            .unwrap_err()
            .contains("F6_E3M2"));
        assert_eq!(
            from_safetensors_entry(S::F8_E8M0, &[5]).unwrap(),
            (Dtype::F8E8M0, vec![5])
        );
        assert_eq!(
            safetensors_shape(Dtype::F4E2M1X2, &[3, 4]),
            Some(vec![3, 8])
        );
        assert_eq!(safetensors_shape(Dtype::F4E2M1X2, &[]), None);
        assert_eq!(safetensors_shape(Dtype::F32, &[]), Some(vec![]));
        for d in Dtype::ALL {
            if let Some(st) = to_safetensors_dtype(*d) {
                assert_eq!(from_safetensors_dtype(st), Some(*d));
                assert_eq!(st.bitsize(), d.size() * 8 / if st == S::F4 { 2 } else { 1 });
            }
        }
    }
}
