//! A weight file's index read through its [`Source`], one code path for a local file and a
//! remote object: a FlashPack file's trailer and footer (two ranged reads), a safetensors file's
//! header (two ranged reads), validated before any of its numbers are trusted. A safetensors
//! header is checked by the `safetensors` crate; the tensors must end where the file ends.
use std::collections::HashMap;

use super::Source;
use crate::format::safetensors_header::{explain_bad_entry, tensor_entry, MAX_SAFETENSORS_HEADER};
use crate::format::tensors::{TensorInfo, UnloadableTensor};
use crate::format::{footer_span, FormatError, MAGIC, TRAILER_LEN};
use crate::{Error, Footer, Result, SafetensorsError};

/// A FlashPack file's validated footer.
#[derive(Debug)]
pub(crate) struct FlashIndex {
    /// Bytes before the footer JSON; every block lies inside them.
    pub payload_len: u64,
    pub footer: Footer,
    /// The footer exactly as stored (a FlashPack checkpoint index records its digest).
    pub footer_json: Vec<u8>,
}

/// A safetensors file's validated header.
#[derive(Debug)]
pub(crate) struct SafetensorsIndex {
    /// The file offset of the first tensor byte.
    pub data_start: u64,
    pub metadata: Option<HashMap<String, String>>,
    /// The loadable tensors, by start, then end, then name.
    pub tensors: Vec<TensorInfo>,
    /// The tensors the engine cannot load, in the same order.
    pub unloadable: Vec<UnloadableTensor>,
}

/// A weight file's index.
#[derive(Debug)]
pub(crate) enum WeightIndex {
    Flash(FlashIndex),
    Safetensors(SafetensorsIndex),
}

/// Reads `src`'s index: a FlashPack footer when the file ends in the FlashPack magic, else a
/// safetensors header. A remote object whose server offers no validator to pin its version by
/// gets a warning naming the URL (see [`crate::warning`]).
pub(crate) fn read_index(src: &Source) -> Result<WeightIndex> {
    let mut trailer = [0u8; TRAILER_LEN as usize];
    let is_flash = src.len() >= TRAILER_LEN && {
        src.read_for(&mut trailer, src.len() - TRAILER_LEN, "read footer")?;
        &trailer[8..] == MAGIC
    };
    let index = if is_flash {
        WeightIndex::Flash(flash_from_trailer(src, &trailer)?)
    } else {
        WeightIndex::Safetensors(read_safetensors(src)?)
    };
    #[cfg(feature = "remote")]
    warn_if_unpinned(src, &index);
    Ok(index)
}

/// Reads and validates `src`'s FlashPack footer (a file without the magic is
/// [`FormatError::BadMagic`]).
pub(crate) fn read_flash(src: &Source) -> Result<FlashIndex> {
    let len = src.len();
    if len < TRAILER_LEN {
        return Err(Error::format(
            src.location(),
            FormatError::TooSmall { size: len },
        ));
    }
    let mut trailer = [0u8; TRAILER_LEN as usize];
    src.read_for(&mut trailer, len - TRAILER_LEN, "read footer")?;
    if &trailer[8..] != MAGIC {
        return Err(Error::format(src.location(), FormatError::BadMagic));
    }
    flash_from_trailer(src, &trailer)
}

/// The footer the trailer `trailer` (the file's last [`TRAILER_LEN`] bytes) points at.
fn flash_from_trailer(src: &Source, trailer: &[u8; TRAILER_LEN as usize]) -> Result<FlashIndex> {
    let path = src.location();
    let fmt = |e| Error::format(path, e);
    let (payload_len, json_len) = footer_span(trailer, src.len()).map_err(fmt)?;
    // Bounded by MAX_FOOTER_BYTES (and by the file's length) in footer_span.
    let mut footer_json = Vec::new();
    footer_json
        .try_reserve_exact(json_len as usize)
        .map_err(|e| {
            Error::out_of_memory(json_len, format!("the footer of {} ({e})", path.display()))
        })?;
    footer_json.resize(json_len as usize, 0);
    src.read_for(&mut footer_json, payload_len, "read footer")?;
    let footer = Footer::decode(&footer_json, payload_len).map_err(fmt)?;
    Ok(FlashIndex {
        payload_len,
        footer,
        footer_json,
    })
}

/// The tensors of a FlashPack footer, in file order.
pub(crate) fn flash_tensors(footer: &Footer) -> Vec<TensorInfo> {
    footer
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
        .collect()
}

/// Reads and validates `src`'s safetensors header: its length checked before it is read, the
/// header checked by the `safetensors` crate (entries, offsets back to back), and the tensors
/// checked to end where the file ends.
fn read_safetensors(src: &Source) -> Result<SafetensorsIndex> {
    use safetensors::SafeTensorError as E;
    let path = src.location();
    let size = src.len();
    let bad = |e: SafetensorsError| Error::safetensors(path, e);
    if size < 8 {
        return Err(bad(SafetensorsError::TooSmall { len: size }));
    }
    let mut n_bytes = [0u8; 8];
    src.read_for(&mut n_bytes, 0, "read header")?;
    let n = u64::from_le_bytes(n_bytes);
    // As the `safetensors` crate refuses them, before anything is read.
    let refused = |source| SafetensorsError::Header {
        tensor: None,
        detail: None,
        source,
    };
    if n > MAX_SAFETENSORS_HEADER as u64 {
        return Err(bad(refused(E::HeaderTooLarge)));
    }
    if n > size - 8 {
        return Err(bad(refused(E::InvalidHeaderLength)));
    }
    // Bounded by MAX_SAFETENSORS_HEADER just above.
    let mut head = vec![0u8; 8 + n as usize];
    head[..8].copy_from_slice(&n_bytes);
    src.read_for(&mut head[8..], 8, "read header")?;
    let data_start = 8 + n;
    let explained = |source: E| {
        let (tensor, detail) = match explain_bad_entry(&head[8..], head.len(), size as usize) {
            Some((t, d)) => (Some(t), Some(d)),
            None => (None, None),
        };
        SafetensorsError::Header {
            tensor,
            detail,
            source,
        }
    };
    // The crate sees the header alone: its data after the header is then "incomplete" (the
    // check against the file's real length follows) unless every tensor is empty.
    let meta = match safetensors::SafeTensors::read_metadata(&head) {
        Ok((_, meta)) => meta,
        Err(E::MetadataIncompleteBuffer) => {
            serde_json::from_slice::<safetensors::tensor::Metadata>(&head[8..])
                .map_err(|source| bad(SafetensorsError::HeaderJson { source }))?
        }
        Err(E::InvalidHeaderDeserialization(source)) => {
            return Err(bad(SafetensorsError::HeaderJson { source }))
        }
        Err(e @ (E::TensorInvalidInfo | E::ValidationOverflow)) => return Err(bad(explained(e))),
        Err(e) => return Err(bad(refused(e))),
    };
    let mut tensors = Vec::new();
    let mut unloadable = Vec::new();
    let mut data_end = data_start;
    for (name, info) in meta.tensors() {
        let start = data_start + info.data_offsets.0 as u64;
        let end = data_start + info.data_offsets.1 as u64;
        data_end = data_end.max(end);
        match tensor_entry(name, info, start, end) {
            Ok(t) => tensors.push(t),
            Err(u) => unloadable.push(u),
        }
    }
    if data_end != size {
        return Err(bad(explained(E::MetadataIncompleteBuffer)));
    }
    // By start, then end (as safetensors orders them: an empty tensor shares its start with
    // the tensor after it and comes first), then name.
    tensors.sort_by(|a, b| (a.start, a.end, &a.name).cmp(&(b.start, b.end, &b.name)));
    unloadable.sort_by(|a, b| (a.start, a.end, &a.name).cmp(&(b.start, b.end, &b.name)));
    Ok(SafetensorsIndex {
        data_start,
        metadata: meta.metadata().clone(),
        tensors,
        unloadable,
    })
}

/// Warns about a remote object whose server sends neither an ETag nor a Last-Modified.
#[cfg(feature = "remote")]
fn warn_if_unpinned(src: &Source, index: &WeightIndex) {
    let Some(file) = src.remote() else { return };
    if file.version_pin() != crate::remote::VersionPin::None {
        return;
    }
    let checked = match index {
        WeightIndex::Flash(f) if f.footer.checksums.is_some() => {
            "its FlashPack checksums are checked as the parts arrive, so a replaced object is \
             an error"
        }
        WeightIndex::Flash(_) => {
            "the file has no checksums either: a replacement of the same size would go unnoticed"
        }
        WeightIndex::Safetensors(_) => {
            "a safetensors file has no checksums: a replacement of the same size would go \
             unnoticed"
        }
    };
    crate::warning::warn(&format!(
        "{}: the server sends no ETag or Last-Modified, so a change of the object during a \
         load cannot be seen from its version; {checked}",
        file.url()
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source_of(dir: &std::path::Path, bytes: &[u8]) -> Source {
        let path = dir.join("bad.safetensors");
        std::fs::write(&path, bytes).unwrap();
        Source::open_local(&path).unwrap()
    }

    fn header_error(bytes: &[u8]) -> SafetensorsError {
        let dir = tempfile::tempdir().unwrap();
        match read_index(&source_of(dir.path(), bytes)) {
            Err(Error::Safetensors { source, .. }) => *source,
            other => panic!("not a safetensors error: {other:?}"),
        }
    }

    fn file(header: &[u8], data: usize) -> Vec<u8> {
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header);
        file.extend(std::iter::repeat_n(0, data));
        file
    }

    #[test]
    fn a_bad_entry_is_named_with_the_crates_error() {
        // 'w' says F32 [4] (16 bytes) over an 8-byte range.
        let e = header_error(&file(
            br#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}"#,
            8,
        ));
        let SafetensorsError::Header { tensor, detail, .. } = e else {
            panic!("{e:?}")
        };
        assert_eq!(tensor.as_deref(), Some("w"));
        assert!(detail.unwrap().contains("do not fit its data_offsets 0..8"));
    }

    #[test]
    fn tensors_must_end_where_the_file_ends() {
        let header = br#"{"w":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}"#;
        for data in [4, 12] {
            let e = header_error(&file(header, data));
            assert!(
                matches!(
                    e,
                    SafetensorsError::Header {
                        source: safetensors::SafeTensorError::MetadataIncompleteBuffer,
                        ..
                    }
                ),
                "{data}: {e:?}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let src = source_of(dir.path(), &file(header, 8));
        let Ok(WeightIndex::Safetensors(st)) = read_index(&src) else {
            panic!("not read")
        };
        assert_eq!(
            (st.data_start, st.tensors.len()),
            (8 + header.len() as u64, 1)
        );
    }

    #[test]
    fn a_header_past_the_end_or_not_json_is_refused() {
        let mut past = 100u64.to_le_bytes().to_vec();
        past.extend_from_slice(b"{}");
        assert!(matches!(
            header_error(&past),
            SafetensorsError::Header {
                source: safetensors::SafeTensorError::InvalidHeaderLength,
                ..
            }
        ));
        assert!(matches!(
            header_error(&file(br#"{"w":"#, 0)),
            SafetensorsError::HeaderJson { .. }
        ));
        assert!(matches!(
            header_error(b"1234"),
            SafetensorsError::TooSmall { len: 4 }
        ));
    }
}
