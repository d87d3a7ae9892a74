//! Loads into host memory: a lazy copy-on-write mapping of the file, or the eager reader filling
//! owned memory (the whole payload, a range of it into the caller's memory, or any data range
//! into new memory).
use std::time::{Duration, Instant};

use memmap2::MmapOptions;

use super::data::{reader_setup, DataFile};
use super::loaded::{Loaded, Memory};
use super::options::{LoadOptions, LoadReport};
use super::pool::{self, plan_chunks};
use super::verify::{verifier, verify_in_memory};
use super::FlashFile;
use crate::progress::progress_bar;
use crate::sink::{HostBuffer, HostSink};
use crate::{Error, Result};

/// [`super::load`]'s body: the payload mapped (lazy) or read into owned memory (eager), checked
/// against the checksums when `opts.verify` asks.
pub(super) fn load_file(f: FlashFile, opts: &LoadOptions, open_time: Duration) -> Result<Loaded> {
    let mut report = LoadReport {
        phases: vec![("read_metadata", open_time)],
        ..Default::default()
    };
    let payload_len = usize::try_from(f.payload_len).map_err(|_| {
        Error::Unsupported(format!(
            "{}: payload too large for this platform",
            f.path.display()
        ))
    })?;
    let verifier = opts.verify.then(|| verifier(&f)).transpose()?;
    let memory = if opts.eager {
        read_payload(&f, payload_len, opts, verifier.as_ref(), &mut report)?
    } else {
        map_payload(&f, payload_len, opts, verifier.as_ref(), &mut report)?
    };
    Ok(Loaded {
        path: f.path,
        footer: f.footer,
        footer_json: f.footer_json,
        report,
        payload_len,
        memory,
    })
}

/// The lazy load: a private mapping of the file, its payload checked in memory when verifying.
fn map_payload(
    f: &FlashFile,
    payload_len: usize,
    opts: &LoadOptions,
    verifier: Option<&pool::Verifier<'_>>,
    report: &mut LoadReport,
) -> Result<Memory> {
    let path = f.path.as_path();
    let t = Instant::now();
    // SAFETY: a private (copy-on-write) mapping: writes through it never reach the file. As with
    // any mapping, another process truncating the file while it is mapped would fault; the
    // file is only read here, and that risk is the documented contract of lazy loading.
    let map =
        unsafe { MmapOptions::new().map_copy(&f.file) }.map_err(|e| Error::io(path, "mmap", e))?;
    // The footer was checked against the file's size at open; a file that shrank since then
    // maps shorter than its payload.
    if map.len() < payload_len {
        // As for a read that runs out of bytes (see pool::read_error).
        return Err(Error::io(
            path,
            format!(
                "map (the file got shorter while loading: {} bytes mapped, the payload needs {payload_len})",
                map.len()
            ),
            std::io::ErrorKind::UnexpectedEof.into(),
        ));
    }
    report.phases.push(("mmap_payload", t.elapsed()));
    if let Some(v) = verifier {
        let t = Instant::now();
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        verify_in_memory(path, &map[..payload_len], v, threads, opts.cancel.as_ref())?;
        report.phases.push(("verify_checksums", t.elapsed()));
    }
    Ok(Memory::Mapped(map))
}

/// The eager load: new owned memory filled by the reader pool.
fn read_payload(
    f: &FlashFile,
    payload_len: usize,
    opts: &LoadOptions,
    verifier: Option<&pool::Verifier<'_>>,
    report: &mut LoadReport,
) -> Result<Memory> {
    let t = Instant::now();
    let mut buf = HostBuffer::with_pages(payload_len, opts.huge_pages)?;
    report.phases.push(("alloc_cpu", t.elapsed()));
    let r = read_into(&f.data(), 0, buf.as_mut_slice(), opts, verifier)?;
    report.threads = r.threads;
    report.io = r.io;
    report.phases.extend(r.phases);
    Ok(Memory::Owned(buf))
}

/// Reads data bytes `[start, end)` of `d` into new owned host memory with the eager reader.
pub(crate) fn read_owned(
    d: &DataFile<'_>,
    start: u64,
    end: u64,
    opts: &LoadOptions,
) -> Result<(HostBuffer, LoadReport)> {
    let len = usize::try_from(end.saturating_sub(start)).map_err(|_| {
        Error::Unsupported(format!(
            "{}: data too large for this platform",
            d.path.display()
        ))
    })?;
    let mut buf = HostBuffer::with_pages(len, opts.huge_pages)?;
    let report = read_into(d, start, buf.as_mut_slice(), opts, None)?;
    Ok((buf, report))
}

/// The eager reader: data bytes `[start, start + dst.len())` of `d` into `dst` with the reader
/// pool (checked against the checksums when a verifier is given; reads then go in multiples of
/// the checksum chunk).
pub(super) fn read_into(
    d: &DataFile<'_>,
    start: u64,
    dst: &mut [u8],
    opts: &LoadOptions,
    verifier: Option<&pool::Verifier<'_>>,
) -> Result<LoadReport> {
    let t = Instant::now();
    let end = start + dst.len() as u64;
    let chunk = verifier.map_or(opts.chunk_bytes, |v| v.read_chunk(opts.chunk_bytes));
    let (direct, threads, readahead) = reader_setup(d, opts);
    let chunks = plan_chunks(start, end, chunk);
    let mut report = LoadReport {
        threads: threads.clamp(1, chunks.len().max(1)),
        ..Default::default()
    };
    let bar = progress_bar(opts.progress, end - start, "loading");
    let src = pool::Input::local(
        d.path,
        d.file,
        direct,
        readahead,
        opts.cancel.as_ref(),
        verifier,
    );
    let sink = HostSink::with_base(dst, start);
    report.io = pool::read_chunks(&src, &chunks, &sink, report.threads, bar.as_ref())?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    report.phases.push(("read_payload", t.elapsed()));
    Ok(report)
}
