//! Checking payload bytes against the footer's checksums: the verifier the readers use, a
//! payload already in memory (a lazy load), and what [`verify`](super::verify()) reports (the
//! check itself is a job: [`super::job::verify`]).
use std::path::Path;

use super::pool;
use crate::cancel::Cancel;
use crate::{Error, Footer, Result};

/// The checker of a FlashPack payload against its footer's checksums; an error naming `path`
/// when the file has none or an algorithm this build does not know.
pub(crate) fn footer_verifier<'a>(
    path: &Path,
    footer: &'a Footer,
    payload_len: u64,
) -> Result<pool::Verifier<'a>> {
    let Some(cs) = &footer.checksums else {
        return Err(Error::NoChecksums {
            path: path.to_path_buf(),
            safetensors: false,
        });
    };
    if !cs.is_supported() {
        return Err(Error::Unsupported(format!(
            "{}: checksum algorithm {:?} is not supported by this version",
            path.display(),
            cs.algorithm
        )));
    }
    Ok(pool::Verifier {
        footer,
        checksums: cs,
        payload_len,
    })
}

/// Checks a payload held in memory (e.g. a mapping) chunk by chunk with `threads` threads;
/// the first bad chunk (lowest offset among those found) is the error.
pub(super) fn verify_in_memory(
    path: &Path,
    payload: &[u8],
    v: &pool::Verifier<'_>,
    threads: usize,
    cancel: Option<&Cancel>,
) -> Result<()> {
    let cs = v.checksums;
    let n = cs.digests.len();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let worst = std::sync::Mutex::new(None::<crate::format::ChunkMismatch>);
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, n.max(1)) {
            s.spawn(|| loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if k >= n || cancel.is_some_and(Cancel::is_cancelled) {
                    return;
                }
                let (a, b) = cs.chunk_range(k as u64, v.payload_len);
                let bytes = payload.get(a as usize..b as usize).unwrap_or(&[]);
                if let Err(m) = cs.check_chunk(k as u64, bytes) {
                    let mut w = worst.lock().unwrap_or_else(|p| p.into_inner());
                    if w.is_none_or(|old| m.chunk < old.chunk) {
                        *w = Some(m);
                    }
                }
            });
        }
    });
    crate::cancel::check(cancel, path)?;
    match worst.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(m) => Err(Error::format(
            path,
            v.footer.checksum_error(&m, v.payload_len),
        )),
        None => Ok(()),
    }
}

/// What [`verify`](super::verify()) checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Tensors in the file.
    pub tensors: usize,
    /// Payload bytes checked.
    pub payload_len: u64,
    /// Chunks whose digest was checked (0 when the file has no checksums).
    pub chunks_checked: usize,
    /// The checksum algorithm, when the file has checksums.
    pub algorithm: Option<String>,
}
