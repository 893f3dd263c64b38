//! Our tract operators (`aidos_runtime::tract_ops`) against tract's own: the same ONNX graphs loaded both ways give
//! the same outputs (up to summation order) at batch 1 and at a larger batch, on shapes chosen to hit the edges:
//! odd sizes whose last pooling window is cut off, asymmetric and zero padding, several input channels,
//! rectangular windows, and layers our operators must leave to tract (a wide convolution, an overlapping pool).

#![cfg(feature = "tract")]

use aidos_runtime::tract::TractModel;
use aidos_runtime::{ModelRuntime, Tensor};

mod support;
use support::graph::{Graph, ints, values};

/// Loads `onnx` both ways, checks how many nodes run our operators, and compares outputs at batch 1 and 4.
fn same_as_tract(onnx: &[u8], chw: [usize; 3], own_ops: usize) {
    let ours = TractModel::load("ours", onnx).unwrap();
    let plain = TractModel::load_plain("plain", onnx).unwrap();
    assert_eq!(ours.own_ops(), own_ops, "nodes running our operators");
    assert_eq!(plain.own_ops(), 0);
    assert_eq!(ours.metadata().outputs, plain.metadata().outputs);
    let (mut a, mut b) = (ours.instance().unwrap(), plain.instance().unwrap());
    let row: usize = chw.iter().product();
    for n in [1usize, 4] {
        let x = Tensor::new(vec![n, chw[0], chw[1], chw[2]], values(n * row, 99 + n as u64)).unwrap();
        let (ya, yb) = (a.run(std::slice::from_ref(&x)).unwrap(), b.run(&[x]).unwrap());
        assert_eq!(ya[0].shape, yb[0].shape, "batch {n}");
        for (i, (p, q)) in ya[0].data.iter().zip(&yb[0].data).enumerate() {
            assert!((p - q).abs() <= 1e-5 * (1.0 + q.abs()), "batch {n}, value {i}: ours {p}, tract {q}");
        }
    }
}

#[test]
fn one_channel_conv_relu_and_pools_with_odd_sizes() {
    let mut g = Graph::default();
    let x = g.conv("x", 1, 4, [3, 3], [1, 1, 1, 1]);
    let x = g.relu(&x);
    let x = g.pool(&x, [2, 2], [2, 2]); // 13x11 -> 6x5: the last row and column are dropped
    let x = g.conv(&x, 4, 5, [3, 3], [1, 1, 1, 1]); // 4 x 9 = 36 inputs per output: tract's
    g.pool(&x, [3, 3], [3, 3]); // 6x5 -> 2x1
    same_as_tract(&g.onnx([1, 13, 11]), [1, 13, 11], 3);
}

#[test]
fn several_channels_asymmetric_padding_and_rectangular_windows() {
    let mut g = Graph::default();
    let x = g.conv("x", 3, 6, [2, 2], [0, 1, 2, 0]); // 3 x 4 = 12 inputs per output
    let x = g.pool(&x, [2, 3], [2, 3]);
    let x = g.conv(&x, 6, 2, [1, 1], [0, 0, 0, 0]); // 1x1: tract makes it a matrix product before we look
    g.relu(&x);
    same_as_tract(&g.onnx([3, 8, 10]), [3, 8, 10], 2);
}

#[test]
fn overlapping_pools_and_strided_convolutions_stay_with_tract() {
    let mut g = Graph::default();
    let x = g.pool("x", [3, 3], [2, 2]);
    let i = g.nodes.len();
    let (w, b) = (g.init(&format!("w{i}"), &[2, 1, 3, 3]), g.init(&format!("b{i}"), &[2]));
    g.node("Conv", &[x, w, b], vec![ints("kernel_shape", &[3, 3]), ints("strides", &[2, 2])]);
    same_as_tract(&g.onnx([1, 15, 15]), [1, 15, 15], 0);
}
