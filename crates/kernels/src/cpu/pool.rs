//! `relu` followed by non-overlapping max pooling (window = stride = `k`, no padding, floor), fused, on f32 NCHW
//! slices, parallel over `(sample, channel)` planes.
//!
//! `relu(maxpool(x)) == maxpool(relu(x))` (max is monotone), and the gradient is the same too: it flows to the
//! window's first maximum when that maximum is positive, and nowhere otherwise (burn's `relu` passes no gradient
//! at 0). Fusing saves the `relu` pass, its mask and its backward, and flex's pooling, which writes i64 indices
//! and casts them.
//!
//! The forward keeps, per output, the index of the winning input inside its plane (`u32`), or [`NONE`] when the
//! relu gate is closed; that is all the backward needs.

use rayon::prelude::*;

/// "No gradient flows from this output" (the window's maximum was not positive).
pub const NONE: u32 = u32::MAX;

/// The geometry of one pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    /// Planes: batch x channels.
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
}

impl PoolShape {
    pub fn ho(&self) -> usize {
        self.h / self.k
    }
    pub fn wo(&self) -> usize {
        self.w / self.k
    }
    fn check(&self, x: usize) {
        assert!(self.k >= 1 && self.k <= self.h && self.k <= self.w, "pool: window {} does not fit {:?}", self.k, self);
        assert!(self.h * self.w <= NONE as usize, "pool: plane of {}x{} too large for u32 indices", self.h, self.w);
        assert_eq!(x, self.planes * self.h * self.w, "pool: input length for {self:?}");
    }
}

/// `relu(maxpool(x))`, `[planes, h/k, w/k]`, and the winners' indices when `keep_indices`.
pub fn forward(x: &[f32], s: &PoolShape, keep_indices: bool) -> (Vec<f32>, Option<Vec<u32>>) {
    s.check(x.len());
    let (hw, out) = (s.h * s.w, s.ho() * s.wo());
    let mut y = vec![0.0f32; s.planes * out];
    let mut idx = if keep_indices { vec![NONE; s.planes * out] } else { Vec::new() };
    let plane = |x: &[f32], y: &mut [f32], idx: Option<&mut [u32]>| {
        let mut idx = idx;
        for oy in 0..s.ho() {
            for ox in 0..s.wo() {
                let (mut best, mut at) = (f32::NEG_INFINITY, 0usize);
                for ky in 0..s.k {
                    let row = (oy * s.k + ky) * s.w + ox * s.k;
                    for (j, &v) in x[row..row + s.k].iter().enumerate() {
                        if v > best {
                            best = v;
                            at = row + j;
                        }
                    }
                }
                let o = oy * s.wo() + ox;
                y[o] = best.max(0.0);
                if let Some(idx) = idx.as_deref_mut() {
                    idx[o] = if best > 0.0 { at as u32 } else { NONE };
                }
            }
        }
    };
    if keep_indices {
        y.par_chunks_mut(out)
            .zip(idx.par_chunks_mut(out))
            .zip(x.par_chunks(hw))
            .for_each(|((y, idx), x)| plane(x, y, Some(idx)));
        (y, Some(idx))
    } else {
        y.par_chunks_mut(out).zip(x.par_chunks(hw)).for_each(|(y, x)| plane(x, y, None));
        (y, None)
    }
}

/// The input gradient: each output's gradient lands on its winner (windows do not overlap), zeros elsewhere.
pub fn backward(indices: &[u32], dy: &[f32], s: &PoolShape) -> Vec<f32> {
    let (hw, out) = (s.h * s.w, s.ho() * s.wo());
    assert_eq!(indices.len(), s.planes * out, "pool: indices length for {s:?}");
    assert_eq!(dy.len(), s.planes * out, "pool: output gradient length for {s:?}");
    let mut dx = vec![0.0f32; s.planes * hw];
    dx.par_chunks_mut(hw).zip(indices.par_chunks(out)).zip(dy.par_chunks(out)).for_each(|((dx, idx), dy)| {
        for (&i, &g) in idx.iter().zip(dy) {
            if i != NONE {
                dx[i as usize] = g;
            }
        }
    });
    dx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_the_positive_maximum_and_routes_its_gradient() {
        // One 4x5 plane, k=2: a 2x2 output (the last column is dropped, floor mode).
        #[rustfmt::skip]
        let x = [
            1.0, -2.0,  0.5, 3.0, 9.0,
            0.0,  4.0, -1.0, 3.0, 9.0,
           -1.0, -2.0,  7.0, 2.0, 9.0,
           -3.0, -0.5,  7.0, 1.0, 9.0,
        ];
        let s = PoolShape { planes: 1, h: 4, w: 5, k: 2 };
        let (y, idx) = forward(&x, &s, true);
        assert_eq!(y, vec![4.0, 3.0, 0.0, 7.0]);
        let idx = idx.unwrap();
        // 3.0 appears twice in its window: the first wins; the all-negative window passes no gradient.
        assert_eq!(idx, vec![6, 3, NONE, 12]);
        let dx = backward(&idx, &[1.0, 2.0, 3.0, 4.0], &s);
        let mut want = vec![0.0; 20];
        want[6] = 1.0;
        want[3] = 2.0;
        want[12] = 4.0;
        assert_eq!(dx, want);
        assert_eq!(forward(&x, &s, false).0, y);
    }
}
