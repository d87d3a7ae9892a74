//! A loaded FlashPack file ([`Loaded`]): its footer and its payload, mapped copy-on-write or
//! in owned memory.
use std::path::{Path, PathBuf};

use memmap2::MmapMut;

use super::options::LoadReport;
use crate::format::Record;
use crate::sink::HostBuffer;
use crate::Footer;

#[derive(Debug)]
pub(super) enum Memory {
    /// Private copy-on-write mapping of the whole file.
    Mapped(MmapMut),
    /// Owned memory holding the payload.
    Owned(HostBuffer),
}

/// A loaded file: its footer and its payload in memory.
#[derive(Debug)]
pub struct Loaded {
    pub(crate) path: PathBuf,
    pub(crate) footer: Footer,
    pub(crate) footer_json: Vec<u8>,
    pub(crate) report: LoadReport,
    /// Never more than the memory holds (checked when the memory was made).
    pub(super) payload_len: usize,
    pub(super) memory: Memory,
}

impl Loaded {
    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's validated footer.
    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// The footer JSON exactly as stored.
    pub fn footer_json(&self) -> &[u8] {
        &self.footer_json
    }

    /// How the load went: its phases, threads and I/O counts.
    pub fn report(&self) -> &LoadReport {
        &self.report
    }

    /// The tensor names, in the footer's order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.footer.records.iter().map(|r| r.name.as_str())
    }

    /// Every tensor as `(record, stored bytes)`, in the footer's order.
    pub fn iter(&self) -> impl Iterator<Item = (&Record, &[u8])> {
        let payload = self.payload();
        self.footer.records.iter().map(move |r| {
            let (start, end) = r.byte_range();
            // In bounds by construction: the footer was validated against this payload's length.
            (r, &payload[start as usize..end as usize])
        })
    }

    /// Length of the payload in bytes.
    pub fn payload_len(&self) -> u64 {
        self.payload_len as u64
    }

    /// The payload bytes (every block lies inside).
    pub fn payload(&self) -> &[u8] {
        let n = self.payload_len;
        match &self.memory {
            Memory::Mapped(m) => &m[..n],
            Memory::Owned(b) => &b.as_slice()[..n],
        }
    }

    /// The payload, writable (a lazy load copies the touched pages privately).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let n = self.payload_len;
        match &mut self.memory {
            Memory::Mapped(m) => &mut m[..n],
            Memory::Owned(b) => &mut b.as_mut_slice()[..n],
        }
    }

    /// True when the payload is owned memory rather than a mapping.
    pub fn is_eager(&self) -> bool {
        matches!(self.memory, Memory::Owned(_))
    }

    /// The stored bytes of tensor `name`.
    pub fn tensor_bytes(&self, name: &str) -> Option<&[u8]> {
        let rec = self.footer.record(name)?;
        let (start, end) = self.footer.byte_range(rec);
        self.payload().get(start as usize..end as usize)
    }
}
