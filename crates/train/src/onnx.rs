//! ONNX export of the model zoo: burn can import ONNX but not write it, so this writes the graph itself.
//!
//! The messages are the published ONNX schema subset in `proto/onnx/onnx.proto` (same names and field
//! numbers), encoded with prost, so `onnx.checker`, onnxruntime and tract read the result.
//!
//! Invariants of every exported graph:
//! * opset [`OPSET`] (ai.onnx), IR version [`IR_VERSION`]; one input [`INPUT_NAME`] `float32[N, features]` and
//!   one output [`OUTPUT_NAME`] `float32[N, classes]` (logits), `N` a symbolic batch dimension.
//! * The registered preprocessing (`(x - mean) * (1 / std)`, the exact f32 arithmetic of
//!   [`crate::builtin::Standardization::apply`]) is the first two nodes, so a served or edge model takes the
//!   same raw features the dataset stores and needs no side-car config. NaN inputs are not mapped to 0 here:
//!   servers reject them before they reach the graph.
//! * Weights are initializers (not graph inputs); dense weights keep burn's `[in, out]` layout (`Gemm`
//!   without `transB`), conv weights `[out, in, k, k]`.
//! * With [`Quantize::Int8`], dense and conv weights are stored as int8 with one symmetric scale per output
//!   channel and a `DequantizeLinear` node in front of their use: a ~4x smaller file; compute stays f32.

use prost::Message;

use crate::builtin::Standardization;
use crate::error::{Result, TrainError};
use crate::eval::TrainedModel;
use crate::model::{Conv, Dense, Model};

/// Generated from `proto/onnx/onnx.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

use proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto::AttributeType, tensor_proto::DataType,
    tensor_shape_proto::Dimension, tensor_shape_proto::dimension::Value as DimValue, type_proto::Value as TypeValue,
};

/// ai.onnx operator set written (Gemm, Conv, MaxPool, Relu, Tanh, Erf, Reshape, Flatten, DequantizeLinear).
pub const OPSET: i64 = 17;
/// ONNX IR version 8 (the one that goes with opset 17).
pub const IR_VERSION: i64 = 8;
/// Name of the graph input.
pub const INPUT_NAME: &str = "input";
/// Name of the graph output.
pub const OUTPUT_NAME: &str = "logits";

/// Weight storage of an exported graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quantize {
    /// float32 weights (bit-exact with burn up to operator summation order).
    #[default]
    None,
    /// int8 weights, symmetric per output channel, dequantized in the graph.
    Int8,
}

impl std::str::FromStr for Quantize {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" | "" => Ok(Quantize::None),
            "int8" => Ok(Quantize::Int8),
            other => Err(crate::error::invalid("quantize", format!("unknown mode `{other}` (expected none or int8)"))),
        }
    }
}

/// What goes into the exported file besides the network.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Input preprocessing baked into the graph; `None` exports the bare network.
    pub preprocess: Option<Standardization>,
    pub quantize: Quantize,
    /// Graph name (e.g. the registry name `mnist`).
    pub graph_name: String,
    /// `metadata_props` of the model (e.g. `aidos.model = mnist:3`).
    pub metadata: Vec<(String, String)>,
}

/// Exports `model` as a serialized ONNX `ModelProto`.
pub fn export(model: &TrainedModel, opts: &ExportOptions) -> Result<Vec<u8>> {
    let mut g = Graph { q: opts.quantize, ..Graph::default() };
    let cfg = model.config();
    let mut x = INPUT_NAME.to_string();
    if let Some(s) = opts.preprocess {
        let mean = g.constant("preprocess.mean", &[], vec![s.mean as f32]);
        let inv = g.constant("preprocess.inv_std", &[], vec![(1.0 / s.std) as f32]);
        x = g.node("Sub", &[&x, &mean], vec![]);
        x = g.node("Mul", &[&x, &inv], vec![]);
    }
    match &model.model {
        Model::Mlp(m) => {
            let last = m.layers.len() - 1;
            for (i, l) in m.layers.iter().enumerate() {
                x = g.dense(&format!("layers.{i}"), l, &x)?;
                if i < last {
                    x = g.activation(m.activation, &x);
                }
            }
        }
        Model::Cnn(c) => {
            let [ch, h, w] = c.input;
            let shape = g.constant_i64("input_shape", &[4], vec![-1, ch as i64, h as i64, w as i64]);
            x = g.node("Reshape", &[&x, &shape], vec![]);
            for (i, conv) in c.convs.iter().enumerate() {
                x = g.conv(&format!("convs.{i}"), conv, &x)?;
                x = g.node("Relu", &[&x], vec![]);
                let k = c.pool as i64;
                x = g.node("MaxPool", &[&x], vec![ints("kernel_shape", &[k, k]), ints("strides", &[k, k])]);
            }
            x = g.node("Flatten", &[&x], vec![int("axis", 1)]);
            for (i, d) in c.dense.iter().enumerate() {
                x = g.dense(&format!("dense.{i}"), d, &x)?;
                x = g.node("Relu", &[&x], vec![]);
            }
            x = g.dense("head", &c.head, &x)?;
        }
    }
    // The last node writes the graph output.
    let last = g.nodes.last_mut().expect("every model has at least one node");
    debug_assert_eq!(last.output, vec![x]);
    last.output = vec![OUTPUT_NAME.to_string()];

    let graph = GraphProto {
        node: g.nodes,
        name: Some(if opts.graph_name.is_empty() { cfg.name().to_string() } else { opts.graph_name.clone() }),
        initializer: g.inits,
        input: vec![value_info(INPUT_NAME, cfg.input_size())],
        output: vec![value_info(OUTPUT_NAME, cfg.num_classes())],
        doc_string: Some(format!("aidos {} ({:?} weights)", cfg.name(), opts.quantize)),
        value_info: vec![],
    };
    let mut metadata: Vec<StringStringEntryProto> = vec![
        kv("aidos.architecture", &serde_json::to_string(cfg).unwrap_or_default()),
        kv("aidos.quantize", &format!("{:?}", opts.quantize).to_lowercase()),
    ];
    metadata.extend(opts.metadata.iter().map(|(k, v)| kv(k, v)));
    let proto = ModelProto {
        ir_version: Some(IR_VERSION),
        producer_name: Some("aidos".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        domain: Some("ai.aidos".into()),
        model_version: Some(1),
        doc_string: None,
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(OPSET) }],
        metadata_props: metadata,
    };
    Ok(proto.encode_to_vec())
}

#[derive(Default)]
struct Graph {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    q: Quantize,
    n: usize,
}

impl Graph {
    fn node(&mut self, op: &str, inputs: &[&str], attribute: Vec<AttributeProto>) -> String {
        self.n += 1;
        let out = format!("{}_{}", op.to_lowercase(), self.n);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: Some(format!("{op}_{}", self.n)),
            op_type: Some(op.into()),
            attribute,
            doc_string: None,
            domain: None,
        });
        out
    }

    fn constant(&mut self, name: &str, dims: &[i64], data: Vec<f32>) -> String {
        self.inits.push(TensorProto {
            dims: dims.to_vec(),
            data_type: Some(DataType::Float as i32),
            raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
            name: Some(name.into()),
            ..Default::default()
        });
        name.into()
    }

    fn constant_i64(&mut self, name: &str, dims: &[i64], data: Vec<i64>) -> String {
        self.inits.push(TensorProto {
            dims: dims.to_vec(),
            data_type: Some(DataType::Int64 as i32),
            int64_data: data,
            name: Some(name.into()),
            ..Default::default()
        });
        name.into()
    }

    /// A weight initializer, int8 + `DequantizeLinear` when quantizing (per channel along `axis`).
    fn weight(&mut self, name: &str, dims: &[i64], data: Vec<f32>, axis: usize) -> String {
        if self.q == Quantize::None {
            return self.constant(name, dims, data);
        }
        let channels = dims[axis] as usize;
        let inner: usize = dims[axis + 1..].iter().product::<i64>() as usize;
        let idx = |i: usize| (i / inner) % channels;
        let mut max = vec![0f32; channels];
        for (i, v) in data.iter().enumerate() {
            max[idx(i)] = max[idx(i)].max(v.abs());
        }
        let scale: Vec<f32> = max.iter().map(|m| if *m > 0.0 { m / 127.0 } else { 1.0 }).collect();
        let q: Vec<u8> = data
            .iter()
            .enumerate()
            .map(|(i, v)| ((v / scale[idx(i)]).round().clamp(-127.0, 127.0) as i8) as u8)
            .collect();
        let qname = format!("{name}.int8");
        self.inits.push(TensorProto {
            dims: dims.to_vec(),
            data_type: Some(DataType::Int8 as i32),
            raw_data: Some(q),
            name: Some(qname.clone()),
            ..Default::default()
        });
        let sname = self.constant(&format!("{name}.scale"), &[channels as i64], scale);
        self.inits.push(TensorProto {
            dims: vec![channels as i64],
            data_type: Some(DataType::Int8 as i32),
            raw_data: Some(vec![0u8; channels]),
            name: Some(format!("{name}.zero_point")),
            ..Default::default()
        });
        let zp = format!("{name}.zero_point");
        self.node("DequantizeLinear", &[&qname, &sname, &zp], vec![int("axis", axis as i64)])
    }

    fn dense(&mut self, name: &str, l: &Dense, x: &str) -> Result<String> {
        let [d_in, d_out] = l.weight.val().dims();
        let w = self.weight(&format!("{name}.weight"), &[d_in as i64, d_out as i64], values(l.weight.val())?, 1);
        let b = self.constant(&format!("{name}.bias"), &[d_out as i64], values(l.bias.val())?);
        Ok(self.node("Gemm", &[x, &w, &b], vec![]))
    }

    fn conv(&mut self, name: &str, c: &Conv, x: &str) -> Result<String> {
        let dims = c.weight.val().dims();
        let d: Vec<i64> = dims.iter().map(|v| *v as i64).collect();
        let w = self.weight(&format!("{name}.weight"), &d, values(c.weight.val())?, 0);
        let b = self.constant(&format!("{name}.bias"), &[d[0]], values(c.bias.val())?);
        let p = c.padding as i64;
        Ok(self.node(
            "Conv",
            &[x, &w, &b],
            vec![ints("kernel_shape", &[d[2], d[3]]), ints("pads", &[p, p, p, p]), ints("strides", &[1, 1])],
        ))
    }

    /// burn's activations: 0 relu, 1 gelu (exact, erf form), 2 tanh.
    fn activation(&mut self, code: usize, x: &str) -> String {
        match code {
            1 => {
                let sqrt2 = self.constant(&format!("gelu{}.sqrt2", self.n), &[], vec![std::f32::consts::SQRT_2]);
                let one = self.constant(&format!("gelu{}.one", self.n), &[], vec![1.0]);
                let half = self.constant(&format!("gelu{}.half", self.n), &[], vec![0.5]);
                let t = self.node("Div", &[x, &sqrt2], vec![]);
                let t = self.node("Erf", &[&t], vec![]);
                let t = self.node("Add", &[&t, &one], vec![]);
                let t = self.node("Mul", &[x, &t], vec![]);
                self.node("Mul", &[&t, &half], vec![])
            }
            2 => self.node("Tanh", &[x], vec![]),
            _ => self.node("Relu", &[x], vec![]),
        }
    }
}

fn values<const D: usize>(t: burn::tensor::Tensor<D>) -> Result<Vec<f32>> {
    t.into_data().try_to_vec::<f32>().map_err(|e| TrainError::Checkpoint(format!("cannot read weights: {e:?}")))
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        ints: v.to_vec(),
        r#type: Some(AttributeType::Ints as i32),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        i: Some(v),
        r#type: Some(AttributeType::Int as i32),
        ..Default::default()
    }
}

fn kv(k: &str, v: &str) -> StringStringEntryProto {
    StringStringEntryProto { key: Some(k.into()), value: Some(v.into()) }
}

fn value_info(name: &str, width: usize) -> ValueInfoProto {
    let dim = |v: DimValue| Dimension { value: Some(v), denotation: None };
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(TypeValue::TensorType(proto::type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto {
                    dim: vec![dim(DimValue::DimParam("N".into())), dim(DimValue::DimValue(width as i64))],
                }),
            })),
            denotation: None,
        }),
        doc_string: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelConfig;

    #[test]
    fn graph_round_trips_through_the_schema() {
        let cfg = ModelConfig::reference_cnn();
        let dev = crate::device_for(crate::BackendKind::Cpu).unwrap();
        let m = crate::Model::init(&cfg, 1, &dev);
        let expected_params = burn::module::Module::num_params(&m);
        let tm = TrainedModel { model: m, device: dev, config: cfg.clone() };
        let bytes = export(&tm, &ExportOptions::default()).unwrap();
        let p = ModelProto::decode(bytes.as_slice()).unwrap();
        let g = p.graph.unwrap();
        assert_eq!(p.opset_import[0].version, Some(OPSET));
        assert_eq!(g.input[0].name.as_deref(), Some(INPUT_NAME));
        assert_eq!(g.node.last().unwrap().output, vec![OUTPUT_NAME.to_string()]);
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_deref().unwrap()).collect();
        assert_eq!(
            ops,
            ["Reshape", "Conv", "Relu", "MaxPool", "Conv", "Relu", "MaxPool", "Flatten", "Gemm", "Relu", "Gemm"]
        );
        let params: usize = g
            .initializer
            .iter()
            .filter(|t| t.data_type == Some(DataType::Float as i32))
            .map(|t| t.dims.iter().product::<i64>() as usize)
            .sum();
        assert_eq!(params, expected_params);
    }
}
