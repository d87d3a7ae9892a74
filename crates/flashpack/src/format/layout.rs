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
use std::collections::{HashMap, HashSet};

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
    for s in specs {
        if let Some(t) = s.tied_to {
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
    }

    let mut ordered: Vec<usize> = (0..specs.len()).collect();
    if order == Order::LargestFirst {
        ordered.sort_by(|&a, &b| counts[b].cmp(&counts[a])); // stable: ties keep the given order
    }

    let mut dtype_order: Vec<Dtype> = Vec::new();
    let mut members: HashMap<Dtype, Vec<usize>> = HashMap::new();
    for &i in &ordered {
        let d = specs[i].dtype;
        members.entry(d).or_insert_with(|| {
            dtype_order.push(d);
            Vec::new()
        });
        if specs[i].tied_to.is_none() {
            members.entry(d).or_default().push(i);
        }
    }

    let overflow = || FormatError::Inconsistent("the payload size overflows".into());
    let mut blocks = Vec::with_capacity(dtype_order.len());
    let mut slot: Vec<Option<(usize, u64)>> = vec![None; specs.len()]; // (block, element offset)
    let mut placements = Vec::with_capacity(specs.len());
    let mut cursor = 0u64;
    for (block_id, dtype) in dtype_order.iter().enumerate() {
        let size = dtype.size() as u64;
        let offset_bytes = round_up(
            cursor,
            block_alignment(align_bytes, size).ok_or_else(overflow)?,
        )
        .ok_or_else(overflow)?;
        let align_elems = element_alignment(align_bytes, size);
        let mut elems = 0u64;
        for &i in members.get(dtype).map(Vec::as_slice).unwrap_or_default() {
            elems = round_up(elems, align_elems).ok_or_else(overflow)?;
            slot[i] = Some((block_id, elems));
            placements.push(Placement {
                spec: i,
                byte_offset: offset_bytes
                    .checked_add(elems.checked_mul(size).ok_or_else(overflow)?)
                    .ok_or_else(overflow)?,
                nbytes: counts[i] * size,
            });
            elems = elems.checked_add(counts[i]).ok_or_else(overflow)?;
        }
        let length_bytes = elems.checked_mul(size).ok_or_else(overflow)?;
        blocks.push(Macroblock {
            dtype: *dtype,
            offset_bytes,
            length_bytes,
            length_elems: elems,
        });
        cursor = offset_bytes
            .checked_add(length_bytes)
            .ok_or_else(overflow)?;
    }
    if cursor == 0 {
        return Err(FormatError::Inconsistent(
            "nothing to pack: every tensor is empty".into(),
        ));
    }

    // The index lists blocks in order and, inside each, tensors in the planned order (as the
    // original writer does; tied records sit where their own name sorts).
    let records = dtype_order
        .iter()
        .flat_map(|dtype| ordered.iter().filter(move |&&i| specs[i].dtype == *dtype))
        .map(|&i| {
            let s = &specs[i];
            let owner = s.tied_to.unwrap_or(i);
            // Every untied spec was given a slot above, and tied specs point at untied ones
            // (checked at the top): a spec without one is a planner bug, reported as such.
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
        .collect::<Result<Vec<_>, FormatError>>()?;
    let version = if blocks.len() == 1 {
        FormatVersion::V3
    } else {
        FormatVersion::V4
    };
    let mut footer = Footer::unchecked(version, align_bytes, blocks, records, Map::new());
    // The same checks a reader makes; they also give each record its byte range.
    footer.validate(cursor, None, None)?;
    Ok(Layout {
        footer,
        payload_len: cursor,
        placements,
    })
}
