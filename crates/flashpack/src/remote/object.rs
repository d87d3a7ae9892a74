//! One remote object, pinned at open: its size and ETag are recorded, every later ranged GET
//! asks for that ETag (`If-Match`) and checks the size and ETag the server reports, so an
//! object replaced during a load is an error, never a mix of two versions.
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

use super::store::{open_store, runtime};
use super::url::RemoteUrl;
use super::{RemoteError, RemoteSettings};
use crate::{Error, Result};

/// An open remote object (see the module documentation).
#[derive(Debug)]
pub struct RemoteFile {
    url: RemoteUrl,
    store: Arc<dyn ObjectStore>,
    path: object_store::path::Path,
    size: u64,
    etag: Option<String>,
    settings: RemoteSettings,
}

impl RemoteFile {
    /// Opens `url` with the settings from the environment.
    pub fn open(url: &str) -> Result<RemoteFile> {
        Self::open_with(url, RemoteSettings::from_env()?)
    }

    /// Opens `url`: one HEAD request, which pins the object's size and ETag.
    pub fn open_with(url: &str, settings: RemoteSettings) -> Result<RemoteFile> {
        let err = |e| Error::remote(url, e);
        let parsed = RemoteUrl::parse(url).map_err(err)?;
        let (store, path) = open_store(&parsed, &settings).map_err(err)?;
        let rt = runtime().map_err(err)?;
        let head = rt
            .block_on(async {
                tokio::time::timeout(settings.timeout, store.head(&path))
                    .await
                    .map_err(|_| RemoteError::TimedOut(settings.timeout))?
                    .map_err(classify)
            })
            .map_err(err)?;
        Ok(RemoteFile {
            url: parsed,
            store,
            path,
            size: head.size,
            etag: head.e_tag,
            settings,
        })
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url.url
    }

    /// The object's URL, parsed.
    pub fn parsed_url(&self) -> &RemoteUrl {
        &self.url
    }

    /// The object's size when it was opened.
    pub fn len(&self) -> u64 {
        self.size
    }

    /// True when the object has no bytes.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// The object's ETag when it was opened (every read asks for this version).
    pub fn etag(&self) -> Option<&str> {
        self.etag.as_deref()
    }

    /// The settings reads of it use.
    pub fn settings(&self) -> &RemoteSettings {
        &self.settings
    }

    /// An error about this object.
    pub(crate) fn error(&self, e: RemoteError) -> Error {
        Error::remote(self.url.url.clone(), e)
    }

    /// Reads object bytes `[offset, offset + dst.len())` into `dst` (one ranged GET, its retries
    /// resumed from the last byte received), by `deadline` at the latest.
    pub fn read_exact_at(&self, dst: &mut [u8], offset: u64) -> Result<()> {
        let deadline = Instant::now() + self.settings.timeout;
        self.read_until(dst, offset, deadline)
    }

    pub(crate) fn read_until(&self, dst: &mut [u8], offset: u64, deadline: Instant) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(dst.len() as u64)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| {
                self.error(RemoteError::Unusable(format!(
                    "bytes {offset}+{} lie past the object's end ({} bytes)",
                    dst.len(),
                    self.size
                )))
            })?;
        let rt = runtime().map_err(|e| self.error(e))?;
        let timeout = self.settings.timeout;
        rt.block_on(async {
            tokio::time::timeout_at(deadline.into(), self.fetch(offset..end, dst))
                .await
                .map_err(|_| RemoteError::TimedOut(timeout))?
        })
        .map_err(|e| self.error(e))
    }

    /// One ranged GET for the pinned version, its body streamed into `dst`.
    async fn fetch(
        &self,
        range: Range<u64>,
        dst: &mut [u8],
    ) -> std::result::Result<(), RemoteError> {
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            if_match: self.etag.clone(),
            ..Default::default()
        };
        let in_range = |e| match classify(e) {
            RemoteError::Failed { reason, source } => RemoteError::Failed {
                reason: format!("bytes {}..{}: {reason}", range.start, range.end),
                source,
            },
            other => other,
        };
        let got = self
            .store
            .get_opts(&self.path, opts)
            .await
            .map_err(in_range)?;
        if got.meta.size != self.size {
            return Err(RemoteError::Changed(format!(
                "it was {} bytes when opened, the server now says {}",
                self.size, got.meta.size
            )));
        }
        if let (Some(pinned), Some(now)) = (&self.etag, &got.meta.e_tag) {
            if pinned != now {
                return Err(RemoteError::Changed(format!(
                    "ETag {pinned} when opened, now {now}"
                )));
            }
        }
        if got.range != range {
            return Err(RemoteError::BadResponse(format!(
                "asked for bytes {}..{}, the server sent {}..{}",
                range.start, range.end, got.range.start, got.range.end
            )));
        }
        let mut filled = 0usize;
        let mut body = got.into_stream();
        while let Some(bytes) = body.next().await {
            let bytes = bytes.map_err(in_range)?;
            let slot = dst.get_mut(filled..filled + bytes.len()).ok_or_else(|| {
                RemoteError::BadResponse(format!(
                    "more than the {} bytes asked for at offset {}",
                    range.end - range.start,
                    range.start
                ))
            })?;
            slot.copy_from_slice(&bytes);
            filled += bytes.len();
        }
        if filled != dst.len() {
            return Err(RemoteError::BadResponse(format!(
                "the body of bytes {}..{} ended after {filled} bytes",
                range.start, range.end
            )));
        }
        Ok(())
    }
}

/// Our reading of the store's error (after its retries).
fn classify(e: object_store::Error) -> RemoteError {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => RemoteError::NotFound,
        E::PermissionDenied { source, .. } | E::Unauthenticated { source, .. } => {
            RemoteError::Denied {
                reason: chain(source.as_ref()),
                source: Some(source),
            }
        }
        E::Precondition { .. } => RemoteError::Changed(
            "the server no longer has the version (ETag) that was opened (412)".into(),
        ),
        E::Generic { source, .. } => RemoteError::Failed {
            reason: chain(source.as_ref()),
            source: Some(source),
        },
        other => RemoteError::Failed {
            reason: chain(&other),
            source: Some(Box::new(other)),
        },
    }
}

/// An error and its causes on one line ("a: b: c"), each said once.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        next = s.source();
    }
    out
}
