//! `flashpack bench FILE [--repeats N] [--json]`: load throughput for one file with a hot page
//! cache (the file is read once before each row), every byte touched, best of N runs in this
//! process.
//!
//! Rows: ours lazy (a private mapping, then a pass summing every byte), ours eager (the parallel
//! reader into owned memory, then the pass), ours cuda (streamed to device memory; a "skipped"
//! row without a CUDA device), and for a `.safetensors` FILE the peers on the same file: the
//! `safetensors` crate (`std::fs::read` + `SafeTensors::deserialize`, then the pass) and candle's
//! own loading (`candle_core::safetensors::load` on the CPU, then the pass over candle's
//! storage). The pass sums every tensor's bytes (see [`crate::touch`]): equal sums mean the
//! rows loaded the same bytes.
//!
//! ```text
//! $ flashpack bench model.safetensors --repeats 3
//! ```
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flashpack::read::LoadOptions;
use flashpack::weights::{Format, WeightFile};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Map, Value};

use crate::error::{print_line, CliError, Result};
use crate::format::{grouped, table};
use crate::touch::sum_all;

/// What to bench.
#[derive(Clone, Debug)]
pub struct Request {
    pub file: PathBuf,
    pub repeats: usize,
    pub json: bool,
    pub progress: bool,
}

/// One timed run: the loader call, then the pass over every byte.
#[derive(Clone, Copy, Debug)]
struct Run {
    call: Duration,
    touch: Duration,
    checksum: u64,
}

impl Run {
    fn total(&self) -> Duration {
        self.call + self.touch
    }
}

#[derive(Debug)]
enum Outcome {
    Done(Run),
    Skipped(String),
    /// A peer failed on this file (ours failing is the command's error).
    Failed(String),
}

/// One row of the table.
#[derive(Debug)]
struct Row {
    key: &'static str,
    label: &'static str,
    /// What "every byte touched" means for this row.
    touched: &'static str,
    outcome: Outcome,
}

/// The peers, by row key, that every row is compared with.
const PEERS: [&str; 2] = ["safetensors", "candle"];

const LAZY: &str = "ours lazy";
const EAGER: &str = "ours eager";
const CUDA: &str = "ours cuda";

/// Reads the whole file once (into a small reused buffer), so its pages are in the page cache.
fn warm(path: &Path) -> Result<()> {
    let mut f = File::open(path).map_err(|e| CliError::io(path, "open", e))?;
    let mut buf = vec![0u8; 16 << 20];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CliError::io(path, "read", e)),
        }
    }
}

/// The best (shortest call + touch) of `repeats` runs of `f`.
fn best_of(repeats: usize, bar: &ProgressBar, mut f: impl FnMut() -> Result<Run>) -> Result<Run> {
    // At least one run, so there is always a best.
    let mut best = f()?;
    bar.inc(1);
    for _ in 1..repeats.max(1) {
        let r = f()?;
        bar.inc(1);
        if r.total() < best.total() {
            best = r;
        }
    }
    Ok(best)
}

fn ours(path: &Path, eager: bool) -> Result<Run> {
    let opts = LoadOptions {
        eager,
        ..LoadOptions::default()
    };
    let t = Instant::now();
    let weights = WeightFile::open(path)?.load(&opts)?;
    let call = t.elapsed();
    let t = Instant::now();
    let views: Vec<&[u8]> = weights.iter().map(|v| v.data).collect();
    let checksum = sum_all(&views);
    let touch = t.elapsed();
    Ok(Run {
        call,
        touch,
        checksum,
    })
}

#[cfg(feature = "cuda")]
fn cuda_row(path: &Path, repeats: usize, bar: &ProgressBar) -> Result<Outcome> {
    use flashpack::sink::cuda::{device_count, driver_available};
    if !driver_available() || device_count().unwrap_or(0) == 0 {
        return Ok(Outcome::Skipped("no CUDA device".into()));
    }
    let opts = LoadOptions::default();
    let file = WeightFile::open(path)?;
    // Untimed warm-up: creates the CUDA context and the pinned staging pool.
    drop(file.load_cuda(0, &opts)?);
    let mut checksum = None;
    let run = best_of(repeats, bar, || {
        let t = Instant::now();
        let w = WeightFile::open(path)?.load_cuda(0, &opts)?;
        let call = t.elapsed();
        if checksum.is_none() {
            // Outside the timing: copy every tensor back and sum it, to check the bytes.
            let mut sum = 0u64;
            for t in w.tensors() {
                sum = sum.wrapping_add(crate::touch::byte_sum(&w.to_host(&t.name)?));
            }
            checksum = Some(sum);
        }
        Ok(Run {
            call,
            touch: Duration::ZERO,
            checksum: checksum.unwrap_or(0),
        })
    })?;
    Ok(Outcome::Done(run))
}

#[cfg(not(feature = "cuda"))]
fn cuda_row(_: &Path, _: usize, _: &ProgressBar) -> Result<Outcome> {
    Ok(Outcome::Skipped("built without the `cuda` feature".into()))
}

fn safetensors_crate(path: &Path) -> Result<Run> {
    let t = Instant::now();
    let buf = std::fs::read(path).map_err(|e| CliError::io(path, "read", e))?;
    let st =
        safetensors::SafeTensors::deserialize(&buf).map_err(|source| CliError::Safetensors {
            path: path.to_path_buf(),
            source,
        })?;
    let call = t.elapsed();
    let t = Instant::now();
    let views: Vec<&[u8]> = st.iter().map(|(_, v)| v.data()).collect();
    let checksum = sum_all(&views);
    Ok(Run {
        call,
        touch: t.elapsed(),
        checksum,
    })
}

#[cfg(feature = "candle")]
mod candle_peer {
    //! candle's own safetensors loading, and the pass over candle's CPU storage.
    use std::path::Path;
    use std::time::Instant;

    use candle_core::{CpuStorage, Device, Storage};

    use crate::bench::Run;
    use crate::error::{CliError, Result};
    use crate::touch::{elem_sum, parallel_sum, pieces};

    /// A tensor's elements in candle's storage.
    enum Elems<'a> {
        U8(&'a [u8]),
        U32(&'a [u32]),
        I16(&'a [i16]),
        I32(&'a [i32]),
        I64(&'a [i64]),
        Bf16(&'a [half::bf16]),
        F16(&'a [half::f16]),
        F32(&'a [f32]),
        F64(&'a [f64]),
        F8(&'a [float8::F8E4M3]),
    }

    impl Elems<'_> {
        fn len_and_size(&self) -> (usize, usize) {
            match self {
                Elems::U8(s) => (s.len(), 1),
                Elems::U32(s) => (s.len(), 4),
                Elems::I16(s) => (s.len(), 2),
                Elems::I32(s) => (s.len(), 4),
                Elems::I64(s) => (s.len(), 8),
                Elems::Bf16(s) => (s.len(), 2),
                Elems::F16(s) => (s.len(), 2),
                Elems::F32(s) => (s.len(), 4),
                Elems::F64(s) => (s.len(), 8),
                Elems::F8(s) => (s.len(), 1),
            }
        }

        fn sum(&self, r: std::ops::Range<usize>) -> u64 {
            match self {
                Elems::U8(s) => crate::touch::byte_sum(&s[r]),
                Elems::U32(s) => elem_sum(&s[r], 4, u64::from),
                Elems::I16(s) => elem_sum(&s[r], 2, |x| u64::from(x as u16)),
                Elems::I32(s) => elem_sum(&s[r], 4, |x| u64::from(x as u32)),
                Elems::I64(s) => elem_sum(&s[r], 8, |x| x as u64),
                Elems::Bf16(s) => elem_sum(&s[r], 2, |x| u64::from(x.to_bits())),
                Elems::F16(s) => elem_sum(&s[r], 2, |x| u64::from(x.to_bits())),
                Elems::F32(s) => elem_sum(&s[r], 4, |x| u64::from(x.to_bits())),
                Elems::F64(s) => elem_sum(&s[r], 8, f64::to_bits),
                Elems::F8(s) => elem_sum(&s[r], 1, |x| u64::from(x.to_bits())),
            }
        }
    }

    fn elems<'a>(
        path: &Path,
        name: &str,
        storage: &'a Storage,
        range: (usize, usize),
    ) -> Result<Elems<'a>> {
        let (a, b) = range;
        let problem = |problem: String| CliError::CandleTensor {
            path: path.to_path_buf(),
            tensor: name.to_string(),
            problem,
        };
        let bad = || problem(format!("storage does not hold elements {a}..{b}"));
        let Storage::Cpu(cpu) = storage else {
            return Err(problem("not in CPU memory".into()));
        };
        Ok(match cpu {
            CpuStorage::U8(v)
            | CpuStorage::F6E2M3(v)
            | CpuStorage::F6E3M2(v)
            | CpuStorage::F4(v)
            | CpuStorage::F8E8M0(v) => Elems::U8(v.get(a..b).ok_or_else(bad)?),
            CpuStorage::U32(v) => Elems::U32(v.get(a..b).ok_or_else(bad)?),
            CpuStorage::I16(v) => Elems::I16(v.get(a..b).ok_or_else(bad)?),
            CpuStorage::I32(v) => Elems::I32(v.get(a..b).ok_or_else(bad)?),
            CpuStorage::I64(v) => Elems::I64(v.get(a..b).ok_or_else(bad)?),
            CpuStorage::BF16(v) => Elems::Bf16(v.get(a..b).ok_or_else(bad)?),
            CpuStorage::F16(v) => Elems::F16(v.get(a..b).ok_or_else(bad)?),
            CpuStorage::F32(v) => Elems::F32(v.get(a..b).ok_or_else(bad)?),
            CpuStorage::F64(v) => Elems::F64(v.get(a..b).ok_or_else(bad)?),
            CpuStorage::F8E4M3(v) => Elems::F8(v.get(a..b).ok_or_else(bad)?),
        })
    }

    /// `candle_core::safetensors::load` on the CPU, then the pass over every tensor's storage.
    pub fn run(path: &Path) -> Result<Run> {
        let t = Instant::now();
        let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|source| {
            CliError::Candle {
                path: path.to_path_buf(),
                source,
            }
        })?;
        let call = t.elapsed();
        let t = Instant::now();
        let guards: Vec<_> = tensors
            .iter()
            .map(|(name, tensor)| {
                let (storage, layout) = tensor.storage_and_layout();
                (name, storage, layout.contiguous_offsets())
            })
            .collect();
        let mut views = Vec::with_capacity(guards.len());
        for (name, storage, range) in &guards {
            let range = range.ok_or_else(|| CliError::CandleTensor {
                path: path.to_path_buf(),
                tensor: name.to_string(),
                problem: "not contiguous".into(),
            })?;
            views.push(elems(path, name, storage, range)?);
        }
        let jobs = pieces(views.iter().map(Elems::len_and_size));
        let checksum = parallel_sum(&jobs, |i, r| views[i].sum(r));
        let touch = t.elapsed();
        Ok(Run {
            call,
            touch,
            checksum,
        })
    }
}

fn candle_row(path: &Path, repeats: usize, bar: &ProgressBar) -> Outcome {
    #[cfg(feature = "candle")]
    {
        match best_of(repeats, bar, || candle_peer::run(path)) {
            Ok(r) => Outcome::Done(r),
            Err(e) => Outcome::Failed(e.one_line()),
        }
    }
    #[cfg(not(feature = "candle"))]
    {
        let _ = (path, repeats, bar);
        Outcome::Skipped("built without the `candle` feature".into())
    }
}

/// The table's result: rows, and the data size.
struct Results {
    file: PathBuf,
    format: Format,
    data_bytes: u64,
    tensors: usize,
    repeats: usize,
    rows: Vec<Row>,
}

impl Results {
    fn run_of(&self, key: &str) -> Option<&Run> {
        self.rows.iter().find_map(|r| match &r.outcome {
            Outcome::Done(run) if r.key == key => Some(run),
            _ => None,
        })
    }

    fn gbps(&self, run: &Run) -> f64 {
        self.data_bytes as f64 / run.total().as_secs_f64().max(1e-9) / 1e9
    }

    /// How many times faster `run` is than the peer's row (peer time / this time).
    fn ratio(&self, run: &Run, peer: &str) -> Option<f64> {
        let p = self.run_of(peer)?;
        Some(p.total().as_secs_f64() / run.total().as_secs_f64().max(1e-9))
    }

    /// True when every row that ran (and can be compared) saw the same bytes.
    fn checksums_agree(&self) -> bool {
        let mut sums = self.rows.iter().filter_map(|r| match &r.outcome {
            Outcome::Done(run) => Some(run.checksum),
            _ => None,
        });
        let first = sums.next();
        sums.all(|s| Some(s) == first)
    }

    fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let mut o = Map::new();
                o.insert("key".into(), json!(r.key));
                o.insert("label".into(), json!(r.label));
                o.insert("touched".into(), json!(r.touched));
                match &r.outcome {
                    Outcome::Done(run) => {
                        o.insert("call_s".into(), json!(run.call.as_secs_f64()));
                        o.insert("touch_s".into(), json!(run.touch.as_secs_f64()));
                        o.insert("total_s".into(), json!(run.total().as_secs_f64()));
                        o.insert("gbps".into(), json!(self.gbps(run)));
                        o.insert("checksum".into(), json!(format!("{:#018x}", run.checksum)));
                        let vs: Map<String, Value> = PEERS
                            .iter()
                            .filter_map(|p| Some((p.to_string(), json!(self.ratio(run, p)?))))
                            .collect();
                        o.insert("vs".into(), Value::Object(vs));
                    }
                    Outcome::Skipped(why) => {
                        o.insert("skipped".into(), json!(why));
                    }
                    Outcome::Failed(why) => {
                        o.insert("error".into(), json!(why));
                    }
                }
                Value::Object(o)
            })
            .collect();
        json!({
            "file": self.file.display().to_string(),
            "format": match self.format { Format::FlashPack => "flashpack", Format::Safetensors => "safetensors" },
            "data_bytes": self.data_bytes,
            "tensors": self.tensors,
            "repeats": self.repeats,
            "cache": "hot",
            "gb": "1e9 bytes",
            "ratios": "peer total time / row total time (above 1: the row is faster)",
            "checksums_agree": self.checksums_agree(),
            "rows": rows,
        })
    }

    fn render(&self) -> String {
        let header = [
            "row",
            "call s",
            "touch s",
            "total s",
            "GB/s",
            "vs safetensors",
            "vs candle",
        ];
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| match &r.outcome {
                Outcome::Done(run) => {
                    let vs = |p| {
                        self.ratio(run, p)
                            .map_or_else(|| "-".into(), |x| format!("{x:.2}x"))
                    };
                    vec![
                        r.label.to_string(),
                        format!("{:.3}", run.call.as_secs_f64()),
                        format!("{:.3}", run.touch.as_secs_f64()),
                        format!("{:.3}", run.total().as_secs_f64()),
                        format!("{:.2}", self.gbps(run)),
                        vs("safetensors"),
                        vs("candle"),
                    ]
                }
                Outcome::Skipped(why) => vec![r.label.to_string(), format!("skipped: {why}")],
                Outcome::Failed(why) => vec![r.label.to_string(), format!("failed: {why}")],
            })
            .collect();
        let mut out = vec![
            format!(
                "flashpack bench: {} ({}, {} data bytes = {:.3} GB in {} tensors), hot page cache, best of {}",
                self.file.display(),
                match self.format {
                    Format::FlashPack => "FlashPack",
                    Format::Safetensors => "safetensors",
                },
                grouped(self.data_bytes),
                self.data_bytes as f64 / 1e9,
                self.tensors,
                self.repeats
            ),
            String::new(),
            table(&header, &rows),
            String::new(),
            "call = the loader's call; touch = a pass summing every byte of every tensor \
             (one thread per core); GB/s = data bytes / (call + touch), GB = 1e9 bytes; \
             vs X = X's total time / this row's (above 1: this row is faster)."
                .to_string(),
            "what each row touches:".to_string(),
        ];
        for r in &self.rows {
            out.push(format!("  {}: {}", r.label, r.touched));
        }
        out.push(if self.checksums_agree() {
            "checksums: every row that ran summed the same bytes".to_string()
        } else {
            let sums: Vec<String> = self
                .rows
                .iter()
                .filter_map(|r| match &r.outcome {
                    Outcome::Done(run) => Some(format!("{} {:#018x}", r.label, run.checksum)),
                    _ => None,
                })
                .collect();
            format!("checksums DIFFER: {}", sums.join(", "))
        });
        out.join("\n")
    }
}

/// Runs every row.
fn measure(req: &Request) -> Result<Results> {
    let path = req.file.as_path();
    let file = WeightFile::open(path)?;
    let format = file.format();
    let data_bytes: u64 = file.tensors().iter().map(|t| t.end - t.start).sum();
    let tensors = file.tensors().len();
    drop(file);
    let is_safetensors = format == Format::Safetensors;
    let repeats = req.repeats.max(1);
    let measurements = repeats * if is_safetensors { 5 } else { 3 };
    let bar = if req.progress {
        let b =
            ProgressBar::with_draw_target(Some(measurements as u64), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("bench {msg} [{bar:30}] {pos}/{len}") {
            b.set_style(style.progress_chars("=> "));
        }
        b
    } else {
        ProgressBar::hidden()
    };

    let mut rows = Vec::new();
    warm(path)?;
    bar.set_message(LAZY);
    rows.push(Row {
        key: "ours-lazy",
        label: LAZY,
        touched: "WeightFile::open + load (a private copy-on-write mapping); the pass reads every \
                  byte through the mapping (page faults included)",
        outcome: Outcome::Done(best_of(repeats, &bar, || ours(path, false))?),
    });
    warm(path)?;
    bar.set_message(EAGER);
    rows.push(Row {
        key: "ours-eager",
        label: EAGER,
        touched: "WeightFile::open + load(eager): the parallel reader copies every byte into new \
                  owned memory; then the pass",
        outcome: Outcome::Done(best_of(repeats, &bar, || ours(path, true))?),
    });
    warm(path)?;
    bar.set_message(CUDA);
    rows.push(Row {
        key: "ours-cuda",
        label: CUDA,
        touched: "WeightFile::open + load_cuda(0): every byte streamed into device memory (the \
                  call returns after the last copy; after one untimed warm-up load); no pass, \
                  the checksum is taken from a copy back after the timing",
        outcome: cuda_row(path, repeats, &bar)?,
    });
    let not_st = || Outcome::Skipped("peers run on .safetensors files only".into());
    warm(path)?;
    bar.set_message("safetensors");
    rows.push(Row {
        key: "safetensors",
        label: "safetensors crate",
        touched: "std::fs::read of the whole file + SafeTensors::deserialize; then the pass over \
                  the tensor views",
        outcome: if is_safetensors {
            match best_of(repeats, &bar, || safetensors_crate(path)) {
                Ok(r) => Outcome::Done(r),
                Err(e) => Outcome::Failed(e.one_line()),
            }
        } else {
            not_st()
        },
    });
    warm(path)?;
    bar.set_message("candle");
    rows.push(Row {
        key: "candle",
        label: "candle",
        touched: "candle_core::safetensors::load(path, &Device::Cpu): std::fs::read of the whole \
                  file, then every tensor copied into candle storage; then the pass over that \
                  storage",
        outcome: if is_safetensors {
            candle_row(path, repeats, &bar)
        } else {
            not_st()
        },
    });
    bar.finish_and_clear();
    Ok(Results {
        file: req.file.clone(),
        format,
        data_bytes,
        tensors,
        repeats,
        rows,
    })
}

/// Runs the subcommand.
pub fn run(req: &Request) -> Result<()> {
    let results = measure(req)?;
    if req.json {
        let text =
            serde_json::to_string_pretty(&results.to_json()).map_err(|source| CliError::Json {
                path: req.file.clone(),
                what: "cannot encode JSON",
                source,
            })?;
        print_line(&text)?;
    } else {
        print_line(&results.render())?;
    }
    Ok(())
}
