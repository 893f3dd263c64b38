//! Burn modules for the MLP and CNN, built from [`ModelConfig`].
//!
//! Invariants:
//! * Initialisation is PyTorch's default for `nn.Linear`/`nn.Conv2d`: weights and biases
//!   `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, drawn from our own RNG stream `(seed, INIT, layer)`,
//!   so the same `(config, seed)` gives bit-identical weights regardless of backend RNG state.
//! * Inputs are always flattened rows `[batch, input_size]`; the CNN reshapes to `[b, c, h, w]`.
//! * Dense weights are stored `[in, out]` (burn's `linear` convention: `y = x W + b`).
//! * Dropout masks come from an explicit RNG passed to `forward_train` (see `rng.rs`), never
//!   from the backend's global RNG.

use burn::module::{Module, Param};
use burn::tensor::activation;
use burn::tensor::module::linear;
use burn::tensor::{Device, Tensor, TensorData};

use crate::config::{Activation, ModelConfig};
use crate::rng::{self, SplitMix64};

fn uniform(n: usize, bound: f32, r: &mut SplitMix64) -> Vec<f32> {
    (0..n).map(|_| (r.next_f32() * 2.0 - 1.0) * bound).collect()
}

/// Fully connected layer, weight `[in, out]`.
#[derive(Module, Debug)]
pub struct Dense {
    pub weight: Param<Tensor<2>>,
    pub bias: Param<Tensor<1>>,
}

impl Dense {
    fn init(d_in: usize, d_out: usize, r: &mut SplitMix64, device: &Device) -> Self {
        let b = 1.0 / (d_in as f32).sqrt();
        Dense {
            weight: Param::from_data(TensorData::new(uniform(d_in * d_out, b, r), [d_in, d_out]), device),
            bias: Param::from_data(TensorData::new(uniform(d_out, b, r), [d_out]), device),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        linear(x, self.weight.val(), Some(self.bias.val()))
    }
}

/// 2-D convolution, stride 1, symmetric zero padding.
#[derive(Module, Debug)]
pub struct Conv {
    /// `[out, in, k, k]`.
    pub weight: Param<Tensor<4>>,
    pub bias: Param<Tensor<1>>,
    pub padding: usize,
}

impl Conv {
    fn init(c_in: usize, c_out: usize, k: usize, padding: usize, r: &mut SplitMix64, device: &Device) -> Self {
        let b = 1.0 / ((c_in * k * k) as f32).sqrt();
        Conv {
            weight: Param::from_data(TensorData::new(uniform(c_out * c_in * k * k, b, r), [c_out, c_in, k, k]), device),
            bias: Param::from_data(TensorData::new(uniform(c_out, b, r), [c_out]), device),
            padding,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        aidos_kernels::cpu::conv2d(x, self.weight.val(), self.bias.val(), self.padding)
    }
}

/// Multi-layer perceptron.
#[derive(Module, Debug)]
pub struct Mlp {
    pub layers: Vec<Dense>,
    /// 0 = relu, 1 = gelu, 2 = tanh (a primitive so the derive treats it as a constant).
    pub activation: usize,
    pub dropout: f64,
}

/// Small convolutional network.
#[derive(Module, Debug)]
pub struct Cnn {
    pub convs: Vec<Conv>,
    pub dense: Vec<Dense>,
    pub head: Dense,
    pub input: [usize; 3],
    pub pool: usize,
    pub dropout: f64,
}

/// A model of either kind; pick with [`Model::init`].
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // one model per trainer; boxing buys nothing
pub enum Model {
    Mlp(Mlp),
    Cnn(Cnn),
}

fn act_code(a: Activation) -> usize {
    match a {
        Activation::Relu => 0,
        Activation::Gelu => 1,
        Activation::Tanh => 2,
    }
}

fn apply_act<const D: usize>(code: usize, x: Tensor<D>) -> Tensor<D> {
    match code {
        1 => activation::gelu(x),
        2 => activation::tanh(x),
        _ => activation::relu(x),
    }
}

/// Inverted dropout with an explicit RNG: keep with prob `1-p`, scale kept values by `1/(1-p)`.
fn dropout<const D: usize>(x: Tensor<D>, p: f64, r: Option<&mut SplitMix64>) -> Tensor<D> {
    let Some(r) = r else { return x };
    if p <= 0.0 {
        return x;
    }
    let dims = x.dims();
    let n: usize = dims.iter().product();
    let scale = (1.0 / (1.0 - p)) as f32;
    let pf = p as f32;
    let mask: Vec<f32> = (0..n).map(|_| if r.next_f32() < pf { 0.0 } else { scale }).collect();
    let mask = Tensor::<D>::from_data(TensorData::new(mask, dims), &x.device());
    x * mask
}

impl Model {
    /// Build a freshly initialised model (config must be validated).
    pub fn init(cfg: &ModelConfig, seed: u64, device: &Device) -> Model {
        let mut layer = 0u64;
        let mut next_rng = || {
            layer += 1;
            SplitMix64::stream(seed, rng::INIT, layer)
        };
        match cfg {
            ModelConfig::Mlp(m) => Model::Mlp(Mlp {
                layers: m.layers.windows(2).map(|w| Dense::init(w[0], w[1], &mut next_rng(), device)).collect(),
                activation: act_code(m.activation),
                dropout: m.dropout,
            }),
            ModelConfig::Cnn(c) => {
                let (mut ch, mut h, mut w) = (c.input[0], c.input[1], c.input[2]);
                let mut convs = Vec::new();
                for l in &c.conv {
                    let p = l.padding();
                    convs.push(Conv::init(ch, l.channels, l.kernel, p, &mut next_rng(), device));
                    ch = l.channels;
                    h = (h + 2 * p - l.kernel + 1) / c.pool;
                    w = (w + 2 * p - l.kernel + 1) / c.pool;
                }
                let mut d_in = ch * h * w;
                let mut dense = Vec::new();
                for &n in &c.dense {
                    dense.push(Dense::init(d_in, n, &mut next_rng(), device));
                    d_in = n;
                }
                let head = Dense::init(d_in, c.classes, &mut next_rng(), device);
                Model::Cnn(Cnn { convs, dense, head, input: c.input, pool: c.pool, dropout: c.dropout })
            }
        }
    }

    /// Inference forward: `[batch, input_size]` -> logits `[batch, classes]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward_train(x, None)
    }

    /// Training forward; dropout is active iff `dropout_rng` is `Some`.
    pub(crate) fn forward_train(&self, x: Tensor<2>, mut r: Option<&mut SplitMix64>) -> Tensor<2> {
        match self {
            Model::Mlp(m) => {
                let mut x = x;
                let last = m.layers.len() - 1;
                for (i, l) in m.layers.iter().enumerate() {
                    x = l.forward(x);
                    if i < last {
                        x = apply_act(m.activation, x);
                        x = dropout(x, m.dropout, r.as_deref_mut());
                    }
                }
                x
            }
            Model::Cnn(c) => {
                let b = x.dims()[0];
                let [ch, h, w] = c.input;
                let mut x: Tensor<4> = x.reshape([b, ch, h, w]);
                for conv in &c.convs {
                    x = aidos_kernels::cpu::relu_max_pool2d(conv.forward(x), c.pool);
                }
                let mut x: Tensor<2> = x.flatten(1, 3);
                for d in &c.dense {
                    x = activation::relu(d.forward(x));
                    x = dropout(x, c.dropout, r.as_deref_mut());
                }
                c.head.forward(x)
            }
        }
    }
}
