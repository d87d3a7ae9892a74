//! Text helpers for the command's output: grouped numbers, shapes and aligned tables.
//!
//! ```text
//! grouped(1234567)         -> "1,234,567"
//! shape_text(&[2, 3])      -> "2x3"     (and "scalar" for [])
//! ```

/// `n` with thousands separators.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A size as `5GB` (decimal units, as transformers reads `max_shard_size`), `500MiB` (binary
/// units) or plain bytes; at least one byte.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit '{other}' (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)"
            ))
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size such as 5GB, 500MiB or 1000000"))?;
    let bytes = value * scale as f64;
    if !(1.0..=u64::MAX as f64).contains(&bytes) {
        return Err(format!("'{text}' is not a size between 1 byte and 16 EiB"));
    }
    Ok(bytes as u64)
}

/// A shape as `2x3`, or `scalar` for a 0-dim tensor.
pub fn shape_text(shape: &[u64]) -> String {
    if shape.is_empty() {
        return "scalar".into();
    }
    shape
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join("x")
}

/// Rows under a header, columns separated by two spaces; the first column is left-aligned,
/// the others right-aligned. A row with fewer cells than the header is a note: its label, then
/// its other cells as free text across the number columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let full = |r: &Vec<String>| r.len() >= cols;
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        let cells = if full(r) { cols } else { 1 };
        for (w, c) in widths.iter_mut().zip(r).take(cells) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        cells
            .iter()
            .enumerate()
            .take(cols)
            .map(|(i, c)| {
                if i == 0 {
                    format!("{c:<w$}", w = widths[i])
                } else {
                    format!("{c:>w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(header)];
    out.push(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("  "),
    );
    for r in rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        if full(r) {
            out.push(line(&cells));
        } else {
            let label = cells.first().copied().unwrap_or("");
            let note = cells.get(1..).unwrap_or(&[]).join("  ");
            out.push(
                format!("{label:<w$}  {note}", w = widths[0])
                    .trim_end()
                    .to_string(),
            );
        }
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_transformers_max_shard_size() {
        assert_eq!(parse_size("5GB"), Ok(5_000_000_000));
        assert_eq!(parse_size("500MiB"), Ok(500 << 20));
        assert_eq!(parse_size("1.5kb"), Ok(1500));
        assert_eq!(parse_size("123"), Ok(123));
        for bad in ["", "GB", "5XB", "0", "-1GB", "1e30TB", "1.2.3MB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numbers_shapes_tables() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1234567), "1,234,567");
        assert_eq!(shape_text(&[]), "scalar");
        assert_eq!(shape_text(&[2, 3]), "2x3");
        let t = table(
            &["a", "bb"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into()],
                vec!["r".into(), "s".into(), "t".into()],
            ],
        );
        assert_eq!(t, "a    bb\n---  --\nxyz   1\nq\nr     s");
        let t = table(
            &["a", "bb", "c"],
            &[vec!["x".into(), "skipped: why".into()]],
        );
        assert_eq!(t, "a  bb  c\n-  --  -\nx  skipped: why");
    }
}
