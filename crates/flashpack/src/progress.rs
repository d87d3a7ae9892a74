//! A byte-counting progress bar on stderr for long packs and loads.
use indicatif::{ProgressBar, ProgressStyle};

/// Bars appear only for work at least this large, so small loads stay quiet.
const MIN_BYTES: u64 = 64 << 20;

/// A bar for `total` bytes, or `None` when progress is off or the work is small.
pub(crate) fn progress_bar(enabled: bool, total: u64, what: &str) -> Option<ProgressBar> {
    if !enabled || total < MIN_BYTES {
        return None;
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    Some(bar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_only_for_large_work_when_enabled() {
        assert!(progress_bar(true, MIN_BYTES, "loading").is_some());
        assert!(progress_bar(true, MIN_BYTES - 1, "loading").is_none());
        assert!(progress_bar(false, 1 << 40, "loading").is_none());
        let bar = progress_bar(true, 1 << 30, "packing").unwrap();
        bar.inc(1 << 20);
        assert_eq!(bar.position(), 1 << 20);
        assert_eq!(bar.length(), Some(1 << 30));
    }
}
