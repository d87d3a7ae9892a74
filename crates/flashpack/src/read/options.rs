//! How to load ([`LoadOptions`]) and what a load did ([`LoadReport`]).
use std::time::Duration;

use crate::cancel::Cancel;
use crate::settings::IoMode;

/// Default eager chunk size.
pub const DEFAULT_READ_CHUNK_BYTES: usize = 16 << 20;

/// How to load.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Fill owned memory now (true) or map the file copy-on-write (false).
    pub eager: bool,
    /// How the eager reader reads.
    pub io: IoMode,
    /// Reader threads (0 = chosen from the core count and the I/O mode).
    pub threads: usize,
    /// Bytes each reader thread reads at a time.
    pub chunk_bytes: usize,
    /// Show a progress bar on stderr for large loads.
    pub progress: bool,
    /// Ask for transparent huge pages on eager host memory (on Linux, for buffers of 2 MiB and more).
    pub huge_pages: bool,
    /// Check every payload chunk against the footer's checksums as it is loaded (an error if
    /// the file has none). Reads then go in the checksum chunks' size.
    pub verify: bool,
    /// Checked between chunks: once cancelled, the load stops its threads and returns
    /// [`Error::Cancelled`](crate::Error::Cancelled).
    pub cancel: Option<Cancel>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            eager: false,
            io: IoMode::Auto,
            threads: 0,
            chunk_bytes: DEFAULT_READ_CHUNK_BYTES,
            progress: false,
            huge_pages: false,
            verify: false,
            cancel: None,
        }
    }
}

/// What a load did.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Each phase and how long it took, in order.
    pub phases: Vec<(&'static str, Duration)>,
    /// Reader threads used (0 for a lazy load).
    pub threads: usize,
    /// Bytes read each way.
    pub io: IoCounts,
}

/// Bytes moved each way, for reports and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoCounts {
    /// Bytes read with `O_DIRECT`.
    pub direct_bytes: u64,
    /// Bytes read through the page cache.
    pub buffered_bytes: u64,
    /// Bytes the OS was asked to read ahead into the page cache (0 where it has no such hint).
    pub prefetched_bytes: u64,
    /// Bytes fetched from remote objects (ranged GETs).
    pub remote_bytes: u64,
}
