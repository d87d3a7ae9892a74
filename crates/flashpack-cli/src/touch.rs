//! The bench's "touch every byte" pass: a wrapping sum of each tensor's bytes read as
//! little-endian u64 words (bytes past the last whole word added one by one), summed over the
//! tensors with one thread per core. Every loader's tensors give the same value when they hold
//! the same bytes, so the sum doubles as a check that the rows loaded the same data.
//!
//! ```text
//! byte_sum(&[1, 0, 0, 0, 0, 0, 0, 0, 5]) == 1 + 5
//! ```
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes per job of the parallel pass (a multiple of 8, so jobs split tensors on word bounds).
const PIECE_BYTES: usize = 8 << 20;

/// The checksum of one run of bytes.
pub fn byte_sum(data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(8);
    let mut acc = 0u64;
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        acc = acc.wrapping_add(u64::from_le_bytes(b));
    }
    words
        .remainder()
        .iter()
        .fold(acc, |a, &b| a.wrapping_add(u64::from(b)))
}

/// [`byte_sum`] of the little-endian bytes of `elems`, each `size` bytes wide (1, 2, 4 or 8)
/// with its bits given by `bits`, computed from the elements (no byte copy).
#[cfg_attr(not(feature = "candle"), allow(dead_code))] // used for candle's storage
pub fn elem_sum<T: Copy>(elems: &[T], size: usize, bits: impl Fn(T) -> u64) -> u64 {
    let per_word = (8 / size.clamp(1, 8)).max(1);
    let mut words = elems.chunks_exact(per_word);
    let mut acc = 0u64;
    for w in &mut words {
        let word = w
            .iter()
            .enumerate()
            .fold(0u64, |word, (i, &e)| word | (bits(e) << (8 * size * i)));
        acc = acc.wrapping_add(word);
    }
    for &e in words.remainder() {
        let b = bits(e);
        for k in 0..size {
            acc = acc.wrapping_add((b >> (8 * k)) & 0xff);
        }
    }
    acc
}

/// Jobs covering tensors of `(element count, element size)`: (tensor index, element range).
pub fn pieces(tensors: impl Iterator<Item = (usize, usize)>) -> Vec<(usize, Range<usize>)> {
    let mut jobs = Vec::new();
    for (i, (len, size)) in tensors.enumerate() {
        let step = (PIECE_BYTES / size.max(1)).max(1);
        let mut start = 0;
        while start < len {
            let end = (start + step).min(len);
            jobs.push((i, start..end));
            start = end;
        }
    }
    jobs
}

/// Runs `sum(tensor, range)` over `jobs` with one thread per core; the wrapping total.
pub fn parallel_sum<F>(jobs: &[(usize, Range<usize>)], sum: F) -> u64
where
    F: Fn(usize, Range<usize>) -> u64 + Sync,
{
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, jobs.len().max(1));
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut acc = 0u64;
                    while let Some((i, r)) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                        acc = acc.wrapping_add(sum(*i, r.clone()));
                    }
                    acc
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .fold(0u64, u64::wrapping_add)
    })
}

/// The checksum of several byte runs (tensors), in parallel.
pub fn sum_all(tensors: &[&[u8]]) -> u64 {
    let jobs = pieces(tensors.iter().map(|t| (t.len(), 1)));
    parallel_sum(&jobs, |i, r| byte_sum(&tensors[i][r]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_sums_equal_byte_sums() {
        let data: Vec<u8> = (0..1003u32).map(|i| (i * 37 % 251) as u8).collect();
        let expect = byte_sum(&data);
        let f32s: Vec<f32> = data[..1000]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(
            elem_sum(&f32s, 4, |x| u64::from(x.to_bits())),
            byte_sum(&data[..1000])
        );
        let u16s: Vec<u16> = data[..1002]
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(elem_sum(&u16s, 2, u64::from), byte_sum(&data[..1002]));
        assert_eq!(elem_sum(&data, 1, u64::from), expect);
        let i64s: Vec<i64> = data[..1000]
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(elem_sum(&i64s, 8, |x| x as u64), byte_sum(&data[..1000]));
    }

    #[test]
    fn parallel_sum_matches_serial() {
        let big: Vec<u8> = (0..(PIECE_BYTES * 2 + 13))
            .map(|i| (i % 253) as u8)
            .collect();
        let small = [1u8, 2, 3];
        let expect = byte_sum(&big).wrapping_add(byte_sum(&small));
        assert_eq!(sum_all(&[&big, &small]), expect);
        assert_eq!(pieces([(0usize, 4usize)].into_iter()).len(), 0);
    }
}
