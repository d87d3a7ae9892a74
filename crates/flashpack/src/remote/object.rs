//! One remote object, pinned at open by what its server offers to tell versions apart, so that
//! an object replaced during a load is an error, never a mix of two versions:
//!
//! - a strong ETag: every later ranged GET asks for it (`If-Match`, a replaced object is a 412);
//! - else a Last-Modified (and a weak ETag `W/"..."`, which `If-Match` cannot use): every GET
//!   sends `If-Unmodified-Since`, and every response's Last-Modified and ETag are compared with
//!   the pinned ones (Last-Modified has one-second resolution: a replacement within the same
//!   second as the original's time stamp is invisible to it);
//! - else nothing: [`VersionPin::None`], which the loads of a weight file warn about.
//!
//! Every response's total size is checked against the pinned size, and its validators against
//! the pinned ones, whatever the pin. Each request, its retries and their back-off waits run
//! until done, the deadline, or a [`Cancel`] (the settings' or the load's) is set: then the
//! request in flight is dropped (its connection closed) within [`CANCEL_POLL`], and no retry
//! starts.
use std::future::Future;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{select, Either};
use futures_util::StreamExt;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt};

use super::settings::CANCEL_POLL;
use super::store::{open_store, runtime};
use super::url::RemoteUrl;
use super::{RemoteError, RemoteSettings};
use crate::cancel::Cancel;
use crate::{Error, Result};

/// How an object's version is pinned (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionPin {
    /// A strong ETag, asked for with `If-Match` on every read.
    ETag,
    /// A Last-Modified (`If-Unmodified-Since` on every read) and/or a weak ETag, compared on
    /// every response: a replacement within the same second as the pinned Last-Modified, with
    /// no ETag that changes, goes unseen.
    Weak,
    /// The server offers no validator: a replacement of the same size goes unseen.
    None,
}

/// An open remote object (see the module documentation).
#[derive(Debug)]
pub struct RemoteFile {
    url: RemoteUrl,
    store: Arc<dyn ObjectStore>,
    path: object_store::path::Path,
    size: u64,
    /// What the server said at open (its validators: ETag, Last-Modified).
    pinned: ObjectMeta,
    settings: RemoteSettings,
}

/// Runs `work` on the engine's runtime until it ends, `deadline` passes ([`RemoteError::TimedOut`]
/// of `timeout`), or one of `cancels` is set ([`Error::Cancelled`] for `url`): then `work`, with
/// its request, retries and back-off waits, is dropped. Nothing starts once a cancel is set.
fn run_until<T>(
    url: &str,
    deadline: Instant,
    timeout: Duration,
    cancels: [Option<&Cancel>; 2],
    work: impl Future<Output = std::result::Result<T, RemoteError>>,
) -> Result<T> {
    let cancelled = || cancels.iter().flatten().any(|c| c.is_cancelled());
    let stopped = || Error::Cancelled {
        path: PathBuf::from(url),
    };
    if cancelled() {
        return Err(stopped());
    }
    let rt = runtime().map_err(|e| Error::remote(url, e))?;
    let watching = cancels.iter().any(Option::is_some);
    let out = rt.block_on(async {
        let stop = std::pin::pin!(async {
            if !watching {
                return std::future::pending().await;
            }
            while !cancelled() {
                tokio::time::sleep(CANCEL_POLL).await;
            }
        });
        let work = std::pin::pin!(tokio::time::timeout_at(deadline.into(), work));
        // The stop first: once cancelled, `work` is not polled again.
        match select(stop, work).await {
            Either::Left(_) => None,
            Either::Right((Ok(done), _)) => Some(done),
            Either::Right((Err(_elapsed), _)) => Some(Err(RemoteError::TimedOut(timeout))),
        }
    });
    match out {
        None => Err(stopped()),
        Some(r) => r.map_err(|e| Error::remote(url, e)),
    }
}

/// An optional validator for messages.
fn shown(v: Option<impl std::fmt::Display>) -> String {
    v.map_or_else(|| "none".to_string(), |v| v.to_string())
}

impl RemoteFile {
    /// Opens `url` with the settings from the environment.
    pub fn open(url: &str) -> Result<RemoteFile> {
        Self::open_with(url, RemoteSettings::from_env()?)
    }

    /// Opens `url`: one HEAD request, which pins the object's size and validators (ETag,
    /// Last-Modified). `settings.cancel` stops it (and every later read) at once.
    pub fn open_with(url: &str, settings: RemoteSettings) -> Result<RemoteFile> {
        let err = |e| Error::remote(url, e);
        let parsed = RemoteUrl::parse(url).map_err(err)?;
        let (store, path) = open_store(&parsed, &settings).map_err(err)?;
        let deadline = Instant::now() + settings.timeout;
        let cancels = [settings.cancel.as_ref(), None];
        let head = run_until(url, deadline, settings.timeout, cancels, async {
            store.head(&path).await.map_err(classify)
        })?;
        Ok(RemoteFile {
            url: parsed,
            store,
            path,
            size: head.size,
            pinned: head,
            settings,
        })
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url.url
    }

    /// The object's size when it was opened.
    pub fn len(&self) -> u64 {
        self.size
    }

    /// True when the object has no bytes.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// The object's ETag when it was opened (every read checks it; a strong one is asked for).
    pub fn etag(&self) -> Option<&str> {
        self.pinned.e_tag.as_deref()
    }

    /// The object's Last-Modified when it was opened (RFC 2822), if the server sent one.
    pub fn last_modified(&self) -> Option<String> {
        self.pinned_time().map(|t| t.to_rfc2822())
    }

    /// How the version read is pinned (see the module documentation).
    pub fn version_pin(&self) -> VersionPin {
        match (
            self.strong_etag(),
            self.pinned.e_tag.is_some(),
            self.pinned_time(),
        ) {
            (Some(_), _, _) => VersionPin::ETag,
            (None, true, _) | (None, false, Some(_)) => VersionPin::Weak,
            (None, false, None) => VersionPin::None,
        }
    }

    /// The pinned ETag when it is a strong one (`If-Match` takes only those).
    fn strong_etag(&self) -> Option<&str> {
        self.etag().filter(|e| !e.starts_with("W/"))
    }

    /// The pinned Last-Modified (the store reports a missing one as the epoch).
    fn pinned_time(&self) -> Option<&chrono::DateTime<chrono::Utc>> {
        Some(&self.pinned.last_modified).filter(|t| t.timestamp() != 0)
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
    /// resumed from the last byte received) within the settings' timeout; the settings' cancel
    /// stops it.
    pub fn read_exact_at(&self, dst: &mut [u8], offset: u64) -> Result<()> {
        let deadline = Instant::now() + self.settings.timeout;
        self.read_until(dst, offset, deadline, None)
    }

    /// As [`read_exact_at`](Self::read_exact_at), by `deadline` at the latest, stopped by
    /// `cancel` (a load's) as well as by the settings' cancel.
    pub(crate) fn read_until(
        &self,
        dst: &mut [u8],
        offset: u64,
        deadline: Instant,
        cancel: Option<&Cancel>,
    ) -> Result<()> {
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
        let cancels = [self.settings.cancel.as_ref(), cancel];
        let fetch = self.fetch(offset..end, dst);
        run_until(self.url(), deadline, self.settings.timeout, cancels, fetch)
    }

    /// One HEAD: fails with [`RemoteError::Changed`] when the object is no longer the pinned
    /// version (its size or validators differ), within the settings' timeout and cancel.
    pub fn check_unchanged(&self) -> Result<()> {
        let deadline = Instant::now() + self.settings.timeout;
        let cancels = [self.settings.cancel.as_ref(), None];
        let head = run_until(
            self.url(),
            deadline,
            self.settings.timeout,
            cancels,
            async { self.store.head(&self.path).await.map_err(classify) },
        )?;
        self.check_version(&head).map_err(|e| self.error(e))
    }

    /// Refuses a response whose object is not the pinned version: another total size, another
    /// ETag (or one where there was none, or none where there was one), or, without a strong
    /// ETag, another Last-Modified.
    fn check_version(&self, now: &ObjectMeta) -> std::result::Result<(), RemoteError> {
        if now.size != self.size {
            return Err(RemoteError::Changed(format!(
                "it was {} bytes when opened, the server now says {}",
                self.size, now.size
            )));
        }
        if now.e_tag != self.pinned.e_tag {
            return Err(RemoteError::Changed(format!(
                "ETag {} when opened, now {}",
                shown(self.etag()),
                shown(now.e_tag.as_deref())
            )));
        }
        if self.strong_etag().is_none() && now.last_modified != self.pinned.last_modified {
            let at = |m: &ObjectMeta| {
                Some(m.last_modified)
                    .filter(|t| t.timestamp() != 0)
                    .map(|t| t.to_rfc2822())
            };
            return Err(RemoteError::Changed(format!(
                "Last-Modified {} when opened, now {}",
                shown(at(&self.pinned)),
                shown(at(now))
            )));
        }
        Ok(())
    }

    /// One ranged GET for the pinned version, its body streamed into `dst`.
    async fn fetch(
        &self,
        range: Range<u64>,
        dst: &mut [u8],
    ) -> std::result::Result<(), RemoteError> {
        // A strong ETag is asked for; else the pinned time (a weak ETag cannot be asked for:
        // `If-Match` compares strongly, so it would never match).
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            if_match: self.strong_etag().map(str::to_string),
            if_unmodified_since: match self.strong_etag() {
                Some(_) => None,
                None => self.pinned_time().copied(),
            },
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
        self.check_version(&got.meta)?;
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
            "the server no longer has the version (ETag or Last-Modified) that was opened (412)"
                .into(),
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
