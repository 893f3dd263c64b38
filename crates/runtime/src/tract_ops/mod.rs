//! Tract operators of our own for the shapes where tract's generic paths are slow at small batch, swapped into a
//! decluttered model before tract optimises it ([`substitute`]). Measured on the zoo's MNIST CNN at batch 1
//! (benches/README.md): tract's max-pool walks a generic patch geometry one scalar at a time; a convolution with
//! one input channel runs as a lazy im2col feeding a 40x2 matrix kernel with k = 9; and the 32 -> 64 convolution
//! spends a third of its time gathering its lazy im2col panels.
//!
//! * [`DirectConv2d`] (`conv.rs`, `conv_blocked.rs`): a direct convolution (NCHW, f32, stride 1, no dilation, one
//!   group). With AVX-512F or AVX2 + FMA (detected at load: the agent is built for baseline x86-64) a
//!   register-blocked kernel takes convolutions of any size, with a ReLU and a 2x2 max-pool that follow; without
//!   them a portable loop takes those whose `input channels x kernel area` is at most [`SMALL_CONV_MAX_K`].
//! * [`PoolMax2d`] (`pool.rs`): max-pooling whose window equals its stride (no overlap, no padding, no dilation),
//!   NCHW, f32, windows that run past the edge dropped as ONNX's floor rounding does.
//!
//! Everything else stays tract's. Both ops take any batch size (the batch dimension may be symbolic) but need the
//! channel and spatial dimensions known at load. The result is the same arithmetic up to summation order: the
//! tests (`crates/runtime/tests/tract_ops.rs`) compare against tract's own operators.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, MaxPool, PaddingSpec, PoolSpec};
use tract_onnx::tract_core::ops::math::Max;
use tract_onnx::tract_core::ops::nn::DataFormat;

mod conv;
#[cfg(target_arch = "x86_64")]
mod conv_blocked;
mod pool;

use conv::ConvGeo;
pub use conv::DirectConv2d;
pub use pool::PoolMax2d;

/// Largest `input channels x kernel height x kernel width` the portable [`DirectConv2d`] takes; beyond it tract's
/// matrix product wins.
pub const SMALL_CONV_MAX_K: usize = 32;

/// Which of our kernels may run (ordered: each runs on fewer CPUs than the one before).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// The portable kernels only (auto-vectorised loops, AVX2+FMA where present).
    Portable,
    /// Also the AVX2 + FMA register-blocked convolution.
    Avx2,
    /// Also the AVX-512F register-blocked convolution (instead of the AVX2 one).
    Avx512,
}

impl Isa {
    /// The best this CPU runs.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Every kernel set this CPU runs, from the portable one up.
    pub fn supported() -> Vec<Isa> {
        [Isa::Portable, Isa::Avx2, Isa::Avx512].into_iter().filter(|i| *i <= Isa::detect()).collect()
    }

    /// The blocked convolution this set uses, if any.
    fn blocked(self) -> Option<conv::Blocked> {
        match self {
            Isa::Portable => None,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Some(conv::Blocked::Avx2),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Some(conv::Blocked::Avx512),
            #[cfg(not(target_arch = "x86_64"))]
            _ => None,
        }
    }
}

/// Replaces tract's `Conv` and `MaxPool` nodes with [`DirectConv2d`] and [`PoolMax2d`] where they apply, using the
/// kernels `isa` allows (it must not name more than the CPU has: see [`Isa::detect`]). Returns how many nodes were
/// replaced.
pub fn substitute(model: &mut TypedModel, isa: Isa) -> TractResult<usize> {
    let mut replaced = 0;
    // Nodes taken into a fused op: disconnected by its patch, still in the graph until tract compacts it.
    let mut fused = std::collections::HashSet::new();
    for id in model.eval_order()? {
        if fused.contains(&id) {
            continue;
        }
        let node = model.node(id);
        let patch = if let Some(conv) = node.op_as::<Conv>() {
            match direct_conv(model, node, conv, isa)? {
                Some(op) => Some(conv_patch(model, node, op, &mut fused)?),
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

/// Wires `op` in place of the convolution `node`, taking into it a ReLU that follows, then a 2x2 max-pool of
/// stride 2 where the kernel does those, when each is the only consumer of the value before it and that value is
/// not a model output. Adds the nodes taken to `fused`.
fn conv_patch(
    model: &TypedModel,
    node: &TypedNode,
    mut op: DirectConv2d,
    fused: &mut std::collections::HashSet<usize>,
) -> TractResult<TypedModelPatch> {
    let mut last = node;
    if let Some(next) = sole_consumer(model, last)?
        && is_relu(model, next, last)?
    {
        op = op.with_relu();
        fused.insert(next.id);
        last = next;
    }
    if op.can_pool()
        && let Some(next) = sole_consumer(model, last)?
        && let Some(pool) = next.op_as::<MaxPool>()
        && pool_max(model, next, pool)?.is_some_and(|p| (p.kh, p.kw) == (2, 2))
    {
        op = op.with_pool2();
        fused.insert(next.id);
        last = next;
    }
    let mut patch = TypedModelPatch::default();
    let x = patch.tap_model(model, node.inputs[0])?;
    let y = patch.wire_node(&node.name, op, &[x])?;
    patch.shunt_outside(model, OutletId::new(last.id, 0), y[0])?;
    Ok(patch)
}

/// The node that alone consumes `node`'s single output, unless that output is also a model output.
fn sole_consumer<'m>(model: &'m TypedModel, node: &TypedNode) -> TractResult<Option<&'m TypedNode>> {
    if model.output_outlets()?.contains(&OutletId::new(node.id, 0)) {
        return Ok(None);
    }
    model.single_succ(node.id)
}

/// `node` is `max(from, 0)` (how tract declutters ONNX's Relu), with `0` a constant scalar.
fn is_relu(model: &TypedModel, node: &TypedNode, from: &TypedNode) -> TractResult<bool> {
    let Some(bin) = node.op_as::<TypedBinOp>() else { return Ok(false) };
    if !bin.0.is::<Max>() || node.inputs.len() != 2 {
        return Ok(false);
    }
    let src = OutletId::new(from.id, 0);
    let other = if node.inputs[0] == src { node.inputs[1] } else { node.inputs[0] };
    let zero = model
        .outlet_fact(other)?
        .konst
        .as_ref()
        .is_some_and(|k| k.len() == 1 && k.datum_type() == f32::datum_type() && k.is_all_zero().unwrap_or(false));
    Ok(zero
        && node.inputs.contains(&src)
        && model.outlet_fact(OutletId::new(node.id, 0))?.shape == model.outlet_fact(src)?.shape)
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

fn direct_conv(model: &TypedModel, node: &TypedNode, conv: &Conv, isa: Isa) -> TractResult<Option<DirectConv2d>> {
    let spec = &conv.pool_spec;
    let Some([c, h, w]) = chw(model, node, spec)? else { return Ok(None) };
    if conv.group != 1 || conv.q_params.is_some() || conv.kernel_fmt != KernelFormat::OIHW || node.inputs.len() != 3 {
        return Ok(None);
    }
    if spec.kernel_shape.len() != 2 || !ones(&spec.strides) || !ones(&spec.dilations) {
        return Ok(None);
    }
    let [kh, kw] = [spec.kernel_shape[0], spec.kernel_shape[1]];
    let blocked = isa.blocked();
    if c * kh * kw > SMALL_CONV_MAX_K && blocked.is_none() {
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
    let geo = ConvGeo { c, h, w, co, kh, kw, pad_top: pad_h.0, pad_left: pad_w.0, oh, ow };
    Ok(Some(DirectConv2d::new(geo, k.try_as_plain_ram()?.as_slice::<f32>()?.to_vec(), bias, blocked)))
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
