//! Device loads: the staging policy (how many reader threads, how large their pinned staging
//! buffers, which chunks cover the regions) and the stream of chunks through a [`DeviceSink`].
use std::time::Instant;

use super::data::{reader_setup, DataFile};
use super::pool::{self, plan_chunks, Chunk, DIRECT_ALIGN};
use super::{LoadOptions, LoadReport};
use crate::progress::progress_bar;
use crate::sink::{Device, DeviceRegion, DeviceSink, Regions, SLOTS_PER_WORKER};
use crate::{Error, Result};

/// The device load behind [`load_to_device`], for any [`Device`] and [`DataFile`]: region
/// offsets are offsets in `d`'s data, and the caller upholds `load_to_device`'s contract on
/// the destinations (the copies are enqueued through [`Device::copy_async`]).
pub(crate) fn stream_to_device<D: Device>(
    d: &DataFile<'_>,
    verifier: Option<&pool::Verifier<'_>>,
    device: &D,
    regions: Vec<DeviceRegion>,
    opts: &LoadOptions,
) -> Result<LoadReport> {
    let t = Instant::now();
    let regions = Regions::new(regions, d.end).map_err(|e| in_file(d, e))?;
    let plan = StagingPlan::new(d, verifier, &regions, device.pool().budget(), opts)?;
    let mut report = LoadReport::default();
    report.phases.push(("plan", t.elapsed()));

    let t = Instant::now();
    let bar = progress_bar(opts.progress, plan.total_bytes(), "loading");
    // The sink may get staging buffers for fewer threads when other loads hold part of the pool.
    let sink = DeviceSink::new(device, regions, plan.threads, plan.chunk).map_err(|e| match e {
        Error::Invalid(_) => in_file(d, e),
        e => d.device_error(e, None),
    })?;
    report.threads = sink.workers();
    let src = pool::Input::local(
        d.path,
        d.file,
        plan.direct,
        plan.readahead,
        opts.cancel.as_ref(),
        verifier,
    );
    let read = pool::read_chunks(&src, &plan.chunks, &sink, report.threads, bar.as_ref());
    let copying = sink.failed_chunk();
    report.io = read.map_err(|e| d.device_error(e, copying))?;
    sink.finish().map_err(|e| d.device_error(e, None))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    report.phases.push(("stream_to_device", t.elapsed()));
    Ok(report)
}

/// A caller's mistake (regions, the pinned pool limit) named by the file it concerns.
fn in_file(d: &DataFile<'_>, e: Error) -> Error {
    Error::Invalid(format!("{}: {e}", d.path.display()))
}

/// How a device load reads: the reader policy, the staging buffers fitted into the pinned
/// pool's budget once, and the chunks that cover the regions.
struct StagingPlan {
    direct: Option<std::fs::File>,
    readahead: bool,
    /// Reader threads (each with [`SLOTS_PER_WORKER`] staging buffers): what the policy asked
    /// for, fitted into the budget, and never more than there are chunks.
    threads: usize,
    /// Staging buffer size; every chunk fits in one.
    chunk: usize,
    chunks: Vec<Chunk>,
}

impl StagingPlan {
    fn new(
        d: &DataFile<'_>,
        verifier: Option<&pool::Verifier<'_>>,
        regions: &Regions,
        budget: usize,
        opts: &LoadOptions,
    ) -> Result<StagingPlan> {
        let (direct, threads, readahead) = reader_setup(d, opts);
        // Verified reads must be whole checksum chunks.
        let grain = verifier.map_or(DIRECT_ALIGN as usize, |v| v.read_chunk(1));
        let (threads, chunk) =
            fit_staging(threads, opts.chunk_bytes, grain, budget).map_err(|e| in_file(d, e))?;
        let chunks = device_chunks(regions.as_slice(), chunk, verifier.is_some(), d.end);
        // Fewer threads than fitted only need less staging memory: the fit still holds.
        let threads = threads.min(chunks.len()).max(1);
        Ok(StagingPlan {
            direct,
            readahead,
            threads,
            chunk,
            chunks,
        })
    }

    fn total_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.len as u64).sum()
    }
}

/// Fits `threads x SLOTS_PER_WORKER` staging buffers of `chunk_bytes` (rounded up to a multiple
/// of `grain`) into `budget` bytes: shrinks the chunk (not below 1 MiB or one grain), then the
/// thread count, then the chunk again. Returns (threads, chunk).
pub(super) fn fit_staging(
    threads: usize,
    chunk_bytes: usize,
    grain: usize,
    budget: usize,
) -> Result<(usize, usize)> {
    const MIN_CHUNK: usize = 1 << 20;
    let grain = grain.max(1);
    let round = |n: usize| n.max(grain).div_ceil(grain).saturating_mul(grain);
    let fits = |threads: usize, chunk: usize| {
        threads
            .saturating_mul(SLOTS_PER_WORKER)
            .saturating_mul(chunk)
            <= budget
    };
    let threads = threads.max(1);
    let mut chunk = round(chunk_bytes);
    if fits(threads, chunk) {
        return Ok((threads, chunk));
    }
    let floor = round(MIN_CHUNK.min(chunk));
    chunk = (budget / (threads * SLOTS_PER_WORKER) / grain * grain).max(floor);
    if fits(threads, chunk) {
        return Ok((threads, chunk));
    }
    let fitted = budget / chunk.saturating_mul(SLOTS_PER_WORKER);
    if fitted >= 1 {
        return Ok((fitted, chunk));
    }
    chunk = budget / SLOTS_PER_WORKER / grain * grain;
    if chunk == 0 {
        return Err(Error::Invalid(format!(
            "the pinned pool limit leaves {budget} bytes, too few for {SLOTS_PER_WORKER} \
             staging buffers of {grain} bytes{}",
            if grain > DIRECT_ALIGN as usize {
                " (the file's checksum chunks, which verified reads need whole)"
            } else {
                ""
            }
        )));
    }
    Ok((1, chunk))
}

/// Chunks covering `regions` (sorted, non-overlapping): regions closer than a chunk are read as
/// one span; each span starts on a [`DIRECT_ALIGN`] boundary so its reads can use `O_DIRECT`, or,
/// with `whole` (verification), on the chunk grid and ends on it (or at the payload's end).
pub(super) fn device_chunks(
    regions: &[DeviceRegion],
    chunk: usize,
    whole: bool,
    payload_len: u64,
) -> Vec<Chunk> {
    let grain = if whole { chunk as u64 } else { DIRECT_ALIGN };
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for r in regions {
        let start = r.offset / grain * grain;
        let end = if whole {
            (r.offset + r.len)
                .div_ceil(grain)
                .saturating_mul(grain)
                .min(payload_len)
        } else {
            r.offset + r.len
        };
        match spans.last_mut() {
            Some(last) if start <= last.1.saturating_add(chunk as u64) => last.1 = last.1.max(end),
            _ => spans.push((start, end)),
        }
    }
    spans
        .into_iter()
        .flat_map(|(s, e)| plan_chunks(s, e, chunk))
        .collect()
}
