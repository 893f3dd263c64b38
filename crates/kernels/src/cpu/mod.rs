//! Hand-written CPU kernels for burn's `flex` backend, plugged into burn's autodiff as custom operations.
//!
//! [`conv2d`] and [`relu_max_pool2d`] are what the model zoo (`aidos-train`) calls. On a flex device (with or without
//! autodiff, no gradient checkpointing) with f32 tensors it runs [`conv`]'s kernels and registers its own backward
//! step; on any other device (wgpu, cuda) it is burn's `conv2d` (and `relu` + `max_pool2d`), unchanged. Both
//! compute the same function: `tests/cpu_ops.rs` checks values and gradients against burn's own operations.
//!
//! How the op meets burn (burn 0.22, feature `extension`): the tensors are taken apart into
//! `Autodiff<Flex>` primitives (`Tensor::try_into_primitive`), a [`Backward`] step is prepared on their graph
//! nodes, the forward runs on the flex buffers, and the result is wrapped back (`Tensor::from_primitive`).
//! Flex tensors are `Arc`-backed, so keeping the input and weight for the backward pass copies nothing.

pub mod conv;
pub(crate) mod gemm;
pub mod pool;

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex, GradientCheckpointingStrategy};
use burn::tensor::activation::relu;
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
use burn::tensor::{DType, Device, Tensor, TensorData};

use conv::ConvShape;

type Ad = Autodiff<Flex, NoCheckpointing>;

/// Which implementation [`conv2d`] and [`relu_max_pool2d`] take for given operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Flex without autodiff (evaluation, export checks).
    Flex,
    /// Flex under autodiff (training).
    FlexAutodiff,
    /// Anything else: burn's own operations.
    Burn,
}

/// The implementation the operations here take for a tensor like `x` (what the tests assert, so that a silent
/// fallback to burn cannot pass for our kernels).
pub fn path(x: &Tensor<4>) -> Path {
    let device = x.device();
    if device != Device::flex() || x.dtype() != DType::F32 {
        return Path::Burn;
    }
    match (device.is_autodiff(), device.gradient_checkpointing_strategy()) {
        (false, _) => Path::Flex,
        // `Autodiff<Flex>` is the no-checkpointing variant; a balanced-checkpointing device is left to burn.
        (true, Some(GradientCheckpointingStrategy::Disabled)) => Path::FlexAutodiff,
        (true, _) => Path::Burn,
    }
}

/// [`path`] for a convolution: both operands must qualify, and the kernel must be square.
pub fn conv2d_path(x: &Tensor<4>, weight: &Tensor<4>) -> Path {
    let [_, _, kh, kw] = weight.dims();
    let p = path(x);
    if kh != kw || weight.device() != x.device() || path(weight) != p {
        return Path::Burn;
    }
    p
}

/// 2-D convolution, stride 1, dilation 1, one group, `padding` zeros on every side: `x` `[n, c_in, h, w]`,
/// `weight` `[c_out, c_in, k, k]`, `bias` `[c_out]` -> `[n, c_out, h+2p-k+1, w+2p-k+1]`.
pub fn conv2d(x: Tensor<4>, weight: Tensor<4>, bias: Tensor<1>, padding: usize) -> Tensor<4> {
    match conv2d_path(&x, &weight) {
        Path::Burn => {
            burn::tensor::module::conv2d(x, weight, Some(bias), ConvOptions::new([1, 1], [padding, padding], [1, 1], 1))
        }
        Path::Flex => {
            let flex = |t: Tensor<4>| t.try_into_primitive::<Flex>().expect("a flex tensor on a flex device");
            let b = bias.try_into_primitive::<Flex>().expect("a flex tensor on a flex device");
            Tensor::from_primitive::<Flex>(forward(&flex(x), &flex(weight), &b, padding, false).0)
        }
        Path::FlexAutodiff => {
            let ad = |t: Tensor<4>| {
                t.try_into_primitive::<Ad>().expect("an autodiff flex tensor on an autodiff flex device")
            };
            let (x, weight) = (ad(x), ad(weight));
            let bias = bias.try_into_primitive::<Ad>().expect("an autodiff flex tensor on an autodiff flex device");
            let out = match ConvBackward
                .prepare::<NoCheckpointing>([x.node(), weight.node(), bias.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let (y, cols, shape) = forward(x.primitive(), weight.primitive(), bias.primitive(), padding, true);
                    let state =
                        ConvState { shape, weight: weight.primitive().clone(), cols: Arc::new(cols.expect("kept")) };
                    prep.finish(state, y)
                }
                OpsKind::UnTracked(prep) => {
                    prep.finish(forward(x.primitive(), weight.primitive(), bias.primitive(), padding, false).0)
                }
            };
            Tensor::from_primitive::<Ad>(out)
        }
    }
}

/// `relu` then max pooling with a `k x k` window and stride `k` (no padding, floor): `[n, c, h, w]` ->
/// `[n, c, h/k, w/k]`.
pub fn relu_max_pool2d(x: Tensor<4>, k: usize) -> Tensor<4> {
    match path(&x) {
        Path::Burn => burn::tensor::module::max_pool2d(relu(x), MaxPoolOptions::new([k, k])),
        Path::Flex => {
            let x = x.try_into_primitive::<Flex>().expect("a flex tensor on a flex device");
            Tensor::from_primitive::<Flex>(pool_forward(&x, k, false).0)
        }
        Path::FlexAutodiff => {
            let x = x.try_into_primitive::<Ad>().expect("an autodiff flex tensor on an autodiff flex device");
            let out = match PoolBackward.prepare::<NoCheckpointing>([x.node()]).compute_bound().stateful() {
                OpsKind::Tracked(prep) => {
                    let (y, idx) = pool_forward(x.primitive(), k, true);
                    let x_dims = x.primitive().layout().shape().dims::<4>();
                    prep.finish(PoolState { x_dims, k, indices: Arc::new(idx.expect("kept")) }, y)
                }
                OpsKind::UnTracked(prep) => prep.finish(pool_forward(x.primitive(), k, false).0),
            };
            Tensor::from_primitive::<Ad>(out)
        }
    }
}

/// The pooling geometry of an `[n, c, h, w]` input: one plane per (sample, channel).
fn pool_shape([n, c, h, w]: [usize; 4], k: usize) -> pool::PoolShape {
    pool::PoolShape { planes: n * c, h, w, k }
}

fn pool_forward(x: &FlexTensor, k: usize, keep: bool) -> (FlexTensor, Option<Vec<u32>>) {
    let dims = x.layout().shape().dims::<4>();
    let shape = pool_shape(dims, k);
    let x = contiguous(x);
    let (y, idx) = pool::forward(slice(&x), &shape, keep);
    (tensor(y, &[dims[0], dims[1], shape.ho(), shape.wo()]), idx)
}

/// What the backward step keeps: the input's shape (the gradient has it) and the winners' indices.
#[derive(Clone)]
struct PoolState {
    x_dims: [usize; 4],
    k: usize,
    indices: Arc<Vec<u32>>,
}

impl std::fmt::Debug for PoolState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PoolState({:?}, k={})", self.x_dims, self.k)
    }
}

#[derive(Debug)]
struct PoolBackward;

impl Backward<Flex, 1> for PoolBackward {
    type State = PoolState;

    fn backward(self, ops: Ops<PoolState, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = contiguous(&grads.consume::<Flex>(&ops.node));
        if let Some(node) = node_x {
            let dx = pool::backward(&ops.state.indices, slice(&dy), &pool_shape(ops.state.x_dims, ops.state.k));
            grads.register::<Flex>(node.id, tensor(dx, &ops.state.x_dims));
        }
    }
}

fn contiguous(t: &FlexTensor) -> FlexTensor {
    t.to_contiguous()
}

fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("a contiguous f32 flex tensor")
}

fn tensor(data: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape.to_vec()))
}

fn forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: &FlexTensor,
    pad: usize,
    keep_cols: bool,
) -> (FlexTensor, Option<Vec<f32>>, ConvShape) {
    let [n, c_in, h, w] = x.layout().shape().dims::<4>();
    let [c_out, _, k, _] = weight.layout().shape().dims::<4>();
    let shape = ConvShape { n, c_in, h, w, c_out, k, pad };
    let (x, weight, bias) = (contiguous(x), contiguous(weight), contiguous(bias));
    let (y, cols) = conv::forward(slice(&x), slice(&weight), Some(slice(&bias)), &shape, keep_cols);
    (tensor(y, &[n, c_out, shape.ho(), shape.wo()]), cols, shape)
}

/// What the backward step keeps: the weight (for the input gradient) and the column matrices (for the weight
/// gradient), both shared, never copied.
#[derive(Clone)]
struct ConvState {
    shape: ConvShape,
    weight: FlexTensor,
    cols: Arc<Vec<f32>>,
}

impl std::fmt::Debug for ConvState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConvState({:?}, {} column floats)", self.shape, self.cols.len())
    }
}

#[derive(Debug)]
struct ConvBackward;

impl Backward<Flex, 3> for ConvBackward {
    type State = ConvState;

    fn backward(self, ops: Ops<ConvState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let s = ops.state.shape;
        // `consume` may hand out a buffer shared with another consumer: only read it.
        let dy = contiguous(&grads.consume::<Flex>(&ops.node));
        let dy = slice(&dy);
        if node_w.is_some() || node_b.is_some() {
            let (dw, db) = conv::backward_weight(&ops.state.cols, dy, &s);
            if let Some(node) = node_w {
                grads.register::<Flex>(node.id, tensor(dw, &[s.c_out, s.c_in, s.k, s.k]));
            }
            if let Some(node) = node_b {
                grads.register::<Flex>(node.id, tensor(db, &[s.c_out]));
            }
        }
        if let Some(node) = node_x {
            let weight = contiguous(&ops.state.weight);
            let dx = conv::backward_input(slice(&weight), dy, &s);
            grads.register::<Flex>(node.id, tensor(dx, &[s.n, s.c_in, s.h, s.w]));
        }
    }
}
