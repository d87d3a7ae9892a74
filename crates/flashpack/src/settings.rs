//! Settings the engine reads from the environment, and the reader policy: how the eager reader
//! talks to the disk. Each variable is read once per process, when first needed; changing the
//! variable afterwards has no effect (use the explicit call instead, e.g.
//! [`PinnedPool::set_limit`](crate::sink::PinnedPool::set_limit)).
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `FLASHPACK_PINNED_POOL_BYTES` | bound on pinned staging memory for device loads | 1 GiB |
//!
//! The reader policy ([`read_plan`]) is chosen per load from [`LoadOptions`](crate::read::LoadOptions)
//! (`io`, `threads`) and the file's page-cache residency; the Python package maps
//! `FLASHPACK_DIRECT_IO=0`, `FLASHPACK_READ_THREADS` and `FLASHPACK_READ_CHUNK_BYTES` onto those.
use crate::{Error, Result};

/// Share of the payload that must be in the page cache for it to count as hot (plain buffered reads).
pub(crate) const HOT_FRACTION: f64 = 0.9;
/// How the eager reader talks to the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IoMode {
    /// `O_DIRECT` unless the payload is mostly in the page cache (the policy and its
    /// measurements: the crate's settings).
    #[default]
    Auto,
    /// `O_DIRECT` wherever the filesystem allows it.
    Direct,
    /// Always through the page cache (asking the OS to read ahead when the data is cold).
    Buffered,
}

/// Default bound on pinned staging memory: 1 GiB.
pub const DEFAULT_PINNED_LIMIT: usize = 1 << 30;

/// How much of a file's data the page cache holds, as far as the OS can say.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Residency {
    /// Fraction (0..=1) of the data in the page cache.
    Fraction(f64),
    /// The OS has no such query (Windows).
    Unsupported,
    /// The query failed.
    Unknown,
}

/// How the eager reader reads one load's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReadPlan {
    /// Read through a direct handle (`O_DIRECT` and its kin) where the filesystem allows it.
    pub direct: bool,
    /// Buffered reads from a cold file: ask the OS to read ahead (sequential advice on the file,
    /// and each thread asks for the chunk its peers will want next, see `read::pool`).
    pub readahead: bool,
    /// Reader threads.
    pub threads: usize,
}

/// Cold data is read direct (`O_DIRECT`, `F_NOCACHE`) under `IoMode::Auto`. Measured on the
/// 2-core Firecracker VM (virtio disk, `max_segments` 254, 2 GiB, cold; other builds kept the load
/// average at 4-10, so each comparison is within one run):
/// - raw reads into reused buffers: `O_DIRECT` into 4 KiB pages reaches the device as ~0.6-1.3 MiB
///   requests and reads at 0.9-1.4 GB/s whether 4, 8, 16 or 32 reads are in flight; buffered reads
///   with sequential advice and one chunk asked ahead per thread send 2.5-4 MiB requests and read
///   at 1.4-2.1 GB/s. Queue depth is not what limits this disk; request size is.
/// - eager loads (fresh destination memory): buffered with readahead lost to `O_DIRECT` in 6 of 7
///   paired samples and tied the 7th (2 GiB, 4 shards, total: 6.2-8.9 s against 2.9-3.6 s, and
///   4.23 against 4.30 s; one file, load call: 3.0-4.6 s against 1.8-2.2 s), because the page cache copy is a second 2 GiB of fresh memory (each first
///   touch is a hypervisor fault on this VM) and a CPU copy the busy cores could not spare.
///
/// So buffered readahead is used only where reads are buffered anyway (`IoMode::Buffered`,
/// Python `FLASHPACK_DIRECT_IO=0`), on cold data.
const COLD_READS_DIRECT: bool = true;

/// The reader policy for a load: direct or buffered reads, readahead, thread count.
///
/// - `IoMode::Buffered` reads buffered; `IoMode::Direct` reads direct (falling back to buffered
///   where the filesystem refuses, see [`crate::os::open_direct`]).
/// - `IoMode::Auto` reads buffered when at least [`HOT_FRACTION`] of the data is in the page
///   cache or when the OS cannot tell (Windows); cold (or unknown) data is read direct (see
///   `COLD_READS_DIRECT` for the measurements).
/// - Readahead is asked for on buffered reads of data that is not hot.
/// - `threads` 0 chooses: reads that wait on the device (direct, or cold buffered) use the core
///   count clamped to 4..=16, so that a few reads are in flight even on 2 cores; hot buffered
///   reads, which are memory copies, use one thread per core (at most 16).
pub(crate) fn read_plan(
    io: IoMode,
    residency: Residency,
    threads: usize,
    cores: usize,
) -> ReadPlan {
    let hot = match residency {
        Residency::Fraction(r) => r >= HOT_FRACTION,
        Residency::Unsupported => true,
        Residency::Unknown => false,
    };
    let direct = match io {
        IoMode::Buffered => false,
        IoMode::Direct => true,
        IoMode::Auto => !hot && COLD_READS_DIRECT,
    };
    let waits_on_device = direct || !hot;
    let threads = match threads {
        0 if waits_on_device => cores.clamp(4, 16),
        0 => cores.clamp(1, 16),
        n => n,
    };
    ReadPlan {
        direct,
        readahead: !direct && !hot,
        threads,
    }
}

/// The pinned pool's limit: `FLASHPACK_PINNED_POOL_BYTES`, or [`DEFAULT_PINNED_LIMIT`] when unset.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn pinned_pool_bytes() -> Result<usize> {
    byte_count("FLASHPACK_PINNED_POOL_BYTES", DEFAULT_PINNED_LIMIT)
}

fn byte_count(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => Ok(default),
        Ok(v) if v.trim().is_empty() => Ok(default),
        Ok(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| Error::BadSetting {
                name: name.to_string(),
                value: Some(v.clone()),
                why: "is not a positive number of bytes".to_string(),
            }),
        Err(e) => Err(Error::BadSetting {
            name: name.to_string(),
            value: None,
            why: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::IoMode;
    use super::{byte_count, read_plan, ReadPlan, Residency};

    fn plan(direct: bool, readahead: bool, threads: usize) -> ReadPlan {
        ReadPlan {
            direct,
            readahead,
            threads,
        }
    }

    #[test]
    fn auto_reads_hot_data_buffered_with_a_thread_per_core() {
        for r in [
            Residency::Fraction(1.0),
            Residency::Fraction(0.9),
            Residency::Unsupported,
        ] {
            assert_eq!(
                read_plan(IoMode::Auto, r, 0, 2),
                plan(false, false, 2),
                "{r:?}"
            );
            assert_eq!(
                read_plan(IoMode::Auto, r, 0, 64),
                plan(false, false, 16),
                "{r:?}"
            );
            assert_eq!(
                read_plan(IoMode::Auto, r, 0, 0),
                plan(false, false, 1),
                "{r:?}"
            );
        }
    }

    #[test]
    fn auto_reads_cold_data_direct_with_at_least_four_threads() {
        for r in [
            Residency::Fraction(0.0),
            Residency::Fraction(0.89),
            Residency::Unknown,
        ] {
            assert_eq!(
                read_plan(IoMode::Auto, r, 0, 2),
                plan(true, false, 4),
                "{r:?}"
            );
            assert_eq!(read_plan(IoMode::Auto, r, 0, 32).threads, 16, "{r:?}");
        }
    }

    #[test]
    fn explicit_modes_and_thread_counts_win() {
        let cold = Residency::Fraction(0.0);
        let hot = Residency::Fraction(1.0);
        assert_eq!(read_plan(IoMode::Direct, hot, 0, 2), plan(true, false, 4));
        assert_eq!(read_plan(IoMode::Direct, cold, 0, 8), plan(true, false, 8));
        assert_eq!(
            read_plan(IoMode::Buffered, cold, 0, 2),
            plan(false, true, 4)
        );
        assert_eq!(
            read_plan(IoMode::Buffered, hot, 0, 2),
            plan(false, false, 2)
        );
        for io in [IoMode::Auto, IoMode::Direct, IoMode::Buffered] {
            for r in [cold, hot, Residency::Unknown, Residency::Unsupported] {
                assert_eq!(read_plan(io, r, 3, 2).threads, 3, "{io:?} {r:?}");
            }
        }
    }

    #[test]
    fn byte_counts_parse_or_say_what_is_wrong() {
        // A variable no other test sets.
        let name = "FLASHPACK_TEST_SETTINGS_BYTES";
        std::env::remove_var(name);
        assert_eq!(byte_count(name, 7).unwrap(), 7);
        std::env::set_var(name, " 4096 ");
        assert_eq!(byte_count(name, 7).unwrap(), 4096);
        for bad in ["abc", "-1", "0", "1.5"] {
            std::env::set_var(name, bad);
            let err = byte_count(name, 7).unwrap_err().to_string();
            assert!(err.contains(name) && err.contains(bad), "{err}");
        }
        std::env::remove_var(name);
    }
}
