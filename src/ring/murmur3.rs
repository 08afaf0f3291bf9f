//! MurmurHash3, x86 32-bit variant, over a byte slice.
//!
//! The `go-compatible` ring must reproduce `github.com/spaolacci/murmur3.Sum32` (seed 0) bit for bit. The
//! `murmur3` crate offers the same function but only over `std::io::Read` with an `io::Result`, which costs a
//! cursor, a buffer copy and an error path on every request; this slice version has none of those.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// MurmurHash3 x86 32-bit of `data` with `seed`, as in Austin Appleby's reference `MurmurHash3_x86_32`.
pub(crate) fn murmur3_x86_32(data: &[u8], seed: u32) -> u32 {
    let mut hash = seed;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let word = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        hash ^= scramble(word);
        hash = hash
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64);
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        let word = tail
            .iter()
            .rev()
            .fold(0u32, |word, &byte| (word << 8) | u32::from(byte));
        hash ^= scramble(word);
    }
    // The reference mixes in the length as a 32-bit value; truncation matches Go's `uint32(len(data))`.
    hash ^= data.len() as u32;
    finalize(hash)
}

fn scramble(word: u32) -> u32 {
    word.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2)
}

fn finalize(mut hash: u32) -> u32 {
    hash ^= hash >> 16;
    hash = hash.wrapping_mul(0x85eb_ca6b);
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(0xc2b2_ae35);
    hash ^= hash >> 16;
    hash
}

#[cfg(test)]
mod tests {
    use super::murmur3_x86_32;
    use proptest::prelude::*;

    /// Computed with Python `mmh3` 5.x: `mmh3.hash(data, 0, signed=False)`.
    #[test]
    fn matches_python_mmh3_reference_values() {
        let cases: &[(&[u8], u32)] = &[
            (b"", 0),
            (b"a", 1_009_084_850),
            (b"ab", 2_613_040_991),
            (b"abc", 3_017_643_002),
            (b"abcd", 1_139_631_978),
            (b"hello", 613_153_351),
            (b"/metrics/job/a", 1_618_954_107),
            (b"010.0.0.1:9091", 2_344_819_169),
            (b"49910.0.0.3:9091", 2_638_895_024),
        ];
        for (data, expected) in cases {
            assert_eq!(
                murmur3_x86_32(data, 0),
                *expected,
                "murmur3 of {:?}",
                String::from_utf8_lossy(data)
            );
        }
    }

    proptest! {
        /// The `murmur3` crate is an independent implementation of the same function.
        #[test]
        fn matches_murmur3_crate(data in proptest::collection::vec(any::<u8>(), 0..200), seed in any::<u32>()) {
            let expected = murmur3::murmur3_32(&mut std::io::Cursor::new(&data), seed)
                .map_err(|error| TestCaseError::fail(error.to_string()))?;
            prop_assert_eq!(murmur3_x86_32(&data, seed), expected);
        }
    }
}
