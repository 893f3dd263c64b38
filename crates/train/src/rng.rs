//! Tiny deterministic RNG (SplitMix64) used for weight init, shuffling and dropout masks.
//!
//! Invariant: every random stream in training is a pure function of `(seed, purpose, index)`
//! — never of global/backend RNG state — so runs are reproducible in one process with other
//! work going on, and a resumed run draws exactly what the uninterrupted run would have drawn.

#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    /// Independent stream for `(seed, purpose, index)`.
    pub(crate) fn stream(seed: u64, purpose: u64, index: u64) -> Self {
        let mut s = SplitMix64(seed ^ 0x9E37_79B9_7F4A_7C15);
        let a = s.next_u64() ^ purpose.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let mut s = SplitMix64(a);
        let b = s.next_u64() ^ index.wrapping_mul(0x94D0_49BB_1331_11EB);
        SplitMix64(b)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in [0, n) (n > 0); Lemire's multiply-shift, negligible bias for n << 2^32.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }
}

/// Purposes (stream separators).
pub(crate) const INIT: u64 = 1;
pub(crate) const SHUFFLE: u64 = 2;
pub(crate) const DROPOUT: u64 = 3;
