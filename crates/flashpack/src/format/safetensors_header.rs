//! safetensors headers as values, no I/O: our dtypes and shapes for safetensors' (and back),
//! a header entry as a [`TensorInfo`] (or why it cannot load), and the tensor at fault in a
//! header the `safetensors` crate refused. Shared by local and remote weight files.
use std::collections::HashMap;

use super::tensors::{TensorInfo, UnloadableTensor};
use super::Dtype;

/// The safetensors header shape of a tensor of ours: the same, except for packed fp4
/// (`float4_e2m1fn_x2`, one byte per two values), whose last dimension safetensors counts in
/// 4-bit values (twice ours). `None` for a 0-dim fp4 pair (safetensors has no shape for it)
/// or a dimension beyond `usize`.
pub fn safetensors_shape(dtype: Dtype, shape: &[u64]) -> Option<Vec<usize>> {
    let mut out = shape
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .collect::<Option<Vec<usize>>>()?;
    if dtype == Dtype::F4E2M1X2 {
        let last = out.last_mut()?;
        *last = last.checked_mul(2)?;
    }
    Some(out)
}

/// How the engine holds a safetensors tensor of dtype `dtype` and header shape `shape`: our
/// dtype and shape (fp4's last dimension halved: two values per byte), or why it cannot (a
/// dtype torch has no type for, F6_E2M3 and F6_E3M2; fp4 with an odd last dimension, which
/// torch's `float4_e2m1fn_x2` cannot hold). Such a tensor is listed as unloadable: the file
/// still opens and its other tensors load.
pub(crate) fn from_safetensors_entry(
    dtype: safetensors::Dtype,
    shape: &[usize],
) -> std::result::Result<(Dtype, Vec<u64>), String> {
    let ours = from_safetensors_dtype(dtype).ok_or_else(|| {
        format!("dtype {dtype:?} is not supported: torch has no such dtype (nor does safetensors.torch)")
    })?;
    let mut shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    if ours == Dtype::F4E2M1X2 {
        match shape.last_mut() {
            Some(last) if *last % 2 == 0 => *last /= 2,
            _ => {
                return Err(format!(
                    "dtype F4 of shape {shape:?} cannot be loaded: torch's float4_e2m1fn_x2 \
                     holds two values per byte, so the last dimension must be even"
                ))
            }
        }
    }
    Ok((ours, shape))
}

/// safetensors' dtype for ours, where safetensors has one.
pub fn to_safetensors_dtype(d: Dtype) -> Option<safetensors::Dtype> {
    use safetensors::Dtype as S;
    Some(match d {
        Dtype::F64 => S::F64,
        Dtype::F32 => S::F32,
        Dtype::F16 => S::F16,
        Dtype::BF16 => S::BF16,
        Dtype::F8E4M3 => S::F8_E4M3,
        Dtype::F8E4M3Fnuz => S::F8_E4M3FNUZ,
        Dtype::F8E5M2 => S::F8_E5M2,
        Dtype::F8E5M2Fnuz => S::F8_E5M2FNUZ,
        Dtype::F8E8M0 => S::F8_E8M0,
        Dtype::C64 => S::C64,
        Dtype::I64 => S::I64,
        Dtype::U64 => S::U64,
        Dtype::I32 => S::I32,
        Dtype::U32 => S::U32,
        Dtype::I16 => S::I16,
        Dtype::U16 => S::U16,
        Dtype::I8 => S::I8,
        Dtype::U8 => S::U8,
        Dtype::Bool => S::BOOL,
        Dtype::F4E2M1X2 => S::F4,
        Dtype::C128 | Dtype::C32 => return None,
    })
}

/// Our dtype for safetensors', where we have one (`F4` is `float4_e2m1fn_x2`; the 6-bit
/// types have none).
pub fn from_safetensors_dtype(d: safetensors::Dtype) -> Option<Dtype> {
    Dtype::ALL
        .iter()
        .copied()
        .find(|&ours| to_safetensors_dtype(ours) == Some(d))
}

/// Tensor `name` of a safetensors file (bytes `start..end` of the file), as the engine holds
/// it, or as an unloadable tensor saying why (see [`from_safetensors_entry`]).
pub(crate) fn tensor_entry(
    name: String,
    info: &safetensors::tensor::TensorInfo,
    start: u64,
    end: u64,
) -> std::result::Result<TensorInfo, UnloadableTensor> {
    match from_safetensors_entry(info.dtype, &info.shape) {
        Ok((dtype, shape)) => Ok(TensorInfo {
            name,
            dtype,
            shape,
            start,
            end,
        }),
        Err(reason) => Err(UnloadableTensor {
            name,
            dtype: format!("{:?}", info.dtype),
            shape: info.shape.iter().map(|&d| d as u64).collect(),
            start,
            end,
            reason,
        }),
    }
}

/// The largest header the `safetensors` crate parses or writes (100 MB); larger is
/// `HeaderTooLarge`.
pub(crate) const MAX_SAFETENSORS_HEADER: usize = 100_000_000;

/// The tensor at fault in a safetensors header the `safetensors` crate refused, and what is
/// wrong with it (see `weights`' `explain_bad_tensor`), from the header's JSON, the offset of the first tensor byte and
/// the file's length (for a file that is not all in memory).
pub(crate) fn explain_bad_entry(
    header: &[u8],
    data_start: usize,
    file_len: usize,
) -> Option<(String, String)> {
    let header: HashMap<String, serde_json::Value> = serde_json::from_slice(header).ok()?;
    let mut tensors: Vec<(&String, safetensors::tensor::TensorInfo)> = header
        .iter()
        .filter(|(name, _)| name.as_str() != "__metadata__")
        .filter_map(|(name, v)| Some((name, serde_json::from_value(v.clone()).ok()?)))
        .collect();
    tensors.sort_by_key(|(_, t)| t.data_offsets);
    tensors.into_iter().find_map(|(name, t)| {
        let bits = t
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(t.dtype.bitsize()));
        let (s, e) = t.data_offsets;
        let end = data_start.saturating_add(e);
        let why = match bits {
            Some(b) if b % 8 == 0 && e.checked_sub(s) == Some(b / 8) => {
                (end > file_len).then(|| {
                    format!(
                        "it ends at byte {end}, past the end of the {file_len}-byte file (truncated?)"
                    )
                })
            }
            _ => Some(format!(
                "its shape {:?} and dtype {:?} do not fit its data_offsets {s}..{e}",
                t.shape, t.dtype
            )),
        };
        why.map(|why| (name.clone(), why))
    })
}
