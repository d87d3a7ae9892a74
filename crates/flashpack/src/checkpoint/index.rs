//! An index json as written on disk: the safetensors sharded-checkpoint index
//! (`model.safetensors.index.json`: `metadata` and `weight_map`) and the multi-file FlashPack
//! index (the same two keys plus `format`, `version` and `files`; see `docs/FORMAT.md`).
//!
//! Parsing is bounded (the file's size is checked before it is read) and strict where a loader
//! would otherwise guess: a tensor listed twice, a shard name that leaves the index's folder
//! and an unknown FlashPack index version are errors, each naming the tensor and the shard.
//!
//! ```
//! use flashpack::checkpoint::{IndexFile, IndexKind};
//! let json = br#"{"metadata": {"total_size": 8}, "weight_map": {"a": "m-1.safetensors"}}"#;
//! let index = IndexFile::parse(json).unwrap();
//! assert_eq!(index.kind, IndexKind::Safetensors);
//! assert_eq!(index.weight_map, vec![("a".to_string(), "m-1.safetensors".to_string())]);
//! ```
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path};

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::error::CheckpointError;

/// The `format` tag of a multi-file FlashPack index.
pub const FLASHPACK_INDEX_FORMAT: &str = "flashpack_index";
/// The multi-file FlashPack index version this build writes and reads.
pub const FLASHPACK_INDEX_VERSION: u64 = 1;
/// The largest index file read (a 100,000-tensor model's index is about 10 MB).
pub const MAX_INDEX_BYTES: u64 = 100_000_000;

/// Which kind of index a json file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexKind {
    /// `*.safetensors.index.json` as transformers and diffusers write it (its shards may be
    /// safetensors or FlashPack files: each is recognised by its content).
    Safetensors,
    /// `*.flashpack.index.json`: every shard is a FlashPack file.
    FlashPack,
}

/// What a FlashPack index records about one shard, to notice a shard replaced or changed after
/// the index was written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    /// The file's length in bytes.
    pub size: u64,
    /// xxh3-64 of the shard's footer JSON (as stored), 16 lowercase hex digits. The footer holds
    /// every tensor's place and, when the pack has them, the payload checksums.
    pub footer_xxh3_64: String,
}

/// A parsed index file.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexFile {
    /// Which index format it is.
    pub kind: IndexKind,
    /// The index's `metadata` object (absent or `null`: `None`).
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// `(tensor, shard)` in the order of the file; no tensor twice.
    pub weight_map: Vec<(String, String)>,
    /// A FlashPack index's `files` records, by shard name.
    pub files: BTreeMap<String, ShardRecord>,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
    weight_map: Entries,
    #[serde(default)]
    files: Option<BTreeMap<String, ShardRecord>>,
}

/// A JSON object's entries in file order, keeping duplicates (a `HashMap` would drop them).
struct Entries(Vec<(String, String)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object mapping tensor names to shard file names")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, String>()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl IndexFile {
    /// Parses and checks an index's bytes (see the module doc for what is refused).
    pub fn parse(bytes: &[u8]) -> Result<IndexFile, CheckpointError> {
        let raw: Raw = serde_json::from_slice(bytes).map_err(|e| CheckpointError::Malformed {
            reason: e.to_string(),
        })?;
        let kind = match (raw.format.as_deref(), raw.version) {
            (None, None) => IndexKind::Safetensors,
            (Some(FLASHPACK_INDEX_FORMAT), Some(FLASHPACK_INDEX_VERSION)) => IndexKind::FlashPack,
            (Some(format), version) => {
                return Err(CheckpointError::UnsupportedIndex {
                    format: format.to_string(),
                    version: version.unwrap_or(0),
                    supported: FLASHPACK_INDEX_FORMAT,
                })
            }
            (None, Some(_)) => {
                return Err(CheckpointError::Malformed {
                    reason: "'version' without 'format'".into(),
                })
            }
        };
        if kind == IndexKind::Safetensors && raw.files.is_some() {
            return Err(CheckpointError::Malformed {
                reason: "'files' is a FlashPack index key, but 'format' is missing".into(),
            });
        }
        let weight_map = raw.weight_map.0;
        if weight_map.is_empty() {
            return Err(CheckpointError::Empty);
        }
        let mut seen = std::collections::HashSet::with_capacity(weight_map.len());
        for (tensor, shard) in &weight_map {
            if !seen.insert(tensor.as_str()) {
                return Err(CheckpointError::DuplicateEntry {
                    tensor: tensor.clone(),
                });
            }
            check_shard_name(shard, tensor)?;
        }
        Ok(IndexFile {
            kind,
            metadata: raw.metadata,
            weight_map,
            files: raw.files.unwrap_or_default(),
        })
    }
}

/// A shard name must be a relative path of plain components (`model-00001-of-00002.safetensors`
/// or `sub/x.safetensors`): no `..`, `.`, root, drive or empty name, so it stays inside the
/// index's folder. (Symbolic links are followed, as in a Hugging Face cache snapshot, whose
/// shards link to its blob store.)
pub fn check_shard_name(shard: &str, tensor: &str) -> Result<(), CheckpointError> {
    let plain = !shard.is_empty()
        && !shard.contains('\\')
        && Path::new(shard)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if plain {
        Ok(())
    } else {
        Err(CheckpointError::ShardOutsideFolder {
            shard: shard.to_string(),
            tensor: tensor.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> CheckpointError {
        IndexFile::parse(json.as_bytes()).unwrap_err()
    }

    #[test]
    fn a_transformers_index_parses_in_file_order() {
        let i = IndexFile::parse(
            br#"{"metadata": {"total_size": 16, "format": "pt"},
                 "weight_map": {"z": "b.safetensors", "a": "a.safetensors"}}"#,
        )
        .unwrap();
        assert_eq!(i.kind, IndexKind::Safetensors);
        assert_eq!(i.weight_map[0], ("z".into(), "b.safetensors".into()));
        assert_eq!(i.metadata.unwrap()["total_size"], 16);
        // diffusers writes no metadata at all in some versions
        let i = IndexFile::parse(br#"{"weight_map": {"a": "x.safetensors"}}"#).unwrap();
        assert!(i.metadata.is_none());
        let i = IndexFile::parse(br#"{"metadata": null, "weight_map": {"a": "x"}}"#).unwrap();
        assert!(i.metadata.is_none());
    }

    #[test]
    fn a_tensor_listed_twice_is_named() {
        let e = err(r#"{"weight_map": {"w": "a.safetensors", "w": "b.safetensors"}}"#);
        assert!(
            matches!(&e, CheckpointError::DuplicateEntry { tensor } if tensor == "w"),
            "{e}"
        );
    }

    #[test]
    fn shard_names_that_leave_the_folder_are_refused() {
        for bad in [
            "../x.safetensors",
            "/etc/passwd",
            "a/../../x",
            "./x",
            "",
            "..",
            "a\\..\\x",
        ] {
            let json = serde_json::json!({"weight_map": {"t": bad}}).to_string();
            let e = err(&json);
            assert!(
                matches!(&e, CheckpointError::ShardOutsideFolder { shard, tensor }
                    if shard == bad && tensor == "t"),
                "{bad}: {e}"
            );
        }
        IndexFile::parse(br#"{"weight_map": {"t": "sub/x.safetensors"}}"#).unwrap();
    }

    #[test]
    fn malformed_indexes_say_why() {
        for (json, want) in [
            ("{", "EOF"),
            ("[]", "expected"),
            (r#"{"metadata": {}}"#, "weight_map"),
            (r#"{"weight_map": {"a": 3}}"#, "invalid type"),
            (
                r#"{"weight_map": [["a", "b"]]}"#,
                "object mapping tensor names",
            ),
            (
                r#"{"metadata": 3, "weight_map": {"a": "b"}}"#,
                "invalid type",
            ),
            (
                r#"{"version": 1, "weight_map": {"a": "b"}}"#,
                "without 'format'",
            ),
        ] {
            let e = err(json);
            assert!(
                matches!(&e, CheckpointError::Malformed { reason } if reason.contains(want)),
                "{json}: {e}"
            );
        }
        assert!(matches!(
            err(r#"{"weight_map": {}}"#),
            CheckpointError::Empty
        ));
    }

    #[test]
    fn flashpack_indexes_are_versioned() {
        let ok = r#"{"format": "flashpack_index", "version": 1, "weight_map": {"a": "a.flashpack"},
                     "files": {"a.flashpack": {"size": 10, "footer_xxh3_64": "00"}}}"#;
        let i = IndexFile::parse(ok.as_bytes()).unwrap();
        assert_eq!(i.kind, IndexKind::FlashPack);
        assert_eq!(i.files["a.flashpack"].size, 10);
        let e = err(r#"{"format": "flashpack_index", "version": 2, "weight_map": {"a": "b"}}"#);
        assert!(
            matches!(e, CheckpointError::UnsupportedIndex { version: 2, .. }),
            "{e}"
        );
        let e = err(r#"{"format": "other", "weight_map": {"a": "b"}}"#);
        assert!(matches!(e, CheckpointError::UnsupportedIndex { .. }), "{e}");
        // a size that does not fit in u64 is refused, never wrapped
        let e = err(
            r#"{"format": "flashpack_index", "version": 1, "weight_map": {"a": "a"},
                        "files": {"a": {"size": 99999999999999999999, "footer_xxh3_64": ""}}}"#,
        );
        assert!(matches!(e, CheckpointError::Malformed { .. }), "{e}");
    }

    proptest::proptest! {
        /// Any bytes: an index or a typed error, never a panic.
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = IndexFile::parse(&bytes);
        }

        /// Any names and shard assignment survive a round trip through JSON in order.
        #[test]
        fn weight_maps_round_trip(names in proptest::collection::btree_set("[a-z.]{1,8}", 1..20),
                                  shard in 1u8..5) {
            let map: serde_json::Map<String, serde_json::Value> = names
                .iter()
                .map(|n| (n.clone(), serde_json::Value::from(format!("s{shard}.safetensors"))))
                .collect();
            let json = serde_json::json!({"weight_map": map}).to_string();
            let i = IndexFile::parse(json.as_bytes()).unwrap();
            let got: Vec<&str> = i.weight_map.iter().map(|(t, _)| t.as_str()).collect();
            let want: Vec<&str> = names.iter().map(String::as_str).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }
}
