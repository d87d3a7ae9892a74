//! Remote sources: weight files read straight from `http://`, `https://`, `s3://bucket/key` and
//! `hf://org/repo[@revision]/path` (a Hugging Face Hub file)
//! into memory, with no copy on local disk.
//!
//! An object is pinned when it is opened (`RemoteFile`, built with the `remote` feature: its size
//! and what the server offers to tell versions apart: a strong ETag asked for with `If-Match`,
//! else its Last-Modified asked for with `If-Unmodified-Since`; every response's size and
//! validators are compared with the pinned ones, so a replaced object is an error, never a mix
//! of versions; `VersionPin` says what one-second time stamps and servers without validators
//! leave open). A [`Cancel`](crate::cancel::Cancel) (in [`RemoteSettings::cancel`] or a load's
//! options) drops the requests in flight, their retries and back-off waits within 20 ms. A weight file's index comes from small ranged GETs only (a
//! FlashPack trailer and footer, a safetensors header: what `inspect` needs), its tensors from
//! parallel ranged GETs ([`RemoteSettings`]: concurrency, part size, retries, time bounds) into
//! the same sinks local reads fill. Retries with backoff on 5xx answers, resets and timeouts
//! resume from the last byte received; FlashPack checksums are checked part by part as they
//! arrive. S3 uses the AWS credential chain and `AWS_ENDPOINT_URL` for S3-compatible stores.
//! Every failure is an [`Error::Remote`](crate::Error::Remote) naming the URL and the problem.
//!
//! The async runtime doing the requests stays inside the engine: every call here blocks.
//! Without the `remote` cargo feature only URL recognition is built, and opening a URL is
//! [`RemoteError::NotBuilt`].
//!
//! An object is opened as a [`Source`](crate::source::Source) like a local file, and its index
//! read by the same code ([`crate::source`]). A remote weight file is a
//! [`WeightFile`](crate::weights::WeightFile) like a local one
//! ([`WeightFile::open_location`](crate::weights::WeightFile::open_location) takes a URL or a
//! path), and its tensors go through the engine's reader pool and job planner
//! ([`crate::read::job`]) like a local file's, alone or mixed with local files.
//!
//! ```no_run
//! # #[cfg(feature = "remote")] {
//! use flashpack::{read::LoadOptions, weights::WeightFile};
//! let file = WeightFile::open_location("https://example.com/model.safetensors").unwrap();
//! println!("{} tensors", file.tensors().len()); // only the header was fetched
//! let weights = file.load(&LoadOptions::default()).unwrap(); // always eager for a URL
//! let w = weights.get("w").unwrap();
//! # }
//! ```
mod settings;
mod url;

#[cfg(feature = "remote")]
mod object;
#[cfg(feature = "remote")]
mod store;

pub use crate::error::remote::RemoteError;
#[cfg(feature = "remote")]
pub use object::{RemoteFile, VersionPin};
pub use settings::{LocationOptions, RemoteSettings};
pub use url::is_remote;
pub(crate) use url::url_of;
#[cfg(feature = "remote")]
pub(crate) use url::RemoteUrl;
