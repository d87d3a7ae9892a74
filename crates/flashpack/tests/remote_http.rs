//! Remote loads over HTTP against servers the tests start on 127.0.0.1: a fault-injecting
//! server (tests/remote/server.rs) for every failure the engine must survive or report, and
//! nginx (Debian's package, which `make test-remote` installs) for real Range serving.
#![cfg(feature = "remote")]

#[path = "remote/server.rs"]
mod server;

use std::time::{Duration, Instant};

use flashpack::read::LoadOptions;
use flashpack::remote::{RemoteSettings, RemoteWeightFile};
use flashpack::weights::{Format, WeightFile};
use flashpack::write::{pack, PackEntry, PackOptions};
use flashpack::{Dtype, Error};
use server::{Fault, Server};

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
    let file = RemoteWeightFile::open_with(url, settings())?;
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
        let file = RemoteWeightFile::open_with(&url, settings()).unwrap();
        assert_eq!(file.format(), format);
        assert_eq!(file.remote().len(), bytes.len() as u64);
        assert_eq!(file.remote().etag(), Some("\"v1\""));
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

/// nginx serving a new temporary folder on a free port; stopped when dropped.
struct Nginx {
    port: u16,
    child: std::process::Child,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx() -> (tempfile::TempDir, Nginx) {
    let bin = std::env::var("FLASHPACK_NGINX")
        .ok()
        .into_iter()
        .chain(["/usr/sbin/nginx".to_string(), "/usr/bin/nginx".to_string()])
        .find(|p| std::path::Path::new(p).exists())
        .expect(
            "nginx not found: `make test-remote` unpacks Debian's nginx-light (FLASHPACK_NGINX)",
        );
    let dir = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap().keep();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = run.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process off; pid {run}/nginx.pid; error_log {run}/error.log;\n\
             events {{}}\n\
             http {{ access_log off; client_body_temp_path {run}; proxy_temp_path {run};\n\
               fastcgi_temp_path {run}; uwsgi_temp_path {run}; scgi_temp_path {run};\n\
               server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n",
            run = run.display(),
            root = dir.path().display()
        ),
    )
    .unwrap();
    let child = std::process::Command::new(bin)
        .args([
            "-p",
            &run.display().to_string(),
            "-c",
            &conf.display().to_string(),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start nginx");
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "nginx did not start (see {})",
            run.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (dir, Nginx { port, child })
}
