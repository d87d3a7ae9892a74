//! candle tensors from a pack and from safetensors through the engine equal candle's own
//! safetensors loading, dtype conversions included.
#![cfg(feature = "candle")]

use candle_core::{DType, Device};
use flashpack::read::LoadOptions;
use flashpack::weights::WeightFile;
use flashpack::write::{pack, PackEntry, PackOptions};
use flashpack::Dtype;

#[test]
fn pack_and_safetensors_give_candles_own_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let f32s: Vec<u8> = (0..600)
        .flat_map(|i| (i as f32 * 0.25 - 7.0).to_le_bytes())
        .collect();
    let bf16s: Vec<u8> = (0..301u16)
        .flat_map(|i| (0x3f80u16 + i).to_le_bytes())
        .collect();
    let u16s: Vec<u8> = (0..50u16).flat_map(|i| (i * 1000).to_le_bytes()).collect();
    let i64s: Vec<u8> = (0..7i64).flat_map(|i| (i - 3).to_le_bytes()).collect();
    let entries = [
        PackEntry::new("w", Dtype::F32, vec![20, 30], &f32s),
        PackEntry::new("b", Dtype::BF16, vec![301], &bf16s),
        PackEntry::new("u", Dtype::U16, vec![5, 10], &u16s),
        PackEntry::new("ids", Dtype::I64, vec![7], &i64s),
    ];
    let fp = dir.path().join("m.flashpack");
    pack(&fp, &entries, &PackOptions::default()).unwrap();
    let st = dir.path().join("m.safetensors");
    WeightFile::open(&fp).unwrap().to_safetensors(&st).unwrap();

    let theirs = candle_core::safetensors::load(&st, &Device::Cpu).unwrap();
    for path in [&fp, &st] {
        for eager in [false, true] {
            let opts = LoadOptions {
                eager,
                ..Default::default()
            };
            let ours = flashpack::candle::load(path, &Device::Cpu, &opts).unwrap();
            assert_eq!(ours.len(), theirs.len());
            for (name, t) in &theirs {
                let o = &ours[name];
                assert_eq!((o.dtype(), o.shape()), (t.dtype(), t.shape()), "{name}");
                let diff =
                    (o.to_dtype(DType::F64).unwrap() - t.to_dtype(DType::F64).unwrap()).unwrap();
                let max = diff
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap();
                assert_eq!(max, 0.0, "{name} differs ({path:?}, eager {eager})");
            }
        }
    }
    assert_eq!(
        theirs["u"].dtype(),
        DType::U32,
        "uint16 widens as in candle's loader"
    );

    // The VarBuilder checks shapes and casts.
    let vb = flashpack::candle::var_builder(&fp, DType::F16, &Device::Cpu, &LoadOptions::default())
        .unwrap();
    assert_eq!(vb.get((20, 30), "w").unwrap().dtype(), DType::F16);
    assert!(vb.get((30, 20), "w").is_err());
    assert!(vb.get(3, "missing").is_err());
    assert!(vb.contains_tensor("ids") && !vb.contains_tensor("nope"));

    let c = dir.path().join("c.flashpack");
    let z = [0u8; 16];
    pack(
        &c,
        &[PackEntry::new("z", Dtype::C64, vec![2], &z)],
        &PackOptions::default(),
    )
    .unwrap();
    let err = flashpack::candle::load(&c, &Device::Cpu, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tensor 'z'") && err.contains("complex64"),
        "{err}"
    );
}

#[test]
fn fp4_is_candles_f4_with_its_own_loaders_shape() {
    let dir = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = (0..12).collect();
    let fp = dir.path().join("fp4.flashpack");
    let entries = [PackEntry::new("q", Dtype::F4E2M1X2, vec![2, 6], &bytes)];
    pack(&fp, &entries, &PackOptions::default()).unwrap();
    let st = dir.path().join("fp4.safetensors");
    WeightFile::open(&fp).unwrap().to_safetensors(&st).unwrap();
    let theirs = candle_core::safetensors::load(&st, &Device::Cpu).unwrap();
    for path in [&fp, &st] {
        let ours = flashpack::candle::load(path, &Device::Cpu, &LoadOptions::default()).unwrap();
        let (a, b) = (&ours["q"], &theirs["q"]);
        assert_eq!(a.dtype(), DType::F4);
        assert_eq!((a.dtype(), a.dims()), (b.dtype(), b.dims()));
        assert_eq!(a.dims(), &[2, 12]);
    }
}
