//! A remote weight file's index (FlashPack or safetensors), read with ranged GETs only: a
//! FlashPack file's trailer and footer, a safetensors file's header, validated as a local
//! file's are. [`WeightFile::open_location`](crate::weights::WeightFile::open_location) wraps
//! it; its tensors are read by the engine's reader pool like a local file's.
use std::collections::HashMap;
use std::path::Path;

use super::{RemoteFile, VersionPin};
use crate::format::safetensors_header::{
    explain_bad_entry, tensor_entry, MAX_SAFETENSORS_HEADER as MAX_HEADER,
};
use crate::format::tensors::{TensorInfo, UnloadableTensor};
use crate::format::{footer_span, MAGIC, TRAILER_LEN};
use crate::{Error, Footer, Result, SafetensorsError};

/// A safetensors header longer than this is refused before it is fetched (the `safetensors`
/// crate's own limit).
const MAX_SAFETENSORS_HEADER: u64 = MAX_HEADER as u64;

/// What the index of a remote weight file says.
#[derive(Debug)]
pub(crate) enum RemoteIndex {
    Flash {
        footer: Box<Footer>,
        /// The footer exactly as stored (a FlashPack checkpoint index records its digest).
        footer_json: Vec<u8>,
        payload_len: u64,
    },
    Safetensors {
        data_start: u64,
        metadata: Option<HashMap<String, String>>,
    },
}

/// An open remote weight file: the object pinned (size, ETag) and its validated index.
#[derive(Debug)]
pub(crate) struct RemoteSource {
    pub file: RemoteFile,
    pub index: RemoteIndex,
}

impl RemoteSource {
    /// Reads `file`'s index: at most three small ranged GETs, never the tensors. A server that
    /// offers no validator to pin the version by gets a warning naming the URL (see
    /// [`crate::warning`]).
    pub fn open(file: RemoteFile) -> Result<Opened> {
        let size = file.len();
        let mut tail = [0u8; TRAILER_LEN as usize];
        if size >= TRAILER_LEN {
            file.read_exact_at(&mut tail, size - TRAILER_LEN)?;
        }
        let opened = if size >= TRAILER_LEN && &tail[8..] == MAGIC {
            open_flashpack(file, tail)?
        } else {
            open_safetensors(file)?
        };
        if opened.0.file.version_pin() == VersionPin::None {
            crate::warning::warn(&unpinned_warning(&opened.0));
        }
        Ok(opened)
    }

    /// Object bytes `[start, end)` that hold every tensor.
    pub fn data_range(&self) -> (u64, u64) {
        match &self.index {
            RemoteIndex::Flash { payload_len, .. } => (0, *payload_len),
            RemoteIndex::Safetensors { data_start, .. } => (*data_start, self.file.len()),
        }
    }
}

/// The warning for an object whose server sends neither an ETag nor a Last-Modified.
fn unpinned_warning(source: &RemoteSource) -> String {
    let checked = match &source.index {
        RemoteIndex::Flash { footer, .. } if footer.checksums.is_some() => {
            "its FlashPack checksums are checked as the parts arrive, so a replaced object is \
             an error"
        }
        RemoteIndex::Flash { .. } => {
            "the file has no checksums either: a replacement of the same size would go unnoticed"
        }
        RemoteIndex::Safetensors { .. } => {
            "a safetensors file has no checksums: a replacement of the same size would go \
             unnoticed"
        }
    };
    format!(
        "{}: the server sends no ETag or Last-Modified, so a change of the object during a \
         load cannot be seen from its version; {checked}",
        source.file.url()
    )
}

/// An opened remote file, its tensors, and those of a safetensors file that cannot be loaded.
pub(crate) type Opened = (RemoteSource, Vec<TensorInfo>, Vec<UnloadableTensor>);

fn open_flashpack(file: RemoteFile, tail: [u8; TRAILER_LEN as usize]) -> Result<Opened> {
    let size = file.len();
    let fmt = |e| Error::format(file.url(), e);
    let (payload_len, json_len) = footer_span(&tail, size).map_err(fmt)?;
    // Bounded by MAX_FOOTER_BYTES in footer_span.
    let mut json = vec![0u8; json_len as usize];
    file.read_exact_at(&mut json, payload_len)?;
    let footer = Footer::decode(&json, payload_len).map_err(fmt)?;
    let tensors = footer
        .records
        .iter()
        .map(|r| {
            let (start, end) = footer.byte_range(r);
            TensorInfo {
                name: r.name.clone(),
                dtype: footer.blocks[r.block].dtype,
                shape: r.shape.clone(),
                start,
                end,
            }
        })
        .collect();
    let index = RemoteIndex::Flash {
        footer: Box::new(footer),
        footer_json: json,
        payload_len,
    };
    Ok((RemoteSource { file, index }, tensors, Vec::new()))
}

/// A remote safetensors file: its header fetched and parsed, every tensor entry checked, and
/// the tensors checked to lie back to back up to the object's end.
fn open_safetensors(file: RemoteFile) -> Result<Opened> {
    let url = Path::new(file.url());
    let bad = |e: SafetensorsError| Error::safetensors(url, e);
    let (data_start, meta) = read_header(&file, url)?;
    let mut tensors = Vec::new();
    for (name, info) in meta.tensors() {
        tensors.push(checked_entry(url, name, info, data_start)?);
    }
    // By start, then end: an empty tensor shares its start with the tensor after it (as
    // safetensors writes `z: [0, 0]` before `a: [0, 16]`) and must come first.
    tensors.sort_by(|a, b| span(a).cmp(&span(b)));
    // The data is the tensors (loadable or not) back to back from the header's end to the
    // object's end.
    let mut at = data_start;
    for t in &tensors {
        let (start, end, name) = span(t);
        if start != at {
            return Err(bad(SafetensorsError::BadTensor {
                tensor: name.to_string(),
                detail: "it does not start where the one before it ends".into(),
            }));
        }
        at = end;
    }
    if at != file.len() {
        return Err(bad(SafetensorsError::TrailingBytes {
            tensors_end: at,
            len: file.len(),
        }));
    }
    let index = RemoteIndex::Safetensors {
        data_start,
        metadata: meta.metadata().clone(),
    };
    let mut loadable = Vec::new();
    let mut unloadable = Vec::new();
    for t in tensors {
        match t {
            Ok(t) => loadable.push(t),
            Err(u) => unloadable.push(u),
        }
    }
    Ok((RemoteSource { file, index }, loadable, unloadable))
}

/// The header of a remote safetensors file (its length checked before it is fetched) and the
/// file offset of its first tensor byte.
fn read_header(file: &RemoteFile, url: &Path) -> Result<(u64, safetensors::tensor::Metadata)> {
    let bad = |e: SafetensorsError| Error::safetensors(url, e);
    let size = file.len();
    if size < 8 {
        return Err(bad(SafetensorsError::TooSmall { len: size }));
    }
    let mut n_bytes = [0u8; 8];
    file.read_exact_at(&mut n_bytes, 0)?;
    let n = u64::from_le_bytes(n_bytes);
    if n > MAX_SAFETENSORS_HEADER || n > size - 8 {
        return Err(bad(SafetensorsError::HeaderLength {
            header_len: n,
            len: size,
        }));
    }
    // Bounded by MAX_SAFETENSORS_HEADER just above.
    let mut header = vec![0u8; n as usize];
    file.read_exact_at(&mut header, 8)?;
    let meta = serde_json::from_slice(&header).map_err(|source| {
        // Name the tensor at fault where the parser's error does not.
        let bad_entry = usize::try_from(size)
            .ok()
            .and_then(|len| explain_bad_entry(&header, 8 + header.len(), len));
        bad(match bad_entry {
            Some((tensor, detail)) => SafetensorsError::BadTensor { tensor, detail },
            None => SafetensorsError::HeaderJson { source },
        })
    })?;
    Ok((8 + n, meta))
}

/// A tensor's bytes and name, loadable or not.
fn span(t: &std::result::Result<TensorInfo, UnloadableTensor>) -> (u64, u64, &str) {
    match t {
        Ok(t) => (t.start, t.end, &t.name),
        Err(u) => (u.start, u.end, &u.name),
    }
}

/// Tensor `name` of the remote safetensors file at `url`, its shape and dtype matching its
/// byte range (the data starts at file byte `data_start`): as the engine holds it, or as an
/// unloadable tensor (see [`tensor_entry`]).
fn checked_entry(
    url: &Path,
    name: String,
    info: &safetensors::tensor::TensorInfo,
    data_start: u64,
) -> Result<std::result::Result<TensorInfo, UnloadableTensor>> {
    let (s, e) = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
    let bits = info
        .shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
        .and_then(|k| k.checked_mul(info.dtype.bitsize() as u64));
    if s > e || bits.is_none_or(|b| b % 8 != 0 || b / 8 != e - s) {
        return Err(Error::safetensors(
            url,
            SafetensorsError::BadTensor {
                tensor: name,
                detail: "its shape and dtype need a different number of bytes than its data_offsets give".into(),
            },
        ));
    }
    Ok(tensor_entry(name, info, data_start + s, data_start + e))
}
