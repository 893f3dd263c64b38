//! The register-blocked kernels of [`super::DirectConv2d`], one per x86 vector extension (AVX-512F; AVX2 + FMA),
//! generated from one body by `blocked!`.
//!
//! The output of one sample is computed as `co` wide planes (see `conv.rs`) of `oh x wp` positions, cut into
//! vector-sized chunks. A register tile is `OB` output channels x `RB` chunks, initialised with the bias: 8 x 3 = 24
//! of AVX-512's 32 registers, 6 x 2 = 12 of AVX2's 16. For each of the `c x kh x kw` weights the tile loads `RB`
//! input vectors (the padded input at the tile's positions shifted by that weight's offset: unaligned loads, no
//! gather) and broadcasts `OB` weights, then does `OB x RB` FMAs, so the loop is bound by the FMA units rather than
//! by loads. A block's weights (`OB x c x kh x kw` floats, 9 KiB for 32 -> 64 channels of 3x3 on AVX-512) and the
//! padded input stay in L1/L2 while the tiles sweep the positions. A ReLU is applied on the registers; a 2x2
//! max-pool while copying the wide planes out.
//!
//! Size limits and invariants: the padded copy of the input is long enough for the last tile's reads (up to
//! `chunks * LANES - 1` positions past the start, plus the largest weight offset): reads past the last real
//! position land in zeroes or in the next plane and only feed junk lanes, which are never copied out. Output
//! channels past `co` in the last block have zero weights and are not stored.

use std::arch::x86_64::*;

use super::conv::{ConvGeo, copy_wide};
use super::pool::max2x2;

/// Which blocked kernel runs a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Blocked {
    Avx2,
    Avx512,
}

impl Blocked {
    /// Output channels per register tile.
    fn ob(self) -> usize {
        match self {
            Blocked::Avx2 => avx2::OB,
            Blocked::Avx512 => avx512::OB,
        }
    }

    fn lanes(self) -> usize {
        match self {
            Blocked::Avx2 => avx2::LANES,
            Blocked::Avx512 => avx512::LANES,
        }
    }

    /// `out` = the convolution of `input` (`[n, c, h, w]`) plus `bias`, then `max(0, .)` if `relu`, then a 2x2
    /// max-pool of stride 2 if `pool2`: `[n, co, oh, ow]`, or `[n, co, oh / 2, ow / 2]` pooled.
    ///
    /// # Safety
    /// The CPU must have the extension (`Isa::detect`), and `l.packed` must have been packed for `self`.
    pub unsafe fn conv(self, l: &Layer, input: &[f32], out: &mut [f32]) {
        let (g, p) = (l.geo, l.packed);
        let (hp, wp) = g.padded();
        let lanes = self.lanes();
        let chunks = (g.oh * wp).div_ceil(lanes);
        let padded_len = (chunks * lanes + p.offsets[p.offsets.len() - 1]).max(g.c * hp * wp);
        super::conv::with_scratch(padded_len + p.ob * chunks * lanes, |s| {
            let (padded, wide) = s.split_at_mut(padded_len);
            // SAFETY: the caller's.
            unsafe {
                match self {
                    Blocked::Avx2 => avx2::conv_in(l, input, out, padded, wide),
                    Blocked::Avx512 => avx512::conv_in(l, input, out, padded, wide),
                }
            }
        })
    }
}

/// A layer as the kernels see it: `out = max-pool2(relu(conv(input) + bias))`, each step where asked.
pub(super) struct Layer<'a> {
    pub geo: &'a ConvGeo,
    pub packed: &'a Packed,
    pub bias: &'a [f32],
    pub relu: bool,
    pub pool2: bool,
}

/// What a kernel needs of a layer, prepared at load: the weights as `[ceil(co / OB)][c * kh * kw][OB]` (the `OB`
/// values one broadcast step needs are adjacent; zero past `co`) and each weight's input offset in the padded
/// planes.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Packed {
    ob: usize,
    weights: Vec<f32>,
    offsets: Vec<usize>,
}

impl Packed {
    /// The packed weights (what the op's equality and hash go by).
    pub fn weights(&self) -> &[f32] {
        &self.weights
    }

    pub fn new(g: &ConvGeo, weight: &[f32], kernel: Blocked) -> Packed {
        let (k, ob) = (g.c * g.kh * g.kw, kernel.ob());
        let mut weights = vec![0f32; g.co.div_ceil(ob) * k * ob];
        for (o, wo) in weight.chunks_exact(k).enumerate() {
            for (j, v) in wo.iter().enumerate() {
                weights[((o / ob) * k + j) * ob + o % ob] = *v;
            }
        }
        let (hp, wp) = g.padded();
        let offsets = (0..g.c)
            .flat_map(|i| (0..g.kh).flat_map(move |ky| (0..g.kw).map(move |kx| i * hp * wp + ky * wp + kx)))
            .collect();
        Packed { ob, weights, offsets }
    }
}

/// Floats in an AVX-512 vector.
const ZMM: usize = 16;

/// The first `n` (at most 16) lanes.
fn lanes(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

/// [`copy_wide`] with masked AVX-512 moves.
#[target_feature(enable = "avx512f")]
fn copy_out_avx512(wide: &[f32], wp: usize, ow: usize, plane: &mut [f32]) {
    for (src, row) in wide.chunks(wp).zip(plane.chunks_exact_mut(ow)) {
        for x0 in (0..ow).step_by(ZMM) {
            let m = lanes(ZMM.min(ow - x0));
            // SAFETY: the mask keeps both sides inside their rows (`x0 + n <= ow <= wp`).
            unsafe {
                let v = _mm512_maskz_loadu_ps(m, src.as_ptr().add(x0));
                _mm512_mask_storeu_ps(row.as_mut_ptr().add(x0), m, v);
            }
        }
    }
}

/// [`max2x2`] with AVX-512: masked loads, and two permutes to pair the columns.
#[target_feature(enable = "avx512f")]
fn pool_out_avx512(wide: &[f32], wp: usize, pw: usize, plane: &mut [f32]) {
    let even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    let odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    for (py, row) in plane.chunks_exact_mut(pw).enumerate() {
        let (r0, r1) = (&wide[2 * py * wp..], &wide[(2 * py + 1) * wp..]);
        for x0 in (0..pw).step_by(ZMM) {
            let n = ZMM.min(pw - x0);
            let (lo, hi) = (lanes((2 * n).min(ZMM)), lanes((2 * n).saturating_sub(ZMM)));
            // SAFETY: the masks keep reads to the `2 * n` columns `2 * x0..` of rows `2 * py` and `2 * py + 1`,
            // inside the wide plane (`2 * (x0 + n) <= ow <= wp`, `2 * py + 1 < oh`), and the write to `n` values
            // of `row`.
            unsafe {
                let (a0, b0) = (r0.as_ptr().add(2 * x0), r1.as_ptr().add(2 * x0));
                let m_lo = _mm512_max_ps(_mm512_maskz_loadu_ps(lo, a0), _mm512_maskz_loadu_ps(lo, b0));
                let m_hi =
                    _mm512_max_ps(_mm512_maskz_loadu_ps(hi, a0.add(ZMM)), _mm512_maskz_loadu_ps(hi, b0.add(ZMM)));
                let v =
                    _mm512_max_ps(_mm512_permutex2var_ps(m_lo, even, m_hi), _mm512_permutex2var_ps(m_lo, odd, m_hi));
                _mm512_mask_storeu_ps(row.as_mut_ptr().add(x0), lanes(n), v);
            }
        }
    }
}

/// One kernel per vector extension, from the same body: `$feat` the target features, `$lanes` floats per vector,
/// `$ob` output channels x `$rb` chunks per tile (within the register file: 24 of AVX-512's 32 registers, 12 of
/// AVX2's 16, leaving room for the inputs and the broadcast weight), then the intrinsics and the copy-out functions
/// (plain and 2x2-pooled).
macro_rules! blocked {
    ($m:ident, $feat:literal, $lanes:expr, $ob:expr, $rb:expr, $zero:ident, $set1:ident, $loadu:ident, $storeu:ident,
     $fmadd:ident, $max:ident, $copy:path, $pool:path) => {
        mod $m {
            use super::*;

            /// Floats per vector.
            pub(super) const LANES: usize = $lanes;
            /// Output channels per register tile.
            pub(super) const OB: usize = $ob;
            /// Chunks of `LANES` positions per register tile (at most 3: `tile_r`).
            const RB: usize = $rb;

            /// [`Blocked::conv`] with its scratch: `padded` for the padded input planes and the reads past them, `wide` for one block
            /// of `OB` wide output planes. (No closures in here: they would not inherit the target feature.)
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn conv_in(
                l: &Layer,
                input: &[f32],
                out: &mut [f32],
                padded: &mut [f32],
                wide: &mut [f32],
            ) {
                let Layer { geo: g, packed: p, bias, relu, pool2 } = *l;
                let (hp, wp) = g.padded();
                let k = g.c * g.kh * g.kw;
                debug_assert_eq!(p.ob, OB, "weights packed for another kernel");
                let stride = wide.len() / OB;
                let chunks = stride / LANES;
                let (oh, ow) = g.out_hw(pool2);
                let plane_out = oh * ow;
                // Past the planes: read only into junk lanes, but keep it zero rather than stale.
                padded[g.c * hp * wp..].fill(0.0);
                for (x, y) in input.chunks_exact(g.c * g.h * g.w).zip(out.chunks_exact_mut(g.co * plane_out)) {
                    g.pad_into(x, padded);
                    for (b, w) in p.weights.chunks_exact(k * OB).enumerate() {
                        let real = OB.min(g.co - b * OB);
                        let mut blk = Block { offsets: &p.offsets, w, bias: [0f32; OB], relu };
                        blk.bias[..real].copy_from_slice(&bias[b * OB..][..real]);
                        let (src, dst) = (padded.as_ptr(), wide.as_mut_ptr());
                        let mut c0 = 0;
                        while c0 < chunks {
                            let r = RB.min(chunks - c0);
                            // SAFETY: reads stay below `padded.len()` and writes below `OB * stride` (`c0 + r <=
                            // chunks`), see the module docs.
                            unsafe { tile_r(r, &blk, src.add(c0 * LANES), dst.add(c0 * LANES), stride) };
                            c0 += r;
                        }
                        for (o, plane) in y[b * OB * plane_out..].chunks_exact_mut(plane_out).take(real).enumerate() {
                            let wide_o = &wide[o * stride..][..g.oh * wp];
                            if pool2 {
                                $pool(wide_o, wp, ow, plane);
                            } else {
                                $copy(wide_o, wp, ow, plane);
                            }
                        }
                    }
                }
            }

            /// [`tile`] for `r` chunks: `RB`, or fewer at the end of a plane.
            ///
            /// # Safety
            /// As [`tile`]'s, for `R = r`.
            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn tile_r(r: usize, b: &Block, x: *const f32, out: *mut f32, stride: usize) {
                // SAFETY: the caller's.
                unsafe {
                    match r {
                        3 => tile::<3>(b, x, out, stride),
                        2 => tile::<2>(b, x, out, stride),
                        _ => tile::<1>(b, x, out, stride),
                    }
                }
            }

            /// One block of `OB` output channels: each weight's input offset, the block's packed weights
            /// (`[c * kh * kw][OB]`), its bias, and whether a ReLU follows.
            struct Block<'a> {
                offsets: &'a [usize],
                w: &'a [f32],
                bias: [f32; OB],
                relu: bool,
            }

            /// One register tile: the `OB` output channels of `blk` x `R` chunks of `LANES` positions starting at `x`
            /// (padded input) and `out` (wide output, `stride` floats per channel).
            ///
            /// # Safety
            /// The target features; `x + offsets[j] + R * LANES` stays inside the padded input for every `j`, and `out + (OB - 1) * stride +
            /// R * LANES` inside the wide output.
            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn tile<const R: usize>(blk: &Block, x: *const f32, out: *mut f32, stride: usize) {
                let mut acc = [[$zero(); R]; OB];
                for (a, &b) in acc.iter_mut().zip(&blk.bias) {
                    *a = [$set1(b); R];
                }
                for (&off, wj) in blk.offsets.iter().zip(blk.w.chunks_exact(OB)) {
                    let mut xv = [$zero(); R];
                    for (r, v) in xv.iter_mut().enumerate() {
                        *v = unsafe { $loadu(x.add(off + r * LANES)) };
                    }
                    for (a, &wv) in acc.iter_mut().zip(wj) {
                        let b = $set1(wv);
                        for (ar, &xr) in a.iter_mut().zip(&xv) {
                            *ar = $fmadd(b, xr, *ar);
                        }
                    }
                }
                let zero = $zero();
                for (o, a) in acc.iter().enumerate() {
                    for (r, &v) in a.iter().enumerate() {
                        let v = if blk.relu { $max(v, zero) } else { v };
                        unsafe { $storeu(out.add(o * stride + r * LANES), v) };
                    }
                }
            }
        }
    };
}

#[rustfmt::skip]
blocked!(avx512, "avx512f", 16, 8, 3, _mm512_setzero_ps, _mm512_set1_ps, _mm512_loadu_ps, _mm512_storeu_ps,
         _mm512_fmadd_ps, _mm512_max_ps, copy_out_avx512, pool_out_avx512);
#[rustfmt::skip]
blocked!(avx2, "avx2,fma", 8, 6, 2, _mm256_setzero_ps, _mm256_set1_ps, _mm256_loadu_ps, _mm256_storeu_ps,
         _mm256_fmadd_ps, _mm256_max_ps, copy_wide, max2x2);
