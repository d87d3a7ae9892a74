//! The load of one FlashPack file into host memory ([`super::load`]): a plan of one piece, its
//! whole payload, run by the job runner ([`super::job`]) as a private copy-on-write mapping
//! (lazy) or read straight into the final owned buffer (eager).
use std::time::{Duration, Instant};

use super::job::{self, JobPlan, Piece};
use super::loaded::{Loaded, Memory};
use super::options::{LoadOptions, LoadReport};
use super::FlashFile;
use crate::sink::HostBuffer;
use crate::{Error, Result};

/// [`super::load`]'s body: the payload mapped (lazy) or read into owned memory (eager),
/// checked against the checksums when `opts.verify` asks.
pub(super) fn load_file(f: FlashFile, opts: &LoadOptions, open_time: Duration) -> Result<Loaded> {
    let mut report = LoadReport {
        phases: vec![("read_metadata", open_time)],
        ..Default::default()
    };
    let payload_len = usize::try_from(f.payload_len).map_err(|_| {
        Error::Unsupported(format!(
            "{}: payload too large for this platform",
            f.path.display()
        ))
    })?;
    let memory = if opts.eager {
        let whole = [Piece {
            file: 0,
            start: 0,
            end: f.payload_len,
        }];
        // Exact: job memory is the payload, so the reader fills the final buffer in place.
        let plan = JobPlan::exact(&[&f], &whole, opts.verify)?;
        let t = Instant::now();
        let mut buf = HostBuffer::with_pages(payload_len, opts.huge_pages)?;
        report.phases.push(("alloc_cpu", t.elapsed()));
        let r = job::read_into(&[&f], &plan, buf.as_mut_slice(), opts)?;
        report.threads = r.threads;
        report.io = r.io;
        report.phases.extend(r.phases);
        Memory::Owned(buf)
    } else {
        let (map, r) = job::map_private(&f, opts.verify, opts)?;
        report.phases.extend(r.phases);
        Memory::Mapped(map)
    };
    Ok(Loaded {
        path: f.path,
        footer: f.footer,
        footer_json: f.footer_json,
        report,
        payload_len,
        memory,
    })
}
