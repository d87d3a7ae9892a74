//! The layout planner: where each tensor goes in the payload.
//!
//! Tensors are grouped into one macroblock per dtype (blocks in order of each dtype's first
//! appearance), ordered largest first unless the caller gives an order, and aligned exactly as the
//! original writer does. A tensor tied to another (same storage) gets a record pointing at the
//! other's bytes and takes no space.
//!
//! ```
//! use flashpack::format::{plan, Order, TensorSpec};
//! use flashpack::Dtype;
//! let mut tied = TensorSpec::new("lm_head.weight", Dtype::F16, vec![8, 4]);
//! tied.tied_to = Some(0);
//! let specs = vec![TensorSpec::new("embed.weight", Dtype::F16, vec![8, 4]), tied];
//! let layout = plan(&specs, 128, Order::LargestFirst).unwrap();
//! assert_eq!(layout.placements.len(), 1); // stored once
//! assert_eq!(layout.footer.records()[0].offset(), layout.footer.records()[1].offset());
//! ```
use std::collections::HashSet;

use serde_json::Map;

use super::{
    block_alignment, element_alignment, numel, round_up, Dtype, Footer, FormatError, FormatVersion,
    Macroblock, Record,
};

/// A tensor to be packed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// The tensor's name (unique in a file).
    pub name: String,
    /// Its stored element type.
    pub dtype: Dtype,
    /// Its shape (`[]` for a scalar).
    pub shape: Vec<u64>,
    /// Index of another spec whose bytes this tensor shares (tied weights).
    pub tied_to: Option<usize>,
}

impl TensorSpec {
    /// An untied tensor.
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: Vec<u64>) -> Self {
        TensorSpec {
            name: name.into(),
            dtype,
            shape,
            tied_to: None,
        }
    }
}

/// How the planner orders tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// By element count, largest first; ties keep the given order (the writer's default).
    LargestFirst,
    /// Exactly the given order.
    AsGiven,
}

/// Where the bytes of one stored (non-tied) tensor go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Index into the specs passed to [`plan`].
    pub spec: usize,
    /// Absolute byte offset in the payload.
    pub byte_offset: u64,
    /// Bytes it takes.
    pub nbytes: u64,
}

/// The planned file: its footer, payload size and where each stored tensor's bytes go.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    /// The footer (validated, without checksums or extra keys yet).
    pub footer: Footer,
    /// Payload bytes (where the footer JSON starts).
    pub payload_len: u64,
    /// Where each stored tensor's bytes go, in payload order by block.
    pub placements: Vec<Placement>,
}

/// Plans the payload for `specs` with the given byte alignment.
pub fn plan(specs: &[TensorSpec], align_bytes: u64, order: Order) -> Result<Layout, FormatError> {
    if specs.is_empty() {
        return Err(FormatError::Empty);
    }
    let counts = element_counts(specs)?;
    check_ties(specs)?;
    let mut ordered: Vec<usize> = (0..specs.len()).collect();
    if order == Order::LargestFirst {
        ordered.sort_by(|&a, &b| counts[b].cmp(&counts[a])); // stable: ties keep the given order
    }
    let groups = group_by_dtype(specs, &ordered);
    let placed = place_blocks(&groups, &counts, align_bytes, specs.len())?;
    if placed.payload_len == 0 {
        return Err(FormatError::Inconsistent(
            "nothing to pack: every tensor is empty".into(),
        ));
    }
    let records = index_records(specs, &ordered, &groups, &counts, &placed.slot)?;
    let version = if placed.blocks.len() == 1 {
        FormatVersion::V3
    } else {
        FormatVersion::V4
    };
    let mut footer = Footer::unchecked(version, align_bytes, placed.blocks, records, Map::new());
    // The same checks a reader makes; they also give each record its byte range.
    footer.validate(placed.payload_len, None, None)?;
    Ok(Layout {
        footer,
        payload_len: placed.payload_len,
        placements: placed.placements,
    })
}

/// Each spec's element count; an error for a repeated name or a size that overflows.
fn element_counts(specs: &[TensorSpec]) -> Result<Vec<u64>, FormatError> {
    let mut seen = HashSet::with_capacity(specs.len());
    let mut counts = Vec::with_capacity(specs.len());
    for s in specs {
        if !seen.insert(s.name.as_str()) {
            return Err(FormatError::DuplicateName(s.name.clone()));
        }
        let n = numel(&s.shape)
            .ok_or_else(|| FormatError::tensor(&s.name, "element count overflows"))?;
        n.checked_mul(s.dtype.size() as u64)
            .ok_or_else(|| FormatError::tensor(&s.name, "byte size overflows"))?;
        counts.push(n);
    }
    Ok(counts)
}

/// Every tie points at an untied tensor of the same dtype and shape.
fn check_ties(specs: &[TensorSpec]) -> Result<(), FormatError> {
    for s in specs {
        let Some(t) = s.tied_to else { continue };
        let target = specs.get(t).ok_or_else(|| {
            FormatError::tensor(
                &s.name,
                format!("is tied to tensor #{t}, which does not exist"),
            )
        })?;
        if target.tied_to.is_some() || target.dtype != s.dtype || target.shape != s.shape {
            return Err(FormatError::tensor(
                &s.name,
                format!("cannot be tied to '{}': it must be an untied tensor of the same dtype and shape", target.name),
            ));
        }
    }
    Ok(())
}

/// One group per dtype, in order of each dtype's first appearance in `ordered`: the dtype and
/// its stored (untied) specs in that order.
fn group_by_dtype(specs: &[TensorSpec], ordered: &[usize]) -> Vec<(Dtype, Vec<usize>)> {
    let mut groups: Vec<(Dtype, Vec<usize>)> = Vec::new();
    for &i in ordered {
        let d = specs[i].dtype;
        let k = match groups.iter().position(|(g, _)| *g == d) {
            Some(k) => k,
            None => {
                groups.push((d, Vec::new()));
                groups.len() - 1
            }
        };
        if specs[i].tied_to.is_none() {
            groups[k].1.push(i);
        }
    }
    groups
}

/// The blocks, laid out one after another, each aligned, with its tensors aligned inside.
struct Placed {
    blocks: Vec<Macroblock>,
    /// Per spec: its (block, element offset), for stored specs.
    slot: Vec<Option<(usize, u64)>>,
    placements: Vec<Placement>,
    /// Where the last block ends.
    payload_len: u64,
}

fn place_blocks(
    groups: &[(Dtype, Vec<usize>)],
    counts: &[u64],
    align_bytes: u64,
    n_specs: usize,
) -> Result<Placed, FormatError> {
    let overflow = || FormatError::Inconsistent("the payload size overflows".into());
    let mut placed = Placed {
        blocks: Vec::with_capacity(groups.len()),
        slot: vec![None; n_specs],
        placements: Vec::with_capacity(n_specs),
        payload_len: 0,
    };
    for (block_id, (dtype, members)) in groups.iter().enumerate() {
        let size = dtype.size() as u64;
        let offset_bytes = round_up(
            placed.payload_len,
            block_alignment(align_bytes, size).ok_or_else(overflow)?,
        )
        .ok_or_else(overflow)?;
        let align_elems = element_alignment(align_bytes, size);
        let mut elems = 0u64;
        for &i in members {
            elems = round_up(elems, align_elems).ok_or_else(overflow)?;
            placed.slot[i] = Some((block_id, elems));
            placed.placements.push(Placement {
                spec: i,
                byte_offset: offset_bytes
                    .checked_add(elems.checked_mul(size).ok_or_else(overflow)?)
                    .ok_or_else(overflow)?,
                nbytes: counts[i] * size,
            });
            elems = elems.checked_add(counts[i]).ok_or_else(overflow)?;
        }
        let length_bytes = elems.checked_mul(size).ok_or_else(overflow)?;
        placed.blocks.push(Macroblock {
            dtype: *dtype,
            offset_bytes,
            length_bytes,
            length_elems: elems,
        });
        placed.payload_len = offset_bytes
            .checked_add(length_bytes)
            .ok_or_else(overflow)?;
    }
    Ok(placed)
}

/// The index: blocks in order and, inside each, tensors in the planned order (as the original
/// writer does; tied records sit where their own name sorts, pointing at their target's slot).
fn index_records(
    specs: &[TensorSpec],
    ordered: &[usize],
    groups: &[(Dtype, Vec<usize>)],
    counts: &[u64],
    slot: &[Option<(usize, u64)>],
) -> Result<Vec<Record>, FormatError> {
    groups
        .iter()
        .flat_map(|(dtype, _)| ordered.iter().filter(move |&&i| specs[i].dtype == *dtype))
        .map(|&i| {
            let s = &specs[i];
            let owner = s.tied_to.unwrap_or(i);
            // Every untied spec was given a slot, and tied specs point at untied ones (checked
            // first): a spec without one is a planner bug, reported as such.
            let (block, offset) = slot[owner].ok_or_else(|| {
                FormatError::Inconsistent(format!(
                    "internal error: tensor '{}' was not placed by the planner",
                    s.name
                ))
            })?;
            Ok(Record::new(
                s.name.clone(),
                s.shape.clone(),
                offset,
                counts[i],
                block,
            ))
        })
        .collect()
}
