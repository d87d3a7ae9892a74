//! The `flashpack` binary on URLs: `inspect` fetches only the footer or header (the server's
//! request log shows how little), `verify` checks a FlashPack object's checksums as its parts
//! arrive and a safetensors object's header, and both take a checkpoint's index URL (the
//! shards served beside it). The server is the engine tests' (started on 127.0.0.1).
#[path = "../../flashpack/tests/remote/server.rs"]
mod server;

use std::process::{Command, Output};

use flashpack::checkpoint::IndexKind;
use flashpack::convert::write_index;
use flashpack::weights::WeightFile;
use flashpack::write::{pack, PackEntry, PackOptions};
use flashpack::Dtype;
use server::{Fault, Server};

fn flashpack(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flashpack"))
        .arg("--quiet")
        .args(args)
        // Small parts: the payload takes many ranged GETs.
        .env("FLASHPACK_REMOTE_PART_BYTES", "65536")
        .env("FLASHPACK_REMOTE_RETRIES", "2")
        .output()
        .expect("run the flashpack binary")
}

fn ok(o: Output) -> String {
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "stdout: {out}\nstderr: {err}");
    out
}

fn fails(o: Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    err
}

/// A 1 MiB FlashPack file with checksums (64 KiB chunks) and the same tensors as safetensors.
fn files(dir: &std::path::Path) -> (Vec<u8>, Vec<u8>) {
    let tensors: Vec<(String, Vec<u8>)> = (0..4u32)
        .map(|k| {
            let bytes = (0..(256 << 10)).map(|i: u32| (i * 7 + k) as u8).collect();
            (format!("layer{k}.weight"), bytes)
        })
        .collect();
    let entries: Vec<PackEntry<'_>> = tensors
        .iter()
        .map(|(n, b)| PackEntry::new(n.clone(), Dtype::U8, vec![b.len() as u64], b))
        .collect();
    let fp = dir.join("m.flashpack");
    let opts = PackOptions {
        checksums: true,
        chunk_bytes: 65536,
        ..Default::default()
    };
    pack(&fp, &entries, &opts).unwrap();
    let st = dir.join("m.safetensors");
    WeightFile::open(&fp).unwrap().to_safetensors(&st).unwrap();
    (std::fs::read(&fp).unwrap(), std::fs::read(&st).unwrap())
}

#[test]
fn inspect_of_a_url_fetches_only_the_footer_or_header() {
    let dir = tempfile::tempdir().unwrap();
    let (fp, st) = files(dir.path());
    for (bytes, format) in [(fp, "flashpack"), (st, "safetensors")] {
        let server = Server::start(bytes.clone(), Fault::None);
        let url = server.url(&format!("models/m.{format}"));
        let out = ok(flashpack(&["inspect", "--json", &url]));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["file"], url.as_str());
        assert_eq!(v["format"], format);
        assert_eq!(v["tensor_count"], 4);
        assert_eq!(v["file_bytes"], bytes.len() as u64);
        // The footer or header, not the 1 MiB of tensors.
        let sent = server.bytes_sent();
        assert!(sent < 16 << 10, "{sent} bytes fetched to inspect {url}");
        assert!(server.gets() <= 3, "{:?}", server.requests());
        let text = ok(flashpack(&["inspect", &url]));
        assert!(text.starts_with(&format!("file: {url} (")), "{text}");
    }
}

#[test]
fn verify_of_a_url_checks_checksums_and_names_a_bad_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let (fp, st) = files(dir.path());
    let server = Server::start(fp.clone(), Fault::None);
    let url = server.url("m.flashpack");
    let out = ok(flashpack(&["verify", &url]));
    assert!(
        out.starts_with(&format!("{url}: OK: 4 tensors"))
            && out.contains("16 xxh3-64 checksums match"),
        "{out}"
    );
    // The whole payload was fetched, in 64 KiB ranged GETs.
    assert!(server.gets() >= 16, "{} GETs", server.gets());

    let mut bad = fp.clone();
    bad[300_000] ^= 1;
    let server = Server::start(bad, Fault::None);
    let url = server.url("m.flashpack");
    let err = fails(flashpack(&["verify", &url]));
    assert!(
        err.contains(&url) && err.contains("checksum mismatch"),
        "{err}"
    );

    let server = Server::start(st, Fault::None);
    let url = server.url("m.safetensors");
    let out = ok(flashpack(&["verify", &url]));
    assert!(out.contains("safetensors header and offsets OK"), "{out}");

    // Errors name the URL: a server that refuses.
    let server = Server::start(vec![0; 64], Fault::Forbidden);
    let url = server.url("m.flashpack");
    let err = fails(flashpack(&["inspect", &url]));
    assert!(err.contains(&url) && err.contains("access denied"), "{err}");
}

#[test]
fn a_checkpoint_index_url_is_inspected_and_verified_shard_by_shard() {
    let dir = tempfile::tempdir().unwrap();
    let (fp, _) = files(dir.path());
    // Two FlashPack shards and their index.
    let a = dir.path().join("model-00001-of-00002.flashpack");
    let b = dir.path().join("model-00002-of-00002.flashpack");
    std::fs::write(&a, &fp).unwrap();
    pack(
        &b,
        &[PackEntry::new("extra", Dtype::U8, vec![8], &[7; 8])],
        &PackOptions::default(),
    )
    .unwrap();
    let index = dir.path().join("model.flashpack.index.json");
    write_index(&index, IndexKind::FlashPack, &[a, b], Default::default()).unwrap();
    let serve = |names: &[&str]| {
        let files = names
            .iter()
            .map(|n| {
                (
                    format!("repo/{n}"),
                    std::fs::read(dir.path().join(n)).unwrap(),
                )
            })
            .collect();
        Server::start_files(files)
    };
    let all = [
        "model.flashpack.index.json",
        "model-00001-of-00002.flashpack",
        "model-00002-of-00002.flashpack",
    ];
    let server = serve(&all);
    let url = server.url("repo/model.flashpack.index.json");
    let out = ok(flashpack(&["inspect", &url]));
    assert!(
        out.starts_with(&format!("checkpoint: {url} (flashpack index, 2 shards)")),
        "{out}"
    );
    let out = ok(flashpack(&["verify", &url]));
    assert!(out.contains("index OK: 2 shards, 5 tensors"), "{out}");
    assert!(
        out.trim_end()
            .ends_with("OK: 2 shards, 2 with checksums that match"),
        "{out}"
    );
    // A shard the server does not have.
    let server = serve(&all[..2]);
    let url = server.url("repo/model.flashpack.index.json");
    let err = fails(flashpack(&["verify", &url]));
    assert!(
        err.contains(&url) && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn convert_of_a_url_writes_the_same_tensors_locally() {
    let dir = tempfile::tempdir().unwrap();
    let (fp, st) = files(dir.path());
    let out = tempfile::tempdir().unwrap();
    // safetensors at a URL -> FlashPack, FlashPack at a URL -> safetensors (bit-exact).
    for (bytes, name, dest) in [
        (&st, "m.safetensors", "from-url.flashpack"),
        (&fp, "m.flashpack", "from-url.safetensors"),
    ] {
        let server = Server::start(bytes.clone(), Fault::None);
        let url = server.url(name);
        let dest = out.path().join(dest);
        let report = ok(flashpack(&["convert", &url, dest.to_str().unwrap()]));
        assert!(report.starts_with(&url), "{report}");
        let local = WeightFile::open(dir.path().join(name)).unwrap();
        let local = local.load(&Default::default()).unwrap();
        let written = WeightFile::open(&dest)
            .unwrap()
            .load(&Default::default())
            .unwrap();
        assert_eq!(written.tensors().len(), 4);
        for t in local.iter() {
            assert_eq!(written.get(t.name).unwrap().data, t.data, "{}", t.name);
        }
    }
    // The safetensors written from the FlashPack URL is the file the local conversion writes.
    assert_eq!(
        std::fs::read(out.path().join("from-url.safetensors")).unwrap(),
        st
    );
    // Flags that need a model folder are refused for a URL.
    let server = Server::start(st.clone(), Fault::None);
    let err = fails(flashpack(&[
        "convert",
        &server.url("m.safetensors"),
        "--subfolder",
        "unet",
    ]));
    assert!(err.contains("not a URL"), "{err}");
}

/// SIGINT stops `inspect`, `verify` and `convert` of a URL within about a second whatever the
/// server does (no answer at all, a stalled body, a slow one), with exit status 130 and no
/// output file or temporary file left.
#[cfg(target_os = "linux")]
#[test]
fn sigint_stops_a_command_on_a_url_at_once_with_status_130() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let (fp, _) = files(dir.path());
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("out.safetensors");
    // (command, fault, GETs served before the fault, GETs to wait for before the signal)
    let cases: [(&[&str], Fault, usize, usize); 3] = [
        (&["inspect"], Fault::Silent, 0, 0),
        (&["verify"], Fault::Stall, 2, 3),
        (
            &["convert", "", dest.to_str().unwrap()],
            Fault::Slow(4096),
            2,
            3,
        ),
    ];
    for (args, fault, after, wait_for) in cases {
        let server = Server::start(fp.clone(), fault).with_fault_after(after);
        let url = server.url("m.flashpack");
        let mut argv: Vec<&str> = args.to_vec();
        match argv.iter_mut().find(|a| a.is_empty()) {
            Some(slot) => *slot = &url,
            None => argv.push(&url),
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_flashpack"))
            .arg("--quiet")
            .args(&argv)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run the flashpack binary");
        // Until the command is waiting on the faulty server (a hang detector bounds it).
        let started = Instant::now();
        while server.requests().len() <= wait_for || server.gets() < wait_for {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{argv:?}: never got there"
            );
            assert!(child.try_wait().unwrap().is_none(), "{argv:?}: ended early");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(200)); // the signal watcher is up
        let sent = Instant::now();
        // SAFETY: a plain kill(2) of our own child process.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
        let o = child.wait_with_output().unwrap();
        let took = sent.elapsed();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        eprintln!("SIGINT to exit, {}: {took:?}", argv[0]);
        assert_eq!(o.status.code(), Some(130), "{argv:?}: {err}");
        assert!(err.contains("interrupted by SIGINT"), "{err}");
        assert!(took < Duration::from_secs(3), "{argv:?}: {took:?}");
    }
    let left: Vec<_> = std::fs::read_dir(out.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
