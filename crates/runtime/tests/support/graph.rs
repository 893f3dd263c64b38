//! A small writer of ONNX test graphs (tract-onnx's own protobuf types), shared by the `tract_ops` test, the
//! `tract_latency` bench and the fuzz targets' seeds (`crates/fuzz`).

#![allow(dead_code)] // each user takes what it needs

use prost::Message;
use tract_onnx::pb::{self, attribute_proto::AttributeType, tensor_shape_proto::dimension::Value as Dim, type_proto};

/// Deterministic values in [-1, 1).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

#[derive(Default)]
pub struct Graph {
    pub nodes: Vec<pb::NodeProto>,
    pub inits: Vec<pb::TensorProto>,
    pub seed: u64,
}

pub fn ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: AttributeType::Ints as i32, ints: v.to_vec(), ..Default::default() }
}

impl Graph {
    pub fn init(&mut self, name: &str, dims: &[i64]) -> String {
        self.seed += 1;
        let n = dims.iter().product::<i64>() as usize;
        self.inits.push(pb::TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: 1,
            float_data: values(n, self.seed),
            ..Default::default()
        });
        name.into()
    }

    pub fn node(&mut self, op: &str, inputs: &[String], attrs: Vec<pb::AttributeProto>) -> String {
        let out = format!("{}_{}", op.to_lowercase(), self.nodes.len());
        self.nodes.push(pb::NodeProto {
            op_type: op.into(),
            name: out.clone(),
            input: inputs.to_vec(),
            output: vec![out.clone()],
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    pub fn conv(&mut self, x: &str, cin: i64, cout: i64, k: [i64; 2], pads: [i64; 4]) -> String {
        let i = self.nodes.len();
        let w = self.init(&format!("w{i}"), &[cout, cin, k[0], k[1]]);
        let b = self.init(&format!("b{i}"), &[cout]);
        self.node("Conv", &[x.into(), w, b], vec![ints("kernel_shape", &k), ints("pads", &pads)])
    }

    pub fn pool(&mut self, x: &str, k: [i64; 2], s: [i64; 2]) -> String {
        self.node("MaxPool", &[x.into()], vec![ints("kernel_shape", &k), ints("strides", &s)])
    }

    pub fn relu(&mut self, x: &str) -> String {
        self.node("Relu", &[x.into()], vec![])
    }

    /// A dense layer (`Gemm`, weights `[inputs, outputs]` as the aidos exporter writes them).
    pub fn dense(&mut self, x: &str, inputs: i64, outputs: i64) -> String {
        let i = self.nodes.len();
        let w = self.init(&format!("w{i}"), &[inputs, outputs]);
        let b = self.init(&format!("b{i}"), &[outputs]);
        self.node("Gemm", &[x.into(), w, b], vec![])
    }

    /// The model, input `x: float32[N, c, h, w]` to the last node's output.
    pub fn onnx(self, chw: [i64; 3]) -> Vec<u8> {
        self.onnx_with_input(&chw)
    }

    /// The model, input `x: float32[N, dims...]` to the last node's output.
    pub fn onnx_with_input(self, dims: &[i64]) -> Vec<u8> {
        let info = |name: &str, dims: Vec<Dim>| pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: 1,
                    shape: Some(pb::TensorShapeProto {
                        dim: dims
                            .into_iter()
                            .map(|d| pb::tensor_shape_proto::Dimension { value: Some(d), ..Default::default() })
                            .collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut input = vec![Dim::DimParam("N".into())];
        input.extend(dims.iter().map(|&d| Dim::DimValue(d)));
        let out = self.nodes.last().unwrap().output[0].clone();
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
            graph: Some(pb::GraphProto {
                name: "g".into(),
                node: self.nodes,
                initializer: self.inits,
                input: vec![info("x", input)],
                output: vec![pb::ValueInfoProto { name: out, ..Default::default() }],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }
}
