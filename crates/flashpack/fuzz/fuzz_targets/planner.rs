//! Fuzz target `planner`: arbitrary tensor lists (names, dtypes, shapes, ties), alignments and
//! orders through the layout planner `format::plan`, and arbitrary ranges and chunk sizes through
//! the reader's chunk planner `read::plan_chunks`.
//!
//! Must never panic. A planned layout must place every untied tensor exactly once, aligned, with
//! no two placements overlapping, inside a payload of the planned length; tied tensors must point
//! at their target's bytes; the footer must validate against that payload and round-trip. A plan
//! must fail only for a reason the input really has. Chunks must cover their range exactly, in
//! order, with every inner boundary on a multiple of the (4 KiB-rounded) chunk size.
#![no_main]

use std::collections::{HashMap, HashSet};

use arbitrary::Arbitrary;
use flashpack::format::{plan, Footer, FormatVersion, Order, TensorSpec};
use flashpack::fuzzing::{block_alignment, element_alignment, numel, plan_chunks};
use flashpack::Dtype;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Name {
    /// One of a few short names, so duplicates happen.
    Short(u8),
    Any(String),
}

#[derive(Arbitrary, Debug)]
enum Dim {
    Small(u8),
    Medium(u16),
    Any(u64),
}

#[derive(Arbitrary, Debug)]
struct Spec {
    name: Name,
    dtype: u8,
    shape: Vec<Dim>,
    tied_to: Option<u8>,
    /// Make a tie valid (same dtype and shape as its target) most of the time.
    tie_matches_target: bool,
}

#[derive(Arbitrary, Debug)]
enum Align {
    Zero,
    Default,
    Pow2(u8),
    Small(u16),
    Any(u64),
}

#[derive(Arbitrary, Debug)]
struct Chunking {
    /// Chunk size in bytes (the loader's `chunk_bytes`): a shift of 4 KiB or a raw value.
    chunk: ChunkSize,
    /// An extra range to chunk (start, length), kept to at most 64 Ki chunks.
    start: u64,
    len: u32,
}

#[derive(Arbitrary, Debug)]
enum ChunkSize {
    Shift(u8),
    Raw(u32),
    /// Any caller-given size, as the Python option `chunk_bytes` / `FLASHPACK_READ_CHUNK_BYTES`
    /// allows.
    Any(u64),
}

#[derive(Arbitrary, Debug)]
struct Input {
    specs: Vec<Spec>,
    align: Align,
    largest_first: bool,
    chunking: Chunking,
}

fn to_specs(input: &[Spec]) -> Vec<TensorSpec> {
    let mut specs: Vec<TensorSpec> = input
        .iter()
        .take(48)
        .map(|s| {
            let name = match &s.name {
                Name::Short(k) => format!("t{}", k % 8),
                Name::Any(s) => s.clone(),
            };
            let dtype = Dtype::ALL[s.dtype as usize % Dtype::ALL.len()];
            let shape = s
                .shape
                .iter()
                .take(5)
                .map(|d| match *d {
                    Dim::Small(v) => v as u64 % 17,
                    Dim::Medium(v) => v as u64,
                    Dim::Any(v) => v,
                })
                .collect();
            let mut spec = TensorSpec::new(name, dtype, shape);
            spec.tied_to = s.tied_to.map(|t| t as usize % (input.len().min(48) + 1));
            spec
        })
        .collect();
    for (i, s) in input.iter().take(48).enumerate() {
        if let Some(t) = specs[i]
            .tied_to
            .filter(|&t| s.tie_matches_target && t < specs.len())
        {
            specs[i].dtype = specs[t].dtype;
            specs[i].shape = specs[t].shape.clone();
        }
    }
    specs
}

fn align_bytes(a: &Align) -> u64 {
    match *a {
        Align::Zero => 0,
        Align::Default => 128,
        Align::Pow2(k) => 1u64 << (k % 64),
        Align::Small(v) => v as u64,
        Align::Any(v) => v,
    }
}

/// Why `plan` may refuse these specs, from the contract alone; `None` means it must succeed.
fn expected_refusal(specs: &[TensorSpec], align: u64) -> Option<&'static str> {
    if specs.is_empty() {
        return Some("empty");
    }
    let mut names = HashSet::new();
    let mut bytes = 0u128; // stored bytes plus worst-case padding, as a bound
    let mut any_stored = false;
    for s in specs {
        if !names.insert(s.name.as_str()) {
            return Some("duplicate name");
        }
        let Some(n) = numel(&s.shape) else {
            return Some("element count overflows");
        };
        let Some(b) = n.checked_mul(s.dtype.size() as u64) else {
            return Some("byte size overflows");
        };
        if s.tied_to.is_none() {
            any_stored |= b > 0;
            bytes += b as u128;
        }
    }
    for s in specs {
        if let Some(t) = s.tied_to {
            match specs.get(t) {
                Some(target)
                    if target.tied_to.is_none()
                        && target.dtype == s.dtype
                        && target.shape == s.shape => {}
                _ => return Some("bad tie"),
            }
        }
    }
    // Padding is at most one alignment unit per tensor and per block.
    let unit = block_alignment(align, 16).map_or(u128::MAX, |a| a as u128);
    let bound = bytes.saturating_add(unit.saturating_mul(2 * specs.len() as u128 + 2));
    if bound >= u64::MAX as u128 {
        return Some("payload size overflows");
    }
    if !any_stored {
        // Every stored tensor is empty: the payload may still be non-empty through the padding
        // before an (empty) later block, so only "not empty" is certain to succeed.
        return Some("maybe nothing to pack");
    }
    None
}

fn check_layout(specs: &[TensorSpec], align: u64, order: Order) {
    let refusal = expected_refusal(specs, align);
    let layout = match plan(specs, align, order) {
        Ok(l) => l,
        Err(e) => {
            assert!(
                refusal.is_some(),
                "plan refused valid specs: {e}\n{specs:?} align {align}"
            );
            return;
        }
    };
    if let Some(why) = refusal {
        assert!(
            why == "maybe nothing to pack" || why == "payload size overflows",
            "plan accepted specs it must refuse ({why}): {specs:?}"
        );
    }
    let footer = &layout.footer;
    let payload_len = layout.payload_len;
    assert!(payload_len > 0, "an empty payload was planned");
    assert_eq!(footer.align_bytes(), align);
    assert!(footer.payload_end() <= payload_len);
    assert_eq!(
        footer.version(),
        if footer.blocks().len() == 1 {
            FormatVersion::V3
        } else {
            FormatVersion::V4
        }
    );

    // One block per dtype, in order of first appearance in the planned tensor order.
    let mut ordered: Vec<usize> = (0..specs.len()).collect();
    if order == Order::LargestFirst {
        ordered.sort_by_key(|&i| std::cmp::Reverse(numel(&specs[i].shape).unwrap()));
    }
    let mut dtypes = Vec::new();
    for &i in &ordered {
        if !dtypes.contains(&specs[i].dtype) {
            dtypes.push(specs[i].dtype);
        }
    }
    let block_dtypes: Vec<Dtype> = footer.blocks().iter().map(|b| b.dtype()).collect();
    assert_eq!(block_dtypes, dtypes, "block order");

    // Records: one per spec, grouped by block, in planned order inside each block.
    let expected_names: Vec<&str> = dtypes
        .iter()
        .flat_map(|d| ordered.iter().filter(move |&&i| specs[i].dtype == *d))
        .map(|&i| specs[i].name.as_str())
        .collect();
    let names: Vec<&str> = footer.records().iter().map(|r| r.name()).collect();
    assert_eq!(names, expected_names, "record order");
    let by_name: HashMap<&str, usize> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let rec_of: HashMap<&str, &flashpack::format::Record> =
        footer.records().iter().map(|r| (r.name(), r)).collect();
    for r in footer.records() {
        let s = &specs[by_name[r.name()]];
        assert_eq!(r.shape(), s.shape);
        assert_eq!(Some(r.length()), numel(&s.shape));
        assert_eq!(footer.blocks()[r.block()].dtype(), s.dtype);
        if let Some(t) = s.tied_to {
            let owner = rec_of[specs[t].name.as_str()];
            assert_eq!(
                (r.block(), r.offset()),
                (owner.block(), owner.offset()),
                "tie"
            );
        }
    }

    // Placements: every untied spec once, at its record's bytes, aligned, non-overlapping.
    let mut placed = vec![0usize; specs.len()];
    let mut spans = Vec::new();
    for p in &layout.placements {
        placed[p.spec] += 1;
        let s = &specs[p.spec];
        assert!(s.tied_to.is_none(), "a tied tensor was placed");
        let size = s.dtype.size() as u64;
        assert_eq!(p.nbytes, numel(&s.shape).unwrap() * size);
        let r = rec_of[s.name.as_str()];
        let b = &footer.blocks()[r.block()];
        assert_eq!(
            footer.byte_range(r),
            (p.byte_offset, p.byte_offset + p.nbytes)
        );
        assert_eq!(b.offset_bytes() % block_alignment(align, size).unwrap(), 0);
        let ea = element_alignment(align, size);
        if ea != 0 {
            assert_eq!(
                (p.byte_offset - b.offset_bytes()) % (ea * size),
                0,
                "tensor misaligned"
            );
        }
        assert!(p.byte_offset + p.nbytes <= b.end_bytes() && b.end_bytes() <= payload_len);
        if p.nbytes > 0 {
            spans.push((p.byte_offset, p.byte_offset + p.nbytes));
        }
    }
    for (i, s) in specs.iter().enumerate() {
        assert_eq!(
            placed[i],
            usize::from(s.tied_to.is_none()),
            "{:?} placements",
            s.name
        );
    }
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "placements overlap: {w:?}");
    }

    // The footer is one a reader accepts for this payload, and it round-trips.
    let json = footer.encode().expect("a planned footer encodes");
    let back = Footer::decode(&json, payload_len)
        .unwrap_or_else(|e| panic!("planned footer rejected: {e}"));
    assert_eq!(&back, footer);
}

fn check_chunks(start: u64, end: u64, chunk_bytes: usize) {
    let step = flashpack::fuzzing::chunk_step(chunk_bytes);
    let chunks = plan_chunks(start, end, chunk_bytes);
    if start >= end {
        assert!(chunks.is_empty(), "chunks for an empty range");
        return;
    }
    assert_eq!(chunks.first().map(|c| c.offset), Some(start));
    let mut at = start;
    for (k, c) in chunks.iter().enumerate() {
        assert_eq!(c.offset, at, "gap or overlap at chunk {k}");
        assert!(
            c.len > 0 && c.len as u64 <= step,
            "chunk {k} of {} bytes",
            c.len
        );
        if k > 0 {
            assert_eq!(c.offset % step, 0, "inner chunk start not on the grid");
        }
        at += c.len as u64;
    }
    assert_eq!(at, end, "chunks do not end at the range end");
    let max_chunks = (end - start).div_ceil(step) + 1;
    assert!(chunks.len() as u64 <= max_chunks, "too many chunks");
}

fuzz_target!(|input: Input| {
    let specs = to_specs(&input.specs);
    let align = align_bytes(&input.align);
    let order = if input.largest_first {
        Order::LargestFirst
    } else {
        Order::AsGiven
    };
    check_layout(&specs, align, order);

    // Chunk sizes near 2^64 and ranges ending near 2^64 used to overflow the planner; they are
    // fuzzed too (regressions: tests/fuzz_regressions.rs).
    let chunk_bytes = match input.chunking.chunk {
        ChunkSize::Shift(k) => 4096usize << (k % 20),
        ChunkSize::Raw(v) => v as usize,
        ChunkSize::Any(v) => v as usize,
    };
    let bounded = |start: u64, end: u64| {
        // The planner returns one Vec entry per chunk: keep the count small enough to fuzz fast.
        let step = flashpack::fuzzing::chunk_step(chunk_bytes);
        end.saturating_sub(start) / step <= 1 << 16
    };
    if let Ok(layout) = plan(&specs, align, order) {
        for b in layout.footer.blocks() {
            if bounded(b.offset_bytes(), b.end_bytes()) {
                check_chunks(b.offset_bytes(), b.end_bytes(), chunk_bytes);
            }
        }
        if bounded(0, layout.payload_len) {
            check_chunks(0, layout.payload_len, chunk_bytes);
        }
    }
    let start = input.chunking.start;
    let end = start.saturating_add(input.chunking.len as u64);
    if bounded(start, end) {
        check_chunks(start, end, chunk_bytes);
    }
});
