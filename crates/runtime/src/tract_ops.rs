//! Two tract operators of our own for the shapes where tract's generic paths are slow at small batch, swapped into a
//! decluttered model before tract optimises it ([`substitute`]). Measured on the zoo's MNIST CNN at batch 1
//! (benches/README.md): tract's max-pool walks a generic patch geometry one scalar at a time, and a convolution
//! with one input channel runs as a lazy im2col feeding a 40x2 matrix kernel with k = 9.
//!
//! * [`SmallConv2d`]: a direct convolution (NCHW, f32, stride 1, no dilation, one group) for layers whose
//!   `input channels x kernel area` is at most [`SMALL_CONV_MAX_K`]: each weight scales a shifted input row into
//!   an output row, a contiguous loop the compiler vectorises; no im2col buffer, no padded copy.
//! * [`PoolMax2d`]: max-pooling whose window equals its stride (no overlap, no padding, no dilation), NCHW, f32,
//!   windows that run past the edge dropped as ONNX's floor rounding does.
//!
//! Everything else stays tract's. Both ops take any batch size (the batch dimension may be symbolic) but need the
//! channel and spatial dimensions known at load. The result is the same arithmetic up to summation order: the
//! tests in this file compare against tract's own operators.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, MaxPool, PaddingSpec, PoolSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;

/// Largest `input channels x kernel height x kernel width` a [`SmallConv2d`] takes; beyond it a matrix product wins.
pub const SMALL_CONV_MAX_K: usize = 32;

/// Replaces tract's `Conv` and `MaxPool` nodes with [`SmallConv2d`] and [`PoolMax2d`] where they apply.
/// Returns how many nodes were replaced.
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let patch = if let Some(conv) = node.op_as::<Conv>() {
            match small_conv(model, node, conv)? {
                Some(op) => Some(TypedModelPatch::replace_single_op(model, node, &node.inputs[..1], op)?),
                None => None,
            }
        } else if let Some(pool) = node.op_as::<MaxPool>() {
            match pool_max(model, node, pool)? {
                Some(op) => Some(TypedModelPatch::replace_single_op(model, node, &node.inputs, op)?),
                None => None,
            }
        } else {
            None
        };
        if let Some(p) = patch {
            p.apply(model)?;
            replaced += 1;
        }
    }
    Ok(replaced)
}

/// `[c, h, w]` of an NCHW f32 input whose non-batch dimensions are known.
fn chw(model: &TypedModel, node: &TypedNode, spec: &PoolSpec) -> TractResult<Option<[usize; 3]>> {
    let fact = model.outlet_fact(node.inputs[0])?;
    if fact.datum_type != f32::datum_type() || spec.data_format != DataFormat::NCHW || fact.rank() != 4 {
        return Ok(None);
    }
    let dims: Vec<Option<usize>> = fact.shape.iter().skip(1).map(|d| d.to_usize().ok()).collect();
    Ok(match dims.as_slice() {
        [Some(c), Some(h), Some(w)] => Some([*c, *h, *w]),
        _ => None,
    })
}

fn ones(v: &Option<TVec<usize>>) -> bool {
    v.as_ref().is_none_or(|v| v.iter().all(|&s| s == 1))
}

fn small_conv(model: &TypedModel, node: &TypedNode, conv: &Conv) -> TractResult<Option<SmallConv2d>> {
    let spec = &conv.pool_spec;
    let Some([c, h, w]) = chw(model, node, spec)? else { return Ok(None) };
    if conv.group != 1 || conv.q_params.is_some() || conv.kernel_fmt != KernelFormat::OIHW || node.inputs.len() != 3 {
        return Ok(None);
    }
    if spec.kernel_shape.len() != 2 || !ones(&spec.strides) || !ones(&spec.dilations) {
        return Ok(None);
    }
    let [kh, kw] = [spec.kernel_shape[0], spec.kernel_shape[1]];
    if c * kh * kw > SMALL_CONV_MAX_K {
        return Ok(None);
    }
    let (pad_h, pad_w) = match &spec.padding {
        PaddingSpec::Valid => ((0, 0), (0, 0)),
        PaddingSpec::Explicit(b, a) if b.len() == 2 && a.len() == 2 => ((b[0], a[0]), (b[1], a[1])),
        _ => return Ok(None),
    };
    let (Some(k), Some(b)) =
        (model.outlet_fact(node.inputs[1])?.konst.clone(), model.outlet_fact(node.inputs[2])?.konst.clone())
    else {
        return Ok(None);
    };
    if k.datum_type() != f32::datum_type() || b.datum_type() != f32::datum_type() || k.rank() != 4 {
        return Ok(None);
    }
    let co = k.shape()[0];
    if k.shape() != [co, c, kh, kw] || !(b.len() == co || b.len() == 1) {
        return Ok(None);
    }
    let (oh, ow) = ((h + pad_h.0 + pad_h.1).checked_sub(kh - 1), (w + pad_w.0 + pad_w.1).checked_sub(kw - 1));
    let (Some(oh), Some(ow)) = (oh, ow) else { return Ok(None) };
    if oh == 0 || ow == 0 {
        return Ok(None);
    }
    let bv = b.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    let bias = if bv.len() == co { bv } else { vec![bv[0]; co] };
    Ok(Some(SmallConv2d {
        geo: ConvGeo { c, h, w, co, kh, kw, pad_top: pad_h.0, pad_left: pad_w.0, oh, ow },
        weight: k.try_as_plain_ram()?.as_slice::<f32>()?.to_vec(),
        bias,
    }))
}

fn pool_max(model: &TypedModel, node: &TypedNode, pool: &MaxPool) -> TractResult<Option<PoolMax2d>> {
    let spec = &pool.pool_spec;
    let Some([c, h, w]) = chw(model, node, spec)? else { return Ok(None) };
    if pool.with_index_outputs.is_some() || spec.kernel_shape.len() != 2 || !ones(&spec.dilations) {
        return Ok(None);
    }
    let k = [spec.kernel_shape[0], spec.kernel_shape[1]];
    let strides = spec.strides.clone().unwrap_or_else(|| tvec![1, 1]);
    let valid = matches!(&spec.padding, PaddingSpec::Valid)
        || matches!(&spec.padding, PaddingSpec::Explicit(b, a) | PaddingSpec::ExplicitOnnxPool(b, a, false)
            if b.iter().chain(a.iter()).all(|&p| p == 0));
    if !valid || strides.as_slice() != k || h < k[0] || w < k[1] {
        return Ok(None);
    }
    Ok(Some(PoolMax2d { c, h, w, kh: k[0], kw: k[1] }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConvGeo {
    c: usize,
    h: usize,
    w: usize,
    co: usize,
    kh: usize,
    kw: usize,
    pad_top: usize,
    pad_left: usize,
    oh: usize,
    ow: usize,
}

/// Direct 2-D convolution for small `c x kh x kw` (see the module docs). Weights `[co, c, kh, kw]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SmallConv2d {
    geo: ConvGeo,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

// tract keys ops by equality; weights are compared bitwise (no NaN surprises).
impl Eq for SmallConv2d {}
impl std::hash::Hash for SmallConv2d {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.geo.hash(state);
        self.weight.iter().chain(&self.bias).for_each(|v| v.to_bits().hash(state));
    }
}

impl Op for SmallConv2d {
    fn name(&self) -> StaticName {
        "AidosSmallConv2d".into()
    }
    op_as_typed_op!();
}

impl EvalOp for SmallConv2d {
    op_out_of_plan!();

    fn eval(&self, _: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let g = self.geo;
        let n = x.shape()[0];
        ensure!(
            x.shape() == [n, g.c, g.h, g.w],
            "AidosSmallConv2d: input {:?}, expected [N, {}, {}, {}]",
            x.shape(),
            g.c,
            g.h,
            g.w
        );
        let mut out = Tensor::zero::<f32>(&[n, g.co, g.oh, g.ow])?;
        let mut dst = out.try_as_plain_ram_mut()?;
        conv_direct(&g, &self.weight, &self.bias, x.try_as_plain_ram()?.as_slice::<f32>()?, dst.as_slice_mut::<f32>()?);
        drop(dst);
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for SmallConv2d {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let g = self.geo;
        let n = inputs[0].shape[0].clone();
        Ok(tvec!(f32::fact(&[n, g.co.into(), g.oh.into(), g.ow.into()])))
    }
    as_op!();
}

/// `out[n, o, y, x] = bias[o] + sum over (i, ky, kx) of weight[o, i, ky, kx] * in[n, i, y + ky - pad_top, x + kx - pad_left]`
/// (zero outside the input). Runs the AVX2+FMA build of the loop where the CPU has it (picked at run time: the
/// agent is built for baseline x86-64), else the portable one.
fn conv_direct(g: &ConvGeo, weight: &[f32], bias: &[f32], input: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for (checked just above).
        return unsafe { conv_direct_avx2(g, weight, bias, input, out) };
    }
    conv_direct_body::<false>(g, weight, bias, input, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn conv_direct_avx2(g: &ConvGeo, weight: &[f32], bias: &[f32], input: &[f32], out: &mut [f32]) {
    conv_direct_body::<true>(g, weight, bias, input, out)
}

/// The loop. The input is copied once into zero-padded planes of width `wp = ow + kw - 1`, and each output plane is
/// computed "wide", with that same row stride: then for one weight the whole plane is a single contiguous
/// multiply-add of the input plane shifted by `(ky, kx)`, and the `kw - 1` junk columns at the end of each wide row
/// are dropped when the plane is copied out. `FMA`: fused multiply-add (only where the instruction exists;
/// elsewhere `mul_add` would be a library call).
#[inline(always)]
fn conv_direct_body<const FMA: bool>(g: &ConvGeo, weight: &[f32], bias: &[f32], input: &[f32], out: &mut [f32]) {
    let (hp, wp) = (g.oh + g.kh - 1, g.ow + g.kw - 1);
    let (plane_in, plane_pad, plane_out) = (g.h * g.w, hp * wp, g.oh * g.ow);
    let wide_len = (g.oh - 1) * wp + g.ow;
    let mut padded = vec![0f32; g.c * plane_pad];
    let mut wide = vec![0f32; wide_len];
    for (x, y) in input.chunks_exact(g.c * plane_in).zip(out.chunks_exact_mut(g.co * plane_out)) {
        for (src, dst) in x.chunks_exact(plane_in).zip(padded.chunks_exact_mut(plane_pad)) {
            for (iy, row) in src.chunks_exact(g.w).enumerate() {
                let (py, px) = (iy + g.pad_top, g.pad_left);
                if py < hp {
                    let n = g.w.min(wp - px);
                    dst[py * wp + px..][..n].copy_from_slice(&row[..n]);
                }
            }
        }
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
            for (oy, row) in yo.chunks_exact_mut(g.ow).enumerate() {
                row.copy_from_slice(&wide[oy * wp..][..g.ow]);
            }
        }
    }
}

/// Non-overlapping 2-D max-pooling (window = stride), NCHW f32; trailing rows and columns that do not fill a
/// window are dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolMax2d {
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
}

impl Op for PoolMax2d {
    fn name(&self) -> StaticName {
        "AidosPoolMax2d".into()
    }
    op_as_typed_op!();
}

impl EvalOp for PoolMax2d {
    op_out_of_plan!();

    fn eval(&self, _: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let n = x.shape()[0];
        ensure!(
            x.shape() == [n, self.c, self.h, self.w],
            "AidosPoolMax2d: input {:?}, expected [N, {}, {}, {}]",
            x.shape(),
            self.c,
            self.h,
            self.w
        );
        let (oh, ow) = (self.h / self.kh, self.w / self.kw);
        let mut out = Tensor::zero::<f32>(&[n, self.c, oh, ow])?;
        let mut dst_view = out.try_as_plain_ram_mut()?;
        let (src, dst) = (x.try_as_plain_ram()?.as_slice::<f32>()?, dst_view.as_slice_mut::<f32>()?);
        for (p, q) in src.chunks_exact(self.h * self.w).zip(dst.chunks_exact_mut(oh * ow)) {
            for (oy, row) in q.chunks_exact_mut(ow).enumerate() {
                let rows = &p[oy * self.kh * self.w..];
                if self.kh == 2 && self.kw == 2 {
                    let (r0, r1) = (&rows[..2 * ow], &rows[self.w..self.w + 2 * ow]);
                    for ((o, a), b) in row.iter_mut().zip(r0.chunks_exact(2)).zip(r1.chunks_exact(2)) {
                        *o = a[0].max(a[1]).max(b[0].max(b[1]));
                    }
                } else {
                    for (ox, o) in row.iter_mut().enumerate() {
                        let mut m = f32::NEG_INFINITY;
                        for ky in 0..self.kh {
                            for v in &rows[ky * self.w + ox * self.kw..][..self.kw] {
                                m = m.max(*v);
                            }
                        }
                        *o = m;
                    }
                }
            }
        }
        drop(dst_view);
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for PoolMax2d {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let n = inputs[0].shape[0].clone();
        Ok(tvec!(f32::fact(&[n, self.c.into(), (self.h / self.kh).into(), (self.w / self.kw).into()])))
    }
    as_op!();
}
