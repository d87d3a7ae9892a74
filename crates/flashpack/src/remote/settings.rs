//! How remote reads behave: parallelism, part size, retries, back-off and time bounds. Read from the
//! environment by [`RemoteSettings::from_env`] (each call reads it afresh).
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `FLASHPACK_REMOTE_CONCURRENCY` | ranged GETs in flight per load | 16 |
//! | `FLASHPACK_REMOTE_PART_BYTES` | bytes per ranged GET | 16 MiB |
//! | `FLASHPACK_REMOTE_RETRIES` | retries of one request (5xx, reset, timeout) | 8 |
//! | `FLASHPACK_REMOTE_TIMEOUT_SECS` | bound on one whole open or load | 3600 |
//! | `FLASHPACK_REMOTE_REQUEST_TIMEOUT_SECS` | bound on one request (retried when hit) | 120 |
//! | `FLASHPACK_REMOTE_INITIAL_BACKOFF_MS` | first wait before a retry | 100 |
//! | `FLASHPACK_REMOTE_MAX_BACKOFF_MS` | longest wait before a retry | 5000 |
//!
//! ```
//! use flashpack::remote::RemoteSettings;
//! let s = RemoteSettings::default();
//! assert_eq!((s.concurrency, s.part_bytes), (16, 16 << 20));
//! ```
use std::time::Duration;

use crate::cancel::Cancel;
use crate::{Error, Result};

/// Remote read settings (see the module documentation for the variables and defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteSettings {
    /// Ranged GETs in flight at once (one load, all its files).
    pub concurrency: usize,
    /// Bytes per ranged GET (a part is also the unit of retry and of checksum checks, rounded
    /// up to whole checksum chunks when verifying).
    pub part_bytes: usize,
    /// Retries of one request after a 5xx, a reset connection or a timeout; each resumes from
    /// the last byte received, with exponential backoff.
    pub retries: usize,
    /// Bound on a whole open or load, retries included.
    pub timeout: Duration,
    /// Bound on one request (connect to last byte); a request that hits it is retried.
    pub request_timeout: Duration,
    /// Bound on connecting to the server.
    pub connect_timeout: Duration,
    /// First backoff between retries (each later one drawn at random up to twice the one
    /// before, at most `max_backoff`).
    pub initial_backoff: Duration,
    /// The longest wait between two retries.
    pub max_backoff: Duration,
    /// Stops every open and read of objects opened with these settings once cancelled (a
    /// Ctrl-C handler's): the requests in flight, their retries and back-off waits are dropped
    /// within 20 ms and the call returns [`Error::Cancelled`](crate::Error::Cancelled) naming the URL. A load
    /// also stops for its own [`LoadOptions::cancel`](crate::read::LoadOptions::cancel).
    pub cancel: Option<Cancel>,
}

/// How often a remote request in flight looks at its [`Cancel`]s.
#[cfg(feature = "remote")]
pub(crate) const CANCEL_POLL: Duration = Duration::from_millis(20);

impl Default for RemoteSettings {
    fn default() -> Self {
        RemoteSettings {
            concurrency: 16,
            part_bytes: 16 << 20,
            retries: 8,
            timeout: Duration::from_secs(3600),
            request_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            cancel: None,
        }
    }
}

impl RemoteSettings {
    /// The defaults, overridden by the `FLASHPACK_REMOTE_*` variables that are set; a variable
    /// that is not a positive whole number is an error naming it. No [`cancel`](Self::cancel).
    pub fn from_env() -> Result<RemoteSettings> {
        let d = RemoteSettings::default();
        // Clamped to a year, so a deadline of `Instant::now() + timeout` cannot overflow.
        const MAX_SECS: u64 = 365 * 24 * 3600;
        let secs = |name, default: Duration| -> Result<Duration> {
            Ok(number(name)?.map_or(default, |n| Duration::from_secs((n as u64).min(MAX_SECS))))
        };
        let millis = |name, default: Duration| -> Result<Duration> {
            Ok(number(name)?.map_or(default, |n| {
                Duration::from_millis((n as u64).min(MAX_SECS * 1000))
            }))
        };
        Ok(RemoteSettings {
            concurrency: number("FLASHPACK_REMOTE_CONCURRENCY")?.unwrap_or(d.concurrency),
            part_bytes: number("FLASHPACK_REMOTE_PART_BYTES")?.unwrap_or(d.part_bytes),
            retries: number("FLASHPACK_REMOTE_RETRIES")?.unwrap_or(d.retries),
            timeout: secs("FLASHPACK_REMOTE_TIMEOUT_SECS", d.timeout)?,
            request_timeout: secs("FLASHPACK_REMOTE_REQUEST_TIMEOUT_SECS", d.request_timeout)?,
            initial_backoff: millis("FLASHPACK_REMOTE_INITIAL_BACKOFF_MS", d.initial_backoff)?,
            max_backoff: millis("FLASHPACK_REMOTE_MAX_BACKOFF_MS", d.max_backoff)?,
            ..d
        })
    }

    /// These settings, stopped by `cancel` (see [`cancel`](Self::cancel)).
    pub fn with_cancel(self, cancel: Option<Cancel>) -> RemoteSettings {
        RemoteSettings { cancel, ..self }
    }
}

/// How a location (a local path, or a URL: see [`is_remote`](super::is_remote)) is opened:
/// what a URL's requests use. A local path ignores it.
#[derive(Clone, Debug, Default)]
pub struct LocationOptions {
    /// The remote settings; `None`: [`RemoteSettings::from_env`], read only for a URL.
    pub remote: Option<RemoteSettings>,
    /// Stops a URL's requests, their retries and back-off waits; when set, it replaces the
    /// settings' own [`cancel`](RemoteSettings::cancel).
    pub cancel: Option<Cancel>,
}

impl LocationOptions {
    /// Settings from the environment, stopped by `cancel`.
    pub fn cancelled_by(cancel: &Cancel) -> LocationOptions {
        LocationOptions {
            remote: None,
            cancel: Some(cancel.clone()),
        }
    }

    /// The settings a URL is opened with.
    #[cfg_attr(not(feature = "remote"), allow(dead_code))]
    pub(crate) fn settings(&self) -> Result<RemoteSettings> {
        let settings = match &self.remote {
            Some(s) => s.clone(),
            None => RemoteSettings::from_env()?,
        };
        Ok(match &self.cancel {
            Some(c) => settings.with_cancel(Some(c.clone())),
            None => settings,
        })
    }
}

fn number(name: &str) -> Result<Option<usize>> {
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .map(Some)
            .ok_or_else(|| Error::BadSetting {
                name: name.to_string(),
                value: Some(v.clone()),
                why: "is not a positive whole number".to_string(),
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
    use super::*;

    #[test]
    fn variables_override_defaults_or_say_what_is_wrong() {
        // Variables no other test sets.
        let name = "FLASHPACK_REMOTE_PART_BYTES";
        std::env::set_var(name, " 4096 ");
        assert_eq!(RemoteSettings::from_env().unwrap().part_bytes, 4096);
        for bad in ["abc", "0", "-3"] {
            std::env::set_var(name, bad);
            let e = RemoteSettings::from_env().unwrap_err().to_string();
            assert!(e.contains(name) && e.contains(bad), "{e}");
        }
        std::env::remove_var(name);
        // The back-off variables are milliseconds.
        std::env::set_var("FLASHPACK_REMOTE_INITIAL_BACKOFF_MS", "250");
        std::env::set_var("FLASHPACK_REMOTE_MAX_BACKOFF_MS", "30000");
        let s = RemoteSettings::from_env().unwrap();
        assert_eq!(s.initial_backoff, Duration::from_millis(250));
        assert_eq!(s.max_backoff, Duration::from_secs(30));
        std::env::remove_var("FLASHPACK_REMOTE_INITIAL_BACKOFF_MS");
        std::env::remove_var("FLASHPACK_REMOTE_MAX_BACKOFF_MS");
        assert_eq!(
            RemoteSettings::from_env().unwrap(),
            RemoteSettings::default()
        );
    }
}
