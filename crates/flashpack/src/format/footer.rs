//! The footer: the JSON index at the end of a file, its encoder (v3 / v4, byte-compatible with the
//! original writer) and its decoder, which checks every rule of the format before anything trusts it.
//!
//! ```
//! use flashpack::format::Footer;
//! let json = br#"{"format":"flashpack_v3","target_dtype":"float32","align_bytes":128,"total_elems":4,"index":[{"name":"w","shape":[2,2],"offset":0,"length":4}]}"#;
//! let footer = Footer::decode(json, 16).unwrap();
//! assert_eq!(footer.records()[0].name(), "w");
//! assert!(Footer::decode(json, 8).is_err()); // the block would not fit in an 8-byte payload
//! ```
use std::collections::HashMap;

use serde::Serialize;
use serde_json::{Map, Value};

use super::{
    block_alignment, element_alignment, footer_span, numel, Checksums, ChunkMismatch, Dtype,
    FormatError, CHECKSUMS_KEY, MAGIC, TRAILER_LEN,
};

/// The `format` value of a single-dtype (v3) footer.
pub const FILE_FORMAT_V3: &str = "flashpack_v3";
/// The `format` value of a multi-block (v4) footer.
pub const FILE_FORMAT_V4: &str = "flashpack_v4";

/// Which footer layout a file uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatVersion {
    /// One dtype, one block at byte 0.
    V3,
    /// Several macroblocks.
    V4,
}

/// One contiguous run of tensors of a single dtype. Read-only: a block comes from a validated
/// [`Footer`] (decoded or planned), so its bytes lie inside the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Macroblock {
    pub(crate) dtype: Dtype,
    pub(crate) offset_bytes: u64,
    pub(crate) length_bytes: u64,
    pub(crate) length_elems: u64,
}

impl Macroblock {
    /// The dtype of every tensor in the block.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Payload offset of the block's first byte.
    pub fn offset_bytes(&self) -> u64 {
        self.offset_bytes
    }

    /// Length of the block in bytes (`length_elems` x the dtype's size).
    pub fn length_bytes(&self) -> u64 {
        self.length_bytes
    }

    /// Length of the block in elements.
    pub fn length_elems(&self) -> u64 {
        self.length_elems
    }

    /// One past the block's last byte. Exact for a block of a validated footer (its end lies
    /// inside the payload); saturates instead of wrapping for one that is not yet checked.
    pub fn end_bytes(&self) -> u64 {
        self.offset_bytes.saturating_add(self.length_bytes)
    }
}

/// One tensor: where its elements sit inside its block. Read-only, from a validated [`Footer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub(crate) name: String,
    pub(crate) shape: Vec<u64>,
    pub(crate) offset: u64,
    pub(crate) length: u64,
    pub(crate) block: usize,
    /// Payload bytes `[start, end)` of the tensor, set when its footer is validated (the only
    /// way a footer is made), so reading them needs no lookup that could fail.
    bytes: (u64, u64),
}

impl Record {
    /// A record not yet placed: its byte range is set when its footer is validated.
    pub(super) fn new(
        name: String,
        shape: Vec<u64>,
        offset: u64,
        length: u64,
        block: usize,
    ) -> Self {
        Record {
            name,
            shape,
            offset,
            length,
            block,
            bytes: (0, 0),
        }
    }

    /// The tensor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tensor's shape (`[]` for a scalar).
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// Offset in elements from the start of its block.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Number of elements.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// Index of its block in [`Footer::blocks`].
    pub fn block(&self) -> usize {
        self.block
    }

    /// Payload bytes `[start, end)` of the tensor.
    pub fn byte_range(&self) -> (u64, u64) {
        self.bytes
    }
}

/// A decoded and validated footer: every value a reader uses has been checked against the
/// payload (see [`Footer::decode`]); read it through its accessors.
#[derive(Clone, Debug, PartialEq)]
pub struct Footer {
    pub(crate) version: FormatVersion,
    pub(crate) align_bytes: u64,
    pub(crate) blocks: Vec<Macroblock>,
    pub(crate) records: Vec<Record>,
    /// Keys this version does not interpret, kept so a rewrite does not lose them.
    pub(crate) extra: Map<String, Value>,
    /// Per-chunk payload digests (the `"checksums"` key), when the file has them.
    pub(crate) checksums: Option<Checksums>,
    /// Index into `records` by name, built when the footer is validated.
    by_name: HashMap<String, usize>,
}

#[derive(Serialize)]
struct RecordV3<'a> {
    name: &'a str,
    shape: &'a [u64],
    offset: u64,
    length: u64,
}

#[derive(Serialize)]
struct RecordV4<'a> {
    name: &'a str,
    shape: &'a [u64],
    offset: u64,
    length: u64,
    macroblock: usize,
}

#[derive(Serialize)]
struct BlockV4 {
    dtype: &'static str,
    offset_bytes: u64,
    length_bytes: u64,
    length_elems: u64,
}

#[derive(Serialize)]
struct JsonV3<'a> {
    format: &'static str,
    target_dtype: &'static str,
    align_bytes: u64,
    total_elems: u64,
    index: Vec<RecordV3<'a>>,
    #[serde(flatten)]
    extra: &'a Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    checksums: Option<Value>,
}

#[derive(Serialize)]
struct JsonV4<'a> {
    format: &'static str,
    align_bytes: u64,
    total_payload_bytes: u64,
    total_elems: u64,
    macroblocks: Vec<BlockV4>,
    index: Vec<RecordV4<'a>>,
    #[serde(flatten)]
    extra: &'a Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    checksums: Option<Value>,
}

impl Footer {
    /// The footer layout: v3 (one block) or v4 (macroblocks).
    pub fn version(&self) -> FormatVersion {
        self.version
    }

    /// The writer's byte alignment (0 = none).
    pub fn align_bytes(&self) -> u64 {
        self.align_bytes
    }

    /// The blocks, one per dtype, in the order the footer lists them.
    pub fn blocks(&self) -> &[Macroblock] {
        &self.blocks
    }

    /// The tensors, in the order the footer lists them.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Keys this version does not interpret, kept so a rewrite does not lose them.
    pub fn extra(&self) -> &Map<String, Value> {
        &self.extra
    }

    /// Per-chunk payload digests (the `"checksums"` key), when the file has them.
    pub fn checksums(&self) -> Option<&Checksums> {
        self.checksums.as_ref()
    }

    /// Bytes of payload the blocks span (where the JSON starts in a file we write).
    pub fn payload_end(&self) -> u64 {
        self.blocks
            .iter()
            .map(Macroblock::end_bytes)
            .max()
            .unwrap_or(0)
    }

    /// Total elements over all blocks.
    pub fn total_elems(&self) -> u64 {
        self.blocks.iter().map(|b| b.length_elems).sum()
    }

    /// The record called `name` (a hash lookup).
    pub fn record(&self, name: &str) -> Option<&Record> {
        self.by_name.get(name).and_then(|&i| self.records.get(i))
    }

    /// A footer not yet validated (the decoder's and the planner's raw result).
    pub(super) fn unchecked(
        version: FormatVersion,
        align_bytes: u64,
        blocks: Vec<Macroblock>,
        records: Vec<Record>,
        extra: Map<String, Value>,
    ) -> Footer {
        Footer {
            version,
            align_bytes,
            blocks,
            records,
            extra,
            checksums: None,
            by_name: HashMap::new(),
        }
    }

    /// Byte range `[start, end)` of a record in the file (the same as [`Record::byte_range`]:
    /// the range the record's own footer gave it when that footer was validated).
    pub fn byte_range(&self, rec: &Record) -> (u64, u64) {
        rec.byte_range()
    }

    /// Names the tensors stored in payload bytes `[start, end)` in payload order (up to three),
    /// for messages.
    pub fn describe_range(&self, start: u64, end: u64) -> String {
        describe_tensors(self.records.iter().filter_map(|r| {
            let (s, e) = self.byte_range(r);
            (s < end && start < e).then_some((s, r.name.as_str()))
        }))
    }

    /// The error for a chunk whose digest does not match, naming the tensors it holds.
    pub fn checksum_error(&self, m: &ChunkMismatch, payload_len: u64) -> FormatError {
        let (start, end) = self
            .checksums
            .as_ref()
            .map_or((0, 0), |c| c.chunk_range(m.chunk, payload_len));
        FormatError::ChecksumMismatch {
            start,
            end,
            tensors: self.describe_range(start, end),
        }
    }

    fn is_v3(&self) -> bool {
        self.version == FormatVersion::V3
            && self.blocks.len() == 1
            && self.blocks[0].offset_bytes == 0
    }

    /// Compact UTF-8 JSON, keys in the original writer's order, non-ASCII kept raw.
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        let result = if self.is_v3() {
            let block = &self.blocks[0];
            serde_json::to_vec(&JsonV3 {
                format: FILE_FORMAT_V3,
                target_dtype: block.dtype.name(),
                align_bytes: self.align_bytes,
                total_elems: block.length_elems,
                index: self
                    .records
                    .iter()
                    .map(|r| RecordV3 {
                        name: &r.name,
                        shape: &r.shape,
                        offset: r.offset,
                        length: r.length,
                    })
                    .collect(),
                extra: &self.extra,
                checksums: self.checksums.as_ref().map(Checksums::to_json),
            })
        } else {
            serde_json::to_vec(&JsonV4 {
                format: FILE_FORMAT_V4,
                align_bytes: self.align_bytes,
                total_payload_bytes: self.payload_end(),
                total_elems: self.total_elems(),
                macroblocks: self
                    .blocks
                    .iter()
                    .map(|b| BlockV4 {
                        dtype: b.dtype.name(),
                        offset_bytes: b.offset_bytes,
                        length_bytes: b.length_bytes,
                        length_elems: b.length_elems,
                    })
                    .collect(),
                index: self
                    .records
                    .iter()
                    .map(|r| RecordV4 {
                        name: &r.name,
                        shape: &r.shape,
                        offset: r.offset,
                        length: r.length,
                        macroblock: r.block,
                    })
                    .collect(),
                extra: &self.extra,
                checksums: self.checksums.as_ref().map(Checksums::to_json),
            })
        };
        result.map_err(|e| FormatError::Encode(e.to_string()))
    }

    /// Reads the footer of a whole FlashPack file held in memory (`[payload][footer JSON]
    /// [u64 LE length]["FLASHPK\0"]`) and validates it; the payload is
    /// `bytes[..footer.payload_end()]`. No I/O: the in-memory twin of opening a file.
    ///
    /// ```
    /// use flashpack::format::{Footer, FormatError};
    /// assert_eq!(Footer::from_file_bytes(b"not a flashpack file"), Err(FormatError::BadMagic));
    /// ```
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Footer, FormatError> {
        let file_len = bytes.len() as u64;
        let trailer: &[u8; TRAILER_LEN as usize] = bytes
            .len()
            .checked_sub(TRAILER_LEN as usize)
            .and_then(|at| bytes[at..].try_into().ok())
            .ok_or(FormatError::TooSmall { size: file_len })?;
        if &trailer[8..] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let (payload_len, json_len) = footer_span(trailer, file_len)?;
        // Both inside `bytes`: footer_span checked them against its length.
        let json = &bytes[payload_len as usize..(payload_len + json_len) as usize];
        Footer::decode(json, payload_len)
    }

    /// Parses footer JSON and validates it against a payload of `payload_len` bytes.
    pub fn decode(json: &[u8], payload_len: u64) -> Result<Footer, FormatError> {
        let value: Value =
            serde_json::from_slice(json).map_err(|e| FormatError::Json(e.to_string()))?;
        let Value::Object(mut map) = value else {
            return Err(FormatError::Json("the footer is not a JSON object".into()));
        };
        let format = match map.remove("format") {
            Some(Value::String(s)) => s,
            Some(other) => return Err(FormatError::UnknownFormat(other.to_string())),
            None => return Err(FormatError::MissingKey("format")),
        };
        let align_bytes = take_u64(&mut map, "align_bytes")?.unwrap_or(0);
        let total_elems = take_u64(&mut map, "total_elems")?;
        let (version, blocks) = take_layout(&format, &mut map, total_elems)?;
        let total_payload_bytes = take_u64(&mut map, "total_payload_bytes")?;
        let records = take_index(&mut map)?;
        // Checked after the layout, so that a payload of the wrong size is reported as such.
        let checksums = map.remove(CHECKSUMS_KEY);
        let mut footer = Footer::unchecked(version, align_bytes, blocks, records, map);
        footer.validate(payload_len, total_elems, total_payload_bytes)?;
        footer.checksums = checksums
            .map(|v| Checksums::from_json(&v, payload_len))
            .transpose()?;
        Ok(footer)
    }

    /// Checks every rule of the format against a payload of `payload_len` bytes, which must be
    /// exactly what the footer declares: the blocks end where the payload ends (as does
    /// `total_payload_bytes`, when present). The original writer puts the JSON right after the
    /// last block; bytes added anywhere would shift the tensors.
    pub(crate) fn validate(
        &mut self,
        payload_len: u64,
        total_elems: Option<u64>,
        total_payload_bytes: Option<u64>,
    ) -> Result<(), FormatError> {
        for (i, b) in self.blocks.iter().enumerate() {
            check_block(i, b, self.align_bytes, payload_len)?;
        }
        self.check_blocks_disjoint()?;
        self.check_totals(total_elems, total_payload_bytes)?;
        let mut names = HashMap::with_capacity(self.records.len());
        let mut ranges = Vec::with_capacity(self.records.len());
        for (i, r) in self.records.iter().enumerate() {
            if names.insert(r.name.clone(), i).is_some() {
                return Err(FormatError::DuplicateName(r.name.clone()));
            }
            ranges.push(self.check_record(r)?);
        }
        for (r, bytes) in self.records.iter_mut().zip(ranges) {
            r.bytes = bytes;
        }
        self.by_name = names;
        if self.payload_end() != payload_len {
            return Err(FormatError::PayloadSize {
                declared: self.payload_end(),
                actual: payload_len,
            });
        }
        Ok(())
    }

    /// No two non-empty blocks share a byte.
    fn check_blocks_disjoint(&self) -> Result<(), FormatError> {
        let mut order: Vec<usize> = (0..self.blocks.len())
            .filter(|&i| self.blocks[i].length_bytes > 0)
            .collect();
        order.sort_by_key(|&i| self.blocks[i].offset_bytes);
        for pair in order.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if self.blocks[a].end_bytes() > self.blocks[b].offset_bytes {
                return Err(FormatError::BlocksOverlap {
                    a: a.min(b),
                    b: a.max(b),
                });
            }
        }
        Ok(())
    }

    /// The optional totals agree with the blocks.
    fn check_totals(
        &self,
        total_elems: Option<u64>,
        total_payload_bytes: Option<u64>,
    ) -> Result<(), FormatError> {
        if let Some(total) = total_elems {
            if total != self.total_elems() {
                return Err(FormatError::Inconsistent(format!(
                    "total_elems {total} does not match the blocks' {} elements",
                    self.total_elems()
                )));
            }
        }
        if let Some(total) = total_payload_bytes {
            if total != self.payload_end() {
                return Err(FormatError::Inconsistent(format!(
                    "total_payload_bytes {total} does not match the {} bytes where the blocks end",
                    self.payload_end()
                )));
            }
        }
        Ok(())
    }

    /// Checks one record against the (already checked) blocks; returns its payload byte range.
    fn check_record(&self, r: &Record) -> Result<(u64, u64), FormatError> {
        let Some(block) = self.blocks.get(r.block) else {
            return Err(FormatError::tensor(
                &r.name,
                format!(
                    "macroblock {} does not exist (the file has {})",
                    r.block,
                    self.blocks.len()
                ),
            ));
        };
        if numel(&r.shape) != Some(r.length) {
            return Err(FormatError::tensor(
                &r.name,
                format!(
                    "shape {:?} does not hold length {} elements",
                    r.shape, r.length
                ),
            ));
        }
        if r.offset
            .checked_add(r.length)
            .is_none_or(|end| end > block.length_elems)
        {
            return Err(FormatError::tensor(
                &r.name,
                format!(
                    "elements {}..{} lie outside macroblock {} of {} elements",
                    r.offset,
                    r.offset.saturating_add(r.length),
                    r.block,
                    block.length_elems
                ),
            ));
        }
        let align = element_alignment(self.align_bytes, block.dtype.size() as u64);
        if align != 0 && r.offset % align != 0 {
            return Err(FormatError::tensor(
                &r.name,
                format!(
                    "offset {} is not aligned to {align} elements (align_bytes {})",
                    r.offset, self.align_bytes
                ),
            ));
        }
        // Cannot overflow: the elements lie inside the block (checked just above), whose
        // length_elems x size is its length_bytes and whose end lies in the payload.
        let size = block.dtype.size() as u64;
        let start = block.offset_bytes + r.offset * size;
        Ok((start, start + r.length * size))
    }
}

/// Checks block `i` on its own: its byte length matches its elements, it lies inside the
/// payload, and its offset is aligned.
fn check_block(
    i: usize,
    b: &Macroblock,
    align_bytes: u64,
    payload_len: u64,
) -> Result<(), FormatError> {
    let size = b.dtype.size() as u64;
    if b.length_elems.checked_mul(size) != Some(b.length_bytes) {
        return Err(FormatError::block(
            i,
            format!(
                "length_bytes {} is not length_elems {} x {} bytes ({})",
                b.length_bytes, b.length_elems, size, b.dtype
            ),
        ));
    }
    if b.offset_bytes
        .checked_add(b.length_bytes)
        .is_none_or(|end| end > payload_len)
    {
        return Err(FormatError::block(
            i,
            format!(
                "bytes {}..{} lie past the end of the {payload_len}-byte payload (truncated or corrupt file)",
                b.offset_bytes,
                b.offset_bytes.saturating_add(b.length_bytes)
            ),
        ));
    }
    let align = block_alignment(align_bytes, size).ok_or_else(|| {
        FormatError::block(
            i,
            format!("align_bytes {align_bytes} overflows its alignment"),
        )
    })?;
    if b.offset_bytes % align != 0 {
        return Err(FormatError::block(
            i,
            format!(
                "offset {} is not a multiple of its alignment {align}",
                b.offset_bytes
            ),
        ));
    }
    Ok(())
}

/// The blocks a footer of `format` declares: v3's single block of `target_dtype` x
/// `total_elems`, or v4's `macroblocks` list.
fn take_layout(
    format: &str,
    map: &mut Map<String, Value>,
    total_elems: Option<u64>,
) -> Result<(FormatVersion, Vec<Macroblock>), FormatError> {
    match format {
        FILE_FORMAT_V3 => {
            let dtype = match map.remove("target_dtype") {
                Some(Value::String(s)) => s.parse::<Dtype>()?,
                Some(other) => return Err(FormatError::UnknownDtype(other.to_string())),
                None => return Err(FormatError::MissingKey("target_dtype")),
            };
            let elems = total_elems.ok_or(FormatError::MissingKey("total_elems"))?;
            let bytes = elems
                .checked_mul(dtype.size() as u64)
                .ok_or_else(|| FormatError::block(0, "total_elems overflows"))?;
            let block = Macroblock {
                dtype,
                offset_bytes: 0,
                length_bytes: bytes,
                length_elems: elems,
            };
            Ok((FormatVersion::V3, vec![block]))
        }
        FILE_FORMAT_V4 => {
            let raw = map
                .remove("macroblocks")
                .ok_or(FormatError::MissingKey("macroblocks"))?;
            let Value::Array(items) = raw else {
                return Err(FormatError::Json("\"macroblocks\" is not a list".into()));
            };
            if items.is_empty() {
                return Err(FormatError::Json("\"macroblocks\" is empty".into()));
            }
            let blocks = items
                .into_iter()
                .enumerate()
                .map(|(i, item)| parse_block(i, item))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((FormatVersion::V4, blocks))
        }
        other => Err(FormatError::UnknownFormat(other.to_string())),
    }
}

/// The footer's `index`: one record per tensor, not yet checked against the blocks.
fn take_index(map: &mut Map<String, Value>) -> Result<Vec<Record>, FormatError> {
    let index = match map.remove("index") {
        Some(Value::Array(items)) => items,
        Some(_) => return Err(FormatError::Json("\"index\" is not a list".into())),
        None => return Err(FormatError::MissingKey("index")),
    };
    index
        .into_iter()
        .enumerate()
        .map(|(i, item)| parse_record(i, item))
        .collect()
}

fn take_u64(map: &mut Map<String, Value>, key: &'static str) -> Result<Option<u64>, FormatError> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            FormatError::Json(format!("{key:?} is not a non-negative integer: {v}"))
        }),
    }
}

fn field<'a>(
    obj: &'a Map<String, Value>,
    key: &'static str,
    what: &dyn Fn(String) -> FormatError,
) -> Result<&'a Value, FormatError> {
    obj.get(key)
        .ok_or_else(|| what(format!("missing key {key:?}")))
}

fn u64_field(
    obj: &Map<String, Value>,
    key: &'static str,
    what: &dyn Fn(String) -> FormatError,
) -> Result<u64, FormatError> {
    let v = field(obj, key, what)?;
    v.as_u64()
        .ok_or_else(|| what(format!("{key:?} is not a non-negative integer: {v}")))
}

fn parse_block(i: usize, item: Value) -> Result<Macroblock, FormatError> {
    let what = |p: String| FormatError::block(i, p);
    let Value::Object(obj) = item else {
        return Err(what("is not a JSON object".into()));
    };
    let dtype = match field(&obj, "dtype", &what)? {
        Value::String(s) => s.parse::<Dtype>()?,
        other => return Err(FormatError::UnknownDtype(other.to_string())),
    };
    Ok(Macroblock {
        dtype,
        offset_bytes: u64_field(&obj, "offset_bytes", &what)?,
        length_bytes: u64_field(&obj, "length_bytes", &what)?,
        length_elems: u64_field(&obj, "length_elems", &what)?,
    })
}

fn parse_record(i: usize, item: Value) -> Result<Record, FormatError> {
    let Value::Object(obj) = item else {
        return Err(FormatError::Json(format!(
            "index entry {i} is not a JSON object"
        )));
    };
    let name = match obj.get("name") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(FormatError::Json(format!(
                "index entry {i} has no string \"name\""
            )))
        }
    };
    let what = |p: String| FormatError::tensor(&name, p);
    let shape = match field(&obj, "shape", &what)? {
        Value::Array(dims) => dims
            .iter()
            .map(|d| {
                d.as_u64()
                    .ok_or_else(|| what(format!("shape entry {d} is not a non-negative integer")))
            })
            .collect::<Result<Vec<_>, _>>()?,
        other => return Err(what(format!("shape {other} is not a list"))),
    };
    let block = match obj.get("macroblock") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_u64()
            .and_then(|b| usize::try_from(b).ok())
            .ok_or_else(|| what(format!("macroblock {v} is not a valid index")))?,
    };
    let offset = u64_field(&obj, "offset", &what)?;
    let length = u64_field(&obj, "length", &what)?;
    Ok(Record::new(name, shape, offset, length, block))
}

/// Names tensors, given as `(first byte, name)`, in byte order (up to three), for messages.
pub(crate) fn describe_tensors<'a>(hits: impl Iterator<Item = (u64, &'a str)>) -> String {
    let mut hit: Vec<(u64, &str)> = hits.collect();
    hit.sort();
    hit.dedup();
    let names: Vec<String> = hit.iter().take(3).map(|(_, n)| format!("'{n}'")).collect();
    match hit.len() {
        0 => "no tensor (padding only)".into(),
        1 => format!("tensor {}", names[0]),
        n if n <= 3 => format!("tensors {}", names.join(", ")),
        n => format!("tensors {} and {} others", names.join(", "), n - 3),
    }
}
