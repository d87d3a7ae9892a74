//! Settings the engine reads from the environment. Each is read once per process, when first
//! needed; changing the variable afterwards has no effect (use the explicit call instead, e.g.
//! [`PinnedPool::set_limit`](crate::sink::PinnedPool::set_limit)).
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `FLASHPACK_PINNED_POOL_BYTES` | bound on pinned staging memory for device loads | 1 GiB |
use crate::sink::DEFAULT_PINNED_LIMIT;
use crate::{Error, Result};

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
            .ok_or_else(|| {
                Error::Invalid(format!("{name}={v:?} is not a positive number of bytes"))
            }),
        Err(e) => Err(Error::Invalid(format!("{name}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::byte_count;

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
