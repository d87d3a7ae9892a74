//! Property tests for the pure format layer: the layout planner (`format::plan`) and the footer
//! codec (`Footer::encode` / `Footer::decode`), checked against the rules of `FORMAT.md`.
//!
//! The expected layout is recomputed here from the contract alone (not from the planner's code):
//! tensors ordered largest first (stable) or as given, one macroblock per dtype in order of first
//! appearance, blocks packed tightly at `lcm(align_bytes, elem_size)`, tensors packed tightly
//! inside a block at `align_bytes / gcd(align_bytes, elem_size)` elements, tied tensors sharing
//! their target's bytes.

use flashpack::format::{plan, Footer, FormatVersion, Layout, Order, TensorSpec};
use flashpack::{Dtype, FormatError};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Helpers: an independent model of the contract
// ---------------------------------------------------------------------------------------------

const ALIGNS: &[u64] = &[0, 1, 2, 16, 64, 128, 256, 4096];

/// Name prefixes, including characters JSON must escape and non-ASCII that must stay raw.
const NAME_PREFIXES: &[&str] = &[
    "w",
    "model.layers.0.self_attn.q_proj.weight",
    "é",
    "名前",
    "q\"uote",
    "back\\slash",
    "new\nline",
    "tab\t",
    "ctl\u{1}\u{1f}",
    "sl/ash",
    "emoji🦀",
    "",
];

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn block_align(align: u64, size: u64) -> u64 {
    if align == 0 {
        size
    } else {
        align / gcd(align, size) * size
    }
}

fn elem_align(align: u64, size: u64) -> u64 {
    if align == 0 {
        0
    } else {
        align / gcd(align, size)
    }
}

fn round_up(x: u64, to: u64) -> u64 {
    if to <= 1 {
        x
    } else {
        x.div_ceil(to) * to
    }
}

fn count(shape: &[u64]) -> u64 {
    shape.iter().product() // [] -> 1
}

/// `json.dumps(s, ensure_ascii=False)` as Python writes it: short escapes for `\" \\ \n \r \t
/// \b \f`, `\u00xx` (lowercase hex) for other control characters, everything else raw.
fn py_json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            '\u{8}' => o.push_str("\\b"),
            '\u{c}' => o.push_str("\\f"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn shape_json(shape: &[u64]) -> String {
    format!(
        "[{}]",
        shape
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// The footer JSON the original writer would produce for this footer (compact, keys in the
/// order of the FORMAT.md examples, non-ASCII raw), with `payload_len` as `total_payload_bytes`.
fn expected_json(f: &Footer, payload_len: u64) -> String {
    let total_elems: u64 = f.blocks().iter().map(|b| b.length_elems()).sum();
    if f.blocks().len() == 1 {
        let index: Vec<String> = f
            .records()
            .iter()
            .map(|r| {
                format!(
                    r#"{{"name":{},"shape":{},"offset":{},"length":{}}}"#,
                    py_json_str(r.name()),
                    shape_json(r.shape()),
                    r.offset(),
                    r.length()
                )
            })
            .collect();
        format!(
            r#"{{"format":"flashpack_v3","target_dtype":"{}","align_bytes":{},"total_elems":{},"index":[{}]}}"#,
            f.blocks()[0].dtype().name(),
            f.align_bytes(),
            total_elems,
            index.join(",")
        )
    } else {
        let blocks: Vec<String> = f
            .blocks()
            .iter()
            .map(|b| {
                format!(
                    r#"{{"dtype":"{}","offset_bytes":{},"length_bytes":{},"length_elems":{}}}"#,
                    b.dtype().name(),
                    b.offset_bytes(),
                    b.length_bytes(),
                    b.length_elems()
                )
            })
            .collect();
        let index: Vec<String> = f
            .records()
            .iter()
            .map(|r| {
                format!(
                    r#"{{"name":{},"shape":{},"offset":{},"length":{},"macroblock":{}}}"#,
                    py_json_str(r.name()),
                    shape_json(r.shape()),
                    r.offset(),
                    r.length(),
                    r.block()
                )
            })
            .collect();
        format!(
            r#"{{"format":"flashpack_v4","align_bytes":{},"total_payload_bytes":{},"total_elems":{},"macroblocks":[{}],"index":[{}]}}"#,
            f.align_bytes(),
            payload_len,
            total_elems,
            blocks.join(","),
            index.join(",")
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct RawSpec {
    dtype: Dtype,
    shape: Vec<u64>,
    tie: Option<Index>,
    prefix: usize,
}

fn dim() -> impl Strategy<Value = u64> {
    prop_oneof![6 => 0u64..4, 3 => 4u64..40, 1 => 40u64..5000]
}

fn raw_spec() -> impl Strategy<Value = RawSpec> {
    let dtype = prop_oneof![
        3 => proptest::sample::select(vec![Dtype::F32, Dtype::BF16, Dtype::I64, Dtype::U8]),
        2 => proptest::sample::select(Dtype::ALL.to_vec()),
    ];
    (
        dtype,
        vec(dim(), 0..4),
        proptest::option::weighted(0.2, any::<Index>()),
        0..NAME_PREFIXES.len(),
    )
        .prop_map(|(dtype, shape, tie, prefix)| RawSpec {
            dtype,
            shape,
            tie,
            prefix,
        })
}

/// Turns raw specs into valid `TensorSpec`s: unique names, ties to earlier untied specs (whose
/// dtype and shape they copy). With `single`, every spec gets the first spec's dtype (v3 files).
fn build_specs(raw: &[RawSpec], single: bool) -> Vec<TensorSpec> {
    let mut specs: Vec<TensorSpec> = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let name = format!("{}{}", NAME_PREFIXES[r.prefix], i);
        let untied: Vec<usize> = (0..i).filter(|&j| specs[j].tied_to.is_none()).collect();
        match r.tie {
            Some(ix) if !untied.is_empty() => {
                let j = untied[ix.index(untied.len())];
                let mut s = TensorSpec::new(name, specs[j].dtype, specs[j].shape.clone());
                s.tied_to = Some(j);
                specs.push(s);
            }
            _ => {
                let dtype = if single { raw[0].dtype } else { r.dtype };
                specs.push(TensorSpec::new(name, dtype, r.shape.clone()));
            }
        }
    }
    specs
}

fn order() -> impl Strategy<Value = Order> {
    prop_oneof![Just(Order::LargestFirst), Just(Order::AsGiven)]
}

fn specs_case() -> impl Strategy<Value = (Vec<TensorSpec>, u64, Order)> {
    (
        vec(raw_spec(), 1..14),
        proptest::bool::weighted(0.3),
        proptest::sample::select(ALIGNS.to_vec()),
        order(),
    )
        .prop_map(|(raw, single, align, order)| (build_specs(&raw, single), align, order))
}

/// A valid layout (at least one non-empty tensor).
fn layout_case() -> impl Strategy<Value = Layout> {
    specs_case().prop_filter_map("every tensor is empty", |(specs, align, order)| {
        plan(&specs, align, order).ok()
    })
}

// ---------------------------------------------------------------------------------------------
// (a) the planner obeys FORMAT.md
// ---------------------------------------------------------------------------------------------

fn check_layout(
    specs: &[TensorSpec],
    align: u64,
    ord: Order,
    layout: &Layout,
) -> Result<(), TestCaseError> {
    let f = &layout.footer;
    let counts: Vec<u64> = specs.iter().map(|s| count(&s.shape)).collect();

    // Tensor order: stable sort by element count, largest first; or exactly as given.
    let mut expected_order: Vec<usize> = (0..specs.len()).collect();
    if ord == Order::LargestFirst {
        expected_order.sort_by(|&a, &b| counts[b].cmp(&counts[a]));
    }

    // One block per dtype, in order of first appearance in the tensor order.
    let mut expected_dtypes: Vec<Dtype> = Vec::new();
    for &i in &expected_order {
        if !expected_dtypes.contains(&specs[i].dtype) {
            expected_dtypes.push(specs[i].dtype);
        }
    }
    let dtypes: Vec<Dtype> = f.blocks().iter().map(|b| b.dtype()).collect();
    prop_assert_eq!(&dtypes, &expected_dtypes, "block dtypes");
    prop_assert_eq!(f.align_bytes(), align);
    prop_assert_eq!(
        f.version(),
        if f.blocks().len() == 1 {
            FormatVersion::V3
        } else {
            FormatVersion::V4
        }
    );

    // The index lists the blocks' tensors block after block, each block's in tensor order (as
    // the original writer does; tied records sit at their own place in that order).
    let names: Vec<&str> = f.records().iter().map(|r| r.name()).collect();
    let expected_names: Vec<&str> = expected_dtypes
        .iter()
        .flat_map(|d| {
            expected_order
                .iter()
                .filter(move |&&i| specs[i].dtype == *d)
        })
        .map(|&i| specs[i].name.as_str())
        .collect();
    prop_assert_eq!(&names, &expected_names, "record order");
    for w in f.records().windows(2) {
        prop_assert!(w[0].block() <= w[1].block(), "records not grouped by block");
        if ord == Order::LargestFirst && w[0].block() == w[1].block() {
            prop_assert!(w[0].length() >= w[1].length(), "records not largest first");
        }
    }

    // Records: name, shape (0-dim stays 0-dim), length, block of the right dtype.
    let rec_of = |i: usize| f.record(&specs[i].name).expect("record for every spec");
    for (i, s) in specs.iter().enumerate() {
        let r = rec_of(i);
        prop_assert_eq!(&r.shape(), &s.shape);
        prop_assert_eq!(r.length(), counts[i]);
        prop_assert!(r.block() < f.blocks().len());
        prop_assert_eq!(f.blocks()[r.block()].dtype(), s.dtype);
        let size = s.dtype.size() as u64;
        let b = &f.blocks()[r.block()];
        prop_assert!(
            r.offset() + r.length() <= b.length_elems(),
            "record '{}' outside its block",
            r.name()
        );
        let ea = elem_align(align, size);
        if ea != 0 {
            prop_assert_eq!(
                r.offset() % ea,
                0,
                "record '{}' offset {} not aligned to {}",
                &r.name(),
                r.offset(),
                ea
            );
        }
        if let Some(t) = s.tied_to {
            let tr = rec_of(t);
            prop_assert_eq!(r.block(), tr.block(), "tied '{}' block", &r.name());
            prop_assert_eq!(r.offset(), tr.offset(), "tied '{}' offset", &r.name());
            prop_assert_eq!(r.length(), tr.length());
        }
    }

    // Blocks: aligned, tightly packed one after another, length ends at the last tensor's end.
    let mut cursor = 0u64;
    for (k, b) in f.blocks().iter().enumerate() {
        let size = b.dtype().size() as u64;
        let ba = block_align(align, size);
        prop_assert_eq!(
            b.offset_bytes() % ba,
            0,
            "block {} offset {} not a multiple of {}",
            k,
            b.offset_bytes(),
            ba
        );
        prop_assert_eq!(
            b.offset_bytes(),
            round_up(cursor, ba),
            "block {} not packed tightly",
            k
        );
        prop_assert_eq!(b.length_bytes(), b.length_elems() * size);
        // Stored (untied) members in tensor order, packed tightly at the element alignment.
        let ea = elem_align(align, size);
        let mut elems = 0u64;
        let mut last_end = None;
        for &i in &expected_order {
            if specs[i].dtype != b.dtype() || specs[i].tied_to.is_some() {
                continue;
            }
            let r = rec_of(i);
            prop_assert_eq!(r.block(), k);
            elems = round_up(elems, ea);
            prop_assert_eq!(
                r.offset(),
                elems,
                "record '{}' not packed tightly",
                &r.name()
            );
            elems += r.length();
            last_end = Some(r.offset() + r.length());
        }
        prop_assert_eq!(
            Some(b.length_elems()),
            last_end,
            "block {} must end at its last tensor's end",
            k
        );
        cursor = b.offset_bytes() + b.length_bytes();
    }
    prop_assert_eq!(
        layout.payload_len,
        cursor,
        "payload ends at the last block's end"
    );
    prop_assert_eq!(f.payload_end(), layout.payload_len);
    prop_assert_eq!(f.blocks()[0].offset_bytes(), 0);

    // No overlap between distinct stored tensors (byte ranges from the footer alone).
    let mut ranges: Vec<(u64, u64, &str)> = specs
        .iter()
        .enumerate()
        .filter(|(i, s)| s.tied_to.is_none() && counts[*i] > 0)
        .map(|(i, s)| {
            let (a, b) = f.byte_range(rec_of(i));
            (a, b, s.name.as_str())
        })
        .collect();
    ranges.sort();
    for w in ranges.windows(2) {
        prop_assert!(w[0].1 <= w[1].0, "'{}' and '{}' overlap", w[0].2, w[1].2);
    }
    for (_, end, name) in &ranges {
        prop_assert!(*end <= layout.payload_len, "'{}' past the payload", name);
    }

    // Placements: exactly the untied specs, where the footer says, within the payload, disjoint.
    let mut placed: Vec<usize> = layout.placements.iter().map(|p| p.spec).collect();
    placed.sort_unstable();
    let untied: Vec<usize> = (0..specs.len())
        .filter(|&i| specs[i].tied_to.is_none())
        .collect();
    prop_assert_eq!(&placed, &untied, "one placement per stored tensor");
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for p in &layout.placements {
        let r = rec_of(p.spec);
        let (a, b) = f.byte_range(r);
        prop_assert_eq!(p.byte_offset, a);
        prop_assert_eq!(p.nbytes, b - a);
        prop_assert_eq!(p.nbytes, counts[p.spec] * specs[p.spec].dtype.size() as u64);
        prop_assert!(p.byte_offset + p.nbytes <= layout.payload_len);
        if p.nbytes > 0 {
            spans.push((p.byte_offset, p.byte_offset + p.nbytes));
        }
    }
    spans.sort_unstable();
    for w in spans.windows(2) {
        prop_assert!(
            w[0].1 <= w[1].0,
            "placements overlap: {:?} {:?}",
            w[0],
            w[1]
        );
    }

    // The planned footer passes the reader's own validation.
    let json = f.encode().unwrap();
    let back = Footer::decode(&json, layout.payload_len);
    prop_assert_eq!(back.as_ref(), Ok(f));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn plan_obeys_the_format((specs, align, ord) in specs_case()) {
        let all_empty = specs.iter().all(|s| count(&s.shape) == 0);
        match plan(&specs, align, ord) {
            Err(e) => prop_assert!(all_empty, "plan failed on valid specs: {e}"),
            Ok(layout) => {
                prop_assert!(!all_empty, "plan must refuse a payload of empty tensors");
                check_layout(&specs, align, ord, &layout)?;
            }
        }
    }

    /// Duplicate names are refused, naming the tensor.
    #[test]
    fn plan_refuses_duplicate_names((mut specs, align, ord) in specs_case(), a in any::<Index>(), b in any::<Index>()) {
        prop_assume!(specs.len() >= 2);
        let (i, j) = (a.index(specs.len()), b.index(specs.len()));
        prop_assume!(i != j);
        let dup = specs[i].name.clone();
        specs[j].name = dup.clone();
        let e = plan(&specs, align, ord).unwrap_err();
        prop_assert_eq!(e, FormatError::DuplicateName(dup));
    }

    /// Planning is deterministic, and LargestFirst is independent of the given order only up to
    /// ties: re-planning with the records' own order as given yields the same layout.
    #[test]
    fn largest_first_equals_as_given_in_its_own_order((specs, align, _ord) in specs_case()) {
        let Ok(layout) = plan(&specs, align, Order::LargestFirst) else { return Ok(()) };
        prop_assert_eq!(&plan(&specs, align, Order::LargestFirst).unwrap(), &layout);
        // Reorder specs as the layout stored them (remapping tie targets) and plan AsGiven.
        let pos: Vec<usize> = layout.footer.records().iter()
            .map(|r| specs.iter().position(|s| s.name == r.name()).unwrap())
            .collect();
        let mut inverse = vec![0; specs.len()];
        for (new, &old) in pos.iter().enumerate() { inverse[old] = new; }
        let reordered: Vec<TensorSpec> = pos.iter().map(|&old| {
            let mut s = specs[old].clone();
            s.tied_to = s.tied_to.map(|t| inverse[t]);
            s
        }).collect();
        let again = plan(&reordered, align, Order::AsGiven).unwrap();
        prop_assert_eq!(&again.footer, &layout.footer);
        prop_assert_eq!(again.payload_len, layout.payload_len);
    }
}

#[test]
fn plan_refuses_empty_and_all_empty_inputs() {
    assert_eq!(
        plan(&[], 128, Order::LargestFirst).unwrap_err(),
        FormatError::Empty
    );
    let specs = vec![
        TensorSpec::new("a", Dtype::F32, vec![0, 3]),
        TensorSpec::new("b", Dtype::I8, vec![2, 0]),
    ];
    assert!(plan(&specs, 128, Order::LargestFirst).is_err());
    assert!(plan(&specs, 0, Order::AsGiven).is_err());
}

#[test]
fn plan_refuses_bad_ties() {
    let base = || {
        vec![
            TensorSpec::new("a", Dtype::F32, vec![2, 2]),
            TensorSpec::new("b", Dtype::F32, vec![2, 2]),
        ]
    };
    // Tied to a tensor that does not exist.
    let mut s = base();
    s[1].tied_to = Some(7);
    let e = plan(&s, 128, Order::LargestFirst).unwrap_err().to_string();
    assert!(e.contains("'b'"), "{e}");
    // Tied to itself.
    let mut s = base();
    s[1].tied_to = Some(1);
    assert!(plan(&s, 128, Order::LargestFirst).is_err());
    // Tied with another dtype or shape.
    let mut s = base();
    s[1].dtype = Dtype::F16;
    s[1].tied_to = Some(0);
    assert!(plan(&s, 128, Order::LargestFirst)
        .unwrap_err()
        .to_string()
        .contains("'b'"));
    let mut s = base();
    s[1].shape = vec![4];
    s[1].tied_to = Some(0);
    assert!(plan(&s, 128, Order::LargestFirst).is_err());
    // Tied to a tied tensor (chains are refused).
    let mut s = base();
    s.push(TensorSpec::new("c", Dtype::F32, vec![2, 2]));
    s[1].tied_to = Some(0);
    s[2].tied_to = Some(1);
    assert!(plan(&s, 128, Order::LargestFirst).is_err());
}

#[test]
fn plan_refuses_overflowing_shapes() {
    let s = vec![TensorSpec::new("huge", Dtype::F32, vec![u64::MAX, 2])];
    assert!(plan(&s, 128, Order::LargestFirst)
        .unwrap_err()
        .to_string()
        .contains("huge"));
    let s = vec![TensorSpec::new("huge", Dtype::C128, vec![u64::MAX / 8])];
    assert!(plan(&s, 128, Order::LargestFirst)
        .unwrap_err()
        .to_string()
        .contains("huge"));
    // Each tensor fits, but the payload as a whole does not.
    let s = vec![
        TensorSpec::new("a", Dtype::U8, vec![u64::MAX / 2 + 1]),
        TensorSpec::new("b", Dtype::U8, vec![u64::MAX / 2 + 1]),
    ];
    assert!(plan(&s, 128, Order::LargestFirst).is_err());
    let s = vec![
        TensorSpec::new("a", Dtype::U8, vec![u64::MAX - 3]),
        TensorSpec::new("b", Dtype::F64, vec![1]),
    ];
    assert!(plan(&s, 128, Order::AsGiven).is_err());
}

/// A hand-checked layout: the writer default (align 128, largest first) with mixed dtypes.
#[test]
fn plan_matches_a_hand_computed_layout() {
    let specs = vec![
        TensorSpec::new("bias", Dtype::F32, vec![3]), // 3 elems
        TensorSpec::new("weight", Dtype::F32, vec![5, 7]), // 35 elems
        TensorSpec::new("step", Dtype::I64, vec![]),  // 1 elem, 0-dim
        TensorSpec::new("mask", Dtype::Bool, vec![10]), // 10 elems
        TensorSpec::new("ids", Dtype::I64, vec![3]),  // 3 elems
    ];
    let l = plan(&specs, 128, Order::LargestFirst).unwrap();
    let names: Vec<_> = l.footer.records().iter().map(|r| r.name()).collect();
    assert_eq!(names, ["weight", "bias", "mask", "ids", "step"]); // grouped by block
    let b = &l.footer.blocks();
    assert_eq!(
        b.iter().map(|b| b.dtype()).collect::<Vec<_>>(),
        [Dtype::F32, Dtype::Bool, Dtype::I64]
    );
    // f32: weight at 0 (35 elems), bias at round_up(35, 32) = 64, ends at 67.
    assert_eq!(
        (
            b[0].offset_bytes(),
            b[0].length_elems(),
            b[0].length_bytes()
        ),
        (0, 67, 268)
    );
    // bool: starts at round_up(268, 128) = 384, 10 bytes.
    assert_eq!((b[1].offset_bytes(), b[1].length_elems()), (384, 10));
    // i64: starts at round_up(394, 128) = 512; ids at 0, step at 16 (128 / 8); ends at 17.
    assert_eq!(
        (
            b[2].offset_bytes(),
            b[2].length_elems(),
            b[2].length_bytes()
        ),
        (512, 17, 136)
    );
    assert_eq!(l.payload_len, 648);
    let step = l.footer.record("step").unwrap();
    assert_eq!(
        (
            step.offset(),
            step.length(),
            step.shape().to_vec(),
            step.block()
        ),
        (16, 1, vec![], 2)
    );
    assert_eq!(l.footer.version(), FormatVersion::V4);
}

// ---------------------------------------------------------------------------------------------
// (b) the footer codec
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn footer_round_trips_and_matches_the_original_writer(layout in layout_case()) {
        let json = layout.footer.encode().unwrap();
        let text = std::str::from_utf8(&json).expect("footer is UTF-8");
        prop_assert_eq!(text, expected_json(&layout.footer, layout.payload_len));
        let expect_v3 = layout.footer.blocks().len() == 1;
        let prefix = if expect_v3 { r#"{"format":"flashpack_v3","# } else { r#"{"format":"flashpack_v4","# };
        prop_assert!(text.starts_with(prefix));
        let back = Footer::decode(&json, layout.payload_len).unwrap();
        prop_assert_eq!(&back, &layout.footer);
        // Re-encoding the decoded footer gives the same bytes.
        prop_assert_eq!(back.encode().unwrap(), json.clone());
        // The payload must be exactly what the footer declares: bytes added anywhere would shift
        // the tensors (the original writer puts the footer right after the last block).
        let longer = Footer::decode(&json, layout.payload_len + 4096).unwrap_err();
        prop_assert!(matches!(longer, flashpack::FormatError::PayloadSize { .. }), "{longer}");
        // One byte less payload than the blocks need is refused.
        prop_assert!(Footer::decode(&json, layout.payload_len - 1).is_err());
    }

    /// Extra (extension) keys survive a round trip and are written after the format's keys.
    #[test]
    fn footer_extra_keys_round_trip(layout in layout_case(), n in 0u64..1000) {
        // A footer is read-only: one with extras is made by decoding JSON that has them.
        let x = json!({"algorithm": "xxh64", "chunk_bytes": 1 << 20, "values": [n, n + 1]});
        // The checksums key (ours) round-trips too, and is written last.
        let chunk = (layout.payload_len / 8).div_ceil(4096).max(1) * 4096;
        let count = layout.payload_len.div_ceil(chunk);
        let sums = flashpack::format::Checksums {
            algorithm: "xxh3-64".into(),
            chunk_bytes: chunk,
            digests: (0..count).map(|i| i.wrapping_mul(n).wrapping_add(u64::MAX - n)).collect(),
        };
        let base = expected_json(&layout.footer, layout.payload_len);
        let written = format!(
            r#"{},"x_checksums":{x},"zz_note":"héllo","checksums":{}}}"#,
            &base[..base.len() - 1],
            sums.to_json()
        );
        let f = Footer::decode(written.as_bytes(), layout.payload_len).unwrap();
        prop_assert_eq!(f.extra().len(), 2);
        prop_assert_eq!(f.checksums(), Some(&sums));
        let json = f.encode().unwrap();
        let text = String::from_utf8(json.clone()).unwrap();
        // Same prefix as without extras, extras appended after "index", checksums last.
        prop_assert_eq!(&text, &written);
        prop_assert!(text.find(r#""checksums":"#) > text.find(r#""zz_note":"#));
        let back = Footer::decode(&json, layout.payload_len).unwrap();
        prop_assert_eq!(back, f);
    }
}

#[test]
fn footer_json_matches_the_format_md_examples() {
    let specs = vec![TensorSpec::new("w", Dtype::BF16, vec![4096, 4096])];
    let l = plan(&specs, 128, Order::LargestFirst).unwrap();
    assert_eq!(
        String::from_utf8(l.footer.encode().unwrap()).unwrap(),
        r#"{"format":"flashpack_v3","target_dtype":"bfloat16","align_bytes":128,"total_elems":16777216,"index":[{"name":"w","shape":[4096,4096],"offset":0,"length":16777216}]}"#
    );
    let specs = vec![
        TensorSpec::new("w", Dtype::F32, vec![4, 4]),
        TensorSpec::new("n", Dtype::I64, vec![]),
    ];
    let l = plan(&specs, 128, Order::LargestFirst).unwrap();
    assert_eq!(
        String::from_utf8(l.footer.encode().unwrap()).unwrap(),
        r#"{"format":"flashpack_v4","align_bytes":128,"total_payload_bytes":136,"total_elems":17,"macroblocks":[{"dtype":"float32","offset_bytes":0,"length_bytes":64,"length_elems":16},{"dtype":"int64","offset_bytes":128,"length_bytes":8,"length_elems":1}],"index":[{"name":"w","shape":[4,4],"offset":0,"length":16,"macroblock":0},{"name":"n","shape":[],"offset":0,"length":1,"macroblock":1}]}"#
    );
}

#[test]
fn footer_keeps_non_ascii_raw_and_escapes_like_python() {
    let specs = vec![TensorSpec::new("名前.é\"\\\n\u{1}", Dtype::U8, vec![2])];
    let l = plan(&specs, 128, Order::LargestFirst).unwrap();
    let text = String::from_utf8(l.footer.encode().unwrap()).unwrap();
    assert!(text.contains(r#""name":"名前.é\"\\\n\u0001""#), "{text}");
    assert!(!text.contains(' '), "compact JSON has no spaces: {text}");
}

/// Files from the original package (and other writers) may order keys differently, omit the
/// optional keys and carry unknown ones; all of that must be accepted.
#[test]
fn footer_decode_accepts_other_key_orders_and_unknown_keys() {
    let json = br#"{"index":[{"length":4,"offset":0,"shape":[2,2],"name":"w","extra":1}],"total_elems":4,"align_bytes":128,"target_dtype":"float32","format":"flashpack_v3","created_by":"someone"}"#;
    let f = Footer::decode(json, 16).unwrap();
    assert_eq!(f.version(), FormatVersion::V3);
    assert_eq!(f.records()[0].shape(), vec![2, 2]);
    assert_eq!(f.extra().get("created_by"), Some(&json!("someone")));
    // v4 without total_payload_bytes / total_elems.
    let json = br#"{"format":"flashpack_v4","align_bytes":0,"macroblocks":[{"dtype":"int8","offset_bytes":0,"length_bytes":3,"length_elems":3},{"dtype":"float16","offset_bytes":4,"length_bytes":2,"length_elems":1}],"index":[{"name":"a","shape":[3],"offset":0,"length":3,"macroblock":0},{"name":"b","shape":[],"offset":0,"length":1,"macroblock":1}]}"#;
    let f = Footer::decode(json, 6).unwrap();
    assert_eq!(f.blocks().len(), 2);
    assert_eq!(f.records()[1].shape(), Vec::<u64>::new());
}

// ---------------------------------------------------------------------------------------------
// (c) decoding garbage never panics
// ---------------------------------------------------------------------------------------------

/// What `decode` promises when it returns Ok: every block and record lies inside the payload,
/// names are unique and shapes match lengths.
fn check_valid(f: &Footer, payload_len: u64) -> Result<(), TestCaseError> {
    for b in f.blocks() {
        let end = b.offset_bytes().checked_add(b.length_bytes());
        prop_assert!(end.is_some_and(|e| e <= payload_len));
        prop_assert_eq!(
            b.length_elems().checked_mul(b.dtype().size() as u64),
            Some(b.length_bytes())
        );
    }
    let mut names = std::collections::HashSet::new();
    for r in f.records() {
        prop_assert!(names.insert(r.name()));
        prop_assert!(r.block() < f.blocks().len());
        let b = &f.blocks()[r.block()];
        prop_assert!(r
            .offset()
            .checked_add(r.length())
            .is_some_and(|e| e <= b.length_elems()));
        prop_assert_eq!(
            r.shape().iter().try_fold(1u64, |a, &d| a.checked_mul(d)),
            Some(r.length())
        );
        let (start, end) = f.byte_range(r);
        prop_assert!(start <= end && end <= payload_len);
    }
    Ok(())
}

#[derive(Clone, Debug)]
enum ByteMut {
    Flip(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Truncate(Index),
}

const TOKENS: &[&[u8]] = &[
    b"-1",
    b"0",
    b"1.5",
    b"1e400",
    b"18446744073709551615",
    b"18446744073709551616",
    b"99999999999999999999999999",
    b"null",
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\xff",
    b"\xc3",
    b"\\ud800",
];

fn byte_mut() -> impl Strategy<Value = ByteMut> {
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| ByteMut::Flip(i, b)),
        (
            any::<Index>(),
            prop_oneof![
                proptest::sample::select(TOKENS.to_vec()).prop_map(<[u8]>::to_vec),
                vec(any::<u8>(), 1..4)
            ]
        )
            .prop_map(|(i, t)| ByteMut::Insert(i, t)),
        (any::<Index>(), 1usize..8).prop_map(|(i, n)| ByteMut::Delete(i, n)),
        any::<Index>().prop_map(ByteMut::Truncate),
    ]
}

fn apply_byte_mut(json: &mut Vec<u8>, m: &ByteMut) {
    if json.is_empty() {
        return;
    }
    match m {
        ByteMut::Flip(i, b) => {
            let k = i.index(json.len());
            json[k] ^= b.max(&1);
        }
        ByteMut::Insert(i, t) => {
            let k = i.index(json.len() + 1);
            json.splice(k..k, t.iter().copied());
        }
        ByteMut::Delete(i, n) => {
            let k = i.index(json.len());
            let end = (k + n).min(json.len());
            json.drain(k..end);
        }
        ByteMut::Truncate(i) => json.truncate(i.index(json.len())),
    }
}

fn interesting_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(u64::MAX)),
        Just(json!(u64::MAX - 1)),
        Just(json!(1u64 << 63)),
        Just(json!(1u64 << 32)),
        Just(json!(0)),
        Just(json!(1)),
        Just(json!(-1)),
        Just(json!(i64::MIN)),
        Just(json!(1.5)),
        Just(json!(1e300)),
        Just(json!(null)),
        Just(json!(true)),
        Just(json!("")),
        Just(json!("float32")),
        Just(json!("flashpack_v4")),
        Just(json!("flashpack_v3")),
        Just(json!([])),
        Just(json!([u64::MAX, u64::MAX])),
        Just(json!({})),
        any::<u64>().prop_map(|v| json!(v)),
        (0u64..300).prop_map(|v| json!(v)),
        any::<i64>().prop_map(|v| json!(v)),
    ]
}

#[derive(Clone, Debug)]
enum ValueMut {
    Replace(Index, Value),
    Remove(Index),
    Duplicate(Index),
}

fn value_mut() -> impl Strategy<Value = ValueMut> {
    prop_oneof![
        4 => (any::<Index>(), interesting_value()).prop_map(|(i, v)| ValueMut::Replace(i, v)),
        1 => any::<Index>().prop_map(ValueMut::Remove),
        1 => any::<Index>().prop_map(ValueMut::Duplicate),
    ]
}

/// Every path (list of object keys / array indices) in a JSON value, the root excluded.
fn paths(v: &Value, prefix: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                prefix.push(Value::String(k.clone()));
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                prefix.push(json!(i));
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn apply_value_mut(root: &mut Value, m: &ValueMut) {
    let mut all = Vec::new();
    paths(root, &mut Vec::new(), &mut all);
    if all.is_empty() {
        return;
    }
    let idx = match m {
        ValueMut::Replace(i, _) | ValueMut::Remove(i) | ValueMut::Duplicate(i) => {
            i.index(all.len())
        }
    };
    let path = &all[idx];
    let (last, parent_path) = path.split_last().unwrap();
    let mut parent = &mut *root;
    for step in parent_path {
        parent = match step {
            Value::String(k) => parent.get_mut(k.as_str()).unwrap(),
            _ => parent.get_mut(step.as_u64().unwrap() as usize).unwrap(),
        };
    }
    match (m, parent, last) {
        (ValueMut::Replace(_, v), Value::Object(map), Value::String(k)) => {
            map.insert(k.clone(), v.clone());
        }
        (ValueMut::Replace(_, v), Value::Array(a), i) => {
            a[i.as_u64().unwrap() as usize] = v.clone()
        }
        (ValueMut::Remove(_), Value::Object(map), Value::String(k)) => {
            map.remove(k);
        }
        (ValueMut::Remove(_), Value::Array(a), i) => {
            a.remove(i.as_u64().unwrap() as usize);
        }
        (ValueMut::Duplicate(_), Value::Array(a), i) => {
            let v = a[i.as_u64().unwrap() as usize].clone();
            a.push(v);
        }
        (ValueMut::Duplicate(_), Value::Object(map), Value::String(k)) => {
            let v = map[k.as_str()].clone();
            map.insert(format!("{k}_copy"), v);
        }
        _ => {}
    }
}

fn payload_len_for(layout: &Layout, pick: u8, random: u64) -> u64 {
    match pick % 6 {
        0 | 1 => layout.payload_len,
        2 => layout.payload_len.saturating_sub(1),
        3 => 0,
        4 => u64::MAX,
        _ => random,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn decode_of_arbitrary_bytes_never_panics(bytes in vec(any::<u8>(), 0..512), payload_len in any::<u64>()) {
        if let Ok(f) = Footer::decode(&bytes, payload_len) {
            check_valid(&f, payload_len)?;
        }
    }

    #[test]
    fn decode_of_json_like_text_never_panics(
        text in r#"[{}\[\]",:0-9a-z_ .\-e]{0,200}"#,
        payload_len in prop_oneof![Just(0u64), 0u64..100_000, Just(u64::MAX)],
    ) {
        if let Ok(f) = Footer::decode(text.as_bytes(), payload_len) {
            check_valid(&f, payload_len)?;
        }
    }

    #[test]
    fn decode_of_byte_mutated_footers_never_panics(
        layout in layout_case(),
        muts in vec(byte_mut(), 1..5),
        pick in any::<u8>(),
        random in any::<u64>(),
    ) {
        let mut json = layout.footer.encode().unwrap();
        for m in &muts {
            apply_byte_mut(&mut json, m);
        }
        let payload_len = payload_len_for(&layout, pick, random);
        if let Ok(f) = Footer::decode(&json, payload_len) {
            check_valid(&f, payload_len)?;
        }
    }

    #[test]
    fn decode_of_structurally_mutated_footers_never_panics(
        layout in layout_case(),
        muts in vec(value_mut(), 1..4),
        pick in any::<u8>(),
        random in any::<u64>(),
    ) {
        let mut v: Value = serde_json::from_slice(&layout.footer.encode().unwrap()).unwrap();
        for m in &muts {
            apply_value_mut(&mut v, m);
        }
        let json = serde_json::to_vec(&v).unwrap();
        let payload_len = payload_len_for(&layout, pick, random);
        if let Ok(f) = Footer::decode(&json, payload_len) {
            check_valid(&f, payload_len)?;
        }
    }
}

/// Sets one numeric field of the footer (top-level, a block's or a record's) to an interesting value.
fn set_number(root: &mut Value, which: usize, pick: Index, v: Value) {
    const TOP: &[&str] = &["align_bytes", "total_elems", "total_payload_bytes"];
    const BLOCK: &[&str] = &["offset_bytes", "length_bytes", "length_elems"];
    const RECORD: &[&str] = &["offset", "length", "macroblock", "shape"];
    match which % 3 {
        0 => {
            root[TOP[pick.index(TOP.len())]] = v;
        }
        1 => {
            if let Some(Value::Array(blocks)) = root.get_mut("macroblocks") {
                let n = blocks.len();
                blocks[pick.index(n)][BLOCK[pick.index(BLOCK.len() * 7) % BLOCK.len()]] = v;
            } else {
                root["total_elems"] = v;
            }
        }
        _ => {
            if let Some(Value::Array(recs)) = root.get_mut("index") {
                let n = recs.len();
                let key = RECORD[pick.index(RECORD.len() * 5) % RECORD.len()];
                let rec = &mut recs[pick.index(n)];
                if key == "shape" {
                    if let Some(Value::Array(dims)) = rec.get_mut("shape") {
                        if dims.is_empty() {
                            dims.push(v);
                        } else {
                            let k = pick.index(dims.len());
                            dims[k] = v;
                        }
                    }
                } else {
                    rec[key] = v;
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn decode_of_footers_with_extreme_numbers_never_panics(
        layout in layout_case(),
        edits in vec((any::<usize>(), any::<Index>(), interesting_value()), 1..4),
        pick in any::<u8>(),
        random in any::<u64>(),
    ) {
        let mut v: Value = serde_json::from_slice(&layout.footer.encode().unwrap()).unwrap();
        for (which, at, value) in edits {
            set_number(&mut v, which, at, value);
        }
        let json = serde_json::to_vec(&v).unwrap();
        let payload_len = payload_len_for(&layout, pick, random);
        if let Ok(f) = Footer::decode(&json, payload_len) {
            check_valid(&f, payload_len)?;
        }
    }
}

#[test]
fn decode_of_deeply_nested_json_is_an_error_not_a_stack_overflow() {
    let mut s = "[".repeat(100_000);
    s.push_str(&"]".repeat(100_000));
    assert!(Footer::decode(s.as_bytes(), 0).is_err());
    let s = format!(
        r#"{{"format":"flashpack_v3","x":{}{}}}"#,
        "{\"a\":".repeat(50_000),
        "}".repeat(50_000)
    );
    assert!(Footer::decode(s.as_bytes(), 0).is_err());
}

/// Regression: a crafted `align_bytes` whose lcm with the element size overflows u64 (e.g.
/// u64::MAX) used to panic in `block_alignment`; it must be an error, in decode and in plan.
#[test]
fn regression_block_alignment_overflow_panics() {
    let json = br#"{"format":"flashpack_v3","target_dtype":"float64","align_bytes":18446744073709551615,"total_elems":1,"index":[{"name":"w","shape":[],"offset":0,"length":1}]}"#;
    let r = std::panic::catch_unwind(|| Footer::decode(json, 8));
    assert!(
        matches!(r, Ok(Err(_))),
        "decode must return an error, got {r:?}"
    );
    // The planner has the same problem with a caller-given alignment.
    let specs = vec![TensorSpec::new("w", Dtype::F64, vec![1])];
    let r = std::panic::catch_unwind(|| plan(&specs, u64::MAX, Order::LargestFirst));
    assert!(
        matches!(r, Ok(Err(_))),
        "plan must return an error, got {r:?}"
    );
}
