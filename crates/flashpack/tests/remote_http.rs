//! Remote loads over HTTP against servers the tests start on 127.0.0.1: a fault-injecting
//! server (tests/remote/server.rs) for every failure the engine must survive or report, and
//! nginx (Debian's package, which `make test-remote` installs) for real Range serving.
#![cfg(feature = "remote")]

#[path = "remote/checkpoint_job.rs"]
mod checkpoint_job;
#[path = "remote/nginx.rs"]
mod nginx;
#[path = "remote/server.rs"]
mod server;

use std::time::{Duration, Instant};

use flashpack::read::LoadOptions;
use flashpack::remote::RemoteSettings;
use flashpack::weights::{Format, WeightFile};
use flashpack::write::{pack, PackEntry, PackOptions};
use flashpack::{Dtype, Error};
use nginx::nginx;
use server::{Fault, Server, Validators};

/// Small parts and quick retries, so a few KiB make many parts and faults end fast.
fn settings() -> RemoteSettings {
    RemoteSettings {
        concurrency: 4,
        part_bytes: 4096,
        retries: 3,
        timeout: Duration::from_secs(30),
        request_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(2),
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        cancel: None,
    }
}

/// A FlashPack file with checksums (4 KiB chunks) and the same tensors as safetensors.
struct Files {
    _dir: tempfile::TempDir,
    flashpack: Vec<u8>,
    safetensors: Vec<u8>,
    tensors: Vec<(String, Vec<u8>)>,
}

fn files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let tensors: Vec<(String, Vec<u8>)> = (0..5u32)
        .map(|k| {
            let n = 3000 + 1000 * k as usize;
            (
                format!("layer{k}.weight"),
                (0..n).map(|i| (i as u32 * 31 + k * 7) as u8).collect(),
            )
        })
        .collect();
    let entries: Vec<PackEntry<'_>> = tensors
        .iter()
        .map(|(name, bytes)| {
            PackEntry::new(name.clone(), Dtype::U8, vec![bytes.len() as u64], bytes)
        })
        .collect();
    let fp = dir.path().join("m.flashpack");
    let opts = PackOptions {
        checksums: true,
        chunk_bytes: 4096,
        ..Default::default()
    };
    pack(&fp, &entries, &opts).unwrap();
    let st = dir.path().join("m.safetensors");
    WeightFile::open(&fp).unwrap().to_safetensors(&st).unwrap();
    Files {
        flashpack: std::fs::read(&fp).unwrap(),
        safetensors: std::fs::read(&st).unwrap(),
        tensors,
        _dir: dir,
    }
}

fn load(url: &str, verify: bool) -> flashpack::Result<flashpack::weights::Weights> {
    let file = WeightFile::open_url(url, settings())?;
    file.load(&LoadOptions {
        verify,
        ..Default::default()
    })
}

fn assert_bit_exact(w: &flashpack::weights::Weights, tensors: &[(String, Vec<u8>)]) {
    assert_eq!(w.tensors().len(), tensors.len());
    for (name, bytes) in tensors {
        assert_eq!(w.get(name).unwrap().data, &bytes[..], "{name}");
    }
}

/// The error of `r`, checked to be a remote error naming `url` and saying `problem`.
fn remote_error<T>(r: flashpack::Result<T>, url: &str, problem: &str) -> String {
    let Err(e) = r else {
        panic!("{url}: expected an error saying '{problem}'")
    };
    let msg = e.to_string();
    assert!(
        matches!(e, Error::Remote { .. }),
        "not a remote error: {msg}"
    );
    assert!(msg.starts_with(url) && msg.contains(problem), "{msg}");
    msg
}

#[test]
fn both_formats_load_bit_exact_with_checksums_checked_on_arrival() {
    let f = files();
    for (bytes, format) in [
        (&f.flashpack, Format::FlashPack),
        (&f.safetensors, Format::Safetensors),
    ] {
        let server = Server::start(bytes.clone(), Fault::None);
        let url = server.url("dir/model.bin");
        let file = WeightFile::open_url(&url, settings()).unwrap();
        assert_eq!(file.format(), format);
        assert_eq!(file.remote().unwrap().len(), bytes.len() as u64);
        assert_eq!(file.remote().unwrap().etag(), Some("\"v1\""));
        // Opening read only the index: one or two small GETs, never the tensors.
        assert!(server.gets() <= 3, "{} GETs to open", server.gets());
        let verify = format == Format::FlashPack;
        let w = file
            .load(&LoadOptions {
                verify,
                ..Default::default()
            })
            .unwrap();
        assert_bit_exact(&w, &f.tensors);
        // 4 KiB parts: the data took several ranged GETs.
        assert!(server.gets() > 5, "{} GETs", server.gets());
    }
}

/// A safetensors file (as the safetensors library writes `{"a": f32[4], "z": f64[0]}`: the
/// empty tensor first, at the start of the next one) loads bit-exact over HTTP, like locally.
#[test]
fn an_empty_tensor_at_the_start_of_the_next_one_loads_bit_exact() {
    let header = br#"{"z":{"dtype":"F64","shape":[0],"data_offsets":[0,0]},"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    let a: Vec<u8> = (0..16u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&a);
    let want = [("a".to_string(), a), ("z".to_string(), Vec::new())];
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("m.safetensors");
    std::fs::write(&local, &bytes).unwrap();
    let w = WeightFile::open(&local)
        .unwrap()
        .load(&LoadOptions::default())
        .unwrap();
    assert_bit_exact(&w, &want);

    let server = Server::start(bytes, Fault::None);
    let w = load(&server.url("m.safetensors"), false).unwrap();
    assert_bit_exact(&w, &want);
}

#[test]
fn a_corrupt_remote_safetensors_header_is_a_safetensors_error_keeping_the_json_error() {
    use std::error::Error as _;
    let header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]"#; // cut short
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0; 8]);
    let server = Server::start(bytes, Fault::None);
    let url = server.url("m.safetensors");
    let e = WeightFile::open_url(&url, settings())
        .err()
        .expect("an error");
    assert!(
        matches!(&e, Error::Safetensors { source, .. }
            if matches!(source.as_ref(), flashpack::SafetensorsError::HeaderJson { .. })),
        "{e:?}"
    );
    assert!(e.to_string().starts_with(&url), "{e}");
    let inner = e.source().and_then(|s| s.source()).expect("a source");
    assert!(
        inner.downcast_ref::<serde_json::Error>().is_some(),
        "{inner:?}"
    );
}

#[test]
fn a_remote_tensor_whose_shape_does_not_fit_its_bytes_is_named() {
    let header = br#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0; 8]);
    let server = Server::start(bytes, Fault::None);
    let url = server.url("m.safetensors");
    let e = WeightFile::open_url(&url, settings())
        .err()
        .expect("an error");
    assert!(
        matches!(&e, Error::Safetensors { source, .. }
            if matches!(source.as_ref(), flashpack::SafetensorsError::Header { tensor: Some(tensor), .. } if tensor == "w")),
        "{e:?}"
    );
}

#[test]
fn a_connection_dropped_mid_body_resumes_and_loads_bit_exact() {
    let f = files();
    let server = Server::start(f.flashpack.clone(), Fault::DropMidBody(3));
    let w = load(&server.url("m.flashpack"), true).unwrap();
    assert_bit_exact(&w, &f.tensors);
}

#[test]
fn a_503_then_success_loads_bit_exact() {
    let f = files();
    let server = Server::start(f.safetensors.clone(), Fault::Unavailable(2));
    let w = load(&server.url("m.safetensors"), false).unwrap();
    assert_bit_exact(&w, &f.tensors);
}

#[test]
fn a_body_always_cut_short_is_an_error_within_bounded_time() {
    let f = files();
    let server = Server::start(f.flashpack.clone(), Fault::Truncate);
    let url = server.url("m.flashpack");
    let t = Instant::now();
    remote_error(load(&url, false), &url, "");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
}

#[test]
fn a_wrong_content_range_is_an_error() {
    let f = files();
    let server = Server::start(f.safetensors.clone(), Fault::WrongContentRange);
    let url = server.url("m.safetensors");
    // Part of the range asked for, the server's range, and what it sent instead.
    let msg = remote_error(load(&url, false), &url, "bytes ");
    assert!(msg.contains("got "), "{msg}");
}

#[test]
fn an_object_replaced_during_a_load_is_an_error_never_a_mix() {
    let f = files();
    // Opening a FlashPack file takes two GETs (trailer, footer); the third replaces it.
    let server = Server::start(f.flashpack.clone(), Fault::ReplaceAfter(3));
    let url = server.url("m.flashpack");
    remote_error(load(&url, false), &url, "changed while it was being read");
}

#[test]
fn forbidden_is_an_error_saying_access_denied() {
    let server = Server::start(vec![0; 64], Fault::Forbidden);
    let url = server.url("m.safetensors");
    remote_error(load(&url, false), &url, "access denied");
    // The HTTP client's error stays reachable as the source.
    use std::error::Error as _;
    let e = load(&url, false).err().expect("an error");
    let Error::Remote { source, .. } = &e else {
        panic!("not a remote error: {e:?}")
    };
    assert!(
        matches!(
            source.as_ref(),
            flashpack::remote::RemoteError::Denied {
                source: Some(_),
                ..
            }
        ),
        "{source:?}"
    );
    assert!(e.source().and_then(|s| s.source()).is_some(), "{e:?}");
}

#[test]
fn an_unreachable_host_is_an_error_within_bounded_time() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/m.safetensors");
    let t = Instant::now();
    remote_error(load(&url, false), &url, "request failed");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
}

#[test]
fn a_missing_object_is_an_error_saying_so() {
    let (dir, nginx) = nginx();
    let url = format!("http://127.0.0.1:{}/absent.safetensors", nginx.port);
    remote_error(load(&url, false), &url, "no such object");
    drop(dir);
}

#[test]
fn nginx_serves_both_formats_bit_exact() {
    let f = files();
    let (dir, nginx) = nginx();
    std::fs::write(dir.path().join("m.flashpack"), &f.flashpack).unwrap();
    std::fs::write(dir.path().join("m.safetensors"), &f.safetensors).unwrap();
    for name in ["m.flashpack", "m.safetensors"] {
        let url = format!("http://127.0.0.1:{}/{name}", nginx.port);
        let w = load(&url, name.ends_with(".flashpack")).unwrap();
        assert_bit_exact(&w, &f.tensors);
    }
}

/// Jobs (the reader behind checkpoint and Python loads) take remote files like local ones.
mod jobs {
    use super::*;
    use flashpack::cancel::Cancel;
    use flashpack::read::job::{read_host, JobPlan, Piece};

    /// Every tensor of each file, and a row range of the first file's last tensor.
    fn pieces(files: &[&WeightFile]) -> Vec<Piece> {
        let mut out = Vec::new();
        for (k, f) in files.iter().enumerate() {
            for t in f.tensors() {
                out.push(Piece {
                    file: k,
                    start: t.start,
                    end: t.end,
                });
            }
        }
        let t = files[0].tensors().last().unwrap();
        out.push(Piece {
            file: 0,
            start: t.start + 100,
            end: t.start + 900,
        });
        out
    }

    fn expected(files: &[&WeightFile], bytes: &[&[u8]], pieces: &[Piece]) -> Vec<Vec<u8>> {
        let _ = files;
        pieces
            .iter()
            .map(|p| bytes[p.file][p.start as usize..p.end as usize].to_vec())
            .collect()
    }

    #[test]
    fn a_job_of_remote_and_local_files_lands_bit_exact_verified_or_not() {
        let f = files();
        let server = Server::start(f.flashpack.clone(), Fault::None);
        let remote = WeightFile::open_url(&server.url("m.flashpack"), settings()).unwrap();
        assert!(remote.is_remote());
        let dir = tempfile::tempdir().unwrap();
        let local_fp = dir.path().join("l.flashpack");
        std::fs::write(&local_fp, &f.flashpack).unwrap();
        let local = WeightFile::open(&local_fp).unwrap();
        let files = [&remote, &local];
        let pieces = pieces(&files);
        let want = expected(&files, &[&f.flashpack, &f.flashpack], &pieces);
        for verify in [false, true] {
            let gets = server.gets();
            let plan = if verify {
                JobPlan::verified(&files, &pieces).unwrap()
            } else {
                JobPlan::new(&files, &pieces).unwrap()
            };
            let opts = LoadOptions {
                verify,
                chunk_bytes: 8192,
                ..Default::default()
            };
            let (mem, report) = read_host(&files, &plan, &opts).unwrap();
            for (i, w) in want.iter().enumerate() {
                assert_eq!(plan.bytes(&mem, i), &w[..], "piece {i} (verify {verify})");
            }
            // The remote file's bytes came in 4 KiB ranged GETs.
            assert!(report.io.remote_bytes > 0);
            assert!(
                server.gets() - gets >= (report.io.remote_bytes / 4096) as usize,
                "{} GETs for {} bytes",
                server.gets() - gets,
                report.io.remote_bytes
            );
        }
    }

    #[test]
    fn a_remote_safetensors_file_in_a_verified_job_is_refused_naming_it() {
        let f = files();
        let server = Server::start(f.safetensors.clone(), Fault::None);
        let url = server.url("m.safetensors");
        let remote = WeightFile::open_url(&url, settings()).unwrap();
        let pieces = pieces(&[&remote]);
        let e = JobPlan::verified(&[&remote], &pieces).err().unwrap();
        assert!(e.to_string().starts_with(&url), "{e}");
        // A plain plan cannot be run verified either.
        let plan = JobPlan::new(&[&remote], &pieces).unwrap();
        let opts = LoadOptions {
            verify: true,
            ..Default::default()
        };
        assert!(read_host(&[&remote], &plan, &opts).is_err());
    }

    #[test]
    fn a_corrupted_remote_chunk_is_an_error_naming_the_url_and_the_tensor() {
        let f = files();
        let mut bad = f.flashpack.clone();
        bad[5000] ^= 0xff;
        let server = Server::start(bad, Fault::None);
        let url = server.url("m.flashpack");
        let file = WeightFile::open_url(&url, settings()).unwrap();
        let e = file
            .load(&LoadOptions {
                verify: true,
                ..Default::default()
            })
            .err()
            .expect("a checksum mismatch");
        let msg = e.to_string();
        let holder = file_tensor_at(&f.flashpack, 5000);
        assert!(
            msg.starts_with(&url) && msg.contains("checksum mismatch") && msg.contains(&holder),
            "{msg}"
        );
        // Without verification the same bytes load (what the server sent).
        let file = WeightFile::open_url(&url, settings()).unwrap();
        assert!(file.load(&LoadOptions::default()).is_ok());
    }

    /// The tensor holding byte `at` of a FlashPack file.
    fn file_tensor_at(bytes: &[u8], at: u64) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.flashpack");
        std::fs::write(&p, bytes).unwrap();
        let f = WeightFile::open(&p).unwrap();
        let t = f.tensors().iter().find(|t| t.start <= at && at < t.end);
        format!("'{}'", t.unwrap().name)
    }

    #[test]
    fn a_cancelled_remote_job_stops_with_cancelled() {
        let f = files();
        let server = Server::start(f.safetensors.clone(), Fault::None);
        let file = WeightFile::open_url(&server.url("m.safetensors"), settings()).unwrap();
        let pieces = pieces(&[&file]);
        let plan = JobPlan::new(&[&file], &pieces).unwrap();
        let cancel = Cancel::new();
        cancel.cancel();
        let gets = server.gets();
        let opts = LoadOptions {
            cancel: Some(cancel),
            ..Default::default()
        };
        let e = read_host(&[&file], &plan, &opts).unwrap_err();
        assert!(matches!(e, Error::Cancelled { .. }), "{e}");
        assert_eq!(server.gets(), gets, "no GET after the cancellation");
    }

    #[test]
    fn a_remote_file_cannot_be_mapped() {
        let f = files();
        let server = Server::start(f.safetensors.clone(), Fault::None);
        let url = server.url("m.safetensors");
        let file = WeightFile::open_location(&url).unwrap();
        let e = file.map_private().unwrap_err().to_string();
        assert!(e.starts_with(&url) && e.contains("cannot be mapped"), "{e}");
        // A lazy load of a URL is eager.
        let w = file.load(&LoadOptions::default()).unwrap();
        assert!(w.is_eager());
        assert_bit_exact(&w, &f.tensors);
    }
}

#[test]
fn a_stalled_server_ends_within_the_request_timeout() {
    let f = files();
    let server = Server::start(f.safetensors.clone(), Fault::Stall);
    let url = server.url("m.safetensors");
    let settings = RemoteSettings {
        request_timeout: Duration::from_secs(1),
        retries: 2,
        ..settings()
    };
    let t = Instant::now();
    let r = WeightFile::open_url(&url, settings).and_then(|w| w.load(&LoadOptions::default()));
    remote_error(r, &url, "");
    // Three tries of one second each, and the backoff between them.
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

/// `hf://` URLs: resolved against HF_ENDPOINT, the token sent as a bearer token, the Hub's
/// redirect to its CDN followed with the Range kept. (One test: it sets the process's
/// environment.)
#[test]
fn hub_urls_resolve_send_the_token_and_follow_the_redirect() {
    let f = files();
    let server = Server::start_redirecting(f.flashpack.clone());
    std::env::set_var("HF_ENDPOINT", format!("http://127.0.0.1:{}", server.port));
    std::env::set_var("HF_TOKEN", "hf_test_token");
    let file = WeightFile::open_location("hf://org/repo@v2/sub/m.flashpack").unwrap();
    assert!(file.is_remote());
    let w = file
        .load(&LoadOptions {
            verify: true,
            ..Default::default()
        })
        .unwrap();
    assert_bit_exact(&w, &f.tensors);
    let requests = server.requests();
    let hub: Vec<_> = requests
        .iter()
        .filter(|r| !r.path.starts_with("/cdn/"))
        .collect();
    assert!(!hub.is_empty());
    for r in &hub {
        assert_eq!(r.path, "/org/repo/resolve/v2/sub/m.flashpack");
        assert_eq!(r.header("authorization"), Some("Bearer hf_test_token"));
    }
    // Every GET that reached the object after the redirect kept its Range.
    let cdn_gets: Vec<_> = requests
        .iter()
        .filter(|r| r.path.starts_with("/cdn/") && r.method == "GET")
        .collect();
    assert!(cdn_gets.len() >= 3, "{requests:?}");
    assert!(cdn_gets.iter().all(|r| r.header("range").is_some()));
    // A CDN on another host never sees the token (the client drops it on the redirect).
    let cdn = Server::start(f.flashpack.clone(), Fault::None);
    let hub = Server::start_redirecting_to(&format!("http://127.0.0.1:{}", cdn.port));
    std::env::set_var("HF_ENDPOINT", format!("http://127.0.0.1:{}", hub.port));
    let file = WeightFile::open_location("hf://org/repo/m.flashpack").unwrap();
    assert_bit_exact(&file.load(&LoadOptions::default()).unwrap(), &f.tensors);
    assert!(hub
        .requests()
        .iter()
        .all(|r| r.header("authorization") == Some("Bearer hf_test_token")));
    let at_cdn = cdn.requests();
    assert!(at_cdn.len() >= 3, "{at_cdn:?}");
    assert!(
        at_cdn.iter().all(|r| r.header("authorization").is_none()),
        "{at_cdn:?}"
    );
    std::env::set_var("HF_ENDPOINT", format!("http://127.0.0.1:{}", server.port));
    // A missing token sends no Authorization header.
    std::env::remove_var("HF_TOKEN");
    let before = server.requests().len();
    WeightFile::open_location("hf://org/repo/m.flashpack").unwrap();
    let later = server.requests();
    assert!(later[before..]
        .iter()
        .all(|r| r.header("authorization").is_none()));
    assert_eq!(later[before].path, "/org/repo/resolve/main/m.flashpack");

    // A sharded checkpoint on the Hub: its shards resolved beside the index, same revision.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        dir.path().join("m-1.flashpack"),
        dir.path().join("m-2.flashpack"),
    );
    std::fs::write(&a, &f.flashpack).unwrap();
    pack(
        &b,
        &[PackEntry::new("other", Dtype::U8, vec![3], &[1, 2, 3])],
        &PackOptions::default(),
    )
    .unwrap();
    let index = dir.path().join("model.safetensors.index.json");
    flashpack::convert::write_index(
        &index,
        flashpack::checkpoint::IndexKind::Safetensors,
        &[a.clone(), b.clone()],
        Default::default(),
    )
    .unwrap();
    let files = [&index, &a, &b]
        .iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            (
                format!("org/repo/resolve/r1/unet/{name}"),
                std::fs::read(p).unwrap(),
            )
        })
        .collect();
    let hub = Server::start_files(files);
    std::env::set_var("HF_ENDPOINT", format!("http://127.0.0.1:{}", hub.port));
    let c = flashpack::checkpoint::Checkpoint::open_location(
        "hf://org/repo@r1/unet/model.safetensors.index.json",
        &Default::default(),
    )
    .unwrap();
    assert_eq!(c.shards().len(), 2);
    assert_eq!(
        c.shards()[1].path(),
        std::path::Path::new("hf://org/repo@r1/unet/m-2.flashpack")
    );
    assert_eq!(c.len(), f.tensors.len() + 1);
    std::env::remove_var("HF_ENDPOINT");
}

/// Checkpoints at a URL: an index json and its shards beside it, served by nginx.
mod checkpoints {
    use super::*;
    use flashpack::checkpoint::{Checkpoint, IndexKind, OpenOptions};
    use flashpack::convert::write_index;
    use flashpack::read::job::{read_host, JobPlan, Piece};
    use flashpack::CheckpointError;
    use std::collections::BTreeMap;
    use std::path::Path;

    /// Tensor name -> bytes: 7 tensors over 3 shards.
    fn tensors() -> BTreeMap<String, Vec<u8>> {
        (0..7u32)
            .map(|k| {
                let n = 1000 + 2500 * k as usize;
                let bytes = (0..n).map(|i| (i as u32 * 7 + k * 13) as u8).collect();
                (format!("block{k}.weight"), bytes)
            })
            .collect()
    }

    /// Writes both checkpoints of `tensors` into `dir`: safetensors shards with a diffusers-named
    /// variant index, and FlashPack shards (with checksums) with a FlashPack index.
    fn write_checkpoints(dir: &Path, tensors: &BTreeMap<String, Vec<u8>>) {
        let names: Vec<&String> = tensors.keys().collect();
        let mut st_files = Vec::new();
        let mut fp_files = Vec::new();
        for (k, group) in names.chunks(3).enumerate() {
            let entries: Vec<PackEntry<'_>> = group
                .iter()
                .map(|n| {
                    let b = &tensors[*n];
                    PackEntry::new(n.as_str(), Dtype::U8, vec![b.len() as u64], b)
                })
                .collect();
            let fp = dir.join(format!("model-{:05}-of-00003.flashpack", k + 1));
            let opts = PackOptions {
                checksums: true,
                chunk_bytes: 4096,
                ..Default::default()
            };
            pack(&fp, &entries, &opts).unwrap();
            let st = dir.join(format!(
                "diffusion_pytorch_model-{:05}-of-00003.fp16.safetensors",
                k + 1
            ));
            WeightFile::open(&fp).unwrap().to_safetensors(&st).unwrap();
            fp_files.push(fp);
            st_files.push(st);
        }
        write_index(
            &dir.join("diffusion_pytorch_model.safetensors.index.fp16.json"),
            IndexKind::Safetensors,
            &st_files,
            Default::default(),
        )
        .unwrap();
        write_index(
            &dir.join("model.flashpack.index.json"),
            IndexKind::FlashPack,
            &fp_files,
            Default::default(),
        )
        .unwrap();
    }

    use super::checkpoint_job::load;

    fn kind(e: &flashpack::Error) -> &CheckpointError {
        match e {
            flashpack::Error::Checkpoint { source, .. } => source,
            other => panic!("not a checkpoint error: {other}"),
        }
    }

    #[test]
    fn sharded_checkpoints_load_bit_exact_from_nginx() {
        let want = tensors();
        let (dir, nginx) = nginx();
        let folder = dir.path().join("repo");
        std::fs::create_dir(&folder).unwrap();
        write_checkpoints(&folder, &want);
        let base = format!("http://127.0.0.1:{}/repo", nginx.port);
        for (index, kind, verify) in [
            (
                "diffusion_pytorch_model.safetensors.index.fp16.json",
                IndexKind::Safetensors,
                false,
            ),
            ("model.flashpack.index.json", IndexKind::FlashPack, true),
        ] {
            let url = format!("{base}/{index}");
            let c = Checkpoint::open_url(&url, settings()).unwrap();
            assert_eq!(c.index_kind(), Some(kind));
            assert_eq!(c.index_path().unwrap(), Path::new(&url));
            assert_eq!(c.shards().len(), 3);
            assert!(c.shards().iter().all(|s| s.file().is_remote()));
            assert_eq!(c.len(), want.len());
            assert_eq!(load(&c, verify), want, "{url}");
        }
        // A single weight file at a URL is a one-shard checkpoint.
        let url = format!("{base}/model-00002-of-00003.flashpack");
        let c = Checkpoint::open_location(&url, &OpenOptions::default()).unwrap();
        assert_eq!((c.index_kind(), c.shards().len()), (None, 1));
        assert_eq!(c.shards()[0].name(), "model-00002-of-00003.flashpack");
    }

    #[test]
    fn a_missing_shard_a_changed_shard_and_a_huge_index_are_checkpoint_errors() {
        let want = tensors();
        let (dir, nginx) = nginx();
        write_checkpoints(dir.path(), &want);
        let base = format!("http://127.0.0.1:{}", nginx.port);
        // 404 for a shard: ShardMissing, naming the index URL, the shard and a tensor.
        std::fs::remove_file(
            dir.path()
                .join("diffusion_pytorch_model-00002-of-00003.fp16.safetensors"),
        )
        .unwrap();
        let url = format!("{base}/diffusion_pytorch_model.safetensors.index.fp16.json");
        let e = Checkpoint::open_url(&url, settings()).unwrap_err();
        assert!(
            matches!(kind(&e), CheckpointError::ShardMissing { shard, .. }
                if shard == "diffusion_pytorch_model-00002-of-00003.fp16.safetensors"),
            "{e}"
        );
        assert!(e.to_string().starts_with(&url), "{e}");
        // A FlashPack shard replaced after its index was written.
        let other = dir.path().join("model-00003-of-00003.flashpack");
        pack(
            &other,
            &[PackEntry::new("block6.weight", Dtype::U8, vec![4], &[0; 4])],
            &PackOptions::default(),
        )
        .unwrap();
        let url = format!("{base}/model.flashpack.index.json");
        let e = Checkpoint::open_url(&url, settings()).unwrap_err();
        assert!(
            matches!(kind(&e), CheckpointError::ShardChanged { .. }),
            "{e}"
        );
        // An index over the limit is refused before it is read (a sparse file: no disk used).
        let huge = std::fs::File::create(dir.path().join("huge.safetensors.index.json")).unwrap();
        huge.set_len(100_000_001).unwrap();
        let url = format!("{base}/huge.safetensors.index.json");
        let t = Instant::now();
        let e = Checkpoint::open_url(&url, settings()).unwrap_err();
        assert!(
            matches!(kind(&e), CheckpointError::IndexTooLarge { .. }),
            "{e}"
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    #[test]
    fn faults_while_loading_a_checkpoint_end_in_an_error_naming_the_url() {
        // One shard behind the fault server that replaces its object mid-load: an error naming
        // that shard's URL, no partial result; the other shard is local.
        let want = tensors();
        let dir = tempfile::tempdir().unwrap();
        write_checkpoints(dir.path(), &want);
        let shard = dir.path().join("model-00001-of-00003.flashpack");
        let server = Server::start(std::fs::read(&shard).unwrap(), Fault::ReplaceAfter(3));
        let url = server.url("model-00001-of-00003.flashpack");
        let remote = WeightFile::open_url(&url, settings()).unwrap();
        let local = WeightFile::open(dir.path().join("model-00002-of-00003.flashpack")).unwrap();
        let files = [&remote, &local];
        let pieces: Vec<Piece> = files
            .iter()
            .enumerate()
            .flat_map(|(k, f)| {
                f.tensors().iter().map(move |t| Piece {
                    file: k,
                    start: t.start,
                    end: t.end,
                })
            })
            .collect();
        let plan = JobPlan::new(&files, &pieces).unwrap();
        let r = read_host(&files, &plan, &LoadOptions::default());
        let msg = remote_error(r, &url, "changed while it was being read");
        // The part that failed, by the tensors it holds.
        assert!(msg.contains("(reading tensor"), "{msg}");
    }
}

// ---- Versions without a strong ETag: pinned by Last-Modified, compared on every response ----

/// Warnings the engine gave that name `url` (the handler collects every test's warnings).
fn warnings_about(url: &str) -> Vec<String> {
    use std::sync::{Mutex, OnceLock};
    static SEEN: OnceLock<std::sync::Arc<Mutex<Vec<String>>>> = OnceLock::new();
    let seen = SEEN.get_or_init(|| {
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        flashpack::warning::set_handler(Some(Box::new(move |m: &str| {
            s.lock().unwrap().push(m.to_string())
        })));
        seen
    });
    let all = seen.lock().unwrap();
    all.iter().filter(|m| m.contains(url)).cloned().collect()
}

#[test]
fn last_modified_only_pins_the_version_and_a_replacement_is_an_error() {
    let f = files();
    for conditional in [true, false] {
        for (bytes, name) in [
            (&f.flashpack, "m.flashpack"),
            (&f.safetensors, "m.safetensors"),
        ] {
            // Replaced (same size, a newer Last-Modified) after the index was read.
            let server =
                Server::start(bytes.clone(), Fault::ReplaceAfter(3)).with_validators(Validators {
                    conditional,
                    ..Validators::LAST_MODIFIED
                });
            let url = server.url(name);
            let msg = remote_error(load(&url, false), &url, "changed while it was being read");
            if !conditional {
                // A server that ignores If-Unmodified-Since: the response's date gives it away.
                assert!(msg.contains("Last-Modified"), "{msg}");
            }
            // Every data GET asked for the pinned date, none for an ETag.
            let gets: Vec<_> = server
                .requests()
                .into_iter()
                .filter(|r| r.method == "GET")
                .collect();
            assert!(gets.iter().all(|r| r.header("if-match").is_none()));
            assert!(gets
                .iter()
                .all(|r| r.header("if-unmodified-since") == Some("Sun, 29 Nov 2026 12:00:00 GMT")));
        }
    }
    // Unreplaced, the same server loads bit-exact.
    let server = Server::start(f.safetensors.clone(), Fault::None)
        .with_validators(Validators::LAST_MODIFIED);
    assert_bit_exact(
        &load(&server.url("m.safetensors"), false).unwrap(),
        &f.tensors,
    );
}

#[test]
fn a_weak_etag_is_compared_on_every_response_never_sent_as_if_match() {
    let f = files();
    let weak = Validators {
        etag: Some(true),
        ..Validators::STRONG
    };
    let server = Server::start(f.safetensors.clone(), Fault::None).with_validators(weak);
    let url = server.url("m.safetensors");
    let file = WeightFile::open_url(&url, settings()).unwrap();
    assert_eq!(file.remote().unwrap().etag(), Some("W/\"v1\""));
    assert_eq!(
        file.remote().unwrap().version_pin(),
        flashpack::remote::VersionPin::Weak
    );
    assert_bit_exact(&file.load(&LoadOptions::default()).unwrap(), &f.tensors);
    assert!(server
        .requests()
        .iter()
        .all(|r| r.header("if-match").is_none()));
    // Replaced, at a server that ignores the date condition: the weak ETag differs.
    let server =
        Server::start(f.safetensors.clone(), Fault::ReplaceAfter(3)).with_validators(Validators {
            conditional: false,
            ..weak
        });
    let url = server.url("m.safetensors");
    let msg = remote_error(load(&url, false), &url, "changed while it was being read");
    assert!(
        msg.contains("W/\"v1\"") && msg.contains("W/\"v2\""),
        "{msg}"
    );
}

#[test]
fn a_validator_that_differs_on_some_responses_is_an_error() {
    let f = files();
    for validators in [Validators::STRONG, Validators::LAST_MODIFIED] {
        // Every third GET reports the other version's validators (same bytes).
        let server = Server::start(f.safetensors.clone(), Fault::FlakyValidators(3))
            .with_validators(Validators {
                conditional: false,
                ..validators
            });
        let url = server.url("m.safetensors");
        remote_error(load(&url, false), &url, "changed while it was being read");
    }
}

#[test]
fn without_any_validator_a_load_warns_and_checks_flashpack_checksums() {
    let f = files();
    let _ = warnings_about(""); // installs the collecting handler before any open

    // FlashPack: replaced after the index was read; verify not asked for, checked anyway.
    let server = Server::start(f.flashpack.clone(), Fault::ReplaceAfter(3))
        .with_validators(Validators::NONE);
    let url = server.url("m.flashpack");
    let file = WeightFile::open_url(&url, settings()).unwrap();
    assert!(file.checks_by_default());
    let Err(e) = file.load(&LoadOptions::default()) else {
        panic!("{url}: a replaced object loaded")
    };
    let msg = e.to_string();
    assert!(msg.starts_with(&url) && msg.contains("checksum"), "{msg}");
    let warned = warnings_about(&url);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("no ETag or Last-Modified"), "{warned:?}");
    // Unreplaced, it loads bit-exact (the checks pass).
    let server = Server::start(f.flashpack.clone(), Fault::None).with_validators(Validators::NONE);
    assert_bit_exact(
        &load(&server.url("m.flashpack"), false).unwrap(),
        &f.tensors,
    );
    // safetensors: nothing to check with; the warning says so.
    let server =
        Server::start(f.safetensors.clone(), Fault::None).with_validators(Validators::NONE);
    let url = server.url("m.safetensors");
    assert_bit_exact(&load(&url, false).unwrap(), &f.tensors);
    let warned = warnings_about(&url);
    assert!(
        warned.len() == 1 && warned[0].contains("no checksums"),
        "{warned:?}"
    );
    // A server with a strong ETag: no warning, no default checks.
    let server = Server::start(f.flashpack.clone(), Fault::None);
    let url = server.url("m.flashpack");
    assert!(!WeightFile::open_url(&url, settings())
        .unwrap()
        .checks_by_default());
    assert!(warnings_about(&url).is_empty());
}

/// Last-Modified has one-second resolution: a replacement within the same second is invisible
/// to it. A FlashPack file pinned only by it is checked against its checksums by default, so
/// the replacement is still an error (a safetensors file has no such check: documented).
#[test]
fn a_replacement_within_the_same_second_is_caught_by_flashpack_checksums() {
    let f = files();
    let server =
        Server::start(f.flashpack.clone(), Fault::ReplaceAfter(3)).with_validators(Validators {
            same_second: true,
            ..Validators::LAST_MODIFIED
        });
    let url = server.url("m.flashpack");
    let Err(e) = load(&url, false) else {
        panic!("{url}: a replaced object loaded")
    };
    let e = e.to_string();
    assert!(e.starts_with(&url) && e.contains("checksum"), "{e}");
}

// ---- Cancellation: within about a second in every phase ----

/// Generous for a busy machine; the aim is well under a second.
const CANCEL_BOUND: Duration = Duration::from_secs(3);

/// Runs `work` while another thread cancels `cancel` once `when` returns true (polled every
/// 10 ms); returns the result and how long `work` took to return after the cancel.
fn cancelled_after<T>(
    cancel: &flashpack::cancel::Cancel,
    when: impl Fn() -> bool + Send + Sync,
    work: impl FnOnce() -> flashpack::Result<T>,
) -> (flashpack::Result<T>, Duration) {
    let at = std::sync::Mutex::new(None);
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            let start = Instant::now();
            while !when() && start.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(10));
            }
            *at.lock().unwrap() = Some(Instant::now());
            cancel.cancel();
        });
        work()
    });
    let at = at.lock().unwrap().expect("the cancel was sent");
    (out, at.elapsed())
}

fn assert_cancelled<T>(r: flashpack::Result<T>, url: &str, took: Duration, phase: &str) {
    eprintln!("cancel latency, {phase}: {took:?}");
    match r {
        Err(Error::Cancelled { path }) => assert_eq!(path.to_str(), Some(url)),
        Err(e) => panic!("{phase}: not a cancellation: {e}"),
        Ok(_) => panic!("{phase}: finished despite the cancel"),
    }
    assert!(took < CANCEL_BOUND, "{phase}: {took:?} after the cancel");
}

/// After a cancelled load, the next one in the process works.
fn next_load_works(f: &Files) {
    let server = Server::start(f.safetensors.clone(), Fault::None);
    assert_bit_exact(
        &load(&server.url("m.safetensors"), false).unwrap(),
        &f.tensors,
    );
}

#[test]
fn a_cancel_stops_an_open_at_a_silent_server() {
    let f = files();
    let server = Server::start(f.flashpack.clone(), Fault::Silent);
    let url = server.url("m.flashpack");
    let cancel = flashpack::cancel::Cancel::new();
    let s = settings().with_cancel(Some(cancel.clone()));
    let t = Instant::now();
    let (r, took) = cancelled_after(
        &cancel,
        || t.elapsed() > Duration::from_millis(300),
        || WeightFile::open_url(&url, s),
    );
    assert_cancelled(r, &url, took, "open (HEAD unanswered)");
    assert_eq!(server.gets(), 0, "the open got past its HEAD");
    // The index GETs: the HEAD and the first GET (the trailer) answered, the footer's not.
    let server = Server::start(f.flashpack.clone(), Fault::Silent).with_fault_after(1);
    let url = server.url("m.flashpack");
    let s = settings().with_cancel(Some(flashpack::cancel::Cancel::new()));
    let cancel = s.cancel.clone().unwrap();
    let (r, took) = cancelled_after(
        &cancel,
        || server.gets() >= 2,
        || flashpack::checkpoint::Checkpoint::open_url(&url, s),
    );
    assert_cancelled(r, &url, took, "checkpoint open");
    next_load_works(&f);
}

#[test]
fn a_cancel_stops_a_load_of_slow_parts_and_a_stalled_server() {
    let f = files();
    for (fault, phase) in [
        (Fault::Slow(2000), "reading parts slowly"),
        (Fault::Stall, "stalled server"),
    ] {
        // The index is read normally (three GETs); every data GET after it is slow or stalls.
        let server = Server::start(f.safetensors.clone(), fault).with_fault_after(3);
        let url = server.url("m.safetensors");
        let file = WeightFile::open_url(&url, settings()).unwrap();
        let cancel = flashpack::cancel::Cancel::new();
        let opts = LoadOptions {
            cancel: Some(cancel.clone()),
            ..Default::default()
        };
        let (r, took) = cancelled_after(&cancel, || server.gets() >= 5, || file.load(&opts));
        assert_cancelled(r, &url, took, phase);
    }
    next_load_works(&f);
}

#[test]
fn a_cancel_stops_a_load_during_back_off_and_no_retry_starts() {
    let f = files();
    // Opening a safetensors file takes three GETs (tail, header length, header).
    let server = Server::start(f.safetensors.clone(), Fault::Unavailable(100)).with_fault_after(3);
    let url = server.url("m.safetensors");
    // Long back-off: the cancel comes while every reader waits to retry.
    let s = RemoteSettings {
        initial_backoff: Duration::from_secs(4),
        max_backoff: Duration::from_secs(8),
        ..settings()
    };
    let file = WeightFile::open_url(&url, s).unwrap();
    let cancel = flashpack::cancel::Cancel::new();
    let opts = LoadOptions {
        cancel: Some(cancel.clone()),
        ..Default::default()
    };
    let (r, took) = cancelled_after(&cancel, || server.gets() >= 5, || file.load(&opts));
    assert_cancelled(r, &url, took, "back-off");
    let gets = server.gets();
    // Past the back-off the retries would have come after.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(server.gets(), gets, "a retry started after the cancel");
    next_load_works(&f);
}
