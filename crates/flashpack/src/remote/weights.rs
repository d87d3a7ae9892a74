//! A remote weight file (FlashPack or safetensors): its index read with ranged GETs only (a
//! FlashPack file's trailer and footer, a safetensors file's header), its tensor bytes fetched
//! by parallel ranged GETs into owned host memory as a [`Weights`], checked against the
//! FlashPack checksums as they arrive when asked to.
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use super::parts::{read_parts, split, PartCheck, PartJob};
use super::{RemoteFile, RemoteSettings};
use crate::format::{footer_span, MAGIC, TRAILER_LEN};
use crate::progress::progress_bar;
use crate::read::LoadOptions;
use crate::read::LoadReport;
use crate::sink::{HostBuffer, HostSink};
use crate::weights::{
    from_safetensors_dtype, Format, TensorInfo, Weights, SAFETENSORS_METADATA_KEY,
};
use crate::{Error, Footer, Result};

/// A safetensors header longer than this is refused before it is fetched (the `safetensors`
/// crate's own limit).
const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

enum Index {
    Flash {
        footer: Box<Footer>,
        payload_len: u64,
    },
    Safetensors {
        data_start: u64,
        metadata: Option<HashMap<String, String>>,
    },
}

/// An open remote weight file: the object pinned (size, ETag) and its validated index.
pub struct RemoteWeightFile {
    file: RemoteFile,
    index: Index,
    tensors: Vec<TensorInfo>,
}

impl RemoteWeightFile {
    /// Opens `url` with the settings from the environment (see [`RemoteSettings`]).
    pub fn open(url: &str) -> Result<RemoteWeightFile> {
        Self::open_with(url, RemoteSettings::from_env()?)
    }

    /// Opens `url` and reads its index: at most three small ranged GETs, never the tensors.
    pub fn open_with(url: &str, settings: RemoteSettings) -> Result<RemoteWeightFile> {
        let file = RemoteFile::open_with(url, settings)?;
        let size = file.len();
        let mut tail = [0u8; TRAILER_LEN as usize];
        if size >= TRAILER_LEN {
            file.read_exact_at(&mut tail, size - TRAILER_LEN)?;
        }
        if size >= TRAILER_LEN && &tail[8..] == MAGIC {
            return open_flashpack(file, tail);
        }
        open_safetensors(file)
    }

    /// The file's URL as given.
    pub fn url(&self) -> &str {
        self.file.url()
    }

    /// The pinned object.
    pub fn remote(&self) -> &RemoteFile {
        &self.file
    }

    /// The file's format.
    pub fn format(&self) -> Format {
        match self.index {
            Index::Flash { .. } => Format::FlashPack,
            Index::Safetensors { .. } => Format::Safetensors,
        }
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The FlashPack footer, when this is a FlashPack file.
    pub fn footer(&self) -> Option<&Footer> {
        match &self.index {
            Index::Flash { footer, .. } => Some(footer),
            Index::Safetensors { .. } => None,
        }
    }

    /// The safetensors `__metadata__` strings (a FlashPack file's, kept from a conversion).
    pub fn safetensors_metadata(&self) -> Option<HashMap<String, String>> {
        match &self.index {
            Index::Safetensors { metadata, .. } => metadata.clone(),
            Index::Flash { footer, .. } => footer
                .extra
                .get(SAFETENSORS_METADATA_KEY)
                .and_then(|v| serde_json::from_value(v.clone()).ok()),
        }
    }

    /// Object bytes `[start, end)` that hold every tensor.
    pub fn data_range(&self) -> (u64, u64) {
        match &self.index {
            Index::Flash { payload_len, .. } => (0, *payload_len),
            Index::Safetensors { data_start, .. } => (*data_start, self.file.len()),
        }
    }

    /// Fetches every tensor into owned host memory with parallel ranged GETs. `opts.verify`
    /// checks a FlashPack file's checksums part by part as they arrive; `opts.progress`,
    /// `opts.cancel` and `opts.huge_pages` act as for a local eager load (a remote load is
    /// always eager). Any failure returns an error and no tensors.
    pub fn load(self, opts: &LoadOptions) -> Result<Weights> {
        let settings = self.file.settings().clone();
        let deadline = Instant::now() + settings.timeout;
        let (start, end) = self.data_range();
        let check = self.part_check(opts.verify)?;
        let t = Instant::now();
        let len = usize::try_from(end - start).map_err(|_| {
            Error::Invalid(format!(
                "{}: a {}-byte load is too large",
                self.url(),
                end - start
            ))
        })?;
        let mut buf = HostBuffer::with_pages(len, opts.huge_pages)?;
        let mut report = LoadReport {
            phases: vec![("alloc_cpu", t.elapsed())],
            ..Default::default()
        };
        let t = Instant::now();
        // Parts on the checksum grid when verifying (the grid starts at payload byte 0).
        let part = match &check {
            Some(c) => {
                let cs = c.checksums.chunk_bytes.max(1);
                (settings.part_bytes as u64).div_ceil(cs).saturating_mul(cs) as usize
            }
            None => settings.part_bytes,
        };
        let parts = split(0, start, end, 0, part);
        let bar = progress_bar(opts.progress, end - start, "downloading");
        let files = [&self.file];
        let checks = [check];
        let job = PartJob {
            files: &files,
            checks: &checks,
            threads: settings.concurrency,
            bar: bar.as_ref(),
            cancel: opts.cancel.as_ref(),
            deadline,
        };
        report.threads = settings.concurrency.clamp(1, parts.len().max(1));
        read_parts(&job, &parts, &HostSink::with_base(buf.as_mut_slice(), 0))?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        report.phases.push(("download", t.elapsed()));
        let path = PathBuf::from(self.file.url());
        Ok(Weights::from_owned(path, self.tensors, buf, start, report))
    }

    fn part_check(&self, verify: bool) -> Result<Option<PartCheck<'_>>> {
        if !verify {
            return Ok(None);
        }
        match &self.index {
            Index::Flash {
                footer,
                payload_len,
            } => match &footer.checksums {
                Some(checksums) => Ok(Some(PartCheck {
                    footer,
                    checksums,
                    payload_len: *payload_len,
                })),
                None => Err(Error::Invalid(format!(
                    "{}: the file has no checksums to verify (it was written without them)",
                    self.url()
                ))),
            },
            Index::Safetensors { .. } => Err(Error::Invalid(format!(
                "{}: safetensors files carry no checksums to verify",
                self.url()
            ))),
        }
    }
}

fn open_flashpack(file: RemoteFile, tail: [u8; TRAILER_LEN as usize]) -> Result<RemoteWeightFile> {
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
    let index = Index::Flash {
        footer: Box::new(footer),
        payload_len,
    };
    Ok(RemoteWeightFile {
        file,
        index,
        tensors,
    })
}

fn open_safetensors(file: RemoteFile) -> Result<RemoteWeightFile> {
    let size = file.len();
    let bad = |why: String| {
        Error::Invalid(format!(
            "{}: not a FlashPack file (no magic) nor a valid safetensors file: {why}",
            file.url()
        ))
    };
    if size < 8 {
        return Err(bad(format!("{size} bytes is too small")));
    }
    let mut n_bytes = [0u8; 8];
    file.read_exact_at(&mut n_bytes, 0)?;
    let n = u64::from_le_bytes(n_bytes);
    if n > MAX_SAFETENSORS_HEADER || n > size - 8 {
        return Err(bad(format!(
            "header length {n} is over the limit or past the end of the {size}-byte object"
        )));
    }
    // Bounded by MAX_SAFETENSORS_HEADER just above.
    let mut header = vec![0u8; n as usize];
    file.read_exact_at(&mut header, 8)?;
    let meta: safetensors::tensor::Metadata =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
    let data_start = 8 + n;
    let mut tensors = Vec::new();
    for (name, info) in meta.tensors() {
        let dtype = from_safetensors_dtype(info.dtype).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: tensor '{name}': dtype {:?} is not supported",
                file.url(),
                info.dtype
            ))
        })?;
        let (s, e) = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
        let bits = info
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .and_then(|k| k.checked_mul(info.dtype.bitsize() as u64));
        if s > e || bits.is_none_or(|b| b % 8 != 0 || b / 8 != e - s) {
            return Err(bad(format!(
                "tensor '{name}': its shape and dtype need a different number of bytes than its data_offsets give"
            )));
        }
        tensors.push(TensorInfo {
            name,
            dtype,
            shape: info.shape.iter().map(|&d| d as u64).collect(),
            start: data_start + s,
            end: data_start + e,
        });
    }
    // By start, then end: an empty tensor shares its start with the tensor after it (as
    // safetensors writes `z: [0, 0]` before `a: [0, 16]`) and must come first.
    tensors.sort_by(|a, b| (a.start, a.end, &a.name).cmp(&(b.start, b.end, &b.name)));
    // The data is the tensors back to back from the header's end to the object's end.
    let mut at = data_start;
    for t in &tensors {
        if t.start != at {
            return Err(bad(format!(
                "tensor '{}' does not start where the one before it ends",
                t.name
            )));
        }
        at = t.end;
    }
    if at != size {
        return Err(bad(format!(
            "the tensors end at byte {at}, the object at {size}"
        )));
    }
    let index = Index::Safetensors {
        data_start,
        metadata: meta.metadata().clone(),
    };
    Ok(RemoteWeightFile {
        file,
        index,
        tensors,
    })
}
