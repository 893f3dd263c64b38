//! [`PoolMax2d`]: max-pooling whose window equals its stride (see the module docs of `tract_ops`).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// Non-overlapping 2-D max-pooling (window = stride), NCHW f32; trailing rows and columns that do not fill a
/// window are dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolMax2d {
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
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
            if self.kh == 2 && self.kw == 2 {
                max2x2(p, self.w, ow, q);
                continue;
            }
            for (oy, row) in q.chunks_exact_mut(ow).enumerate() {
                let rows = &p[oy * self.kh * self.w..];
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

/// 2x2 max-pool of stride 2 of a plane whose rows are `stride` floats apart into `out` (`pw` floats per row); a last
/// odd row or column is dropped, as ONNX's floor rounding does. Also the copy-out of the blocked convolutions
/// without AVX-512 (inlined: vectorised for the caller's features).
#[inline(always)]
pub(super) fn max2x2(src: &[f32], stride: usize, pw: usize, out: &mut [f32]) {
    for (py, row) in out.chunks_exact_mut(pw).enumerate() {
        let (r0, r1) = (&src[2 * py * stride..][..2 * pw], &src[(2 * py + 1) * stride..][..2 * pw]);
        for ((o, a), b) in row.iter_mut().zip(r0.chunks_exact(2)).zip(r1.chunks_exact(2)) {
            *o = a[0].max(a[1]).max(b[0].max(b[1]));
        }
    }
}
