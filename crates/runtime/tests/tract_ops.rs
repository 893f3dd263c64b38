//! Our tract operators (`aidos_runtime::tract_ops`) against tract's own: the same ONNX graphs loaded both ways give
//! the same outputs (up to summation order) at batch 1 and at a larger batch, on shapes chosen to hit the edges:
//! odd sizes whose last pooling window is cut off, asymmetric and zero padding, several input channels,
//! rectangular windows, and layers our operators must leave to tract (an overlapping pool, a strided convolution;
//! a wide convolution where the CPU has no AVX2 or AVX-512), and the ReLU and pooling the register-blocked
//! convolutions take into their own pass. Every set of our kernels the CPU runs is checked (portable, AVX2,
//! AVX-512).

#![cfg(feature = "tract")]

use aidos_runtime::tract::TractModel;
use aidos_runtime::tract_ops::Isa;
use aidos_runtime::{ModelRuntime, Tensor};

mod support;
use support::graph::{Graph, ints, values};

/// Loads `onnx` with each set of our kernels this CPU runs and with tract's alone, checks how many nodes run ours
/// (`portable` with the portable kernels, `blocked` with a register-blocked convolution), and compares outputs at
/// batch 1 and 4.
fn same_as_tract(onnx: &[u8], chw: [usize; 3], portable: usize, blocked: usize) {
    for isa in Isa::supported() {
        let own = if isa == Isa::Portable { portable } else { blocked };
        same_outputs(&format!("{isa:?}"), TractModel::load_isa("ours", onnx, isa).unwrap(), onnx, chw, own);
    }
    assert_eq!(
        TractModel::load("best", onnx).unwrap().own_ops(),
        if Isa::detect() == Isa::Portable { portable } else { blocked }
    );
}

fn same_outputs(kernels: &str, ours: TractModel, onnx: &[u8], chw: [usize; 3], own_ops: usize) {
    let plain = TractModel::load_plain("plain", onnx).unwrap();
    assert_eq!(ours.own_ops(), own_ops, "{kernels} kernels: nodes running our operators");
    assert_eq!(plain.own_ops(), 0);
    assert_eq!(ours.metadata().outputs, plain.metadata().outputs);
    let (mut a, mut b) = (ours.instance().unwrap(), plain.instance().unwrap());
    let row: usize = chw.iter().product();
    for n in [1usize, 4] {
        let x = Tensor::new(vec![n, chw[0], chw[1], chw[2]], values(n * row, 99 + n as u64)).unwrap();
        let (ya, yb) = (a.run(std::slice::from_ref(&x)).unwrap(), b.run(&[x]).unwrap());
        assert_eq!(ya[0].shape, yb[0].shape, "{kernels} kernels, batch {n}");
        for (i, (p, q)) in ya[0].data.iter().zip(&yb[0].data).enumerate() {
            assert!(
                (p - q).abs() <= 1e-5 * (1.0 + q.abs()),
                "{kernels} kernels, batch {n}, value {i}: ours {p}, tract {q}"
            );
        }
    }
}

#[test]
fn one_channel_conv_relu_and_pools_with_odd_sizes() {
    let mut g = Graph::default();
    let x = g.conv("x", 1, 4, [3, 3], [1, 1, 1, 1]);
    let x = g.relu(&x);
    let x = g.pool(&x, [2, 2], [2, 2]); // 13x11 -> 6x5: the last row and column are dropped
    let x = g.conv(&x, 4, 5, [3, 3], [1, 1, 1, 1]); // 4 x 9 = 36 inputs per output: too many for the portable kernel
    g.pool(&x, [3, 3], [3, 3]); // 6x5 -> 2x1
    same_as_tract(&g.onnx([1, 13, 11]), [1, 13, 11], 3, 3); // blocked: conv+relu+pool in one op
}

#[test]
fn several_channels_asymmetric_padding_and_rectangular_windows() {
    let mut g = Graph::default();
    let x = g.conv("x", 3, 6, [2, 2], [0, 1, 2, 0]); // 3 x 4 = 12 inputs per output
    let x = g.pool(&x, [2, 3], [2, 3]);
    let x = g.conv(&x, 6, 2, [1, 1], [0, 0, 0, 0]); // 1x1: tract makes it a matrix product before we look
    g.relu(&x);
    same_as_tract(&g.onnx([3, 8, 10]), [3, 8, 10], 2, 2);
}

#[test]
fn overlapping_pools_and_strided_convolutions_stay_with_tract() {
    let mut g = Graph::default();
    let x = g.pool("x", [3, 3], [2, 2]);
    let i = g.nodes.len();
    let (w, b) = (g.init(&format!("w{i}"), &[2, 1, 3, 3]), g.init(&format!("b{i}"), &[2]));
    g.node("Conv", &[x, w, b], vec![ints("kernel_shape", &[3, 3]), ints("strides", &[2, 2])]);
    same_as_tract(&g.onnx([1, 15, 15]), [1, 15, 15], 0, 0);
}

/// Convolutions too wide for the portable kernel: the blocked ones take them where the CPU has AVX2 or AVX-512. Shapes hit its
/// edges: the zoo CNN's 32 -> 64 layer (14 chunks of 16 positions: tiles of 3 and a tail of 2), output channels
/// that do not fill the last block of 8, wide rows spanning several chunks, asymmetric padding, a rectangular
/// kernel, a single output row, a single chunk.
#[test]
fn wide_convolutions_match_tract() {
    let mut g = Graph::default();
    let x = g.conv("x", 32, 64, [3, 3], [1, 1, 1, 1]);
    let x = g.relu(&x);
    g.pool(&x, [2, 2], [2, 2]);
    same_as_tract(&g.onnx([32, 14, 14]), [32, 14, 14], 1, 1); // blocked: one fused op

    let mut g = Graph::default();
    let x = g.conv("x", 5, 13, [3, 2], [1, 0, 2, 1]); // 5 x 6 = 30 inputs (portable too); 9x23 -> 10x23: rows of 24 positions, 13 = 8 + 5
    g.conv(&x, 13, 3, [2, 2], [0, 0, 0, 0]); // 13 x 4 = 52 inputs, 3 outputs: one partial block
    same_as_tract(&g.onnx([5, 9, 23]), [5, 9, 23], 1, 2);

    let mut g = Graph::default();
    let x = g.conv("x", 3, 8, [5, 5], [0, 0, 0, 0]); // 7x7 -> 3x3: 21 positions, 2 chunks
    g.conv(&x, 8, 9, [3, 3], [0, 0, 0, 0]); // 3x3 -> 1x1: one row, one chunk
    same_as_tract(&g.onnx([3, 7, 7]), [3, 7, 7], 0, 2);
}

/// What the blocked convolutions take along: a 2x2 pool without a ReLU, over pooled rows longer than one vector
/// (17 values) with an odd row and column dropped; and not a ReLU whose input is also used elsewhere.
#[test]
fn fused_relu_and_pool_match_tract() {
    let mut g = Graph::default();
    let x = g.conv("x", 2, 16, [3, 3], [1, 1, 1, 1]); // 2 x 9 = 18 inputs: the portable kernel takes it too
    g.pool(&x, [2, 2], [2, 2]); // 5x35 -> 2x17
    same_as_tract(&g.onnx([2, 5, 35]), [2, 5, 35], 2, 1);

    let mut g = Graph::default();
    let c = g.conv("x", 1, 8, [3, 3], [1, 1, 1, 1]);
    let r = g.relu(&c);
    g.node("Add", &[r, c], vec![]); // the convolution's output is read twice: the ReLU stays separate
    same_as_tract(&g.onnx([1, 6, 6]), [1, 6, 6], 1, 1);
}
