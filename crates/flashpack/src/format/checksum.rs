//! Payload checksums: one 64-bit XXH3 digest per fixed-size chunk of the payload, stored under
//! the footer key `"checksums"` (which the original package ignores, so it still reads the file).
//!
//! ```json
//! "checksums": {"algorithm": "xxh3-64", "chunk_bytes": 16777216, "digests": ["9f86d081884c7d65", ...]}
//! ```
//!
//! Chunk `k` covers payload bytes `[k * chunk_bytes, min((k + 1) * chunk_bytes, payload_len))`,
//! padding included. Digests are 16 lowercase hex digits (JSON numbers lose precision above
//! 2^53 in many readers).
//!
//! ```
//! use flashpack::format::Checksums;
//! let payload = vec![7u8; 10_000];
//! let c = Checksums::compute(&payload, 4096);
//! assert_eq!(c.digests.len(), 3);
//! assert_eq!(c.first_mismatch(0, &payload[..4096]), None);
//! assert!(c.check_chunk(1, &payload[..4096]).is_ok());
//! assert!(c.check_chunk(2, &payload[..16]).is_err()); // the last chunk is 1808 bytes, not 16
//! ```
use serde_json::{json, Map, Value};

use super::FormatError;

/// The footer key.
pub const CHECKSUMS_KEY: &str = "checksums";
/// The only algorithm written (and verified) so far.
pub const XXH3_64: &str = "xxh3-64";
/// Chunk size written by default. Small enough that a bad chunk usually lies inside one tensor
/// (so the error can name it), large enough to keep the footer small: 4 MiB is ~19 bytes of
/// JSON per 4 MiB of payload (about 5 KB per GB). Reads go in multiples of it.
pub const DEFAULT_CHECKSUM_CHUNK: u64 = 4 << 20;
/// Checksum chunks are multiples of this, so every chunk but the last can be read with `O_DIRECT`.
pub const CHECKSUM_CHUNK_ALIGN: u64 = 4096;

/// Per-chunk payload digests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checksums {
    /// The digest algorithm (only `"xxh3-64"` is verified).
    pub algorithm: String,
    /// Payload bytes per digest (the last chunk may be shorter).
    pub chunk_bytes: u64,
    /// One digest per chunk, in payload order.
    pub digests: Vec<u64>,
}

/// The digest of one chunk.
pub fn digest(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// An incremental digest, for chunks assembled from several pieces.
pub struct Hasher(xxhash_rust::xxh3::Xxh3);

impl Default for Hasher {
    fn default() -> Self {
        Hasher(xxhash_rust::xxh3::Xxh3::new())
    }
}

impl Hasher {
    /// Feeds the next bytes of the chunk.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// Feeds `n` zero bytes (alignment padding).
    pub fn update_zeros(&mut self, mut n: u64) {
        const ZEROS: [u8; 4096] = [0; 4096];
        while n > 0 {
            let k = n.min(ZEROS.len() as u64) as usize;
            self.0.update(&ZEROS[..k]);
            n -= k as u64;
        }
    }

    /// The digest of everything fed so far.
    pub fn finish(&self) -> u64 {
        self.0.digest()
    }
}

impl Checksums {
    /// Digests of a whole payload held in memory.
    pub fn compute(payload: &[u8], chunk_bytes: u64) -> Checksums {
        let step = usize::try_from(chunk_bytes.max(1)).unwrap_or(usize::MAX);
        Checksums {
            algorithm: XXH3_64.into(),
            chunk_bytes,
            digests: payload.chunks(step).map(digest).collect(),
        }
    }

    /// Number of chunks a payload of `payload_len` bytes has.
    pub fn chunk_count(payload_len: u64, chunk_bytes: u64) -> u64 {
        payload_len.div_ceil(chunk_bytes.max(1))
    }

    /// Payload byte range of chunk `k`.
    pub fn chunk_range(&self, k: u64, payload_len: u64) -> (u64, u64) {
        let start = k.saturating_mul(self.chunk_bytes).min(payload_len);
        (
            start,
            start.saturating_add(self.chunk_bytes).min(payload_len),
        )
    }

    /// True when this build can verify the digests.
    pub fn is_supported(&self) -> bool {
        self.algorithm == XXH3_64
    }

    /// Checks the bytes of chunk `k` (its exact length included).
    pub fn check_chunk(&self, k: u64, bytes: &[u8]) -> Result<(), ChunkMismatch> {
        let want = self.digests.get(k as usize).copied();
        let got = digest(bytes);
        if want == Some(got) {
            Ok(())
        } else {
            Err(ChunkMismatch {
                chunk: k,
                expected: want,
                actual: got,
            })
        }
    }

    /// The first chunk in `bytes` (payload bytes starting at chunk `first`) whose digest differs.
    pub fn first_mismatch(&self, first: u64, bytes: &[u8]) -> Option<ChunkMismatch> {
        let step = usize::try_from(self.chunk_bytes.max(1)).unwrap_or(usize::MAX);
        bytes
            .chunks(step)
            .enumerate()
            .find_map(|(i, c)| self.check_chunk(first + i as u64, c).err())
    }

    /// The JSON value stored under [`CHECKSUMS_KEY`].
    pub fn to_json(&self) -> Value {
        let digests: Vec<String> = self.digests.iter().map(|d| format!("{d:016x}")).collect();
        json!({"algorithm": self.algorithm, "chunk_bytes": self.chunk_bytes, "digests": digests})
    }

    /// Parses and checks the stored value against a payload of `payload_len` bytes. Unknown
    /// algorithms parse (the file stays loadable; only verification refuses them).
    pub fn from_json(value: &Value, payload_len: u64) -> Result<Checksums, FormatError> {
        let bad = |why: String| FormatError::Inconsistent(format!("\"checksums\": {why}"));
        let Value::Object(map) = value else {
            return Err(bad("is not a JSON object".into()));
        };
        let field = |k: &str| map.get(k).ok_or_else(|| bad(format!("missing {k:?}")));
        let algorithm = field("algorithm")?
            .as_str()
            .ok_or_else(|| bad("\"algorithm\" is not a string".into()))?
            .to_string();
        let chunk_bytes = field("chunk_bytes")?
            .as_u64()
            .filter(|&c| c > 0 && c % CHECKSUM_CHUNK_ALIGN == 0)
            .ok_or_else(|| {
                bad(format!(
                    "\"chunk_bytes\" must be a positive multiple of {CHECKSUM_CHUNK_ALIGN}"
                ))
            })?;
        let Value::Array(items) = field("digests")? else {
            return Err(bad("\"digests\" is not a list".into()));
        };
        let want = Self::chunk_count(payload_len, chunk_bytes);
        if items.len() as u64 != want {
            return Err(bad(format!(
                "{} digests for a {payload_len}-byte payload in {chunk_bytes}-byte chunks (expected {want})",
                items.len()
            )));
        }
        let digests = items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .filter(|s| s.len() == 16)
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                    .ok_or_else(|| bad(format!("digest {i} is not 16 hex digits: {v}")))
            })
            .collect::<Result<Vec<u64>, _>>()?;
        Ok(Checksums {
            algorithm,
            chunk_bytes,
            digests,
        })
    }

    /// Takes the checksums out of a footer's extra keys (if any), validated.
    pub fn take_from(
        extra: &mut Map<String, Value>,
        payload_len: u64,
    ) -> Result<Option<Checksums>, FormatError> {
        match extra.remove(CHECKSUMS_KEY) {
            None => Ok(None),
            Some(v) => Self::from_json(&v, payload_len).map(Some),
        }
    }
}

/// A chunk whose bytes do not match its stored digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkMismatch {
    /// Index of the chunk.
    pub chunk: u64,
    /// The stored digest (`None` when the footer has no digest for this chunk).
    pub expected: Option<u64>,
    /// The digest of the bytes read.
    pub actual: u64,
}
