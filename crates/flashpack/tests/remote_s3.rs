//! Remote loads from `s3://` URLs against moto's S3 server, started by the test on 127.0.0.1
//! (a free port) from the venv `make test-remote` builds (target/moto-venv, or
//! FLASHPACK_MOTO_SERVER). The engine finds the store the way AWS tools do: `AWS_ENDPOINT_URL`
//! and the `AWS_*` credentials.
#![cfg(feature = "remote")]

#[path = "remote/checkpoint_job.rs"]
mod checkpoint_job;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use flashpack::read::LoadOptions;
use flashpack::weights::{Format, WeightFile};
use flashpack::write::{pack, PackEntry, PackOptions};
use flashpack::{Dtype, Error};
use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStoreExt, PutPayload};

/// moto's server on a free port; stopped when dropped.
struct Moto {
    port: u16,
    child: std::process::Child,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto() -> Moto {
    // The venv `make test-remote` builds, unless FLASHPACK_MOTO_SERVER names another.
    let default = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../target/moto-venv/bin/moto_server"
    );
    let bin = std::env::var("FLASHPACK_MOTO_SERVER")
        .ok()
        .into_iter()
        .chain([default.to_string()])
        .find(|p| std::path::Path::new(p).exists())
        .expect(
            "no moto_server: `make test-remote` builds its venv (or set FLASHPACK_MOTO_SERVER)",
        );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start moto_server");
    let moto = Moto { port, child };
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "moto_server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    moto
}

/// Creates `bucket` (moto takes an unsigned request).
fn create_bucket(port: u16, bucket: &str) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

fn put(port: u16, bucket: &str, key: &str, bytes: Vec<u8>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store = AmazonS3Builder::new()
        .with_endpoint(format!("http://127.0.0.1:{port}"))
        .with_allow_http(true)
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .build()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(store.put(
        &object_store::path::Path::parse(key).unwrap(),
        PutPayload::from(bytes),
    ))
    .unwrap();
}

#[test]
fn s3_objects_load_bit_exact_in_both_formats() {
    let moto = moto();
    create_bucket(moto.port, "weights");
    let dir = tempfile::tempdir().unwrap();
    let tensors: Vec<(String, Vec<u8>)> = (0..4u32)
        .map(|k| {
            (
                format!("t{k}"),
                (0..5000 + 777 * k).map(|i| (i * 13 + k) as u8).collect(),
            )
        })
        .collect();
    let entries: Vec<PackEntry<'_>> = tensors
        .iter()
        .map(|(n, b)| PackEntry::new(n.clone(), Dtype::U8, vec![b.len() as u64], b))
        .collect();
    let fp = dir.path().join("m.flashpack");
    pack(
        &fp,
        &entries,
        &PackOptions {
            checksums: true,
            chunk_bytes: 4096,
            ..Default::default()
        },
    )
    .unwrap();
    let st = dir.path().join("m.safetensors");
    WeightFile::open(&fp).unwrap().to_safetensors(&st).unwrap();
    put(
        moto.port,
        "weights",
        "models/m.flashpack",
        std::fs::read(&fp).unwrap(),
    );
    put(
        moto.port,
        "weights",
        "models/m.safetensors",
        std::fs::read(&st).unwrap(),
    );

    // The standard AWS configuration, as a user of an S3-compatible store sets it.
    std::env::set_var(
        "AWS_ENDPOINT_URL",
        format!("http://127.0.0.1:{}", moto.port),
    );
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("FLASHPACK_REMOTE_PART_BYTES", "4096");
    for (key, format) in [
        ("m.flashpack", Format::FlashPack),
        ("m.safetensors", Format::Safetensors),
    ] {
        let url = format!("s3://weights/models/{key}");
        let file = WeightFile::open_location(&url).unwrap();
        assert_eq!(file.format(), format);
        assert!(
            file.remote().unwrap().etag().is_some(),
            "{url}: no ETag pinned"
        );
        let verify = format == Format::FlashPack;
        let w = file
            .load(&LoadOptions {
                verify,
                ..Default::default()
            })
            .unwrap();
        for (name, bytes) in &tensors {
            assert_eq!(w.get(name).unwrap().data, &bytes[..], "{url}: {name}");
        }
    }
    sharded_checkpoints(moto.port, &tensors);

    let url = "s3://weights/models/absent.safetensors";
    let e = WeightFile::open_location(url).err().expect("a missing key");
    let msg = e.to_string();
    assert!(
        matches!(e, Error::Remote { .. }) && msg.starts_with(url) && msg.contains("no such object"),
        "{msg}"
    );
}

/// A safetensors index with its shards and a FlashPack index with its shards, uploaded under
/// `ckpt/`, load bit-exact (the FlashPack one verified); an index naming a shard the bucket does
/// not hold is ShardMissing.
fn sharded_checkpoints(port: u16, tensors: &[(String, Vec<u8>)]) {
    use flashpack::checkpoint::{Checkpoint, IndexKind, OpenOptions};
    use flashpack::convert::write_index;
    let dir = tempfile::tempdir().unwrap();
    let mut st_files = Vec::new();
    let mut fp_files = Vec::new();
    for (k, pair) in tensors.chunks(2).enumerate() {
        let entries: Vec<PackEntry<'_>> = pair
            .iter()
            .map(|(n, b)| PackEntry::new(n.clone(), Dtype::U8, vec![b.len() as u64], b))
            .collect();
        let fp = dir.path().join(format!("m-{k}.flashpack"));
        let opts = PackOptions {
            checksums: true,
            chunk_bytes: 4096,
            ..Default::default()
        };
        pack(&fp, &entries, &opts).unwrap();
        let st = dir.path().join(format!("m-{k}.safetensors"));
        WeightFile::open(&fp).unwrap().to_safetensors(&st).unwrap();
        fp_files.push(fp);
        st_files.push(st);
    }
    let st_index = dir.path().join("model.safetensors.index.json");
    write_index(
        &st_index,
        IndexKind::Safetensors,
        &st_files,
        Default::default(),
    )
    .unwrap();
    let fp_index = dir.path().join("model.flashpack.index.json");
    write_index(
        &fp_index,
        IndexKind::FlashPack,
        &fp_files,
        Default::default(),
    )
    .unwrap();
    for path in st_files
        .iter()
        .chain(&fp_files)
        .chain([&st_index, &fp_index])
    {
        let name = path.file_name().unwrap().to_str().unwrap();
        put(
            port,
            "weights",
            &format!("ckpt/{name}"),
            std::fs::read(path).unwrap(),
        );
    }
    for (index, verify) in [
        ("model.safetensors.index.json", false),
        ("model.flashpack.index.json", true),
    ] {
        let url = format!("s3://weights/ckpt/{index}");
        let c = Checkpoint::open_location(&url, &OpenOptions::default()).unwrap();
        assert_eq!(c.shards().len(), 2, "{url}");
        let got = checkpoint_job::load(&c, verify);
        assert_eq!(got.len(), tensors.len());
        for (name, bytes) in &got {
            let want = &tensors.iter().find(|(n, _)| n == name).unwrap().1;
            assert_eq!(bytes, want, "{url}: {name}");
        }
    }
    // An index whose shard is not in the bucket.
    put(
        port,
        "weights",
        "ckpt/orphan.safetensors.index.json",
        br#"{"weight_map": {"t0": "absent.safetensors"}}"#.to_vec(),
    );
    let url = "s3://weights/ckpt/orphan.safetensors.index.json";
    let e = Checkpoint::open_location(url, &OpenOptions::default()).unwrap_err();
    match &e {
        Error::Checkpoint { source, .. } => assert!(
            matches!(**source, flashpack::CheckpointError::ShardMissing { .. }),
            "{e}"
        ),
        other => panic!("{other}"),
    }
    assert!(e.to_string().starts_with(url), "{e}");
}
