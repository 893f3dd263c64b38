//! 2-D convolution on f32 slices: stride 1, dilation 1, one group, symmetric zero padding, NCHW, square kernel.
//! Forward, input gradient and weight/bias gradient, each as per-sample im2col + one gemm, parallel over samples.
//!
//! Why not burn's: flex 0.22 runs every convolution through its 3-D path (serial NCHW->NHWC and weight re-layout
//! copies, per-tile allocations, a strided scatter back), and its weight gradient is a convolution of the
//! transposed input with the output gradient as the kernel: batch 1 for the first layer, so one thread, and a
//! gemm with n = 9. Here the weight gradient is a sum of per-sample gemms split over the threads.
//!
//! Layouts (all dense, row-major):
//! * `x` `[n, c_in, h, w]`, `weight` `[c_out, c_in, k, k]` (viewed as `[c_out, c_in*k*k]`), `bias` `[c_out]`,
//!   `y` and `dy` `[n, c_out, ho, wo]`.
//! * `cols` `[n, c_in*k*k, ho*wo]`: row `(ci*k + ky)*k + kx`, column `oy*wo + ox` holds
//!   `x[ci, oy+ky-pad, ox+kx-pad]`, 0 outside the image.
//!
//! Sizes are checked on entry (a mismatch is a bug in the caller, so it panics with the sizes); the largest
//! buffer is `cols`, `n*c_in*k*k*ho*wo` floats (14 MB for the reference CNN's second layer at batch 64).

use rayon::prelude::*;

use super::gemm::{View, gemm};

/// The geometry of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub k: usize,
    pub pad: usize,
}

impl ConvShape {
    pub fn ho(&self) -> usize {
        self.h + 2 * self.pad + 1 - self.k
    }
    pub fn wo(&self) -> usize {
        self.w + 2 * self.pad + 1 - self.k
    }
    fn hw_out(&self) -> usize {
        self.ho() * self.wo()
    }
    /// Rows of one sample's column matrix.
    fn ckk(&self) -> usize {
        self.c_in * self.k * self.k
    }
    fn x_sample(&self) -> usize {
        self.c_in * self.h * self.w
    }
    fn y_sample(&self) -> usize {
        self.c_out * self.hw_out()
    }
    fn check(&self, x: usize, weight: usize) {
        assert!(
            self.k >= 1 && self.k <= self.h + 2 * self.pad && self.k <= self.w + 2 * self.pad,
            "conv: kernel {} does not fit {:?}",
            self.k,
            self
        );
        assert_eq!(x, self.n * self.x_sample(), "conv: input length for {self:?}");
        assert_eq!(weight, self.c_out * self.ckk(), "conv: weight length for {self:?}");
    }
}

/// For kernel column `kx`: the output columns `ox0..ox1` whose input column `ox + kx - pad` is inside the image.
fn valid_cols(s: &ConvShape, kx: usize) -> (usize, usize) {
    let ox0 = s.pad.saturating_sub(kx);
    let ox1 = (s.w + s.pad).saturating_sub(kx).min(s.wo());
    (ox0, ox1.max(ox0))
}

/// One sample's column matrix (see the module doc). Writes every element of `col`.
fn im2col(x: &[f32], s: &ConvShape, col: &mut [f32]) {
    let (h, w, k, p, wo, hw) = (s.h, s.w, s.k, s.pad, s.wo(), s.hw_out());
    for ci in 0..s.c_in {
        let plane = &x[ci * h * w..][..h * w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut col[((ci * k + ky) * k + kx) * hw..][..hw];
                let (ox0, ox1) = valid_cols(s, kx);
                for (oy, r) in row.chunks_exact_mut(wo).enumerate() {
                    let iy = oy + ky;
                    if iy < p || iy - p >= h {
                        r.fill(0.0);
                        continue;
                    }
                    let src = &plane[(iy - p) * w..][..w];
                    r[..ox0].fill(0.0);
                    r[ox0..ox1].copy_from_slice(&src[ox0 + kx - p..ox1 + kx - p]);
                    r[ox1..].fill(0.0);
                }
            }
        }
    }
}

/// Adds one sample's column-matrix gradient back onto the input gradient (the adjoint of [`im2col`]).
fn col2im_add(col: &[f32], s: &ConvShape, dx: &mut [f32]) {
    let (h, w, k, p, wo, hw) = (s.h, s.w, s.k, s.pad, s.wo(), s.hw_out());
    for ci in 0..s.c_in {
        let plane = &mut dx[ci * h * w..][..h * w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &col[((ci * k + ky) * k + kx) * hw..][..hw];
                let (ox0, ox1) = valid_cols(s, kx);
                for (oy, r) in row.chunks_exact(wo).enumerate() {
                    let iy = oy + ky;
                    if iy < p || iy - p >= h {
                        continue;
                    }
                    let dst = &mut plane[(iy - p) * w..][..w][ox0 + kx - p..ox1 + kx - p];
                    for (d, v) in dst.iter_mut().zip(&r[ox0..ox1]) {
                        *d += v;
                    }
                }
            }
        }
    }
}

/// `y_n = weight * col_n + bias`.
fn sample_forward(col: &[f32], weight: &[f32], bias: Option<&[f32]>, s: &ConvShape, y: &mut [f32], threads: bool) {
    let hw = s.hw_out();
    if let Some(b) = bias {
        for (row, &bv) in y.chunks_exact_mut(hw).zip(b) {
            row.fill(bv);
        }
    }
    gemm(y, bias.is_some(), View::rows(weight, s.c_out, s.ckk()), View::rows(col, s.ckk(), hw), threads);
}

/// Forward: `y` `[n, c_out, ho, wo]`, and the column matrices when `keep_cols` (the weight gradient needs them).
pub fn forward(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    s: &ConvShape,
    keep_cols: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    s.check(x.len(), weight.len());
    if let Some(b) = bias {
        assert_eq!(b.len(), s.c_out, "conv: bias length");
    }
    let (xs, ys, cs) = (s.x_sample(), s.y_sample(), s.ckk() * s.hw_out());
    let mut y = vec![0.0f32; s.n * ys];
    // One sample cannot be split over samples: let gemm use the threads instead.
    let threads = s.n == 1;
    if keep_cols {
        let mut cols = vec![0.0f32; s.n * cs];
        y.par_chunks_mut(ys).zip(cols.par_chunks_mut(cs)).zip(x.par_chunks(xs)).for_each(|((y, col), x)| {
            im2col(x, s, col);
            sample_forward(col, weight, bias, s, y, threads);
        });
        (y, Some(cols))
    } else {
        y.par_chunks_mut(ys).zip(x.par_chunks(xs)).for_each_init(
            || vec![0.0f32; cs],
            |col, (y, x)| {
                im2col(x, s, col);
                sample_forward(col, weight, bias, s, y, threads);
            },
        );
        (y, None)
    }
}

/// Samples per task: one contiguous run per thread, so each task accumulates into a single partial sum.
fn per_task(n: usize) -> usize {
    n.div_ceil(rayon::current_num_threads().max(1)).max(1)
}

/// Weight and bias gradients: `dW = sum_n dy_n * col_n^T` (`[c_out, c_in*k*k]`), `db = sum_n,s dy`.
pub fn backward_weight(cols: &[f32], dy: &[f32], s: &ConvShape) -> (Vec<f32>, Vec<f32>) {
    let (hw, ckk, ys) = (s.hw_out(), s.ckk(), s.y_sample());
    assert_eq!(cols.len(), s.n * ckk * hw, "conv: column matrices length for {s:?}");
    assert_eq!(dy.len(), s.n * ys, "conv: output gradient length for {s:?}");
    let per = per_task(s.n);
    let threads = s.n == 1;
    let partial = |(dy, cols): (&[f32], &[f32])| {
        let mut dw = vec![0.0f32; s.c_out * ckk];
        let mut db = vec![0.0f32; s.c_out];
        for (i, (dy, col)) in dy.chunks_exact(ys).zip(cols.chunks_exact(ckk * hw)).enumerate() {
            gemm(&mut dw, i > 0, View::rows(dy, s.c_out, hw), View::rows(col, ckk, hw).t(), threads);
            for (b, row) in db.iter_mut().zip(dy.chunks_exact(hw)) {
                *b += row.iter().sum::<f32>();
            }
        }
        (dw, db)
    };
    dy.par_chunks(per * ys)
        .zip(cols.par_chunks(per * ckk * hw))
        .map(partial)
        .reduce_with(|(mut dw, mut db), (dw2, db2)| {
            dw.iter_mut().zip(dw2).for_each(|(a, b)| *a += b);
            db.iter_mut().zip(db2).for_each(|(a, b)| *a += b);
            (dw, db)
        })
        .unwrap_or_else(|| (vec![0.0; s.c_out * ckk], vec![0.0; s.c_out]))
}

/// Input gradient: `dcol_n = W^T * dy_n`, folded back onto `dx_n` (`[n, c_in, h, w]`).
pub fn backward_input(weight: &[f32], dy: &[f32], s: &ConvShape) -> Vec<f32> {
    let (hw, ckk, ys, xs) = (s.hw_out(), s.ckk(), s.y_sample(), s.x_sample());
    assert_eq!(weight.len(), s.c_out * ckk, "conv: weight length for {s:?}");
    assert_eq!(dy.len(), s.n * ys, "conv: output gradient length for {s:?}");
    let mut dx = vec![0.0f32; s.n * xs];
    let threads = s.n == 1;
    dx.par_chunks_mut(xs).zip(dy.par_chunks(ys)).for_each_init(
        || vec![0.0f32; ckk * hw],
        |dcol, (dx, dy)| {
            gemm(dcol, false, View::rows(weight, s.c_out, ckk).t(), View::rows(dy, s.c_out, hw), threads);
            col2im_add(dcol, s, dx);
        },
    );
    dx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straight from the definition, in f64.
    fn naive(x: &[f32], wt: &[f32], b: &[f32], s: &ConvShape) -> Vec<f32> {
        let (ho, wo, k, p) = (s.ho(), s.wo(), s.k as isize, s.pad as isize);
        let mut y = vec![0.0; s.n * s.c_out * ho * wo];
        for n in 0..s.n {
            for co in 0..s.c_out {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut acc = b[co] as f64;
                        for ci in 0..s.c_in {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let (iy, ix) = (oy as isize + ky - p, ox as isize + kx - p);
                                    if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                        continue;
                                    }
                                    let xv = x[((n * s.c_in + ci) * s.h + iy as usize) * s.w + ix as usize] as f64;
                                    let wv = wt[((co * s.c_in + ci) * s.k + ky as usize) * s.k + kx as usize] as f64;
                                    acc += xv * wv;
                                }
                            }
                        }
                        y[((n * s.c_out + co) * ho + oy) * wo + ox] = acc as f32;
                    }
                }
            }
        }
        y
    }

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1 << 24) as f32 - 0.5)
            .collect()
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "element {i}: {x} vs {y}");
        }
    }

    const SHAPES: [ConvShape; 4] = [
        ConvShape { n: 3, c_in: 1, h: 6, w: 5, c_out: 4, k: 3, pad: 1 },
        ConvShape { n: 2, c_in: 3, h: 5, w: 7, c_out: 2, k: 3, pad: 0 },
        ConvShape { n: 1, c_in: 2, h: 4, w: 4, c_out: 3, k: 5, pad: 2 },
        ConvShape { n: 5, c_in: 2, h: 3, w: 3, c_out: 2, k: 1, pad: 0 },
    ];

    #[test]
    fn forward_matches_the_definition() {
        for s in SHAPES {
            let (x, wt, b) = (data(s.n * s.x_sample(), 1), data(s.c_out * s.ckk(), 2), data(s.c_out, 3));
            let (y, cols) = forward(&x, &wt, Some(&b), &s, true);
            close(&y, &naive(&x, &wt, &b, &s));
            assert_eq!(cols.unwrap().len(), s.n * s.ckk() * s.hw_out());
            close(&forward(&x, &wt, Some(&b), &s, false).0, &y);
        }
    }

    /// Gradients of `L = sum(y * g)` against the definition: dL/dp = sum(g * dy/dp), so with the naive forward
    /// being linear in x and in w, each gradient element is the forward of a unit perturbation.
    #[test]
    fn gradients_match_finite_perturbations_of_the_definition() {
        for s in SHAPES {
            let (x, wt, b) = (data(s.n * s.x_sample(), 4), data(s.c_out * s.ckk(), 5), data(s.c_out, 6));
            let g = data(s.n * s.y_sample(), 7);
            let loss = |x: &[f32], wt: &[f32], b: &[f32]| -> f64 {
                naive(x, wt, b, &s).iter().zip(&g).map(|(a, b)| (*a as f64) * (*b as f64)).sum()
            };
            let base = loss(&x, &wt, &b);
            let (_, cols) = forward(&x, &wt, Some(&b), &s, true);
            let (dw, db) = backward_weight(&cols.unwrap(), &g, &s);
            let dx = backward_input(&wt, &g, &s);
            let zero_b = vec![0.0; s.c_out];
            for i in 0..wt.len() {
                let mut w1 = vec![0.0; wt.len()];
                w1[i] = 1.0;
                let want = loss(&x, &w1, &zero_b);
                assert!((dw[i] as f64 - want).abs() < 1e-3, "dw[{i}] {} vs {want} for {s:?}", dw[i]);
            }
            for i in 0..x.len() {
                let mut x1 = vec![0.0; x.len()];
                x1[i] = 1.0;
                let want = loss(&x1, &wt, &zero_b);
                assert!((dx[i] as f64 - want).abs() < 1e-3, "dx[{i}] {} vs {want} for {s:?}", dx[i]);
            }
            for co in 0..s.c_out {
                let mut b1 = b.clone();
                b1[co] += 1.0;
                let want = loss(&x, &wt, &b1) - base;
                assert!((db[co] as f64 - want).abs() < 1e-3, "db[{co}] {} vs {want}", db[co]);
            }
        }
    }

    #[test]
    #[should_panic(expected = "input length")]
    fn a_wrong_input_length_is_refused() {
        let s = SHAPES[0];
        forward(&[0.0; 3], &data(s.c_out * s.ckk(), 2), None, &s, false);
    }
}
