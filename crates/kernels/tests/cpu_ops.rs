//! Conformance of our flex kernels (`aidos_kernels::cpu`) against burn's own operations: forward values, and
//! gradients through burn's autodiff, for the convolution (input, weight, bias) on the reference CNN's layer
//! shapes and odd ones (no padding, wide padding, 1x1, one sample), and for the fused relu + max pooling.

use aidos_kernels::burn::tensor::activation::relu;
use aidos_kernels::burn::tensor::module::{conv2d as burn_conv2d, max_pool2d};
use aidos_kernels::burn::tensor::ops::{ConvOptions, MaxPoolOptions};
use aidos_kernels::burn::tensor::{Device, Tensor, TensorData};
use aidos_kernels::cpu::{Path, conv2d, conv2d_path, path, relu_max_pool2d};

fn data(dims: [usize; 4], seed: u32) -> TensorData {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1 << 24) as f32 - 0.5)
        .collect();
    TensorData::new(v, dims.to_vec())
}

fn vec(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn close(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs() / (1.0 + y.abs())).fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "{what}: max relative difference {worst}");
}

/// (n, c_in, h, w, c_out, k, padding)
const CASES: [(usize, usize, usize, usize, usize, usize, usize); 6] = [
    (8, 1, 28, 28, 32, 3, 1),
    (8, 32, 14, 14, 64, 3, 1),
    (3, 2, 9, 7, 5, 3, 0),
    (2, 3, 6, 6, 4, 5, 3),
    (4, 6, 5, 5, 3, 1, 0),
    (1, 4, 8, 8, 6, 3, 1),
];

#[test]
fn forward_and_gradients_match_burn() {
    let dev = Device::flex().autodiff();
    for (i, &(n, c_in, h, w, c_out, k, p)) in CASES.iter().enumerate() {
        let ho = h + 2 * p + 1 - k;
        let wo = w + 2 * p + 1 - k;
        let run = |ours: bool, input_grad: bool| {
            let x = Tensor::<4>::from_data(data([n, c_in, h, w], 1 + i as u32), &dev);
            let x = if input_grad { x.require_grad() } else { x };
            let wt = Tensor::<4>::from_data(data([c_out, c_in, k, k], 2), &dev).require_grad();
            let b = Tensor::<4>::from_data(data([1, 1, 1, c_out], 3), &dev).reshape([c_out]).detach().require_grad();
            let g = Tensor::<4>::from_data(data([n, c_out, ho, wo], 4), &dev);
            assert_eq!(conv2d_path(&x, &wt), Path::FlexAutodiff);
            let y = if ours {
                conv2d(x.clone(), wt.clone(), b.clone(), p)
            } else {
                burn_conv2d(x.clone(), wt.clone(), Some(b.clone()), ConvOptions::new([1, 1], [p, p], [1, 1], 1))
            };
            let grads = (y.clone() * g).sum().backward();
            let dx = x.grad(&grads).map(vec);
            let dw = vec(wt.grad(&grads).unwrap());
            let db = b.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
            (vec(y.inner()), dx, dw, db)
        };
        for input_grad in [true, false] {
            let (ours, theirs) = (run(true, input_grad), run(false, input_grad));
            let case = format!("case {i} {:?} input_grad={input_grad}", CASES[i]);
            close(&format!("{case}: y"), &ours.0, &theirs.0);
            assert_eq!(ours.1.is_some(), input_grad, "{case}: an input gradient exactly when asked for");
            if let (Some(a), Some(b)) = (&ours.1, &theirs.1) {
                close(&format!("{case}: dx"), a, b);
            }
            close(&format!("{case}: dw"), &ours.2, &theirs.2);
            close(&format!("{case}: db"), &ours.3, &theirs.3);
        }
    }
}

#[test]
fn inference_without_autodiff_matches_burn() {
    let dev = Device::flex();
    for (i, &(n, c_in, h, w, c_out, k, p)) in CASES.iter().enumerate() {
        let x = Tensor::<4>::from_data(data([n, c_in, h, w], 9 + i as u32), &dev);
        let wt = Tensor::<4>::from_data(data([c_out, c_in, k, k], 2), &dev);
        let b = Tensor::<4>::from_data(data([1, 1, 1, c_out], 3), &dev).reshape([c_out]);
        assert_eq!(conv2d_path(&x, &wt), Path::Flex);
        let ours = conv2d(x.clone(), wt.clone(), b.clone(), p);
        let theirs = burn_conv2d(x, wt, Some(b), ConvOptions::new([1, 1], [p, p], [1, 1], 1));
        close(&format!("case {i}"), &vec(ours), &vec(theirs));
    }
}

#[test]
fn a_strided_input_view_is_read_correctly() {
    // A permuted (non-contiguous) input: the op must read it through its layout, not as raw storage.
    let dev = Device::flex();
    let x = Tensor::<4>::from_data(data([2, 7, 7, 3], 5), &dev).permute([0, 3, 1, 2]);
    let wt = Tensor::<4>::from_data(data([4, 3, 3, 3], 6), &dev);
    let b = Tensor::<4>::from_data(data([1, 1, 1, 4], 7), &dev).reshape([4]);
    let ours = conv2d(x.clone(), wt.clone(), b.clone(), 1);
    let theirs = burn_conv2d(x, wt, Some(b), ConvOptions::new([1, 1], [1, 1], [1, 1], 1));
    close("permuted input", &vec(ours), &vec(theirs));
}

#[test]
fn relu_max_pool_matches_burns_relu_then_max_pool() {
    // (n, c, h, w, k): the reference CNN's two poolings, odd sizes (floor), a 3x3 window.
    let cases = [(8, 32, 28, 28, 2), (8, 64, 14, 14, 2), (2, 3, 7, 9, 2), (3, 2, 9, 8, 3)];
    for (i, &(n, c, h, w, k)) in cases.iter().enumerate() {
        let ad = Device::flex().autodiff();
        let g = Tensor::<4>::from_data(data([n, c, h / k, w / k], 8), &ad);
        let run = |ours: bool| {
            // Values in [-0.5, 0.5): many windows are all negative, so the relu gate is exercised.
            let x = Tensor::<4>::from_data(data([n, c, h, w], 20 + i as u32), &ad).require_grad();
            assert_eq!(path(&x), Path::FlexAutodiff);
            let y = if ours {
                relu_max_pool2d(x.clone(), k)
            } else {
                max_pool2d(relu(x.clone()), MaxPoolOptions::new([k, k]))
            };
            let grads = (y.clone() * g.clone()).sum().backward();
            (vec(y.inner()), vec(x.grad(&grads).unwrap()))
        };
        let (ours, theirs) = (run(true), run(false));
        close(&format!("pool case {i}: y"), &ours.0, &theirs.0);
        close(&format!("pool case {i}: dx"), &ours.1, &theirs.1);
        let x = Tensor::<4>::from_data(data([n, c, h, w], 20 + i as u32), &Device::flex());
        assert_eq!(path(&x), Path::Flex);
        close(&format!("pool case {i}: inference"), &vec(relu_max_pool2d(x, k)), &ours.0);
    }
}
