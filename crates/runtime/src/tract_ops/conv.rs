//! [`DirectConv2d`]: a direct 2-D convolution (NCHW, f32, stride 1, no dilation, one group) with two kernels:
//!
//! * [`Kernel::Rows`], portable: each weight scales the shifted input plane into the output plane, one contiguous
//!   loop the compiler vectorises (AVX2+FMA where the CPU has it). It reads and writes the output once per weight,
//!   so it is only used where `input channels x kernel area` is at most [`super::SMALL_CONV_MAX_K`].
//! * [`Kernel::Blocked`], register-blocked, for AVX-512F or AVX2 + FMA (`conv_blocked.rs`): 8 output channels x
//!   48 positions (AVX-512; 6 x 16 on AVX2) accumulate in registers over all `c x kh x kw` weights, so it runs near
//!   the FMA units' peak at any size, with no im2col buffer.
//!
//! Both compute on "wide" planes: the input is copied once into zero-padded planes of width `wp = ow + kw - 1`,
//! and the output is computed with that same row stride, so that one weight's contribution to a whole plane is a
//! contiguous run, the input shifted by `ky * wp + kx`; the `kw - 1` junk columns of each wide row are dropped
//! when the plane is copied out.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

#[cfg(target_arch = "x86_64")]
pub(super) use super::conv_blocked::Blocked;
/// No blocked kernels elsewhere than on x86-64.
#[cfg(not(target_arch = "x86_64"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Blocked {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct ConvGeo {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub co: usize,
    pub kh: usize,
    pub kw: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub oh: usize,
    pub ow: usize,
}

impl ConvGeo {
    /// Rows and width of a zero-padded input plane (the wide row stride).
    pub fn padded(&self) -> (usize, usize) {
        (self.oh + self.kh - 1, self.ow + self.kw - 1)
    }

    /// Output `[rows, columns]` of one channel, after the fused pooling if any.
    pub fn out_hw(&self, pool2: bool) -> (usize, usize) {
        if pool2 { (self.oh / 2, self.ow / 2) } else { (self.oh, self.ow) }
    }

    /// Writes one sample's `[c, h, w]` as `c` zero-padded planes at the start of `dst`, borders included (`dst` is
    /// reused scratch).
    pub fn pad_into(&self, x: &[f32], dst: &mut [f32]) {
        let (hp, wp) = self.padded();
        for (src, plane) in x.chunks_exact(self.h * self.w).zip(dst.chunks_exact_mut(hp * wp)) {
            let (top, rest) = plane.split_at_mut(self.pad_top * wp);
            top.fill(0.0);
            let mut rows = rest.chunks_exact_mut(wp);
            // `src` first: zip would otherwise take (and skip) one padded row past the last input row.
            for (s, row) in src.chunks_exact(self.w).zip(rows.by_ref()) {
                let (left, rest) = row.split_at_mut(self.pad_left);
                left.fill(0.0);
                rest[..self.w].copy_from_slice(s);
                rest[self.w..].fill(0.0);
            }
            rows.for_each(|r| r.fill(0.0));
        }
    }
}

thread_local! {
    /// Per-thread scratch of the convolutions (padded input and wide output): grown to the largest layer run on the
    /// thread and kept, so that an inference allocates nothing here.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's scratch, at least `len` floats (contents unspecified but initialised).
pub(super) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

/// Which loop runs a [`DirectConv2d`] (fixed when the graph is loaded), with the weights in the layout it reads.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Kernel {
    /// Weights `[co, c, kh, kw]`.
    Rows(Vec<f32>),
    #[cfg(target_arch = "x86_64")]
    Blocked(super::conv_blocked::Blocked, super::conv_blocked::Packed),
}

/// Direct 2-D convolution (see the module docs), optionally followed, in the same pass, by a ReLU and (blocked
/// kernels only) a 2x2 max-pool of stride 2.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectConv2d {
    geo: ConvGeo,
    bias: Vec<f32>,
    relu: bool,
    pool2: bool,
    kernel: Kernel,
}

impl DirectConv2d {
    /// Weights `[co, c, kh, kw]`. `blocked`: the register-blocked kernel to use (the caller checked the CPU has its
    /// extension); none: the portable loop.
    pub(super) fn new(geo: ConvGeo, weight: Vec<f32>, bias: Vec<f32>, blocked: Option<Blocked>) -> DirectConv2d {
        let kernel = match blocked {
            #[cfg(target_arch = "x86_64")]
            Some(b) => Kernel::Blocked(b, super::conv_blocked::Packed::new(&geo, &weight, b)),
            _ => Kernel::Rows(weight),
        };
        DirectConv2d { geo, bias, relu: false, pool2: false, kernel }
    }

    /// Whether this kernel can also do the 2x2 max-pool (the blocked ones do).
    pub(super) fn can_pool(&self) -> bool {
        !matches!(self.kernel, Kernel::Rows(_)) && self.geo.oh >= 2 && self.geo.ow >= 2
    }

    pub(super) fn with_relu(self) -> DirectConv2d {
        DirectConv2d { relu: true, ..self }
    }

    pub(super) fn with_pool2(self) -> DirectConv2d {
        debug_assert!(self.can_pool());
        DirectConv2d { pool2: true, ..self }
    }
}

// tract keys ops by equality; weights are hashed bitwise.
impl Eq for DirectConv2d {}
impl std::hash::Hash for DirectConv2d {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.geo, self.relu, self.pool2, self.kernel_name()).hash(state);
        let weights = match &self.kernel {
            Kernel::Rows(w) => w.as_slice(),
            #[cfg(target_arch = "x86_64")]
            Kernel::Blocked(_, p) => p.weights(),
        };
        weights.iter().chain(&self.bias).for_each(|v| v.to_bits().hash(state));
    }
}

impl DirectConv2d {
    fn kernel_name(&self) -> &'static str {
        match self.kernel {
            Kernel::Rows(_) => "",
            #[cfg(target_arch = "x86_64")]
            Kernel::Blocked(Blocked::Avx2, _) => "Avx2",
            #[cfg(target_arch = "x86_64")]
            Kernel::Blocked(Blocked::Avx512, _) => "Avx512",
        }
    }
}

impl Op for DirectConv2d {
    fn name(&self) -> StaticName {
        let kernel = self.kernel_name();
        let relu = if self.relu { "+Relu" } else { "" };
        let pool = if self.pool2 { "+MaxPool2x2" } else { "" };
        format!("AidosDirectConv2d{kernel}{relu}{pool}").into()
    }
    op_as_typed_op!();
}

impl EvalOp for DirectConv2d {
    op_out_of_plan!();

    fn eval(&self, _: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let g = self.geo;
        let n = x.shape()[0];
        ensure!(
            x.shape() == [n, g.c, g.h, g.w],
            "{}: input {:?}, expected [N, {}, {}, {}]",
            self.name(),
            x.shape(),
            g.c,
            g.h,
            g.w
        );
        let (oh, ow) = g.out_hw(self.pool2);
        // SAFETY: both kernels write every output value (each channel, row and column) before it is read.
        let mut out = unsafe { Tensor::uninitialized::<f32>(&[n, g.co, oh, ow])? };
        let mut dst = out.try_as_plain_ram_mut()?;
        let (src, dst_s) = (x.try_as_plain_ram()?.as_slice::<f32>()?, dst.as_slice_mut::<f32>()?);
        match &self.kernel {
            Kernel::Rows(weight) => conv_rows(self, weight, src, dst_s),
            // SAFETY: a blocked kernel is only chosen when the CPU has its extension (`Isa::detect`), and its
            // weights were packed for it (`new`).
            #[cfg(target_arch = "x86_64")]
            Kernel::Blocked(b, packed) => unsafe {
                let layer = super::conv_blocked::Layer {
                    geo: &g,
                    packed,
                    bias: &self.bias,
                    relu: self.relu,
                    pool2: self.pool2,
                };
                b.conv(&layer, src, dst_s)
            },
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for DirectConv2d {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let g = self.geo;
        let n = inputs[0].shape[0].clone();
        let (oh, ow) = g.out_hw(self.pool2);
        Ok(tvec!(f32::fact(&[n, g.co.into(), oh.into(), ow.into()])))
    }
    as_op!();
}

/// `out[n, o, y, x] = bias[o] + sum over (i, ky, kx) of weight[o, i, ky, kx] * in[n, i, y + ky - pad_top, x + kx - pad_left]`
/// (zero outside the input), then `max(0, .)` if `relu`, the portable way. Runs the AVX2+FMA build of the loop where the CPU has it (picked at
/// run time: the agent is built for baseline x86-64), else the portable one.
fn conv_rows(op: &DirectConv2d, weight: &[f32], input: &[f32], out: &mut [f32]) {
    let g = &op.geo;
    let (hp, wp) = g.padded();
    let wide_len = (g.oh - 1) * wp + g.ow;
    with_scratch(g.c * hp * wp + wide_len, |scratch| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function is compiled for (checked just above).
            return unsafe { conv_rows_avx2(op, weight, input, out, scratch) };
        }
        conv_rows_body::<false>(op, weight, input, out, scratch)
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn conv_rows_avx2(op: &DirectConv2d, weight: &[f32], input: &[f32], out: &mut [f32], scratch: &mut [f32]) {
    conv_rows_body::<true>(op, weight, input, out, scratch)
}

/// The loop: for one weight the whole wide plane is a single contiguous multiply-add of the padded input plane
/// shifted by `(ky, kx)`. `FMA`: fused multiply-add (only where the instruction exists; elsewhere `mul_add` would
/// be a library call). No closures in here: they would not inherit the caller's target features.
#[inline(always)]
fn conv_rows_body<const FMA: bool>(
    op: &DirectConv2d,
    weight: &[f32],
    input: &[f32],
    out: &mut [f32],
    scratch: &mut [f32],
) {
    let DirectConv2d { geo: g, bias, relu, .. } = op;
    let (hp, wp) = g.padded();
    let (plane_pad, plane_out) = (hp * wp, g.oh * g.ow);
    let (padded, wide) = scratch.split_at_mut(g.c * plane_pad);
    let wide_len = wide.len();
    for (x, y) in input.chunks_exact(g.c * g.h * g.w).zip(out.chunks_exact_mut(g.co * plane_out)) {
        g.pad_into(x, padded);
        for (o, yo) in y.chunks_exact_mut(plane_out).enumerate() {
            wide.fill(bias[o]);
            for (i, xi) in padded.chunks_exact(plane_pad).enumerate() {
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let wv = weight[((o * g.c + i) * g.kh + ky) * g.kw + kx];
                        let src = &xi[ky * wp + kx..][..wide_len];
                        for (d, s) in wide.iter_mut().zip(src) {
                            *d = if FMA { wv.mul_add(*s, *d) } else { *d + wv * s };
                        }
                    }
                }
            }
            copy_wide(wide, wp, g.ow, yo);
            if *relu {
                yo.iter_mut().for_each(|v| *v = v.max(0.0));
            }
        }
    }
}

/// Copies the `ow` real columns of each wide row (stride `wp`) into `plane` (`ow` floats per row). Also the copy-out
/// of the blocked convolutions without AVX-512.
#[inline(always)]
pub(super) fn copy_wide(wide: &[f32], wp: usize, ow: usize, plane: &mut [f32]) {
    for (src, row) in wide.chunks(wp).zip(plane.chunks_exact_mut(ow)) {
        row.copy_from_slice(&src[..ow]);
    }
}
