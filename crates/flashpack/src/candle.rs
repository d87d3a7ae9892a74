//! candle support (feature `candle`): FlashPack files, and safetensors files read through the
//! engine, as candle tensors, and a [`VarBuilder`] backend so a candle model builds from a pack.
//!
//! Tensors are created with candle's own `Tensor::from_raw_buffer` from the loaded bytes, with the
//! same dtype rules as candle's safetensors loader (`uint16` widens to `u32`, `bool` is `u8`),
//! so a model gives the same results whichever file it was built from.
//!
//! ```
//! use candle_core::{DType, Device};
//! use flashpack::{read::LoadOptions, write::{pack, PackEntry, PackOptions}, Dtype};
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("m.flashpack");
//! let w: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect();
//! pack(&path, &[PackEntry::new("lin.weight", Dtype::F32, vec![2, 2], &w)], &PackOptions::default()).unwrap();
//! let vb = flashpack::candle::var_builder(&path, DType::F32, &Device::Cpu, &LoadOptions::default()).unwrap();
//! let t = vb.pp("lin").get((2, 2), "weight").unwrap();
//! assert_eq!(t.to_vec2::<f32>().unwrap(), vec![vec![1.0, 2.0], vec![3.0, 4.0]]);
//! ```
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::{SimpleBackend, VarBuilder};

use crate::read::LoadOptions;
use crate::weights::{TensorView, WeightFile, Weights};
use crate::{Dtype, Error, Result};

/// candle's dtype for a stored dtype (`uint16` is widened to `u32` and `bool` read as `u8`,
/// as candle's own safetensors loader does; packed fp4 is candle's `F4`, whose shape counts
/// 4-bit values, as safetensors' does); `None` where candle has no such type.
pub fn candle_dtype(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::U8 | Dtype::Bool => DType::U8,
        Dtype::U16 | Dtype::U32 => DType::U32,
        Dtype::I16 => DType::I16,
        Dtype::I32 => DType::I32,
        Dtype::I64 => DType::I64,
        Dtype::BF16 => DType::BF16,
        Dtype::F16 => DType::F16,
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        Dtype::F8E4M3 => DType::F8E4M3,
        Dtype::F8E8M0 => DType::F8E8M0,
        Dtype::F4E2M1X2 => DType::F4,
        _ => return None,
    })
}

fn candle_err(path: &Path, name: &str, e: candle_core::Error) -> Error {
    Error::Candle {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        source: Box::new(e),
    }
}

/// One loaded tensor as a candle tensor on `device` (a copy of its bytes).
pub fn to_tensor(path: &Path, view: &TensorView<'_>, device: &Device) -> Result<Tensor> {
    let shape: Vec<usize> = view
        .shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| {
            Error::Unsupported(format!(
                "{}: tensor '{}': shape too large for this platform",
                path.display(),
                view.name
            ))
        })?;
    let err = |e| candle_err(path, view.name, e);
    match view.dtype {
        Dtype::F4E2M1X2 => {
            // candle's F4 has no element size of its own: made as candle's safetensors loader
            // makes it, from a safetensors view (shape in 4-bit values, last dimension doubled).
            use candle_core::safetensors::Load;
            let shape =
                crate::weights::safetensors_shape(view.dtype, view.shape).ok_or_else(|| {
                    Error::Unsupported(format!(
                        "{}: tensor '{}': a 0-dim float4_e2m1fn_x2 has no candle shape",
                        path.display(),
                        view.name
                    ))
                })?;
            let st = safetensors::tensor::TensorView::new(safetensors::Dtype::F4, shape, view.data)
                .map_err(|e| {
                    Error::Unsupported(format!("{}: tensor '{}': {e}", path.display(), view.name))
                })?;
            st.load(device).map_err(err)
        }
        Dtype::U16 => {
            let wide: Vec<u32> = view
                .data
                .chunks_exact(2)
                .map(|b| u32::from(u16::from_le_bytes([b[0], b[1]])))
                .collect();
            Tensor::from_vec(wide, shape, device).map_err(err)
        }
        d => {
            let dtype = candle_dtype(d).ok_or_else(|| {
                Error::Unsupported(format!(
                    "{}: tensor '{}': candle has no {d} type",
                    path.display(),
                    view.name
                ))
            })?;
            Tensor::from_raw_buffer(view.data, dtype, &shape, device).map_err(err)
        }
    }
}

/// Every tensor of a FlashPack or safetensors file as candle tensors on `device`.
pub fn load(
    path: impl AsRef<Path>,
    device: &Device,
    opts: &LoadOptions,
) -> Result<HashMap<String, Tensor>> {
    let path = path.as_ref();
    let weights = WeightFile::open(path)?.load(opts)?;
    weights
        .iter()
        .map(|v| Ok((v.name.to_string(), to_tensor(path, &v, device)?)))
        .collect()
}

/// A [`SimpleBackend`] over loaded weights: tensors are made on demand, cast to the requested
/// dtype, and their shapes checked.
pub struct FlashPackBackend {
    weights: Weights,
}

impl FlashPackBackend {
    /// A backend over `weights` (already loaded).
    pub fn new(weights: Weights) -> Self {
        FlashPackBackend { weights }
    }

    fn tensor(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let view = self.weights.get(name).ok_or_else(|| {
            candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt()
        })?;
        to_tensor(self.weights.path(), &view, dev)
            .map_err(candle_core::Error::wrap)?
            .to_dtype(dtype)
    }
}

impl SimpleBackend for FlashPackBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.tensor(name, dtype, dev)?;
        if t.shape() != &s {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!(
                    "{}: shape mismatch for {name}",
                    self.weights.path().display()
                ),
                expected: s,
                got: t.shape().clone(),
            }
            .bt());
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.tensor(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.weights.get(name).is_some()
    }
}

/// A [`VarBuilder`] reading a FlashPack or safetensors file through the engine (`opts` says lazy
/// or eager, I/O mode, verification).
pub fn var_builder(
    path: impl AsRef<Path>,
    dtype: DType,
    device: &Device,
    opts: &LoadOptions,
) -> Result<VarBuilder<'static>> {
    let weights = WeightFile::open(path)?.load(opts)?;
    Ok(VarBuilder::from_backend(
        Box::new(FlashPackBackend::new(weights)),
        dtype,
        device.clone(),
    ))
}
